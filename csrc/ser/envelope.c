/* The 0.3.0 value layout of remote storages: see envelope.h. */
#include "ser/envelope.h"

PyObject *cm_envelope_as_bytes(PyObject *payload, const char *who)
{
    if (PyBytes_CheckExact(payload))
        return Py_NewRef(payload);
    if (PyUnicode_Check(payload))
        return PyUnicode_AsUTF8String(payload);
    if (PyBytes_Check(payload) || PyByteArray_Check(payload) || PyMemoryView_Check(payload))
        return PyBytes_FromObject(payload);
    PyErr_Format(PyExc_TypeError,
                 "cacheme %s storage: serializer.dumps() returned %.100s, not bytes", who,
                 Py_TYPE(payload)->tp_name);
    return NULL;
}

static PyObject *dumps(CmState *st, PyObject *ser, PyObject *obj, const char *who)
{
    PyObject *args[2] = {ser, obj};
    PyObject *payload =
        PyObject_VectorcallMethod(st->ser.s_dumps, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (payload == NULL)
        return NULL;
    PyObject *out = cm_envelope_as_bytes(payload, who);
    Py_DECREF(payload);
    return out;
}

PyObject *cm_envelope_encode(CmState *st, CmEnvelope kind, PyObject *ser, PyObject *value,
                             const char *who)
{
    if (kind == CM_ENVELOPE_BARE) {
        if (ser != Py_None)
            return dumps(st, ser, value, who);
        if (PyBytes_Check(value))
            return PyBytes_FromObject(value);
        PyErr_Format(PyExc_TypeError,
                     "cacheme %s storage: without a serializer a node can cache only bytes (the "
                     "value column gives back bytes), not %.100s; set Meta.serializer (e.g. "
                     "PickleSerializer()) to cache other values",
                     who, Py_TYPE(value)->tp_name);
        return NULL;
    }
    PyObject *out = NULL;
    PyObject *now = PyObject_CallOneArg(st->ser.now, st->ser.utc);
    PyObject *d = now ? PyDict_New() : NULL;
    if (d != NULL && PyDict_SetItem(d, st->ser.s_value, value) == 0 &&
        PyDict_SetItem(d, st->ser.s_updated_at, now) == 0)
        out = dumps(st, ser, d, who);
    Py_XDECREF(now);
    Py_XDECREF(d);
    return out;
}

PyObject *cm_envelope_decode(CmState *st, CmEnvelope kind, PyObject *ser, PyObject *raw,
                             PyObject *err_type, const char *who)
{
    if (kind == CM_ENVELOPE_BARE && (ser == NULL || ser == Py_None))
        return Py_NewRef(raw);
    PyObject *args[2] = {ser, raw};
    PyObject *obj =
        PyObject_VectorcallMethod(st->ser.s_loads, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (obj == NULL || kind == CM_ENVELOPE_BARE)
        return obj;
    PyObject *v;
    if (PyDict_CheckExact(obj)) {
        v = Py_XNewRef(PyDict_GetItemWithError(obj, st->ser.s_value));
        if (v == NULL && !PyErr_Occurred())
            PyErr_Format(err_type, "cached %s value has no 'value' field", who);
    } else {
        v = PyObject_GetItem(obj, st->ser.s_value);
    }
    Py_DECREF(obj);
    return v;
}
