/* The serializer types of cacheme._core (see serializer.h for the byte
 * formats). Pickle and JSON go through CPython's C accelerators (_pickle,
 * _json) called directly, with the 0.3.0 object hooks in C; base64, zlib and
 * MessagePack are ours. Any failure to decode becomes SerializerError naming
 * the serializer, chained to the cause, so that a storage read of corrupt
 * bytes is an ordinary Exception (a miss and a reload in get), while
 * KeyboardInterrupt and friends pass through untouched. */
#include "ser/serializer.h"

#include "ser/base64.h"
#include "ser/compress.h"
#include "ser/msgpack_codec.h"

#define CM_ZLIB_LEVEL 3 /* what 0.3.0's Compressed* used */

typedef enum { CM_SER_PICKLE, CM_SER_JSON, CM_SER_MSGPACK, CM_SER_OTHER } CmSerKind;

static CmSerKind ser_kind(CmState *st, PyObject *ser)
{
    PyTypeObject *tp = Py_TYPE(ser);
    if (tp == (PyTypeObject *)st->ser.MsgPackSerializerType)
        return CM_SER_MSGPACK;
    if (tp == (PyTypeObject *)st->ser.JSONSerializerType)
        return CM_SER_JSON;
    if (tp == (PyTypeObject *)st->ser.PickleSerializerType)
        return CM_SER_PICKLE;
    return CM_SER_OTHER;
}

/* Turn the pending exception into SerializerError("<Name>: ...") from it. */
static void ser_decode_error(CmState *st, PyObject *self)
{
    PyObject *type = NULL, *value = NULL, *tb = NULL, *name = NULL, *msg = NULL, *err = NULL;

    if (!PyErr_ExceptionMatches(PyExc_Exception) || PyErr_ExceptionMatches(st->ser.SerializerError))
        return;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    if ((name = PyType_GetName(Py_TYPE(self))) == NULL)
        goto fail;
    msg = PyUnicode_FromFormat("%U cannot decode the cached bytes: %s: %S", name,
                               ((PyTypeObject *)type)->tp_name, value);
    if (msg == NULL || (err = PyObject_CallOneArg(st->ser.SerializerError, msg)) == NULL)
        goto fail;
    if (PyObject_SetAttrString(err, "serializer", name) < 0)
        goto fail;
    PyException_SetCause(err, Py_NewRef(value));
    PyException_SetContext(err, Py_NewRef(value));
    PyErr_SetObject(st->ser.SerializerError, err);
    goto done;
fail:
    /* could not build the error: keep that failure, or else the original */
    if (!PyErr_Occurred()) {
        PyErr_Restore(type, value, tb);
        type = value = tb = NULL;
    }
done:
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    Py_XDECREF(name);
    Py_XDECREF(msg);
    Py_XDECREF(err);
}

/* ---- the three formats, on raw bytes ------------------------------------ */

static PyObject *pickle_dumps(CmState *st, PyObject *ser, PyObject *obj)
{
    PyObject *raw = cm_ser_pickle_dumps(st, ser, obj), *res = NULL;
    size_t n;
    if (raw == NULL)
        return NULL;
    n = cm_b64_encodebytes_len((size_t)PyBytes_GET_SIZE(raw));
    if (n > PY_SSIZE_T_MAX)
        PyErr_NoMemory();
    else if ((res = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n)) != NULL)
        cm_b64_encodebytes((const uint8_t *)PyBytes_AS_STRING(raw), (size_t)PyBytes_GET_SIZE(raw),
                           PyBytes_AS_STRING(res));
    Py_DECREF(raw);
    return res;
}

/* base64 of encodebytes' layout in C; any other form through binascii */
static PyObject *b64_decode(CmState *st, PyObject *blob)
{
    if (PyBytes_CheckExact(blob)) {
        size_t n = (size_t)PyBytes_GET_SIZE(blob), len;
        PyObject *raw = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n / 4 * 3));
        if (raw == NULL)
            return NULL;
        if (cm_b64_decodebytes((const uint8_t *)PyBytes_AS_STRING(blob), n,
                               (uint8_t *)PyBytes_AS_STRING(raw), &len) == 0) {
            if (_PyBytes_Resize(&raw, (Py_ssize_t)len) < 0)
                return NULL;
            return raw;
        }
        Py_DECREF(raw);
    }
    return PyObject_CallOneArg(st->ser.a2b_base64, blob);
}

