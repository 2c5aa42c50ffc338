/* Module state of cacheme._core: every Python object the C core keeps lives
 * here (never in a C global), so the module can be traversed, cleared and
 * loaded in several interpreters. */
#ifndef CM_STATE_H
#define CM_STATE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#include "redis/state.h"

typedef struct CmFlight CmFlight;

#define CM_GET_FREE_MAX 16384
#define CM_PROXY_FREE_MAX 4096

/* The in-flight table: key -> CmFlight, plain C records (see flight.c). */
typedef struct {
    CmFlight **buckets;
    size_t mask;
    size_t used;
} CmFlightTable;

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
    X(load_timeout)

typedef struct {
    /* heap types */
    PyTypeObject *ReadyType;
    PyTypeObject *GetType;
    PyTypeObject *MetricsType;
    PyTypeObject *NodeConfigType;
    PyTypeObject *LocalStoreType;
    PyTypeObject *BloomFilterType;
    PyTypeObject *MemoizedType;
    PyTypeObject *FlightHandleType;
    PyTypeObject *ProxyType;

    /* interned strings, one field per name: st->s__full_key, ... */
#define CM_DECLARE_NAME(n) PyObject *s_##n;
    CM_INTERNED_NAMES(CM_DECLARE_NAME)
#undef CM_DECLARE_NAME

    /* configuration, set from Python */
    PyObject *prefix;    /* str, default "cacheme" */
    PyObject *storages;  /* dict: name -> storage */
    PyObject *sentinel;  /* cacheme.models.sentinel: "not found" from storages */
    PyObject *logger;    /* logging.getLogger("cacheme") */
    uint64_t generation; /* bumped by register_storage, set_prefix: node configs rebuild */

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
    /* FlightProxy and waiting Get objects to wake from one callback (wake_cb,
     * bound to the module) on wake_loop: see wake_batch_add (flight.c) */
    PyObject *wake_batch, *wake_loop, *wake_cb;
    /* cacheme.core._load_with_timeout(aw, seconds): a load under
     * Meta.load_timeout (set by cacheme.core, flight.c call_loader) */
    PyObject *load_timeout_wrap;

    /* cacheme.models._FullKeySlot: Node's base whose one slot holds the
     * cached full key, read and written at key_slot_offset (key.c) */
    PyObject *KeySlotType;
    Py_ssize_t key_slot_offset;

    /* the last node class seen by get() and its config (both strong) */
    PyObject *last_cls;
    PyObject *last_cfg;

    /* a reusable ready awaitable (refcount 1 = free to reuse) */
    PyObject *ready_cache;

    CmFlightTable flights;
    CmFlight *flight_free; /* free list of flight records */
    size_t flight_free_len;
    /* free list of Get objects (flight.c, get_dealloc): up to CM_GET_FREE_MAX */
    void *get_free;
    size_t get_free_len;
    void *proxy_free; /* and of FlightProxy objects, up to CM_PROXY_FREE_MAX */
    size_t proxy_free_len;
    /* a done Future (result None) on done_loop, handed to a Task's wakeup
     * for an outcome the Task only needs to resume on (waiter_fire) */
    PyObject *done_future, *done_loop;
    PyObject *TaskType; /* asyncio.Task */

    /* serializer (serializer.c, ser_object.c, msgpack_codec.c) */
#define CM_SER_OBJECTS(X)                                                                          \
    X(SerializerError)                                                                             \
    X(PickleSerializerType)                                                                        \
    X(JSONSerializerType)                                                                          \
    X(MsgPackSerializerType)                                                                       \
    X(CompressedSerializerType)                                                                    \
    X(ser_datetime)                                                                                \
    X(ser_utc)                                                                                     \
    X(ser_date)                                                                                    \
    X(ser_time)                                                                                    \
    X(ser_timedelta)                                                                               \
    X(ser_Decimal)                                                                                 \
    X(ser_UUID)                                                                                    \
    X(ser_Enum)                                                                                    \
    X(ser_pickle_dumps)                                                                            \
    X(ser_pickle_loads)                                                                            \
    X(ser_SafeUnpicklerType)                                                                       \
    X(ser_BytesIO)                                                                                 \
    X(ser_a2b_base64)                                                                              \
    X(ser_json_encoder)                                                                            \
    X(ser_json_scan_once)                                                                          \
    X(ser_object_encoder)                                                                          \
    X(ser_object_decoder)                                                                          \
    X(ser_datetime_qualname)                                                                       \
    X(ser_zero)                                                                                    \
    X(ser_s_class)                                                                                 \
    X(ser_s_data)                                                                                  \
    X(ser_s_isoformat)                                                                             \
    X(ser_s_fromisoformat)                                                                         \
    X(ser_s_serializer)                                                                            \
    X(ser_s_dumps)                                                                                 \
    X(ser_s_loads)                                                                                 \
    X(ser_s_dataclass_fields)                                                                      \
    X(ser_s_builtins)                                                                              \
    X(ser_s_value)                                                                                 \
    X(ser_s_updated_at)                                                                            \
    X(ser_now)
#define CM_SER_DECLARE(n) PyObject *n;
    CM_SER_OBJECTS(CM_SER_DECLARE)
#undef CM_SER_DECLARE
#define CM_SER_KEYCACHE_SIZE 512
    PyObject *ser_keycache[CM_SER_KEYCACHE_SIZE]; /* short ASCII map keys (msgpack_codec.c) */
#define CM_SER_MAPTPL_SLOTS 16
#define CM_SER_MAPTPL_MAXN 32
    /* maps seen twice with the same keys (lists of records): a dict of
     * those keys to None that the decoder copies (msgpack_codec.c) */
    struct {
        PyObject *dict;                     /* NULL while the slot is empty */
        PyObject *keys[CM_SER_MAPTPL_MAXN]; /* borrowed from dict, in order */
        uint64_t pending;                   /* signature of the last miss */
        uint32_t n;
    } ser_maptpl[CM_SER_MAPTPL_SLOTS];
    uint8_t ser_maptpl_byn[CM_SER_MAPTPL_MAXN + 1]; /* 1 + slot last used for n keys */
    int ser_maptpl_off;           /* a copy was not laid out as expected: templates off */
    Py_ssize_t ser_unpickler_off; /* the serializer pointer in _SafeUnpickler (ser_pickle.c) */
    /* end serializer */
    CmRedisState redis; /* redis/state.h */
    /* sql (sqlstore.c, pg.c, mysql.c, sqlite.c) */
#define CM_SQL_OBJECTS(X)                                                                          \
    X(PgClientType)                                                                                \
    X(MySQLClientType)                                                                             \
    X(SQLiteClientType)                                                                            \
    X(SQLError)                                                                                    \
    X(SQLConnectionError)                                                                          \
    X(SQLTimeoutError)                                                                             \
    X(SQLTableError)                                                                               \
    X(SQLKeyError)                                                                                 \
    X(StorageKeyError)
#define CM_SQL_DECLARE(n) PyObject *n;
    CM_SQL_OBJECTS(CM_SQL_DECLARE)
#undef CM_SQL_DECLARE
    PyTypeObject *SqlConnType;
    /* end sql */
    /* netloop (netloop.c): every per-loop table of the process, for the
     * after-fork hook (plain C records, owned by their storages) */
    struct CmNetLoops *netloops;
    long forks; /* after-fork hooks run in this process */
    /* end netloop */
} CmState;

