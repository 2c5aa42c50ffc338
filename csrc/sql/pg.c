/* PostgreSQL driver of the SQL storage: libpq's asynchronous API on the
 * asyncio loop.
 *
 * A connection starts with PQconnectStart and is driven by PQconnectPoll as
 * its socket becomes readable/writable (libpq may swap sockets while it
 * connects, so the watch is renewed at each step). Once connected it runs
 * one simple query of DEALLOCATE ALL and six PREPARE statements (one round
 * trip; a missing table fails here, with the message telling to run the
 * DDL), then takes
 * requests from the storage's queue, one batch at a time:
 *
 *   get      EXECUTE cm_get(key)                 binary result
 *   gets     EXECUTE cm_mget(keys)               consecutive queued GETs
 *                                                coalesced into one = ANY($1)
 *   get_all  EXECUTE cm_mget(keys)
 *   set      EXECUTE cm_set(key, value, ttl)     INSERT .. ON CONFLICT (key)
 *   set_all  EXECUTE cm_mset(keys, values, ttl)  one INSERT .. SELECT unnest
 *   remove   EXECUTE cm_del(key)
 *   sweep    EXECUTE cm_sweep(limit)             bounded DELETE of expired rows
 *
 * Parameters are always bound: keys as text, values as binary bytea, arrays
 * in the binary array format; the expiry is computed by the server
 * (now() + ttl seconds) and compared with its clock on reads. */
#include "sql/pg.h"

#include "base/exc.h"
#include "loop/resolve.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef CM_HAVE_PQ
#include <libpq-fe.h>

#include "base/exc.h"

enum { PH_RESOLVE, PH_CONNECT, PH_UNPREPARED, PH_PREPARE, PH_READY };
enum { MODE_ONE, MODE_COALESCED };

#define PG_MAX_COALESCE 64
#define OID_TEXT 25
#define OID_BYTEA 17
/* a row's updated_at as UTC microseconds since the epoch (int8): its age
 * for the freshness options (NULL: unknown) */
#define PG_UPDATED_US "(extract(epoch FROM updated_at) * 1000000)::int8"

static int pg_setup(CmSqlStorageObject *s)
{
    const char *t = PyUnicode_AsUTF8(s->table);
    if (t == NULL)
        return -1;
    /* PREPARE is not undone when a later statement of the batch fails: start
     * from none, or every retry stops at "cm_get already exists" */
    const char *fmt =
        "DEALLOCATE ALL;"
        "PREPARE cm_get(text) AS SELECT value, " PG_UPDATED_US " FROM %1$s WHERE key = $1 "
        "AND (expire IS NULL OR expire > now());"
        "PREPARE cm_mget(text[]) AS SELECT key, value, " PG_UPDATED_US
        " FROM %1$s WHERE key = ANY($1) "
        "AND (expire IS NULL OR expire > now());"
        "PREPARE cm_set(text, bytea, float8) AS INSERT INTO %1$s (key, value, expire, updated_at) "
        "VALUES ($1, $2, now() + $3 * interval '1 second', now()) ON CONFLICT (key) DO UPDATE "
        "SET value = EXCLUDED.value, expire = EXCLUDED.expire, updated_at = EXCLUDED.updated_at;"
        "PREPARE cm_mset(text[], bytea[], float8) AS INSERT INTO %1$s (key, value, expire, "
        "updated_at) SELECT k, v, now() + $3 * interval '1 second', now() FROM unnest($1, $2) "
        "AS u(k, v) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, "
        "expire = EXCLUDED.expire, updated_at = EXCLUDED.updated_at;"
        "PREPARE cm_del(text) AS DELETE FROM %1$s WHERE key = $1;"
        "PREPARE cm_sweep(int8) AS DELETE FROM %1$s WHERE id IN "
        "(SELECT id FROM %1$s WHERE expire <= now() LIMIT $1);";
    size_t n = strlen(fmt) + 16 * strlen(t) + 1;
    char *sql = malloc(n);
    if (sql == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    snprintf(sql, n, fmt, t);
    free(s->aux);
    s->aux = sql;
    return 0;
}

static void pg_teardown(CmSqlStorageObject *s)
{
    free(s->aux);
    s->aux = NULL;
}

static void pg_close(CmSqlConnObject *c)
{
    if (c->h != NULL)
        PQfinish((PGconn *)c->h);
    c->h = NULL;
}

static void fail_pg(CmSqlConnObject *c)
{
    const char *m = c->h ? PQerrorMessage((PGconn *)c->h) : "connection lost";
    char buf[512];
    snprintf(buf, sizeof(buf), "postgresql: %s", m && *m ? m : "connection lost");
    size_t len = strlen(buf);
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == ' '))
        buf[--len] = '\0';
    cm_sql_conn_fail(c, c->storage->st->sql.SQLConnectionError, buf);
}

