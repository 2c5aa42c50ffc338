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

int64_t cm_sql_civil_us(int64_t year, int month, int day, int hour, int minute, int second,
                        int64_t us)
{
    /* days since 1970-01-01: years from March (the leap day last), in eras of 400 years */
    int64_t y = year - (month <= 2);
    int64_t era = (y >= 0 ? y : y - 399) / 400, yoe = y - era * 400;
    int64_t doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
    int64_t days = era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
    return ((days * 24 + hour) * 60 + minute) * 60000000LL + (int64_t)second * 1000000LL + us;
}

/* n decimal digits at p (n <= 9), or -1. */
static int64_t digits(const char *p, int n)
{
    int64_t v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

int64_t cm_sql_parse_utc_us(const char *t, size_t n)
{
    if (t == NULL || n < 19 || t[4] != '-' || t[7] != '-' || (t[10] != ' ' && t[10] != 'T') ||
        t[13] != ':' || t[16] != ':')
        return 0;
    int64_t year = digits(t, 4), mon = digits(t + 5, 2), day = digits(t + 8, 2);
    int64_t hour = digits(t + 11, 2), min = digits(t + 14, 2), sec = digits(t + 17, 2);
    if (year < 1970 || mon < 1 || mon > 12 || day < 1 || day > 31 || hour < 0 || hour > 23 ||
        min < 0 || min > 59 || sec < 0 || sec > 60)
        return 0;
    size_t i = 19;
    int64_t us = 0;
    if (i < n && t[i] == '.') {
        int k = 0;
        for (i++; i < n && t[i] >= '0' && t[i] <= '9'; i++, k++)
            if (k < 6)
                us = us * 10 + (t[i] - '0');
        if (k == 0)
            return 0;
        for (; k < 6; k++)
            us *= 10;
    }
    int64_t off = 0;
    if (i < n && t[i] == 'Z') {
        i++;
    } else if (i < n && (t[i] == '+' || t[i] == '-')) {
        int64_t oh = i + 6 <= n && t[i + 3] == ':' ? digits(t + i + 1, 2) : -1;
        int64_t om = oh >= 0 ? digits(t + i + 4, 2) : -1;
        if (om < 0)
            return 0;
        off = (oh * 60 + om) * 60000000LL * (t[i] == '-' ? -1 : 1);
        i += 6;
    }
    if (i != n)
        return 0;
    int64_t v = cm_sql_civil_us(year, (int)mon, (int)day, (int)hour, (int)min, (int)sec, us) - off;
    return v > 0 ? v : 0;
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
    Py_XDECREF(r->ages);
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
        Py_VISIT(r->ages);
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

int cm_sql_chain_aged(const CmSqlReq *b)
{
    for (; b != NULL; b = b->next)
        if (b->aged)
            return 1;
    return 0;
}

int cm_sql_result_put(CmSqlReq *r, const char *key, size_t klen, PyObject *raw, int64_t updated_us)
{
    int rc = -1;
    PyObject *k = NULL, *age = NULL;
    if (raw == NULL)
        return -1;
    if (r->result == NULL && (r->result = PyDict_New()) == NULL)
        goto done;
    if ((k = PyUnicode_DecodeUTF8(key, (Py_ssize_t)klen, "surrogateescape")) == NULL)
        goto done;
    if (PyDict_SetItem(r->result, k, raw) < 0)
        goto done;
    if (updated_us > 0) {
        if (r->ages == NULL && (r->ages = PyDict_New()) == NULL)
            goto done;
        if ((age = PyLong_FromLongLong(updated_us)) == NULL || PyDict_SetItem(r->ages, k, age) < 0)
            goto done;
    }
    rc = 0;
done:
    Py_XDECREF(age);
    Py_XDECREF(k);
    Py_DECREF(raw);
    return rc;
}

/* The updated_at (UTC us) of key's row in ages (a dict or NULL); 0 unknown.
 * Never raises. */
static int64_t age_of(PyObject *ages, PyObject *key)
{
    PyObject *v = ages ? PyDict_GetItemWithError(ages, key) : NULL; // borrowed
    long long us = v ? PyLong_AsLongLong(v) : 0;
    PyErr_Clear();
    return us > 0 ? (int64_t)us : 0;
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
    PyObject *found = b->result; /* the dicts, owned by the first request */
    PyObject *ages = b->ages;
    if (found == NULL)
        return;
    b->result = NULL;
    b->ages = NULL;
    for (CmSqlReq *r = b; r != NULL; r = r->next) {
        PyObject *v = PyDict_GetItemWithError(found, r->key); // borrowed
        Py_XSETREF(r->result, Py_XNewRef(v));
        if (v != NULL && r->aged)
            r->updated_us = age_of(ages, r->key);
    }
    PyErr_Clear(); /* a key that cannot be looked up is a miss */
    Py_DECREF(found);
    Py_XDECREF(ages);
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
            PyObject *pair;
            if (r->aged) {
                /* in ns, as flight/remote.h's get_all_aged gives them */
                int64_t us = age_of(r->ages, PyList_GET_ITEM(r->keys, i));
                pair = Py_BuildValue("(OOL)", PyList_GET_ITEM(r->nodes, i), v,
                                     (long long)(us < INT64_MAX / 1000 ? us * 1000 : 0));
            } else {
                pair = PyTuple_Pack(2, PyList_GET_ITEM(r->nodes, i), v);
            }
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
    if (r->aged && r->kind == CM_SQL_GET && r->error == NULL)
        cm_sql_flight_age(r);
    if (r->fut != NULL) {
        PyObject *v = r->error ? NULL : cm_sql_req_value(s, r);
        int rc = 0;
        if (v != NULL) {
            if (!cm_sql_tell_wait(st, r->fut, v, NULL))
                rc = cm_future_set_result(st, r->fut, v);
            Py_DECREF(v);
        } else {
            PyObject *err = r->error ? Py_NewRef(r->error) : cm_exc_take();
            if (err == NULL || !cm_sql_tell_wait(st, r->fut, NULL, err))
                rc = cm_future_set_exception(st, r->fut, err ? err : st->sql.SQLError);
            Py_XDECREF(err);
        }
        if (rc < 0)
            PyErr_Clear(); /* cancelled by its caller, or the loop is gone */
    }
    cm_sql_req_free(r);
    cm_exc_restore(saved);
}
