/* The encoding half of the cacheme 0.3.0 object encoding (object.c):
 * objects JSON/MessagePack cannot hold become
 *     {"__class__": "<module>.<qualname>", "data": pydantic_encoder(obj)}
 * with pydantic v1's encoder table, in the same order: BaseModel,
 * dataclass, then the first class in the MRO with an encoder. pydantic is
 * never imported: a pydantic model can only exist if the program already
 * imported pydantic. */
#include "ser/object.h"
#include "ser/serializer.h"

#include <string.h>

/* only the struct accessors (PyDateTime_GET_YEAR, ...) are used, never the
 * capsule the header declares (PyDateTimeAPI) */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-variable"
#include <datetime.h>
#pragma GCC diagnostic pop

/* dataclasses.asdict, minus the deep copy of leaves (we only encode them). */
static PyObject *ser_asdict(CmState *st, PyObject *obj, int depth)
{
    PyObject *fields, *res = NULL, *key, *field, *value = NULL, *k2 = NULL, *v2 = NULL;
    Py_ssize_t pos = 0, i, n;

    if (depth > CM_SER_MAX_ENCODE_DEPTH) {
        PyErr_SetString(PyExc_ValueError, "dataclass nesting too deep");
        return NULL;
    }
    if (!PyType_Check(obj) && (fields = cm_ser_dataclass_fields(st, Py_TYPE(obj))) != NULL) {
        Py_INCREF(fields);
        if ((res = PyDict_New()) == NULL)
            goto fields_done;
        while (PyDict_Next(fields, &pos, &key, &field)) {
            PyObject *name;
            if (!cm_ser_is_plain_field(field))
                continue;
            if ((name = PyObject_GetAttrString(field, "name")) == NULL)
                goto fields_fail;
            value = PyObject_GetAttr(obj, name);
            if (value == NULL || (v2 = ser_asdict(st, value, depth + 1)) == NULL ||
                PyDict_SetItem(res, name, v2) < 0) {
                Py_DECREF(name);
                goto fields_fail;
            }
            Py_DECREF(name);
            Py_CLEAR(value);
            Py_CLEAR(v2);
        }
        goto fields_done;
    fields_fail:
        Py_CLEAR(res);
        Py_CLEAR(value);
        Py_CLEAR(v2);
    fields_done:
        Py_DECREF(fields);
        return res;
    }
    if (PyList_Check(obj) || PyTuple_Check(obj)) {
        int is_list = PyList_Check(obj);
        n = PySequence_Fast_GET_SIZE(obj);
        res = is_list ? PyList_New(n) : PyTuple_New(n);
        if (res == NULL)
            return NULL;
        for (i = 0; i < n; i++) {
            PyObject *item;
            if (is_list && i >= PyList_GET_SIZE(obj)) {
                PyErr_SetString(PyExc_RuntimeError, "list changed size during asdict");
                Py_DECREF(res);
                return NULL;
            }
            item = Py_NewRef(PySequence_Fast_GET_ITEM(obj, i));
            v2 = ser_asdict(st, item, depth + 1);
            Py_DECREF(item);
            if (v2 == NULL) {
                Py_DECREF(res);
                return NULL;
            }
            if (is_list)
                PyList_SET_ITEM(res, i, v2);
            else
                PyTuple_SET_ITEM(res, i, v2);
            v2 = NULL;
        }
        return res;
    }
    if (PyDict_Check(obj)) {
        PyObject *items = PyDict_Items(obj);
        if (items == NULL || (res = PyDict_New()) == NULL) {
            Py_XDECREF(items);
            return NULL;
        }
        n = PyList_GET_SIZE(items);
        for (i = 0; i < n; i++) {
            PyObject *kv = PyList_GET_ITEM(items, i); // borrowed
            k2 = ser_asdict(st, PyTuple_GET_ITEM(kv, 0), depth + 1);
            v2 = k2 ? ser_asdict(st, PyTuple_GET_ITEM(kv, 1), depth + 1) : NULL;
            if (v2 == NULL || PyDict_SetItem(res, k2, v2) < 0) {
                Py_XDECREF(k2);
                Py_XDECREF(v2);
                Py_DECREF(items);
                Py_DECREF(res);
                return NULL;
            }
            Py_CLEAR(k2);
            Py_CLEAR(v2);
        }
        Py_DECREF(items);
        return res;
    }
    return Py_NewRef(obj);
}