/* libpq's notices (NOTICE, WARNING, ... from the server, e.g. "relation
 * already exists, skipping" for create_table): to the `cacheme` logger, a
 * WARNING as a warning and the others as info, not to stderr. Called from
 * within PQconsumeInput/PQgetResult, with the GIL held. */
static void pg_notice(void *arg, const PGresult *res)
{
    CmState *st = arg; // borrowed: the module's state outlives its storages
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *message = PQresultErrorMessage(res);
    if (st->logger == NULL || message == NULL)
        return;
    PyObject *saved = cm_exc_take();
    size_t n = strlen(message);
    while (n > 0 && (message[n - 1] == '\n' || message[n - 1] == ' '))
        n--;
    int warning = sev != NULL && strcmp(sev, "WARNING") == 0;
    PyObject *text = PyUnicode_DecodeUTF8(message, (Py_ssize_t)n, "replace");
    PyObject *msg = text ? PyUnicode_FromFormat("cacheme postgresql: server says: %U", text) : NULL;
    PyObject *r =
        msg ? PyObject_CallMethod(st->logger, warning ? "warning" : "info", "O", msg) : NULL;
    Py_XDECREF(r);
    Py_XDECREF(msg);
    Py_XDECREF(text);
    PyErr_Clear();
    cm_exc_restore(saved);
}

