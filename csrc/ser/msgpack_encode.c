/* MessagePack encoding: Python objects -> bytes.
 *
 * Encoding uses msgpack-c's own pack template (msgpack/pack_template.h, the
 * code behind msgpack_pack_*), instantiated here over an inline growable
 * buffer instead of msgpack_packer's write callback, so each header is a
 * capacity check and a store, not an indirect call. The rules are the ones
 * of the msgpack package as 0.3.0 called it: smallest int encoding, float64,
 * str8 allowed (use_bin_type=True), bytes as bin, tuples as arrays, and
 * everything else through the 0.3.0 object encoding (object_encode.c). Exact
 * builtin types are dispatched by type pointer before any subclass check,
 * and a str is one capacity check for header and body. The decoder is
 * msgpack_decode.c. */
#include "ser/msgpack_codec.h"
#include "ser/serializer.h"

#include <msgpack.h>
#include <string.h>

/* ---- output buffer + msgpack-c's pack template ------------------------- */

/* Small outputs are built on the stack and copied once into the result;
 * larger ones move into the result bytes object itself, which grows in
 * place (_PyBytes_Resize is a realloc) and is shrunk to size at the end, so
 * a large document is never copied out of a scratch buffer. */
#define CM_MP_INLINE 1024

typedef struct {
    CmState *st;
    char *data; /* inline_buf, or the storage of out */
    size_t len, cap;
    PyObject *out; /* the result, once inline_buf is outgrown */
    char inline_buf[CM_MP_INLINE];
} CmMpEnc;

static int cm_mp_grow(CmMpEnc *e, size_t need)
{
    /* 4x while small: a document that outgrew inline_buf is likely to be a
     * few times larger still, and each step is a copy when realloc moves */
    size_t cap = e->cap * (e->cap < ((size_t)1 << 20) ? 4 : 2);
    if (need > PY_SSIZE_T_MAX - e->len) {
        PyErr_NoMemory();
        return -1;
    }
    if (cap < e->len + need || cap > PY_SSIZE_T_MAX)
        cap = e->len + need;
    if (e->out == NULL) {
        if ((e->out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)cap)) == NULL)
            return -1;
        memcpy(PyBytes_AS_STRING(e->out), e->data, e->len);
    } else if (_PyBytes_Resize(&e->out, (Py_ssize_t)cap) < 0) {
        return -1; /* out was released */
    }
    e->data = PyBytes_AS_STRING(e->out);
    e->cap = cap;
    return 0;
}

/* Room for n more bytes at e->data + e->len. */
static inline int cm_mp_reserve(CmMpEnc *e, size_t n)
{
    return n <= e->cap - e->len ? 0 : cm_mp_grow(e, n);
}

static inline int cm_mp_write(CmMpEnc *e, const char *src, size_t n)
{
    if (cm_mp_reserve(e, n) < 0)
        return -1;
    memcpy(e->data + e->len, src, n);
    e->len += n;
    return 0;
}

#undef msgpack_pack_inline_func
#undef msgpack_pack_inline_func_cint
#undef msgpack_pack_inline_func_fixint
#undef msgpack_pack_user
#undef msgpack_pack_append_buffer
#define msgpack_pack_inline_func(name) static inline int cm_mp_pack##name
#define msgpack_pack_inline_func_cint(name) static inline int cm_mp_pack##name
#define msgpack_pack_user CmMpEnc *
#define msgpack_pack_append_buffer(user, buf, len)                                                 \
    return cm_mp_write(user, (const char *)(buf), len)
#define msgpack_pack_ext cm_mp_pack_ext
#include <msgpack/pack_template.h>
#undef msgpack_pack_ext
#undef msgpack_pack_inline_func_cint

/* ---- encoder ------------------------------------------------------------ */

/* The generic entry: any object, checks the nesting limit. Containers pack
 * their items through mp_pack_item, which handles the exact builtin leaves
 * (str, int, float, None, bools) inline and without the incref that guards
 * against default hooks: packing those runs no Python code. The nesting
 * limit for such leaves is checked once per container. */
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

