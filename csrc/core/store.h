/* The local store: a C hash table of entries, bounded by an eviction policy
 * (lru or W-TinyLFU, policy.c) with TTLs on a timer wheel (timerwheel.c).
 * Keys are exact str objects whose cached hash is reused. */
#ifndef CM_STORE_H
#define CM_STORE_H
#include "core/key.h"
#include "state.h"

typedef struct CmStoreObject CmStoreObject;

/* An entry's age, kept by a store that a node with freshness options writes
 * to (monotonic ns, cm_now_ns). */
typedef struct {
    int64_t written; /* when it was put */
    int64_t expire;  /* when its TTL ends (INT64_MAX: none) */
    int64_t load_ns; /* how long the load that made it took (0: unknown) */
} CmStoreAge;

static inline int cm_store_check(CmState *st, PyObject *o)
{
    return PyObject_TypeCheck(o, st->LocalStoreType);
}

/* New reference to the value, or NULL on a miss (no exception is set on a
 * miss; lookups cannot fail). Records the hit or miss for the policy. */
PyObject *cm_store_lookup(CmStoreObject *s, PyObject *key, Py_hash_t hash);
/* The same, for a full key given by its parts (see key.h) and its hash. */
PyObject *cm_store_lookup_parts(CmStoreObject *s, const CmKeyParts *parts, Py_hash_t hash);
/* Insert or replace; ttl_ns < 0 means no TTL. -1 with an exception on OOM. */
int cm_store_put(CmStoreObject *s, PyObject *key, Py_hash_t hash, PyObject *value, int64_t ttl_ns);
/* cm_store_lookup with the entry's age in *age on a hit (written 0 when
 * the store keeps none). With stale_ok, only an entry past its TTL but kept
 * for stale_if_error is a hit. */
PyObject *cm_store_lookup_aged(CmStoreObject *s, PyObject *key, Py_hash_t hash, int stale_ok,
                               CmStoreAge *age);
/* cm_store_put that records the entry's age (written: when the value was
 * made, 0: now; load_ns: its load's time) and keeps it grace_ns past its
 * TTL (a miss for hits then). The TTL counts from now. */
int cm_store_put_aged(CmStoreObject *s, PyObject *key, Py_hash_t hash, PyObject *value,
                      int64_t ttl_ns, int64_t grace_ns, int64_t load_ns, int64_t written);
/* How many puts the store has seen (a version for "anything new?"). */
uint64_t cm_store_puts(CmStoreObject *s);
/* Remove every entry. */
void cm_store_clear(CmStoreObject *s);
/* 1 removed, 0 absent. */
int cm_store_delete(CmStoreObject *s, PyObject *key, Py_hash_t hash);

#endif
