/* The connections of one storage to one server: slots, loop binding,
 * backoff, closing, busy polling. See net/pool.h for the rules. */
#include "net/pool.h"
#include <poll.h>
#include <stdlib.h>

#include "base/clock.h"
#include "base/exc.h"
#include "loop/loop.h"

void cm_net_pool_init(CmNetPool *p, CmState *st, double backoff_min, double backoff_max)
{
    p->st = st;
    p->backoff_min = backoff_min;
    p->backoff_max = backoff_max;
    p->backoff = backoff_min;
}

/* Take every connection out of the pool before closing any: closing one
 * runs Python code (the loop's remove_reader, futures), during which
 * another thread may close the same connection (it then returns at once and
 * stays where it was: a loop until nconns drops would spin for ever) or
 * free the pool (a connection must not point back to it then). */
static void close_all(CmNetPool *p, PyObject *tp, PyObject *msg, int detached, int fork)
{
    CmNetConn **conns = p->conns;
    int n = p->nconns;
    p->conns = NULL;
    p->nconns = p->cap = 0;
    for (int i = 0; i < n; i++)
        conns[i]->pool = NULL;
    for (int i = 0; i < n; i++) {
        if (detached)
            cm_net_conn_close_detached(conns[i], tp, msg, fork);
        else
            cm_net_conn_close(conns[i], tp, msg, 0);
        Py_DECREF(conns[i]); /* the pool's reference */
    }
    free(conns);
}

void cm_net_pool_close_all(CmNetPool *p, PyObject *tp, PyObject *msg)
{
    close_all(p, tp, msg, 0, 0);
}

void cm_net_pool_drop_detached(CmNetPool *p, PyObject *tp, PyObject *msg, int fork)
{
    close_all(p, tp, msg, 1, fork);
    Py_CLEAR(p->loop);
    p->retry_at = 0;
    p->backoff = p->backoff_min;
}

void cm_net_pool_close_gc(CmNetPool *p, PyObject *tp, PyObject *msg)
{
    if (p->nconns == 0)
        return;
    /* a loop that cannot tell (cleared by the collector) counts as closed */
    if (p->loop != NULL && !cm_loop_is_closed(p->loop, 1))
        close_all(p, tp, msg, 0, 0);
    else
        cm_net_pool_drop_detached(p, tp, msg, 0);
}

void cm_net_pool_fini(CmNetPool *p, PyObject *tp, PyObject *msg)
{
    close_all(p, tp, msg, 0, 0);
    Py_CLEAR(p->loop);
    Py_CLEAR(p->last_error);
}

int cm_net_pool_traverse(CmNetPool *p, visitproc visit, void *arg)
{
    Py_VISIT(p->loop);
    Py_VISIT(p->last_error);
    for (int i = 0; i < p->nconns; i++)
        Py_VISIT(p->conns[i]);
    return 0;
}

int cm_net_pool_bind(CmNetPool *p, PyObject *loop, PyObject *tp, PyObject *msg)
{
    if (p->loop == loop)
        return 0;
    if (p->loop != NULL) {
        int running = p->nconns > 0 ? cm_loop_is_running(p->st, p->loop) : 0;
        if (running < 0)
            return -1;
        if (running) {
            PyErr_SetString(PyExc_RuntimeError,
                            "cacheme: a storage's connections are in use by an event loop "
                            "running in another thread");
            return -1;
        }
        close_all(p, tp, msg, 0, 0);
        p->retry_at = 0;
        p->backoff = p->backoff_min;
    }
    Py_XSETREF(p->loop, Py_NewRef(loop));
    return 0;
}

/* 1 when fd has nothing to read and no error or hang-up pending. */
static int fd_quiet(int fd)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    return fd >= 0 && poll(&pfd, 1, 0) == 0;
}

void cm_net_pool_adopt(CmNetPool *p, PyObject *loop, int (*keep)(CmNetConn *c), PyObject *tp,
                       PyObject *msg)
{
    /* as close_all: out of the pool before any Python code runs */
    CmNetConn **conns = p->conns;
    int n = p->nconns;
    p->conns = NULL;
    p->nconns = p->cap = 0;
    Py_XSETREF(p->loop, Py_NewRef(loop));
    p->retry_at = 0;
    p->backoff = p->backoff_min;
    for (int i = 0; i < n; i++) {
        CmNetConn *c = conns[i]; /* the pool's reference: back into p, or dropped */
        if (c->state >= CM_NET_OPEN && keep(c) && fd_quiet(c->fd) && cm_net_pool_reserve(p) == 0) {
            p->conns[p->nconns++] = c;
            if (cm_net_conn_rehome(c, loop) < 0) {
                PyErr_Clear();
                /* of the new loop now, maybe half watched there: unwatched
                 * as it closes, out of p */
                cm_net_conn_close(c, tp, msg, 0);
            }
            continue;
        }
        PyErr_Clear(); /* reserve's MemoryError: closed like the others */
        c->pool = NULL;
        cm_net_conn_close_detached(c, tp, msg, 0);
        Py_DECREF(c);
    }
    free(conns);
}

