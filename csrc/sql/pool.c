/* The connection pool of an SQL storage on net/'s transport (see pool.h):
 * up to pool_size connections taking requests from the storage's queue.
 * net/ watches their fds, times their connect and batch out (one lazily
 * re-armed timer each) and backs off after a failed connect; here is what
 * SQL adds: the queue, dispatch, failing a batch, and a periodic tick for
 * queued requests past their deadline, drivers' housekeeping on idle
 * connections and the expired-row sweep. */
#include "sql/sqlstore.h"

#include <stdio.h>
#include <stdlib.h>

#include "base/exc.h"
#include "loop/loop.h"
#include "net/netstore.h"

static void schedule_tick(CmSqlStorageObject *s);

/* ------------------------------------------------------------------ */
/* connections                                                        */

void cm_sql_conn_deadline(CmSqlConnObject *c, int64_t at)
{
    /* a timer that cannot be armed (out of memory) leaves the request to
     * the driver's own library timeouts: reported, not raised mid-step */
    if (cm_net_conn_set_deadline(&c->net, at) < 0)
        PyErr_WriteUnraisable((PyObject *)c);
}

/* exc_type(msg), or SQLConnectionError(msg) when that cannot be built (an
 * exception type taking other arguments); a new reference. */
static PyObject *conn_error(CmSqlStorageObject *s, PyObject *exc_type, const char *msg)
{
    PyObject *tp = exc_type ? exc_type : s->st->sql.SQLConnectionError;
    PyObject *exc = PyObject_CallFunction(tp, "s", msg);
    if (exc == NULL) {
        PyErr_Clear();
        exc = PyObject_CallFunction(s->st->sql.SQLConnectionError, "s", msg);
        if (exc == NULL)
            exc = cm_exc_take();
    }
    return exc;
}

void cm_sql_conn_fail(CmSqlConnObject *c, PyObject *exc_type, const char *msg)
{
    if (c->net.state == CM_SQL_CLOSED || c->storage == NULL)
        return;
    PyObject *saved = cm_exc_take();
    /* a failed connect counts against the server (net/'s backoff), and its
     * error is the one queued requests get while backing off */
    int failed = c->net.state == CM_SQL_CONNECTING;
    PyObject *exc = conn_error(c->storage, exc_type, msg);
    cm_net_conn_close(&c->net, NULL, exc, failed);
    Py_XDECREF(exc);
    PyErr_Clear();
    cm_exc_restore(saved);
}

void cm_sql_conn_fail_lookup(CmSqlConnObject *c, int connected)
{
    PyObject *exc = cm_exc_take();
    PyObject *msg = exc ? PyObject_Str(exc) : NULL;
    const char *m = msg ? PyUnicode_AsUTF8(msg) : NULL;
    char buf[512];
    if (connected)
        snprintf(buf, sizeof(buf), "%s", m ? m : "connect failed");
    else
        snprintf(buf, sizeof(buf), "%s: cannot resolve the host: %s",
                 c->storage ? c->storage->drv->name : "sql", m ? m : "lookup failed");
    PyErr_Clear();
    cm_sql_conn_fail(c, c->storage ? c->storage->st->sql.SQLConnectionError : NULL, buf);
    Py_XDECREF(msg);
    Py_XDECREF(exc);
}

void cm_sql_conn_done(CmSqlConnObject *c)
{
    CmSqlStorageObject *s = c->storage; // borrowed
    CmSqlReq *batch = c->batch;
    c->batch = NULL;
    c->net.state = CM_SQL_IDLE;
    c->net.deadline = 0; /* the timer, when it fires, finds nothing due */
    while (batch != NULL) {
        CmSqlReq *r = batch;
        batch = r->next;
        cm_sql_req_finish(s, r);
    }
}

void cm_sql_conn_ready(CmSqlConnObject *c)
{
    c->net.state = CM_SQL_IDLE;
    c->net.deadline = 0;
    cm_net_pool_ok(&c->storage->pool);
}

