/* The cacheme 0.3.0 object encoding, shared by JSON and MsgPack.
 *
 * 0.3.0 wrote objects that JSON/MessagePack cannot hold as
 *     {"__class__": "<module>.<qualname>", "data": pydantic_encoder(obj)}
 * and read them back with importlib.import_module + pydantic.parse_obj_as.
 * We write the same bytes (pydantic v1's encoder table, in the same order:
 * BaseModel, dataclass, then the first class in the MRO with an encoder),
 * but read them without ever importing: the class is looked up in
 * sys.modules and in module/class __dict__s only (no module __getattr__), and
 * only the known value types, Enums, dataclasses and pydantic models are
 * constructed. Anything else in "__class__" is a decode error, so hostile
 * bytes cannot make us import a module or call an arbitrary callable.
 * pydantic is never imported: a pydantic model can only exist, or be asked
 * for, if the program already imported pydantic. */
#include "ser/serializer.h"

#include "base/compat.h"

/* only the struct accessors (PyDateTime_GET_YEAR, ...) are used, never the
 * capsule the header declares (PyDateTimeAPI) */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-variable"
#include <datetime.h>
#pragma GCC diagnostic pop

/* An attribute of an already-imported module, found in its __dict__. */
static PyObject * // borrowed, NULL without an exception if absent
ser_imported(const char *module, const char *name)
{
    PyObject *modules = PyImport_GetModuleDict();          // borrowed
    PyObject *mod = PyDict_GetItemString(modules, module); // borrowed
    if (mod == NULL || !PyModule_Check(mod))
        return NULL;
    return PyDict_GetItemString(PyModule_GetDict(mod), name);
}

static PyObject * // borrowed
ser_type_lookup(PyTypeObject *tp, PyObject *name)
{
    return cm_type_lookup(tp, name);
}

/* pydantic BaseModel classes that exist in this process (v2, v1 or the
 * pydantic.v1 shim inside v2). */
static int ser_pydantic_bases(PyObject *out[2])
{
    out[0] = ser_imported("pydantic.main", "BaseModel");
    out[1] = ser_imported("pydantic.v1.main", "BaseModel");
    if (out[1] == out[0])
        out[1] = NULL;
    return (out[0] != NULL) + (out[1] != NULL);
}

static PyObject * // borrowed, NULL if not a dataclass
ser_dataclass_fields(CmState *st, PyTypeObject *tp)
{
    PyObject *fields = ser_type_lookup(tp, st->ser.s_dataclass_fields); // borrowed
    return (fields && PyDict_Check(fields)) ? fields : NULL;
}

/* True for a real dataclass field (not ClassVar / InitVar). */
static int ser_is_plain_field(PyObject *field)
{
    PyObject *marker = ser_imported("dataclasses", "_FIELD"); // borrowed
    PyObject *ft;
    int rc;
    if (marker == NULL)
        return 1;
    ft = PyObject_GetAttrString(field, "_field_type");
    if (ft == NULL) {
        PyErr_Clear();
        return 1;
    }
    rc = ft == marker;
    Py_DECREF(ft);
    return rc;
}

