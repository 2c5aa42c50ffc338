/* The leader's state machine: a flight driven inline by the call that
 * started it (remote caches in order, then the load, then the fills), or
 * by a Task once the leader has gone and others still wait. Each awaitable
 * is delegated to the way `await` does (send/throw from C), so a flight
 * that never suspends costs no Task and no Future. */
#include "flight/call.h"

#include "base/clock.h"
#include "base/exc.h"
#include "core/bloomtype.h"
#include "core/fresh.h"
#include "core/store.h"
#include "core/ttl.h"
#include "loop/loop.h"

static inline CmStorageCounters *counters(CmCallObject *g, Py_ssize_t i)
{
    return &g->cfg->metrics->storages[g->cfg->caches[i].stat];
}

void cm_fill_locals(CmState *st, CmNodeConfigObject *cfg, PyObject *key, Py_hash_t hash,
                    PyObject *value, uint32_t missed, const CmStoreAge *age)
{
    for (Py_ssize_t i = 0; i < cfg->ncaches && i < 32; i++) {
        CmCacheRef *r = &cfg->caches[i];
        if (r->kind != CM_CACHE_LOCAL || !(missed & (1u << i)))
            continue;
        CmStorageCounters *c = &cfg->metrics->storages[r->stat];
        if (cm_fresh_put(st, cfg, r, key, hash, value, age) < 0) {
            c->errors++;
            c->set_errors++;
            PyErr_WriteUnraisable(r->name);
        } else {
            c->sets++;
        }
    }
}

/* Start the next awaitable of the flight in g->sub. 1 started, 0 nothing to
 * start in this step (advance), -1 error (exception set). */
static int start_sub(CmCallObject *g, PyObject *aw)
{
    if (aw == NULL)
        return -1;
    g->sub = cm_await_iter(aw);
    Py_DECREF(aw);
    return g->sub ? 1 : -1;
}