static inline CmState *cm_state_from_module(PyObject *mod)
{
    return (CmState *)PyModule_GetState(mod);
}

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
void cm_flight_table_clear(CmState *st);
/* After fork() in the child: no flight of the parent's can be joined; the
 * wake batch and the done Future of the parent's loop are let go (flight.c).
 * Called from module.c's os.register_at_fork hook (_after_fork_child). */
void cm_flight_after_fork_child(CmState *st);
/* serializer */
int cm_serializer_init(PyObject *mod, CmState *st);
int cm_serializer_traverse(CmState *st, visitproc visit, void *arg);
void cm_serializer_clear(CmState *st);
/* end serializer */

/* redis */
int cm_redis_init(PyObject *mod, CmState *st);
int cm_redis_traverse(CmState *st, visitproc visit, void *arg);
void cm_redis_clear(CmState *st);
/* Make waiter (a FlightProxy of loop) be woken straight by the op behind
 * fut, the future a Redis storage call just returned: 1 attached, 0 not
 * (fut is not such an op's, or it has a waiter). See redis/op.c. */
int cm_redis_attach_waiter(CmState *st, PyObject *fut, PyObject *waiter, PyObject *loop);
/* flight.c: wake proxy (stolen; of loop, stolen), which waits for fut, from
 * one loop callback shared with the other proxies woken before it runs. */
void cm_proxy_wake_later(CmState *st, PyObject *proxy, PyObject *fut, PyObject *loop);
/* The Get calls (redis/calls.c, "calls of a flight's Get"). cm_redis_direct: 1 if
 * storage's method `name` is RedisClient's own (not overridden by its class
 * or instance). cm_redis_get_for / cm_redis_set_for: send GET / SET for the
 * flight's Get `get` (the op takes a reference) on loop, with no future;
 * they return the op with the caller's reference (drop it with
 * cm_redis_op_unref, which may finish it), or NULL with an exception.
 * cm_redis_op_handoff: the op's outcome goes to `get` (a new reference
 * taken; NULL: nobody) instead; returns the op's reference to the Get it had.
 * cm_get_op_done (flight.c): the op finished with res or err (borrowed);
 * steals the reference to the Get. */
struct CmRedisOp;
int cm_redis_direct(CmState *st, PyObject *storage, PyObject *name);
struct CmRedisOp *cm_redis_get_for(PyObject *client, PyObject *node, PyObject *ser, PyObject *loop,
                                   PyObject *get);
struct CmRedisOp *cm_redis_set_for(PyObject *client, PyObject *node, PyObject *value, PyObject *ttl,
                                   PyObject *ser, PyObject *loop, PyObject *get);
PyObject *cm_redis_op_handoff(struct CmRedisOp *op, PyObject *get);
void cm_redis_op_unref(struct CmRedisOp *op);
void cm_get_op_done(CmState *st, PyObject *get, PyObject *res, PyObject *err);
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
