/* SQL storages: the shared storage type, request queue, connection pool,
 * timeouts, backoff and sweep (see sqlstore.h for the shape). */
#include "sql/sqlstore.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <structmember.h>

#include "base/clock.h"
#include "base/exc.h"
#include "core/key.h"
#include "core/ttl.h"
#include "loop/loop.h"
#include "loop/ready.h"
#include "ser/envelope.h"

#define CM_SQL_BACKOFF_MIN 50000000LL          /* 50 ms */
#define CM_SQL_BACKOFF_MAX 1000000000LL        /* 1 s */
#define CM_SQL_SWEEP_AGAIN 1000000000LL        /* a full sweep batch: go on after 1 s */
#define CM_SQL_UTC_MAX_US 253402300799999999LL /* 9999-12-31 23:59:59.999999 */

int64_t cm_sql_now(void) { return cm_now_ns(); }

void cm_sql_utc_text(char *buf, size_t n, long long delta_us)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long us = (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
    /* within the years 1970 .. 9999 that the text form and gmtime_r hold */
    us = delta_us > CM_SQL_UTC_MAX_US - us ? CM_SQL_UTC_MAX_US : us + delta_us;
    if (us < 0)
        us = 0;
    time_t secs = (time_t)(us / 1000000LL);
    if (gmtime_r(&secs, &tm) == NULL) {
        snprintf(buf, n, "9999-12-31 23:59:59.999999+00:00");
        return;
    }
    snprintf(buf, n, "%04d-%02d-%02d %02d:%02d:%02d.%06lld+00:00", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, us % 1000000LL);
}

long long cm_sql_ttl_us(const CmSqlReq *r)
{
    if (r->ttl < 0)
        return -1;
    return (long long)llround(r->ttl * 1e6);
}

/* ------------------------------------------------------------------ */
/* requests                                                           */

static CmSqlReq *req_new(int kind)
{
    CmSqlReq *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    r->kind = kind;
    r->ttl = -1;
    return r;
}

static void req_free(CmSqlReq *r)
{
    Py_XDECREF(r->fut);
    Py_XDECREF(r->ser);
    Py_XDECREF(r->key);
    Py_XDECREF(r->keys);
    Py_XDECREF(r->nodes);
    Py_XDECREF(r->value);
    Py_XDECREF(r->values);
    Py_XDECREF(r->result);
    Py_XDECREF(r->error);
    free(r);
}

void cm_sql_req_error(CmSqlStorageObject *s, CmSqlReq *r, PyObject *exc_type, const char *msg)
{
    PyObject *saved = cm_exc_take();
    if (r->error == NULL) {
        r->error = PyObject_CallFunction(exc_type ? exc_type : s->st->SQLError, "s", msg);
        if (r->error == NULL)
            r->error = cm_exc_take();
    }
    PyErr_Clear();
    cm_exc_restore(saved);
}

static int missing_table_error(CmSqlStorageObject *s, PyObject **out)
{
    *out = PyObject_CallFunction(
        s->st->SQLTableError, "N",
        PyUnicode_FromFormat(
            "cacheme %s storage: table '%U' does not exist; create it with the DDL in "
            "cacheme/storages/scripts/%s.sql (table name replaced) or pass create_table=True",
            s->drv->name, s->table, s->drv->name));
    return *out ? 0 : -1;
}

void cm_sql_req_error_sql(CmSqlStorageObject *s, CmSqlReq *r, int missing_table, const char *msg)
{
    if (!missing_table) {
        cm_sql_req_error(s, r, s->st->SQLError, msg);
        return;
    }
    PyObject *saved = cm_exc_take();
    if (r->error == NULL && missing_table_error(s, &r->error) < 0)
        r->error = cm_exc_take();
    PyErr_Clear();
    cm_exc_restore(saved);
}

int cm_sql_result_put(CmSqlReq *r, const char *key, size_t klen, PyObject *raw)
{
    int rc = -1;
    PyObject *k = NULL;
    if (raw == NULL)
        return -1;
    if (r->result == NULL && (r->result = PyDict_New()) == NULL)
        goto done;
    if ((k = PyUnicode_DecodeUTF8(key, (Py_ssize_t)klen, "surrogateescape")) == NULL)
        goto done;
    rc = PyDict_SetItem(r->result, k, raw);
done:
    Py_XDECREF(k);
    Py_DECREF(raw);
    return rc;
}

/* serializer.loads(raw), or raw without a serializer; new reference. */
static PyObject *decode(CmState *st, PyObject *ser, PyObject *raw)
{
    return cm_envelope_decode(st, CM_ENVELOPE_BARE, ser, raw, st->SQLError, "SQL");
}

/* serializer.dumps(v) as bytes (or v itself, bytes, without a serializer). */
static PyObject *encode(CmSqlStorageObject *s, PyObject *ser, PyObject *v)
{
    return cm_envelope_encode(s->st, CM_ENVELOPE_BARE, ser, v, s->drv->name);
}

/* What the caller of a finished request sees; new reference. */
static PyObject *req_value(CmSqlStorageObject *s, CmSqlReq *r)
{
    CmState *st = s->st;
    switch (r->kind) {
    case CM_SQL_GET:
        if (r->result == NULL || r->result == Py_None)
            return Py_NewRef(st->sentinel);
        return decode(st, r->ser, r->result);
    case CM_SQL_GET_ALL: {
        PyObject *out = PyList_New(0);
        if (out == NULL || r->result == NULL)
            return out;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(r->keys); i++) {
            PyObject *raw =
                PyDict_GetItemWithError(r->result, PyList_GET_ITEM(r->keys, i)); // borrowed
            if (raw == NULL) {
                if (PyErr_Occurred())
                    goto fail;
                continue;
            }
            PyObject *v = decode(st, r->ser, raw);
            if (v == NULL) {
                /* undecodable bytes are a miss, as in get() */
                PyObject *exc = cm_exc_take();
                cm_log_warning(st, "cacheme: SQL value of %R cannot be decoded: %R",
                               PyList_GET_ITEM(r->keys, i), exc);
                Py_XDECREF(exc);
                continue;
            }
            PyObject *pair = PyTuple_Pack(2, PyList_GET_ITEM(r->nodes, i), v);
            Py_DECREF(v);
            if (pair == NULL || PyList_Append(out, pair) < 0) {
                Py_XDECREF(pair);
                goto fail;
            }
            Py_DECREF(pair);
        }
        return out;
    fail:
        Py_DECREF(out);
        return NULL;
    }
    case CM_SQL_SWEEP:
        return r->result ? Py_NewRef(r->result) : PyLong_FromLong(0);
    default:
        return Py_NewRef(Py_None);
    }
}