/* The connection's libpq handle is started: watch its socket. */
static int pg_started(CmSqlConnObject *c, PGconn *pg)
{
    CmSqlStorageObject *s = c->storage; // borrowed
    if (pg == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    c->h = pg;
    c->phase = PH_CONNECT;
    PQsetNoticeReceiver(pg, pg_notice, s->st);
    if (PQstatus(pg) == CONNECTION_BAD) {
        PyErr_Format(s->st->sql.SQLConnectionError, "postgresql: %s", PQerrorMessage(pg));
        return -1;
    }
    cm_sql_conn_set_fd(c, PQsocket(pg));
    return cm_sql_conn_watch(c, 0, 1);
}

/* The conninfo's value of name (NULL if unset), from the environment
 * (PGHOST...) as libpq would when the conninfo has none. */
static const char *opt_val(PQconninfoOption *opts, const char *name)
{
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
        if (strcmp(o->keyword, name) == 0) {
            if (o->val != NULL && o->val[0] != '\0')
                return o->val;
            return o->envvar != NULL ? getenv(o->envvar) : NULL;
        }
    return NULL;
}

/* The names among the conninfo's hosts (a list of str), those to look up
 * before connecting: none when hostaddr is given (libpq connects to it). A
 * new reference; NULL with an exception. */
static PyObject *hosts_to_resolve(PQconninfoOption *opts)
{
    PyObject *names = PyList_New(0);
    const char *host = opt_val(opts, "host");
    const char *hostaddr = opt_val(opts, "hostaddr");
    if (names == NULL || host == NULL || (hostaddr != NULL && hostaddr[0] != '\0'))
        return names;
    char *copy = strdup(host), *save = NULL;
    if (copy == NULL) {
        Py_DECREF(names);
        return PyErr_NoMemory();
    }
    for (char *h = strtok_r(copy, ",", &save); h != NULL; h = strtok_r(NULL, ",", &save)) {
        if (!cm_resolve_needed(h))
            continue;
        PyObject *n = PyUnicode_FromString(h);
        if (n == NULL || PyList_Append(names, n) < 0) {
            Py_XDECREF(n);
            Py_CLEAR(names);
            break;
        }
        Py_DECREF(n);
    }
    free(copy);
    return names;
}

/* A growing comma-separated list. */
typedef struct {
    char *s;
    size_t len, cap;
    int n; /* entries (an empty one adds nothing but its comma) */
} CsvBuf;

static int csv_add(CsvBuf *b, const char *v, size_t n)
{
    if (b->len + n + 2 > b->cap) {
        size_t cap = (b->len + n + 2) * 2;
        char *p = realloc(b->s, cap);
        if (p == NULL)
            return -1;
        b->s = p;
        b->cap = cap;
    }
    if (b->n++ > 0)
        b->s[b->len++] = ',';
    memcpy(b->s + b->len, v, n);
    b->len += n;
    b->s[b->len] = '\0';
    return 0;
}

/* Connect with the looked-up addresses: each name of host becomes one
 * entry per address (host=name, hostaddr=address: libpq connects to the
 * address and keeps the name for TLS and the password file), the other
 * entries are kept with an empty hostaddr; a port list follows its hosts.
 * -1 with an exception. */
static int pg_connect_resolved(CmSqlConnObject *c, PyObject *addrs)
{
    CmSqlStorageObject *s = c->storage; // borrowed
    const char *dsn = PyUnicode_AsUTF8(s->dsn);
    if (dsn == NULL)
        return -1;
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(dsn, &err);
    if (opts == NULL) {
        PyErr_Format(s->st->sql.SQLConnectionError, "postgresql: %s", err ? err : "out of memory");
        PQfreemem(err);
        return -1;
    }
    const char *host = opt_val(opts, "host"), *port = opt_val(opts, "port");
    int nhosts = 1, nports = port ? 1 : 0;
    for (const char *p = host; p && *p; p++)
        nhosts += *p == ',';
    for (const char *p = port; p && *p; p++)
        nports += *p == ',';
    CsvBuf hosts = {0}, haddrs = {0}, ports = {0};
    char *hcopy = strdup(host ? host : ""), *pcopy = strdup(port ? port : "");
    char *hnext = hcopy, *pnext = pcopy;
    int rc = -1;
    Py_ssize_t k = 0;
    if (hcopy == NULL || pcopy == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (int i = 0; i < nhosts; i++) {
        const char *h = strsep(&hnext, ",");
        const char *pt = nports > 1 ? strsep(&pnext, ",") : NULL;
        if (h == NULL)
            break;
        if (!cm_resolve_needed(h)) {
            if (csv_add(&hosts, h, strlen(h)) < 0 || csv_add(&haddrs, "", 0) < 0 ||
                (nports > 1 && csv_add(&ports, pt ? pt : "", pt ? strlen(pt) : 0) < 0))
                goto nomem;
            continue;
        }
        if (k >= PyList_GET_SIZE(addrs)) {
            PyErr_SetString(PyExc_RuntimeError, "postgresql: addresses missing for a host");
            goto done;
        }
        PyObject *ips = PyList_GET_ITEM(addrs, k++); // borrowed
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(ips); j++) {
            Py_ssize_t n;
            const char *ip = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(ips, j), &n);
            if (ip == NULL)
                goto done;
            if (csv_add(&hosts, h, strlen(h)) < 0 || csv_add(&haddrs, ip, (size_t)n) < 0 ||
                (nports > 1 && csv_add(&ports, pt ? pt : "", pt ? strlen(pt) : 0) < 0))
                goto nomem;
        }
    }
    {
        /* every option set, host/hostaddr/port replaced */
        int n = 0;
        for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
            n++;
        const char **keys = calloc((size_t)n + 4, sizeof(char *));
        const char **vals = calloc((size_t)n + 4, sizeof(char *));
        if (keys == NULL || vals == NULL) {
            free(keys);
            free(vals);
            goto nomem;
        }
        int j = 0;
        for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
            if (o->val == NULL || strcmp(o->keyword, "host") == 0 ||
                strcmp(o->keyword, "hostaddr") == 0 || strcmp(o->keyword, "port") == 0)
                continue;
            keys[j] = o->keyword;
            vals[j++] = o->val;
        }
        keys[j] = "host";
        vals[j++] = hosts.s;
        keys[j] = "hostaddr";
        vals[j++] = haddrs.s;
        if (port != NULL) {
            keys[j] = "port";
            vals[j++] = nports > 1 ? ports.s : port;
        }
        rc = pg_started(c, PQconnectStartParams(keys, vals, 0));
        free(keys);
        free(vals);
    }
    goto done;
