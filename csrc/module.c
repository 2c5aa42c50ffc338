/* cacheme._core: the module, its state, and the calls into each concept's
 * init. Nothing else lives here. */
#include "state.h"

#include "api/get_all.h"
#include "flight/flight.h"
#include "loop/loop.h"
#include "loop/wake.h"
#include "mongo/mongo.h"
#include "net/netloop.h"
#include "redis/redis.h"
#include "sql/sqlstore.h"

/* os.register_at_fork(after_in_child=...): the child starts clean, the
 * parent untouched. The one place that knows what is per process: no flight
 * of the parent's can be joined (flight/), callbacks get fresh Contexts
 * (loop.c), storages drop inherited connections without touching a loop
 * (netloop.c). */
static PyObject *after_fork_child(PyObject *mod, PyObject *Py_UNUSED(unused))
{
    CmState *st = cm_state_from_module(mod);
    cm_flight_after_fork_child(st);
    st->jitter_rng = 0; /* workers forked together draw different TTLs */
    cm_wake_after_fork_child(st);
    if (cm_loop_after_fork_child(st) < 0 || cm_netloop_after_fork_child(st) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef after_fork_def = {"_after_fork_child", after_fork_child, METH_NOARGS,
                                     "reset after fork() in the child (os.register_at_fork)"};

static int register_at_fork(PyObject *mod)
{
    PyObject *os = PyImport_ImportModule("os"), *reg = NULL, *fn = NULL, *kw = NULL;
    PyObject *empty = NULL, *r = NULL;
    int rc = -1;
    if (os == NULL)
        return -1;
    if (!PyObject_HasAttrString(os, "register_at_fork")) {
        Py_DECREF(os);
        return 0; /* no fork on this platform */
    }
    if ((reg = PyObject_GetAttrString(os, "register_at_fork")) != NULL &&
        (fn = PyCFunction_NewEx(&after_fork_def, mod, NULL)) != NULL &&
        PyModule_AddObjectRef(mod, "_after_fork_child", fn) == 0 &&
        (kw = Py_BuildValue("{sO}", "after_in_child", fn)) != NULL &&
        (empty = PyTuple_New(0)) != NULL && (r = PyObject_Call(reg, empty, kw)) != NULL)
        rc = 0;
    Py_XDECREF(r);
    Py_XDECREF(empty);
    Py_XDECREF(kw);
    Py_XDECREF(fn);
    Py_XDECREF(reg);
    Py_DECREF(os);
    return rc;
}

static int cm_exec(PyObject *mod)
{
    CmState *st = cm_state_from_module(mod);
    PyObject *asyncio = NULL;
    int rc = -1;

    st->module = mod; /* borrowed: the state lives inside it */
#define CM_INTERN(n)                                                                               \
    if ((st->s_##n = PyUnicode_InternFromString(#n)) == NULL)                                      \
        goto done;
    CM_INTERNED_NAMES(CM_INTERN)
#undef CM_INTERN

    st->prefix = PyUnicode_FromString("cacheme");
    st->storages = PyDict_New();
    st->sentinel = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    if (!st->prefix || !st->storages || !st->sentinel)
        goto done;
    st->generation = 1;

    asyncio = PyImport_ImportModule("asyncio");
    if (asyncio == NULL)
        goto done;
    st->get_running_loop = PyObject_GetAttrString(asyncio, "get_running_loop");
    st->CancelledError = PyObject_GetAttrString(asyncio, "CancelledError");
    st->InvalidStateError = PyObject_GetAttrString(asyncio, "InvalidStateError");
    if (!st->get_running_loop || !st->CancelledError || !st->InvalidStateError)
        goto done;
    if (cm_loop_init(st) < 0 || cm_wake_init(mod, st) < 0)
        goto done;

    if (cm_ready_init(mod, st) < 0 || cm_metrics_init(mod, st) < 0 || cm_store_init(mod, st) < 0 ||
        cm_bloomtype_init(mod, st) < 0 || cm_nodecfg_init(mod, st) < 0 ||
        cm_flight_init(mod, st) < 0 || cm_memoize_init(mod, st) < 0 || cm_key_init(mod, st) < 0 ||
        cm_fresh_init(mod, st) < 0)
        goto done;
    if (cm_serializer_init(mod, st) < 0) /* serializer */
        goto done;
    if (cm_redis_init(mod, st) < 0 || cm_redis_remote_init(mod, st) < 0) /* redis */
        goto done;
    if (cm_sql_init(mod, st) < 0 || cm_sql_remote_init(mod, st) < 0) /* sql */
        goto done;
    if (cm_mongo_init(mod, st) < 0) /* mongo */
        goto done;
    if (cm_netloop_init(mod, st) < 0 || register_at_fork(mod) < 0) /* netloop, fork */
        goto done;
    if (cm_get_all_init(mod, st) < 0) /* get_all */
        goto done;
    if (PyModule_AddObjectRef(mod, "sentinel", st->sentinel) < 0)
        goto done;
    rc = 0;
done:
    Py_XDECREF(asyncio);
    return rc;
}

static int cm_traverse(PyObject *mod, visitproc visit, void *arg)
{
    CmState *st = cm_state_from_module(mod);
    Py_VISIT(st->ReadyType);
    Py_VISIT(st->MetricsType);
    Py_VISIT(st->NodeConfigType);
    Py_VISIT(st->LocalStoreType);
    Py_VISIT(st->BloomFilterType);
    Py_VISIT(st->MemoizedType);
    Py_VISIT(st->prefix);
    Py_VISIT(st->storages);
    Py_VISIT(st->sentinel);
    Py_VISIT(st->logger);
    Py_VISIT(st->get_running_loop);
    Py_VISIT(st->CancelledError);
    Py_VISIT(st->InvalidStateError);
    Py_VISIT(st->base_create_future);
    Py_VISIT(st->FutureType);
    Py_VISIT(st->kw_loop);
    Py_VISIT(st->empty_context);
    Py_VISIT(st->kw_context);
    Py_VISIT(st->ready_cache);
    Py_VISIT(st->KeySlotType);
    Py_VISIT(st->last_cls);
    Py_VISIT(st->last_cfg);
    int r = cm_flight_state_traverse(st, visit, arg);
    if (r == 0)
        r = cm_wake_traverse(st, visit, arg);
    if (r == 0)
        r = cm_ser_state_traverse(&st->ser, visit, arg);
    if (r == 0)
        r = cm_redis_traverse(st, visit, arg);
    if (r == 0)
        r = cm_sql_traverse(st, visit, arg);
    if (r == 0)
        r = cm_mongo_state_traverse(&st->mongo, visit, arg);
    if (r == 0)
        r = cm_get_all_traverse(st, visit, arg);
    if (r != 0)
        return r;
    return 0;
}

static int cm_clear(PyObject *mod)
{
    CmState *st = cm_state_from_module(mod);
    cm_flight_state_clear(st);
    cm_wake_clear(st);
    Py_CLEAR(st->ReadyType);
    Py_CLEAR(st->MetricsType);
    Py_CLEAR(st->NodeConfigType);
    Py_CLEAR(st->LocalStoreType);
    Py_CLEAR(st->BloomFilterType);
    Py_CLEAR(st->MemoizedType);
#define CM_CLEAR_NAME(n) Py_CLEAR(st->s_##n);
    CM_INTERNED_NAMES(CM_CLEAR_NAME)
#undef CM_CLEAR_NAME
    Py_CLEAR(st->prefix);
    Py_CLEAR(st->storages);
    Py_CLEAR(st->sentinel);
    Py_CLEAR(st->logger);
    Py_CLEAR(st->get_running_loop);
    Py_CLEAR(st->CancelledError);
    Py_CLEAR(st->InvalidStateError);
    Py_CLEAR(st->base_create_future);
    Py_CLEAR(st->FutureType);
    Py_CLEAR(st->kw_loop);
    Py_CLEAR(st->empty_context);
    Py_CLEAR(st->kw_context);
    Py_CLEAR(st->ready_cache);
    Py_CLEAR(st->KeySlotType);
    Py_CLEAR(st->last_cls);
    Py_CLEAR(st->last_cfg);
    cm_ser_state_clear(&st->ser);     /* serializer */
    cm_redis_clear(st);               /* redis */
    cm_sql_clear(st);                 /* sql */
    cm_mongo_state_clear(&st->mongo); /* mongo */
    cm_get_all_clear(st);             /* get_all */
    return 0;
}

/* GC clear (the module is garbage): only what closes a cycle back to the
 * module that no other member can break (the builtins bound to it that the
 * state holds). Everything else stays: objects of
 * the same garbage finalized after this still use the state in their
 * dealloc (at interpreter exit, a storage reached only from a node class). Every
 * other cycle through the state is broken by its other members: our
 * types (type_clear), dicts, lists, tasks and the objects' own tp_clear. */
static int cm_gc_clear(PyObject *mod)
{
    CmState *st = cm_state_from_module(mod);
    cm_wake_gc_clear(st);
    cm_ser_state_gc_clear(&st->ser);
    return 0;
}

/* Only when the module object is freed: no holder is left by then
 * (cm_state_hold in state.h). */
static void cm_free(void *mod) { cm_clear((PyObject *)mod); }

static PyModuleDef_Slot cm_slots[] = {
    {Py_mod_exec, cm_exec},
#ifdef Py_mod_gil
    /* free-threaded builds (3.13t): the GIL stays on while we are loaded */
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL},
};

PyModuleDef cm_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "cacheme._core",
    .m_doc = "The C core of cacheme: keys, local stores, bloom filter, singleflight.",
    .m_size = sizeof(CmState),
    .m_slots = cm_slots,
    .m_traverse = cm_traverse,
    .m_clear = cm_gc_clear,
    .m_free = cm_free,
};

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&cm_module_def); }
