/* Waking Tasks in batches (see wake.h). */
#include "loop/wake.h"

#include "loop/loop.h"

void cm_wakeup_run(PyObject **cbp, PyObject **ctxp, PyObject *arg)
{
    PyObject *cb = *cbp, *ctx = *ctxp;
    *cbp = *ctxp = NULL;
    if (cb == NULL) {
        Py_XDECREF(ctx);
        return;
    }
    Py_INCREF(arg); /* the call may drop what held it */
    if (ctx != NULL && ctx != Py_None && PyContext_Enter(ctx) < 0) {
        PyErr_WriteUnraisable(cb);
        Py_CLEAR(ctx);
    }
    PyObject *r = PyObject_CallOneArg(cb, arg);
    if (r == NULL)
        PyErr_WriteUnraisable(cb);
    Py_XDECREF(r);
    if (ctx != NULL && ctx != Py_None && PyContext_Exit(ctx) < 0)
        PyErr_WriteUnraisable(cb);
    Py_DECREF(cb);
    Py_XDECREF(ctx);
    Py_DECREF(arg);
}

int cm_wakeup_schedule(CmState *st, PyObject *loop, PyObject **cbp, PyObject **ctxp, PyObject *arg)
{
    if (*cbp == NULL)
        return 0;
    if (cm_loop_call_soon_arg(st, loop, *cbp, arg, *ctxp) < 0)
        return -1;
    Py_CLEAR(*cbp);
    Py_CLEAR(*ctxp);
    return 0;
}

PyObject *cm_wakeup_add_args(CmState *st, PyObject *cb, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames, PyObject **ctx)
{
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs != 1 || nkw > 1 ||
        (nkw == 1 && PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, 0), st->s_context))) {
        PyErr_SetString(PyExc_TypeError, "add_done_callback(fn, *, context=None)");
        return NULL;
    }
    if (cb != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cacheme: a get() is awaited by one task only");
        return NULL;
    }
    *ctx = nkw == 1 ? args[1] : NULL;
    return args[0];
}

PyObject *cm_wakeup_remove(PyObject **cbp, PyObject **ctxp, PyObject *fn)
{
    if (*cbp == NULL || *cbp != fn)
        return PyLong_FromLong(0);
    Py_CLEAR(*cbp);
    Py_CLEAR(*ctxp);
    return PyLong_FromLong(1);
}

int cm_set_blocking(PyObject *self, PyObject *v, void *off)
{
    int b = v ? PyObject_IsTrue(v) : 0;
    if (b < 0)
        return -1;
    *(int *)((char *)self + (size_t)off) = b;
    return 0;
}

PyObject *cm_done_future(CmState *st, PyObject *loop)
{
    CmWakeState *w = &st->wake;
    if (w->done_loop != loop) {
        PyObject *f = cm_loop_create_future(st, loop);
        if (f == NULL || !Py_IS_TYPE(f, (PyTypeObject *)st->FutureType) ||
            cm_future_set_result(st, f, Py_None) < 0) {
            PyErr_Clear();
            Py_XDECREF(f);
            return NULL;
        }
        Py_XSETREF(w->done_future, f);
        Py_XSETREF(w->done_loop, Py_NewRef(loop));
    }
    return w->done_future;
}

/* ---- the wake batch ---------------------------------------------------------- */

/* The kind of o, or -1. */
static inline int kind_of(CmWakeState *w, PyObject *o)
{
    for (int k = 0; k < w->nkinds; k++) {
        if (Py_IS_TYPE(o, w->kinds[k].type))
            return k;
    }
    return -1;
}

/* o's Task wakeup (borrowed), or NULL. */
static inline PyObject *wakeup_of(CmWakeState *w, PyObject *o)
{
    int k = kind_of(w, o);
    if (k < 0 || w->kinds[k].wakeup_offset < 0)
        return NULL;
    return *(PyObject **)((char *)o + w->kinds[k].wakeup_offset);
}

/* A batch wakes thousands of Tasks at high concurrency, each of them (its
 * object, the wakeup, the Task) long out of the cache: the memory of the
 * ones a few places ahead is asked for while this one runs, in the order
 * each is read from the one before, rather than waited for one miss at a
 * time. */
static void prefetch_wake(CmWakeState *w, PyObject *batch, Py_ssize_t n, Py_ssize_t i)
{
    if (i + 6 < n)
        __builtin_prefetch(PyList_GET_ITEM(batch, i + 6));
    if (i + 3 < n) {
        PyObject *cb = wakeup_of(w, PyList_GET_ITEM(batch, i + 3));
        if (cb != NULL)
            __builtin_prefetch(cb);
    }
    if (i + 1 < n) {
        PyObject *cb = wakeup_of(w, PyList_GET_ITEM(batch, i + 1));
        if (cb != NULL && PyCFunction_Check(cb) && PyCFunction_GET_SELF(cb) != NULL) {
            char *t = (char *)PyCFunction_GET_SELF(cb);
            __builtin_prefetch(t);
            __builtin_prefetch(t + 64);
            __builtin_prefetch(t + 128);
        }
    }
}

