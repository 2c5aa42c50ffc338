/* The full key {prefix}:{key()}:{version} (see key.c). */
#ifndef CM_KEY_H
#define CM_KEY_H
#include "state.h"

#include <string.h>

#include "core/siphash.h"

/* The bytes of a full key made of 1-byte strings, assembled on the stack to
 * hash and compare it without building the str. */
#define CM_KEY_BUF 256
typedef struct {
    Py_ssize_t len;
    int ascii; /* all of data is ASCII (else some byte is latin-1) */
    unsigned char data[CM_KEY_BUF];
} CmKeyParts;

/* What a node class's full keys share: "{prefix}:" and ":{version}" as
 * bytes, and SipHash's state after the whole 8-byte blocks of the head, so
 * a key's hash starts there. Set up only when both are 1-byte strings that
 * fit (head_len is -1 otherwise, and cm_key_parts takes the general path).
 * Built with the node config; set_prefix rebuilds the configs. */
#define CM_KEY_HEAD_MAX 32
#define CM_KEY_TAIL_MAX 16
typedef struct {
    Py_ssize_t head_len; /* -1: not set up */
    Py_ssize_t tail_len;
    int ascii;
    uint64_t sip[4];
    unsigned char head[CM_KEY_HEAD_MAX];
    unsigned char tail[CM_KEY_TAIL_MAX];
} CmKeyAffix;

void cm_key_affix_init(CmKeyAffix *a, PyObject *prefix, PyObject *version);

/* node._full_key if it is a str (new reference), else NULL without error;
 * NULL with an exception on error. */
PyObject *cm_key_cached(CmState *st, PyObject *node);
/* The full key of what a storage was given: the cached one of a Node, else
 * node.full_key() (any object with that method), checked to be a str; new
 * reference. */
PyObject *cm_key_of_node(CmState *st, PyObject *node);
/* node.key() looked up on node, checked to be a str; new reference (the
 * general case of cm_key_call, nodecfg.h). */
PyObject *cm_key_call_method(CmState *st, PyObject *node);
/* The TypeError for a key() that returned key, not a str; steals key, NULL. */
PyObject *cm_key_not_str(PyObject *node, PyObject *key);
/* The parts path hashes with CPython's private secret (_Py_HashSecret, see
 * key.c): only where the str hash is SipHash-1-3 without a small-string
 * cutoff, on the versions whose secret we know how to read (3.11-3.13), and
 * not in a CACHEME_NO_PRIVATE build. Elsewhere the key is built and hashed
 * by PyObject_Hash: slower, the same result. Even where compiled in, the
 * path is used only when a probe at import matched hash() (cm_key_init). */
#if Py_HASH_ALGORITHM == Py_HASH_SIPHASH13 && Py_HASH_CUTOFF == 0 &&                               \
    PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(CM_NO_PRIVATE)
#define CM_KEY_PARTS 1
#else
#define CM_KEY_PARTS 0
#endif

/* memcpy for the few bytes of a key part: up to 16 bytes are two loads and
 * two stores that may overlap, instead of a call */
static inline void cm_copy_short(unsigned char *dst, const unsigned char *src, size_t n)
{
    if (n >= 8 && n <= 16) {
        uint64_t a, b;
        memcpy(&a, src, 8);
        memcpy(&b, src + n - 8, 8);
        memcpy(dst, &a, 8);
        memcpy(dst + n - 8, &b, 8);
    } else if (n >= 4 && n < 8) {
        uint32_t a, b;
        memcpy(&a, src, 4);
        memcpy(&b, src + n - 4, 4);
        memcpy(dst, &a, 4);
        memcpy(dst + n - 4, &b, 4);
    } else if (n > 16) {
        memcpy(dst, src, n);
    } else if (n > 0) {
        dst[0] = src[0];
        dst[n >> 1] = src[n >> 1];
        dst[n - 1] = src[n - 1];
    }
}

/* cm_key_parts for any prefix and version (no affix). */
int cm_key_parts_general(CmState *st, PyObject *key, PyObject *version, CmKeyParts *parts,
                         Py_hash_t *hash);

/* If prefix, key and version are all 1-byte strings and the full key fits
 * CM_KEY_BUF, fill parts and set *hash to exactly hash(full key) and return
 * 1; else return 0. affix is what cm_key_affix_init made of st->prefix and
 * version. Inline: the hot path of a local hit. */
static inline int cm_key_parts(CmState *st, const CmKeyAffix *a, PyObject *key, PyObject *version,
                               CmKeyParts *parts, Py_hash_t *hash)
{
#if CM_KEY_PARTS
    Py_ssize_t len = PyUnicode_GET_LENGTH(key), head = a->head_len;
    /* the fixed-size copies below write up to CM_KEY_TAIL_MAX bytes past the tail */
    if (head < 0 || PyUnicode_KIND(key) != PyUnicode_1BYTE_KIND ||
        head + len + CM_KEY_TAIL_MAX > CM_KEY_BUF)
        return cm_key_parts_general(st, key, version, parts, hash);
    Py_ssize_t n = head + len + a->tail_len;
    unsigned char *d = parts->data;
    memcpy(d, a->head, CM_KEY_HEAD_MAX); /* whole: a constant-size copy, no call */
    cm_copy_short(d + head, PyUnicode_1BYTE_DATA(key), (size_t)len);
    memcpy(d + head + len, a->tail, CM_KEY_TAIL_MAX);
    parts->len = n;
    parts->ascii = a->ascii && PyUnicode_IS_ASCII(key);
    size_t done = (size_t)head & ~(size_t)7;
    Py_hash_t x = (Py_hash_t)cm_siphash13_finish(a->sip, d + done, done, (size_t)n);
    *hash = x == -1 ? -2 : x; /* as _Py_HashBytes */
    return 1;
#else
    (void)a;
    return cm_key_parts_general(st, key, version, parts, hash);
#endif
}

/* Build the full key str from key(); known_hash (or -1) is stored as its
 * hash, else the hash is computed. Cached on node when node is not NULL. */
PyObject *cm_key_build(CmState *st, PyObject *node, PyObject *key, PyObject *version,
                       Py_hash_t known_hash);
/* The same from what cm_key_parts filled (hash: what it computed), cached
 * in *slot, the node's key slot. */
PyObject *cm_key_build_parts(PyObject **slot, const CmKeyParts *parts, Py_hash_t hash);
/* Two exact str keys are equal (same kind and code points): what a key
 * table compares after the hashes matched. */
static inline int cm_key_eq(PyObject *a, PyObject *b)
{
    if (a == b)
        return 1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(a);
    return n == PyUnicode_GET_LENGTH(b) && PyUnicode_KIND(a) == PyUnicode_KIND(b) &&
           memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * PyUnicode_KIND(a)) == 0;
}
#endif
