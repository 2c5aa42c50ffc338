/* A storage's life over a pool and per-loop instances: see net/netstore.h. */
#include "net/netstore.h"

#include "base/exc.h"

void cm_netstore_init(CmNetPool *pool, CmNetLoops *loops, CmState *st, const CmNetKind *kind,
                      PyObject *owner)
{
    cm_net_pool_init(pool, cm_state_hold(st), 0.05, 1.0);
    cm_netloops_init(loops, st, kind, owner);
}

void cm_netstore_close(CmNetPool *pool, PyObject *tp, int how, const char *why)
{
    PyObject *saved = cm_exc_take();
    PyObject *msg = PyUnicode_FromString(why);
    PyErr_Clear(); /* a message we could not make: the requests fail with tp() */
    if (how == CM_NETSTORE_CLOSE)
        cm_net_pool_close_all(pool, tp, msg);
    else if (how == CM_NETSTORE_CLOSE_GC)
        cm_net_pool_close_gc(pool, tp, msg);
    else
        cm_net_pool_drop_detached(pool, tp, msg, how == CM_NETSTORE_DETACH_FORK);
    Py_XDECREF(msg);
    cm_exc_restore(saved);
}

int cm_netstore_keep_args(PyObject **init_args, PyObject **init_kwds, PyObject *args,
                          PyObject *kwds)
{
    Py_XSETREF(*init_args, Py_NewRef(args));
    Py_XSETREF(*init_kwds, kwds ? PyDict_Copy(kwds) : NULL);
    return kwds != NULL && *init_kwds == NULL ? -1 : 0;
}

PyObject *cm_netstore_spawn(PyObject *tp, PyObject *init_args, PyObject *init_kwds, PyObject *err,
                            const char *name)
{
    if (init_args == NULL) {
        PyErr_Format(err, "cacheme %s storage: not initialised", name);
        return NULL;
    }
    return PyObject_Call(tp, init_args, init_kwds);
}

int cm_netstore_traverse(PyObject *self, CmNetPool *pool, CmNetLoops *loops, PyObject *init_args,
                         PyObject *init_kwds, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    CM_STATE_VISIT(pool->st);
    Py_VISIT(init_args);
    Py_VISIT(init_kwds);
    int rc = cm_net_pool_traverse(pool, visit, arg);
    return rc ? rc : cm_netloops_traverse(loops, visit, arg);
}

void cm_netstore_clear(CmNetPool *pool, CmNetLoops *loops, PyObject **init_args,
                       PyObject **init_kwds, PyObject *tp)
{
    cm_netloops_clear(loops);
    Py_CLEAR(*init_args);
    Py_CLEAR(*init_kwds);
    cm_net_pool_fini(pool, tp, NULL);
}

void cm_netstore_dealloc_start(PyObject *self, PyObject *weakreflist, inquiry clear,
                               CmNetLoops *loops)
{
    cm_netloops_unlink(loops);
    PyObject_GC_UnTrack(self);
    if (weakreflist != NULL)
        PyObject_ClearWeakRefs(self);
    clear(self);
    cm_netloops_fini(loops);
}

void cm_netstore_dealloc_end(PyObject *self, CmNetPool *pool)
{
    PyTypeObject *tp = Py_TYPE(self);
    CmState *st = pool->st;
    tp->tp_free(self);
    Py_DECREF(tp);
    cm_state_release(st);
}