static void req_finish(CmSqlStorageObject *s, CmSqlReq *r)
{
    CmState *st = s->st;
    if (r->held) {
        r->finished = 1;
        return;
    }
    PyObject *saved = cm_exc_take();
    if (r->kind == CM_SQL_SWEEP && r->fut == NULL) {
        s->sweeping = 0;
        if (r->error == NULL && r->result != NULL && PyLong_AsLong(r->result) >= r->limit)
            s->next_sweep = cm_sql_now() + CM_SQL_SWEEP_AGAIN;
        PyErr_Clear();
    }
    if (r->fut != NULL) {
        PyObject *v = r->error ? NULL : req_value(s, r);
        int rc;
        if (v != NULL) {
            rc = cm_future_set_result(st, r->fut, v);
            Py_DECREF(v);
        } else {
            PyObject *err = r->error ? Py_NewRef(r->error) : cm_exc_take();
            rc = cm_future_set_exception(st, r->fut, err ? err : st->SQLError);
            Py_XDECREF(err);
        }
        if (rc < 0)
            PyErr_Clear(); /* cancelled by its caller, or the loop is gone */
    }
    req_free(r);
    cm_exc_restore(saved);
}

/* ------------------------------------------------------------------ */
/* connections                                                        */

static PyObject *conn_on_read(PyObject *self, PyObject *unused);
static PyObject *conn_on_write(PyObject *self, PyObject *unused);
static PyMethodDef on_read_def = {"_on_read", conn_on_read, METH_NOARGS, NULL};
static PyMethodDef on_write_def = {"_on_write", conn_on_write, METH_NOARGS, NULL};
static void dispatch(CmSqlStorageObject *s);
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
    exc = PyObject_CallFunction(exc_type ? exc_type : s->st->SQLConnectionError, "s", msg);
    if (exc == NULL) {
        /* exc_type(msg) cannot be built (an exception type taking other
         * arguments): the connection error then */
        PyErr_Clear();
        exc = PyObject_CallFunction(s->st->SQLConnectionError, "s", msg);
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
        req_finish(s, r);
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
    cm_sql_conn_fail(c, c->storage ? c->storage->st->SQLConnectionError : NULL, buf);
    Py_XDECREF(msg);
    Py_XDECREF(exc);
}

void cm_sql_req_finish(CmSqlStorageObject *s, CmSqlReq *r) { req_finish(s, r); }

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
        req_finish(s, r);
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
    CmSqlConnObject *c = PyObject_New(CmSqlConnObject, s->st->SqlConnType);
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

static void conn_io(PyObject *self, int readable, int writable)
{
    CmSqlConnObject *c = (CmSqlConnObject *)self;
    CmSqlStorageObject *s = c->storage; // borrowed
    if (s == NULL || c->state == CM_SQL_CLOSED)
        return;
    Py_INCREF(s);
    Py_INCREF(c);
    s->drv->io(c, readable, writable);
    dispatch(s);
    Py_DECREF(c);
    Py_DECREF(s);
}

static PyObject *conn_on_read(PyObject *self, PyObject *Py_UNUSED(unused))
{
    conn_io(self, 1, 0);
    PyErr_Clear();
    Py_RETURN_NONE;
}

static PyObject *conn_on_write(PyObject *self, PyObject *Py_UNUSED(unused))
{
    conn_io(self, 0, 1);
    PyErr_Clear();
    Py_RETURN_NONE;
}

static void conn_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyType_Slot conn_slots[] = {
    {Py_tp_dealloc, conn_dealloc},
    {Py_tp_doc, "A connection of an SQL storage pool (internal)."},
    {0, NULL},
};

static PyType_Spec conn_spec = {
    .name = "cacheme._core._SqlConn",
    .basicsize = sizeof(CmSqlConnObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
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
        req_finish(s, r);
    }
    s->tail = NULL;
}

static void dispatch(CmSqlStorageObject *s)
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
            req_finish(s, first);
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
                fail_queue(s, s->st->SQLConnectionError, s->last_error,
                           "cannot connect (backing off)");
            break;
        }
        if (conn_open(s) < 0) {
            /* retrying at once would fail again (and spin): the queued
             * requests fail with the error instead */
            PyObject *exc = cm_exc_take();
            fail_queue(s, s->st->SQLConnectionError, exc, "cannot open a connection");
            Py_XDECREF(exc);
            break;
        }
    }
    s->dispatching = 0;
    schedule_tick(s);
}

static void close_all(CmSqlStorageObject *s, const char *why)
{
    while (s->nconns > 0)
        cm_sql_conn_fail(s->conns[s->nconns - 1], s->st->SQLConnectionError, why);
    fail_queue(s, s->st->SQLConnectionError, NULL, why);
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

static void enqueue(CmSqlStorageObject *s, CmSqlReq *r)
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
            cm_sql_conn_fail(c, s->st->SQLTimeoutError,
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
            cm_sql_req_error(s, r, s->st->SQLTimeoutError, "timed out waiting for a connection");
            req_finish(s, r);
            continue;
        }
        prev = r;
        pp = &r->next;
    }
    if (s->sweep_interval > 0 && !s->sweeping && s->nconns > 0 && now >= s->next_sweep) {
        CmSqlReq *r = req_new(CM_SQL_SWEEP);
        if (r != NULL) {
            r->limit = s->sweep_limit;
            r->deadline = now + (int64_t)(s->timeout * 1e9);
            s->sweeping = 1;
            s->next_sweep = now + (int64_t)(s->sweep_interval * 1e9);
            enqueue(s, r);
        }
        PyErr_Clear();
    }
    dispatch(s);
    Py_DECREF(s);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ */
/* busy polling (busypoll.h)                                          */

static PyObject *storage_on_spin(PyObject *self, PyObject *unused);
static PyMethodDef on_spin_def = {"_on_spin", storage_on_spin, METH_NOARGS, NULL};

static int any_busy(CmSqlStorageObject *s)
{
    for (Py_ssize_t i = 0; i < s->nconns; i++)
        if (s->conns[i]->state == CM_SQL_BUSY)
            return 1;
    return 0;
}

/* loop.call_soon(def bound to s); -1 (no exception) when it fails */
static int call_soon_self(CmSqlStorageObject *s, PyMethodDef *def)
{
    PyObject *cb = PyCFunction_New(def, (PyObject *)s);
    PyObject *h = cb ? cm_loop_call_soon(s->st, s->loop, cb) : NULL;
    Py_XDECREF(cb);
    if (h == NULL) {
        PyErr_Clear();
        return -1;
    }
    Py_DECREF(h);
    return 0;
}