/* dataclasses.asdict, minus the deep copy of leaves (we only encode them). */
static PyObject *ser_asdict(CmState *st, PyObject *obj, int depth)
{
    PyObject *fields, *res = NULL, *key, *field, *value = NULL, *k2 = NULL, *v2 = NULL;
    Py_ssize_t pos = 0, i, n;

    if (depth > CM_SER_MAX_ENCODE_DEPTH) {
        PyErr_SetString(PyExc_ValueError, "dataclass nesting too deep");
        return NULL;
    }
    if (!PyType_Check(obj) && (fields = ser_dataclass_fields(st, Py_TYPE(obj))) != NULL) {
        Py_INCREF(fields);
        if ((res = PyDict_New()) == NULL)
            goto fields_done;
        while (PyDict_Next(fields, &pos, &key, &field)) {
            PyObject *name;
            if (!ser_is_plain_field(field))
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

/* Value types that pydantic v1 encodes as str(obj) / list(obj), found only if
 * their module is loaded (an object of that type cannot exist otherwise). */
typedef struct {
    const char *module, *name;
    char kind; /* 's' str(obj), 'l' list(obj), 'p' obj.pattern */
} CmSerNamed;

static const CmSerNamed cm_ser_named[] = {
    {"collections", "deque", 'l'},
    {"types", "GeneratorType", 'l'},
    {"pathlib", "Path", 's'},
    {"re", "Pattern", 'p'},
    {"ipaddress", "IPv4Address", 's'},
    {"ipaddress", "IPv4Interface", 's'},
    {"ipaddress", "IPv4Network", 's'},
    {"ipaddress", "IPv6Address", 's'},
    {"ipaddress", "IPv6Interface", 's'},
    {"ipaddress", "IPv6Network", 's'},
    {"pydantic.color", "Color", 's'},
    {"pydantic.networks", "NameEmail", 's'},
    {"pydantic.types", "SecretStr", 's'},
    {"pydantic.types", "SecretBytes", 's'},
    {NULL, NULL, 0},
};

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

    nb = ser_pydantic_bases(bases);
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
    if (ser_dataclass_fields(st, tp) != NULL)
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
            if (ser_imported(nm->module, nm->name) != b)
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

/* ---- decoding ---------------------------------------------------------- */

/* module.__dict__[a], then type.__dict__ (MRO) lookups for .b.c: plain
 * dict lookups, so no module __getattr__ or descriptor code runs. */
static PyObject * // borrowed
ser_walk_qualname(PyObject *mod, const char *rest, PyObject *name)
{
    PyObject *obj = NULL; // borrowed
    while (rest != NULL) {
        const char *dot = strchr(rest, '.');
        Py_ssize_t len = dot ? dot - rest : (Py_ssize_t)strlen(rest);
        PyObject *part = PyUnicode_FromStringAndSize(rest, len);
        if (part == NULL)
            return NULL;
        if (obj == NULL)
            obj = PyDict_GetItemWithError(PyModule_GetDict(mod), part);
        else if (PyType_Check(obj))
            obj = ser_type_lookup((PyTypeObject *)obj, part);
        else
            obj = NULL;
        Py_DECREF(part);
        if (obj == NULL) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "%R not found", name);
            return NULL;
        }
        rest = dot ? dot + 1 : NULL;
    }
    if (obj == NULL)
        PyErr_Format(PyExc_ValueError, "%R not found", name);
    return obj;
}

PyObject *cm_ser_lookup_global(PyObject *module, PyObject *qualname)
{
    PyObject *modules = PyImport_GetModuleDict(); // borrowed
    PyObject *mod, *obj, *full;                   // borrowed, borrowed, new
    const char *q;

    if (!PyUnicode_Check(module) || !PyUnicode_Check(qualname)) {
        PyErr_SetString(PyExc_ValueError, "global names must be strings");
        return NULL;
    }
    if ((q = PyUnicode_AsUTF8(qualname)) == NULL)
        return NULL;
    if ((mod = PyDict_GetItemWithError(modules, module)) == NULL || !PyModule_Check(mod)) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "module %R is not loaded (cacheme never imports)",
                         module);
        return NULL;
    }
    if ((full = PyUnicode_FromFormat("%U.%U", module, qualname)) == NULL)
        return NULL;
    obj = ser_walk_qualname(mod, q, full);
    Py_DECREF(full);
    return Py_XNewRef(obj);
}

