/* Leases of a RedisClient (`lease=`): one load per key across processes.
 * The design is at the top of redis/lease.c; the flight reaches these
 * through flight/remote.h's lease ops (redis/remote.c). */
#ifndef CM_REDIS_LEASE_H
#define CM_REDIS_LEASE_H
#include "state.h"

/* The lease type, made at module init (CmRedisState.LeaseType). */
int cm_redis_lease_init(PyObject *mod, CmState *st);
/* flight/remote.h's lease_acquire and lease_release for RedisClient. */
PyObject *cm_redis_lease_acquire(CmState *st, PyObject *storage, PyObject *node, PyObject *ser);
void cm_redis_lease_release(CmState *st, PyObject *lease);
/* lease_acquire_all: the leases of nodes (a non-empty list), sent together. */
PyObject *cm_redis_lease_acquire_all(CmState *st, PyObject *storage, PyObject *nodes,
                                     PyObject *ser);
/* The lease key of a full key (UTF-8, len bytes): `<key>:lease`, on a
 * cluster in the key's own slot (see lease.c). New bytes, or NULL with an
 * exception. */
PyObject *cm_redis_lease_key(const char *key, size_t len, int cluster);
/* RedisClient._lease_drain(): None when every lease this storage took was
 * given back (its release answered), else a new future of the running loop,
 * done once they are (close() awaits it, bounded by `timeout`); safe with
 * several loops in several threads (each future is completed by its own
 * loop). */
PyObject *cm_redis_lease_drain(PyObject *self, PyObject *unused);
/* RedisClient._lease_key(full_key) -> bytes (tests). */
PyObject *cm_redis_lease_key_method(PyObject *self, PyObject *key);
#endif