int cm_net_pool_reserve(CmNetPool *p)
{
    if (p->nconns < p->cap)
        return 0;
    int cap = p->cap ? p->cap * 2 : 8;
    CmNetConn **conns = realloc(p->conns, sizeof(*conns) * (size_t)cap);
    if (conns == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    p->conns = conns;
    p->cap = cap;
    return 0;
}

int cm_net_pool_add(CmNetPool *p, CmNetConn *c)
{
    if (cm_net_pool_reserve(p) < 0) {
        Py_DECREF(c);
        return -1;
    }
    c->pool = p;
    p->conns[p->nconns++] = c;
    return 0;
}

void cm_net_pool_forget(CmNetPool *p, CmNetConn *c, int failed, PyObject *why)
{
    for (int i = 0; c != NULL && i < p->nconns; i++) {
        if (p->conns[i] == c) {
            p->conns[i] = p->conns[--p->nconns];
            Py_DECREF(c);
            break;
        }
    }
    if (!failed)
        return;
    int64_t now = cm_now_ns();
    if (now >= p->retry_at) {
        p->retry_at = now + (int64_t)(p->backoff * 1e9);
        p->backoff = p->backoff * 2 > p->backoff_max ? p->backoff_max : p->backoff * 2;
    }
    if (why != NULL && why != Py_None)
        Py_XSETREF(p->last_error, Py_NewRef(why));
}

void cm_net_pool_ok(CmNetPool *p)
{
    p->backoff = p->backoff_min;
    p->retry_at = 0;
    Py_CLEAR(p->last_error);
}

CmNetConn *cm_net_pool_pick(CmNetPool *p, PyObject *loop, const CmNetPick *how, void *arg)
{
    CmNetConn *best = NULL; // borrowed
    Py_ssize_t least = 0;
    for (int i = 0; i < p->nconns; i++) {
        Py_ssize_t load = how->load(p->conns[i], arg);
        if (load >= 0 && (best == NULL || load < least)) {
            best = p->conns[i];
            least = load;
        }
    }
    if (best != NULL && (least < how->busy || p->nconns >= how->size))
        return best;
    if (cm_net_pool_backing_off(p, cm_now_ns()) && !(how->force && best == NULL))
        return best;
    if (cm_net_pool_reserve(p) < 0)
        return NULL;
    /* opening runs Python code (the loop's add_writer, a collection and
     * its finalizers): best is held, and used after only if still pooled */
    Py_XINCREF(best);
    CmNetConn *c = how->open(arg, loop);
    if (c == NULL) {
        PyObject *exc = cm_exc_take();
        PyObject *why = exc ? PyObject_Str(exc) : NULL;
        if (why == NULL)
            PyErr_Clear();
        cm_net_pool_forget(p, NULL, 1, why);
        Py_XDECREF(why);
        CmNetConn *fallback = NULL; // borrowed: the pool's
        for (int i = 0; best != NULL && i < p->nconns; i++)
            if (p->conns[i] == best)
                fallback = best;
        Py_XDECREF(best);
        if (fallback != NULL) {
            Py_XDECREF(exc);
            return fallback;
        }
        cm_exc_restore(exc);
        return NULL;
    }
    Py_XDECREF(best);
    cm_net_pool_add(p, c); /* the pool's reference; reserved: cannot fail */
    return c;
}

int cm_net_pool_awaiting(const CmNetPool *p)
{
    for (int i = 0; i < p->nconns; i++) {
        const CmNetConn *c = p->conns[i]; // borrowed
        if (c->state >= CM_NET_OPEN && c->ops->awaiting(c))
            return 1;
    }
    return 0;
}

/* ---- busy polling ------------------------------------------------------- */

/* The pool is asked for anew each round: code run by a round (a storage
 * closed from a callback) may have freed it. */
typedef struct {
    CmNetPool *(*pool_of)(void *owner);
    void *owner;
    int (*done)(void *arg);
    void *arg;
} SpinCtx;

static int spin_collect(void *ctx, struct pollfd *fds, PyObject **objs, int max)
{
    SpinCtx *sc = ctx;
    CmNetPool *p = sc->pool_of(sc->owner); // borrowed
    int n = 0;
    for (int i = 0; p != NULL && i < p->nconns && n < max; i++) {
        CmNetConn *c = p->conns[i]; // borrowed
        if (c->state != CM_NET_CLOSED && c->fd >= 0 && (c->loop_read || c->loop_write) &&
            c->ops->awaiting(c))
            n = cm_busypoll_add(fds, objs, n, c->fd, c->loop_read, c->loop_write, (PyObject *)c);
    }
    return n;
}

static void spin_handle(void *ctx, PyObject *obj, short revents)
{
    (void)ctx;
    CmNetConn *c = (CmNetConn *)obj;
    int r = cm_busypoll_readable(revents) && c->loop_read;
    int w = cm_busypoll_writable(revents) && c->loop_write;
    if (c->state != CM_NET_CLOSED && (r || w))
        cm_net_conn_ready(c, r, w);
    PyErr_Clear();
}

static int spin_done(void *ctx)
{
    SpinCtx *sc = ctx;
    return sc->done(sc->arg);
}

void cm_net_pool_spin(CmNetPool *(*pool_of)(void *owner), void *owner, CmBusyPoll *bp)
{
    SpinCtx sc = {pool_of, owner, NULL, NULL};
    cm_busypoll_run(bp, spin_collect, spin_handle, &sc);
}

void cm_net_pool_spin_sent(CmNetPool *(*pool_of)(void *owner), PyObject *owner, CmBusyPoll *bp,
                           PyObject *loop)
{
    cm_busypoll_follow(bp, loop);
    if (!cm_busypoll_wanted(bp))
        return;
    Py_INCREF(owner);
    cm_net_pool_spin(pool_of, owner, bp);
    Py_DECREF(owner);
}

int cm_net_pool_wait(CmNetPool *(*pool_of)(void *owner), void *owner, CmBusyPoll *bp,
                     int (*done)(void *arg), void *arg)
{
    SpinCtx sc = {pool_of, owner, done, arg};
    return cm_busypoll_wait(bp, spin_collect, spin_handle, spin_done, &sc);
}
