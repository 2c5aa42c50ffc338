/* Busy polling for replies while the loop is idle (see busypoll.h). */
#include "net/busypoll.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>

#include "base/clock.h"
#include "base/exc.h"

double cm_busypoll_default(void)
{
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) < 2)
        return 0.0;
#endif
    return CM_BUSYPOLL_DEFAULT;
}

int cm_busypoll_parse(PyObject *opt, double *limit)
{
    if (opt == Py_None) {
        *limit = cm_busypoll_default();
        return 0;
    }
    double v = PyFloat_AsDouble(opt);
    if (v == -1.0 && PyErr_Occurred())
        return -1;
    if (!(v >= 0 && v <= 0.01)) {
        char buf[64];
        snprintf(buf, sizeof(buf), "%g", v);
        PyErr_Format(PyExc_ValueError, "busy_poll must be between 0 (off) and 0.01 seconds, not %s",
                     buf);
        return -1;
    }
    *limit = v;
    return 0;
}

void cm_busypoll_follow(CmBusyPoll *bp, PyObject *loop)
{
    if (bp->loop == loop)
        return;
    Py_CLEAR(bp->ready);
    Py_XSETREF(bp->loop, Py_XNewRef(loop));
    bp->pending = bp->marker = 0;
    bp->skip = bp->backoff = 0;
    bp->inline_since = 0;
    if (loop == NULL)
        return;
    PyObject *saved = cm_exc_take();
    PyObject *ready = PyObject_GetAttrString(loop, "_ready");
    if (ready != NULL && PySequence_Check(ready) && PyObject_Size(ready) >= 0)
        bp->ready = ready;
    else
        Py_XDECREF(ready);
    PyErr_Clear();
    cm_exc_restore(saved);
}

/* 1 unless this request is one to skip after a timed-out spin (counted) */
static int not_skipped(CmBusyPoll *bp)
{
    if (bp->skip == 0)
        return 1;
    bp->skip--;
    return 0;
}

int cm_busypoll_wanted(CmBusyPoll *bp)
{
    return bp->limit > 0 && bp->ready != NULL && !bp->pending && not_skipped(bp);
}

static void release(PyObject **objs, int n)
{
    for (int i = 0; i < n; i++)
        Py_DECREF(objs[i]);
}

/* Poll what collect() gives until the stop condition holds (1: answered)
 * or the limit passes (-1); 0 when nothing was in flight or poll failed.
 * The condition is done(ctx) when given, else "the loop's ready queue holds
 * something" (after a poll, that is what arrived). */
static int spin(CmBusyPoll *bp, cm_busypoll_collect collect, cm_busypoll_handle handle,
                int (*done)(void *ctx), void *ctx)
{
    PyObject *ready = Py_NewRef(bp->ready);
    PyObject *saved = cm_exc_take();
    struct pollfd fds[CM_BUSYPOLL_MAX_FDS];
    PyObject *objs[CM_BUSYPOLL_MAX_FDS];
    int64_t end = 0;
    int polled = 0, outcome = 0;
    for (;;) {
        int stop = done ? done(ctx) : (int)PyObject_Size(ready);
        if (stop != 0) {
            outcome = stop > 0 && polled;
            break;
        }
        int n = collect(ctx, fds, objs, CM_BUSYPOLL_MAX_FDS);
        if (n <= 0)
            break; /* nothing in flight (any more) */
        int64_t now = cm_now_ns();
        if (!polled) {
            end = now + (int64_t)(bp->limit * 1e9);
        } else if (now >= end) {
            release(objs, n);
            outcome = -1;
            break;
        }
        polled = 1;
        int rc = poll(fds, (nfds_t)n, 0);
        int err = errno;
        /* nothing yet: let a thread that shares this CPU run (the server we
         * wait for, on a busy machine); returns at once when there is none */
        if (rc == 0)
            sched_yield();
        for (int i = 0; rc > 0 && i < n; i++)
            if (fds[i].revents != 0)
                handle(ctx, objs[i], fds[i].revents);
        release(objs, n);
        if (rc < 0 && err != EINTR)
            break;
    }
    if (outcome > 0) {
        bp->hits++;
        bp->skip = bp->backoff = 0;
    } else if (outcome < 0) {
        bp->misses++;
        bp->backoff = bp->backoff ? bp->backoff * 2 : 1;
        if (bp->backoff > CM_BUSYPOLL_MAX_SKIP)
            bp->backoff = CM_BUSYPOLL_MAX_SKIP;
        bp->skip = bp->backoff;
    }
    Py_DECREF(ready);
    PyErr_Clear();
    cm_exc_restore(saved);
    return outcome;
}

void cm_busypoll_run(CmBusyPoll *bp, cm_busypoll_collect collect, cm_busypoll_handle handle,
                     void *ctx)
{
    bp->pending = 0;
    if (bp->ready != NULL && bp->limit > 0)
        spin(bp, collect, handle, NULL, ctx);
}

int cm_busypoll_inline_ok(CmBusyPoll *bp, int64_t now)
{
    if (bp->limit <= 0 || bp->ready == NULL)
        return 0;
    if (bp->inline_since != 0 && now - bp->inline_since > CM_BUSYPOLL_INLINE_BUDGET)
        return 0;
    Py_ssize_t n = PyObject_Size(bp->ready);
    if (n != (bp->marker ? 1 : 0)) {
        if (n < 0)
            PyErr_Clear();
        return 0; /* something else is ready to run */
    }
    return not_skipped(bp);
}

int cm_busypoll_wait(CmBusyPoll *bp, cm_busypoll_collect collect, cm_busypoll_handle handle,
                     int (*done)(void *ctx), void *ctx)
{
    if (spin(bp, collect, handle, done, ctx) <= 0)
        return 0;
    bp->inlined++;
    return 1;
}

int cm_busypoll_traverse(CmBusyPoll *bp, visitproc visit, void *arg)
{
    Py_VISIT(bp->loop);
    Py_VISIT(bp->ready);
    return 0;
}

void cm_busypoll_clear(CmBusyPoll *bp)
{
    Py_CLEAR(bp->ready);
    Py_CLEAR(bp->loop);
    bp->pending = 0;
}
