/* MessagePack decoding: bytes -> Python objects.
 *
 * Decoding is a recursive reader over (pointer, end) that checks every
 * length against the bytes left before touching them, so a declared length
 * can never make us read past the input or allocate more than the input
 * could describe (an array of n items needs >= n bytes, a map >= 2n).
 * Nesting deeper than CM_SER_MAX_DECODE_DEPTH is an error. Ext types (never
 * written by 0.3.0) are refused. Maps with a "__class__" key go through the
 * 0.3.0 object decoder, like msgpack's object_hook did. Where the time goes
 * on documents: dict inserts (CPython's, a third), so maps that repeat a
 * set of keys are copies of a template (mp_read_map_small); then creating
 * strs, so ASCII strs are copied straight into PyUnicode_New's buffer (no
 * decoder pass) and short keys and values come from a cache (mp_cached_str).
 * The encoder is msgpack_encode.c. */
#include "ser/msgpack_codec.h"
#include "ser/serializer.h"

#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* for the few small functions the per-item loops must not call */
#if defined(__GNUC__) || defined(__clang__)
#define CM_MP_HOT inline __attribute__((always_inline))
#else
#define CM_MP_HOT inline
#endif

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

static inline uint64_t mp_ld64(const uint8_t *q)
{
    uint64_t v;
    memcpy(&v, q, 8);
    return v;
}

static inline uint64_t mp_ld32(const uint8_t *q)
{
    uint32_t v;
    memcpy(&v, q, 4);
    return v;
}

/* Copy n bytes and tell whether they were all ASCII: 16 bytes at a time
 * with SSE2 (every x86-64 has it), else a word at a time. */
static inline int mp_copy_ascii(uint8_t *dst, const uint8_t *src, size_t n)
{
    uint64_t acc = 0, w;
    size_t i = 0;
#ifdef __SSE2__
    if (n >= 32) {
        __m128i vacc = _mm_setzero_si128(), v;
        for (; i + 16 <= n; i += 16) {
            v = _mm_loadu_si128((const __m128i *)(src + i));
            vacc = _mm_or_si128(vacc, v);
            _mm_storeu_si128((__m128i *)(dst + i), v);
        }
        v = _mm_loadu_si128((const __m128i *)(src + n - 16)); /* overlaps what is done */
        vacc = _mm_or_si128(vacc, v);
        _mm_storeu_si128((__m128i *)(dst + n - 16), v);
        return _mm_movemask_epi8(vacc) == 0;
    }
#endif
    if (n >= 8) {
        for (; i + 8 <= n; i += 8) {
            w = mp_ld64(src + i);
            acc |= w;
            memcpy(dst + i, &w, 8);
        }
        if (i < n) { /* the last 8 bytes, overlapping what is done */
            w = mp_ld64(src + n - 8);
            acc |= w;
            memcpy(dst + n - 8, &w, 8);
        }
    } else {
        for (; i < n; i++) {
            acc |= src[i];
            dst[i] = src[i];
        }
    }
    return (acc & 0x8080808080808080u) == 0;
}

/* str from n bytes of UTF-8: ASCII (nearly every cached str) is a copy into
 * a fresh compact str; anything else goes to CPython's decoder, which also
 * reports invalid UTF-8. */
static PyObject *mp_new_str(const uint8_t *q, size_t n)
{
    PyObject *s = PyUnicode_New((Py_ssize_t)n, 127);
    if (s == NULL)
        return NULL;
    if (mp_copy_ascii(PyUnicode_DATA(s), q, n))
        return s;
    Py_DECREF(s);
    return PyUnicode_DecodeUTF8((const char *)q, (Py_ssize_t)n, "strict");
}

/* Short strs repeat: map keys (lists of records) and enum-like values
 * (tags, states, colours). Both go through a direct-mapped cache of ASCII
 * strs in module state, keys and values in separate halves so that unique
 * values cannot evict the keys: a hit is two word compares and an incref
 * instead of an allocation, and a cached key keeps its hash for the dict
 * insert. The slot is picked from the first and last 8 bytes, which for
 * n <= 16 are all of them (and then also the whole comparison). */
#define CM_MP_KEY_MAXLEN 32
#define CM_MP_VALUE_MAXLEN 16
#define CM_MP_CACHE_HALF (CM_SER_KEYCACHE_SIZE / 2)

