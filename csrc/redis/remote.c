/* RedisClient as a remote storage of the singleflight (flight/remote.h):
 * adapters over the flight calls that redis.c exports. */
#include "flight/remote.h"
#include "redis/internal.h"
#include "redis/lease.h"
#include "redis/redis.h"

static CmRemoteOp *redis_get(PyObject *storage, PyObject *node, PyObject *ser, PyObject *loop,
                             PyObject *call)
{
    return (CmRemoteOp *)cm_redis_get_for(storage, node, ser, loop, call);
}

static CmRemoteOp *redis_set(PyObject *storage, PyObject *node, PyObject *value, PyObject *ttl,
                             PyObject *ser, PyObject *loop, PyObject *call)
{
    return (CmRemoteOp *)cm_redis_set_for(storage, node, value, ttl, ser, loop, call);
}

static PyObject *redis_handoff(CmRemoteOp *op, PyObject *call)
{
    return cm_redis_op_handoff((CmRedisOp *)op, call);
}

static void redis_unref(CmRemoteOp *op) { cm_redis_op_unref((CmRedisOp *)op); }

static const CmRemoteOps redis_remote_ops = {
    .direct = cm_redis_direct,
    .get = redis_get,
    .set = redis_set,
    .handoff = redis_handoff,
    .unref = redis_unref,
    .attach_waiter = cm_redis_attach_waiter,
    .ages = 1,
    .get_all_aged = cm_redis_get_all_aged,
    .cover = cm_redis_cover,
    .lease_acquire = cm_redis_lease_acquire,
    .lease_release = cm_redis_lease_release,
    .lease_acquire_all = cm_redis_lease_acquire_all,
};

int cm_redis_remote_init(PyObject *mod, CmState *st)
{
    if (cm_redis_lease_init(mod, st) < 0)
        return -1;
    return cm_remote_register(st, (PyTypeObject *)st->redis.ClientType, &redis_remote_ops, NULL);
}
