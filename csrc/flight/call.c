/* The GetCall: the awaitable get() returns on a local miss (call.h has the
 * roles). It speaks the coroutine protocol (send, throw, close, am_send) to
 * whoever awaits it, and dispatches by role: a leader or driver runs the
 * flight (leader.c), a waiter waits on one (waiter.c). Calls are kept on a
 * free list for reuse. */
#include "flight/call.h"

#include "base/exc.h"
#include "loop/loop.h"
#include "loop/wake.h"

#include <structmember.h>

/* Exception passed to throw(typ[, val[, tb]]) as one object; new ref. */
static PyObject *throw_args_exc(PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
        return NULL;
    }
    PyObject *typ = args[0];
    if (PyExceptionInstance_Check(typ))
        return Py_NewRef(typ);
    if (PyExceptionClass_Check(typ)) {
        PyObject *val = nargs > 1 ? args[1] : Py_None;
        if (PyExceptionInstance_Check(val))
            return Py_NewRef(val);
        return val == Py_None ? PyObject_CallNoArgs(typ) : PyObject_CallOneArg(typ, val);
    }
    PyErr_SetString(PyExc_TypeError, "exceptions must derive from BaseException");
    return NULL;
}

/* While its flight's list or a remote op of its own holds a call, it cannot
 * be garbage, and neither can what it refers to: it is then kept out of the
 * cyclic collector's lists, which a request waiting for 0.1 s would
 * otherwise make it cross, generation after generation, with everything
 * else alive (at 10k concurrent requests, thousands of them at each young
 * collection). It is tracked again when the holder lets it go. */
void cm_call_held(PyObject *o)
{
    CmCallObject *g = (CmCallObject *)o;
    if (PyObject_GC_IsTracked(o)) {
        PyObject_GC_UnTrack(o);
        g->untracked = 1;
    }
}

/* The Task's wakeup held by a held call is untracked with it: the Task
 * drops its own reference once it has handed it to add_done_callback, so
 * ours is the only one, and nothing the collector could free hangs on it
 * while the call is held (each waiting request would otherwise take one
 * more object through every young collection of its wait). It is tracked
 * again before the call lets it go, or, when the wake batch runs it, after
 * the call if anything but us still holds it (cm_call_fire). */
void cm_call_wakeup_track(CmCallObject *g)
{
    if (g->wakeup_untracked) {
        g->wakeup_untracked = 0;
        if (g->wakeup != NULL && !PyObject_GC_IsTracked(g->wakeup))
            PyObject_GC_Track(g->wakeup);
    }
}

void cm_call_unheld(PyObject *o)
{
    CmCallObject *g = (CmCallObject *)o;
    cm_call_wakeup_track(g);
    if (g->untracked) {
        g->untracked = 0;
        PyObject_GC_Track(o);
    }
}

void cm_call_free_clear(CmState *st)
{
    while (st->flight.call_free != NULL) {
        CmCallObject *g = st->flight.call_free;
        st->flight.call_free = g->free_next;
        PyObject_GC_Del(g);
    }
    st->flight.call_free_len = 0;
}

PyObject *cm_call_alloc(CmState *st)
{
    CmCallObject *g = st->flight.call_free;
    if (g != NULL) {
        st->flight.call_free = g->free_next;
        st->flight.call_free_len--;
        PyObject_Init((PyObject *)g, st->flight.CallType);
    } else if ((g = PyObject_GC_New(CmCallObject, st->flight.CallType)) == NULL) {
        return NULL;
    }
    memset((char *)g + offsetof(CmCallObject, st), 0,
           sizeof(CmCallObject) - offsetof(CmCallObject, st));
    g->st = cm_state_hold(st); /* released by call_dealloc, also when kept for reuse */
    PyObject_GC_Track(g);
    return (PyObject *)g;
}

