/* The full key {prefix}:{key()}:{version} (see key.c). */
#ifndef CM_KEY_H
#define CM_KEY_H
#include "state.h"

struct CmNodeConfigObject_;

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
/* node.key(), checked to be a str; new reference. With cfg (node's class's
 * config, or NULL) a plain-function key() is called without its lookup. */
PyObject *cm_key_call(CmState *st, PyObject *node, struct CmNodeConfigObject_ *cfg);
/* If prefix, key and version are all 1-byte strings and the full key fits
 * CM_KEY_BUF, fill parts and set *hash to exactly hash(full key) and return
 * 1; else return 0. affix is what cm_key_affix_init made of st->prefix and
 * version. */
int cm_key_parts(CmState *st, const CmKeyAffix *affix, PyObject *key, PyObject *version,
                 CmKeyParts *parts, Py_hash_t *hash);
/* Build the full key str from key(); known_hash (or -1) is stored as its
 * hash, else the hash is computed. Cached on node when node is not NULL. */
PyObject *cm_key_build(CmState *st, PyObject *node, PyObject *key, PyObject *version,
                       Py_hash_t known_hash);
/* The same from what cm_key_parts filled (hash: what it computed), cached
 * in *slot, the node's key slot. */
PyObject *cm_key_build_parts(PyObject **slot, const CmKeyParts *parts, Py_hash_t hash);
#endif
