/* The 0.3.0 value layout of remote storages: see envelope.h. */
#include "ser/envelope.h"

#include "base/clock.h"

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
    return cm_envelope_encode_timed(st, ser, value, -1, who);
}

PyObject *cm_envelope_encode_timed(CmState *st, PyObject *ser, PyObject *value, int64_t load_ns,
                                   const char *who)
{
    PyObject *out = NULL, *secs = NULL;
    PyObject *now = PyObject_CallOneArg(st->ser.now, st->ser.utc);
    if (now != NULL && cm_clock_offset_ns != 0) {
        /* the test clock (base/clock.h) moves what ages are read against */
        PyObject *off = PyObject_CallFunction(st->ser.timedelta, "iiL", 0, 0,
                                              (long long)(cm_clock_offset_ns / 1000));
        Py_SETREF(now, off != NULL ? PyNumber_Add(now, off) : NULL);
        Py_XDECREF(off);
    }
    PyObject *d = now ? PyDict_New() : NULL;
    if (d == NULL || PyDict_SetItem(d, st->ser.s_value, value) < 0 ||
        PyDict_SetItem(d, st->ser.s_updated_at, now) < 0)
        goto done;
    if (load_ns >= 0 && ((secs = PyFloat_FromDouble((double)load_ns / 1e9)) == NULL ||
                         PyDict_SetItemString(d, "load_time", secs) < 0))
        goto done;
    out = dumps(st, ser, d, who);
done:
    Py_XDECREF(secs);
    Py_XDECREF(now);
    Py_XDECREF(d);
    return out;
}

/* d["updated_at"].timestamp() in ns, and d["load_time"] in ns; 0 for
 * what is absent or of another type. Never raises. */
static void envelope_age(PyObject *d, int64_t *updated_ns, int64_t *load_ns)
{
    *updated_ns = *load_ns = 0;
    PyObject *u = PyDict_GetItemString(d, "updated_at"); // borrowed
    PyObject *t = u != NULL ? PyObject_CallMethod(u, "timestamp", NULL) : NULL;
    if (t != NULL && PyFloat_Check(t))
        *updated_ns = (int64_t)(PyFloat_AS_DOUBLE(t) * 1e9);
    Py_XDECREF(t);
    PyObject *l = PyDict_GetItemString(d, "load_time"); // borrowed
    double secs = l != NULL && PyFloat_Check(l) ? PyFloat_AS_DOUBLE(l) : 0.0;
    if (secs > 0 && secs < 1e6)
        *load_ns = (int64_t)(secs * 1e9);
    PyErr_Clear();
}

PyObject *cm_envelope_decode_aged(CmState *st, PyObject *ser, PyObject *raw, PyObject *err_type,
                                  const char *who, int64_t *updated_ns, int64_t *load_ns)
{
    *updated_ns = *load_ns = 0;
    PyObject *args[2] = {ser, raw};
    PyObject *obj =
        PyObject_VectorcallMethod(st->ser.s_loads, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (obj == NULL)
        return NULL;
    if (!PyDict_CheckExact(obj)) {
        Py_DECREF(obj);
        return cm_envelope_decode(st, CM_ENVELOPE_DICT, ser, raw, err_type, who);
    }
    PyObject *v = Py_XNewRef(PyDict_GetItemWithError(obj, st->ser.s_value));
    if (v == NULL && !PyErr_Occurred())
        PyErr_Format(err_type, "cached %s value has no 'value' field", who);
    if (v != NULL)
        envelope_age(obj, updated_ns, load_ns);
    Py_DECREF(obj);
    return v;
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
