/* Module state of cacheme._core: every Python object the C core keeps lives
 * here (never in a C global), so the module can be traversed, cleared and
 * loaded in several interpreters. */
#ifndef CM_STATE_H
#define CM_STATE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#include "flight/flight_state.h"
#include "loop/wake_state.h"
#include "mongo/mongo_state.h"
#include "redis/redis_state.h"
#include "ser/ser_state.h"
#include "sql/sqlstate.h"

/* Interned names used with PyObject_GetAttr / VectorcallMethod. */
#define CM_INTERNED_NAMES(X)                                                                       \
    X(_full_key)                                                                                   \
    X(full_key)                                                                                    \
    X(__cacheme__)                                                                                 \
    X(_cacheme_metrics)                                                                            \
    X(key)                                                                                         \
    X(load)                                                                                        \
    X(Meta)                                                                                        \
    X(version)                                                                                     \
    X(caches)                                                                                      \
    X(serializer)                                                                                  \
    X(doorkeeper)                                                                                  \
    X(_storage_name)                                                                               \
    X(ttl)                                                                                         \
    X(_local)                                                                                      \
    X(is_local)                                                                                    \
    X(get)                                                                                         \
    X(set)                                                                                         \
    X(get_sync)                                                                                    \
    X(put)                                                                                         \
    X(contains)                                                                                    \
    X(total_seconds)                                                                               \
    X(create_future)                                                                               \
    X(create_task)                                                                                 \
    X(set_result)                                                                                  \
    X(set_exception)                                                                               \
    X(cancel)                                                                                      \
    X(done)                                                                                        \
    X(cancelled)                                                                                   \
    X(result)                                                                                      \
    X(throw)                                                                                       \
    X(close)                                                                                       \
    X(warning)                                                                                     \
    X(_asyncio_future_blocking)                                                                    \
    X(add_done_callback)                                                                           \
    X(exception)                                                                                   \
    X(context)                                                                                     \
    X(is_running)                                                                                  \
    X(call_soon_threadsafe)                                                                        \
    X(call_soon)                                                                                   \
    X(call_later)                                                                                  \
    X(add_reader)                                                                                  \
    X(remove_reader)                                                                               \
    X(add_writer)                                                                                  \
    X(remove_writer)                                                                               \
    X(get_all)                                                                                     \
    X(set_all)

struct CmNodeConfigObject_;

typedef struct CmState_ {
    /* borrowed: the module this state lives in (see cm_state_hold) */
    PyObject *module;

    /* heap types */
    PyTypeObject *ReadyType;
    PyTypeObject *MetricsType;
    PyTypeObject *NodeConfigType;
    PyTypeObject *LocalStoreType;
    PyTypeObject *BloomFilterType;
    PyTypeObject *MemoizedType;

    /* interned strings, one field per name: st->s__full_key, ... */
#define CM_DECLARE_NAME(n) PyObject *s_##n;
    CM_INTERNED_NAMES(CM_DECLARE_NAME)
#undef CM_DECLARE_NAME

    /* configuration, set from Python */
    PyObject *prefix;   /* str, default "cacheme" */
    PyObject *storages; /* dict: name -> storage */
    PyObject *sentinel; /* cacheme.models.sentinel: "not found" from storages */
    PyObject *logger;   /* logging.getLogger("cacheme") */

    /* asyncio, imported at module init */
    PyObject *get_running_loop;
    PyObject *CancelledError;
    PyObject *InvalidStateError;
    /* create_future without asyncio's Python frame (loop.c): the function
     * BaseEventLoop.create_future, the Future class it builds, and ("loop",) */
    PyObject *base_create_future;
    PyObject *FutureType;
    PyObject *kw_loop;
    /* an empty Context and ("context",): done-callbacks that enter a context
     * of their own run in it instead of a copy made per callback (loop.c) */
    PyObject *empty_context;
    PyObject *kw_context;
    /* empty_context is the one of this thread state (loop.c, cm_loop_context):
     * a Context is entered by one thread at a time, so each thread has its own */
    void *context_tstate;
    /* the wake batch, the done Future for C Tasks (loop/wake.c) */
    CmWakeState wake;

    /* cacheme.models._FullKeySlot: Node's base whose one slot holds the
     * cached full key, read and written at key_slot_offset (key.c) */
    PyObject *KeySlotType;
    Py_ssize_t key_slot_offset;

    /* the last node class seen by get() and its config (both strong); next
     * to what else a local hit reads (key_slot_offset, ready_cache) */
    PyObject *last_cls;
    PyObject *last_cfg;
    uint64_t generation; /* bumped by register_storage, set_prefix: node configs rebuild */
    uint64_t jitter_rng; /* TTL jitter's generator (nodecfg.c); 0: seed on next use */
    /* called on each node config built (nodecfg.c), set by flight/remote.c:
     * the remote storages' word on the local caches in front of them (core/
     * knows nothing of remote storages); 0, or -1 with an exception */
    int (*nodecfg_built)(struct CmState_ *st, struct CmNodeConfigObject_ *cfg);

    /* a reusable ready awaitable (refcount 1 = free to reuse) */
    PyObject *ready_cache;

    /* the singleflight (flight/) */
    CmFlightState flight;

    CmSerState ser;     /* serializers (ser/ser_state.h) */
    CmRedisState redis; /* redis/redis_state.h */
    /* sql (sql/sqlstate.h) */
    CmSqlState sql;
    /* the base of SQLKeyError and of the Redis storage's error for the same
     * (made by cm_sql_init): a key a remote storage cannot hold */
    PyObject *StorageKeyError;
    /* end sql */
    CmMongoState mongo; /* mongo/mongo_state.h */
    /* netloop (netloop.c): every per-loop table of the process, for the
     * after-fork hook (plain C records, owned by their storages) */
    struct CmNetLoops *netloops;
    long forks; /* after-fork hooks run in this process */
    /* end netloop */
    /* get_all (api/get_all.c) */
    PyTypeObject *GetAllType;
    PyObject *NodeType;      /* cacheme.Node, set by cacheme.core */
    PyObject *node_load_all; /* Node.load_all's function: the default, one load per key */
    PyObject *shield;        /* asyncio.shield */
    /* end get_all */
} CmState;

