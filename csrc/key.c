/* The full key: {prefix}:{node.key()}:{Meta.version}, the 0.3.0 layout,
 * built once per node instance and cached on it as _full_key (the attribute
 * 0.3.0 used, so code reading it keeps working). Its str hash is computed
 * here and reused by every table downstream. */
#include "nodecfg.h"

static PyObject *concat3(PyObject *a, PyObject *b, PyObject *c)
{
    Py_ssize_t la = PyUnicode_GET_LENGTH(a), lb = PyUnicode_GET_LENGTH(b),
               lc = PyUnicode_GET_LENGTH(c);
    Py_ssize_t n = la + lb + lc + 2;
    if (PyUnicode_IS_ASCII(a) && PyUnicode_IS_ASCII(b) && PyUnicode_IS_ASCII(c)) {
        PyObject *s = PyUnicode_New(n, 127);
        if (s == NULL)
            return NULL;
        char *p = (char *)PyUnicode_1BYTE_DATA(s);
        memcpy(p, PyUnicode_1BYTE_DATA(a), la);
        p[la] = ':';
        memcpy(p + la + 1, PyUnicode_1BYTE_DATA(b), lb);
        p[la + 1 + lb] = ':';
        memcpy(p + la + 2 + lb, PyUnicode_1BYTE_DATA(c), lc);
        return s;
    }
    Py_UCS4 max = PyUnicode_MAX_CHAR_VALUE(a);
    if (PyUnicode_MAX_CHAR_VALUE(b) > max)
        max = PyUnicode_MAX_CHAR_VALUE(b);
    if (PyUnicode_MAX_CHAR_VALUE(c) > max)
        max = PyUnicode_MAX_CHAR_VALUE(c);
    PyObject *s = PyUnicode_New(n, max);
    if (s == NULL)
        return NULL;
    if (PyUnicode_CopyCharacters(s, 0, a, 0, la) < 0 || PyUnicode_WriteChar(s, la, ':') < 0 ||
        PyUnicode_CopyCharacters(s, la + 1, b, 0, lb) < 0 ||
        PyUnicode_WriteChar(s, la + 1 + lb, ':') < 0 ||
        PyUnicode_CopyCharacters(s, la + 2 + lb, c, 0, lc) < 0) {
        Py_DECREF(s);
        return NULL;
    }
    return s;
}

PyObject *cm_full_key(CmState *st, PyObject *node, CmNodeConfigObject *cfg)
{
    PyObject *cached = PyObject_GetAttr(node, st->s__full_key);
    if (cached == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return NULL;
        PyErr_Clear();
    } else if (PyUnicode_CheckExact(cached)) {
        if (PyObject_Hash(cached) == -1) {
            Py_DECREF(cached);
            return NULL;
        }
        return cached;
    } else {
        Py_DECREF(cached);
    }

    PyObject *key =
        PyObject_VectorcallMethod(st->s_key, &node, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (key == NULL)
        return NULL;
    if (!PyUnicode_Check(key)) {
        PyErr_Format(PyExc_TypeError, "%.100s.key() must return str, not %.100s",
                     Py_TYPE(node)->tp_name, Py_TYPE(key)->tp_name);
        Py_DECREF(key);
        return NULL;
    }
    PyObject *full = concat3(st->prefix, key, cfg->version);
    Py_DECREF(key);
    if (full == NULL)
        return NULL;
    if (PyObject_Hash(full) == -1) {
        Py_DECREF(full);
        return NULL;
    }
    /* cache on the instance; a node class with __slots__ simply goes without */
    if (PyObject_SetAttr(node, st->s__full_key, full) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            Py_DECREF(full);
            return NULL;
        }
        PyErr_Clear();
    }
    return full;
}