static void schedule_spin(CmSqlStorageObject *s)
{
    /* when it cannot be scheduled, the reply comes through the loop as usual */
    if (any_busy(s) && cm_busypoll_wanted(&s->spin) && call_soon_self(s, &on_spin_def) == 0)
        cm_busypoll_scheduled(&s->spin);
}

/* The context of a spin: the storage, and for an inline wait the (held)
 * request waited for. */
typedef struct {
    CmSqlStorageObject *s;
    CmSqlReq *req;
} SpinCtx;

static int spin_collect(void *ctx, struct pollfd *fds, PyObject **objs, int max)
{
    CmSqlStorageObject *s = ((SpinCtx *)ctx)->s;
    int n = 0;
    for (Py_ssize_t i = 0; i < s->nconns && n < max; i++) {
        CmSqlConnObject *c = s->conns[i]; // borrowed
        if (c->state == CM_SQL_BUSY && c->fd >= 0 && (c->reading || c->writing))
            n = cm_busypoll_add(fds, objs, n, c->fd, c->reading, c->writing, (PyObject *)c);
    }
    return n;
}

static void spin_handle(void *ctx, PyObject *obj, short revents)
{
    (void)ctx;
    CmSqlConnObject *c = (CmSqlConnObject *)obj;
    conn_io(obj, cm_busypoll_readable(revents) && c->reading,
            cm_busypoll_writable(revents) && c->writing);
    PyErr_Clear();
}

static PyObject *storage_on_spin(PyObject *self, PyObject *Py_UNUSED(unused))
{
    SpinCtx sc = {(CmSqlStorageObject *)self, NULL};
    Py_INCREF(self);
    cm_busypoll_run(&sc.s->spin, spin_collect, spin_handle, &sc);
    Py_DECREF(self);
    Py_RETURN_NONE;
}

/* Inline waits (busypoll.h): the marker tells that the loop ran again. */
static PyObject *storage_on_marker(PyObject *self, PyObject *Py_UNUSED(unused))
{
    cm_busypoll_iterated(&((CmSqlStorageObject *)self)->spin);
    Py_RETURN_NONE;
}
static PyMethodDef on_marker_def = {"_on_marker", storage_on_marker, METH_NOARGS, NULL};

static int spin_req_done(void *ctx) { return ((SpinCtx *)ctx)->req->finished; }

/* The request r (held: see CmSqlReq) was just sent, or queued: if the loop
 * has nothing else to run, wait here until it is finished or the limit
 * passes (r->finished tells which). */
static void wait_inline(CmSqlStorageObject *s, CmSqlReq *r)
{
    int64_t now = cm_sql_now();
    if (s->queued != 0 || !any_busy(s) || !cm_busypoll_inline_ok(&s->spin, now))
        return;
    if (s->spin.inline_since == 0) {
        if (call_soon_self(s, &on_marker_def) < 0)
            return;
        s->spin.marker = 1;
        s->spin.inline_since = now;
    }
    SpinCtx sc = {s, r};
    cm_busypoll_wait(&s->spin, spin_collect, spin_handle, spin_req_done, &sc);
}

/* The awaitable of a held request that finished during submit: ready with
 * its value, or a done future with its error (awaiting it raises without
 * yielding, as for a reply that came later). Frees r. */
static PyObject *finished_result(CmSqlStorageObject *s, CmSqlReq *r, PyObject *loop)
{
    CmState *st = s->st;
    PyObject *out = NULL;
    PyObject *v = r->error ? NULL : req_value(s, r);
    if (v != NULL) {
        out = cm_ready_new(st, v);
        Py_DECREF(v);
    } else {
        PyObject *err = r->error ? Py_NewRef(r->error) : cm_exc_take();
        out = cm_loop_create_future(st, loop);
        if (out != NULL && cm_future_set_exception(st, out, err ? err : st->SQLError) < 0)
            Py_CLEAR(out);
        Py_XDECREF(err);
    }
    req_free(r);
    return out;
}

/* ------------------------------------------------------------------ */
/* the storage type                                                   */

/* The storage follows the running loop: moving to a new one closes what the
 * old one had (a test's loop, asyncio.run called again). Not when the old
 * loop is still running, in another thread: its connections and futures
 * cannot be touched from this one. */
static int bind_loop(CmSqlStorageObject *s, PyObject **loop_out)
{
    int rc = -1;
    PyObject *loop = cm_loop_running(s->st);
    if (loop == NULL)
        goto done;
    if (s->loop != loop) {
        int live = s->nconns > 0 || s->head != NULL || s->tick != NULL;
        int running = s->loop != NULL && live ? cm_loop_is_running(s->st, s->loop) : 0;
        if (running < 0)
            goto done;
        if (running) {
            PyErr_Format(PyExc_RuntimeError,
                         "cacheme %s storage: in use by an event loop running in another "
                         "thread; use one storage per thread",
                         s->drv->name);
            goto done;
        }
        if (s->loop != NULL)
            close_all(s, "the event loop changed");
        Py_XSETREF(s->loop, Py_NewRef(loop));
        cm_busypoll_follow(&s->spin, loop);
        s->retry_at = 0;
        s->backoff = 0;
    }
    *loop_out = Py_NewRef(loop);
    rc = 0;
done:
    Py_XDECREF(loop);
    return rc;
}

static int check_available(CmSqlStorageObject *s)
{
    if (s->drv->available)
        return 0;
    PyErr_Format(PyExc_RuntimeError,
                 "cacheme was built without the %s client library: install %s "
                 "(apt-get install %s) and rebuild cacheme",
                 s->drv->name, s->drv->package, s->drv->package);
    return -1;
}

/* The instance serving the running loop (netloop.h), a new reference: s, or
 * one made for that loop. Outside a loop (a sync driver called directly), s. */
static CmSqlStorageObject *storage_for(CmSqlStorageObject *s)
{
    PyObject *loop = cm_loop_running(s->st);
    if (loop == NULL) {
        if (!s->drv->sync)
            return NULL;
        PyErr_Clear();
        return (CmSqlStorageObject *)Py_NewRef(s);
    }
    PyObject *inst = cm_netloops_for(&s->loops, loop); // borrowed
    Py_DECREF(loop);
    return (CmSqlStorageObject *)Py_XNewRef(inst);
}