PyObject *cm_get_begin(CmState *st, CmRequest *req)
{
    CmCallObject *g = (CmCallObject *)cm_call_alloc(st);
    if (g == NULL)
        return NULL;
    g->role = CALL_START;
    g->node = Py_NewRef(req->node);
    g->cfg = (CmNodeConfigObject *)Py_NewRef(req->cfg);
    g->key = Py_NewRef(req->key);
    g->hash = req->hash;
    g->load_fn = Py_XNewRef(req->load_fn);
    g->missed = req->missed;
    g->local_puts = req->local_puts;
    if (req->memo_fn != NULL) {
        Py_ssize_t total =
            req->memo_nargs + (req->memo_kwnames ? PyTuple_GET_SIZE(req->memo_kwnames) : 0);
        PyObject *argv = PyTuple_New(total);
        if (argv == NULL) {
            Py_DECREF(g);
            return NULL;
        }
        for (Py_ssize_t i = 0; i < total; i++)
            PyTuple_SET_ITEM(argv, i, Py_NewRef(req->memo_args[i]));
        g->memo_fn = Py_NewRef(req->memo_fn);
        g->memo_argv = argv;
        g->memo_nargs = req->memo_nargs;
        g->memo_kwnames = Py_XNewRef(req->memo_kwnames);
    }
    return (PyObject *)g;
}

static PySendResult call_step(CmCallObject *g, PyObject *arg, PyObject *exc, PyObject **out)
{
    CmState *st = g->st;
    PySendResult r;
    switch (g->role) {
    case CALL_START: {
        PyObject *v = exc == NULL ? cm_call_recheck_locals(g) : NULL;
        if (v != NULL) {
            g->role = CALL_DONE;
            *out = v;
            return PYGEN_RETURN;
        }
        CmFlight *fl = cm_flight_joinable(st, cm_flight_find(st, g->key, g->hash));
        if (cm_flight_read_past(fl, g->cfg)) {
            g->past = fl->serial;
            fl = NULL;
            g->bypass = 1;
        }
        if (fl != NULL) {
            g->cfg->metrics->hit_count++;
            if (fl->done) {
                g->role = CALL_DONE;
                *out = Py_NewRef(fl->value);
                return PYGEN_RETURN;
            }
            if (cm_waiter_join(g, fl) < 0) {
                g->role = CALL_DONE;
                *out = NULL;
                return PYGEN_ERROR;
            }
            return call_step(g, arg, exc, out);
        }
        if (exc != NULL) {
            g->role = CALL_DONE;
            cm_raise_exc(exc);
            *out = NULL;
            return PYGEN_ERROR;
        }
        /* the flight is registered at its first suspension (handoff) */
        g->cfg->metrics->miss_count++;
        g->role = CALL_LEADS;
        g->step = STEP_REMOTE_GET;
        g->idx = 0;
        arg = Py_None;
    }
        /* fall through */
    case CALL_LEADS: {
        PyObject *px = g->lead_px;
        g->lead_px = NULL;
        if (exc != NULL && !PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_Exception) &&
            !cm_proxy_thrown_by_target(st, px, exc)) {
            /* cancelled or closed while not awaiting a proxy (after a bare
             * yield): the others keep the flight */
            int moved = cm_leader_leaves(g, NULL);
            if (moved != 0) {
                if (moved < 0)
                    PyErr_WriteUnraisable(g->key);
                g->role = CALL_DONE;
                cm_raise_exc(exc);
                Py_XDECREF(px);
                *out = NULL;
                return PYGEN_ERROR;
            }
        }
        Py_XDECREF(px);
        r = cm_leader_drive(g, arg, exc, out);
        if (r == PYGEN_NEXT && g->bypass == 2) {
            /* the remote caches missed while a refresh runs: wait for it */
            g->bypass = 0;
            g->past = 0;
            CmFlight *fl = cm_flight_joinable(st, cm_flight_find(st, g->key, g->hash));
            if (fl != NULL && !fl->done) {
                if (cm_waiter_join(g, fl) < 0) {
                    g->role = CALL_DONE;
                    *out = NULL;
                    return PYGEN_ERROR;
                }
                return call_step(g, Py_None, NULL, out);
            }
            if (fl != NULL && fl->value != NULL) {
                g->role = CALL_DONE;
                *out = Py_NewRef(fl->value);
                return PYGEN_RETURN;
            }
            r = cm_leader_drive(g, Py_None, NULL, out); /* gone or failed: load */
        }
        if (r == PYGEN_NEXT)
            return cm_leader_suspend(g, *out, out);
        g->role = CALL_DONE;
        return r;
    }
    case CALL_DRIVES:
        r = cm_leader_drive(g, arg, exc, out);
        if (r != PYGEN_NEXT) /* the flight's Task is ending: break the cycle */
            Py_CLEAR(g->fl->task);
        if (r == PYGEN_ERROR) {
            g->role = CALL_DONE;
            /* the waiters have the failure; the Task need not report it,
             * except a cancellation, which it must see to end cancelled */
            PyObject *e = cm_exc_take();
            if (e != NULL && cm_is_cancelled_error(st, e)) {
                cm_raise_exc(e);
                Py_DECREF(e);
                return PYGEN_ERROR;
            }
            Py_XDECREF(e);
            *out = Py_NewRef(Py_None);
            return PYGEN_RETURN;
        }
        if (r == PYGEN_RETURN)
            g->role = CALL_DONE;
        return r;
    case CALL_WAITS:
        return cm_waiter_step(g, exc, out);
    default:
        if (exc != NULL)
            cm_raise_exc(exc);
        else
            PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited cacheme get()");
        *out = NULL;
        return PYGEN_ERROR;
    }
}