/* The batch (a list) of one loop, passed to its callback: a batch of
 * another loop (thread) may open while this one waits to run. */
static PyObject *wake_batch_run(PyObject *mod, PyObject *batch)
{
    CmState *st = cm_state_from_module(mod);
    CmWakeState *w = &st->wake;
    if (batch == w->batch) { /* the callback's argument keeps it */
        Py_CLEAR(w->batch);
        Py_CLEAR(w->loop);
    }
    if (PyList_CheckExact(batch)) {
        /* each released as soon as its Task has run: what the step ended
         * is freed before the next one allocates (a batch holds thousands
         * at high concurrency, and frees that come after the collector has
         * reset its count are lost to it: it would collect more often) */
        Py_ssize_t n = PyList_GET_SIZE(batch);
        for (Py_ssize_t i = 0; i < n; i++) {
            prefetch_wake(w, batch, n, i);
            PyObject *o = PyList_GET_ITEM(batch, i);
            PyList_SET_ITEM(batch, i, Py_NewRef(Py_None));
            int k = kind_of(w, o);
            if (k >= 0)
                w->kinds[k].fire(o);
            Py_DECREF(o);
        }
    }
    Py_RETURN_NONE;
}
static PyMethodDef wake_batch_def = {"_wake_batch", wake_batch_run, METH_O, NULL};

int cm_wake_batch_add(CmState *st, PyObject *o, PyObject *loop)
{
    CmWakeState *w = &st->wake;
    if (w->cb == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cacheme._core is being torn down");
        return -1;
    }
    if (w->loop != loop) {
        /* the open batch is that of the last loop used; another loop opens
         * its own */
        PyObject *ctx = cm_loop_context(st); // borrowed
        PyObject *b = ctx != NULL ? PyList_New(0) : NULL;
        if (b == NULL)
            goto fail;
        if (cm_loop_call_soon_arg(st, loop, w->cb, b, ctx) < 0) {
            Py_DECREF(b);
            goto fail;
        }
        Py_XSETREF(w->batch, b);
        Py_XSETREF(w->loop, Py_NewRef(loop));
    }
    if (PyList_Append(w->batch, o) < 0)
        goto fail;
    return 0;
fail:
    PyErr_Clear();
    return -1;
}

int cm_wake_register_kind(CmState *st, PyTypeObject *type, CmWakeFn fire, Py_ssize_t wakeup_offset)
{
    CmWakeState *w = &st->wake;
    if (w->nkinds == CM_WAKE_KINDS_MAX) {
        PyErr_SetString(PyExc_SystemError, "cacheme: too many wake kinds");
        return -1;
    }
    w->kinds[w->nkinds].type = type; // borrowed
    w->kinds[w->nkinds].fire = fire;
    w->kinds[w->nkinds].wakeup_offset = wakeup_offset;
    w->nkinds++;
    return 0;
}

int cm_wake_init(PyObject *mod, CmState *st)
{
    CmWakeState *w = &st->wake;
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    if (asyncio == NULL)
        return -1;
    w->TaskType = PyObject_GetAttrString(asyncio, "Task");
    Py_DECREF(asyncio);
    if (w->TaskType == NULL)
        return -1;
    w->cb = PyCFunction_New(&wake_batch_def, mod);
    return w->cb != NULL ? 0 : -1;
}

int cm_wake_traverse(CmState *st, visitproc visit, void *arg)
{
    CmWakeState *w = &st->wake;
    Py_VISIT(w->batch);
    Py_VISIT(w->loop);
    Py_VISIT(w->cb);
    Py_VISIT(w->done_future);
    Py_VISIT(w->done_loop);
    Py_VISIT(w->TaskType);
    return 0;
}

void cm_wake_clear(CmState *st)
{
    CmWakeState *w = &st->wake;
    Py_CLEAR(w->batch);
    Py_CLEAR(w->loop);
    Py_CLEAR(w->cb);
    Py_CLEAR(w->done_future);
    Py_CLEAR(w->done_loop);
    Py_CLEAR(w->TaskType);
    w->nkinds = 0;
}

void cm_wake_gc_clear(CmState *st) { Py_CLEAR(st->wake.cb); }

void cm_wake_after_fork_child(CmState *st)
{
    CmWakeState *w = &st->wake;
    Py_CLEAR(w->batch);
    Py_CLEAR(w->loop);
    Py_CLEAR(w->done_future);
    Py_CLEAR(w->done_loop);
}
