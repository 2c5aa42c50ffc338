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

/* Up to this many deques among a loop's references are probed. */
#define PROBE_MAX 8

typedef struct {
    PyTypeObject *deque;
    PyObject *found[PROBE_MAX]; /* new references */
    int n;
} Probe;

static int probe_visit(PyObject *o, void *arg)
{
    Probe *p = arg;
    if (Py_IS_TYPE(o, p->deque) && p->n < PROBE_MAX)
        p->found[p->n++] = Py_NewRef(o);
    return 0;
}

/* 1 when the last item of the deque d is h (0 otherwise, or on error) */
static int ends_with(PyObject *d, PyObject *h)
{
    Py_ssize_t n = PyObject_Size(d);
    if (n <= 0)
        return 0;
    PyObject *last = PySequence_GetItem(d, n - 1);
    int same = last == h;
    Py_XDECREF(last);
    return same;
}

/* The ready queue of a loop that keeps it out of Python's reach (uvloop
 * holds it in a C field of the Loop): among the deques the loop's GC
 * traverse reports, the one that loop.call_soon appends its handle to. The
 * probe handle is cancelled at once, so the loop skips it. A new reference,
 * or NULL (with an exception or not) when no single deque qualifies. */
static PyObject *probe_ready(PyObject *loop)
{
    traverseproc traverse = (traverseproc)PyType_GetSlot(Py_TYPE(loop), Py_tp_traverse);
    if (traverse == NULL || !PyObject_IS_GC(loop))
        return NULL;
    PyObject *ready = NULL, *h = NULL;
    PyObject *collections = PyImport_ImportModule("collections");
    PyObject *deque = collections ? PyObject_GetAttrString(collections, "deque") : NULL;
    Py_XDECREF(collections);
    if (deque == NULL || !PyType_Check(deque)) {
        Py_XDECREF(deque);
        return NULL;
    }
    Probe p = {(PyTypeObject *)deque, {NULL}, 0};
    traverse(loop, probe_visit, &p);
    if (p.n == 0)
        goto done;
    /* deque() as the callback: harmless should the handle ever run */
    h = PyObject_CallMethod(loop, "call_soon", "O", deque);
    if (h == NULL)
        goto done;
    for (int i = 0; i < p.n; i++) {
        if (!ends_with(p.found[i], h))
            continue;
        if (ready != NULL) { /* two deques end with it: cannot tell which */
            Py_CLEAR(ready);
            break;
        }
        ready = Py_NewRef(p.found[i]);
    }
    PyObject *r = PyObject_CallMethod(h, "cancel", NULL);
    if (r == NULL)
        Py_CLEAR(ready); /* a handle that cannot be cancelled: leave the loop alone */
    Py_XDECREF(r);
done:
    Py_XDECREF(h);
    for (int i = 0; i < p.n; i++)
        Py_DECREF(p.found[i]);
    Py_DECREF(deque);
    return ready;
}

/* The file descriptor the loop sleeps on (epoll, kqueue), or -1: asyncio's
 * selector, uvloop's libuv backend. */
static int loop_fd(PyObject *loop)
{
    PyObject *fd = PyObject_HasAttrString(loop, "_get_backend_id")
                       ? PyObject_CallMethod(loop, "_get_backend_id", NULL)
                       : NULL;
    if (fd == NULL) {
        PyErr_Clear();
        PyObject *sel = PyObject_GetAttrString(loop, "_selector");
        fd = sel != NULL && PyObject_HasAttrString(sel, "fileno")
                 ? PyObject_CallMethod(sel, "fileno", NULL)
                 : NULL;
        Py_XDECREF(sel);
    }
    long v = fd != NULL && PyLong_Check(fd) ? PyLong_AsLong(fd) : -1;
    Py_XDECREF(fd);
    PyErr_Clear();
    return v >= 0 && v <= INT32_MAX ? (int)v : -1;
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
    bp->loop_fd = -1;
    if (loop == NULL || bp->limit <= 0)
        return;
    PyObject *saved = cm_exc_take();
    PyObject *ready = PyObject_GetAttrString(loop, "_ready");
    if (ready == NULL) {
        PyErr_Clear();
        ready = probe_ready(loop);
    }
    if (ready != NULL && PySequence_Check(ready) && PyObject_Size(ready) >= 0) {
        bp->ready = ready;
        bp->loop_fd = loop_fd(loop);
    } else
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
 * or the limit passes (-1); 0 when nothing was in flight, the loop has
 * other I/O ready, or poll failed. The condition is done(ctx) when given,
 * else "the loop's ready queue holds something" (after a poll, that is what
 * arrived). The loop's own fd comes first in the poll: when it is ready and
 * none of ours is, the readiness is another socket's (ours are checked
 * after it, so a reply that arrived meanwhile shows on ours too). */
static int spin(CmBusyPoll *bp, cm_busypoll_collect collect, cm_busypoll_handle handle,
                int (*done)(void *ctx), void *ctx)
{
    PyObject *ready = Py_NewRef(bp->ready);
    PyObject *saved = cm_exc_take();
    struct pollfd fds[CM_BUSYPOLL_MAX_FDS];
    PyObject *objs[CM_BUSYPOLL_MAX_FDS];
    int base = bp->loop_fd >= 0; /* fds[0] is the loop's */
    int64_t end = 0;
    int polled = 0, outcome = 0;
    for (;;) {
        int stop = done ? done(ctx) : (int)PyObject_Size(ready);
        if (stop != 0) {
            outcome = stop > 0 && polled;
            break;
        }
        int n = collect(ctx, fds + base, objs + base, CM_BUSYPOLL_MAX_FDS - base);
        if (n <= 0)
            break; /* nothing in flight (any more) */
        int64_t now = cm_now_ns();
        if (!polled) {
            end = now + (int64_t)(bp->limit * 1e9);
        } else if (now >= end) {
            release(objs + base, n);
            outcome = -1;
            break;
        }
        polled = 1;
        if (base) {
            fds[0].fd = bp->loop_fd;
            fds[0].events = POLLIN;
            fds[0].revents = 0;
        }
        int rc = poll(fds, (nfds_t)(n + base), 0);
        int err = errno;
        /* nothing yet: let a thread that shares this CPU run (the server we
         * wait for, on a busy machine); returns at once when there is none */
        if (rc == 0)
            sched_yield();
        int ours = 0;
        for (int i = base; rc > 0 && i < n + base; i++)
            if (fds[i].revents != 0) {
                handle(ctx, objs[i], fds[i].revents);
                ours++;
            }
        release(objs + base, n);
        if (rc < 0 && err != EINTR)
            break;
        if (rc > 0 && base && fds[0].revents != 0 && ours == 0) {
            bp->yields++;
            break; /* another socket of the loop is ready: let the loop serve it */
        }
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
    bp->loop_fd = -1;
}