static inline void mp_str_words(const uint8_t *q, size_t n, uint64_t *a, uint64_t *b)
{
    if (n >= 8) {
        *a = mp_ld64(q);
        *b = mp_ld64(q + n - 8);
    } else if (n >= 4) {
        *a = mp_ld32(q);
        *b = mp_ld32(q + n - 4);
    } else {
        *a = n ? (uint64_t)q[0] | (uint64_t)q[n >> 1] << 8 | (uint64_t)q[n - 1] << 16 : 0;
        *b = 0;
    }
}

static inline int mp_str_is(PyObject *s, const uint8_t *q, size_t n, uint64_t a, uint64_t b)
{
    const uint8_t *sq;
    uint64_t sa, sb;
    if (s == NULL || (size_t)PyUnicode_GET_LENGTH(s) != n)
        return 0;
    sq = (const uint8_t *)((PyASCIIObject *)s + 1); /* cached strs are compact ASCII */
    if (n > 16)
        return memcmp(sq, q, n) == 0;
    mp_str_words(sq, n, &sa, &sb);
    return sa == a && sb == b;
}

static PyObject *mp_cache_miss(PyObject **set, const uint8_t *q, size_t n)
{
    PyObject *s = mp_new_str(q, n);
    if (s != NULL && PyUnicode_IS_ASCII(s)) {
        PyObject *old = set[1];
        set[1] = set[0];
        set[0] = Py_NewRef(s);
        Py_XDECREF(old);
    }
    return s;
}

/* Two-way sets: the newest str of a set in its first slot, the one it
 * displaced in the second, so two hot strs that hash alike both stay. */
static CM_MP_HOT PyObject *mp_cached_str(PyObject **cache, const uint8_t *q, size_t n)
{
    uint64_t a, b, h;
    PyObject **set;
    mp_str_words(q, n, &a, &b);
    h = (a ^ (b * 0x9e3779b97f4a7c15u) ^ n) * 0xff51afd7ed558ccdu;
    set = &cache[(h >> 32) & (CM_MP_CACHE_HALF - 2)];
    if (mp_str_is(set[0], q, n, a, b))
        return Py_NewRef(set[0]);
    if (mp_str_is(set[1], q, n, a, b))
        return Py_NewRef(set[1]);
    return mp_cache_miss(set, q, n);
}

static PyObject *mp_read_str(CmMpDec *d, size_t n)
{
    const uint8_t *q = d->p;
    if (mp_left(d) < n)
        return mp_fail(d, "truncated str");
    d->p += n;
    if (n <= CM_MP_VALUE_MAXLEN)
        return mp_cached_str(d->st->ser.keycache + CM_MP_CACHE_HALF, q, n);
    return mp_new_str(q, n);
}

static PyObject *mp_read_bin(CmMpDec *d, size_t n)
{
    const char *q = (const char *)d->p;
    if (mp_left(d) < n)
        return mp_fail(d, "truncated bin");
    d->p += n;
    return PyBytes_FromStringAndSize(q, (Py_ssize_t)n);
}

/* mp_read with the commonest items of documents (fixstr, small ints)
 * inline, for the loops over array and map items. */
static inline PyObject *mp_read_item(CmMpDec *d, int depth)
{
    if (d->p < d->end) {
        uint8_t b = *d->p;
        if ((b & 0xe0) == 0xa0) {
            const uint8_t *q = d->p + 1;
            size_t n = b & 0x1f;
            if ((size_t)(d->end - q) >= n) {
                d->p = q + n;
                return n <= CM_MP_VALUE_MAXLEN
                           ? mp_cached_str(d->st->ser.keycache + CM_MP_CACHE_HALF, q, n)
                           : mp_new_str(q, n);
            }
        } else if (b <= 0x7f) {
            d->p++;
            return PyLong_FromLong(b);
        }
    }
    return mp_read(d, depth);
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
        PyObject *item = mp_read_item(d, depth + 1);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
}

static inline int mp_is_class_key(PyObject *k)
{
    return PyUnicode_CheckExact(k) && PyUnicode_IS_COMPACT_ASCII(k) &&
           PyUnicode_GET_LENGTH(k) == 9 && memcmp(PyUnicode_DATA(k), "__class__", 9) == 0;
}

