/* The FlightProxy: the leader's stand-in future.
 *
 * While the leader drives its flight inline (the way an `await` chain does),
 * what its Task awaits is not the future X its load or storage yielded but
 * this proxy of it. X completing runs the proxy, which runs the Task's
 * wakeup at once: no extra loop iteration and no Task of our own. The proxy
 * also intercepts the Task's cancel(): with other callers waiting, the
 * flight moves to a Task of its own (move_to_task) and only the leader is
 * cancelled; with nobody else, X itself is cancelled, i.e. the load.
 *
 * Like a Future, the proxy never runs a callback from inside a method call
 * (cancel, add_done_callback): those are scheduled on the loop. Only X's
 * own done-callback, which the loop runs, calls the wakeup directly; or,
 * when X is the future a remote storage call just returned, the storage's op
 * itself: the proxy is then not a done-callback of X but the op's waiter
 * (`direct`), woken with the other waiters of its batch of replies by one
 * loop callback (cm_remote_attach_waiter, cm_remote_wake_waiter). Waiters
 * need no proxy: each is its own future (waiter.c). */
#include "flight/call.h"

#include "loop/loop.h"
#include "loop/wake.h"

#include <structmember.h>

/* state: what the proxy's wakeup has done */
enum {
    PROXY_PENDING,  /* X is out: the wakeup waits for it */
    PROXY_FIRED,    /* X is done and the wakeup ran: the Task reads X */
    PROXY_DETACHED, /* the leader was cancelled and left the flight to others */
};

typedef struct {
    PyObject_HEAD
    CmCallObject *owner; /* the leader */
    PyObject *target;    /* X */
    PyObject *loop;
    PyObject *cb, *ctx; /* the Task's wakeup and its context */
    int blocking;       /* _asyncio_future_blocking */
    int state;          /* PROXY_* */
    int direct;         /* woken by X's remote op (cm_remote_attach_waiter), not by a
                         * done-callback of X */
} CmProxyObject;

/* The Task sees X's outcome as the proxy's (proxy_result): it may read X. */
static void proxy_run_cb(CmProxyObject *p)
{
    PyObject *arg = (PyObject *)p;
    if (p->state != PROXY_DETACHED && p->target != NULL && p->owner != NULL &&
        Py_IS_TYPE(p->target, (PyTypeObject *)p->owner->st->FutureType) &&
        cm_is_task_wakeup(p->owner->st, p->cb))
        arg = p->target;
    cm_wakeup_run(&p->cb, &p->ctx, arg);
}

static int proxy_schedule_cb(CmProxyObject *p)
{
    return cm_wakeup_schedule(p->owner->st, p->loop, &p->cb, &p->ctx, (PyObject *)p);
}

static void proxy_fire(PyObject *self)
{
    CmProxyObject *p = (CmProxyObject *)self;
    if (p->state == PROXY_PENDING) {
        p->state = PROXY_FIRED;
        proxy_run_cb(p);
    }
}

void cm_remote_wake_waiter(CmState *st, PyObject *proxy, PyObject *fut, PyObject *loop)
{
    /* else what a done-callback would have been: proxy(fut) on its loop */
    PyObject *ctx = NULL; // borrowed
    if (cm_wake_batch_add(st, proxy, loop) < 0 &&
        ((ctx = cm_loop_context(st)) == NULL ||
         cm_loop_call_soon_arg(st, loop, proxy, fut, ctx) < 0)) {
        PyErr_Clear();
        proxy_fire(proxy); /* the loop is gone: wake it now rather than never */
    }
    Py_DECREF(proxy);
    Py_DECREF(loop);
}

/* X's done-callback: proxy(X), run by the loop */
static PyObject *proxy_tp_call(PyObject *self, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kw))
{
    proxy_fire(self);
    Py_RETURN_NONE;
}