PyObject *cm_ser_resolve_class(CmState *st, PyObject *name)
{
    PyObject *modules = PyImport_GetModuleDict(); // borrowed
    PyObject *mod = NULL, *obj;                   // borrowed
    const char *s, *rest = NULL;
    Py_ssize_t n, i;
    (void)st;

    if (!PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_ValueError, "__class__ is not a string");
        return NULL;
    }
    if ((s = PyUnicode_AsUTF8AndSize(name, &n)) == NULL)
        return NULL;
    for (i = n - 1; i > 0; i--) {
        PyObject *modname;
        if (s[i] != '.')
            continue;
        if ((modname = PyUnicode_FromStringAndSize(s, i)) == NULL)
            return NULL;
        mod = PyDict_GetItemWithError(modules, modname);
        Py_DECREF(modname);
        if (mod == NULL && PyErr_Occurred())
            return NULL;
        if (mod != NULL && PyModule_Check(mod)) {
            rest = s + i + 1;
            break;
        }
        mod = NULL;
    }
    if (mod == NULL) {
        PyErr_Format(PyExc_ValueError, "class %R: no such module loaded (cacheme never imports)",
                     name);
        return NULL;
    }
    obj = ser_walk_qualname(mod, rest, name); // borrowed
    if (obj == NULL)
        return NULL;
    if (obj == NULL || !PyType_Check(obj)) {
        PyErr_Format(PyExc_ValueError, "%R is not a class", name);
        return NULL;
    }
    return Py_NewRef(obj);
}

static PyObject *ser_construct(CmState *st, PyObject *cls, PyObject *data, int depth);

static int ser_is_dataclass_type(CmState *st, PyObject *tp)
{
    return PyType_Check(tp) && ser_dataclass_fields(st, (PyTypeObject *)tp) != NULL;
}

/* The part of pydantic.parse_obj_as that 0.3.0 relied on for dataclasses:
 * nested dataclasses (flattened to dicts by asdict) come back as instances,
 * and list/tuple/set fields get their annotated container type. */
static PyObject *ser_coerce(CmState *st, PyObject *ann, PyObject *value, int depth)
{
    PyObject *origin = NULL, *args = NULL, *res = NULL;
    Py_ssize_t i, n;

    if (depth > CM_SER_MAX_DECODE_DEPTH || ann == NULL)
        return Py_NewRef(value);
    if (PyDict_Check(value) && ser_is_dataclass_type(st, ann))
        return ser_construct(st, ann, value, depth + 1);
    if (PyList_Check(value) && PyType_Check(ann)) {
        if (ann == (PyObject *)&PyTuple_Type)
            return PyList_AsTuple(value);
        if (ann == (PyObject *)&PySet_Type)
            return PySet_New(value);
        if (ann == (PyObject *)&PyFrozenSet_Type)
            return PyFrozenSet_New(value);
    }
    if (PyType_Check(ann) || PyUnicode_Check(ann))
        return Py_NewRef(value);
    /* typing generics: List[X], Tuple[X, ...], Dict[K, V], Optional[X] */
    args = PyObject_GetAttrString(ann, "__args__");
    if (args == NULL || !PyTuple_Check(args)) {
        PyErr_Clear();
        res = Py_NewRef(value);
        goto done;
    }
    if ((origin = PyObject_GetAttrString(ann, "__origin__")) == NULL)
        PyErr_Clear(); /* X | None has no __origin__ */
    n = PyTuple_GET_SIZE(args);
    if (PyList_Check(value) && n >= 1 &&
        (origin == (PyObject *)&PyList_Type || origin == (PyObject *)&PyTuple_Type ||
         origin == (PyObject *)&PySet_Type || origin == (PyObject *)&PyFrozenSet_Type)) {
        Py_ssize_t m = PyList_GET_SIZE(value);
        int homogeneous = origin != (PyObject *)&PyTuple_Type ||
                          (n == 2 && PyTuple_GET_ITEM(args, 1) == Py_Ellipsis);
        PyObject *list = PyList_New(m);
        if (list == NULL)
            goto done;
        for (i = 0; i < m; i++) {
            PyObject *a = homogeneous ? PyTuple_GET_ITEM(args, 0)
                                      : (i < n ? PyTuple_GET_ITEM(args, i) : NULL);
            PyObject *item = ser_coerce(st, a, PyList_GET_ITEM(value, i), depth + 1);
            if (item == NULL) {
                Py_DECREF(list);
                goto done;
            }
            PyList_SET_ITEM(list, i, item);
        }
        if (origin == (PyObject *)&PyList_Type)
            res = list;
        else {
            res = origin == (PyObject *)&PyTuple_Type ? PyList_AsTuple(list)
                  : origin == (PyObject *)&PySet_Type ? PySet_New(list)
                                                      : PyFrozenSet_New(list);
            Py_DECREF(list);
        }
        goto done;
    }
    if (PyDict_Check(value) && n == 2 && origin == (PyObject *)&PyDict_Type) {
        PyObject *k, *v;
        Py_ssize_t pos = 0;
        if ((res = PyDict_New()) == NULL)
            goto done;
        while (PyDict_Next(value, &pos, &k, &v)) {
            PyObject *v2 = ser_coerce(st, PyTuple_GET_ITEM(args, 1), v, depth + 1);
            if (v2 == NULL || PyDict_SetItem(res, k, v2) < 0) {
                Py_XDECREF(v2);
                Py_CLEAR(res);
                goto done;
            }
            Py_DECREF(v2);
        }
        goto done;
    }
    /* Optional[X] / Union[...]: the first dataclass member that fits a dict */
    if (PyDict_Check(value)) {
        for (i = 0; i < n; i++) {
            PyObject *a = PyTuple_GET_ITEM(args, i); // borrowed
            if (ser_is_dataclass_type(st, a)) {
                res = ser_construct(st, a, value, depth + 1);
                goto done;
            }
        }
    }
    res = Py_NewRef(value);
done:
    Py_XDECREF(origin);
    Py_XDECREF(args);
    return res;
}

