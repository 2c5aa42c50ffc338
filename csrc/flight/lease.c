/* The flight's side of cross-process leases (flight/remote.h, lease ops).
 *
 * The singleflight makes one load per key per process; a lease makes it one
 * per key across processes, as memcache's leases do (Nishtala et al.,
 * "Scaling Memcache at Facebook", NSDI 2013). When every remote cache of a
 * flight missed, the first of them whose storage takes leases is asked for
 * the key's lease before the load: the flight that gets it loads and fills
 * as it would without one, then gives it up; a flight that does not waits
 * (in the storage, see redis/lease.c) for the holder's value and resolves
 * with it, filling its local caches only. A storage that fails here is a
 * storage failure like any other: logged, counted, and the flight loads. */
#include "flight/call.h"

#include "loop/loop.h"

int cm_lease_start(CmCallObject *g)
{
    CmState *st = g->st;
    CmNodeConfigObject *cfg = g->cfg;
    for (Py_ssize_t i = 0; i < cfg->ncaches && i < 32; i++) {
        CmCacheRef *r = &cfg->caches[i];
        if (r->kind != CM_CACHE_REMOTE || !(g->missed & (1u << i)))
            continue;
        const CmRemoteOps *ops = cm_remote_find(st, r->storage);
        if (ops == NULL || ops->lease_acquire == NULL || !ops->direct(st, r->storage, st->s_get))
            continue;
        PyObject *aw = ops->lease_acquire(st, r->storage, g->node, cfg->serializer);
        if (aw == Py_None) {
            Py_DECREF(aw);
            continue;
        }
        if (aw != NULL && (g->sub = cm_await_iter(aw)) != NULL) {
            g->lease_aw = aw;
            g->lease_ops = ops;
            g->idx = i;
            return 1;
        }
        Py_XDECREF(aw);
        PyObject *e = cm_exc_take();
        CmStorageCounters *c = &cfg->metrics->storages[r->stat];
        c->errors++;
        cm_log_warning(st, "cacheme: lease of storage '%U' failed: %R", r->name, e);
        Py_XDECREF(e);
        return 0;
    }
    return 0;
}

/* A (lease, value) pair (borrowed) of a lease awaitable's result: its
 * lease, if any, given back through ops. */
static void release_pair(CmState *st, const CmRemoteOps *ops, PyObject *t)
{
    if (PyTuple_Check(t) && PyTuple_GET_SIZE(t) == 2 && PyTuple_GET_ITEM(t, 0) != Py_None)
        ops->lease_release(st, Py_NewRef(PyTuple_GET_ITEM(t, 0)));
}

void cm_lease_aw_drop(CmState *st, const CmRemoteOps *ops, PyObject *aw)
{
    PyObject *exc = cm_exc_take();
    int done = cm_future_done(st, aw);
    if (done == 0) /* it stops: no lease taken for nobody (a closed loop: cleared below) */
        cm_future_cancel(st, aw);
    PyObject *res = done == 1 ? cm_future_result(st, aw) : NULL;
    if (res != NULL && PyList_Check(res)) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(res); i++)
            release_pair(st, ops, PyList_GET_ITEM(res, i));
    } else if (res != NULL) {
        release_pair(st, ops, res);
    }
    Py_XDECREF(res);
    PyErr_Clear(); /* not done, cancelled, or not a future: nothing to give back */
    Py_DECREF(aw);
    cm_exc_restore(exc);
}

/* The flight leaves without the lease awaitable's outcome (cancelled as it
 * came, or closed): a lease it got is given back, one still coming stops. */
static void lease_drop(CmCallObject *g)
{
    PyObject *aw = g->lease_aw;
    g->lease_aw = NULL;
    if (aw != NULL)
        cm_lease_aw_drop(g->st, g->lease_ops, aw);
}

int cm_lease_done(CmCallObject *g, PyObject *res, PyObject *e, PyObject **err)
{
    CmState *st = g->st;
    CmNodeConfigObject *cfg = g->cfg;
    CmCacheRef *r = &cfg->caches[g->idx];
    g->step = STEP_LOAD;
    if (e != NULL) {
        if (!PyObject_TypeCheck(e, (PyTypeObject *)PyExc_Exception)) {
            /* cancelled while waiting, or in the same loop iteration as the
             * awaitable got its outcome (then thrown in instead of it) */
            lease_drop(g);
            *err = e;
            return -1;
        }
        Py_CLEAR(g->lease_aw);
        cfg->metrics->storages[r->stat].errors++;
        cm_log_warning(st, "cacheme: lease of storage '%U' failed: %R", r->name, e);
        Py_DECREF(e);
        return 0;
    }
    Py_CLEAR(g->lease_aw);
    if (!PyTuple_Check(res) || PyTuple_GET_SIZE(res) != 2) {
        cfg->metrics->storages[r->stat].errors++;
        cm_log_warning(st, "cacheme: lease of storage '%U' gave %R, not (lease, value)", r->name,
                       res);
        Py_DECREF(res);
        return 0;
    }
    PyObject *lease = PyTuple_GET_ITEM(res, 0); // borrowed
    if (lease != Py_None) {
        g->lease = Py_NewRef(lease);
    } else {
        /* the holder loaded it and filled every remote cache: fill the
         * local ones only */
        g->value = Py_NewRef(PyTuple_GET_ITEM(res, 1));
        cfg->metrics->storages[r->stat].hits++;
        cfg->metrics->storages[r->stat].misses--; /* counted a miss when it was read */
        for (Py_ssize_t i = 0; i < cfg->ncaches && i < 32; i++)
            if (cfg->caches[i].kind == CM_CACHE_REMOTE)
                g->missed &= ~(1u << i);
        g->step = STEP_RESOLVE;
    }
    Py_DECREF(res);
    return 0;
}

void cm_lease_end(CmCallObject *g)
{
    lease_drop(g);
    PyObject *lease = g->lease;
    if (lease == NULL)
        return;
    g->lease = NULL;
    g->lease_ops->lease_release(g->st, lease);
}