/* A map key; *has_class set if it is "__class__" (the 0.3.0 object hook). */
static inline PyObject *mp_read_key(CmMpDec *d, int depth, int *has_class)
{
    const uint8_t *q;
    size_t n;
    PyObject *k;

    if (d->p < d->end) {
        uint8_t b = *d->p;
        if ((b & 0xe0) == 0xa0) {
            n = b & 0x1f;
            q = d->p + 1;
        } else if (b == 0xd9 && mp_left(d) >= 2 && d->p[1] <= CM_MP_KEY_MAXLEN) {
            n = d->p[1];
            q = d->p + 2;
        } else {
            goto generic;
        }
        if ((size_t)(d->end - q) < n)
            goto generic; /* let the reader report the truncation */
        d->p = q + n;
        if (n == 9 && memcmp(q, "__class__", 9) == 0)
            *has_class = 1;
        return mp_cached_str(d->st->ser.keycache, q, n);
    }
generic:
    if ((k = mp_read(d, depth)) != NULL && mp_is_class_key(k))
        *has_class = 1;
    return k;
}

/* Lists of records repeat one set of keys, and CPython's dict insert is most
 * of the decoding time of such documents (a lookup, then an insert, for
 * each item). So a map of 2..CM_SER_MAPTPL_MAXN keys is read into arrays
 * first. The second time the same cached key strs come in the same order
 * they become a template: a dict of those keys to None. A later map with
 * those keys is a PyDict_Copy of the template (one copy of the table) with
 * its values stored straight into the entries, and the template last used
 * for maps of n keys predicts the next one: its keys are compared as bytes
 * with the input, which skips the key cache's hashing.
 *
 * Storing into the entries relies on the layout of a combined str-keyed
 * dict in CPython 3.11 and 3.12 (CmDictKeys, a mirror of PyDictKeysObject
 * in Include/internal/pycore_dict.h), so every copy is checked (kind, sizes,
 * each entry's key and None value) before anything is written, and a
 * mismatch, or another CPython version, turns templates off for good: every
 * dict is then built with PyDict_SetItem. The result is the dict SetItem
 * would build (keys, order, values; duplicate keys never make a template),
 * tracked by the GC when a value is a container. */
#define CM_MP_TPL_MINN 2
#define CM_MP_TPL_MAXDEPTH 32 /* keep the arrays off deep recursions */

typedef struct {
    Py_ssize_t dk_refcnt;
    uint8_t dk_log2_size;
    uint8_t dk_log2_index_bytes;
    uint8_t dk_kind; /* 1: DICT_KEYS_UNICODE */
    uint32_t dk_version;
    Py_ssize_t dk_usable;
    Py_ssize_t dk_nentries;
    char dk_indices[];
} CmDictKeys;

typedef struct {
    PyObject *me_key;
    PyObject *me_value;
} CmDictUEntry;

/* An empty dict for n items: presized where the private call is known */
static inline PyObject *mp_dict_new(size_t n)
{
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(CM_NO_PRIVATE)
    return _PyDict_NewPresized((Py_ssize_t)n);
#else
    (void)n;
    return PyDict_New();
#endif
}

/* The entries of a fresh copy of a template of n keys, or NULL if its table
 * is not laid out as we expect (the caller checks each entry as it writes). */
static CmDictUEntry *mp_tpl_entries(PyObject *dict, size_t n)
{
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030D0000 && !defined(CM_NO_PRIVATE)
    PyDictObject *mp = (PyDictObject *)dict;
    CmDictKeys *dk = (CmDictKeys *)mp->ma_keys;
    CmDictUEntry *e;
    if (mp->ma_values != NULL || mp->ma_used != (Py_ssize_t)n || dk->dk_kind != 1 ||
        dk->dk_nentries != (Py_ssize_t)n || dk->dk_log2_index_bytes < dk->dk_log2_size ||
        dk->dk_log2_index_bytes > dk->dk_log2_size + 3)
        return NULL;
    e = (CmDictUEntry *)(dk->dk_indices + ((size_t)1 << dk->dk_log2_index_bytes));
    return e;
#else
    (void)dict, (void)n;
    return NULL;
#endif
}

static uint64_t mp_keys_sig(PyObject *const *ks, size_t n)
{
    uint64_t h = n;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint64_t)(uintptr_t)ks[i]) * 0x9e3779b97f4a7c15u;
    return h ^ (h >> 29);
}