/* Queue the request (stolen) and return its awaitable. */
static PyObject *submit(CmSqlStorageObject *owner, CmSqlReq *r)
{
    PyObject *loop = NULL, *out = NULL;
    CmSqlStorageObject *s = storage_for(owner);
    if (s == NULL)
        goto done;
    if (s->drv->sync) {
        if (s->drv->run(s, r) < 0)
            goto done;
        if (r->fut != NULL) { /* the driver waits (sqlite: a lock) and finishes it */
            out = Py_NewRef(r->fut);
            r = NULL;
            goto done;
        }
        PyObject *v = r->error ? NULL : req_value(s, r);
        if (r->error != NULL)
            PyErr_SetObject((PyObject *)Py_TYPE(r->error), r->error);
        if (v != NULL) {
            out = cm_ready_new(s->st, v);
            Py_DECREF(v);
        }
        goto done;
    }
    if (bind_loop(s, &loop) < 0)
        goto done;
    r->deadline = cm_sql_now() + (int64_t)(s->timeout * 1e9);
    /* held until we return: whatever finishes it meanwhile (a reply read
     * inline, a connection failing in dispatch) leaves it to us */
    r->held = 1;
    enqueue(s, r);
    dispatch(s);
    if (!r->finished)
        wait_inline(s, r);
    if (r->finished) {
        out = finished_result(s, r, loop);
        r = NULL;
        goto done;
    }
    /* in flight: its future, set when it finishes. Still held while the
     * future is made (Python code, which may run a callback that finishes
     * the request): a request finished unheld without a future is freed */
    CmSqlReq *mine = r;
    r = NULL;
    PyObject *fut = cm_loop_create_future(s->st, loop);
    mine->held = 0;
    mine->fut = Py_XNewRef(fut);
    if (mine->finished)
        req_finish(s, mine); /* sets the future (if any) and frees the request */
    else if (fut != NULL)
        schedule_spin(s);
    /* without a future, it finishes unseen, like a cancelled one */
    out = fut;
done:
    if (r != NULL)
        req_free(r);
    Py_XDECREF(loop);
    Py_XDECREF(s);
    return out;
}

/* nargs == n, else a TypeError in CPython's words (its _PyArg_CheckPositional
 * is private and gone from 3.13's headers): 1 or 0 */
static int check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t n)
{
    if (nargs == n)
        return 1;
    PyErr_Format(PyExc_TypeError, "%s expected %zd arguments, got %zd", name, n, nargs);
    return 0;
}

/* Refuse a key the table cannot hold as it is (SQLKeyError, a ValueError
 * naming the key): one that UTF-8 cannot encode (a lone surrogate), one
 * with NUL where the key column cannot hold it, one longer than the key
 * column. Stored otherwise, it would be truncated or rejected by the server
 * on every request: a permanent miss, or another key's row. */
static int check_key(CmSqlStorageObject *s, PyObject *key)
{
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(key, &n);
    if (p == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
            return -1;
        PyErr_Clear();
        PyErr_Format(s->st->SQLKeyError,
                     "cacheme %s storage: key %R cannot be stored: it holds a lone surrogate, "
                     "which UTF-8 cannot encode (keys must be valid Unicode text)",
                     s->drv->name, key);
        return -1;
    }
    if (!s->drv->key_nul && memchr(p, '\0', (size_t)n) != NULL) {
        PyErr_Format(s->st->SQLKeyError,
                     "cacheme %s storage: key %R cannot be stored: it holds a NUL character "
                     "('\\x00'), which the key column (text) cannot hold",
                     s->drv->name, key);
        return -1;
    }
    Py_ssize_t len = PyUnicode_GET_LENGTH(key);
    if (s->drv->key_max > 0 && len > s->drv->key_max) {
        PyObject *head = PyUnicode_Substring(key, 0, 40);
        if (head == NULL)
            return -1;
        PyErr_Format(s->st->SQLKeyError,
                     "cacheme %s storage: key %R... is %zd characters long, longer than the key "
                     "column's limit of %zd characters (VARCHAR(%zd)); use a shorter key()",
                     s->drv->name, head, len, s->drv->key_max, s->drv->key_max);
        Py_DECREF(head);
        return -1;
    }
    return 0;
}

/* The full key of a node, checked (check_key); new reference. */
static PyObject *key_of(CmSqlStorageObject *s, PyObject *node)
{
    PyObject *key = cm_key_of_node(s->st, node);
    if (key != NULL && check_key(s, key) < 0)
        Py_CLEAR(key);
    return key;
}

static PyObject *storage_get(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    if (!check_nargs("get", nargs, 2) || check_available(s) < 0)
        return NULL;
    CmSqlReq *r = req_new(CM_SQL_GET);
    if (r == NULL)
        return NULL;
    r->ser = Py_NewRef(args[1]);
    if ((r->key = key_of(s, args[0])) == NULL) {
        req_free(r);
        return NULL;
    }
    return submit(s, r);
}

static PyObject *storage_get_all(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    PyObject *seq = NULL;
    if (!check_nargs("get_all", nargs, 2) || check_available(s) < 0)
        return NULL;
    CmSqlReq *r = req_new(CM_SQL_GET_ALL);
    if (r == NULL)
        return NULL;
    r->ser = Py_NewRef(args[1]);
    /* a tuple: full_key() may change a list passed in while we walk it */
    if ((seq = PySequence_Tuple(args[0])) == NULL)
        goto fail;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    if ((r->keys = PyList_New(n)) == NULL || (r->nodes = PyList_New(n)) == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *node = PyTuple_GET_ITEM(seq, i); // borrowed
        PyObject *key = key_of(s, node);
        if (key == NULL)
            goto fail;
        PyList_SET_ITEM(r->keys, i, key);
        PyList_SET_ITEM(r->nodes, i, Py_NewRef(node));
    }
    Py_DECREF(seq);
    if (n == 0) {
        req_free(r);
        PyObject *empty = PyList_New(0);
        PyObject *out = empty ? cm_ready_new(s->st, empty) : NULL;
        Py_XDECREF(empty);
        return out;
    }
    return submit(s, r);
fail:
    Py_XDECREF(seq);
    req_free(r);
    return NULL;
}

/* the TTL in seconds, -1 for none (core/ttl.h's rule) */
static int parse_ttl(CmSqlStorageObject *s, PyObject *ttl, double *out)
{
    *out = cm_ttl_seconds(s->st, ttl);
    return *out == -2.0 ? -1 : 0;
}