static PySendResult call_am_send(PyObject *self, PyObject *arg, PyObject **out)
{
    return call_step((CmCallObject *)self, arg, NULL, out);
}

static PyObject *call_iternext(PyObject *self)
{
    PyObject *res = NULL;
    PySendResult r = call_am_send(self, Py_None, &res);
    return cm_send_as_method(r, res);
}

static PyObject *call_send(PyObject *self, PyObject *arg)
{
    PyObject *res = NULL;
    PySendResult r = call_am_send(self, arg, &res);
    return cm_send_as_method(r, res);
}

static PyObject *call_throw(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *exc = throw_args_exc(args, nargs);
    if (exc == NULL)
        return NULL;
    PyObject *res;
    PySendResult r = call_step((CmCallObject *)self, NULL, exc, &res);
    Py_DECREF(exc);
    return cm_send_as_method(r, res);
}

/* Stop whatever this object was doing; safe to call more than once. */
void cm_call_abort(CmCallObject *g)
{
    CmState *st = g->st;
    switch (g->role) {
    case CALL_WAITS:
        cm_waiter_leave(g);
        break;
    case CALL_LEADS:
    case CALL_DRIVES:
        cm_call_remote_detach(g);
        if (g->sub != NULL) {
            PyObject *r = PyObject_CallMethodNoArgs(g->sub, st->s_close);
            if (r == NULL)
                PyErr_WriteUnraisable(g->sub);
            Py_XDECREF(r);
            Py_CLEAR(g->sub);
        }
        if (g->fl != NULL && !g->fl->done) {
            PyObject *e = PyObject_CallFunction(PyExc_RuntimeError, "s",
                                                "cacheme: the load of this key was abandoned");
            if (e != NULL) {
                cm_flight_settle(st, g->fl, NULL, e);
                Py_DECREF(e);
            } else {
                PyErr_WriteUnraisable(g->key);
            }
        }
        if (g->fl != NULL) {
            if (g->role == CALL_DRIVES)
                Py_CLEAR(g->fl->task);
            cm_flight_remove(st, g->fl);
        }
        cm_lease_end(g);
        g->role = CALL_DONE;
        break;
    default:
        break;
    }
}

static PyObject *call_close(PyObject *self, PyObject *Py_UNUSED(x))
{
    cm_call_abort((CmCallObject *)self);
    Py_RETURN_NONE;
}

static PyObject *call_await(PyObject *self) { return Py_NewRef(self); }

static void call_finalize(PyObject *self)
{
    CmCallObject *g = (CmCallObject *)self;
    if (g->role == CALL_DONE || g->role == CALL_START)
        return;
    PyObject *typ, *val, *tb;
    PyErr_Fetch(&typ, &val, &tb);
    cm_call_abort(g);
    PyErr_Restore(typ, val, tb);
}

static int call_traverse(PyObject *self, visitproc visit, void *arg)
{
    CmCallObject *g = (CmCallObject *)self;
    Py_VISIT(Py_TYPE(self));
    CM_STATE_VISIT(g->st);
    Py_VISIT(g->node);
    Py_VISIT(g->cfg);
    Py_VISIT(g->load_fn);
    Py_VISIT(g->memo_fn);
    Py_VISIT(g->memo_argv);
    Py_VISIT(g->sub);
    Py_VISIT(g->pending);
    Py_VISIT(g->lead_px);
    Py_VISIT(g->value);
    Py_VISIT(g->stale_value);
    Py_VISIT(g->loop);
    Py_VISIT(g->wakeup);
    Py_VISIT(g->wakeup_ctx);
    Py_VISIT(g->cancel_msg);
    Py_VISIT(g->remote_res);
    Py_VISIT(g->remote_err);
    Py_VISIT(g->lease);
    Py_VISIT(g->lease_aw);
    return 0;
}