static int mp_depth_error(void)
{
    PyErr_SetString(PyExc_ValueError, "recursion limit exceeded");
    return -1;
}

static int mp_size_error(const char *what)
{
    PyErr_Format(PyExc_ValueError, "%s is too large for MessagePack", what);
    return -1;
}

/* memcpy, without the call for the short strings most documents are made of. */
static inline void mp_copy(void *dst, const void *src, size_t n)
{
    char *d = dst;
    const char *s = src;
    uint64_t a, b;
    uint32_t c, f;
    if (n > 16) {
        memcpy(d, s, n);
    } else if (n >= 8) {
        memcpy(&a, s, 8);
        memcpy(&b, s + n - 8, 8);
        memcpy(d, &a, 8);
        memcpy(d + n - 8, &b, 8);
    } else if (n >= 4) {
        memcpy(&c, s, 4);
        memcpy(&f, s + n - 4, 4);
        memcpy(d, &c, 4);
        memcpy(d + n - 4, &f, 4);
    } else if (n > 0) {
        d[0] = s[0];
        d[n >> 1] = s[n >> 1];
        d[n - 1] = s[n - 1];
    }
}

/* One capacity check for header and body; the header is msgpack-c's
 * msgpack_pack_str: fixstr, str8, str16, str32 by length. */
static inline int mp_pack_str(CmMpEnc *e, PyObject *obj)
{
    Py_ssize_t n;
    const char *u;
    unsigned char *w;
    if (PyUnicode_IS_COMPACT_ASCII(obj)) {
        u = (const char *)PyUnicode_DATA(obj);
        n = PyUnicode_GET_LENGTH(obj);
    } else if ((u = PyUnicode_AsUTF8AndSize(obj, &n)) == NULL) {
        return -1;
    }
    if ((uint64_t)n > UINT32_MAX)
        return mp_size_error("str");
    if (cm_mp_reserve(e, (size_t)n + 5) < 0)
        return -1;
    w = (unsigned char *)e->data + e->len;
    if (n < 32) {
        *w++ = (unsigned char)(0xa0 | n);
    } else if (n < 256) {
        *w++ = 0xd9;
        *w++ = (unsigned char)n;
    } else if (n < 65536) {
        *w++ = 0xda;
        *w++ = (unsigned char)(n >> 8);
        *w++ = (unsigned char)n;
    } else {
        *w++ = 0xdb;
        *w++ = (unsigned char)(n >> 24);
        *w++ = (unsigned char)(n >> 16);
        *w++ = (unsigned char)(n >> 8);
        *w++ = (unsigned char)n;
    }
    mp_copy(w, u, (size_t)n);
    e->len = (size_t)((char *)w - e->data) + (size_t)n;
    return 0;
}

static int mp_pack_bin(CmMpEnc *e, const void *p, Py_ssize_t n)
{
    if ((uint64_t)n > UINT32_MAX)
        return mp_size_error("bytes object");
    if (cm_mp_pack_bin(e, (size_t)n) < 0)
        return -1;
    return cm_mp_pack_bin_body(e, p, (size_t)n);
}

static int mp_pack_int(CmMpEnc *e, PyObject *obj, int depth)
{
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow == 0) {
        if (v == -1 && PyErr_Occurred())
            return -1;
        return v >= 0 ? cm_mp_pack_uint64(e, (uint64_t)v) : cm_mp_pack_int64(e, (int64_t)v);
    }
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(obj);
        if (!(u == (unsigned long long)-1 && PyErr_Occurred()))
            return cm_mp_pack_uint64(e, (uint64_t)u);
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
    }
    /* out of 64-bit range: msgpack hands it to default, which refuses */
    return mp_pack_default(e, obj, depth);
}

