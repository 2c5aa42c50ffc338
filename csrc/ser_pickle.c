/* pickle.loads for cached bytes, without imports.
 *
 * pickle resolves every global through Unpickler.find_class, which imports
 * the named module. Cached bytes are data, so here find_class is a C
 * override on a subclass of _pickle.Unpickler that only looks in sys.modules
 * (cm_ser_lookup_global): bytes naming a module this process has not loaded
 * fail to decode (a miss and a reload) instead of importing it. The opcode
 * machine is still CPython's C unpickler. Pickle remains a format for
 * storages you trust: REDUCE can call any callable of a loaded module. */
#include "serializer.h"

static PyObject *SafeUnpickler_find_class(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "find_class(module, name)");
        return NULL;
    }
    return cm_ser_lookup_global(args[0], args[1]);
}

static void SafeUnpickler_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyTypeObject *base = tp->tp_base; // borrowed
    int base_is_heap = PyType_HasFeature(base, Py_TPFLAGS_HEAPTYPE);
    base->tp_dealloc(self);
    /* a static base (3.11's _pickle) does not release our heap type */
    if (!base_is_heap)
        Py_DECREF(tp);
}

static PyMethodDef SafeUnpickler_methods[] = {
    {"find_class", (PyCFunction)(void (*)(void))SafeUnpickler_find_class, METH_FASTCALL,
     "find_class(module, name): the global from an already loaded module, never an import"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot SafeUnpickler_slots[] = {
    {Py_tp_dealloc, SafeUnpickler_dealloc},
    {Py_tp_methods, SafeUnpickler_methods},
    {0, NULL},
};

static PyType_Spec SafeUnpickler_spec = {
    .name = "cacheme._core._SafeUnpickler",
    .basicsize = 0, /* the base's layout, which _pickle keeps private */
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = SafeUnpickler_slots,
};

PyObject *cm_ser_pickle_loads(CmState *st, PyObject *raw)
{
    PyObject *file, *unpickler = NULL, *res = NULL;

    if ((file = PyObject_CallOneArg(st->ser_BytesIO, raw)) == NULL)
        return NULL;
    unpickler = PyObject_CallOneArg(st->ser_SafeUnpicklerType, file);
    if (unpickler != NULL)
        res = PyObject_CallMethod(unpickler, "load", NULL);
    Py_XDECREF(unpickler);
    Py_DECREF(file);
    return res;
}

int cm_ser_pickle_init(PyObject *mod, CmState *st)
{
    PyObject *pickle = NULL, *io = NULL, *base = NULL;
    int rc = -1;

    if ((pickle = PyImport_ImportModule("_pickle")) == NULL ||
        (io = PyImport_ImportModule("io")) == NULL)
        goto done;
    if ((base = PyObject_GetAttrString(pickle, "Unpickler")) == NULL ||
        (st->ser_BytesIO = PyObject_GetAttrString(io, "BytesIO")) == NULL)
        goto done;
    st->ser_SafeUnpicklerType = PyType_FromModuleAndSpec(mod, &SafeUnpickler_spec, base);
    rc = st->ser_SafeUnpicklerType ? 0 : -1;
done:
    Py_XDECREF(pickle);
    Py_XDECREF(io);
    Py_XDECREF(base);
    return rc;
}
