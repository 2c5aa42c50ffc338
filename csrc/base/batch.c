/* The keys of a get_all and the pairs of a set_all: see base/batch.h. */
#include "base/batch.h"

int cm_batch_keys(void *storage, CmBatchKeyOf key_of, PyObject *nodes, PyObject **keys,
                  PyObject **nodes_out)
{
    PyObject *seq = PySequence_Tuple(nodes);
    *keys = *nodes_out = NULL;
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    if ((*keys = PyList_New(n)) == NULL || (*nodes_out = PyList_New(n)) == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *node = PyTuple_GET_ITEM(seq, i); // borrowed
        PyObject *key = key_of(storage, node);
        if (key == NULL)
            goto fail;
        PyList_SET_ITEM(*keys, i, key);
        PyList_SET_ITEM(*nodes_out, i, Py_NewRef(node));
    }
    Py_DECREF(seq);
    return 0;
fail:
    Py_DECREF(seq);
    Py_CLEAR(*keys);
    Py_CLEAR(*nodes_out);
    return -1;
}

int cm_batch_pairs(void *storage, CmBatchKeyOf key_of, CmBatchEncode encode, PyObject *data,
                   PyObject *ser, PyObject **keys, PyObject **values)
{
    PyObject *index = NULL; /* key -> its position in keys */
    PyObject *seq = PySequence_Tuple(data);
    *keys = *values = NULL;
    if (seq == NULL || (*keys = PyList_New(0)) == NULL || (*values = PyList_New(0)) == NULL ||
        (index = PyDict_New()) == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(seq); i++) {
        PyObject *item = PyTuple_GET_ITEM(seq, i); // borrowed
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "set_all: data must be a sequence of (node, value)");
            goto fail;
        }
        PyObject *key = key_of(storage, PyTuple_GET_ITEM(item, 0));
        PyObject *val = key ? encode(storage, ser, PyTuple_GET_ITEM(item, 1)) : NULL;
        PyObject *at = val ? PyDict_GetItemWithError(index, key) : NULL; // borrowed
        int rc = -1;
        if (val != NULL && at != NULL) {
            /* the same key twice: the last value wins */
            rc = PyList_SetItem(*values, PyLong_AsSsize_t(at), Py_NewRef(val));
        } else if (val != NULL && !PyErr_Occurred()) {
            PyObject *pos = PyLong_FromSsize_t(PyList_GET_SIZE(*keys));
            rc = pos && PyDict_SetItem(index, key, pos) == 0 && PyList_Append(*keys, key) == 0 &&
                         PyList_Append(*values, val) == 0
                     ? 0
                     : -1;
            Py_XDECREF(pos);
        }
        Py_XDECREF(key);
        Py_XDECREF(val);
        if (rc < 0)
            goto fail;
    }
    Py_DECREF(seq);
    Py_DECREF(index);
    return 0;
fail:
    Py_XDECREF(seq);
    Py_XDECREF(index);
    Py_CLEAR(*keys);
    Py_CLEAR(*values);
    return -1;
}