nomem:
    PyErr_NoMemory();
done:
    free(hcopy);
    free(pcopy);
    free(hosts.s);
    free(haddrs.s);
    free(ports.s);
    PQconninfoFree(opts);
    return rc;
}

static int pg_open(CmSqlConnObject *c)
{
    CmSqlStorageObject *s = c->storage; // borrowed
    const char *dsn = PyUnicode_AsUTF8(s->dsn);
    if (dsn == NULL)
        return -1;
    /* host names are looked up off the loop thread (resolve.h): libpq's
     * PQconnectStart would call getaddrinfo right here */
    PQconninfoOption *opts = PQconninfoParse(dsn, NULL);
    PyObject *names = opts ? hosts_to_resolve(opts) : PyList_New(0);
    if (opts != NULL)
        PQconninfoFree(opts);
    if (names == NULL)
        return -1;
    if (PyList_GET_SIZE(names) > 0) {
        int rc = cm_sql_conn_lookup(c, names); /* then pg_connect_resolved */
        Py_DECREF(names);
        if (rc < 0)
            return -1;
        c->phase = PH_RESOLVE;
        return 0;
    }
    Py_DECREF(names);
    return pg_started(c, PQconnectStart(dsn));
}

/* Flush the output and watch for writability while some is left. */
static void flush_watch(CmSqlConnObject *c)
{
    int rc = PQflush((PGconn *)c->h);
    if (rc < 0) {
        fail_pg(c);
        return;
    }
    if (cm_sql_conn_watch(c, 1, rc == 1) < 0) {
        PyErr_Clear();
        cm_sql_conn_fail(c, NULL, "postgresql: cannot watch the socket");
    }
}

/* The binary array format: ndim, has-null, element type, length, lower
 * bound, then (length, bytes) per element; big-endian. */
static int put32(char **p, uint32_t v)
{
    unsigned char *b = (unsigned char *)*p;
    b[0] = (unsigned char)(v >> 24);
    b[1] = (unsigned char)(v >> 16);
    b[2] = (unsigned char)(v >> 8);
    b[3] = (unsigned char)v;
    *p += 4;
    return 0;
}

/* items: the elements of a list (of str or bytes) or of a chain of requests'
 * keys (reqs != NULL). New malloc'd buffer, length in *len. */
static char *pg_array(PyObject *list, CmSqlReq *reqs, uint32_t oid, int *len)
{
    Py_ssize_t n = 0;
    size_t total = 20;
    for (CmSqlReq *r = reqs; r != NULL; r = r->next, n++) {
        Py_ssize_t k;
        if (PyUnicode_AsUTF8AndSize(r->key, &k) == NULL)
            return NULL;
        total += 4 + (size_t)k;
    }
    if (list != NULL) {
        n = PyList_GET_SIZE(list);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *o = PyList_GET_ITEM(list, i); // borrowed
            Py_ssize_t k;
            if (PyBytes_Check(o))
                k = PyBytes_GET_SIZE(o);
            else if (PyUnicode_AsUTF8AndSize(o, &k) == NULL)
                return NULL;
            total += 4 + (size_t)k;
        }
    }
    if (total > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "postgresql: batch too large");
        return NULL;
    }
    char *buf = malloc(total), *p = buf;
    if (buf == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    put32(&p, 1);
    put32(&p, 0);
    put32(&p, oid);
    put32(&p, (uint32_t)n);
    put32(&p, 1);
    CmSqlReq *r = reqs;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = list ? PyList_GET_ITEM(list, i) : r->key; // borrowed
        const char *data;
        Py_ssize_t k;
        if (PyBytes_Check(o)) {
            data = PyBytes_AS_STRING(o);
            k = PyBytes_GET_SIZE(o);
        } else {
            data = PyUnicode_AsUTF8AndSize(o, &k);
        }
        put32(&p, (uint32_t)k);
        memcpy(p, data, (size_t)k);
        p += k;
        if (r != NULL)
            r = r->next;
    }
    *len = (int)total;
    return buf;
}

