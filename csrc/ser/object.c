/* The cacheme 0.3.0 object encoding, shared by JSON and MsgPack.
 *
 * 0.3.0 wrote objects that JSON/MessagePack cannot hold as
 *     {"__class__": "<module>.<qualname>", "data": pydantic_encoder(obj)}
 * and read them back with importlib.import_module + pydantic.parse_obj_as.
 * We write the same bytes (object_encode.c) but read them without ever
 * importing (object_decode.c). This file holds what both halves look up
 * (object.h) and the module functions object_encoder, object_decoder and
 * resolve_class (also the json module's default and object_hook). */
#include "ser/object.h"
#include "ser/serializer.h"

#include "base/compat.h"

/* An attribute of an already-imported module, found in its __dict__. */
PyObject * // borrowed, NULL without an exception if absent
cm_ser_imported(const char *module, const char *name)
{
    PyObject *modules = PyImport_GetModuleDict();          // borrowed
    PyObject *mod = PyDict_GetItemString(modules, module); // borrowed
    if (mod == NULL || !PyModule_Check(mod))
        return NULL;
    return PyDict_GetItemString(PyModule_GetDict(mod), name);
}

PyObject * // borrowed
cm_ser_type_lookup(PyTypeObject *tp, PyObject *name)
{
    return cm_type_lookup(tp, name);
}

/* pydantic BaseModel classes that exist in this process (v2, v1 or the
 * pydantic.v1 shim inside v2). */
int cm_ser_pydantic_bases(PyObject *out[2])
{
    out[0] = cm_ser_imported("pydantic.main", "BaseModel");
    out[1] = cm_ser_imported("pydantic.v1.main", "BaseModel");
    if (out[1] == out[0])
        out[1] = NULL;
    return (out[0] != NULL) + (out[1] != NULL);
}

PyObject * // borrowed, NULL if not a dataclass
cm_ser_dataclass_fields(CmState *st, PyTypeObject *tp)
{
    PyObject *fields = cm_ser_type_lookup(tp, st->ser.s_dataclass_fields); // borrowed
    return (fields && PyDict_Check(fields)) ? fields : NULL;
}

/* True for a real dataclass field (not ClassVar / InitVar). */
int cm_ser_is_plain_field(PyObject *field)
{
    PyObject *marker = cm_ser_imported("dataclasses", "_FIELD"); // borrowed
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

const CmSerNamed cm_ser_named[] = {
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
