/* A call that waits: on another call's flight (role WAITS), or, for a
 * leader or driver, on a remote op it made with no future (remote.c).
 *
 * Either way the call is what its Task awaits: it yields itself and
 * answers the calls asyncio's Task makes of a future-like object
 * (_asyncio_future_blocking, _loop, add_done_callback, result, cancel).
 * The flight, or the op, marks it settled and wakes its Task in a batch
 * with the others woken in the same loop callback (loop/wake.c), so
 * waiting costs no Future, no iterator of one and no proxy. result() of a
 * waiter is the flight's outcome; of a remote op, None (the call reads the
 * outcome itself when resumed). Cancelling a waiter cancels this caller
 * only; a leader hands the flight to a Task of its own if others wait (as
 * its proxy does). Before it is awaited _asyncio_future_blocking is None:
 * asyncio.isfuture() says no, and ensure_future() or gather() wrap it in a
 * Task like any other awaitable. */
#include "flight/call.h"

#include "loop/loop.h"
#include "loop/wake.h"

/* Become a waiter of fl: in its list, on the running loop. */
int cm_waiter_join(CmCallObject *g, CmFlight *fl)
{
    CmState *st = g->st;
    /* the running loop: the leader's, if it runs in this thread (its flight
     * is out, so its loop runs; asking asyncio costs a getpid() call) */
    PyObject *loop = fl->loop != NULL && fl->tstate == (void *)PyThreadState_Get()
                         ? Py_NewRef(fl->loop)
                         : cm_loop_running(st);
    if (loop == NULL)
        return -1;
    if (cm_flight_add_waiter(fl, (PyObject *)g) < 0) {
        Py_DECREF(loop);
        return -1;
    }
    cm_call_held((PyObject *)g);
    Py_XSETREF(g->loop, loop);
    g->loop_tstate = PyThreadState_Get();
    if (g->fl != fl) {
        fl->refs++;
        g->fl = fl;
    }
    g->role = CALL_WAITS;
    g->fut_state = FUT_JOINED;
    /* a waiter needs only its flight's outcome: the node and the loader
     * (what a leader would load with) go now, young, rather than live as
     * long as the wait and cross the collector's generations with it */
    Py_CLEAR(g->node);
    Py_CLEAR(g->load_fn);
    Py_CLEAR(g->memo_fn);
    Py_CLEAR(g->memo_argv);
    Py_CLEAR(g->memo_kwnames);
    return 0;
}

/* Cancel the Task driving fl: on its loop's thread, as Task.cancel() is not
 * thread-safe (a waiter on another loop may be the last to leave). */
