/* Keywords mapped onto a storage method's parameters (base/args.h), with
 * the TypeErrors CPython raises for a Python function's wrong call, checked
 * in its order: keywords, then too many positional, then missing ones. */
#include "base/args.h"

/* "Type.name": self's type's qualified name, as a method defined on it
 * shows in Python's errors. New reference. */
static PyObject *qualified(PyObject *self, const CmArgSpec *spec)
{
    PyObject *tq = PyType_GetQualName(Py_TYPE(self));
    if (tq == NULL)
        return NULL;
    PyObject *out = PyUnicode_FromFormat("%U.%s", tq, spec->name);
    Py_DECREF(tq);
    return out;
}

/* "'a'", "'a' and 'b'", "'a', 'b', and 'c'": the missing parameters as
 * Python lists them. New reference. */
static PyObject *missing_list(const CmArgSpec *spec, PyObject **buf, Py_ssize_t nmissing)
{
    PyObject *out = PyUnicode_FromString("");
    Py_ssize_t seen = 0;
    for (Py_ssize_t i = 0; out != NULL && i < spec->n; i++) {
        if (buf[i] != NULL)
            continue;
        seen++;
        const char *sep = seen == 1         ? ""
                          : seen < nmissing ? ", "
                          : nmissing == 2   ? " and "
                                            : ", and ";
        Py_SETREF(out, PyUnicode_FromFormat("%U%s'%s'", out, sep, spec->params[i]));
    }
    return out;
}

PyObject *const *cm_args_map(PyObject *self, const CmArgSpec *spec, PyObject *const *args,
                             Py_ssize_t nargs, PyObject *kwnames, PyObject **buf)
{
    PyObject *where = NULL;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < spec->n; i++)
        buf[i] = i < nargs ? args[i] : NULL;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k); // borrowed
        Py_ssize_t i = 0;
        while (i < spec->n && PyUnicode_CompareWithASCIIString(key, spec->params[i]) != 0)
            i++;
        if (i == spec->n) {
            if ((where = qualified(self, spec)) != NULL)
                PyErr_Format(PyExc_TypeError, "%U() got an unexpected keyword argument '%S'", where,
                             key);
            goto fail;
        }
        if (buf[i] != NULL) {
            if ((where = qualified(self, spec)) != NULL)
                PyErr_Format(PyExc_TypeError, "%U() got multiple values for argument '%s'", where,
                             spec->params[i]);
            goto fail;
        }
        buf[i] = args[nargs + k];
    }
    if (nargs > spec->n) {
        /* self counts, as in a Python method's message */
        if ((where = qualified(self, spec)) != NULL)
            PyErr_Format(PyExc_TypeError, "%U() takes %zd positional arguments but %zd were given",
                         where, spec->n + 1, nargs + 1);
        goto fail;
    }
    Py_ssize_t nmissing = 0;
    for (Py_ssize_t i = 0; i < spec->n; i++)
        nmissing += buf[i] == NULL;
    if (nmissing > 0) {
        PyObject *names = missing_list(spec, buf, nmissing);
        if (names != NULL && (where = qualified(self, spec)) != NULL)
            PyErr_Format(PyExc_TypeError, "%U() missing %zd required positional argument%s: %U",
                         where, nmissing, nmissing == 1 ? "" : "s", names);
        Py_XDECREF(names);
        goto fail;
    }
    return buf;
fail:
    Py_XDECREF(where);
    return NULL;
}