static PyObject *call_storage(CmCallObject *g, PyObject *name, CmCacheRef *r, int set)
{
    PyObject *args[5] = {r->storage, g->node, NULL, NULL, NULL};
    if (!set) {
        args[2] = g->cfg->serializer;
        return PyObject_VectorcallMethod(name, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    args[2] = g->value;
    if ((args[3] = cm_cache_write_ttl(g->st, r)) == NULL)
        return NULL;
    args[4] = g->cfg->serializer;
    PyObject *aw = PyObject_VectorcallMethod(name, args, 5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(args[3]);
    return aw;
}

/* storage.get(node) / storage.set(...) of cache r as the current request:
 * a remote op of our own when r's type implements flight/remote.h and keeps
 * its own method, else the awaitable the method returns. 0, or -1 with an
 * exception. */
static int start_call(CmCallObject *g, CmCacheRef *r, int set)
{
    CmState *st = g->st;
    PyObject *name = set ? st->s_set : st->s_get;
    const CmRemoteOps *ops = cm_remote_find(st, r->storage);
    if (ops == NULL || !ops->direct(st, r->storage, name))
        return start_sub(g, call_storage(g, name, r, set));
    if (g->loop == NULL) {
        if ((g->loop = cm_loop_running(st)) == NULL)
            return -1;
        g->loop_tstate = PyThreadState_Get();
    }
    CmRemoteOp *op;
    if (set) {
        PyObject *ttl = cm_cache_write_ttl(st, r);
        if (ttl != NULL && (g->cfg->fresh & CM_FRESH_STALE) && ops->ages && ttl != Py_None) {
            /* kept stale_if_error longer: the age read back says it expired */
            double secs = cm_ttl_seconds(st, ttl);
            Py_SETREF(ttl,
                      secs < 0 ? NULL : PyFloat_FromDouble(secs + (double)g->cfg->stale_ns / 1e9));
        }
        if (ttl == NULL)
            return -1;
        op = ops->set(r->storage, g->node, g->value, ttl, g->cfg->serializer, g->loop,
                      (PyObject *)g);
        Py_DECREF(ttl);
    } else {
        g->remote_updated_ns = 0; /* until the storage reports the value's age */
        op = ops->get(r->storage, g->node, g->cfg->serializer, g->loop, (PyObject *)g);
    }
    if (op == NULL)
        return -1;
    g->remote_state = REMOTE_PENDING;
    g->remote = ops;
    g->remote_op = op;
    cm_call_held((PyObject *)g);
    ops->unref(op); /* may finish it at once (cm_remote_done) */
    return 0;
}

static PyObject *call_loader_raw(CmCallObject *g)
{
    CmState *st = g->st;
    if (g->memo_fn != NULL)
        return PyObject_Vectorcall(g->memo_fn, &PyTuple_GET_ITEM(g->memo_argv, 0), g->memo_nargs,
                                   g->memo_kwnames);
    if (g->load_fn != NULL)
        return PyObject_CallOneArg(g->load_fn, g->node);
    CmNodeConfigObject *cfg = g->cfg;
    if (Py_TYPE(g->node) == cfg->cls && cm_nodecfg_methods(st, cfg) && cfg->load_func != NULL)
        return PyObject_Vectorcall(cfg->load_func, &g->node, 1, NULL);
    return PyObject_VectorcallMethod(st->s_load, &g->node, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     NULL);
}

PyObject *cm_flight_load_timeout(CmState *st, CmNodeConfigObject *cfg, PyObject *aw)
{
    double t = cfg->load_timeout;
    if (aw == NULL || t <= 0 || st->flight.load_timeout_wrap == NULL)
        return aw;
    PyObject *secs = PyFloat_FromDouble(t);
    PyObject *args[2] = {aw, secs};
    PyObject *w = secs ? PyObject_Vectorcall(st->flight.load_timeout_wrap, args, 2, NULL) : NULL;
    Py_XDECREF(secs);
    if (w == NULL && PyCoro_CheckExact(aw)) { /* never awaited: no warning for it */
        PyObject *typ, *val, *tb;
        PyErr_Fetch(&typ, &val, &tb);
        PyObject *r = PyObject_CallMethodNoArgs(aw, st->s_close);
        Py_XDECREF(r);
        PyErr_Clear();
        PyErr_Restore(typ, val, tb);
    }
    Py_DECREF(aw);
    return w;
}

/* The load's awaitable, under Meta.load_timeout. */
static PyObject *call_loader(CmCallObject *g)
{
    return cm_flight_load_timeout(g->st, g->cfg, call_loader_raw(g));
}

/* Doorkeeper: store only on the key's second request. 1 = fill. */
static int doorkeeper_admits(CmCallObject *g)
{
    CmNodeConfigObject *cfg = g->cfg;
    if (cfg->doorkeeper == Py_None)
        return 1;
    if (cfg->doorkeeper_c)
        return cm_bloomtype_seen_or_put(cfg->doorkeeper, g->hash);
    PyObject *r = PyObject_CallMethodOneArg(cfg->doorkeeper, g->st->s_contains, g->key);
    int seen = r ? PyObject_IsTrue(r) : -1;
    Py_XDECREF(r);
    if (seen == 0) {
        r = PyObject_CallMethodOneArg(cfg->doorkeeper, g->st->s_put, g->key);
        if (r == NULL)
            seen = -1;
        Py_XDECREF(r);
    }
    if (seen < 0) {
        PyErr_WriteUnraisable(cfg->doorkeeper);
        return 1;
    }
    return seen;
}

static void metrics_load_done(CmCallObject *g, int ok)
{
    CmMetricsObject *m = g->cfg->metrics;
    if (ok)
        m->load_success_count++;
    else
        m->load_failure_count++;
    g->load_ns = cm_now_ns() - g->load_start;
    cm_metrics_observe_load(m, (uint64_t)g->load_ns);
}

/* A remote get of cache g->idx gave res (stolen) for a node with freshness
 * options. From the age the storage reported: 1 when res is past the
 * cache's TTL (kept by the storage for stale_if_error: res becomes the
 * fallback of a failing load), else 0 with the age the local fills record
 * and, when due, a refresh to start once the flight ends. */
static int remote_hit_stale(CmCallObject *g, PyObject *res)
{
    CmNodeConfigObject *cfg = g->cfg;
    const CmCacheRef *r = &cfg->caches[g->idx];
    if (g->remote_updated_ns == 0)
        return 0; /* a storage that does not say */
    CmStoreAge age;
    int past = cm_fresh_remote_age(cfg, r, g->remote_updated_ns, g->remote_load_ns, &age);
    g->remote_updated_ns = 0;
    if (past) {
        /* the storage's clock may keep it longer than the window */
        if (cm_now_ns() - age.expire <= cfg->stale_ns)
            Py_XSETREF(g->stale_value, res);
        else
            Py_DECREF(res);
        return 1;
    }
    g->fill_written = age.written;
    int64_t end = cm_fresh_remote_end(r, age.written);
    g->fill_expire = end != INT64_MAX ? end : 0;
    g->load_ns = age.load_ns;
    int kind = g->refresh ? -1 : cm_fresh_due(g->st, cfg, &age);
    g->refresh_due = kind + 1;
    return 0;
}

/* The flight is over and a remote hit's age called for a refresh: start it
 * (the key is no longer in flight). */
static void start_due_refresh(CmCallObject *g)
{
    CmRequest req = {.node = g->node,
                     .cfg = g->cfg,
                     .key = g->key,
                     .hash = g->hash,
                     .load_fn = g->load_fn,
                     .memo_fn = g->memo_fn};
    if (g->memo_fn != NULL) {
        req.memo_args = &PyTuple_GET_ITEM(g->memo_argv, 0);
        req.memo_nargs = g->memo_nargs;
        req.memo_kwnames = g->memo_kwnames;
    }
    int kind = g->refresh_due - 1;
    g->refresh_due = 0;
    if (cm_refresh_start(g->st, &req, kind) < 0)
        PyErr_WriteUnraisable(g->key);
}

/* The load failed with e (borrowed). A background refresh says so and
 * fails (the old value stays); with stale_if_error a value kept past its
 * TTL is the flight's value instead: 1, the call goes on to resolve it. */
static int load_failed(CmCallObject *g, PyObject *e)
{
    CmState *st = g->st;
    CmNodeConfigObject *cfg = g->cfg;
    if (g->refresh) {
        /* cancelled (the loop is closing): nothing to report */
        if (e != NULL && PyObject_TypeCheck(e, (PyTypeObject *)PyExc_Exception))
            cm_log_warning(st,
                           "cacheme: background refresh of %R failed (the cached value stays): %R",
                           g->key, e);
        /* callers that missed meanwhile wait on it: they may have a kept value */
        if (g->fl == NULL || g->fl->nwaiters == 0)
            return 0;
    }
    if (!(cfg->fresh & CM_FRESH_STALE) || e == NULL ||
        !PyObject_TypeCheck(e, (PyTypeObject *)PyExc_Exception))
        return 0;
    /* a local cache's kept value first, else a remote one read on the way */
    PyObject *v = cm_fresh_stale_value(cfg, g->key, g->hash);
    if (v == NULL) {
        v = g->stale_value;
        g->stale_value = NULL;
    }
    if (v == NULL)
        return 0;
    cfg->metrics->refreshes[CM_REFRESH_STALE_IF_ERROR]++;
    cm_log_warning(st, "cacheme: load of %R failed, the stale value is used (stale_if_error): %R",
                   g->key, e);
    g->value = v;
    g->missed = 0; /* the caches keep what they have */
    g->step = STEP_RESOLVE;
    return 1;
}

/* The flight's state machine. arg/exc resume the current sub-awaitable (exc
 * borrowed). Returns NEXT with *out yielded, RETURN with *out the value, or
 * ERROR with the exception set. On RETURN/ERROR the flight is settled. */
PySendResult cm_leader_drive(CmCallObject *g, PyObject *arg, PyObject *exc, PyObject **out)
{
    CmState *st = g->st;
    CmNodeConfigObject *cfg = g->cfg;
    PyObject *res = NULL;
    PyObject *err = NULL; /* owned: the failure of the flight */

    if (g->has_pending) {
        /* handed to a Task: it must first see what the flight yielded */
        g->has_pending = 0;
        if (exc == NULL) {
            *out = g->pending;
            g->pending = NULL;
            return PYGEN_NEXT;
        }
        Py_CLEAR(g->pending);
    }

    for (;;) {
        if (g->sub != NULL || g->remote_state != REMOTE_IDLE) {
            PySendResult r = g->remote_state != REMOTE_IDLE
                                 ? cm_call_remote_resume(g, exc, &res)
                                 : cm_await_resume(g->st, g->sub, arg, exc, &res);
            arg = Py_None;
            exc = NULL;
            if (r == PYGEN_NEXT) {
                *out = res;
                return PYGEN_NEXT;
            }
            Py_CLEAR(g->sub);
            PyObject *e = r == PYGEN_ERROR ? cm_exc_take() : NULL;
            if (r == PYGEN_ERROR && e == NULL)
                e = PyObject_CallFunction(PyExc_SystemError, "s", "lost exception");
            switch (g->step) {
            case STEP_REMOTE_GET: {
                CmStorageCounters *c = counters(g, g->idx);
                if (e != NULL && (!PyObject_TypeCheck(e, (PyTypeObject *)PyExc_Exception) ||
                                  PyObject_TypeCheck(e, (PyTypeObject *)st->StorageKeyError))) {
                    /* cancellation and friends are not a miss; nor is a key
                     * the storage cannot hold: it would miss every time */
                    err = e;
                    goto fail;
                }
                if (e != NULL) {
                    c->errors++;
                    c->misses++;
                    g->missed |= 1u << g->idx;
                    cm_log_warning(st, "cacheme: get from storage '%U' failed: %R",
                                   cfg->caches[g->idx].name, e);
                    Py_DECREF(e);
                } else if (res == st->sentinel) {
                    c->misses++;
                    g->missed |= 1u << g->idx;
                    Py_DECREF(res);
                } else if (cfg->fresh && remote_hit_stale(g, res)) {
                    c->misses++; /* kept past its TTL for stale_if_error */
                    g->missed |= 1u << g->idx;
                } else {
                    c->hits++;
                    g->value = res;
                    g->step = STEP_RESOLVE;
                    break;
                }
                g->idx++;
                break;
            }
            case STEP_LEASE:
                if (cm_lease_done(g, res, e, &err) < 0)
                    goto fail;
                break;
            case STEP_LOAD:
                metrics_load_done(g, e == NULL);
                if (e != NULL && load_failed(g, e)) {
                    Py_DECREF(e);
                    break;
                }
                if (e != NULL) {
                    err = e;
                    goto fail;
                }
                g->value = res;
                g->step = STEP_RESOLVE;
                break;
            case STEP_FILL:
                if (e != NULL) {
                    if (!PyObject_TypeCheck(e, (PyTypeObject *)PyExc_Exception)) {
                        /* cancelled while filling: the value is already out */
                        if (g->fl != NULL)
                            cm_flight_remove(st, g->fl);
                        cm_lease_end(g);
                        cm_raise_exc(e);
                        Py_DECREF(e);
                        return PYGEN_ERROR;
                    }
                    counters(g, g->idx)->errors++;
                    counters(g, g->idx)->set_errors++;
                    cm_log_warning(st, "cacheme: fill of storage '%U' failed: %R",
                                   cfg->caches[g->idx].name, e);
                    Py_DECREF(e);
                } else {
                    counters(g, g->idx)->sets++;
                    Py_DECREF(res);
                }
                g->idx++;
                break;
            }
            continue;
        }

        switch (g->step) {
        case STEP_REMOTE_GET:
            while (g->idx < cfg->ncaches && cfg->caches[g->idx].kind != CM_CACHE_REMOTE)
                g->idx++;
            if (g->idx >= cfg->ncaches || g->idx >= 32) {
                g->step = STEP_LEASE;
                continue;
            }
            if (start_call(g, &cfg->caches[g->idx], 0) < 0) {
                PyObject *e = cm_exc_take();
                if (e != NULL && (!PyObject_TypeCheck(e, (PyTypeObject *)PyExc_Exception) ||
                                  PyObject_TypeCheck(e, (PyTypeObject *)st->StorageKeyError))) {
                    err = e;
                    goto fail;
                }
                counters(g, g->idx)->errors++;
                counters(g, g->idx)->misses++;
                g->missed |= 1u << g->idx;
                cm_log_warning(st, "cacheme: get from storage '%U' failed: %R",
                               cfg->caches[g->idx].name, e);
                Py_XDECREF(e);
                g->idx++;
            }
            continue;
        case STEP_LEASE:
            if (!cm_lease_start(g))
                g->step = STEP_LOAD;
            continue;
        case STEP_LOAD:
            if (g->bypass) {
                /* the remote caches missed: the refresh's flight it passed
                 * is what to wait for now (call.c, CALL_LEADS) */
                g->bypass = 2;
                *out = NULL;
                return PYGEN_NEXT;
            }
            g->load_start = cm_now_ns();
            if (start_sub(g, call_loader(g)) < 0) {
                metrics_load_done(g, 0);
                err = cm_exc_take();
                if (load_failed(g, err)) {
                    Py_CLEAR(err);
                    continue;
                }
                goto fail;
            }
            continue;
        case STEP_RESOLVE:
            /* a refresh replaces what the caches hold: no doorkeeper */
            if ((g->fl != NULL && g->fl->stale) || (!g->refresh && !doorkeeper_admits(g)))
                g->missed = 0;
            /* read past a refresh: what it read may be older than the
             * refresh's fills, or invalidated since */
            if (g->past != 0 && !cm_flight_past_fills(st, g->key, g->hash, g->past))
                g->missed = 0;
            if (g->fl == NULL || !g->fl->unsure) {
                CmStoreAge age = {.written = g->fill_written,
                                  .expire = g->fill_expire ? g->fill_expire : INT64_MAX,
                                  .load_ns = g->load_ns};
                cm_fill_locals(st, cfg, g->key, g->hash, g->value, g->missed, &age);
            }
            if (g->fl != NULL)
                cm_flight_settle(st, g->fl, g->value, NULL);
            g->step = STEP_FILL;
            g->idx = 0;
            continue;
        case STEP_FILL:
            while (g->idx < cfg->ncaches && g->idx < 32 &&
                   (cfg->caches[g->idx].kind == CM_CACHE_LOCAL || !(g->missed & (1u << g->idx))))
                g->idx++;
            if (g->idx >= cfg->ncaches || g->idx >= 32) {
                g->step = STEP_END;
                continue;
            }
            if (start_call(g, &cfg->caches[g->idx], 1) < 0) {
                PyObject *e = cm_exc_take();
                counters(g, g->idx)->errors++;
                counters(g, g->idx)->set_errors++;
                cm_log_warning(st, "cacheme: fill of storage '%U' failed: %R",
                               cfg->caches[g->idx].name, e);
                Py_XDECREF(e);
                g->idx++;
            }
            continue;
        case STEP_END:
            if (g->fl != NULL)
                cm_flight_remove(st, g->fl);
            cm_lease_end(g);
            if (g->refresh_due)
                start_due_refresh(g);
            *out = Py_NewRef(g->value);
            return PYGEN_RETURN;
        }
    }
fail:
    if (g->fl != NULL)
        cm_flight_settle(st, g->fl, NULL, err);
    g->step = STEP_END;
    cm_lease_end(g);
    cm_raise_exc(err);
    Py_DECREF(err);
    *out = NULL;
    return PYGEN_ERROR;
}

/* Move the leader's driving state into a new call run by a Task; the Task's
 * first step yields `pending` (stolen), what the flight is waiting on. */
static int move_to_task(CmCallObject *g, PyObject *pending)
{
    CmState *st = g->st;
    CmFlight *fl = g->fl;
    CmCallObject *d = (CmCallObject *)cm_call_alloc(st);
    PyObject *loop = NULL, *task = NULL;
    if (d == NULL) {
        Py_XDECREF(pending);
        return -1;
    }
    cm_call_unheld((PyObject *)g);
    d->role = CALL_DRIVES;
    d->step = g->step;
    d->idx = g->idx;
    d->node = g->node;
    g->node = NULL;
    d->cfg = g->cfg;
    g->cfg = NULL;
    d->key = Py_NewRef(g->key);
    d->hash = g->hash;
    d->load_fn = g->load_fn;
    g->load_fn = NULL;
    d->memo_fn = g->memo_fn;
    g->memo_fn = NULL;
    d->memo_argv = g->memo_argv;
    g->memo_argv = NULL;
    d->memo_nargs = g->memo_nargs;
    d->memo_kwnames = g->memo_kwnames;
    g->memo_kwnames = NULL;
    d->missed = g->missed;
    d->sub = g->sub;
    g->sub = NULL;
    d->remote_state = g->remote_state;
    d->remote_res = g->remote_res;
    d->remote_err = g->remote_err;
    g->remote_state = REMOTE_IDLE;
    g->remote_res = g->remote_err = NULL;
    d->remote = g->remote;
    if (g->remote_op != NULL) {
        d->remote_op = g->remote_op;
        g->remote_op = NULL;
        cm_call_held((PyObject *)d);
        Py_XDECREF(d->remote->handoff(d->remote_op, (PyObject *)d)); /* not our last */
    }
    d->lease = g->lease;
    d->lease_ops = g->lease_ops;
    g->lease = NULL;
    d->lease_aw = g->lease_aw;
    g->lease_aw = NULL;
    d->load_start = g->load_start;
    d->load_ns = g->load_ns;
    d->remote_updated_ns = g->remote_updated_ns;
    d->remote_load_ns = g->remote_load_ns;
    d->fill_written = g->fill_written;
    d->fill_expire = g->fill_expire;
    d->refresh_due = g->refresh_due;
    d->stale_value = g->stale_value;
    g->stale_value = NULL;
    d->value = g->value;
    g->value = NULL;
    d->fl = fl;
    fl->refs++;
    d->pending = pending; /* steals; NULL: resume the sub-awaitable with None */
    d->has_pending = pending != NULL;
    g->role = CALL_DONE;
    Py_CLEAR(g->lead_px);

    /* the flight's own loop, not the running one: a Task is cancelled also
     * while its loop is stopped (asyncio.run() at teardown does it) */
    loop = fl->loop != NULL  ? Py_NewRef(fl->loop)
           : g->loop != NULL ? Py_NewRef(g->loop)
                             : cm_loop_running(st);
    if (loop != NULL) {
        Py_XSETREF(d->loop, Py_NewRef(loop));
        d->loop_tstate = fl->loop != NULL ? fl->tstate : PyThreadState_Get();
        task = cm_loop_create_task(st, loop, (PyObject *)d);
        Py_DECREF(loop);
    }
    if (task == NULL) {
        /* nobody will drive it: fail the flight, close its awaitable */
        PyObject *e = cm_exc_take();
        cm_flight_settle(st, fl, NULL, e);
        Py_DECREF(d); /* its finalizer closes the sub-awaitable */
        cm_raise_exc(e);
        Py_DECREF(e);
        return -1;
    }
    Py_XSETREF(fl->task, task);
    Py_DECREF(d);
    return 0;
}

/* With others waiting on an unsettled flight, move it to a Task of its own
 * so that only the leader goes: 1 moved, 0 not needed, -1 error. `pending`
 * (borrowed, may be NULL) is what the flight waits on now. */
int cm_leader_leaves(CmCallObject *g, PyObject *pending)
{
    CmFlight *fl = g->fl;
    if (g->role != CALL_LEADS || fl == NULL || fl->done || fl->nwaiters == 0)
        return 0;
    if (move_to_task(g, Py_XNewRef(pending)) < 0)
        return -1;
    return 1;
}

/* The leader g is cancelled while its flight waits on `pending` (borrowed,
 * may be NULL). With others waiting the flight moves to a Task of its own:
 * 1. Else (0) it may no longer be joined, or a newcomer would share the
 * cancellation. */
int cm_leader_cancelled(CmCallObject *g, PyObject *pending)
{
    int moved = cm_leader_leaves(g, pending);
    if (moved < 0) /* the flight failed its waiters; cancel the leader anyway */
        PyErr_WriteUnraisable((PyObject *)g);
    if (moved == 0 && g->fl != NULL && !g->fl->done && g->role == CALL_LEADS) {
        g->fl->abandoned = 1;
        cm_flight_unlink(g->st, g->fl);
    }
    return moved;
}

/* The leader's flight yielded `yielded` (stolen): register the flight so
 * others can join, and give the Task a proxy of what it waits on. */
PySendResult cm_leader_suspend(CmCallObject *g, PyObject *yielded, PyObject **out)
{
    CmState *st = g->st;
    PyObject *blocking = NULL, *e;
    if (g->fl == NULL) {
        /* the flight becomes visible only now: until its first suspension
         * nobody else could have run to look for it */
        if (g->loop == NULL) {
            if ((g->loop = cm_loop_running(st)) == NULL)
                goto fail;
            g->loop_tstate = PyThreadState_Get();
        }
        if (g->bypass) /* reading past a refresh's flight: none of its own */
            goto registered;
        if ((g->fl = cm_flight_start(st, g->key, g->hash)) == NULL)
            goto fail;
        g->fl->loop = Py_NewRef(g->loop);
        g->fl->tstate = PyThreadState_Get();
        if (g->step >= STEP_FILL)
            cm_flight_settle(st, g->fl, g->value, NULL);
    }
registered:
    if (yielded == (PyObject *)g) { /* its own remote op: it is the future */
        *out = yielded;
        return PYGEN_NEXT;
    }
    if (yielded != Py_None) {
        blocking = PyObject_GetAttr(yielded, st->s__asyncio_future_blocking);
        if (blocking == NULL)
            PyErr_Clear();
    }
    if (blocking == NULL || blocking != Py_True) {
        /* a bare yield (sleep(0)) or not a future: nothing to stand in for */
        Py_XDECREF(blocking);
        *out = yielded;
        return PYGEN_NEXT;
    }
    Py_DECREF(blocking);
    PyObject *p = cm_proxy_new(g, yielded);
    if (p == NULL)
        goto fail;
    Py_DECREF(yielded);
    Py_XSETREF(g->lead_px, Py_NewRef(p));
    *out = p;
    return PYGEN_NEXT;
fail:
    e = cm_exc_take();
    Py_XDECREF(yielded);
    cm_call_abort(g);
    cm_raise_exc(e);
    Py_DECREF(e);
    *out = NULL;
    return PYGEN_ERROR;
}

uint64_t cm_local_puts(CmNodeConfigObject *cfg)
{
    uint64_t n = 0;
    for (Py_ssize_t i = 0; i < cfg->ncaches; i++) {
        if (cfg->caches[i].kind == CM_CACHE_LOCAL)
            n += cm_store_puts((CmStoreObject *)cfg->caches[i].storage);
    }
    return n;
}

/* A get awaited later than it was made (e.g. queued): a local store may have
 * been filled since get() looked. A new reference on a hit, else NULL. */
PyObject *cm_call_recheck_locals(CmCallObject *g)
{
    CmNodeConfigObject *cfg = g->cfg;
    if (cm_local_puts(cfg) == g->local_puts)
        return NULL;
    for (Py_ssize_t i = 0; i < cfg->ncaches && i < 32; i++) {
        CmCacheRef *r = &cfg->caches[i];
        if (r->kind != CM_CACHE_LOCAL || !(g->missed & (1u << i)))
            continue;
        CmStoreAge age;
        PyObject *v = cm_store_lookup_aged((CmStoreObject *)r->storage, g->key, g->hash, 0, &age);
        if (v == NULL)
            continue;
        CmStorageCounters *c = counters(g, i);
        c->hits++;
        c->misses--; /* get() counted this one as a miss */
        cfg->metrics->hit_count++;
        cm_fill_locals(g->st, cfg, g->key, g->hash, v, g->missed & ((1u << i) - 1), &age);
        return v;
    }
    return NULL;
}