static PyObject *ser_construct_dataclass(CmState *st, PyObject *cls, PyObject *fields,
                                         PyObject *data, int depth)
{
    PyObject *kwargs = NULL, *empty = NULL, *res = NULL, *key, *field;
    Py_ssize_t pos = 0;

    if (!PyDict_Check(data)) {
        PyErr_Format(PyExc_ValueError, "data of dataclass %.200s is not a mapping",
                     ((PyTypeObject *)cls)->tp_name);
        return NULL;
    }
    Py_INCREF(fields);
    if ((kwargs = PyDict_New()) == NULL || (empty = PyTuple_New(0)) == NULL)
        goto done;
    while (PyDict_Next(fields, &pos, &key, &field)) {
        PyObject *init, *value, *ann, *v2;
        int want;
        if (!ser_is_plain_field(field))
            continue;
        if ((init = PyObject_GetAttrString(field, "init")) == NULL)
            goto done;
        want = PyObject_IsTrue(init);
        Py_DECREF(init);
        if (want < 0)
            goto done;
        if (!want || !PyUnicode_Check(key))
            continue;
        if ((value = PyDict_GetItemWithError(data, key)) == NULL) { // borrowed
            if (PyErr_Occurred())
                goto done;
            continue; /* let the dataclass default (or complain) */
        }
        Py_INCREF(value);
        ann = PyObject_GetAttrString(field, "type");
        if (ann == NULL)
            PyErr_Clear();
        v2 = ser_coerce(st, ann, value, depth + 1);
        Py_XDECREF(ann);
        Py_DECREF(value);
        if (v2 == NULL || PyDict_SetItem(kwargs, key, v2) < 0) {
            Py_XDECREF(v2);
            goto done;
        }
        Py_DECREF(v2);
    }
    res = PyObject_Call(cls, empty, kwargs);
done:
    Py_DECREF(fields);
    Py_XDECREF(kwargs);
    Py_XDECREF(empty);
    return res;
}

static int ser_subclass(PyObject *cls, PyObject *base)
{
    return base != NULL && PyType_Check(base) &&
           PyType_IsSubtype((PyTypeObject *)cls, (PyTypeObject *)base);
}

