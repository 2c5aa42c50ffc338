/* Background refreshes (Meta.refresh_after, early_refresh): a hit that
 * finds its value due returns it at once and leaves the reload to a flight
 * of its own. That flight is registered before the hit returns, so that
 * the next hits and any caller that misses meanwhile find it (and join it)
 * instead of starting another; it is driven by a Task from its load on
 * (the value just read is what the remote caches would give), fills every
 * cache, and is never cancelled by a waiter that leaves. A failed refresh
 * is logged (leader.c) and counted as a failed load; the cached value
 * stays. */
#include "flight/call.h"

#include "core/fresh.h"
#include "core/store.h"

#include "loop/loop.h"

int cm_refresh_start(CmState *st, CmRequest *req, int kind)
{
    if (cm_flight_joinable(st, cm_flight_find(st, req->key, req->hash)) != NULL)
        return 0; /* a flight already running for the key counts */
    PyObject *loop = cm_loop_running(st);
    if (loop == NULL) {
        /* get() called before its loop runs (asyncio.run(get(node))): the
         * next hit, in the loop, refreshes */
        if (!PyErr_ExceptionMatches(PyExc_RuntimeError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    CmCallObject *d = (CmCallObject *)cm_get_begin(st, req);
    if (d == NULL) {
        Py_DECREF(loop);
        return -1;
    }
    CmNodeConfigObject *cfg = req->cfg; // borrowed from req
    d->role = CALL_DRIVES;
    d->step = STEP_LOAD;
    d->refresh = 1 + kind;
    d->missed = cfg->ncaches >= 32 ? UINT32_MAX : (1u << cfg->ncaches) - 1;
    CmFlight *fl = cm_flight_start(st, req->key, req->hash);
    if (fl == NULL) {
        Py_DECREF(d);
        Py_DECREF(loop);
        return -1;
    }
    fl->background = 1;
    fl->loop = Py_NewRef(loop);
    fl->tstate = PyThreadState_Get();
    d->fl = fl; /* the reference cm_flight_start gave */
    d->loop = loop;
    d->loop_tstate = fl->tstate;
    PyObject *task = cm_loop_create_task(st, loop, (PyObject *)d);
    if (task == NULL) {
        /* nobody will drive it: out of the table, no waiter can have come */
        PyObject *e = cm_exc_take();
        cm_flight_settle(st, fl, NULL, e);
        cm_flight_remove(st, fl);
        d->role = CALL_DONE;
        Py_DECREF(d);
        cm_raise_exc(e);
        Py_DECREF(e);
        return -1;
    }
    fl->task = task;
    cfg->metrics->refreshes[kind]++;
    Py_DECREF(d);
    return 0;
}

PyObject *cm_refresh_lookup(CmState *st, CmRequest *req, CmStoreObject *store, PyObject *key,
                            Py_hash_t hash, CmStoreAge *age)
{
    PyObject *v = cm_store_lookup_aged(store, key, hash, 0, age);
    int kind = v != NULL ? cm_fresh_due(st, req->cfg, age) : -1;
    if (kind >= 0) {
        req->key = key;
        req->hash = hash;
        req->missed = 0;
        req->local_puts = 0;
        if (cm_refresh_start(st, req, kind) < 0)
            PyErr_WriteUnraisable(key);
    }
    return v;
}