static void mp_tpl_off(CmState *st)
{
    st->ser.maptpl_off = 1;
    for (size_t i = 0; i < CM_SER_MAPTPL_SLOTS; i++)
        Py_CLEAR(st->ser.maptpl[i].dict);
}

/* Make ks[0..n) the template of its slot (no template for duplicate keys). */
static int mp_tpl_make(CmState *st, size_t slot, PyObject *const *ks, size_t n)
{
    PyObject *tpl = PyDict_New();
    if (tpl == NULL)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (PyDict_SetItem(tpl, ks[i], Py_None) < 0) {
            Py_DECREF(tpl);
            return -1;
        }
    }
    if (PyDict_GET_SIZE(tpl) != (Py_ssize_t)n) {
        Py_DECREF(tpl);
        return 0;
    }
    Py_XSETREF(st->ser.maptpl[slot].dict, tpl);
    memcpy(st->ser.maptpl[slot].keys, ks, n * sizeof(PyObject *));
    st->ser.maptpl[slot].n = (uint32_t)n;
    st->ser.maptpl_byn[n] = (uint8_t)(slot + 1);
    return 0;
}

/* The dict of ks[i] -> vs[i] as a copy of template `slot`, whose keys are
 * ks; NULL with an exception on error, NULL without one if templates went
 * off. */
static PyObject *mp_tpl_dict(CmState *st, size_t slot, PyObject *const *ks, PyObject *const *vs,
                             size_t n)
{
    PyObject *dict = PyDict_Copy(st->ser.maptpl[slot].dict);
    CmDictUEntry *e;
    int track = 0;
    if (dict == NULL)
        return NULL;
    if ((e = mp_tpl_entries(dict, n)) == NULL)
        goto off;
    for (size_t i = 0; i < n; i++) {
        PyObject *v = vs[i];
        if (e[i].me_key != ks[i] || e[i].me_value != Py_None)
            goto off; /* releasing dict releases what was stored */
        e[i].me_value = Py_NewRef(v);
        Py_DECREF(Py_None);
        track |= PyType_IS_GC(Py_TYPE(v));
    }
    if (track && !PyObject_GC_IsTracked(dict))
        PyObject_GC_Track(dict);
    st->ser.maptpl_byn[n] = (uint8_t)(slot + 1);
    return dict;
off:
    Py_DECREF(dict);
    mp_tpl_off(st);
    return NULL;
}

/* The dict of ks[i] -> vs[i] (references stay with the caller); `tpl_ok`:
 * the keys are exact ASCII strs, so they may match or make a template. Only
 * keys from the key cache come back as the same objects, which a match
 * needs; a match is by identity with a template's keys, which that
 * template holds, so it is always sound. */
static PyObject *mp_dict_of(CmState *st, PyObject *const *ks, PyObject *const *vs, size_t n,
                            int tpl_ok)
{
    PyObject *dict;
    size_t slot = 0;
    uint64_t sig = 0;
    tpl_ok = tpl_ok && !st->ser.maptpl_off;
    if (tpl_ok) {
        sig = mp_keys_sig(ks, n);
        slot = (size_t)(sig >> 40) % CM_SER_MAPTPL_SLOTS;
        if (st->ser.maptpl[slot].dict != NULL && st->ser.maptpl[slot].n == n &&
            memcmp(st->ser.maptpl[slot].keys, ks, n * sizeof(PyObject *)) == 0 &&
            ((dict = mp_tpl_dict(st, slot, ks, vs, n)) != NULL || PyErr_Occurred()))
            return dict;
    }
    if ((dict = mp_dict_new(n)) == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (PyDict_SetItem(dict, ks[i], vs[i]) < 0) {
            Py_DECREF(dict);
            return NULL;
        }
    }
    if (tpl_ok && !st->ser.maptpl_off) {
        if (st->ser.maptpl[slot].pending != sig) {
            st->ser.maptpl[slot].pending = sig;
        } else if (mp_tpl_make(st, slot, ks, n) < 0) {
            Py_DECREF(dict);
            return NULL;
        }
    }
    return dict;
}