static PyObject *storage_set(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    if (!check_nargs("set", nargs, 4) || check_available(s) < 0)
        return NULL;
    CmSqlReq *r = req_new(CM_SQL_SET);
    if (r == NULL)
        return NULL;
    if ((r->key = key_of(s, args[0])) == NULL || (r->value = encode(s, args[3], args[1])) == NULL ||
        parse_ttl(s, args[2], &r->ttl) < 0) {
        req_free(r);
        return NULL;
    }
    return submit(s, r);
}

static PyObject *storage_set_all(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    PyObject *seq = NULL, *index = NULL;
    if (!check_nargs("set_all", nargs, 3) || check_available(s) < 0)
        return NULL;
    CmSqlReq *r = req_new(CM_SQL_SET_ALL);
    if (r == NULL)
        return NULL;
    if (parse_ttl(s, args[1], &r->ttl) < 0 || (seq = PySequence_Tuple(args[0])) == NULL ||
        (r->keys = PyList_New(0)) == NULL || (r->values = PyList_New(0)) == NULL ||
        (index = PyDict_New()) == NULL)
        goto fail;
    /* a tuple (see get_all), whose items hold the (node, value) pairs alive */
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(seq); i++) {
        PyObject *item = PyTuple_GET_ITEM(seq, i); // borrowed
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "set_all: data must be a sequence of (node, value)");
            goto fail;
        }
        PyObject *key = key_of(s, PyTuple_GET_ITEM(item, 0));
        PyObject *val = key ? encode(s, args[2], PyTuple_GET_ITEM(item, 1)) : NULL;
        PyObject *at = val ? PyDict_GetItemWithError(index, key) : NULL; // borrowed
        int rc = -1;
        if (val != NULL && at != NULL) {
            /* the same key twice: the last value wins (one upsert per key) */
            rc = PyList_SetItem(r->values, PyLong_AsSsize_t(at), Py_NewRef(val));
        } else if (val != NULL && !PyErr_Occurred()) {
            PyObject *pos = PyLong_FromSsize_t(PyList_GET_SIZE(r->keys));
            rc = pos && PyDict_SetItem(index, key, pos) == 0 && PyList_Append(r->keys, key) == 0 &&
                         PyList_Append(r->values, val) == 0
                     ? 0
                     : -1;
            Py_XDECREF(pos);
        }
        Py_XDECREF(key);
        Py_XDECREF(val);
        if (rc < 0)
            goto fail;
    }
    Py_CLEAR(seq);
    Py_CLEAR(index);
    if (PyList_GET_SIZE(r->keys) == 0) {
        req_free(r);
        return cm_ready_new(s->st, Py_None);
    }
    return submit(s, r);
fail:
    Py_XDECREF(seq);
    Py_XDECREF(index);
    req_free(r);
    return NULL;
}

static PyObject *storage_remove(PyObject *self, PyObject *node)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    if (check_available(s) < 0)
        return NULL;
    CmSqlReq *r = req_new(CM_SQL_DEL);
    if (r == NULL)
        return NULL;
    if ((r->key = key_of(s, node)) == NULL) {
        req_free(r);
        return NULL;
    }
    return submit(s, r);
}

/* Raw-key forms for 0.3.0's get_by_key/remove_by_key/set_by_key. */
static PyObject *storage_key_req(CmSqlStorageObject *s, int kind, PyObject *key, PyObject *value,
                                 PyObject *ttl)
{
    if (check_available(s) < 0)
        return NULL;
    if (!PyUnicode_Check(key)) {
        PyErr_Format(PyExc_TypeError, "key must be str, not %.100s", Py_TYPE(key)->tp_name);
        return NULL;
    }
    CmSqlReq *r = req_new(kind);
    if (r == NULL)
        return NULL;
    r->key = Py_NewRef(key);
    r->ser = Py_NewRef(Py_None);
    if (check_key(s, key) < 0 ||
        (value != NULL && ((r->value = cm_envelope_encode(s->st, CM_ENVELOPE_BARE, Py_None, value,
                                                          s->drv->name)) == NULL ||
                           parse_ttl(s, ttl, &r->ttl) < 0))) {
        req_free(r);
        return NULL;
    }
    return submit(s, r);
}

static PyObject *storage_get_by_key(PyObject *self, PyObject *key)
{
    return storage_key_req((CmSqlStorageObject *)self, CM_SQL_GET, key, NULL, NULL);
}

static PyObject *storage_remove_by_key(PyObject *self, PyObject *key)
{
    return storage_key_req((CmSqlStorageObject *)self, CM_SQL_DEL, key, NULL, NULL);
}

static PyObject *storage_set_by_key(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("set_by_key", nargs, 3))
        return NULL;
    return storage_key_req((CmSqlStorageObject *)self, CM_SQL_SET, args[0], args[1], args[2]);
}

static PyObject *storage_execute(PyObject *self, PyObject *sql)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    if (check_available(s) < 0)
        return NULL;
    if (!PyUnicode_Check(sql)) {
        PyErr_SetString(PyExc_TypeError, "execute: sql must be str");
        return NULL;
    }
    CmSqlReq *r = req_new(CM_SQL_EXEC);
    if (r == NULL)
        return NULL;
    r->key = Py_NewRef(sql);
    return submit(s, r);
}

static PyObject *storage_ping(PyObject *self, PyObject *Py_UNUSED(unused))
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    if (check_available(s) < 0)
        return NULL;
    CmSqlReq *r = req_new(CM_SQL_PING);
    return r ? submit(s, r) : NULL;
}

static PyObject *storage_sweep(PyObject *self, PyObject *arg)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    long limit = PyLong_AsLong(arg);
    if ((limit == -1 && PyErr_Occurred()) || check_available(s) < 0)
        return NULL;
    CmSqlReq *r = req_new(CM_SQL_SWEEP);
    if (r == NULL)
        return NULL;
    r->limit = limit;
    return submit(s, r);
}

static PyObject *storage_close_now(PyObject *self, PyObject *Py_UNUSED(unused))
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    close_all(s, "storage closed");
    if (s->drv->teardown != NULL)
        s->drv->teardown(s);
    cm_netloops_clear(&s->loops);
    Py_RETURN_NONE;
}

