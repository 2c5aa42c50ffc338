/* The Redis driver's part of the module state (CmState.redis): its types,
 * exceptions, and the op a FlightProxy may wait on directly. Filled by
 * cm_redis_init, visited and cleared with the module (redis/client.c). */
#ifndef CM_REDIS_STATE_H
#define CM_REDIS_STATE_H
#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>

struct CmRedisOp;

#define CM_REDIS_STATE_OBJECTS(X)                                                                  \
    X(ConnType)          /* _RedisConnection */                                                    \
    X(ClientType)        /* RedisClient */                                                         \
    X(PartialResultType) /* PartialResult */                                                       \
    X(LeaseType)         /* _RedisLease */                                                         \
    X(Error)             /* RedisError */                                                          \
    X(ConnectionError)   /* RedisConnectionError */                                                \
    X(TimeoutError)      /* RedisTimeoutError */                                                   \
    X(ResponseError)     /* RedisResponseError */

typedef struct {
#define CM_REDIS_STATE_DECLARE(n) PyObject *n;
    CM_REDIS_STATE_OBJECTS(CM_REDIS_STATE_DECLARE)
#undef CM_REDIS_STATE_DECLARE
    /* the op whose future a storage call handed out last, while it is in
     * flight (borrowed; the op clears it when it finishes): the one a
     * FlightProxy can wait on directly (cm_redis_attach_waiter) */
    struct CmRedisOp *last_op;
} CmRedisState;

static inline int cm_redis_state_traverse(CmRedisState *rs, visitproc visit, void *arg)
{
#define CM_REDIS_STATE_VISIT(n) Py_VISIT(rs->n);
    CM_REDIS_STATE_OBJECTS(CM_REDIS_STATE_VISIT)
#undef CM_REDIS_STATE_VISIT
    return 0;
}

static inline void cm_redis_state_clear(CmRedisState *rs)
{
#define CM_REDIS_STATE_CLEAR(n) Py_CLEAR(rs->n);
    CM_REDIS_STATE_OBJECTS(CM_REDIS_STATE_CLEAR)
#undef CM_REDIS_STATE_CLEAR
    rs->last_op = NULL;
}
#endif