static PyObject *pickle_loads(CmState *st, PyObject *ser, PyObject *blob)
{
    PyObject *raw = b64_decode(st, blob), *res = NULL;
    if (raw != NULL)
        res = cm_ser_pickle_loads(st, ser, raw);
    Py_XDECREF(raw);
    return res;
}

static PyObject *json_dumps(CmState *st, PyObject *obj)
{
    PyObject *chunks, *text = NULL, *res = NULL, *empty = NULL;
    chunks = PyObject_CallFunctionObjArgs(st->ser.json_encoder, obj, st->ser.zero, NULL);
    if (chunks == NULL)
        goto done;
    if ((empty = PyUnicode_FromStringAndSize(NULL, 0)) == NULL)
        goto done;
    if ((text = PyUnicode_Join(empty, chunks)) == NULL)
        goto done;
    res = PyUnicode_AsUTF8String(text);
done:
    Py_XDECREF(chunks);
    Py_XDECREF(empty);
    Py_XDECREF(text);
    return res;
}

static inline int json_ws(Py_UCS4 c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* json.loads(bytes.decode(), object_hook=object_decoder), minus building a
 * JSONDecoder per call: the C scanner is made once at init. */
static PyObject *json_loads(CmState *st, const char *buf, Py_ssize_t len)
{
    PyObject *text, *idx = NULL, *pair = NULL, *res = NULL;
    Py_ssize_t i = 0, end, n;
    int kind;
    const void *data;

    if ((text = PyUnicode_DecodeUTF8(buf, len, "strict")) == NULL)
        return NULL;
    n = PyUnicode_GET_LENGTH(text);
    kind = PyUnicode_KIND(text);
    data = PyUnicode_DATA(text);
    while (i < n && json_ws(PyUnicode_READ(kind, data, i)))
        i++;
    if ((idx = PyLong_FromSsize_t(i)) == NULL)
        goto done;
    pair = PyObject_CallFunctionObjArgs(st->ser.json_scan_once, text, idx, NULL);
    if (pair == NULL) {
        if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "Expecting value at offset %zd", i);
        }
        goto done;
    }
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
        PyErr_SetString(PyExc_SystemError, "json scanner returned an unexpected value");
        goto done;
    }
    end = PyLong_AsSsize_t(PyTuple_GET_ITEM(pair, 1));
    if (end < 0)
        goto done;
    while (end < n && json_ws(PyUnicode_READ(kind, data, end)))
        end++;
    if (end != n) {
        PyErr_Format(PyExc_ValueError, "Extra data at offset %zd", end);
        goto done;
    }
    res = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
done:
    Py_DECREF(text);
    Py_XDECREF(idx);
    Py_XDECREF(pair);
    return res;
}

/* ser: the serializer object (PickleSerializer's options live on it) */
static PyObject *ser_dumps_kind(CmState *st, CmSerKind kind, PyObject *ser, PyObject *obj)
{
    switch (kind) {
    case CM_SER_PICKLE:
        return pickle_dumps(st, ser, obj);
    case CM_SER_JSON:
        return json_dumps(st, obj);
    case CM_SER_MSGPACK:
        return cm_msgpack_dumps(st, obj);
    default:
        PyErr_SetString(PyExc_SystemError, "not a builtin serializer");
        return NULL;
    }
}

/* Decode buf; blob is the same bytes as an object when the caller has one. */
static PyObject *ser_loads_kind(CmState *st, CmSerKind kind, PyObject *ser, PyObject *blob,
                                const char *buf, Py_ssize_t len)
{
    PyObject *tmp = NULL, *res = NULL;
    switch (kind) {
    case CM_SER_MSGPACK:
        return cm_msgpack_loads(st, buf, len);
    case CM_SER_JSON:
        return json_loads(st, buf, len);
    case CM_SER_PICKLE:
        if (blob == NULL && (blob = tmp = PyBytes_FromStringAndSize(buf, len)) == NULL)
            return NULL;
        res = pickle_loads(st, ser, blob);
        Py_XDECREF(tmp);
        return res;
    default:
        PyErr_SetString(PyExc_SystemError, "not a builtin serializer");
        return NULL;
    }
}

