/* The exception being raised, as one object: taken out of the error
 * indicator (so that Python can be called meanwhile: callbacks, decrefs)
 * and put back. Python 3.12 has PyErr_GetRaisedException; 3.10 and 3.11 do
 * not. */
#ifndef CM_EXC_H
#define CM_EXC_H
#include "state.h"

/* The exception being raised, normalized, with its traceback; cleared from
 * the indicator. NULL if none. New reference. */
static inline PyObject *cm_exc_take(void)
{
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    if (t == NULL)
        return NULL;
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb != NULL && v != NULL)
        PyException_SetTraceback(v, tb);
    Py_XDECREF(t);
    Py_XDECREF(tb);
    return v;
}

/* Raise v again as it was taken (stolen; NULL: nothing). */
static inline void cm_exc_restore(PyObject *v)
{
    if (v == NULL)
        return;
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(v)), v, PyException_GetTraceback(v));
}
/* A new exception type cacheme._core.<name> (bases: a type, a tuple of
 * them, or NULL for Exception) with doc, added to mod as `name`. New
 * reference, or NULL with an exception. (base/exc.c) */
PyObject *cm_exc_add_type(PyObject *mod, const char *name, PyObject *bases, const char *doc);

/* Raise exc (an exception instance) as the current exception. */
static inline void cm_raise_exc(PyObject *exc) { PyErr_SetObject((PyObject *)Py_TYPE(exc), exc); }
#endif
