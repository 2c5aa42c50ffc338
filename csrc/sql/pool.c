/* The connection pool of an SQL storage: up to pool_size connections, each
 * watched on the storage's loop, taking requests from the storage's queue;
 * a failed connect backs off (50 ms doubling to 1 s); a periodic tick fails
 * what passed its deadline, lets drivers do housekeeping on idle
 * connections, and queues the expired-row sweep. */
#include "sql/sqlstore.h"

#include <stdio.h>
#include <stdlib.h>

#include "base/exc.h"
#include "loop/loop.h"

#define CM_SQL_BACKOFF_MIN 50000000LL   /* 50 ms */
#define CM_SQL_BACKOFF_MAX 1000000000LL /* 1 s */

static PyObject *conn_on_read(PyObject *self, PyObject *unused);
static PyObject *conn_on_write(PyObject *self, PyObject *unused);
static PyMethodDef on_read_def = {"_on_read", conn_on_read, METH_NOARGS, NULL};
static PyMethodDef on_write_def = {"_on_write", conn_on_write, METH_NOARGS, NULL};
static void schedule_tick(CmSqlStorageObject *s);

int cm_sql_conn_watch(CmSqlConnObject *c, int read, int write)
{
    CmSqlStorageObject *s = c->storage; // borrowed
    CmState *st = s->st;
    int rc = -1;
    PyObject *cb = NULL;
    if (read != c->reading) {
        if (read) {
            if ((cb = PyCFunction_New(&on_read_def, (PyObject *)c)) == NULL ||
                cm_loop_add_reader(st, s->loop, c->fd, cb) < 0)
                goto done;
            Py_CLEAR(cb);
        } else if (cm_loop_remove_reader(st, s->loop, c->fd) < 0) {
            goto done;
        }
        c->reading = read;
    }
    if (write != c->writing) {
        if (write) {
            if ((cb = PyCFunction_New(&on_write_def, (PyObject *)c)) == NULL ||
                cm_loop_add_writer(st, s->loop, c->fd, cb) < 0)
                goto done;
        } else if (cm_loop_remove_writer(st, s->loop, c->fd) < 0) {
            goto done;
        }
        c->writing = write;
    }
    rc = 0;
done:
    Py_XDECREF(cb);
    return rc;
}

static void unwatch_on(CmSqlStorageObject *s, CmSqlConnObject *c)
{
    PyObject *saved = cm_exc_take();
    if (c->reading && cm_loop_remove_reader(s->st, s->loop, c->fd) < 0)
        PyErr_Clear();
    if (c->writing && cm_loop_remove_writer(s->st, s->loop, c->fd) < 0)
        PyErr_Clear();
    c->reading = c->writing = 0;
    cm_exc_restore(saved);
}

void cm_sql_conn_unwatch(CmSqlConnObject *c) { unwatch_on(c->storage, c); }

static void pool_remove(CmSqlStorageObject *s, CmSqlConnObject *c)
{
    for (Py_ssize_t i = 0; i < s->nconns; i++) {
        if (s->conns[i] == c) {
            s->conns[i] = s->conns[--s->nconns];
            c->storage = NULL;
            Py_DECREF(c);
            return;
        }
    }
}

void cm_sql_conn_fail(CmSqlConnObject *c, PyObject *exc_type, const char *msg)
{
    if (c->state == CM_SQL_CLOSED || c->storage == NULL)
        return;
    CmSqlStorageObject *s = c->storage; // borrowed
    PyObject *saved = cm_exc_take();
    PyObject *exc = NULL;
    int was_connecting = c->state == CM_SQL_CONNECTING;
    /* closed and out of the pool before any Python code runs (the loop's
     * remove_reader, exceptions, futures, finalizers): code that reaches
     * close_all from there must find the pool without it, or it loops */
    Py_INCREF(c);
    c->state = CM_SQL_CLOSED;
    CmSqlReq *batch = c->batch;
    c->batch = NULL;
    pool_remove(s, c);
    if (was_connecting) {
        s->backoff = s->backoff ? s->backoff * 2 : CM_SQL_BACKOFF_MIN;
        if (s->backoff > CM_SQL_BACKOFF_MAX)
            s->backoff = CM_SQL_BACKOFF_MAX;
        s->retry_at = cm_sql_now() + s->backoff;
    }
    unwatch_on(s, c);
    s->drv->close(c);
    c->fd = -1;
    exc = PyObject_CallFunction(exc_type ? exc_type : s->st->sql.SQLConnectionError, "s", msg);
    if (exc == NULL) {
        /* exc_type(msg) cannot be built (an exception type taking other
         * arguments): the connection error then */
        PyErr_Clear();
        exc = PyObject_CallFunction(s->st->sql.SQLConnectionError, "s", msg);
        if (exc == NULL)
            exc = cm_exc_take();
    }
    if (was_connecting)
        Py_XSETREF(s->last_error, Py_XNewRef(exc));
    while (batch != NULL) {
        CmSqlReq *r = batch;
        batch = r->next;
        if (r->error == NULL)
            r->error = Py_XNewRef(exc);
        cm_sql_req_finish(s, r);
    }
    Py_XDECREF(exc);
    Py_DECREF(c);
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
    c->state = CM_SQL_IDLE;
    c->deadline = 0;
    while (batch != NULL) {
        CmSqlReq *r = batch;
        batch = r->next;
        cm_sql_req_finish(s, r);
    }
}