/* ---- methods ------------------------------------------------------------ */

static int ser_one_arg(const char *fname, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs == 1 && (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0))
        return 0;
    PyErr_Format(PyExc_TypeError, "%s() takes exactly one positional argument", fname);
    return -1;
}

static CmSerKind ser_own_kind(CmState *st, PyTypeObject *defcls)
{
    if (defcls == (PyTypeObject *)st->ser.MsgPackSerializerType)
        return CM_SER_MSGPACK;
    if (defcls == (PyTypeObject *)st->ser.JSONSerializerType)
        return CM_SER_JSON;
    return CM_SER_PICKLE;
}

static PyObject *Serializer_dumps(PyObject *self, PyTypeObject *defcls, PyObject *const *args,
                                  Py_ssize_t nargs, PyObject *kwnames)
{
    CmState *st = PyType_GetModuleState(defcls);
    if (ser_one_arg("dumps", nargs, kwnames) < 0)
        return NULL;
    return ser_dumps_kind(st, ser_own_kind(st, defcls), self, args[0]);
}

static PyObject *Serializer_loads(PyObject *self, PyTypeObject *defcls, PyObject *const *args,
                                  Py_ssize_t nargs, PyObject *kwnames)
{
    CmState *st = PyType_GetModuleState(defcls);
    Py_buffer view;
    PyObject *res;
    if (ser_one_arg("loads", nargs, kwnames) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL; /* wrong argument type: a TypeError, not a decode error */
    res = ser_loads_kind(st, ser_own_kind(st, defcls), self,
                         PyBytes_CheckExact(args[0]) ? args[0] : NULL, view.buf, view.len);
    PyBuffer_Release(&view);
    if (res == NULL)
        ser_decode_error(st, self);
    return res;
}

/* CompressedSerializer: zlib around self.serializer (a class attribute in
 * the 0.3.0 subclasses; any object with dumps/loads works), or around the
 * PickleSerializer made from that attribute's type and the allowed= /
 * secret= given to the constructor. Inflating stops at max_size. */
typedef struct {
    PyObject_HEAD
    size_t max_size;      /* 0 until __init__ ran: CM_ZLIB_DEFAULT_MAX_OUT */
    PyObject *serializer; /* from allowed= / secret=, or NULL: the attribute */
} CmCompressedObject;

static PyObject *compressed_inner(CmState *st, PyObject *self)
{
    PyObject *inner = ((CmCompressedObject *)self)->serializer;
    return inner != NULL ? Py_NewRef(inner) : PyObject_GetAttr(self, st->ser.s_serializer);
}

static int Compressed_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_size", "allowed", "secret", NULL};
    CmCompressedObject *co = (CmCompressedObject *)self;
    CmState *st = cm_state_from_type(Py_TYPE(self));
    PyObject *max_size = NULL, *allowed = NULL, *secret = NULL, *attr = NULL, *kw = NULL;
    PyObject *empty = NULL, *inner = NULL;
    size_t limit = CM_ZLIB_DEFAULT_MAX_OUT;
    int rc = -1;

    if (st == NULL)
        return -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$OOO:CompressedSerializer", kwlist, &max_size,
                                     &allowed, &secret))
        return -1;
    if (max_size != NULL && max_size != Py_None) {
        Py_ssize_t v;
        if (!PyLong_Check(max_size) || PyBool_Check(max_size)) {
            PyErr_SetString(PyExc_TypeError, "CompressedSerializer: max_size must be an int");
            return -1;
        }
        v = PyLong_AsSsize_t(max_size);
        if (v == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            v = -1;
        }
        if (v < 1) {
            PyErr_Format(PyExc_ValueError,
                         "CompressedSerializer: max_size must be a byte count in 1..%zd, got %R",
                         PY_SSIZE_T_MAX, max_size);
            return -1;
        }
        limit = (size_t)v;
    }
    if ((allowed != NULL && allowed != Py_None) || (secret != NULL && secret != Py_None)) {
        if ((attr = PyObject_GetAttr(self, st->ser.s_serializer)) == NULL)
            goto done;
        if (!PyObject_TypeCheck(attr, (PyTypeObject *)st->ser.PickleSerializerType)) {
            PyErr_SetString(PyExc_TypeError, "CompressedSerializer: allowed= and secret= are "
                                             "PickleSerializer options; serializer is not one");
            goto done;
        }
        if ((kw = Py_BuildValue("{sOsO}", "allowed", allowed ? allowed : Py_None, "secret",
                                secret ? secret : Py_None)) == NULL ||
            (empty = PyTuple_New(0)) == NULL ||
            (inner = PyObject_Call((PyObject *)Py_TYPE(attr), empty, kw)) == NULL)
            goto done;
    }
    co->max_size = limit;
    Py_XSETREF(co->serializer, inner);
    inner = NULL;
    rc = 0;
