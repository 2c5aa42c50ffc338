/* MessagePack <-> Python objects.
 *
 * Encoding uses msgpack-c's own pack template (msgpack/pack_template.h, the
 * code behind msgpack_pack_*), instantiated here over an inline growable
 * buffer instead of msgpack_packer's write callback, so each header is a
 * capacity check and a store, not an indirect call. The rules are the ones
 * of the msgpack package as 0.3.0 called it: smallest int encoding, float64,
 * str8 allowed (use_bin_type=True), bytes as bin, tuples as arrays, and
 * everything else through the 0.3.0 object encoding (ser_object.c).
 *
 * Decoding is a recursive reader over (pointer, end) that checks every
 * length against the bytes left before touching them, so a declared length
 * can never make us read past the input or allocate more than the input
 * could describe (an array of n items needs >= n bytes, a map >= 2n).
 * Nesting deeper than CM_SER_MAX_DECODE_DEPTH is an error. Ext types (never
 * written by 0.3.0) are refused. Maps with a "__class__" key go through the
 * 0.3.0 object decoder, like msgpack's object_hook did. */
#include "msgpack_codec.h"
#include "serializer.h"

#include <msgpack.h>
#include <string.h>

/* ---- output buffer + msgpack-c's pack template ------------------------- */

#define CM_MP_INLINE 1024

typedef struct {
    char *data;
    size_t len, cap;
    char inline_buf[CM_MP_INLINE];
} CmMpBuf;

static int cm_mpbuf_grow(CmMpBuf *b, size_t need)
{
    size_t cap = b->cap * 2;
    char *p;
    if (need > PY_SSIZE_T_MAX - b->len) {
        PyErr_NoMemory();
        return -1;
    }
    if (cap < b->len + need)
        cap = b->len + need;
    if (b->data == b->inline_buf) {
        if ((p = PyMem_Malloc(cap)) != NULL)
            memcpy(p, b->data, b->len);
    } else {
        p = PyMem_Realloc(b->data, cap);
    }
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

static inline int cm_mpbuf_write(CmMpBuf *b, const char *src, size_t n)
{
    if (n > b->cap - b->len && cm_mpbuf_grow(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, src, n);
    b->len += n;
    return 0;
}

#undef msgpack_pack_inline_func
#undef msgpack_pack_inline_func_cint
#undef msgpack_pack_inline_func_fixint
#undef msgpack_pack_user
#undef msgpack_pack_append_buffer
#define msgpack_pack_inline_func(name) static inline int cm_mp_pack##name
#define msgpack_pack_inline_func_cint(name) static inline int cm_mp_pack##name
#define msgpack_pack_user CmMpBuf *
#define msgpack_pack_append_buffer(user, buf, len)                                                 \
    return cm_mpbuf_write(user, (const char *)(buf), len)
#define msgpack_pack_ext cm_mp_pack_ext
#include <msgpack/pack_template.h>
#undef msgpack_pack_ext
#undef msgpack_pack_inline_func_cint

/* ---- encoder ------------------------------------------------------------ */

typedef struct {
    CmState *st;
    CmMpBuf buf;
} CmMpEnc;

static int mp_pack(CmMpEnc *e, PyObject *obj, int depth);

static int mp_pack_default(CmMpEnc *e, PyObject *obj, int depth)
{
    PyObject *enc = cm_ser_object_encode(e->st, obj);
    int rc = -1;
    if (enc != NULL)
        rc = mp_pack(e, enc, depth + 1);
    Py_XDECREF(enc);
    return rc;
}

static int mp_pack_str(CmMpEnc *e, PyObject *obj)
{
    Py_ssize_t n;
    const char *u;
    if (PyUnicode_IS_COMPACT_ASCII(obj)) {
        u = (const char *)PyUnicode_DATA(obj);
        n = PyUnicode_GET_LENGTH(obj);
    } else if ((u = PyUnicode_AsUTF8AndSize(obj, &n)) == NULL) {
        return -1;
    }
    if ((uint64_t)n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "str is too large for MessagePack");
        return -1;
    }
    if (cm_mp_pack_str(&e->buf, (size_t)n) < 0)
        return -1;
    return cm_mp_pack_str_body(&e->buf, u, (size_t)n);
}

static int mp_pack_bin(CmMpEnc *e, const void *p, Py_ssize_t n)
{
    if ((uint64_t)n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "bytes object is too large for MessagePack");
        return -1;
    }
    if (cm_mp_pack_bin(&e->buf, (size_t)n) < 0)
        return -1;
    return cm_mp_pack_bin_body(&e->buf, p, (size_t)n);
}