static inline CmState *cm_state_from_module(PyObject *mod)
{
    return (CmState *)PyModule_GetState(mod);
}

/* Lifetime of the state. It is freed with the module object (m_free); the
 * module's GC clear leaves it whole (module.c). An object of a type that keeps
 * a CmState pointer, or reaches one in its dealloc, holds the module: it
 * takes it with cm_state_hold, visits it with CM_STATE_VISIT and drops it
 * with cm_state_release as the very last step of its dealloc, after tp_free.
 * The type's own reference (ht_module) is not enough: when the interpreter
 * exits, one GC pass can clear the module, its types (type_clear drops
 * ht_module) and their instances together, in any order, and an instance
 * finalized last must still find the state (names, loop hooks, tables). */
static inline CmState *cm_state_hold(CmState *st)
{
    Py_INCREF(st->module);
    return st;
}

/* The last thing a holder does: this may free the module and the state. */
static inline void cm_state_release(CmState *st)
{
    if (st != NULL)
        Py_DECREF(st->module);
}

#define CM_STATE_VISIT(st)                                                                         \
    do {                                                                                           \
        if ((st) != NULL)                                                                          \
            Py_VISIT((st)->module);                                                                \
    } while (0)

/* State of a heap type defined by this module, also for Python subclasses. */
extern PyModuleDef cm_module_def;
static inline CmState *cm_state_from_type(PyTypeObject *tp)
{
    PyObject *mod = PyType_GetModuleByDef(tp, &cm_module_def); // borrowed
    return mod ? (CmState *)PyModule_GetState(mod) : NULL;
}

/* Each concept registers its types/functions on the module. */
int cm_ready_init(PyObject *mod, CmState *st);
int cm_metrics_init(PyObject *mod, CmState *st);
int cm_store_init(PyObject *mod, CmState *st);
int cm_bloomtype_init(PyObject *mod, CmState *st);
int cm_nodecfg_init(PyObject *mod, CmState *st);
int cm_flight_init(PyObject *mod, CmState *st);
int cm_memoize_init(PyObject *mod, CmState *st);
int cm_key_init(PyObject *mod, CmState *st);
int cm_fresh_init(PyObject *mod, CmState *st);
/* serializer */
int cm_serializer_init(PyObject *mod, CmState *st);
/* end serializer */

/* redis */
int cm_redis_init(PyObject *mod, CmState *st);
int cm_redis_traverse(CmState *st, visitproc visit, void *arg);
void cm_redis_clear(CmState *st);
/* end redis */

/* netloop */
int cm_netloop_init(PyObject *mod, CmState *st);
/* end netloop */

/* sql */
int cm_sql_init(PyObject *mod, CmState *st);
int cm_sql_traverse(CmState *st, visitproc visit, void *arg);
void cm_sql_clear(CmState *st);
/* end sql */

#endif