/* An item of a container at depth - 1 (the caller checked the depth). */
static inline int mp_pack_item(CmMpEnc *e, PyObject *obj, int depth)
{
    PyTypeObject *tp = Py_TYPE(obj);
    int rc;
    if (tp == &PyUnicode_Type)
        return mp_pack_str(e, obj);
    if (tp == &PyLong_Type)
        return mp_pack_int(e, obj, depth); /* only int's own code runs */
    if (tp == &PyFloat_Type)
        return cm_mp_pack_double(e, PyFloat_AS_DOUBLE(obj));
    if (obj == Py_None)
        return cm_mp_pack_nil(e);
    if (obj == Py_True)
        return cm_mp_pack_true(e);
    if (obj == Py_False)
        return cm_mp_pack_false(e);
    /* containers and default hooks may run code that drops obj from its parent */
    Py_INCREF(obj);
    rc = mp_pack(e, obj, depth);
    Py_DECREF(obj);
    return rc;
}

static int mp_pack_dict(CmMpEnc *e, PyObject *obj, int depth)
{
    Py_ssize_t n = PyDict_GET_SIZE(obj), pos = 0, seen = 0;
    PyObject *k, *v; // borrowed
    if ((uint64_t)n > UINT32_MAX)
        return mp_size_error("dict");
    if (n > 0 && depth >= CM_SER_MAX_ENCODE_DEPTH)
        return mp_depth_error();
    if (cm_mp_pack_map(e, (size_t)n) < 0)
        return -1;
    while (PyDict_Next(obj, &pos, &k, &v)) {
        int rc;
        if (++seen > n)
            break;
        if (Py_IS_TYPE(k, &PyUnicode_Type)) {
            rc = mp_pack_str(e, k) < 0 ? -1 : mp_pack_item(e, v, depth + 1);
        } else {
            /* a hook run for the key could drop the value */
            Py_INCREF(k);
            Py_INCREF(v);
            rc = mp_pack(e, k, depth + 1);
            if (rc == 0)
                rc = mp_pack(e, v, depth + 1);
            Py_DECREF(k);
            Py_DECREF(v);
        }
        if (rc < 0)
            return -1;
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
    if ((uint64_t)n > UINT32_MAX)
        return mp_size_error("sequence");
    if (n > 0 && depth >= CM_SER_MAX_ENCODE_DEPTH)
        return mp_depth_error();
    if (cm_mp_pack_array(e, (size_t)n) < 0)
        return -1;
    for (i = 0; i < n; i++) {
        PyObject *item; // borrowed
        if (is_list && i >= PyList_GET_SIZE(obj)) {
            PyErr_SetString(PyExc_RuntimeError, "list changed size during serialization");
            return -1;
        }
        item = is_list ? PyList_GET_ITEM(obj, i) : PyTuple_GET_ITEM(obj, i);
        if (mp_pack_item(e, item, depth + 1) < 0)
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

    if (depth > CM_SER_MAX_ENCODE_DEPTH)
        return mp_depth_error();
    if (tp == &PyUnicode_Type)
        return mp_pack_str(e, obj);
    if (tp == &PyDict_Type)
        return mp_pack_dict(e, obj, depth);
    if (tp == &PyList_Type)
        return mp_pack_seq(e, obj, depth);
    if (obj == Py_None)
        return cm_mp_pack_nil(e);
    if (obj == Py_True)
        return cm_mp_pack_true(e);
    if (obj == Py_False)
        return cm_mp_pack_false(e);
    if (PyLong_Check(obj))
        return mp_pack_int(e, obj, depth);
    if (PyFloat_Check(obj))
        return cm_mp_pack_double(e, PyFloat_AS_DOUBLE(obj));
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

    e.st = st;
    e.data = e.inline_buf;
    e.len = 0;
    e.cap = CM_MP_INLINE;
    e.out = NULL;
    if (mp_pack(&e, obj, 0) < 0) {
        Py_XDECREF(e.out);
        return NULL;
    }
    if (e.out == NULL)
        return PyBytes_FromStringAndSize(e.inline_buf, (Py_ssize_t)e.len);
    if (_PyBytes_Resize(&e.out, (Py_ssize_t)e.len) < 0)
        return NULL;
    return e.out;
}