done:
    Py_XDECREF(attr);
    Py_XDECREF(kw);
    Py_XDECREF(empty);
    Py_XDECREF(inner);
    return rc;
}

static int Compressed_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(((CmCompressedObject *)self)->serializer);
    return 0;
}

static int Compressed_clear(PyObject *self)
{
    Py_CLEAR(((CmCompressedObject *)self)->serializer);
    return 0;
}

static void Compressed_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Compressed_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *Compressed_max_size(PyObject *self, void *closure)
{
    size_t n = ((CmCompressedObject *)self)->max_size;
    (void)closure;
    return PyLong_FromSize_t(n ? n : CM_ZLIB_DEFAULT_MAX_OUT);
}

static PyObject *Compressed_dumps(PyObject *self, PyTypeObject *defcls, PyObject *const *args,
                                  Py_ssize_t nargs, PyObject *kwnames)
{
    CmState *st = PyType_GetModuleState(defcls);
    PyObject *inner = NULL, *raw = NULL, *res = NULL;
    Py_buffer view = {0};
    CmZBuf z = {0};
    const char *err = NULL;
    CmSerKind kind;

    if (ser_one_arg("dumps", nargs, kwnames) < 0)
        return NULL;
    if ((inner = compressed_inner(st, self)) == NULL)
        goto done;
    kind = ser_kind(st, inner);
    raw = kind == CM_SER_OTHER ? PyObject_CallMethodOneArg(inner, st->ser.s_dumps, args[0])
                               : ser_dumps_kind(st, kind, inner, args[0]);
    if (raw == NULL || PyObject_GetBuffer(raw, &view, PyBUF_SIMPLE) < 0)
        goto done;
    if (cm_zlib_compress(view.buf, (size_t)view.len, CM_ZLIB_LEVEL, &z, &err) < 0) {
        PyErr_Format(PyExc_ValueError, "zlib: %s", err);
        goto done;
    }
    res = PyBytes_FromStringAndSize((const char *)z.data, (Py_ssize_t)z.len);
done:
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    free(z.data);
    Py_XDECREF(inner);
    Py_XDECREF(raw);
    return res;
}