/* The predicted key k, if the input's next item encodes exactly its bytes. */
static inline PyObject *mp_tpl_key(CmMpDec *d, PyObject *k)
{
    size_t n = (size_t)PyUnicode_GET_LENGTH(k), hdr;
    const uint8_t *p = d->p;
    uint64_t a, b;
    if (p < d->end && n < 32 && *p == (0xa0 | n))
        hdr = 1;
    else if (mp_left(d) >= 2 && *p == 0xd9 && p[1] == n)
        hdr = 2;
    else
        return NULL;
    if (mp_left(d) - hdr < n)
        return NULL;
    mp_str_words(p + hdr, n, &a, &b);
    if (!mp_str_is(k, p + hdr, n, a, b))
        return NULL;
    d->p = p + hdr + n;
    return Py_NewRef(k);
}

static PyObject *mp_read_map_small(CmMpDec *d, size_t n, int depth)
{
    CmState *st = d->st;
    PyObject *ks[CM_SER_MAPTPL_MAXN], *vs[CM_SER_MAPTPL_MAXN], *dict = NULL, *res = NULL;
    PyObject *tpl = NULL; /* the predicted template, held: values may replace it in its slot */
    size_t i, got = 0;
    int has_class = 0, ascii_keys = 1;
    int slot = st->ser.maptpl_off ? -1 : st->ser.maptpl_byn[n] - 1;
    if (slot >= 0 && (st->ser.maptpl[slot].dict == NULL || st->ser.maptpl[slot].n != n))
        slot = -1;
    if (slot >= 0)
        tpl = Py_NewRef(st->ser.maptpl[slot].dict);
    for (i = 0; i < n; i++) {
        if (slot >= 0 && (st->ser.maptpl[slot].dict != tpl ||
                          (ks[i] = mp_tpl_key(d, st->ser.maptpl[slot].keys[i])) == NULL))
            slot = -1;
        if (slot < 0) {
            if ((ks[i] = mp_read_key(d, depth + 1, &has_class)) == NULL)
                goto done;
            /* a template's keys are compared as ASCII bytes (mp_tpl_key) */
            if (!PyUnicode_CheckExact(ks[i]) || !PyUnicode_IS_COMPACT_ASCII(ks[i]))
                ascii_keys = 0;
        }
        if ((vs[i] = mp_read_item(d, depth + 1)) == NULL) {
            Py_DECREF(ks[i]);
            goto done;
        }
        got++;
    }
    /* all keys as predicted (a template has no "__class__") */
    if (slot >= 0 && st->ser.maptpl[slot].dict == tpl &&
        (dict = mp_tpl_dict(st, (size_t)slot, ks, vs, n)) == NULL && PyErr_Occurred())
        goto done;
    if (dict == NULL && (dict = mp_dict_of(st, ks, vs, n, ascii_keys && !has_class)) == NULL)
        goto done;
    res = has_class ? cm_ser_object_decode(st, dict) : Py_NewRef(dict);
    Py_DECREF(dict);
done:
    for (i = 0; i < got; i++) {
        Py_DECREF(ks[i]);
        Py_DECREF(vs[i]);
    }
    Py_XDECREF(tpl);
    return res;
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
    if (n >= CM_MP_TPL_MINN && n <= CM_SER_MAPTPL_MAXN && depth < CM_MP_TPL_MAXDEPTH)
        return mp_read_map_small(d, n, depth);
    if ((dict = mp_dict_new(n)) == NULL)
        return NULL;
    for (i = 0; i < n; i++) {
        PyObject *k, *v = NULL;
        int rc = -1;
        if ((k = mp_read_key(d, depth + 1, &has_class)) != NULL &&
            (v = mp_read_item(d, depth + 1)) != NULL)
            rc = PyDict_SetItem(dict, k, v);
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

/* _msgpack_templates(on) -> bool: turn the map templates on or off (tests:
 * both ways must decode alike); returns whether they were on. */
static PyObject *py_msgpack_templates(PyObject *mod, PyObject *on)
{
    CmState *st = cm_state_from_module(mod);
    int was = !st->ser.maptpl_off, want = PyObject_IsTrue(on);
    if (want < 0)
        return NULL;
    if (want)
        st->ser.maptpl_off = 0;
    else
        mp_tpl_off(st);
    return PyBool_FromLong(was);
}

static PyMethodDef msgpack_functions[] = {
    {"_msgpack_templates", py_msgpack_templates, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

int cm_msgpack_init(PyObject *mod) { return PyModule_AddFunctions(mod, msgpack_functions); }