static PyObject *storage_pool_info(PyObject *self, PyObject *Py_UNUSED(unused))
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    Py_ssize_t idle = 0, busy = 0, connecting = 0;
    for (Py_ssize_t i = 0; i < s->nconns; i++) {
        int state = s->conns[i]->state;
        idle += state == CM_SQL_IDLE;
        busy += state == CM_SQL_BUSY;
        connecting += state == CM_SQL_CONNECTING;
    }
    return Py_BuildValue("{sn,sn,sn,sn,sd,sn,sn,sn}", "idle", idle, "busy", busy, "connecting",
                         connecting, "queued", s->queued, "busy_poll", s->spin.limit,
                         "busy_poll_hits", s->spin.hits, "busy_poll_timeouts", s->spin.misses,
                         "busy_poll_inline", s->spin.inlined);
}

/* identifier, or schema.identifier: letters, digits, underscores */
static int valid_identifier(const char *p, Py_ssize_t n)
{
    int part = 0, parts = 1;
    if (n == 0)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        char ch = p[i];
        if (ch == '.') {
            if (part == 0 || ++parts > 2)
                return 0;
            part = 0;
            continue;
        }
        int alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
        int digit = ch >= '0' && ch <= '9';
        if (!(alpha || (digit && part > 0)) || ++part > 63)
            return 0;
    }
    return part > 0;
}

static int storage_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {
        "dsn",         "table",   "pool_size", "timeout", "connect_timeout", "sweep_interval",
        "sweep_limit", "options", "busy_poll", NULL};
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    PyObject *dsn, *table, *options = NULL;
    Py_ssize_t pool_size = 10;
    double timeout = 5.0, connect_timeout = 5.0, sweep_interval = 60.0;
    long sweep_limit = 1000;
    PyObject *busy_poll = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "UU|$ndddlO!O:SQLClient", kwlist, &dsn, &table,
                                     &pool_size, &timeout, &connect_timeout, &sweep_interval,
                                     &sweep_limit, &PyDict_Type, &options, &busy_poll))
        return -1;
    double spin;
    if (cm_busypoll_parse(busy_poll, &spin) < 0)
        return -1;
    Py_ssize_t tn;
    const char *tp = PyUnicode_AsUTF8AndSize(table, &tn);
    if (tp == NULL)
        return -1;
    if (!valid_identifier(tp, tn)) {
        PyErr_Format(PyExc_ValueError,
                     "invalid table name %R: use an SQL identifier (letters, digits, "
                     "underscores; optionally schema.table)",
                     table);
        return -1;
    }
    if (pool_size < 1) {
        PyErr_Format(PyExc_ValueError, "cacheme %s storage: pool_size must be at least 1, not %zd",
                     s->drv->name, pool_size);
        return -1;
    }
    /* every wait has a finite timeout; the sweep runs every so often or never */
    const struct {
        const char *name;
        double v;
        int zero_ok;
    } secs[] = {{"timeout", timeout, 0},
                {"connect_timeout", connect_timeout, 0},
                {"sweep_interval", sweep_interval, 1}};
    for (size_t i = 0; i < sizeof(secs) / sizeof(secs[0]); i++) {
        double v = secs[i].v;
        if (!isfinite(v) || v < 0 || (v == 0 && !secs[i].zero_ok) || v > CM_TTL_MAX_SECONDS) {
            PyObject *f = PyFloat_FromDouble(v);
            if (f != NULL)
                PyErr_Format(PyExc_ValueError,
                             "cacheme %s storage: %s must be a finite number of seconds %s, "
                             "not %R",
                             s->drv->name, secs[i].name,
                             secs[i].zero_ok ? ">= 0 (0 disables the sweep)" : "> 0", f);
            Py_XDECREF(f);
            return -1;
        }
    }
    if (sweep_limit < 1) {
        PyErr_Format(PyExc_ValueError,
                     "cacheme %s storage: sweep_limit must be at least 1 row, not %ld",
                     s->drv->name, sweep_limit);
        return -1;
    }
    if (check_available(s) < 0)
        return -1;
    close_all(s, "storage re-initialized");
    if (s->drv->teardown != NULL)
        s->drv->teardown(s);
    Py_XSETREF(s->dsn, Py_NewRef(dsn));
    Py_XSETREF(s->table, Py_NewRef(table));
    Py_XSETREF(s->options, options ? PyDict_Copy(options) : PyDict_New());
    if (s->options == NULL)
        return -1;
    s->pool_size = pool_size;
    s->timeout = timeout;
    s->connect_timeout = connect_timeout;
    s->sweep_interval = sweep_interval;
    s->sweep_limit = sweep_limit;
    s->spin.limit = spin;
    s->next_sweep = cm_sql_now() + (int64_t)(sweep_interval * 1e9);
    Py_XSETREF(s->init_args, Py_NewRef(args));
    Py_XSETREF(s->init_kwds, kwds ? PyDict_Copy(kwds) : NULL);
    if (kwds != NULL && s->init_kwds == NULL)
        return -1;
    cm_netloops_clear(&s->loops);
    if (s->drv->setup != NULL && s->drv->setup(s) < 0)
        return -1;
    return 0;
}

static int storage_traverse(PyObject *self, visitproc visit, void *arg)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(s->loop);
    Py_VISIT(s->tick);
    Py_VISIT(s->last_error);
    Py_VISIT(s->init_args);
    Py_VISIT(s->init_kwds);
    int rc = cm_netloops_traverse(&s->loops, visit, arg);
    return rc ? rc : cm_busypoll_traverse(&s->spin, visit, arg);
}

static int storage_clear(PyObject *self)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    /* a pending tick holds the storage: here it is gone or its loop is */
    Py_CLEAR(s->tick);
    cm_netloops_clear(&s->loops);
    Py_CLEAR(s->init_args);
    Py_CLEAR(s->init_kwds);
    close_all(s, "storage deleted");
    Py_CLEAR(s->loop);
    Py_CLEAR(s->last_error);
    cm_busypoll_clear(&s->spin);
    return 0;
}

static void storage_dealloc(PyObject *self)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (s->weakreflist != NULL)
        PyObject_ClearWeakRefs(self);
    storage_clear(self);
    cm_netloops_fini(&s->loops);
    if (s->drv != NULL && s->drv->teardown != NULL)
        s->drv->teardown(s);
    free(s->conns);
    Py_CLEAR(s->table);
    Py_CLEAR(s->dsn);
    Py_CLEAR(s->options);
    tp->tp_free(self);
    Py_DECREF(tp);
}

/* netloop.h: an instance for another loop is the driver's own type made
 * from the same arguments. */
static PyObject *storage_spawn(PyObject *owner)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)owner;
    CmState *st = s->st;
    PyObject *tp = s->drv == &cm_pg_driver      ? st->PgClientType
                   : s->drv == &cm_mysql_driver ? st->MySQLClientType
                                                : st->SQLiteClientType;
    if (s->init_args == NULL) {
        PyErr_Format(st->SQLError, "cacheme %s storage: not initialised", s->drv->name);
        return NULL;
    }
    return PyObject_Call(tp, s->init_args, s->init_kwds);
}