static PyObject *Compressed_loads(PyObject *self, PyTypeObject *defcls, PyObject *const *args,
                                  Py_ssize_t nargs, PyObject *kwnames)
{
    CmState *st = PyType_GetModuleState(defcls);
    PyObject *inner = NULL, *raw = NULL, *res = NULL;
    Py_buffer view = {0};
    CmZBuf z = {0};
    const char *err = NULL;
    CmSerKind kind;

    if (ser_one_arg("loads", nargs, kwnames) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    size_t limit = ((CmCompressedObject *)self)->max_size;

    if ((inner = compressed_inner(st, self)) == NULL)
        goto done;
    if (cm_zlib_decompress(view.buf, (size_t)view.len, limit ? limit : CM_ZLIB_DEFAULT_MAX_OUT, &z,
                           &err) < 0) {
        PyErr_Format(PyExc_ValueError, "zlib: %s", err);
        goto fail;
    }
    kind = ser_kind(st, inner);
    if (kind == CM_SER_OTHER || kind == CM_SER_PICKLE) {
        raw = PyBytes_FromStringAndSize((const char *)z.data, (Py_ssize_t)z.len);
        free(z.data); /* not both copies at once */
        z.data = NULL;
        if (raw == NULL)
            goto fail;
        res = kind == CM_SER_OTHER ? PyObject_CallMethodOneArg(inner, st->ser.s_loads, raw)
                                   : pickle_loads(st, inner, raw);
    } else {
        res = ser_loads_kind(st, kind, inner, NULL, (const char *)z.data, (Py_ssize_t)z.len);
    }
    if (res != NULL)
        goto done;
fail:
    ser_decode_error(st, self);
done:
    PyBuffer_Release(&view);
    free(z.data);
    Py_XDECREF(inner);
    Py_XDECREF(raw);
    return res;
}

static void Serializer_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

#define CM_SER_METHOD(name, fn, doc)                                                               \
    {                                                                                              \
        name, (PyCFunction)(void (*)(void))fn, METH_METHOD | METH_FASTCALL | METH_KEYWORDS, doc    \
    }

static PyMethodDef Serializer_methods[] = {
    CM_SER_METHOD("dumps", Serializer_dumps, "dumps(obj) -> bytes"),
    CM_SER_METHOD("loads", Serializer_loads,
                  "loads(bytes) -> object; SerializerError if the bytes cannot be decoded"),
    {NULL, NULL, 0, NULL},
};

static PyMethodDef Compressed_methods[] = {
    CM_SER_METHOD("dumps", Compressed_dumps,
                  "dumps(obj) -> zlib(level 3) of serializer.dumps(obj)"),
    CM_SER_METHOD("loads", Compressed_loads,
                  "loads(bytes) -> serializer.loads(inflate(bytes)); SerializerError on bad input"),
    {NULL, NULL, 0, NULL},
};

#define CM_SER_SPEC(var, pyname, methods, doc)                                                     \
    static PyType_Slot var##_slots[] = {                                                           \
        {Py_tp_dealloc, Serializer_dealloc},                                                       \
        {Py_tp_methods, methods},                                                                  \
        {Py_tp_doc, doc},                                                                          \
        {0, NULL},                                                                                 \
    };                                                                                             \
    static PyType_Spec var = {                                                                     \
        .name = "cacheme.serializer." pyname,                                                      \
        .basicsize = sizeof(PyObject),                                                             \
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_IMMUTABLETYPE,              \
        .slots = var##_slots,                                                                      \
    };

static PyType_Slot cm_pickle_spec_slots[] = {
    {Py_tp_init, cm_pickle_ser_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, cm_pickle_ser_dealloc},
    {Py_tp_traverse, cm_pickle_ser_traverse},
    {Py_tp_clear, cm_pickle_ser_clear},
    {Py_tp_methods, Serializer_methods},
    {Py_tp_doc,
     "PickleSerializer(*, allowed=(), secret=None)\n\n"
     "base64.encodebytes(pickle.dumps(obj)), as cacheme 0.3.0 wrote it. loads() constructs only "
     "the value types JSON/MsgPack decode (datetime, date, time, timedelta, timezone, Decimal, "
     "UUID, Enums, dataclasses, pydantic models, set, frozenset, bytearray, complex) and the "
     "classes named in allowed, from modules already imported; it never imports and never calls "
     "a function the bytes name. secret=bytes signs payloads (HMAC-SHA256) and loads only signed "
     "ones, with full pickle."},
    {0, NULL},
};

static PyType_Spec cm_pickle_spec = {
    .name = "cacheme.serializer.PickleSerializer",
    .basicsize = sizeof(CmPickleSerObject),
    .flags =
        Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = cm_pickle_spec_slots,
};
CM_SER_SPEC(cm_json_spec, "JSONSerializer", Serializer_methods,
            "json.dumps(obj, default=object_encoder).encode(), as cacheme 0.3.0 wrote it.")
CM_SER_SPEC(cm_msgpack_spec, "MsgPackSerializer", Serializer_methods,
            "MessagePack (msgpack-c), byte-compatible with cacheme 0.3.0's msgpack.dumps.")
