/* The private CPython calls we keep, each behind a version gate with a
 * public fallback.
 *
 * A private function is used only on the CPython versions it was tested on
 * (CM_PRIVATE_OK: 3.11 to 3.13); on any other version, and in a
 * CACHEME_NO_PRIVATE=1 build (setup.py defines CM_NO_PRIVATE, and
 * tests/test_platforms.py runs part of the suite against such a build), the
 * public fallback runs instead: slower, never wrong. The other gated uses
 * are in key.c (CPython's hash secret: CM_KEY_PARTS) and msgpack_decode.c
 * (dict templates). */
#ifndef CM_COMPAT_H
#define CM_COMPAT_H
#include <Python.h>

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(CM_NO_PRIVATE)
#define CM_PRIVATE_OK 1
#else
#define CM_PRIVATE_OK 0
#endif

/* The attribute name of type tp as its MRO resolves it, without calling
 * descriptors: borrowed, or NULL (never with an exception). _PyType_Lookup
 * answers from the type attribute cache; the fallback walks the MRO's
 * dicts. */
static inline PyObject *cm_type_lookup(PyTypeObject *tp, PyObject *name) // borrowed
{
#if CM_PRIVATE_OK
    return _PyType_Lookup(tp, name);
#else
    PyObject *mro = tp->tp_mro; // borrowed
    PyObject *found = NULL;     // borrowed
    if (mro == NULL || !PyTuple_Check(mro))
        return NULL;
    for (Py_ssize_t i = 0; found == NULL && i < PyTuple_GET_SIZE(mro); i++) {
        PyTypeObject *base = (PyTypeObject *)PyTuple_GET_ITEM(mro, i); // borrowed
#if PY_VERSION_HEX >= 0x030C0000
        /* a new reference; static builtin types keep theirs elsewhere */
        PyObject *dict = PyType_GetDict(base);
        if (dict == NULL)
            continue;
        found = PyDict_GetItemWithError(dict, name); /* borrowed: the type holds dict */
        Py_DECREF(dict);
#else
        if (base->tp_dict == NULL)
            continue;
        found = PyDict_GetItemWithError(base->tp_dict, name);
#endif
        if (found == NULL && PyErr_Occurred())
            PyErr_Clear();
    }
    return found;
#endif
}

#endif /* CM_COMPAT_H */