static int send_req(CmSqlConnObject *c, CmSqlReq *b)
{
    PGconn *pg = c->h;
    CmSqlStorageObject *s = c->storage; // borrowed
    const char *vals[3] = {NULL, NULL, NULL};
    int lens[3] = {0, 0, 0}, fmts[3] = {0, 0, 0};
    char ttl[64], *arr1 = NULL, *arr2 = NULL;
    int ok = 0, rc = -1;
    Py_ssize_t klen;
    if (b->ttl >= 0) {
        snprintf(ttl, sizeof(ttl), "%.6f", b->ttl);
        vals[2] = ttl;
    }
    c->status = MODE_ONE;
    switch (b->kind) {
    case CM_SQL_GET:
        if (b->next != NULL) {
            c->status = MODE_COALESCED;
            if ((arr1 = pg_array(NULL, b, OID_TEXT, &lens[0])) == NULL)
                goto done;
            vals[0] = arr1;
            fmts[0] = 1;
            ok = PQsendQueryPrepared(pg, "cm_mget", 1, vals, lens, fmts, 1);
            break;
        }
        if ((vals[0] = PyUnicode_AsUTF8AndSize(b->key, &klen)) == NULL)
            goto done;
        ok = PQsendQueryPrepared(pg, "cm_get", 1, vals, lens, fmts, 1);
        break;
    case CM_SQL_GET_ALL:
        if ((arr1 = pg_array(b->keys, NULL, OID_TEXT, &lens[0])) == NULL)
            goto done;
        vals[0] = arr1;
        fmts[0] = 1;
        ok = PQsendQueryPrepared(pg, "cm_mget", 1, vals, lens, fmts, 1);
        break;
    case CM_SQL_SET:
        if ((vals[0] = PyUnicode_AsUTF8AndSize(b->key, &klen)) == NULL)
            goto done;
        if (PyBytes_GET_SIZE(b->value) > INT32_MAX) {
            /* libpq's lengths are ints */
            PyErr_Format(s->st->sql.SQLError, "postgresql: a value of %zd bytes is too large",
                         PyBytes_GET_SIZE(b->value));
            goto done;
        }
        vals[1] = PyBytes_AS_STRING(b->value);
        lens[1] = (int)PyBytes_GET_SIZE(b->value);
        fmts[1] = 1;
        ok = PQsendQueryPrepared(pg, "cm_set", 3, vals, lens, fmts, 1);
        break;
    case CM_SQL_SET_ALL:
        if ((arr1 = pg_array(b->keys, NULL, OID_TEXT, &lens[0])) == NULL ||
            (arr2 = pg_array(b->values, NULL, OID_BYTEA, &lens[1])) == NULL)
            goto done;
        vals[0] = arr1;
        vals[1] = arr2;
        fmts[0] = fmts[1] = 1;
        ok = PQsendQueryPrepared(pg, "cm_mset", 3, vals, lens, fmts, 1);
        break;
    case CM_SQL_DEL:
        if ((vals[0] = PyUnicode_AsUTF8AndSize(b->key, &klen)) == NULL)
            goto done;
        ok = PQsendQueryPrepared(pg, "cm_del", 1, vals, lens, fmts, 1);
        break;
    case CM_SQL_SWEEP:
        snprintf(ttl, sizeof(ttl), "%ld", b->limit);
        vals[0] = ttl;
        ok = PQsendQueryPrepared(pg, "cm_sweep", 1, vals, lens, fmts, 1);
        break;
    case CM_SQL_EXEC: {
        const char *sql = PyUnicode_AsUTF8(b->key);
        if (sql == NULL)
            goto done;
        ok = PQsendQuery(pg, sql);
        break;
    }
    default:
        PyErr_SetString(PyExc_SystemError, "postgresql: unknown request");
        goto done;
    }
    rc = ok ? 0 : 1;
done:
    free(arr1);
    free(arr2);
    return rc;
}