static PyGetSetDef Compressed_getset[] = {
    {"max_size", Compressed_max_size, NULL, "inflated bytes above this are a decode error", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot cm_compressed_spec_slots[] = {
    {Py_tp_init, Compressed_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, Compressed_dealloc},
    {Py_tp_traverse, Compressed_traverse},
    {Py_tp_clear, Compressed_clear},
    {Py_tp_methods, Compressed_methods},
    {Py_tp_getset, Compressed_getset},
    {Py_tp_doc, "CompressedSerializer(*, max_size=64 MiB, allowed=(), secret=None)\n\n"
                "zlib (level 3) around the `serializer` class attribute. Inflating stops at "
                "max_size bytes (a decode error); allowed/secret configure a PickleSerializer."},
    {0, NULL},
};

static PyType_Spec cm_compressed_spec = {
    .name = "cacheme.serializer.CompressedSerializer",
    .basicsize = sizeof(CmCompressedObject),
    .flags =
        Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = cm_compressed_spec_slots,
};

/* ---- init / traverse / clear -------------------------------------------- */

static PyObject *ser_attr(const char *module, const char *name)
{
    PyObject *mod = PyImport_ImportModule(module), *res = NULL;
    if (mod != NULL)
        res = PyObject_GetAttrString(mod, name);
    Py_XDECREF(mod);
    return res;
}

static int ser_add_type(PyObject *mod, PyType_Spec *spec, PyObject **slot)
{
    *slot = PyType_FromModuleAndSpec(mod, spec, NULL);
    if (*slot == NULL)
        return -1;
    return PyModule_AddType(mod, (PyTypeObject *)*slot);
}

static int ser_json_init(CmState *st)
{
    PyObject *make_encoder = NULL, *encode_str = NULL, *decoder_cls = NULL, *decoder = NULL;
    PyObject *kw = NULL, *empty = NULL;
    int rc = -1;

    make_encoder = ser_attr("_json", "make_encoder");
    encode_str = make_encoder ? ser_attr("_json", "encode_basestring_ascii") : NULL;
    if (encode_str == NULL)
        goto done;
    /* json.dumps's own arguments: no markers (cycles end in RecursionError),
     * separators (', ', ': '), ensure_ascii, allow_nan */
    st->ser.json_encoder =
        PyObject_CallFunction(make_encoder, "OOOOssOOO", Py_None, st->ser.object_encoder,
                              encode_str, Py_None, ": ", ", ", Py_False, Py_False, Py_True);
    if (st->ser.json_encoder == NULL)
        goto done;
    if ((decoder_cls = ser_attr("json", "JSONDecoder")) == NULL)
        goto done;
    if ((kw = Py_BuildValue("{sO}", "object_hook", st->ser.object_decoder)) == NULL ||
        (empty = PyTuple_New(0)) == NULL)
        goto done;
    if ((decoder = PyObject_Call(decoder_cls, empty, kw)) == NULL)
        goto done;
    st->ser.json_scan_once = PyObject_GetAttrString(decoder, "scan_once");
    rc = st->ser.json_scan_once ? 0 : -1;
done:
    Py_XDECREF(make_encoder);
    Py_XDECREF(encode_str);
    Py_XDECREF(decoder_cls);
    Py_XDECREF(decoder);
    Py_XDECREF(kw);
    Py_XDECREF(empty);
    return rc;
}

int cm_serializer_init(PyObject *mod, CmState *st)
{
    int rc = -1;

    if (cm_msgpack_init(mod) < 0)
        return -1;
#define CM_SER_STR(field, text)                                                                    \
    if ((st->ser.field = PyUnicode_InternFromString(text)) == NULL)                                \
        goto done;
    CM_SER_STR(s_class, "__class__")
    CM_SER_STR(s_data, "data")
    CM_SER_STR(s_isoformat, "isoformat")
    CM_SER_STR(s_fromisoformat, "fromisoformat")
    CM_SER_STR(s_serializer, "serializer")
    CM_SER_STR(s_dumps, "dumps")
    CM_SER_STR(s_loads, "loads")
    CM_SER_STR(s_dataclass_fields, "__dataclass_fields__")
    CM_SER_STR(datetime_qualname, "datetime.datetime")
    CM_SER_STR(s_builtins, "builtins")
    CM_SER_STR(s_value, "value")
    CM_SER_STR(s_updated_at, "updated_at")
#undef CM_SER_STR
    if ((st->ser.zero = PyLong_FromLong(0)) == NULL)
        goto done;

    /* the value types of the 0.3.0 encoding; decimal and uuid are imported
     * here, once, so that decoding never has to import anything */
    if ((st->ser.datetime = ser_attr("datetime", "datetime")) == NULL ||
        (st->ser.date = ser_attr("datetime", "date")) == NULL ||
        (st->ser.time = ser_attr("datetime", "time")) == NULL ||
        (st->ser.timedelta = ser_attr("datetime", "timedelta")) == NULL ||
        (st->ser.utc = ser_attr("datetime", "timezone")) == NULL ||
        (st->ser.Decimal = ser_attr("decimal", "Decimal")) == NULL ||
        (st->ser.UUID = ser_attr("uuid", "UUID")) == NULL ||
        (st->ser.Enum = ser_attr("enum", "Enum")) == NULL)
        goto done;
    Py_SETREF(st->ser.utc, PyObject_GetAttrString(st->ser.utc, "utc")); /* timezone.utc */
    if (st->ser.utc == NULL ||
        (st->ser.now = PyObject_GetAttrString(st->ser.datetime, "now")) == NULL)
        goto done;
    if ((st->ser.pickle_dumps = ser_attr("_pickle", "dumps")) == NULL ||
        (st->ser.a2b_base64 = ser_attr("binascii", "a2b_base64")) == NULL)
        goto done;

    st->ser.SerializerError = PyErr_NewExceptionWithDoc(
        "cacheme.serializer.SerializerError",
        "Cached bytes could not be decoded; .serializer names the serializer. In get() this is a "
        "miss for that storage followed by a reload.",
        PyExc_Exception, NULL);
    if (st->ser.SerializerError == NULL ||
        PyModule_AddObjectRef(mod, "SerializerError", st->ser.SerializerError) < 0)
        goto done;
    if (cm_ser_object_init(mod, st) < 0 || ser_json_init(st) < 0 || cm_ser_pickle_init(mod, st) < 0)
        goto done;
    if (ser_add_type(mod, &cm_pickle_spec, &st->ser.PickleSerializerType) < 0 ||
        ser_add_type(mod, &cm_json_spec, &st->ser.JSONSerializerType) < 0 ||
        ser_add_type(mod, &cm_msgpack_spec, &st->ser.MsgPackSerializerType) < 0 ||
        ser_add_type(mod, &cm_compressed_spec, &st->ser.CompressedSerializerType) < 0)
        goto done;
    rc = 0;
done:
    return rc;
}

int cm_ser_state_traverse(CmSerState *ser, visitproc visit, void *arg)
{
#define CM_SER_VISIT(n) Py_VISIT(ser->n);
    CM_SER_OBJECTS(CM_SER_VISIT)
#undef CM_SER_VISIT
    /* keycache holds only exact str objects: nothing to traverse */
    for (size_t i = 0; i < CM_SER_MAPTPL_SLOTS; i++)
        Py_VISIT(ser->maptpl[i].dict);
    return 0;
}

void cm_ser_state_gc_clear(CmSerState *ser)
{
    Py_CLEAR(ser->object_encoder);
    Py_CLEAR(ser->object_decoder);
}

void cm_ser_state_clear(CmSerState *ser)
{
#define CM_SER_CLEAR(n) Py_CLEAR(ser->n);
    CM_SER_OBJECTS(CM_SER_CLEAR)
#undef CM_SER_CLEAR
    for (size_t i = 0; i < CM_SER_KEYCACHE_SIZE; i++)
        Py_CLEAR(ser->keycache[i]);
    for (size_t i = 0; i < CM_SER_MAPTPL_SLOTS; i++)
        Py_CLEAR(ser->maptpl[i].dict);
}
