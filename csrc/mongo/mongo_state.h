/* The MongoDB driver's part of the module state (CmState.mongo): its types
 * and exceptions. Filled by cm_mongo_init (store.c), visited and cleared
 * with the module. state.h embeds it, so this header includes nothing of
 * ours. */
#ifndef CM_MONGO_STATE_H
#define CM_MONGO_STATE_H
#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>

#define CM_MONGO_STATE_OBJECTS(X)                                                                  \
    X(ConnType)        /* _MongoConnection */                                                      \
    X(ClientType)      /* MongoClient */                                                           \
    X(Error)           /* MongoError */                                                            \
    X(ConnectionError) /* MongoConnectionError */                                                  \
    X(TimeoutError)    /* MongoTimeoutError */                                                     \
    X(ServerError)     /* MongoServerError: ok 0 or a write error, with .code */                   \
    X(AuthError)       /* MongoAuthError: authentication failed */

typedef struct {
#define CM_MONGO_STATE_DECLARE(n) PyObject *n;
    CM_MONGO_STATE_OBJECTS(CM_MONGO_STATE_DECLARE)
#undef CM_MONGO_STATE_DECLARE
} CmMongoState;

static inline int cm_mongo_state_traverse(CmMongoState *ms, visitproc visit, void *arg)
{
#define CM_MONGO_STATE_VISIT(n) Py_VISIT(ms->n);
    CM_MONGO_STATE_OBJECTS(CM_MONGO_STATE_VISIT)
#undef CM_MONGO_STATE_VISIT
    return 0;
}

static inline void cm_mongo_state_clear(CmMongoState *ms)
{
#define CM_MONGO_STATE_CLEAR(n) Py_CLEAR(ms->n);
    CM_MONGO_STATE_OBJECTS(CM_MONGO_STATE_CLEAR)
#undef CM_MONGO_STATE_CLEAR
}
#endif