static int call_clear(PyObject *self)
{
    CmCallObject *g = (CmCallObject *)self;
    Py_CLEAR(g->node);
    Py_CLEAR(g->cfg);
    Py_CLEAR(g->key);
    Py_CLEAR(g->load_fn);
    Py_CLEAR(g->memo_fn);
    Py_CLEAR(g->memo_argv);
    Py_CLEAR(g->memo_kwnames);
    Py_CLEAR(g->sub);
    Py_CLEAR(g->pending);
    Py_CLEAR(g->lead_px);
    Py_CLEAR(g->value);
    Py_CLEAR(g->stale_value);
    Py_CLEAR(g->loop);
    cm_call_wakeup_track(g);
    Py_CLEAR(g->wakeup);
    Py_CLEAR(g->wakeup_ctx);
    Py_CLEAR(g->cancel_msg);
    Py_CLEAR(g->remote_res);
    Py_CLEAR(g->remote_err);
    Py_CLEAR(g->lease);
    Py_CLEAR(g->lease_aw);
    return 0;
}

static void call_dealloc(PyObject *self)
{
    CmCallObject *g = (CmCallObject *)self;
    PyTypeObject *tp = Py_TYPE(self);
    if (g->role != CALL_DONE && g->role != CALL_START &&
        PyObject_CallFinalizerFromDealloc(self) < 0)
        return; /* resurrected */
    PyObject_GC_UnTrack(self);
    call_clear(self);
    if (g->fl != NULL) {
        cm_flight_release(g->st, g->fl);
        g->fl = NULL;
    }
    /* kept for reuse, unless finalized (the flag would stay with it) */
    CmState *st = g->st;
    if (st->flight.call_free_len < CM_CALL_FREE_MAX && !PyObject_GC_IsFinalized(self)) {
        g->free_next = st->flight.call_free;
        st->flight.call_free = g;
        st->flight.call_free_len++;
    } else {
        tp->tp_free(self);
    }
    Py_DECREF(tp);
    cm_state_release(st);
}

static PyMethodDef call_methods[] = {
    {"send", call_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))call_throw, METH_FASTCALL, NULL},
    {"close", call_close, METH_NOARGS, NULL},
    /* the future protocol of a waiting call (waiter.c) */
    {"add_done_callback", (PyCFunction)(void (*)(void))cm_call_add_done_callback,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"remove_done_callback", cm_call_remove_done_callback, METH_O, NULL},
    {"cancel", (PyCFunction)(void (*)(void))cm_call_cancel, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"result", cm_call_result, METH_NOARGS, NULL},
    {"exception", cm_call_exception, METH_NOARGS, NULL},
    {"done", cm_call_done, METH_NOARGS, NULL},
    {"cancelled", cm_call_cancelled, METH_NOARGS, NULL},
    {NULL, NULL},
};

static PyMemberDef call_members[] = {
    {"_loop", T_OBJECT, offsetof(CmCallObject, loop), READONLY, NULL},
    {NULL},
};

static PyGetSetDef call_getset[] = {
    {"_asyncio_future_blocking", cm_call_get_blocking, cm_set_blocking, NULL,
     (void *)offsetof(CmCallObject, blocking)},
    {NULL},
};

static PyType_Slot call_slots[] = {
    {Py_am_await, call_await},       {Py_am_send, call_am_send},
    {Py_tp_iter, call_await},        {Py_tp_iternext, call_iternext},
    {Py_tp_methods, call_methods},   {Py_tp_getset, call_getset},
    {Py_tp_members, call_members},   {Py_tp_finalize, call_finalize},
    {Py_tp_traverse, call_traverse}, {Py_tp_clear, call_clear},
    {Py_tp_dealloc, call_dealloc},   {0, NULL},
};

static PyType_Spec call_spec = {
    .name = "cacheme._core.GetCall",
    .basicsize = sizeof(CmCallObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = call_slots,
};

int cm_call_init(PyObject *mod, CmState *st)
{
    st->flight.CallType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &call_spec, NULL);
    if (st->flight.CallType == NULL)
        return -1;
    return cm_wake_register_kind(st, st->flight.CallType, cm_call_fire_batched,
                                 offsetof(CmCallObject, wakeup));
}