static void send_batch(CmSqlConnObject *c);

static void pg_start(CmSqlConnObject *c)
{
    CmSqlStorageObject *s = c->storage; // borrowed
    CmSqlReq *b = cm_sql_take(s, PG_MAX_COALESCE);
    if (b == NULL)
        return;
    c->batch = b;
    c->net.state = CM_SQL_BUSY;
    cm_sql_conn_deadline(c, cm_sql_now() + (int64_t)(s->timeout * 1e9));
    if (c->phase == PH_UNPREPARED && b->kind != CM_SQL_EXEC) {
        if (!PQsendQuery((PGconn *)c->h, (const char *)s->aux)) {
            fail_pg(c);
            return;
        }
        c->phase = PH_PREPARE;
        c->err = 0;
        flush_watch(c);
        return;
    }
    send_batch(c);
}

/* Send the batch taken (the connection is prepared). */
static void send_batch(CmSqlConnObject *c)
{
    CmSqlStorageObject *s = c->storage; // borrowed
    CmSqlReq *b = c->batch;
    if (b->kind == CM_SQL_PING) {
        cm_sql_conn_done(c);
        return;
    }
    int rc = send_req(c, b);
    if (rc < 0) {
        /* a request that cannot be encoded fails alone */
        cm_sql_batch_error_pending(s, b);
        cm_sql_conn_done(c);
        return;
    }
    if (rc > 0) {
        fail_pg(c);
        return;
    }
    flush_watch(c);
}

static int is_missing_table(PGresult *res)
{
    const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    return code != NULL && strcmp(code, "42P01") == 0;
}

static PyObject *col_bytes(PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return Py_NewRef(Py_None);
    return PyBytes_FromStringAndSize(PQgetvalue(res, row, col), PQgetlength(res, row, col));
}

/* An int8 column (binary: big-endian), 0 when NULL. */
static int64_t col_int8(PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 8)
        return 0;
    const unsigned char *p = (const unsigned char *)PQgetvalue(res, row, col);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return (int64_t)v;
}

static void on_result(CmSqlConnObject *c, PGresult *res)
{
    CmSqlStorageObject *s = c->storage; // borrowed
    CmSqlReq *b = c->batch;
    ExecStatusType status = PQresultStatus(res);
    if (b == NULL)
        return;
    if (status == PGRES_FATAL_ERROR || status == PGRES_BAD_RESPONSE) {
        const char *m = PQresultErrorMessage(res);
        int missing = is_missing_table(res);
        cm_sql_batch_error_sql(s, b, missing, m);
        return;
    }
    int rows = PQntuples(res);
    if (b->kind == CM_SQL_GET && c->status == MODE_ONE) {
        if (status == PGRES_TUPLES_OK && rows > 0 && b->result == NULL) {
            if ((b->result = col_bytes(res, 0, 0)) == NULL)
                cm_sql_req_error(s, b, s->st->sql.SQLError, "postgresql: out of memory");
            b->updated_us = b->aged ? col_int8(res, 0, 1) : 0;
        }
    } else if (b->kind == CM_SQL_GET || b->kind == CM_SQL_GET_ALL) {
        if (status != PGRES_TUPLES_OK)
            return;
        int failed = 0, aged = cm_sql_chain_aged(b);
        for (int i = 0; i < rows && !failed; i++) {
            if (cm_sql_result_put(b, PQgetvalue(res, i, 0), (size_t)PQgetlength(res, i, 0),
                                  col_bytes(res, i, 1), aged ? col_int8(res, i, 2) : 0) < 0) {
                PyErr_Clear();
                cm_sql_req_error(s, b, s->st->sql.SQLError, "postgresql: out of memory");
                failed = 1;
            }
        }
        if (b->kind == CM_SQL_GET && !failed)
            cm_sql_split_rows(b);
    } else if (b->kind == CM_SQL_SWEEP) {
        Py_XSETREF(b->result,
                   PyLong_FromString(*PQcmdTuples(res) ? PQcmdTuples(res) : "0", NULL, 10));
        PyErr_Clear();
    }
}