CmSqlReq *cm_sql_take(CmSqlStorageObject *s, int max_gets)
{
    CmSqlReq *first = s->head;
    if (first == NULL)
        return NULL;
    CmSqlReq *last = first;
    int n = 1;
    if (first->kind == CM_SQL_GET)
        while (n < max_gets && last->next != NULL && last->next->kind == CM_SQL_GET) {
            last = last->next;
            n++;
        }
    s->head = last->next;
    if (s->head == NULL)
        s->tail = NULL;
    s->queued -= n;
    last->next = NULL;
    return first;
}

/* net/conn.h's hooks */

static void conn_io(CmNetConn *nc, int readable, int writable)
{
    CmSqlConnObject *c = (CmSqlConnObject *)nc;
    CmSqlStorageObject *s = c->storage; // borrowed
    if (s == NULL || c->net.state == CM_SQL_CLOSED)
        return;
    Py_INCREF(s);
    s->drv->io(c, readable, writable);
    cm_sql_dispatch(s);
    Py_DECREF(s);
    PyErr_Clear();
}

static void conn_expired(CmNetConn *nc)
{
    CmSqlConnObject *c = (CmSqlConnObject *)nc;
    CmSqlStorageObject *s = c->storage; // borrowed
    if (s == NULL)
        return;
    Py_INCREF(s);
    cm_sql_conn_fail(c, s->st->sql.SQLTimeoutError,
                     c->net.state == CM_SQL_CONNECTING ? "connect timed out" : "query timed out");
    cm_sql_dispatch(s);
    Py_DECREF(s);
}

static int conn_awaiting(const CmNetConn *nc) { return nc->state == CM_SQL_BUSY; }

static void conn_release(CmNetConn *nc, int detached)
{
    CmSqlConnObject *c = (CmSqlConnObject *)nc;
    (void)detached; /* a forked child's fd points at /dev/null by then */
    cm_sql_conn_lookup_cancel(c);
    if (c->storage != NULL)
        c->storage->drv->close(c);
}

/* The batch fails with msg itself when tp is NULL (cm_sql_conn_fail made the
 * exception), else with tp(msg) (the pool closing every connection). */
static void conn_fail_pending(CmNetConn *nc, CmNetPool *pool, PyObject *tp, PyObject *msg,
                              int failed)
{
    CmSqlConnObject *c = (CmSqlConnObject *)nc;
    CmSqlStorageObject *s = c->storage; // borrowed
    CmSqlReq *batch = c->batch;
    (void)pool, (void)failed;
    c->batch = NULL;
    c->storage = NULL;
    if (s == NULL)
        return;
    PyObject *exc = NULL;
    if (tp == NULL && PyExceptionInstance_Check(msg))
        exc = Py_NewRef(msg);
    else if (tp != NULL)
        exc = PyObject_CallOneArg(tp, msg);
    if (exc == NULL)
        exc = cm_exc_take(); /* NULL too at interpreter teardown (types gone) */
    while (batch != NULL) {
        CmSqlReq *r = batch;
        batch = r->next;
        if (r->error == NULL && exc != NULL)
            r->error = Py_NewRef(exc);
        else if (r->error == NULL)
            cm_sql_req_error(s, r, NULL, "connection closed");
        cm_sql_req_finish(s, r);
    }
    Py_XDECREF(exc);
}

static const CmNetOps conn_ops = {
    .io = conn_io,
    .expired = conn_expired,
    .awaiting = conn_awaiting,
    .release = conn_release,
    .fail_pending = conn_fail_pending,
};

/* Start a connection. -1 with an exception when nothing could be started
 * (out of memory); a driver that fails to start counts as a failed connect
 * (backoff), and 0 is returned. */
static int conn_open(CmSqlStorageObject *s)
{
    if (cm_net_pool_reserve(&s->pool) < 0)
        return -1;
    CmSqlConnObject *c = PyObject_GC_New(CmSqlConnObject, s->st->sql.SqlConnType);
    if (c == NULL)
        return -1;
    cm_net_conn_init(&c->net, s->st, &conn_ops, s->pool.loop);
    c->net.own_fd = 0; /* libpq and Connector/C close their sockets */
    c->storage = s;
    c->phase = c->status = c->err = 0;
    c->batch = NULL;
    c->h = c->aux = NULL;
    c->lookup = NULL;
    PyObject_GC_Track(c);
    s->opened++;
    cm_net_pool_add(&s->pool, &c->net); /* the pool's reference; reserved: cannot fail */
    cm_sql_conn_deadline(c, cm_sql_now() + (int64_t)(s->connect_timeout * 1e9));
    if (s->drv->open(c) < 0) {
        PyObject *exc = cm_exc_take();
        PyObject *msg = exc ? PyObject_Str(exc) : NULL;
        const char *m = msg ? PyUnicode_AsUTF8(msg) : NULL;
        cm_sql_conn_fail(c, exc ? (PyObject *)Py_TYPE(exc) : NULL, m ? m : "connect failed");
        Py_XDECREF(msg);
        Py_XDECREF(exc);
        PyErr_Clear();
    }
    return 0;
}