static int flight_cancel_task(CmState *st, CmFlight *fl)
{
    if (fl->loop == NULL || fl->tstate == (void *)PyThreadState_Get())
        return cm_future_cancel(st, fl->task);
    PyObject *cancel = PyObject_GetAttr(fl->task, st->s_cancel);
    if (cancel == NULL)
        return -1;
    PyObject *args[2] = {fl->loop, cancel};
    PyObject *r = PyObject_VectorcallMethod(st->s_call_soon_threadsafe, args,
                                            2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(cancel);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* This waiter goes (cancelled, closed, dropped): if nobody else waits, the
 * flight is abandoned (removed, its Task cancelled). */
void cm_waiter_leave(CmCallObject *g)
{
    CmState *st = g->st;
    CmFlight *fl = g->fl;
    cm_call_wakeup_track(g);
    Py_CLEAR(g->wakeup);
    Py_CLEAR(g->wakeup_ctx);
    if (g->fut_state == FUT_JOINED || g->fut_state == FUT_PENDING)
        g->fut_state = FUT_CANCELLED;
    if (fl != NULL && !fl->done) {
        cm_flight_drop_waiter(fl, (PyObject *)g);
        /* with no Task, an inline leader still drives it and waits */
        if (fl->nwaiters == 0 && !fl->abandoned && !fl->background && fl->task != NULL) {
            fl->abandoned = 1;
            cm_flight_unlink(st, fl);
            if (flight_cancel_task(st, fl) < 0)
                PyErr_WriteUnraisable(fl->task);
        }
    }
    g->role = CALL_DONE;
}

/* ---- the call as its own future ----------------------------------------- */

PyObject *cm_call_cancelled_error(CmCallObject *g)
{
    if (g->cancel_msg == NULL || g->cancel_msg == Py_None)
        PyErr_SetNone(g->st->CancelledError);
    else
        PyErr_SetObject(g->st->CancelledError, g->cancel_msg);
    return NULL;
}

/* A Task resumed on success needs no more than a done Future: its result()
 * would be None (a remote op) or only checked for an exception. */
void cm_call_fire(CmCallObject *g)
{
    PyObject *arg = (PyObject *)g;
    if (g->fut_state == FUT_SETTLED && (g->role != CALL_WAITS || g->fl->exc == NULL) &&
        cm_is_task_wakeup(g->st, g->wakeup)) {
        PyObject *f = cm_done_future(g->st, g->loop);
        if (f != NULL)
            arg = f;
    }
    /* an untracked wakeup (cm_call_wakeup_track) is tracked again only if something
     * else still holds it after the call; else it just goes */
    PyObject *cb = g->wakeup_untracked ? Py_XNewRef(g->wakeup) : NULL;
    g->wakeup_untracked = 0;
    cm_wakeup_run(&g->wakeup, &g->wakeup_ctx, arg);
    if (cb != NULL) {
        if (Py_REFCNT(cb) > 1 && !PyObject_GC_IsTracked(cb))
            PyObject_GC_Track(cb);
        Py_DECREF(cb);
    }
}

/* Wake g's Task (g stolen) from the next batch; else, as a Future would,
 * cb(g) on the loop in the Task's context. */
void cm_call_wake(CmState *st, CmCallObject *g)
{
    if (g->loop_tstate != NULL && g->loop_tstate != (void *)PyThreadState_Get()) {
        /* a waiter on the loop of another thread: woken through
         * call_soon_threadsafe, in its Task's context */
        cm_call_unheld((PyObject *)g);
        if (g->wakeup != NULL) {
            if (cm_loop_call_soon_threadsafe_arg(st, g->loop, g->wakeup, (PyObject *)g,
                                                 g->wakeup_ctx) < 0)
                PyErr_WriteUnraisable((PyObject *)g); /* its loop is closed */
            Py_CLEAR(g->wakeup);
            Py_CLEAR(g->wakeup_ctx);
        }
        Py_DECREF(g);
        return;
    }
    /* a call its flight or op held out of the collector stays out while the
     * batch holds it (cm_call_fire_batched) */
    if (cm_wake_batch_add(st, (PyObject *)g, g->loop) < 0) {
        cm_call_unheld((PyObject *)g);
        if (cm_wakeup_schedule(st, g->loop, &g->wakeup, &g->wakeup_ctx, (PyObject *)g) < 0) {
            PyErr_Clear();
            cm_call_fire(g); /* the loop is gone: wake it now rather than never */
        }
    }
    Py_DECREF(g);
}

/* Woken from a wake batch (loop/wake.c), which holds o until this returns. */
void cm_call_fire_batched(PyObject *o)
{
    CmCallObject *g = (CmCallObject *)o;
    cm_call_fire(g);
    /* held out of the collector until now: back in if anything but the
     * batch still holds it, or its Task may come back to it; a call that is
     * done and only the batch's just goes */
    if (g->untracked && (Py_REFCNT(o) > 1 || g->role != CALL_DONE))
        cm_call_unheld(o);
}

/* The flight's outcome is in (g stolen, taken out of its list). */
void cm_waiter_settled(CmState *st, PyObject *o, int cancelled)
{
    CmCallObject *g = (CmCallObject *)o;
    if (g->fut_state == FUT_JOINED || g->fut_state == FUT_PENDING) {
        g->fut_state = cancelled ? FUT_CANCELLED : FUT_SETTLED;
        if (g->wakeup != NULL) {
            cm_call_wake(st, g);
            return;
        }
    }
    cm_call_unheld(o);
    Py_DECREF(g);
}

static int waiting(CmCallObject *g)
{
    return g->fut_state == FUT_JOINED || g->fut_state == FUT_PENDING;
}

PyObject *cm_call_add_done_callback(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames)
{
    CmCallObject *g = (CmCallObject *)self;
    PyObject *ctx, *fn = cm_wakeup_add_args(g->st, g->wakeup, args, nargs, kwnames, &ctx);
    if (fn == NULL)
        return NULL;
    if (g->fut_state == FUT_IDLE) {
        PyErr_SetString(PyExc_RuntimeError, "cacheme: this get() is not waiting on a flight");
        return NULL;
    }
    if (!waiting(g)) { /* done: call it soon, as a done Future does */
        if (cm_loop_call_soon_arg(g->st, g->loop, fn, self, ctx) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    g->wakeup = Py_NewRef(fn);
    g->wakeup_ctx = Py_XNewRef(ctx);
    if (g->untracked && cm_is_task_wakeup(g->st, fn) && PyObject_GC_IsTracked(fn)) {
        PyObject_GC_UnTrack(fn);
        g->wakeup_untracked = 1;
    }
    Py_RETURN_NONE;
}

PyObject *cm_call_remove_done_callback(PyObject *self, PyObject *fn)
{
    CmCallObject *g = (CmCallObject *)self;
    cm_call_wakeup_track(g);
    return cm_wakeup_remove(&g->wakeup, &g->wakeup_ctx, fn);
}

/* cancel(msg=None): this caller stops waiting; its Task is woken and sees
 * CancelledError. The flight goes on for the others. */
PyObject *cm_call_cancel(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    CmCallObject *g = (CmCallObject *)self;
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nkw > 1 ||
        (nkw == 1 && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "msg"))) {
        PyErr_SetString(PyExc_TypeError, "cancel(msg=None)");
        return NULL;
    }
    if (!waiting(g))
        Py_RETURN_FALSE;
    if (g->role == CALL_LEADS)
        cm_leader_cancelled(g, NULL);
    /* (a settled flight is waking its list: this one is skipped there) */
    if (g->role == CALL_WAITS && g->fl != NULL && !g->fl->done)
        cm_flight_drop_waiter(g->fl, self); /* the caller has a reference */
    /* a remote op goes on without us; the CancelledError thrown in next
     * (or raised by the next send) ends what the call was doing */
    cm_call_remote_release(g);
    g->fut_state = FUT_CANCELLED;
    Py_XSETREF(g->cancel_msg, nargs + nkw ? Py_NewRef(args[0]) : NULL);
    if (g->wakeup != NULL)
        cm_call_wake(g->st, (CmCallObject *)Py_NewRef(self));
    Py_RETURN_TRUE;
}

PyObject *cm_call_result(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmCallObject *g = (CmCallObject *)self;
    if (g->fut_state == FUT_CANCELLED)
        return cm_call_cancelled_error(g);
    if (g->fut_state != FUT_SETTLED) {
        PyErr_SetString(g->st->InvalidStateError, "Result is not ready.");
        return NULL;
    }
    if (g->role != CALL_WAITS && g->role != CALL_DONE) /* a remote op: read when resumed */
        Py_RETURN_NONE;
    if (g->fl->exc != NULL) {
        cm_flight_raise(g->fl);
        return NULL;
    }
    return Py_NewRef(g->fl->value);
}

PyObject *cm_call_exception(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmCallObject *g = (CmCallObject *)self;
    if (g->fut_state == FUT_CANCELLED)
        return cm_call_cancelled_error(g);
    if (g->fut_state != FUT_SETTLED) {
        PyErr_SetString(g->st->InvalidStateError, "Exception is not set.");
        return NULL;
    }
    if (g->role != CALL_WAITS && g->role != CALL_DONE)
        Py_RETURN_NONE;
    return Py_NewRef(g->fl->exc != NULL ? g->fl->exc : Py_None);
}

PyObject *cm_call_done(PyObject *self, PyObject *Py_UNUSED(x))
{
    int w = ((CmCallObject *)self)->fut_state;
    return PyBool_FromLong(w == FUT_SETTLED || w == FUT_CANCELLED);
}

PyObject *cm_call_cancelled(PyObject *self, PyObject *Py_UNUSED(x))
{
    return PyBool_FromLong(((CmCallObject *)self)->fut_state == FUT_CANCELLED);
}

/* None until it is awaited as a waiter (see above) */
PyObject *cm_call_get_blocking(PyObject *self, void *Py_UNUSED(c))
{
    CmCallObject *g = (CmCallObject *)self;
    if (g->fut_state == FUT_IDLE || g->fut_state == FUT_JOINED)
        Py_RETURN_NONE;
    return PyBool_FromLong(g->blocking);
}

/* Sent to (or thrown into) while waiting. */
PySendResult cm_waiter_step(CmCallObject *g, PyObject *exc, PyObject **out)
{
    *out = NULL;
    if (exc != NULL) {
        cm_waiter_leave(g);
        cm_raise_exc(exc);
        return PYGEN_ERROR;
    }
    switch (g->fut_state) {
    case FUT_JOINED:
        g->fut_state = FUT_PENDING;
        g->blocking = 1;
        *out = Py_NewRef(g);
        return PYGEN_NEXT;
    case FUT_SETTLED:
        g->role = CALL_DONE;
        if (g->fl->exc != NULL) {
            cm_flight_raise(g->fl);
            return PYGEN_ERROR;
        }
        *out = Py_NewRef(g->fl->value);
        return PYGEN_RETURN;
    case FUT_CANCELLED:
        cm_waiter_leave(g);
        cm_call_cancelled_error(g);
        return PYGEN_ERROR;
    default: /* resumed while the flight is still out */
        cm_waiter_leave(g);
        PyErr_SetString(PyExc_RuntimeError, "await wasn't used with future");
        return PYGEN_ERROR;
    }
}