/* Close every connection and fail what waits, without touching the loop
 * (closed, gone, or the parent's after fork): nothing is unregistered, the
 * tick is dropped uncancelled. fork: each socket is first pointed at
 * /dev/null, so the driver's goodbye (libpq's Terminate, MariaDB's
 * COM_QUIT) and close never reach the parent's connection. */
static void storage_drop_detached(CmSqlStorageObject *s, int fork, const char *why)
{
    Py_INCREF(s);
    for (Py_ssize_t i = 0; i < s->nconns; i++) {
        CmSqlConnObject *c = s->conns[i]; // borrowed
        c->reading = c->writing = 0;
        if (fork)
            cm_net_fork_fd(c->fd);
    }
    Py_CLEAR(s->tick);
    close_all(s, why);
    Py_CLEAR(s->loop);
    s->retry_at = 0;
    s->backoff = 0;
    Py_DECREF(s);
}

static void storage_forked(PyObject *inst)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)inst;
    storage_drop_detached(s, 1, "inherited over fork");
    if (s->drv->sync && s->h != NULL) {
        /* SQLite: a connection must not be used, nor closed, across fork
         * (its locks and WAL state are the parent's): left as it is, and
         * the child opens its own */
        s->h = NULL;
        if (s->drv->setup != NULL && s->drv->setup(s) < 0)
            PyErr_WriteUnraisable(inst);
    }
}

static void storage_orphan(PyObject *inst)
{
    storage_drop_detached((CmSqlStorageObject *)inst, 0, "the event loop was closed");
}

static const CmNetKind storage_net_kind = {storage_spawn, storage_forked, storage_orphan};

static PyObject *storage_new_with(PyTypeObject *tp, const CmSqlDriver *drv)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)tp->tp_alloc(tp, 0);
    if (s == NULL)
        return NULL;
    s->st = cm_state_from_type(tp);
    if (s->st == NULL) {
        Py_DECREF(s);
        return NULL;
    }
    s->drv = drv;
    s->pool_size = 10;
    s->timeout = s->connect_timeout = 5.0;
    cm_netloops_init(&s->loops, s->st, &storage_net_kind, (PyObject *)s);
    return (PyObject *)s;
}

static PyObject *pg_new(PyTypeObject *tp, PyObject *a, PyObject *k)
{
    (void)a, (void)k;
    return storage_new_with(tp, &cm_pg_driver);
}
static PyObject *mysql_new(PyTypeObject *tp, PyObject *a, PyObject *k)
{
    (void)a, (void)k;
    return storage_new_with(tp, &cm_mysql_driver);
}
static PyObject *sqlite_new(PyTypeObject *tp, PyObject *a, PyObject *k)
{
    (void)a, (void)k;
    return storage_new_with(tp, &cm_sqlite_driver);
}

static PyObject *storage_get_available(PyObject *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(((CmSqlStorageObject *)self)->drv->available);
}