/* A connection is kept by its storage and by the loop's fd watches and
 * timer: its batch (futures, nodes, values) and its driver's objects are
 * shown to the collector here, so that a cycle through them is found
 * wherever it is held from. It never holds its storage (borrowed), so it
 * needs no clear: the storage's clear closes it. */
static int conn_traverse(PyObject *self, visitproc visit, void *arg)
{
    CmSqlConnObject *c = (CmSqlConnObject *)self;
    Py_VISIT(Py_TYPE(self));
    int rc = cm_net_conn_traverse(&c->net, visit, arg);
    if (rc == 0)
        rc = cm_sql_req_traverse(c->batch, visit, arg);
    if (rc == 0 && c->lookup != NULL)
        rc = visit(c->lookup, arg);
    if (rc == 0 && c->storage != NULL && c->storage->drv->conn_traverse != NULL)
        rc = c->storage->drv->conn_traverse(c, visit, arg);
    return rc;
}

static void conn_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    Py_CLEAR(((CmSqlConnObject *)self)->lookup);
    cm_net_conn_dealloc(&((CmSqlConnObject *)self)->net);
}

static PyType_Slot conn_slots[] = {
    {Py_tp_traverse, conn_traverse},
    {Py_tp_dealloc, conn_dealloc},
    {Py_tp_doc, "A connection of an SQL storage pool (internal)."},
    {0, NULL},
};