static PyObject *proxy_add_done_callback(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                         PyObject *kwnames)
{
    CmProxyObject *p = (CmProxyObject *)self;
    PyObject *ctx, *fn = cm_wakeup_add_args(p->owner->st, p->cb, args, nargs, kwnames, &ctx);
    if (fn == NULL)
        return NULL;
    p->cb = Py_NewRef(fn);
    p->ctx = Py_XNewRef(ctx);
    if (p->state != PROXY_PENDING) {
        if (proxy_schedule_cb(p) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (cm_remote_attach_waiter(p->owner->st, p->target, self, p->loop)) {
        p->direct = 1;
        Py_RETURN_NONE;
    }
    /* with the Task's context to enter, proxy(X) needs none of its own */
    int rc = p->ctx != NULL && p->ctx != Py_None
                 ? cm_future_add_done_callback_own_context(p->owner->st, p->target, self)
                 : cm_future_add_done_callback(p->owner->st, p->target, self);
    if (rc < 0) {
        Py_CLEAR(p->cb);
        Py_CLEAR(p->ctx);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *proxy_remove_done_callback(PyObject *self, PyObject *fn)
{
    CmProxyObject *p = (CmProxyObject *)self;
    return cm_wakeup_remove(&p->cb, &p->ctx, fn);
}

static PyObject *proxy_cancel(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    CmProxyObject *p = (CmProxyObject *)self;
    CmCallObject *g = p->owner;
    CmState *st = g->st;
    if (p->state != PROXY_PENDING)
        Py_RETURN_FALSE;
    if (cm_leader_cancelled(g, p->target) != 0) {
        p->state = PROXY_DETACHED;
        if (proxy_schedule_cb(p) < 0) /* the Task sees result() raise CancelledError */
            return NULL;
        Py_RETURN_TRUE;
    }
    /* nobody else: cancel what the load waits on, with the arguments as
     * given (cancel(msg=...) included) */
    PyObject *targs[4] = {p->target};
    Py_ssize_t nall = nargs + (kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0);
    if (nall > 3) {
        PyErr_SetString(PyExc_TypeError, "cancel(msg=None)");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nall; i++)
        targs[1 + i] = args[i];
    PyObject *r = PyObject_VectorcallMethod(st->s_cancel, targs,
                                            (1 + nargs) | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
    /* X has no done-callback of ours to run: wake the Task as it would */
    if (r == Py_True && p->direct && proxy_schedule_cb(p) < 0)
        Py_CLEAR(r);
    return r;
}

static PyObject *proxy_forward(CmProxyObject *p, PyObject *name)
{
    return PyObject_VectorcallMethod(name, &p->target, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static PyObject *proxy_result(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmProxyObject *p = (CmProxyObject *)self;
    if (p->state == PROXY_DETACHED) {
        PyErr_SetNone(p->owner->st->CancelledError);
        return NULL;
    }
    return proxy_forward(p, p->owner->st->s_result);
}

static PyObject *proxy_exception(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmProxyObject *p = (CmProxyObject *)self;
    if (p->state == PROXY_DETACHED) {
        PyErr_SetNone(p->owner->st->CancelledError);
        return NULL;
    }
    return proxy_forward(p, p->owner->st->s_exception);
}

static PyObject *proxy_done(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmProxyObject *p = (CmProxyObject *)self;
    if (p->state != PROXY_PENDING)
        Py_RETURN_TRUE;
    return proxy_forward(p, p->owner->st->s_done);
}

static PyObject *proxy_cancelled(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmProxyObject *p = (CmProxyObject *)self;
    if (p->state == PROXY_DETACHED)
        Py_RETURN_TRUE;
    return proxy_forward(p, p->owner->st->s_cancelled);
}

static PyObject *proxy_get_blocking(PyObject *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(((CmProxyObject *)self)->blocking);
}

/* `await proxy` (a Task never does it; code that receives one may) */
static PyObject *proxy_await(PyObject *self)
{
    return cm_await_iter(((CmProxyObject *)self)->target);
}

static int proxy_traverse(PyObject *self, visitproc visit, void *arg)
{
    CmProxyObject *p = (CmProxyObject *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(p->owner);
    Py_VISIT(p->target);
    Py_VISIT(p->loop);
    Py_VISIT(p->cb);
    Py_VISIT(p->ctx);
    return 0;
}

static int proxy_clear(PyObject *self)
{
    CmProxyObject *p = (CmProxyObject *)self;
    Py_CLEAR(p->owner);
    Py_CLEAR(p->target);
    Py_CLEAR(p->loop);
    Py_CLEAR(p->cb);
    Py_CLEAR(p->ctx);
    return 0;
}

void cm_proxy_free_clear(CmState *st)
{
    while (st->flight.proxy_free != NULL) {
        CmProxyObject *p = st->flight.proxy_free;
        st->flight.proxy_free = p->owner;
        PyObject_GC_Del(p);
    }
    st->flight.proxy_free_len = 0;
}

static void proxy_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    CmProxyObject *p = (CmProxyObject *)self;
    /* the owner (which proxy_clear may free) is what holds the state: held
     * here until the end (cm_state_hold in state.h) */
    CmState *st = p->owner != NULL ? cm_state_hold(p->owner->st) : NULL;
    PyObject_GC_UnTrack(self);
    proxy_clear(self);
    if (st != NULL && st->flight.proxy_free_len < CM_PROXY_FREE_MAX) {
        /* kept for reuse (chained through `owner`): no allocation for the
         * collector to count per load that suspends (see call_dealloc in call.c) */
        p->owner = st->flight.proxy_free;
        st->flight.proxy_free = p;
        st->flight.proxy_free_len++;
    } else {
        tp->tp_free(self);
    }
    Py_DECREF(tp);
    cm_state_release(st);
}

static PyMethodDef proxy_methods[] = {
    {"add_done_callback", (PyCFunction)(void (*)(void))proxy_add_done_callback,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"remove_done_callback", proxy_remove_done_callback, METH_O, NULL},
    {"cancel", (PyCFunction)(void (*)(void))proxy_cancel, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"result", proxy_result, METH_NOARGS, NULL},
    {"exception", proxy_exception, METH_NOARGS, NULL},
    {"done", proxy_done, METH_NOARGS, NULL},
    {"cancelled", proxy_cancelled, METH_NOARGS, NULL},
    {NULL, NULL},
};

/* the loop as `_loop`, not get_loop(): a Task reads it without a bound
 * method made and called per suspension (asyncio.futures._get_loop) */
static PyMemberDef proxy_members[] = {
    {"_loop", T_OBJECT, offsetof(CmProxyObject, loop), READONLY, NULL},
    {NULL},
};

static PyGetSetDef proxy_getset[] = {
    {"_asyncio_future_blocking", proxy_get_blocking, cm_set_blocking, NULL,
     (void *)offsetof(CmProxyObject, blocking)},
    {NULL},
};

static PyType_Slot proxy_slots[] = {
    {Py_tp_call, proxy_tp_call},  {Py_am_await, proxy_await},     {Py_tp_methods, proxy_methods},
    {Py_tp_getset, proxy_getset}, {Py_tp_members, proxy_members}, {Py_tp_traverse, proxy_traverse},
    {Py_tp_clear, proxy_clear},   {Py_tp_dealloc, proxy_dealloc}, {0, NULL},
};

static PyType_Spec proxy_spec = {
    .name = "cacheme._core.FlightProxy",
    .basicsize = sizeof(CmProxyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = proxy_slots,
};

/* A proxy of g for `target` (a new reference), on the running loop. NULL
 * with an exception. */
PyObject *cm_proxy_new(CmCallObject *g, PyObject *target)
{
    CmState *st = g->st;
    PyObject *loop = g->loop != NULL ? Py_NewRef(g->loop) : cm_loop_running(st);
    if (loop == NULL)
        return NULL;
    CmProxyObject *p = st->flight.proxy_free;
    if (p != NULL) { /* see call_dealloc */
        st->flight.proxy_free = p->owner;
        st->flight.proxy_free_len--;
        PyObject_Init((PyObject *)p, st->flight.ProxyType);
    } else if ((p = PyObject_GC_New(CmProxyObject, st->flight.ProxyType)) == NULL) {
        Py_DECREF(loop);
        return NULL;
    }
    p->owner = (CmCallObject *)Py_NewRef(g);
    p->target = Py_NewRef(target);
    p->loop = loop;
    p->cb = p->ctx = NULL;
    p->blocking = 1;
    p->state = PROXY_PENDING;
    p->direct = 0;
    PyObject_GC_Track(p);
    return (PyObject *)p;
}

/* A CancelledError thrown into the leader once the proxy px (or NULL) it
 * awaited has fired, and what that proxy stands in for was cancelled: it is
 * that future's outcome (cancelled by someone else, e.g. Meta.load_timeout),
 * which goes to the load as `await` would take it, not the leader's own
 * cancellation (1). */
int cm_proxy_thrown_by_target(CmState *st, PyObject *px, PyObject *exc)
{
    CmProxyObject *p = (CmProxyObject *)px;
    if (p == NULL || p->state != PROXY_FIRED || p->target == NULL ||
        !cm_is_cancelled_error(st, exc))
        return 0;
    PyObject *c = PyObject_CallMethodNoArgs(p->target, st->s_cancelled);
    if (c == NULL)
        PyErr_Clear();
    int r = c == Py_True;
    Py_XDECREF(c);
    return r;
}

int cm_proxy_init(PyObject *mod, CmState *st)
{
    st->flight.ProxyType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &proxy_spec, NULL);
    if (st->flight.ProxyType == NULL)
        return -1;
    return cm_wake_register_kind(st, st->flight.ProxyType, proxy_fire, -1);
}