/* pydantic v1's decimal_encoder: int when the exponent is >= 0. */
static PyObject *ser_encode_decimal(PyObject *obj)
{
    PyObject *tup = NULL, *exp = NULL, *res = NULL;
    tup = PyObject_CallMethod(obj, "as_tuple", NULL);
    if (tup == NULL || (exp = PyObject_GetAttrString(tup, "exponent")) == NULL)
        goto done;
    if (PyLong_Check(exp) && PyLong_AsLong(exp) >= 0)
        res = PyNumber_Long(obj);
    else if (!PyErr_Occurred())
        res = PyNumber_Float(obj);
done:
    Py_XDECREF(tup);
    Py_XDECREF(exp);
    return res;
}

static char *ser_digits(char *p, unsigned v, int width)
{
    for (int i = width - 1; i >= 0; i--, v /= 10)
        p[i] = (char)('0' + v % 10);
    return p + width;
}

/* obj.isoformat() of an exact datetime or date, written here when the
 * datetime is naive or on timezone.utc: datetime.isoformat goes through
 * PyUnicode_FromFormat and utcoffset(), ~11k instructions, and every Redis
 * SET stores one (updated_at). Other tzinfos call isoformat(). */
static PyObject *ser_isoformat(CmState *st, PyObject *obj)
{
    PyTypeObject *tp = Py_TYPE(obj);
    char buf[40], *p = buf;
    unsigned year = (unsigned)PyDateTime_GET_YEAR(obj);
    p = ser_digits(p, year, 4); /* MINYEAR..MAXYEAR: 1..9999 */
    *p++ = '-';
    p = ser_digits(p, (unsigned)PyDateTime_GET_MONTH(obj), 2);
    *p++ = '-';
    p = ser_digits(p, (unsigned)PyDateTime_GET_DAY(obj), 2);
    if (tp == (PyTypeObject *)st->ser.datetime) {
        PyObject *tz = PyDateTime_DATE_GET_TZINFO(obj); // borrowed
        if (tz != Py_None && tz != st->ser.utc)
            return PyObject_CallMethodNoArgs(obj, st->ser.s_isoformat);
        unsigned us = (unsigned)PyDateTime_DATE_GET_MICROSECOND(obj);
        *p++ = 'T';
        p = ser_digits(p, (unsigned)PyDateTime_DATE_GET_HOUR(obj), 2);
        *p++ = ':';
        p = ser_digits(p, (unsigned)PyDateTime_DATE_GET_MINUTE(obj), 2);
        *p++ = ':';
        p = ser_digits(p, (unsigned)PyDateTime_DATE_GET_SECOND(obj), 2);
        if (us != 0) {
            *p++ = '.';
            p = ser_digits(p, us, 6);
        }
        if (tz != Py_None) {
            memcpy(p, "+00:00", 6);
            p += 6;
        }
    }
    return PyUnicode_FromStringAndSize(buf, p - buf);
}