static PyMethodDef storage_methods[] = {
    {"get", (PyCFunction)(void (*)(void))storage_get, METH_FASTCALL,
     "get(node, serializer): awaitable of the cached value or cacheme.models.sentinel"},
    {"get_all", (PyCFunction)(void (*)(void))storage_get_all, METH_FASTCALL,
     "get_all(nodes, serializer): awaitable of [(node, value)] found, in one query"},
    {"set", (PyCFunction)(void (*)(void))storage_set, METH_FASTCALL,
     "set(node, value, ttl, serializer): awaitable upsert"},
    {"set_all", (PyCFunction)(void (*)(void))storage_set_all, METH_FASTCALL,
     "set_all([(node, value)], ttl, serializer): awaitable multi-row upsert, one round trip"},
    {"remove", storage_remove, METH_O, "remove(node): awaitable delete"},
    {"get_by_key", storage_get_by_key, METH_O, "get_by_key(key): raw value or sentinel"},
    {"remove_by_key", storage_remove_by_key, METH_O, "remove_by_key(key)"},
    {"set_by_key", (PyCFunction)(void (*)(void))storage_set_by_key, METH_FASTCALL,
     "set_by_key(key, raw_bytes, ttl)"},
    {"execute", storage_execute, METH_O, "execute(sql): run one statement without parameters"},
    {"_ping", storage_ping, METH_NOARGS, "awaitable done when a connection is ready"},
    {"sweep", storage_sweep, METH_O, "sweep(limit): delete up to limit expired rows; count"},
    {"close_now", storage_close_now, METH_NOARGS, "close every connection"},
    {"pool_info", storage_pool_info, METH_NOARGS, "connections by state, and queued requests"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef storage_getset[] = {
    {"library_available", storage_get_available, NULL,
     "whether the client library was found at build time", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef storage_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(CmSqlStorageObject, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

#define CM_SQL_SLOTS(NEW, DOC)                                                                     \
    {Py_tp_new, NEW}, {Py_tp_init, storage_init}, {Py_tp_methods, storage_methods},                \
        {Py_tp_getset, storage_getset}, {Py_tp_members, storage_members},                          \
        {Py_tp_traverse, storage_traverse}, {Py_tp_clear, storage_clear},                          \
        {Py_tp_dealloc, storage_dealloc}, {Py_tp_doc, DOC}, {0, NULL},

static PyType_Slot pg_slots[] = {CM_SQL_SLOTS(
    pg_new, "PgClient(dsn, table, *, pool_size, timeout, connect_timeout, sweep_interval, "
            "sweep_limit, options): PostgreSQL storage on libpq's asynchronous API")};
static PyType_Slot mysql_slots[] = {CM_SQL_SLOTS(
    mysql_new, "MySQLClient(dsn, table, *, pool_size, timeout, connect_timeout, sweep_interval, "
               "sweep_limit, options): MySQL/MariaDB storage on MariaDB Connector/C's "
               "non-blocking API")};
static PyType_Slot sqlite_slots[] = {CM_SQL_SLOTS(
    sqlite_new, "SQLiteClient(path, table, *, timeout, sweep_interval, sweep_limit, options): "
                "SQLite storage (WAL), statements run inline")};

#define CM_SQL_SPEC(NAME, SLOTS)                                                                   \
    {                                                                                              \
        .name = "cacheme._core." NAME, .basicsize = sizeof(CmSqlStorageObject),                    \
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, .slots = SLOTS     \
    }

static PyType_Spec pg_spec = CM_SQL_SPEC("PgClient", pg_slots);
static PyType_Spec mysql_spec = CM_SQL_SPEC("MySQLClient", mysql_slots);
static PyType_Spec sqlite_spec = CM_SQL_SPEC("SQLiteClient", sqlite_slots);

static PyObject *add_type(PyObject *mod, PyType_Spec *spec)
{
    PyObject *tp = PyType_FromModuleAndSpec(mod, spec, NULL);
    if (tp != NULL && PyModule_AddType(mod, (PyTypeObject *)tp) < 0)
        Py_CLEAR(tp);
    return tp;
}

static PyObject *add_error(PyObject *mod, const char *name, PyObject *bases, const char *doc)
{
    char full[64];
    snprintf(full, sizeof(full), "cacheme._core.%s", name);
    PyObject *e = PyErr_NewExceptionWithDoc(full, doc, bases, NULL);
    if (e != NULL && PyModule_AddObjectRef(mod, name, e) < 0)
        Py_CLEAR(e);
    return e;
}

int cm_sql_init(PyObject *mod, CmState *st)
{
    int rc = -1;
    PyObject *bases = NULL;
    if ((st->SqlConnType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &conn_spec, NULL)) ==
            NULL ||
        (st->PgClientType = add_type(mod, &pg_spec)) == NULL ||
        (st->MySQLClientType = add_type(mod, &mysql_spec)) == NULL ||
        (st->SQLiteClientType = add_type(mod, &sqlite_spec)) == NULL)
        goto done;
    if ((st->SQLError = add_error(mod, "SQLError", NULL, "An SQL storage failed.")) == NULL)
        goto done;
    if ((bases = PyTuple_Pack(2, st->SQLError, PyExc_ConnectionError)) == NULL ||
        (st->SQLConnectionError = add_error(mod, "SQLConnectionError", bases,
                                            "The SQL server cannot be reached.")) == NULL)
        goto done;
    Py_SETREF(bases, PyTuple_Pack(2, st->SQLError, PyExc_TimeoutError));
    if (bases == NULL ||
        (st->SQLTimeoutError = add_error(mod, "SQLTimeoutError", bases,
                                         "An SQL request or connect timed out.")) == NULL)
        goto done;
    if ((st->SQLTableError = add_error(mod, "SQLTableError", st->SQLError,
                                       "The storage table does not exist.")) == NULL)
        goto done;
    /* the base of SQLKeyError and the Redis storage's error for the same:
     * a flight raises it to its caller instead of counting a miss */
    if ((st->StorageKeyError =
             add_error(mod, "StorageKeyError", PyExc_ValueError,
                       "A key a remote storage cannot hold as it is: raised to the caller of get, "
                       "get_all and invalidate, never a silent miss.")) == NULL)
        goto done;
    Py_SETREF(bases, PyTuple_Pack(2, st->SQLError, st->StorageKeyError));
    if (bases == NULL ||
        (st->SQLKeyError = add_error(mod, "SQLKeyError", bases,
                                     "A key the table cannot hold as it is (NUL, a lone "
                                     "surrogate, longer than the key column): raised to the "
                                     "caller, never a silent miss.")) == NULL)
        goto done;
    rc = 0;
done:
    Py_XDECREF(bases);
    return rc;
}

int cm_sql_traverse(CmState *st, visitproc visit, void *arg)
{
    Py_VISIT(st->SqlConnType);
#define CM_SQL_VISIT(n) Py_VISIT(st->n);
    CM_SQL_OBJECTS(CM_SQL_VISIT)
#undef CM_SQL_VISIT
    return 0;
}

void cm_sql_clear(CmState *st)
{
    Py_CLEAR(st->SqlConnType);
#define CM_SQL_CLEAR(n) Py_CLEAR(st->n);
    CM_SQL_OBJECTS(CM_SQL_CLEAR)
#undef CM_SQL_CLEAR
}

/* ---- requests of a flight's call (sql/remote.c, flight/remote.h) ---------- */

/* What submit does for a request whose future is `waiter`, up to where it
 * would make a future: the request stays held (cm_sql_req_release). */
static CmSqlReq *submit_held(CmSqlStorageObject *owner, CmSqlReq *r, PyObject *waiter,
                             CmSqlStorageObject **inst)
{
    PyObject *loop = NULL;
    CmSqlStorageObject *s = storage_for(owner);
    if (s != NULL && s->drv->sync) {
        PyErr_Format(PyExc_SystemError, "cacheme %s storage: no held requests", s->drv->name);
        Py_CLEAR(s);
    }
    if (s == NULL || bind_loop(s, &loop) < 0) {
        Py_XDECREF(s);
        req_free(r);
        return NULL;
    }
    Py_DECREF(loop);
    r->deadline = cm_sql_now() + (int64_t)(s->timeout * 1e9);
    r->held = 1;
    r->fut = Py_NewRef(waiter);
    enqueue(s, r);
    dispatch(s);
    if (!r->finished)
        wait_inline(s, r);
    *inst = s;
    return r;
}

CmSqlReq *cm_sql_get_for(PyObject *storage, PyObject *node, PyObject *ser, PyObject *waiter,
                         CmSqlStorageObject **inst)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)storage;
    if (check_available(s) < 0)
        return NULL;
    CmSqlReq *r = req_new(CM_SQL_GET);
    if (r == NULL)
        return NULL;
    r->ser = Py_NewRef(ser);
    if ((r->key = key_of(s, node)) == NULL) {
        req_free(r);
        return NULL;
    }
    return submit_held(s, r, waiter, inst);
}

CmSqlReq *cm_sql_set_for(PyObject *storage, PyObject *node, PyObject *value, PyObject *ttl,
                         PyObject *ser, PyObject *waiter, CmSqlStorageObject **inst)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)storage;
    if (check_available(s) < 0)
        return NULL;
    CmSqlReq *r = req_new(CM_SQL_SET);
    if (r == NULL)
        return NULL;
    if ((r->key = key_of(s, node)) == NULL || (r->value = encode(s, ser, value)) == NULL ||
        parse_ttl(s, ttl, &r->ttl) < 0) {
        req_free(r);
        return NULL;
    }
    return submit_held(s, r, waiter, inst);
}

void cm_sql_req_release(CmSqlStorageObject *inst, CmSqlReq *r)
{
    r->held = 0;
    if (r->finished)
        req_finish(inst, r);
    else
        schedule_spin(inst);
}
/* ---- end of the requests of a flight's call ---- */