static int mp_pack_int(CmMpEnc *e, PyObject *obj, int depth)
{
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow == 0) {
        if (v == -1 && PyErr_Occurred())
            return -1;
        return v >= 0 ? cm_mp_pack_uint64(&e->buf, (uint64_t)v)
                      : cm_mp_pack_int64(&e->buf, (int64_t)v);
    }
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(obj);
        if (!(u == (unsigned long long)-1 && PyErr_Occurred()))
            return cm_mp_pack_uint64(&e->buf, (uint64_t)u);
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
    }
    /* out of 64-bit range: msgpack hands it to default, which refuses */
    return mp_pack_default(e, obj, depth);
}

static int mp_pack_dict(CmMpEnc *e, PyObject *obj, int depth)
{
    Py_ssize_t n = PyDict_GET_SIZE(obj), pos = 0, seen = 0;
    PyObject *k, *v;
    if ((uint64_t)n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "dict is too large for MessagePack");
        return -1;
    }
    if (cm_mp_pack_map(&e->buf, (size_t)n) < 0)
        return -1;
    while (PyDict_Next(obj, &pos, &k, &v)) {
        int rc;
        /* default hooks run Python code that could drop them from the dict */
        Py_INCREF(k);
        Py_INCREF(v);
        rc = (++seen > n) ? -1 : mp_pack(e, k, depth + 1);
        if (rc == 0)
            rc = mp_pack(e, v, depth + 1);
        Py_DECREF(k);
        Py_DECREF(v);
        if (rc < 0) {
            if (seen > n)
                PyErr_SetString(PyExc_RuntimeError, "dict changed size during serialization");
            return -1;
        }
    }
    if (seen != n || PyDict_GET_SIZE(obj) != n) {
        PyErr_SetString(PyExc_RuntimeError, "dict changed size during serialization");
        return -1;
    }
    return 0;
}

static int mp_pack_seq(CmMpEnc *e, PyObject *obj, int depth)
{
    Py_ssize_t n = Py_SIZE(obj), i;
    int is_list = PyList_Check(obj);
    if ((uint64_t)n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "sequence is too large for MessagePack");
        return -1;
    }
    if (cm_mp_pack_array(&e->buf, (size_t)n) < 0)
        return -1;
    for (i = 0; i < n; i++) {
        PyObject *item;
        int rc;
        if (is_list && i >= PyList_GET_SIZE(obj)) {
            PyErr_SetString(PyExc_RuntimeError, "list changed size during serialization");
            return -1;
        }
        item = is_list ? PyList_GET_ITEM(obj, i) : PyTuple_GET_ITEM(obj, i);
        Py_INCREF(item);
        rc = mp_pack(e, item, depth + 1);
        Py_DECREF(item);
        if (rc < 0)
            return -1;
    }
    return 0;
}

static int mp_pack_buffer(CmMpEnc *e, PyObject *obj)
{
    Py_buffer view;
    int rc;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0)
        return -1;
    rc = mp_pack_bin(e, view.buf, view.len);
    PyBuffer_Release(&view);
    return rc;
}