void cm_sql_conn_ready(CmSqlConnObject *c)
{
    CmSqlStorageObject *s = c->storage; // borrowed
    c->state = CM_SQL_IDLE;
    c->deadline = 0;
    s->backoff = 0;
    s->retry_at = 0;
    Py_CLEAR(s->last_error);
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

/* Start a connection. -1 with an exception when nothing could be started
 * (out of memory); a driver that fails to start counts as a failed connect
 * (backoff), and 0 is returned. */
static int conn_open(CmSqlStorageObject *s)
{
    CmSqlConnObject *c = PyObject_GC_New(CmSqlConnObject, s->st->sql.SqlConnType);
    if (c == NULL)
        return -1;
    c->storage = s;
    c->state = CM_SQL_CONNECTING;
    c->fd = -1;
    c->reading = c->writing = 0;
    c->phase = c->status = c->err = 0;
    c->deadline = cm_sql_now() + (int64_t)(s->connect_timeout * 1e9);
    c->batch = NULL;
    c->h = c->aux = NULL;
    PyObject_GC_Track(c);
    if (s->nconns == s->conns_cap) {
        Py_ssize_t cap = s->conns_cap ? s->conns_cap * 2 : 8;
        CmSqlConnObject **p = realloc(s->conns, (size_t)cap * sizeof(*p));
        if (p == NULL) {
            Py_DECREF(c);
            PyErr_NoMemory();
            return -1;
        }
        s->conns = p;
        s->conns_cap = cap;
    }
    s->conns[s->nconns++] = c; /* the pool's reference */
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

void cm_sql_conn_io(PyObject *self, int readable, int writable)
{
    CmSqlConnObject *c = (CmSqlConnObject *)self;
    CmSqlStorageObject *s = c->storage; // borrowed
    if (s == NULL || c->state == CM_SQL_CLOSED)
        return;
    Py_INCREF(s);
    Py_INCREF(c);
    s->drv->io(c, readable, writable);
    cm_sql_dispatch(s);
    Py_DECREF(c);
    Py_DECREF(s);
}

static PyObject *conn_on_read(PyObject *self, PyObject *Py_UNUSED(unused))
{
    cm_sql_conn_io(self, 1, 0);
    PyErr_Clear();
    Py_RETURN_NONE;
}

static PyObject *conn_on_write(PyObject *self, PyObject *Py_UNUSED(unused))
{
    cm_sql_conn_io(self, 0, 1);
    PyErr_Clear();
    Py_RETURN_NONE;
}

/* A connection is kept by its storage and by the loop's fd watches: its
 * batch (futures, nodes, values) and its driver's objects are shown to the
 * collector here, so that a cycle through them is found wherever it is
 * held from. It never holds its storage (borrowed), so it needs no clear:
 * the storage's clear closes it. */
static int conn_traverse(PyObject *self, visitproc visit, void *arg)
{
    CmSqlConnObject *c = (CmSqlConnObject *)self;
    Py_VISIT(Py_TYPE(self));
    int rc = cm_sql_req_traverse(c->batch, visit, arg);
    if (rc == 0 && c->storage != NULL && c->storage->drv->conn_traverse != NULL)
        rc = c->storage->drv->conn_traverse(c, visit, arg);
    return rc;
}

static void conn_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    tp->tp_free(self);
    Py_DECREF(tp);
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
    if (s->dispatching || s->loop == NULL)
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
        for (Py_ssize_t i = 0; i < s->nconns; i++) {
            if (s->conns[i]->state == CM_SQL_IDLE) {
                idle = s->conns[i];
                break;
            }
            if (s->conns[i]->state == CM_SQL_CONNECTING)
                connecting++;
        }
        if (idle != NULL) {
            Py_INCREF(idle);
            s->drv->start(idle);
            Py_DECREF(idle);
            continue;
        }
        if (s->nconns >= s->pool_size || connecting >= s->queued)
            break;
        if (cm_sql_now() < s->retry_at) {
            if (s->nconns == 0)
                fail_queue(s, s->st->sql.SQLConnectionError, s->last_error,
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
    while (s->nconns > 0)
        cm_sql_conn_fail(s->conns[s->nconns - 1], s->st->sql.SQLConnectionError, why);
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
    if (s->tick != NULL || s->loop == NULL || (s->nconns == 0 && s->head == NULL))
        return;
    double period = s->timeout / 4;
    if (period > 0.25)
        period = 0.25;
    if (period < 0.005)
        period = 0.005;
    PyObject *cb = PyCFunction_New(&on_tick_def, (PyObject *)s);
    if (cb != NULL)
        s->tick = cm_loop_call_later(s->st, s->loop, period, cb);
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
    for (Py_ssize_t i = s->nconns - 1; i >= 0; i--) {
        if (i >= s->nconns)
            continue;
        CmSqlConnObject *c = s->conns[i]; // borrowed
        if (c->deadline != 0 && now > c->deadline)
            cm_sql_conn_fail(c, s->st->sql.SQLTimeoutError,
                             c->state == CM_SQL_CONNECTING ? "connect timed out"
                                                           : "query timed out");
        else if (c->state == CM_SQL_IDLE && s->drv->idle != NULL)
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
    if (s->sweep_interval > 0 && !s->sweeping && s->nconns > 0 && now >= s->next_sweep) {
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
int cm_sql_pool_traverse(CmSqlStorageObject *s, visitproc visit, void *arg)
{
    int rc = cm_sql_req_traverse(s->head, visit, arg);
    for (Py_ssize_t i = 0; rc == 0 && i < s->nconns; i++)
        rc = visit((PyObject *)s->conns[i], arg);
    return rc;
}

int cm_sql_pool_init(PyObject *mod, CmState *st)
{
    st->sql.SqlConnType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &conn_spec, NULL);
    return st->sql.SqlConnType ? 0 : -1;
}
