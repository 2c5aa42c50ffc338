/* The one TTL rule: see ttl.h. */
#include "core/ttl.h"

double cm_ttl_seconds(CmState *st, PyObject *ttl)
{
    double secs;
    if (ttl == Py_None)
        return -1.0;
    if (PyBool_Check(ttl)) {
        PyErr_SetString(PyExc_TypeError,
                        "ttl must be None, a datetime.timedelta or seconds, not bool");
        return -2.0;
    }
    if (PyLong_Check(ttl) || PyFloat_Check(ttl)) {
        secs = PyFloat_AsDouble(ttl);
    } else {
        PyObject *f = PyObject_CallMethodNoArgs(ttl, st->s_total_seconds);
        if (f == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                return -2.0;
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "ttl must be None, a datetime.timedelta or seconds, not %.100s",
                         Py_TYPE(ttl)->tp_name);
            return -2.0;
        }
        secs = PyFloat_AsDouble(f);
        Py_DECREF(f);
    }
    if (secs == -1.0 && PyErr_Occurred())
        return -2.0;
    if (!(secs > 0)) { /* also NaN */
        PyErr_Format(PyExc_ValueError, "ttl must be positive, got %R", ttl);
        return -2.0;
    }
    return secs > CM_TTL_MAX_SECONDS ? CM_TTL_MAX_SECONDS : secs;
}

int64_t cm_ttl_to_ns(CmState *st, PyObject *ttl)
{
    double secs = cm_ttl_seconds(st, ttl);
    if (secs < 0)
        return (int64_t)secs;
    return cm_ttl_ns(secs);
}
