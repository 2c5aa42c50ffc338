/* A network connection on the asyncio loop: fd watches, the deadline timer,
 * close. See net/conn.h for the rules. */
#include "net/conn.h"
#include <unistd.h>

#include "base/clock.h"
#include "base/exc.h"
#include "loop/loop.h"
#include "net/netloop.h"
#include "net/pool.h"
#include "net/tls.h"

static PyObject *conn_on_read(PyObject *self, PyObject *unused);
static PyObject *conn_on_write(PyObject *self, PyObject *unused);
static PyObject *conn_on_timer(PyObject *self, PyObject *unused);
static PyMethodDef on_read_def = {"_on_read", conn_on_read, METH_NOARGS, NULL};
static PyMethodDef on_write_def = {"_on_write", conn_on_write, METH_NOARGS, NULL};
static PyMethodDef on_timer_def = {"_on_timer", conn_on_timer, METH_NOARGS, NULL};

void cm_net_conn_init(CmNetConn *c, CmState *st, const CmNetOps *ops, PyObject *loop)
{
    c->st = cm_state_hold(st); /* released by cm_net_conn_dealloc */
    c->ops = ops;
    c->pool = NULL;
    c->loop = Py_NewRef(loop);
    c->fd = -1;
    c->own_fd = 1;
    c->state = CM_NET_CONNECTING;
    c->reading = c->writing = 0;
    c->loop_read = c->loop_write = 0;
    c->tls = NULL;
    c->tls_wait = 0;
    c->deadline = 0;
    c->timer.handle = NULL;
    c->timer.at = 0;
}

/* add_reader/add_writer with a callback bound to c, or remove */
static int watch_one(CmNetConn *c, int write, int on)
{
    CmState *st = c->st;
    if (!on)
        return write ? cm_loop_remove_writer(st, c->loop, c->fd)
                     : cm_loop_remove_reader(st, c->loop, c->fd);
    PyObject *cb = PyCFunction_New(write ? &on_write_def : &on_read_def, (PyObject *)c);
    if (cb == NULL)
        return -1;
    int rc = write ? cm_loop_add_writer(st, c->loop, c->fd, cb)
                   : cm_loop_add_reader(st, c->loop, c->fd, cb);
    Py_DECREF(cb);
    return rc;
}

/* A TLS read waiting for writability watches for writing instead, and a
 * write waiting for readability for reading (net/tls.h). */
int cm_net_conn_rewatch(CmNetConn *c)
{
    int read = c->reading, write = c->writing;
    if (c->tls_wait) {
        int rw = (c->tls_wait & CM_TLS_READ_WANTS_WRITE) != 0;
        int wr = (c->tls_wait & CM_TLS_WRITE_WANTS_READ) != 0;
        read = (c->reading && !rw) || (c->writing && wr);
        write = (c->writing && !wr) || (c->reading && rw);
    }
    if (read != c->loop_read) {
        if (watch_one(c, 0, read) < 0)
            return -1;
        c->loop_read = read;
    }
    if (write != c->loop_write) {
        if (watch_one(c, 1, write) < 0)
            return -1;
        c->loop_write = write;
    }
    return 0;
}

int cm_net_conn_watch(CmNetConn *c, int read, int write)
{
    c->reading = read != 0;
    c->writing = write != 0;
    return cm_net_conn_rewatch(c);
}

void cm_net_conn_unwatch(CmNetConn *c)
{
    c->reading = c->writing = 0;
    if (!c->loop_read && !c->loop_write)
        return;
    PyObject *saved = cm_exc_take();
    if (c->loop_read && cm_loop_remove_reader(c->st, c->loop, c->fd) < 0)
        PyErr_Clear();
    if (c->loop_write && cm_loop_remove_writer(c->st, c->loop, c->fd) < 0)
        PyErr_Clear();
    c->loop_read = c->loop_write = 0;
    cm_exc_restore(saved);
}

void cm_net_conn_set_fd(CmNetConn *c, int fd)
{
    if (fd != c->fd)
        cm_net_conn_unwatch(c);
    c->fd = fd;
}

int cm_net_conn_rehome(CmNetConn *c, PyObject *loop)
{
    c->loop_read = c->loop_write = 0;
    cm_net_timer_drop(&c->timer);
    Py_SETREF(c->loop, Py_NewRef(loop));
    return cm_net_conn_rewatch(c);
}

int cm_net_timer_arm(CmState *st, PyObject *loop, CmNetTimer *t, int64_t at, PyObject *cb)
{
    if (t->handle != NULL && t->at <= at)
        return 0;
    cm_net_timer_cancel(st, t);
    int64_t delay = at - cm_now_ns();
    t->handle = cm_loop_call_later(st, loop, delay < 0 ? 0 : (double)delay / 1e9, cb);
    t->at = at;
    return t->handle ? 0 : -1;
}

void cm_net_timer_cancel(CmState *st, CmNetTimer *t)
{
    if (t->handle != NULL) {
        cm_handle_cancel(st, t->handle);
        Py_CLEAR(t->handle);
    }
    t->at = 0;
}

