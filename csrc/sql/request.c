/* SQL requests: what a storage call becomes (see request.h), the errors and
 * rows a driver puts in it, and finishing it (its value decoded, its future
 * set). */
#include "sql/sqlstore.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "base/exc.h"
#include "loop/loop.h"
#include "ser/envelope.h"

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

CmSqlReq *cm_sql_req_new(int kind)
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

void cm_sql_req_free(CmSqlReq *r)
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

int cm_sql_req_traverse(CmSqlReq *r, visitproc visit, void *arg)
{
    for (; r != NULL; r = r->next) {
        Py_VISIT(r->fut);
        Py_VISIT(r->ser);
        Py_VISIT(r->key);
        Py_VISIT(r->keys);
        Py_VISIT(r->nodes);
        Py_VISIT(r->value);
        Py_VISIT(r->values);
        Py_VISIT(r->result);
        Py_VISIT(r->error);
    }
    return 0;
}

void cm_sql_req_error(CmSqlStorageObject *s, CmSqlReq *r, PyObject *exc_type, const char *msg)
{
    PyObject *saved = cm_exc_take();
    if (r->error == NULL) {
        r->error = PyObject_CallFunction(exc_type ? exc_type : s->st->sql.SQLError, "s", msg);
        if (r->error == NULL)
            r->error = cm_exc_take();
    }
    PyErr_Clear();
    cm_exc_restore(saved);
}

static int missing_table_error(CmSqlStorageObject *s, PyObject **out)
{
    *out = PyObject_CallFunction(
        s->st->sql.SQLTableError, "N",
        PyUnicode_FromFormat(
            "cacheme %s storage: table '%U' does not exist; create it with the DDL in "
            "cacheme/storages/scripts/%s.sql (table name replaced) or pass create_table=True",
            s->drv->name, s->table, s->drv->name));
    return *out ? 0 : -1;
}

void cm_sql_req_error_sql(CmSqlStorageObject *s, CmSqlReq *r, int missing_table, const char *msg)
{
    if (!missing_table) {
        cm_sql_req_error(s, r, s->st->sql.SQLError, msg);
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

void cm_sql_batch_error(CmSqlStorageObject *s, CmSqlReq *b, PyObject *exc_type, const char *msg)
{
    for (CmSqlReq *r = b; r != NULL; r = r->next)
        cm_sql_req_error(s, r, exc_type, msg);
}

void cm_sql_batch_error_sql(CmSqlStorageObject *s, CmSqlReq *b, int missing_table, const char *msg)
{
    for (CmSqlReq *r = b; r != NULL; r = r->next)
        cm_sql_req_error_sql(s, r, missing_table, msg);
}

void cm_sql_batch_error_pending(CmSqlStorageObject *s, CmSqlReq *b)
{
    PyObject *exc = cm_exc_take();
    PyObject *msg = exc ? PyObject_Str(exc) : NULL;
    const char *m = msg ? PyUnicode_AsUTF8(msg) : NULL;
    char buf[128];
    if (m == NULL) {
        PyErr_Clear();
        snprintf(buf, sizeof(buf), "%s: bad request", s->drv->name);
        m = buf;
    }
    cm_sql_batch_error(s, b, exc ? (PyObject *)Py_TYPE(exc) : s->st->sql.SQLError, m);
    Py_XDECREF(msg);
    Py_XDECREF(exc);
}

void cm_sql_split_rows(CmSqlReq *b)
{
    PyObject *found = b->result; /* the dict, owned by the first request */
    if (found == NULL)
        return;
    b->result = NULL;
    for (CmSqlReq *r = b; r != NULL; r = r->next) {
        PyObject *v = PyDict_GetItemWithError(found, r->key); // borrowed
        Py_XSETREF(r->result, Py_XNewRef(v));
    }
    PyErr_Clear(); /* a key that cannot be looked up is a miss */
    Py_DECREF(found);
}

/* serializer.loads(raw), or raw without a serializer; new reference. */
static PyObject *decode(CmState *st, PyObject *ser, PyObject *raw)
{
    return cm_envelope_decode(st, CM_ENVELOPE_BARE, ser, raw, st->sql.SQLError, "SQL");
}

PyObject *cm_sql_req_value(CmSqlStorageObject *s, CmSqlReq *r)
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

void cm_sql_req_finish(CmSqlStorageObject *s, CmSqlReq *r)
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
    if (r->aged && r->error == NULL)
        cm_sql_flight_age(r);
    if (r->fut != NULL) {
        PyObject *v = r->error ? NULL : cm_sql_req_value(s, r);
        int rc;
        if (v != NULL) {
            rc = cm_future_set_result(st, r->fut, v);
            Py_DECREF(v);
        } else {
            PyObject *err = r->error ? Py_NewRef(r->error) : cm_exc_take();
            rc = cm_future_set_exception(st, r->fut, err ? err : st->sql.SQLError);
            Py_XDECREF(err);
        }
        if (rc < 0)
            PyErr_Clear(); /* cancelled by its caller, or the loop is gone */
    }
    cm_sql_req_free(r);
    cm_exc_restore(saved);
}
