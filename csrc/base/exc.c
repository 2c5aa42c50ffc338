/* The module's exception types: see base/exc.h. */
#include "base/exc.h"

#include <stdio.h>

PyObject *cm_exc_add_type(PyObject *mod, const char *name, PyObject *bases, const char *doc)
{
    char full[64];
    snprintf(full, sizeof(full), "cacheme._core.%s", name);
    PyObject *e = PyErr_NewExceptionWithDoc(full, doc, bases, NULL);
    if (e != NULL && PyModule_AddObjectRef(mod, name, e) < 0)
        Py_CLEAR(e);
    return e;
}