int cm_net_conn_arm(CmNetConn *c, int64_t at)
{
    if (c->timer.handle != NULL && c->timer.at <= at)
        return 0; /* the common case, with no call made */
    PyObject *cb = PyCFunction_New(&on_timer_def, (PyObject *)c);
    if (cb == NULL)
        return -1;
    int rc = cm_net_timer_arm(c->st, c->loop, &c->timer, at, cb);
    Py_DECREF(cb);
    return rc;
}

int cm_net_conn_set_deadline(CmNetConn *c, int64_t at)
{
    c->deadline = at;
    return at == 0 ? 0 : cm_net_conn_arm(c, at);
}

static int64_t conn_deadline(const CmNetConn *c)
{
    if (c->ops->deadline != NULL)
        return c->ops->deadline(c);
    return c->deadline ? c->deadline : INT64_MAX;
}

/* Close c (net/conn.h). detached: the loop is not touched (nothing
 * unregistered, the timer dropped uncancelled); fork: the fd is first
 * pointed at /dev/null, so that what the driver writes on it in release
 * (a goodbye) and its close never reach the parent's socket. */
static void conn_close(CmNetConn *c, PyObject *tp, PyObject *msg, int failed, int detached,
                       int fork)
{
    if (c->state == CM_NET_CLOSED)
        return;
    PyObject *saved = cm_exc_take();
    Py_INCREF(c);
    /* closed before any Python code runs (the loop's remove_reader,
     * futures): a hook reached from there finds it closed and returns */
    c->state = CM_NET_CLOSED;
    if (detached) {
        c->reading = c->writing = c->loop_read = c->loop_write = 0;
        cm_net_timer_drop(&c->timer);
        if (fork)
            cm_net_fork_fd(c->fd);
    } else {
        cm_net_conn_unwatch(c);
        cm_net_timer_cancel(c->st, &c->timer);
    }
    cm_tls_free(c); /* quiet: the socket is not written to */
    if (c->fd >= 0 && c->own_fd)
        close(c->fd);
    c->ops->release(c, detached);
    c->fd = -1;
    CmNetPool *p = c->pool; // borrowed
    c->pool = NULL;
    if (p != NULL)
        cm_net_pool_forget(p, c, failed, msg);
    c->ops->fail_pending(c, p, tp, msg ? msg : Py_None, failed);
    Py_DECREF(c);
    PyErr_Clear();
    cm_exc_restore(saved);
}

void cm_net_conn_close(CmNetConn *c, PyObject *tp, PyObject *msg, int failed)
{
    conn_close(c, tp, msg, failed, 0, 0);
}

void cm_net_conn_close_detached(CmNetConn *c, PyObject *tp, PyObject *msg, int fork)
{
    conn_close(c, tp, msg, 0, 1, fork);
}

void cm_net_conn_ready(CmNetConn *c, int readable, int writable)
{
    if (c->tls_wait) {
        int rw = (c->tls_wait & CM_TLS_READ_WANTS_WRITE) != 0;
        int wr = (c->tls_wait & CM_TLS_WRITE_WANTS_READ) != 0;
        int r = c->reading && (rw ? writable : readable);
        int w = c->writing && (wr ? readable : writable);
        readable = r;
        writable = w;
    }
    c->ops->io(c, readable, writable);
}

static void conn_io(PyObject *self, int readable, int writable)
{
    CmNetConn *c = (CmNetConn *)self;
    if (c->state == CM_NET_CLOSED)
        return;
    Py_INCREF(c);
    cm_net_conn_ready(c, readable, writable);
    if (PyErr_Occurred()) /* a driver's bug: io must not raise */
        PyErr_WriteUnraisable(self);
    Py_DECREF(c);
}

static PyObject *conn_on_read(PyObject *self, PyObject *Py_UNUSED(unused))
{
    conn_io(self, 1, 0);
    Py_RETURN_NONE;
}

static PyObject *conn_on_write(PyObject *self, PyObject *Py_UNUSED(unused))
{
    conn_io(self, 0, 1);
    Py_RETURN_NONE;
}

static PyObject *conn_on_timer(PyObject *self, PyObject *Py_UNUSED(unused))
{
    CmNetConn *c = (CmNetConn *)self;
    Py_CLEAR(c->timer.handle);
    if (c->state == CM_NET_CLOSED)
        Py_RETURN_NONE;
    Py_INCREF(c);
    int64_t at = conn_deadline(c);
    if (cm_now_ns() >= at)
        c->ops->expired(c);
    else if (at != INT64_MAX && cm_net_conn_arm(c, at) < 0)
        PyErr_WriteUnraisable(self);
    Py_DECREF(c);
    Py_RETURN_NONE;
}

int cm_net_conn_traverse(CmNetConn *c, visitproc visit, void *arg)
{
    CM_STATE_VISIT(c->st);
    Py_VISIT(c->loop);
    Py_VISIT(c->timer.handle);
    return 0;
}

void cm_net_conn_dealloc(CmNetConn *c)
{
    cm_tls_free(c);
    if (c->fd >= 0 && c->own_fd)
        close(c->fd);
    c->fd = -1;
    Py_CLEAR(c->timer.handle);
    Py_CLEAR(c->loop);
    PyTypeObject *tp = Py_TYPE(c);
    CmState *st = c->st;
    tp->tp_free(c);
    Py_DECREF(tp);
    cm_state_release(st);
}