/* pydantic v1's pydantic_encoder(obj). */
static PyObject *ser_encode_data(CmState *st, PyObject *obj)
{
    PyTypeObject *tp = Py_TYPE(obj);
    PyObject *bases[2], *mro;
    Py_ssize_t i, n;
    int nb;

    /* the common leaves first: they can be neither models nor dataclasses */
    if (tp == (PyTypeObject *)st->ser.datetime || tp == (PyTypeObject *)st->ser.date)
        return ser_isoformat(st, obj);
    if (tp == (PyTypeObject *)st->ser.time)
        return PyObject_CallMethodNoArgs(obj, st->ser.s_isoformat);
    if (tp == (PyTypeObject *)st->ser.timedelta)
        return PyObject_CallMethodNoArgs(obj, st->s_total_seconds);
    if (tp == &PySet_Type || tp == &PyFrozenSet_Type)
        return PySequence_List(obj);

    nb = cm_ser_pydantic_bases(bases);
    for (i = 0; i < 2 && nb; i++) {
        if (bases[i] && PyType_Check(bases[i]) && PyType_IsSubtype(tp, (PyTypeObject *)bases[i])) {
            PyObject *dump = PyObject_GetAttrString((PyObject *)tp, "model_dump");
            if (dump != NULL) {
                Py_DECREF(dump);
                return PyObject_CallMethod(obj, "model_dump", NULL);
            }
            PyErr_Clear();
            return PyObject_CallMethod(obj, "dict", NULL);
        }
    }
    if (cm_ser_dataclass_fields(st, tp) != NULL)
        return ser_asdict(st, obj, 0);

    mro = tp->tp_mro;                        // borrowed
    n = mro ? PyTuple_GET_SIZE(mro) - 1 : 0; /* without object */
    for (i = 0; i < n; i++) {
        PyObject *b = PyTuple_GET_ITEM(mro, i); // borrowed
        const CmSerNamed *nm;
        if (b == (PyObject *)&PyBytes_Type)
            return PyUnicode_FromEncodedObject(obj, "utf-8", "strict");
        if (b == st->ser.datetime || b == st->ser.date || b == st->ser.time)
            return PyObject_CallMethodNoArgs(obj, st->ser.s_isoformat);
        if (b == st->ser.timedelta)
            return PyObject_CallMethodNoArgs(obj, st->s_total_seconds);
        if (b == st->ser.Decimal)
            return ser_encode_decimal(obj);
        if (b == st->ser.Enum)
            return PyObject_GetAttrString(obj, "value");
        if (b == (PyObject *)&PySet_Type || b == (PyObject *)&PyFrozenSet_Type)
            return PySequence_List(obj);
        if (b == st->ser.UUID)
            return PyObject_Str(obj);
        for (nm = cm_ser_named; nm->module; nm++) {
            if (cm_ser_imported(nm->module, nm->name) != b)
                continue;
            if (nm->kind == 'l')
                return PySequence_List(obj);
            if (nm->kind == 'p')
                return PyObject_GetAttrString(obj, "pattern");
            return PyObject_Str(obj);
        }
    }
    PyErr_Format(PyExc_TypeError, "Object of type '%.200s' is not JSON serializable", tp->tp_name);
    return NULL;
}

static PyObject *ser_qualified_name(CmState *st, PyTypeObject *tp)
{
    PyObject *module = NULL, *qual = NULL, *res = NULL;
    if (tp == (PyTypeObject *)st->ser.datetime)
        return Py_NewRef(st->ser.datetime_qualname);
    module = PyObject_GetAttrString((PyObject *)tp, "__module__");
    qual = module ? PyType_GetQualName(tp) : NULL;
    if (qual != NULL)
        res = PyUnicode_FromFormat("%S.%S", module, qual);
    Py_XDECREF(module);
    Py_XDECREF(qual);
    return res;
}

PyObject *cm_ser_object_encode(CmState *st, PyObject *obj)
{
    PyObject *name = NULL, *data = NULL, *res = NULL;

    if ((data = ser_encode_data(st, obj)) == NULL)
        goto done;
    if ((name = ser_qualified_name(st, Py_TYPE(obj))) == NULL)
        goto done;
    if ((res = PyDict_New()) == NULL)
        goto done;
    if (PyDict_SetItem(res, st->ser.s_class, name) < 0 ||
        PyDict_SetItem(res, st->ser.s_data, data) < 0)
        Py_CLEAR(res);
done:
    Py_XDECREF(name);
    Py_XDECREF(data);
    return res;
}