static int mp_pack(CmMpEnc *e, PyObject *obj, int depth)
{
    PyTypeObject *tp = Py_TYPE(obj);

    if (depth > CM_SER_MAX_ENCODE_DEPTH) {
        PyErr_SetString(PyExc_ValueError, "recursion limit exceeded");
        return -1;
    }
    if (tp == &PyUnicode_Type)
        return mp_pack_str(e, obj);
    if (obj == Py_None)
        return cm_mp_pack_nil(&e->buf);
    if (obj == Py_True)
        return cm_mp_pack_true(&e->buf);
    if (obj == Py_False)
        return cm_mp_pack_false(&e->buf);
    if (PyLong_Check(obj))
        return mp_pack_int(e, obj, depth);
    if (PyFloat_Check(obj))
        return cm_mp_pack_double(&e->buf, PyFloat_AS_DOUBLE(obj));
    if (PyDict_Check(obj))
        return mp_pack_dict(e, obj, depth);
    if (PyList_Check(obj) || PyTuple_Check(obj))
        return mp_pack_seq(e, obj, depth);
    if (PyUnicode_Check(obj))
        return mp_pack_str(e, obj);
    if (PyBytes_Check(obj))
        return mp_pack_bin(e, PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj));
    if (PyByteArray_Check(obj) || PyMemoryView_Check(obj))
        return mp_pack_buffer(e, obj);
    return mp_pack_default(e, obj, depth);
}

PyObject *cm_msgpack_dumps(CmState *st, PyObject *obj)
{
    CmMpEnc e;
    PyObject *res = NULL;

    e.st = st;
    e.buf.data = e.buf.inline_buf;
    e.buf.len = 0;
    e.buf.cap = CM_MP_INLINE;
    if (mp_pack(&e, obj, 0) == 0)
        res = PyBytes_FromStringAndSize(e.buf.data, (Py_ssize_t)e.buf.len);
    if (e.buf.data != e.buf.inline_buf)
        PyMem_Free(e.buf.data);
    return res;
}

/* ---- decoder ------------------------------------------------------------ */

typedef struct {
    CmState *st;
    const uint8_t *start, *p, *end;
} CmMpDec;

static PyObject *mp_fail(CmMpDec *d, const char *what)
{
    PyErr_Format(PyExc_ValueError, "%s at offset %zd", what, (Py_ssize_t)(d->p - d->start));
    return NULL;
}

static inline size_t mp_left(const CmMpDec *d) { return (size_t)(d->end - d->p); }

static inline uint16_t mp_be16(const uint8_t *q)
{
    return (uint16_t)(((uint16_t)q[0] << 8) | q[1]);
}

static inline uint32_t mp_be32(const uint8_t *q)
{
    return ((uint32_t)q[0] << 24) | ((uint32_t)q[1] << 16) | ((uint32_t)q[2] << 8) | q[3];
}

static inline uint64_t mp_be64(const uint8_t *q)
{
    return ((uint64_t)mp_be32(q) << 32) | mp_be32(q + 4);
}

/* A big-endian unsigned of 1, 2 or 4 bytes (a length); -1 if truncated. */
static inline int mp_read_len(CmMpDec *d, int width, size_t *n)
{
    if (mp_left(d) < (size_t)width)
        return -1;
    *n = width == 1 ? d->p[0] : width == 2 ? mp_be16(d->p) : mp_be32(d->p);
    d->p += width;
    return 0;
}

static PyObject *mp_read(CmMpDec *d, int depth);

static PyObject *mp_read_str(CmMpDec *d, size_t n)
{
    const char *q = (const char *)d->p;
    if (mp_left(d) < n)
        return mp_fail(d, "truncated str");
    d->p += n;
    return PyUnicode_DecodeUTF8(q, (Py_ssize_t)n, "strict");
}

static PyObject *mp_read_bin(CmMpDec *d, size_t n)
{
    const char *q = (const char *)d->p;
    if (mp_left(d) < n)
        return mp_fail(d, "truncated bin");
    d->p += n;
    return PyBytes_FromStringAndSize(q, (Py_ssize_t)n);
}