static PyType_Spec conn_spec = {
    .name = "cacheme._core._SqlConn",
    .basicsize = sizeof(CmSqlConnObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION |
             Py_TPFLAGS_HAVE_GC,
    .slots = conn_slots,
};

/* ------------------------------------------------------------------ */
/* the pool                                                           */

static void fail_queue(CmSqlStorageObject *s, PyObject *exc_type, PyObject *exc, const char *msg)
{
    while (s->head != NULL) {
        CmSqlReq *r = s->head;
        s->head = r->next;
        s->queued--;
        if (exc != NULL)
            r->error = Py_NewRef(exc);
        else
            cm_sql_req_error(s, r, exc_type, msg);
        cm_sql_req_finish(s, r);
    }
    s->tail = NULL;
}

void cm_sql_dispatch(CmSqlStorageObject *s)
{
    if (s->dispatching || s->pool.loop == NULL)
        return;
    s->dispatching = 1;
    while (s->head != NULL) {
        CmSqlReq *first = s->head;
        if (first->fut != NULL && cm_future_done(s->st, first->fut) != 0) {
            /* cancelled by its caller while queued: not worth sending */
            PyErr_Clear();
            s->head = first->next;
            if (s->head == NULL)
                s->tail = NULL;
            s->queued--;
            cm_sql_req_finish(s, first);
            continue;
        }
        CmSqlConnObject *idle = NULL;
        Py_ssize_t connecting = 0;
        for (int i = 0; i < s->pool.nconns; i++) {
            CmSqlConnObject *c = (CmSqlConnObject *)s->pool.conns[i]; // borrowed
            if (c->net.state == CM_SQL_IDLE) {
                idle = c;
                break;
            }
            if (c->net.state == CM_SQL_CONNECTING)
                connecting++;
        }
        if (idle != NULL) {
            Py_INCREF(idle);
            s->drv->start(idle);
            Py_DECREF(idle);
            continue;
        }
        if (s->pool.nconns >= s->pool_size || connecting >= s->queued)
            break;
        if (cm_net_pool_backing_off(&s->pool, cm_sql_now())) {
            if (s->pool.nconns == 0)
                fail_queue(s, s->st->sql.SQLConnectionError, s->pool.last_error,
                           "cannot connect (backing off)");
            break;
        }
        if (conn_open(s) < 0) {
            /* retrying at once would fail again (and spin): the queued
             * requests fail with the error instead */
            PyObject *exc = cm_exc_take();
            fail_queue(s, s->st->sql.SQLConnectionError, exc, "cannot open a connection");
            Py_XDECREF(exc);
            break;
        }
    }
    s->dispatching = 0;
    schedule_tick(s);
}

void cm_sql_close_all(CmSqlStorageObject *s, const char *why)
{
    /* also called from dealloc, mid-raise: the exception is kept */
    cm_netstore_close(&s->pool, s->st->sql.SQLConnectionError, CM_NETSTORE_CLOSE, why);
    fail_queue(s, s->st->sql.SQLConnectionError, NULL, why);
    if (s->tick != NULL) {
        cm_handle_cancel(s->st, s->tick);
        Py_CLEAR(s->tick);
    }
}

static PyObject *storage_on_tick(PyObject *self, PyObject *unused);
static PyMethodDef on_tick_def = {"_on_tick", storage_on_tick, METH_NOARGS, NULL};

static void schedule_tick(CmSqlStorageObject *s)
{
    if (s->tick != NULL || s->pool.loop == NULL || (s->pool.nconns == 0 && s->head == NULL))
        return;
    double period = s->timeout / 4;
    if (period > 0.25)
        period = 0.25;
    if (period < 0.005)
        period = 0.005;
    PyObject *cb = PyCFunction_New(&on_tick_def, (PyObject *)s);
    if (cb != NULL)
        s->tick = cm_loop_call_later(s->st, s->pool.loop, period, cb);
    Py_XDECREF(cb);
    if (s->tick == NULL)
        PyErr_WriteUnraisable((PyObject *)s);
}

void cm_sql_enqueue(CmSqlStorageObject *s, CmSqlReq *r)
{
    r->next = NULL;
    if (s->tail)
        s->tail->next = r;
    else
        s->head = r;
    s->tail = r;
    s->queued++;
}

static PyObject *storage_on_tick(PyObject *self, PyObject *Py_UNUSED(unused))
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    int64_t now = cm_sql_now();
    Py_INCREF(s);
    Py_CLEAR(s->tick);
    /* housekeeping on idle connections (their deadlines are net/'s) */
    for (int i = s->pool.nconns - 1; s->drv->idle != NULL && i >= 0; i--) {
        if (i >= s->pool.nconns)
            continue;
        CmSqlConnObject *c = (CmSqlConnObject *)s->pool.conns[i]; // borrowed
        if (c->net.state == CM_SQL_IDLE)
            s->drv->idle(c, now);
    }
    /* queued requests past their deadline */
    CmSqlReq **pp = &s->head, *prev = NULL;
    while (*pp != NULL) {
        CmSqlReq *r = *pp;
        if (r->deadline != 0 && now > r->deadline) {
            *pp = r->next;
            s->queued--;
            if (s->tail == r)
                s->tail = prev;
            cm_sql_req_error(s, r, s->st->sql.SQLTimeoutError,
                             "timed out waiting for a connection");
            cm_sql_req_finish(s, r);
            continue;
        }
        prev = r;
        pp = &r->next;
    }
    if (s->sweep_interval > 0 && !s->sweeping && s->pool.nconns > 0 && now >= s->next_sweep) {
        CmSqlReq *r = cm_sql_req_new(CM_SQL_SWEEP);
        if (r != NULL) {
            r->limit = s->sweep_limit;
            r->deadline = now + (int64_t)(s->timeout * 1e9);
            s->sweeping = 1;
            s->next_sweep = now + (int64_t)(s->sweep_interval * 1e9);
            cm_sql_enqueue(s, r);
        }
        PyErr_Clear();
    }
    cm_sql_dispatch(s);
    Py_DECREF(s);
    Py_RETURN_NONE;
}

int cm_sql_pool_init(PyObject *mod, CmState *st)
{
    st->sql.SqlConnType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &conn_spec, NULL);
    return st->sql.SqlConnType ? 0 : -1;
}