static PyObject *ser_construct(CmState *st, PyObject *cls, PyObject *data, int depth)
{
    PyTypeObject *tp = (PyTypeObject *)cls;
    PyObject *bases[2], *fields;
    const CmSerNamed *nm;
    int i;

    if (depth > CM_SER_MAX_DECODE_DEPTH) {
        PyErr_SetString(PyExc_ValueError, "nesting too deep");
        return NULL;
    }
    if (ser_subclass(cls, st->ser.datetime) || ser_subclass(cls, st->ser.date) ||
        ser_subclass(cls, st->ser.time)) {
        if (!PyUnicode_Check(data))
            goto bad_data;
        return PyObject_CallMethodOneArg(cls, st->ser.s_fromisoformat, data);
    }
    if (ser_subclass(cls, st->ser.timedelta)) {
        PyObject *kw, *empty, *res;
        if (!PyLong_Check(data) && !PyFloat_Check(data))
            goto bad_data;
        if ((kw = Py_BuildValue("{sO}", "seconds", data)) == NULL)
            return NULL;
        if ((empty = PyTuple_New(0)) == NULL) {
            Py_DECREF(kw);
            return NULL;
        }
        res = PyObject_Call(cls, empty, kw);
        Py_DECREF(kw);
        Py_DECREF(empty);
        return res;
    }
    if (ser_subclass(cls, st->ser.Decimal)) {
        PyObject *s, *res;
        if (!PyUnicode_Check(data) && !PyLong_Check(data) && !PyFloat_Check(data))
            goto bad_data;
        if ((s = PyObject_Str(data)) == NULL)
            return NULL;
        res = PyObject_CallOneArg(cls, s);
        Py_DECREF(s);
        return res;
    }
    if (ser_subclass(cls, st->ser.UUID)) {
        if (!PyUnicode_Check(data))
            goto bad_data;
        return PyObject_CallOneArg(cls, data);
    }
    if (ser_subclass(cls, st->ser.Enum))
        return PyObject_CallOneArg(cls, data);
    if (tp == &PySet_Type || tp == &PyFrozenSet_Type) {
        if (!PyList_Check(data))
            goto bad_data;
        return tp == &PySet_Type ? PySet_New(data) : PyFrozenSet_New(data);
    }
    if (tp == &PyBytes_Type) {
        if (!PyUnicode_Check(data))
            goto bad_data;
        return PyUnicode_AsUTF8String(data);
    }
    if (ser_pydantic_bases(bases)) {
        for (i = 0; i < 2; i++) {
            PyObject *v2;
            if (!ser_subclass(cls, bases[i]))
                continue;
            if ((v2 = PyObject_GetAttrString(cls, "model_validate")) != NULL) {
                PyObject *res = PyObject_CallOneArg(v2, data);
                Py_DECREF(v2);
                return res;
            }
            PyErr_Clear();
            return PyObject_CallMethod(cls, "parse_obj", "O", data);
        }
    }
    if ((fields = ser_dataclass_fields(st, tp)) != NULL)
        return ser_construct_dataclass(st, cls, fields, data, depth);
    for (nm = cm_ser_named; nm->module; nm++) {
        PyObject *known = ser_imported(nm->module, nm->name); // borrowed
        if (known == NULL || !ser_subclass(cls, known) || nm->kind == 'p' ||
            !strcmp(nm->name, "GeneratorType") || !strncmp(nm->module, "pydantic", 8))
            continue;
        if (nm->kind == 'l' ? !PyList_Check(data) : !PyUnicode_Check(data))
            goto bad_data;
        return PyObject_CallOneArg(cls, data);
    }
    PyErr_Format(PyExc_ValueError,
                 "refusing to construct %.200s: not a dataclass, pydantic model, Enum or "
                 "known value type",
                 tp->tp_name);
    return NULL;
bad_data:
    PyErr_Format(PyExc_ValueError, "unexpected data of type %.100s for %.200s",
                 Py_TYPE(data)->tp_name, tp->tp_name);
    return NULL;
}