static void pg_io(CmSqlConnObject *c, int readable, int writable)
{
    PGconn *pg = c->h;
    if (c->phase == PH_CONNECT) {
        PostgresPollingStatusType ps = PQconnectPoll(pg);
        if (ps == PGRES_POLLING_FAILED) {
            fail_pg(c);
            return;
        }
        if (ps == PGRES_POLLING_OK) {
            if (PQsetnonblocking(pg, 1) != 0) {
                fail_pg(c);
                return;
            }
            /* statements are prepared before the first request that needs
             * them, so that DDL (create_table) can run on a fresh table */
            c->phase = PH_UNPREPARED;
            cm_sql_conn_ready(c);
            if (cm_sql_conn_watch(c, 1, 0) < 0) {
                PyErr_Clear();
                cm_sql_conn_fail(c, NULL, "postgresql: cannot watch the socket");
            }
            return;
        }
        /* libpq may have moved to another socket (another host, SSL retry) */
        cm_sql_conn_unwatch(c);
        cm_sql_conn_set_fd(c, PQsocket(pg));
        if (cm_sql_conn_watch(c, ps == PGRES_POLLING_READING, ps == PGRES_POLLING_WRITING) < 0) {
            PyErr_Clear();
            cm_sql_conn_fail(c, NULL, "postgresql: cannot watch the socket");
        }
        return;
    }
    if (writable) {
        flush_watch(c);
        if (c->net.state == CM_SQL_CLOSED)
            return;
    }
    if (!readable)
        return;
    if (!PQconsumeInput(pg)) {
        fail_pg(c);
        return;
    }
    while (c->net.state != CM_SQL_CLOSED && !PQisBusy(pg)) {
        PGresult *res = PQgetResult(pg);
        if (res == NULL) {
            /* the command in flight (if any) is complete */
            if (c->phase == PH_PREPARE) {
                if (c->err) {
                    c->phase = PH_UNPREPARED;
                    cm_sql_conn_done(c);
                } else {
                    c->phase = PH_READY;
                    send_batch(c);
                }
            } else if (c->batch != NULL) {
                cm_sql_conn_done(c);
            }
            break;
        }
        ExecStatusType status = PQresultStatus(res);
        if (c->phase == PH_PREPARE &&
            (status == PGRES_FATAL_ERROR || status == PGRES_BAD_RESPONSE)) {
            int missing = is_missing_table(res);
            char buf[512];
            snprintf(buf, sizeof(buf), "postgresql: %s", PQresultErrorMessage(res));
            cm_sql_batch_error_sql(c->storage, c->batch, missing, buf);
            c->err = 1;
        }
        /* the results of a request: also execute()'s on a connection whose
         * statements are not prepared yet */
        if (c->phase != PH_PREPARE)
            on_result(c, res);
        PQclear(res);
    }
    if (c->net.state != CM_SQL_CLOSED && PQstatus(pg) == CONNECTION_BAD)
        fail_pg(c);
}

const CmSqlDriver cm_pg_driver = {
    .name = "postgresql",
    .package = "libpq-dev",
    .available = 1,
    .key_max = 512,
    .key_nul = 0,
    .setup = pg_setup,
    .teardown = pg_teardown,
    .open = pg_open,
    .io = pg_io,
    .start = pg_start,
    .close = pg_close,
    .resolved = pg_connect_resolved,
};

#else /* !CM_HAVE_PQ */

const CmSqlDriver cm_pg_driver = {
    .name = "postgresql",
    .package = "libpq-dev",
    .available = 0,
};

#endif