static PyObject *mp_read_array(CmMpDec *d, size_t n, int depth)
{
    PyObject *list;
    size_t i;
    if (depth >= CM_SER_MAX_DECODE_DEPTH)
        return mp_fail(d, "nesting too deep");
    if (n > mp_left(d))
        return mp_fail(d, "array length exceeds the input");
    if ((list = PyList_New((Py_ssize_t)n)) == NULL)
        return NULL;
    for (i = 0; i < n; i++) {
        PyObject *item = mp_read(d, depth + 1);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
}

/* Map keys repeat (lists of records), so short ASCII keys are kept in a small
 * direct-mapped cache: a hit is a memcmp and an incref instead of a new str,
 * and the str keeps its cached hash for the dict insert. */
#define CM_MP_KEYCACHE_MAXLEN 32

static PyObject *mp_read_key(CmMpDec *d, int depth)
{
    uint8_t b;
    size_t n, i;
    const uint8_t *q;
    uint32_t h = 2166136261u;
    PyObject **slot, *key;

    if (d->p >= d->end)
        return mp_fail(d, "truncated input");
    b = *d->p;
    if ((b & 0xe0) == 0xa0) {
        n = b & 0x1f;
    } else if (b == 0xd9 && mp_left(d) >= 2) {
        n = d->p[1];
        if (n > CM_MP_KEYCACHE_MAXLEN)
            return mp_read(d, depth);
    } else {
        return mp_read(d, depth);
    }
    q = d->p + (b == 0xd9 ? 2 : 1);
    if ((size_t)(d->end - q) < n)
        return mp_read(d, depth); /* let the reader report the truncation */
    for (i = 0; i < n; i++) {
        if (q[i] & 0x80)
            return mp_read(d, depth);
        h = (h ^ q[i]) * 16777619u;
    }
    slot = &d->st->ser_keycache[(h ^ (uint32_t)n) & (CM_SER_KEYCACHE_SIZE - 1)];
    key = *slot;
    if (key != NULL && (size_t)PyUnicode_GET_LENGTH(key) == n &&
        memcmp(PyUnicode_DATA(key), q, n) == 0) {
        d->p = q + n;
        return Py_NewRef(key);
    }
    if ((key = PyUnicode_New((Py_ssize_t)n, 127)) == NULL)
        return NULL;
    memcpy(PyUnicode_DATA(key), q, n);
    d->p = q + n;
    Py_XSETREF(*slot, Py_NewRef(key));
    return key;
}

static inline int mp_is_class_key(PyObject *k)
{
    return PyUnicode_CheckExact(k) && PyUnicode_IS_COMPACT_ASCII(k) &&
           PyUnicode_GET_LENGTH(k) == 9 && memcmp(PyUnicode_DATA(k), "__class__", 9) == 0;
}

static PyObject *mp_read_map(CmMpDec *d, size_t n, int depth)
{
    PyObject *dict, *res = NULL;
    size_t i;
    int has_class = 0;
    if (depth >= CM_SER_MAX_DECODE_DEPTH)
        return mp_fail(d, "nesting too deep");
    if (n > mp_left(d) / 2)
        return mp_fail(d, "map length exceeds the input");
    if ((dict = _PyDict_NewPresized((Py_ssize_t)n)) == NULL)
        return NULL;
    for (i = 0; i < n; i++) {
        PyObject *k, *v = NULL;
        int rc = -1;
        if ((k = mp_read_key(d, depth + 1)) != NULL && (v = mp_read(d, depth + 1)) != NULL) {
            has_class |= mp_is_class_key(k);
            rc = PyDict_SetItem(dict, k, v);
        }
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (rc < 0)
            goto done;
    }
    res = has_class ? cm_ser_object_decode(d->st, dict) : Py_NewRef(dict);
done:
    Py_DECREF(dict);
    return res;
}

static PyObject *mp_read(CmMpDec *d, int depth)
{
    uint8_t b;
    size_t n;
    const uint8_t *q;

    if (d->p >= d->end)
        return mp_fail(d, "truncated input");
    b = *d->p++;
    if (b <= 0x7f)
        return PyLong_FromLong(b);
    if (b >= 0xe0)
        return PyLong_FromLong((int8_t)b);
    switch (b >> 4) {
    case 0x8:
        return mp_read_map(d, b & 0x0f, depth);
    case 0x9:
        return mp_read_array(d, b & 0x0f, depth);
    case 0xa:
    case 0xb:
        return mp_read_str(d, b & 0x1f);
    default:
        break;
    }
    q = d->p;
    switch (b) {
    case 0xc0:
        Py_RETURN_NONE;
    case 0xc2:
        Py_RETURN_FALSE;
    case 0xc3:
        Py_RETURN_TRUE;
    case 0xc4:
    case 0xc5:
    case 0xc6:
        if (mp_read_len(d, 1 << (b - 0xc4), &n) < 0)
            return mp_fail(d, "truncated bin length");
        return mp_read_bin(d, n);
    case 0xd9:
    case 0xda:
    case 0xdb:
        if (mp_read_len(d, 1 << (b - 0xd9), &n) < 0)
            return mp_fail(d, "truncated str length");
        return mp_read_str(d, n);
    case 0xdc:
    case 0xdd:
        if (mp_read_len(d, b == 0xdc ? 2 : 4, &n) < 0)
            return mp_fail(d, "truncated array length");
        return mp_read_array(d, n, depth);
    case 0xde:
    case 0xdf:
        if (mp_read_len(d, b == 0xde ? 2 : 4, &n) < 0)
            return mp_fail(d, "truncated map length");
        return mp_read_map(d, n, depth);
    case 0xca: {
        uint32_t u;
        float f;
        if (mp_left(d) < 4)
            return mp_fail(d, "truncated float32");
        u = mp_be32(q);
        memcpy(&f, &u, 4);
        d->p += 4;
        return PyFloat_FromDouble((double)f);
    }
    case 0xcb: {
        uint64_t u;
        double f;
        if (mp_left(d) < 8)
            return mp_fail(d, "truncated float64");
        u = mp_be64(q);
        memcpy(&f, &u, 8);
        d->p += 8;
        return PyFloat_FromDouble(f);
    }
    case 0xcc:
        if (mp_left(d) < 1)
            break;
        d->p += 1;
        return PyLong_FromLong(q[0]);
    case 0xcd:
        if (mp_left(d) < 2)
            break;
        d->p += 2;
        return PyLong_FromLong(mp_be16(q));
    case 0xce:
        if (mp_left(d) < 4)
            break;
        d->p += 4;
        return PyLong_FromUnsignedLong(mp_be32(q));
    case 0xcf:
        if (mp_left(d) < 8)
            break;
        d->p += 8;
        return PyLong_FromUnsignedLongLong(mp_be64(q));
    case 0xd0:
        if (mp_left(d) < 1)
            break;
        d->p += 1;
        return PyLong_FromLong((int8_t)q[0]);
    case 0xd1:
        if (mp_left(d) < 2)
            break;
        d->p += 2;
        return PyLong_FromLong((int16_t)mp_be16(q));
    case 0xd2:
        if (mp_left(d) < 4)
            break;
        d->p += 4;
        return PyLong_FromLong((int32_t)mp_be32(q));
    case 0xd3:
        if (mp_left(d) < 8)
            break;
        d->p += 8;
        return PyLong_FromLongLong((int64_t)mp_be64(q));
    case 0xc7:
    case 0xc8:
    case 0xc9:
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
        d->p--;
        return mp_fail(d, "MessagePack ext types are not supported");
    default: /* 0xc1, never used */
        d->p--;
        return mp_fail(d, "invalid type byte 0xc1");
    }
    return mp_fail(d, "truncated integer");
}

PyObject *cm_msgpack_loads(CmState *st, const char *buf, Py_ssize_t len)
{
    CmMpDec d;
    PyObject *obj;

    d.st = st;
    d.start = d.p = (const uint8_t *)buf;
    d.end = d.start + len;
    obj = mp_read(&d, 0);
    if (obj != NULL && d.p != d.end) {
        Py_DECREF(obj);
        obj = mp_fail(&d, "extra data after the object");
    }
    return obj;
}