int cm_ser_value_class(CmState *st, PyObject *cls)
{
    PyObject *bases[2], *members;
    const CmSerNamed *nm;
    int i, rc;

    if (!PyType_Check(cls))
        return 0;
    if (ser_subclass(cls, st->ser.datetime) || ser_subclass(cls, st->ser.date) ||
        ser_subclass(cls, st->ser.time) || ser_subclass(cls, st->ser.timedelta) ||
        ser_subclass(cls, st->ser.Decimal) || ser_subclass(cls, st->ser.UUID))
        return 1;
    if (ser_subclass(cls, st->ser.Enum)) {
        /* a class with members: calling one with more than a value cannot
         * make a new Enum (the functional API refuses to extend it) */
        if ((members = PyObject_GetAttrString(cls, "_member_map_")) == NULL) {
            PyErr_Clear();
            return 0;
        }
        rc = PyDict_Check(members) && PyDict_GET_SIZE(members) > 0;
        Py_DECREF(members);
        return rc;
    }
    if (ser_pydantic_bases(bases))
        for (i = 0; i < 2; i++)
            if (bases[i] != cls && ser_subclass(cls, bases[i]))
                return 1;
    if (ser_dataclass_fields(st, (PyTypeObject *)cls) != NULL)
        return 1;
    for (nm = cm_ser_named; nm->module; nm++) {
        PyObject *known = ser_imported(nm->module, nm->name); // borrowed
        if (known != NULL && ser_subclass(cls, known) && nm->kind != 'p' &&
            strcmp(nm->name, "GeneratorType") && strncmp(nm->module, "pydantic", 8))
            return 1;
    }
    return 0;
}

PyObject *cm_ser_object_decode(CmState *st, PyObject *dict)
{
    PyObject *name, *data, *cls = NULL, *res = NULL; // name, data borrowed

    if (!PyDict_Check(dict))
        return Py_NewRef(dict);
    if ((name = PyDict_GetItemWithError(dict, st->ser.s_class)) == NULL)
        return PyErr_Occurred() ? NULL : Py_NewRef(dict);
    if ((data = PyDict_GetItemWithError(dict, st->ser.s_data)) == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "object with __class__ but no data");
        return NULL;
    }
    Py_INCREF(name);
    Py_INCREF(data);
    if ((cls = cm_ser_resolve_class(st, name)) != NULL)
        res = ser_construct(st, cls, data, 0);
    Py_XDECREF(cls);
    Py_DECREF(name);
    Py_DECREF(data);
    return res;
}

/* ---- module functions (also the json default / object_hook) ------------ */

static PyObject *ser_object_encoder_fn(PyObject *mod, PyObject *obj)
{
    return cm_ser_object_encode(cm_state_from_module(mod), obj);
}

static PyObject *ser_object_decoder_fn(PyObject *mod, PyObject *obj)
{
    return cm_ser_object_decode(cm_state_from_module(mod), obj);
}

static PyObject *ser_resolve_class_fn(PyObject *mod, PyObject *name)
{
    return cm_ser_resolve_class(cm_state_from_module(mod), name);
}

static PyMethodDef cm_ser_object_methods[] = {
    {"object_encoder", ser_object_encoder_fn, METH_O,
     "object_encoder(obj) -> {'__class__': qualname, 'data': ...} (cacheme 0.3.0 encoding)"},
    {"object_decoder", ser_object_decoder_fn, METH_O,
     "object_decoder(dict) -> the object a {'__class__', 'data'} dict stands for; classes are "
     "looked up among loaded modules only"},
    {"resolve_class", ser_resolve_class_fn, METH_O,
     "resolve_class('module.QualName') -> class, from sys.modules only (never imports)"},
    {NULL, NULL, 0, NULL},
};

int cm_ser_object_init(PyObject *mod, CmState *st)
{
    PyObject *name = PyModule_GetNameObject(mod);
    int rc = -1;
    if (name == NULL)
        return -1;
    st->ser.object_encoder = PyCFunction_NewEx(&cm_ser_object_methods[0], mod, name);
    st->ser.object_decoder = PyCFunction_NewEx(&cm_ser_object_methods[1], mod, name);
    if (!st->ser.object_encoder || !st->ser.object_decoder)
        goto done;
    if (PyModule_AddObjectRef(mod, "object_encoder", st->ser.object_encoder) < 0 ||
        PyModule_AddObjectRef(mod, "object_decoder", st->ser.object_decoder) < 0)
        goto done;
    {
        PyObject *fn = PyCFunction_NewEx(&cm_ser_object_methods[2], mod, name);
        int added = fn ? PyModule_AddObjectRef(mod, "resolve_class", fn) : -1;
        Py_XDECREF(fn);
        if (added < 0)
            goto done;
    }
    rc = 0;
done:
    Py_DECREF(name);
    return rc;
}
