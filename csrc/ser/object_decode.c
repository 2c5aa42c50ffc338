/* The decoding half of the cacheme 0.3.0 object encoding (object.c): a
 * {"__class__", "data"} dict back to its object, without ever importing.
 * The class is looked up in sys.modules and in module/class __dict__s only
 * (no module __getattr__), and only the known value types, Enums,
 * dataclasses and pydantic models are constructed. Anything else in
 * "__class__" is a decode error, so hostile bytes cannot make us import a
 * module or call an arbitrary callable. */
#include "ser/object.h"
#include "ser/serializer.h"

#include <string.h>

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
            obj = cm_ser_type_lookup((PyTypeObject *)obj, part);
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
    return PyType_Check(tp) && cm_ser_dataclass_fields(st, (PyTypeObject *)tp) != NULL;
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
        if (!cm_ser_is_plain_field(field))
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
    if (cm_ser_pydantic_bases(bases)) {
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
    if ((fields = cm_ser_dataclass_fields(st, tp)) != NULL)
        return ser_construct_dataclass(st, cls, fields, data, depth);
    for (nm = cm_ser_named; nm->module; nm++) {
        PyObject *known = cm_ser_imported(nm->module, nm->name); // borrowed
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
    if (cm_ser_pydantic_bases(bases))
        for (i = 0; i < 2; i++)
            if (bases[i] != cls && ser_subclass(cls, bases[i]))
                return 1;
    if (cm_ser_dataclass_fields(st, (PyTypeObject *)cls) != NULL)
        return 1;
    for (nm = cm_ser_named; nm->module; nm++) {
        PyObject *known = cm_ser_imported(nm->module, nm->name); // borrowed
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
