/* MySQL/MariaDB driver of the SQL storage: MariaDB Connector/C's
 * non-blocking API on the asyncio loop.
 *
 * Every call that may wait is a start/cont pair (mysql_X_start, mysql_X_cont): start returns the
 * events it waits for (MYSQL_WAIT_READ/WRITE), the connection watches its
 * socket for them, and on readiness calls _cont with what happened, until
 * the call completes (status 0). A connection runs one such call at a time
 * (c->phase says which), each request being a short chain of them:
 *
 *   connect   real_connect                          then idle, statements unprepared
 *   get       [hopen] [prepare] execute store_result   one key: HANDLER .. READ (below)
 *             [prepare] execute store_result        consecutive queued GETs coalesced
 *   get_all   [prepare] execute store_result        into one `key` IN (?, ...) of a
 *                                                   bucket size (1, 2, 4, .. 256; the
 *                                                   rest padded with the last key)
 *   set       [prepare] execute                     INSERT .. ON DUPLICATE KEY UPDATE
 *   set_all   [prepare] execute                     MariaDB bulk execution (array
 *                                                   binding): one round trip
 *   remove, sweep  [prepare] execute                DELETE; sweep: .. LIMIT n
 *   execute   real_query [store_result next_result]  no parameters; result sets
 *                                                   (SELECT, SHOW, CALL) read and
 *                                                   dropped
 *
 * Statements are prepared on first use per connection, so a missing table
 * is reported on that request (with the message naming the DDL script) and
 * DDL can run first. Times are UTC (UTC_TIMESTAMP(6)), as 0.3.0 wrote them;
 * a read also gives the row's updated_at (its age, for the freshness
 * options), taken as UTC too: 0.3.0 left it to the column's default, now(6),
 * the session's time zone (the server's unless set), and never updated it on
 * an overwrite.
 *
 * Keys compare byte for byte whatever the table's collation (0.3.0's DDL
 * left it to the server's default, a case- and accent-insensitive one on
 * most): reads and deletes find the row through the index and keep it only
 * if BINARY `key` equals the key (binary strings also keep trailing spaces,
 * which PAD SPACE collations ignore); a write whose key equals another
 * row's under the collation takes that row over, key included. Two keys
 * equal under the collation then share one row, the last written, and
 * neither ever reads the other's value.
 *
 * A single GET reads through a HANDLER instead of a SELECT: see
 * mysql_handler.c. Connecting is in mysql_connect.c. */
#include "sql/mysql.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sql/mysql_conn.h"

#ifdef CM_HAVE_MARIADB

static const char *my_err(CmSqlConnObject *c)
{
    MyConn *mc = c->aux;
    if (mc != NULL && mc->cur != NULL && mysql_stmt_errno(mc->cur))
        return mysql_stmt_error(mc->cur);
    return c->h ? mysql_error((MYSQL *)c->h) : "connection lost";
}

unsigned cm_mysql_errno(CmSqlConnObject *c)
{
    MyConn *mc = c->aux;
    if (mc != NULL && mc->cur != NULL && mysql_stmt_errno(mc->cur))
        return mysql_stmt_errno(mc->cur);
    return c->h ? mysql_errno((MYSQL *)c->h) : CR_SERVER_LOST;
}

void cm_mysql_free_params(MyConn *mc)
{
    free(mc->binds);
    free(mc->lens);
    free(mc->ptrs);
    free(mc->ttls);
    free(mc->inds);
    mc->binds = NULL;
    mc->lens = NULL;
    mc->ptrs = NULL;
    mc->ttls = NULL;
    mc->inds = NULL;
    mc->cap_params = mc->cap_rows = 0;
}

static void fail_my(CmSqlConnObject *c)
{
    char buf[512];
    snprintf(buf, sizeof(buf), "mysql: %s", my_err(c));
    cm_sql_conn_fail(c, c->storage->st->sql.SQLConnectionError, buf);
}

static void step_done(CmSqlConnObject *c);

void cm_mysql_after(CmSqlConnObject *c, int status)
{
    if (status == 0) {
        step_done(c);
        return;
    }
    c->status = status;
    if (c->phase == PH_CONNECT) {
        /* Connector/C tries each address of the host on a new socket, whose
         * number may even be the closed one's: watch the current socket
         * afresh at each step (the loop forgets a closed fd) */
        cm_sql_conn_unwatch(c);
        cm_sql_conn_set_fd(c, (int)mysql_get_socket((MYSQL *)c->h));
    }
    if (cm_sql_conn_watch(c, (status & MYSQL_WAIT_READ) != 0, (status & MYSQL_WAIT_WRITE) != 0) <
        0) {
        PyErr_Clear();
        cm_sql_conn_fail(c, NULL, "mysql: cannot watch the socket");
    }
}

static int bucket_of(int n)
{
    int b = 0;
    while ((1 << b) < n)
        b++;
    return b;
}

/* The SQL of a statement slot (or an IN list of n keys for adhoc). */
static char *stmt_sql(CmSqlStorageObject *s, int slot, int n)
{
    const char *t = PyUnicode_AsUTF8(s->table);
    if (t == NULL)
        return NULL;
    const char *fmt = NULL;
    char *in = NULL;
    switch (slot) {
    /* keys compare byte for byte (see the top): `key` = ? finds the row
     * through the index under the column's collation, BINARY `key` = ? then
     * keeps it only if it is this very key */
    case S_GET:
        fmt = "SELECT value, updated_at FROM %1$s WHERE `key` = ? AND BINARY `key` = ? AND "
              "(expire IS NULL OR expire > UTC_TIMESTAMP(6))%2$s";
        break;
    case S_HGET:
        fmt = "HANDLER cm_get READ `key` = (?) WHERE BINARY `key` = ? AND "
              "(expire IS NULL OR expire > UTC_TIMESTAMP(6))%2$s";
        break;
    case S_SET:
    case S_MSET:
        /* a row of a key equal under the collation becomes this key's */
        fmt = "INSERT INTO %1$s (`key`, value, expire, updated_at) VALUES (?, ?, "
              "DATE_ADD(UTC_TIMESTAMP(6), INTERVAL ? MICROSECOND), UTC_TIMESTAMP(6)) "
              "ON DUPLICATE KEY UPDATE `key` = VALUES(`key`), value = VALUES(value), "
              "expire = VALUES(expire), updated_at = VALUES(updated_at)%2$s";
        break;
    case S_DEL:
        fmt = "DELETE FROM %1$s WHERE `key` = ? AND BINARY `key` = ?%2$s";
        break;
    case S_SWEEP:
        fmt = "DELETE FROM %1$s WHERE expire <= UTC_TIMESTAMP(6) LIMIT ?%2$s";
        break;
    default:
        fmt = "SELECT `key`, value, updated_at FROM %1$s WHERE `key` IN (%2$s) AND "
              "(expire IS NULL OR expire > UTC_TIMESTAMP(6))";
        if (slot >= S_MGET0)
            n = 1 << (slot - S_MGET0);
        if ((in = malloc((size_t)n * 2 + 1)) == NULL)
            return NULL;
        for (int i = 0; i < n; i++) {
            in[2 * i] = i ? ',' : ' ';
            in[2 * i + 1] = '?';
        }
        in[2 * n] = '\0';
        break;
    }
    size_t len = strlen(fmt) + 2 * strlen(t) + (in ? strlen(in) : 0) + 1;
    char *sql = malloc(len);
    if (sql != NULL)
        snprintf(sql, len, fmt, t, in ? in : "");
    free(in);
    return sql;
}

/* Parameter buffers for nparams parameters of rows rows, the binds zeroed;
 * grown when too small, else reused. */
static int alloc_params(MyConn *mc, int nparams, int rows)
{
    if (nparams > mc->cap_params || rows > mc->cap_rows) {
        int np = nparams > mc->cap_params ? nparams : mc->cap_params;
        int nr = rows > mc->cap_rows ? rows : mc->cap_rows;
        cm_mysql_free_params(mc);
        mc->binds = malloc((size_t)np * sizeof(MYSQL_BIND));
        mc->lens = malloc((size_t)(nr * 2 + np) * sizeof(unsigned long));
        mc->ptrs = malloc((size_t)(nr * 2 + 1) * sizeof(char *));
        mc->ttls = malloc(((size_t)nr + 1) * sizeof(long long));
        mc->inds = malloc((size_t)nr + 1);
        if (!mc->binds || !mc->lens || !mc->ptrs || !mc->ttls || !mc->inds) {
            cm_mysql_free_params(mc);
            PyErr_NoMemory();
            return -1;
        }
        mc->cap_params = np;
        mc->cap_rows = nr;
    }
    memset(mc->binds, 0, (size_t)nparams * sizeof(MYSQL_BIND));
    return 0;
}

static int bind_str(MYSQL_BIND *b, unsigned long *len, PyObject *o, int blob)
{
    Py_ssize_t n;
    const char *p;
    if (PyBytes_Check(o)) {
        p = PyBytes_AS_STRING(o);
        n = PyBytes_GET_SIZE(o);
    } else if ((p = PyUnicode_AsUTF8AndSize(o, &n)) == NULL) {
        return -1;
    }
    b->buffer_type = blob ? MYSQL_TYPE_BLOB : MYSQL_TYPE_STRING;
    b->buffer = (void *)p;
    b->buffer_length = (unsigned long)n;
    *len = (unsigned long)n;
    b->length = len;
    return 0;
}

/* Bind the batch's parameters to mc->cur and start executing it. */
static void execute_batch(CmSqlConnObject *c)
{
    MyConn *mc = c->aux;
    CmSqlReq *b = c->batch;
    int nparams = (int)mysql_stmt_param_count(mc->cur);
    int rows = b->kind == CM_SQL_SET_ALL ? (int)PyList_GET_SIZE(b->keys) : 1;
    if (alloc_params(mc, nparams, rows) < 0)
        goto bad;
    MYSQL_BIND *bd = mc->binds;
    switch (b->kind) {
    case CM_SQL_GET:
    case CM_SQL_GET_ALL: {
        /* the keys: the coalesced GETs' or the list's; padded to nparams */
        CmSqlReq *r = b;
        Py_ssize_t nk = b->kind == CM_SQL_GET_ALL ? PyList_GET_SIZE(b->keys) : 0;
        PyObject *last = NULL;
        for (int i = 0; i < nparams; i++) {
            PyObject *k;
            if (b->kind == CM_SQL_GET_ALL)
                k = i < nk ? PyList_GET_ITEM(b->keys, i) : last;
            else {
                k = r ? r->key : last;
                if (r)
                    r = r->next;
            }
            last = k;
            if (bind_str(&bd[i], &mc->lens[i], k, 0) < 0)
                goto bad;
        }
        break;
    }
    case CM_SQL_SET:
        if (bind_str(&bd[0], &mc->lens[0], b->key, 0) < 0 ||
            bind_str(&bd[1], &mc->lens[1], b->value, 1) < 0)
            goto bad;
        mc->ttls[0] = cm_sql_ttl_us(b);
        bd[2].buffer_type = MYSQL_TYPE_LONGLONG;
        bd[2].buffer = &mc->ttls[0];
        mc->inds[0] = b->ttl < 0;
        bd[2].is_null = (my_bool *)&mc->inds[0];
        break;
    case CM_SQL_SET_ALL: {
        /* column-wise array binding: keys, values, ttls */
        unsigned long *klens = mc->lens, *vlens = mc->lens + rows;
        char **kp = mc->ptrs, **vp = mc->ptrs + rows;
        for (int i = 0; i < rows; i++) {
            Py_ssize_t n;
            const char *k = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(b->keys, i), &n);
            if (k == NULL)
                goto bad;
            kp[i] = (char *)k;
            klens[i] = (unsigned long)n;
            PyObject *v = PyList_GET_ITEM(b->values, i); // borrowed
            vp[i] = PyBytes_AS_STRING(v);
            vlens[i] = (unsigned long)PyBytes_GET_SIZE(v);
            mc->ttls[i] = cm_sql_ttl_us(b);
            mc->inds[i] = b->ttl < 0 ? STMT_INDICATOR_NULL : STMT_INDICATOR_NONE;
        }
        bd[0].buffer_type = MYSQL_TYPE_STRING;
        bd[0].buffer = kp;
        bd[0].length = klens;
        bd[1].buffer_type = MYSQL_TYPE_BLOB;
        bd[1].buffer = vp;
        bd[1].length = vlens;
        bd[2].buffer_type = MYSQL_TYPE_LONGLONG;
        bd[2].buffer = mc->ttls;
        bd[2].u.indicator = mc->inds;
        unsigned int size = (unsigned int)rows;
        mysql_stmt_attr_set(mc->cur, STMT_ATTR_ARRAY_SIZE, &size);
        break;
    }
    case CM_SQL_DEL:
        if (bind_str(&bd[0], &mc->lens[0], b->key, 0) < 0 ||
            bind_str(&bd[1], &mc->lens[1], b->key, 0) < 0)
            goto bad;
        break;
    case CM_SQL_SWEEP:
        mc->ttls[0] = b->limit;
        bd[0].buffer_type = MYSQL_TYPE_LONGLONG;
        bd[0].buffer = &mc->ttls[0];
        break;
    default:
        break;
    }
    if (mysql_stmt_bind_param(mc->cur, mc->binds)) {
        cm_sql_batch_error(c->storage, b, c->storage->st->sql.SQLError, mysql_stmt_error(mc->cur));
        cm_sql_conn_done(c);
        return;
    }
    c->phase = PH_EXECUTE;
    cm_mysql_after(c, mysql_stmt_execute_start(&mc->iret, mc->cur));
    return;
bad:
    /* a request that cannot be encoded fails alone */
    cm_sql_batch_error_pending(c->storage, b);
    cm_sql_conn_done(c);
}

void cm_mysql_run_batch(CmSqlConnObject *c)
{
    CmSqlStorageObject *s = c->storage; // borrowed
    MyConn *mc = c->aux;
    CmSqlReq *b = c->batch;
    int slot, n = 1;
    switch (b->kind) {
    case CM_SQL_PING:
        slot = S_GET;
        break;
    case CM_SQL_GET:
        for (CmSqlReq *r = b->next; r != NULL; r = r->next)
            n++;
        slot = n > 1 ? S_MGET0 + bucket_of(n) : mc->hoff ? S_GET : S_HGET;
        if (slot == S_HGET && cm_mysql_handler_ready(c))
            return;
        if (slot == S_HGET && mc->hoff) /* it could not be opened */
            slot = S_GET;
        break;
    case CM_SQL_GET_ALL:
        n = (int)PyList_GET_SIZE(b->keys);
        slot = n > MY_MAX_IN ? -1 : S_MGET0 + bucket_of(n);
        break;
    case CM_SQL_SET:
        slot = S_SET;
        break;
    case CM_SQL_SET_ALL:
        slot = S_MSET;
        break;
    case CM_SQL_DEL:
        slot = S_DEL;
        break;
    case CM_SQL_SWEEP:
        slot = S_SWEEP;
        break;
    default: {
        const char *sql = PyUnicode_AsUTF8(b->key);
        if (sql == NULL) {
            PyErr_Clear();
            cm_sql_req_error(s, b, s->st->sql.SQLError, "mysql: bad SQL");
            cm_sql_conn_done(c);
            return;
        }
        mc->cur = NULL;
        c->phase = PH_QUERY;
        cm_mysql_after(c, mysql_real_query_start(&mc->iret, (MYSQL *)c->h, sql, strlen(sql)));
        return;
    }
    }
    mc->slot = slot;
    mc->nkeys = n;
    MYSQL_STMT *st = slot >= 0 ? mc->stmt[slot] : NULL;
    if (st != NULL) {
        if (b->kind == CM_SQL_PING) {
            cm_sql_conn_done(c);
            return;
        }
        mc->cur = st;
        execute_batch(c);
        return;
    }
    if ((st = mysql_stmt_init((MYSQL *)c->h)) == NULL) {
        fail_my(c);
        return;
    }
    free(mc->sql);
    if ((mc->sql = stmt_sql(s, slot, n)) == NULL) {
        mysql_stmt_close(st);
        PyErr_Clear();
        cm_sql_batch_error(s, b, s->st->sql.SQLError, "mysql: out of memory");
        cm_sql_conn_done(c);
        return;
    }
    if (slot < 0) {
        if (mc->adhoc != NULL)
            mysql_stmt_close(mc->adhoc);
        mc->adhoc = st;
    }
    mc->cur = st;
    c->phase = PH_PREPARE;
    cm_mysql_after(c, mysql_stmt_prepare_start(&mc->iret, st, mc->sql, strlen(mc->sql)));
}

static void my_start(CmSqlConnObject *c)
{
    CmSqlStorageObject *s = c->storage; // borrowed
    CmSqlReq *b = cm_sql_take(s, MY_MAX_COALESCE);
    if (b == NULL)
        return;
    MyConn *mc = c->aux;
    c->batch = b;
    c->net.state = CM_SQL_BUSY;
    mc->used = cm_sql_now();
    mc->hretried = 0;
    cm_sql_conn_deadline(c, mc->used + (int64_t)(s->timeout * 1e9));
    cm_mysql_run_batch(c);
}

void cm_mysql_request_failed(CmSqlConnObject *c)
{
    unsigned e = cm_mysql_errno(c);
    if (e >= 2000 && e < 3000) { /* client errors: the connection is gone */
        fail_my(c);
        return;
    }
    char buf[512];
    snprintf(buf, sizeof(buf), "mysql: %s", my_err(c));
    cm_sql_batch_error_sql(c->storage, c->batch, e == ER_NO_SUCH_TABLE_, buf);
    cm_sql_conn_done(c);
}

static PyObject *fetch_col(MYSQL_STMT *st, MYSQL_BIND *rb, unsigned long len, my_bool isnull,
                           int col)
{
    if (isnull)
        return Py_NewRef(Py_None);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
    if (out == NULL || len == 0)
        return out;
    MYSQL_BIND b;
    memset(&b, 0, sizeof(b));
    b.buffer_type = rb->buffer_type;
    b.buffer = PyBytes_AS_STRING(out);
    b.buffer_length = len;
    if (mysql_stmt_fetch_column(st, &b, (unsigned)col, 0)) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "mysql: cannot fetch a column");
        return NULL;
    }
    return out;
}

/* A DATETIME column (updated_at) as UTC us since the epoch: 0.3.0 and ours
 * write it in UTC (see the top); 0 when NULL or not a date and time. */
static int64_t fetch_utc_us(MYSQL_STMT *st, my_bool isnull, int col)
{
    MYSQL_TIME t;
    MYSQL_BIND b;
    if (col < 0 || isnull)
        return 0;
    memset(&t, 0, sizeof(t));
    memset(&b, 0, sizeof(b));
    b.buffer_type = MYSQL_TYPE_DATETIME;
    b.buffer = &t;
    b.buffer_length = sizeof(t);
    if (mysql_stmt_fetch_column(st, &b, (unsigned)col, 0) || t.neg || t.year < 1970 ||
        t.month < 1 || t.month > 12 || t.day < 1 || t.day > 31 ||
        (t.time_type != MYSQL_TIMESTAMP_DATETIME && t.time_type != MYSQL_TIMESTAMP_DATE))
        return 0;
    return cm_sql_civil_us(t.year, t.month, t.day, t.hour, t.minute, t.second,
                           (int64_t)t.second_part);
}

/* Rows of a stored result into the batch's results. */
static void read_rows(CmSqlConnObject *c)
{
    MyConn *mc = c->aux;
    CmSqlReq *b = c->batch;
    MYSQL_STMT *st = mc->cur;
    int ncols = (int)mysql_stmt_field_count(st);
    /* one value (S_GET's only column, S_HGET's `value`), or key/value rows */
    int single = mc->slot == S_GET || mc->slot == S_HGET;
    int vcol = mc->slot == S_HGET ? mc->hvalue : 0;
    /* updated_at: after the value (S_GET) or key and value (the IN lists) */
    int ucol = mc->slot == S_HGET ? mc->hupdated : single ? 1 : 2;
    if (ucol >= ncols)
        ucol = -1;
    MYSQL_BIND rb[MY_MAX_COLS];
    unsigned long lens[MY_MAX_COLS];
    my_bool nulls[MY_MAX_COLS];
    if (ncols > MY_MAX_COLS) /* S_HGET checks its table (handler_columns); others have 2 or 3 */
        goto fail;
    memset(rb, 0, (size_t)ncols * sizeof(rb[0]));
    for (int i = 0; i < ncols; i++) {
        lens[i] = 0;
        nulls[i] = 0;
        rb[i].buffer_type = MYSQL_TYPE_BLOB;
        rb[i].length = &lens[i];
        rb[i].is_null = &nulls[i];
    }
    mysql_stmt_bind_result(st, rb);
    int rc, aged = ucol >= 0 && cm_sql_chain_aged(b);
    while ((rc = mysql_stmt_fetch(st)) == 0 || rc == MYSQL_DATA_TRUNCATED) {
        if (single) {
            if (b->result == NULL) {
                if ((b->result = fetch_col(st, &rb[vcol], lens[vcol], nulls[vcol], vcol)) == NULL)
                    goto fail;
                b->updated_us = aged ? fetch_utc_us(st, nulls[ucol], ucol) : 0;
            }
        } else {
            PyObject *k = fetch_col(st, &rb[0], lens[0], nulls[0], 0);
            if (k == NULL || k == Py_None) {
                Py_XDECREF(k);
                goto fail;
            }
            int prc = cm_sql_result_put(b, PyBytes_AS_STRING(k), (size_t)PyBytes_GET_SIZE(k),
                                        fetch_col(st, &rb[1], lens[1], nulls[1], 1),
                                        aged ? fetch_utc_us(st, nulls[ucol], ucol) : 0);
            Py_DECREF(k);
            if (prc < 0)
                goto fail;
        }
    }
    if (b->kind == CM_SQL_GET && !single)
        cm_sql_split_rows(b);
    mysql_stmt_free_result(st);
    PyErr_Clear();
    return;
fail:
    PyErr_Clear();
    mysql_stmt_free_result(st);
    cm_sql_batch_error(c->storage, b, c->storage->st->sql.SQLError, "mysql: cannot read a row");
}

/* execute(): a statement's result sets are read and dropped (one left unread
 * puts the connection out of sync); fresh: a result has just been announced
 * (mysql_field_count tells whether it has rows). 1 if a step was started (the
 * connection may be closed on return), 0 if there is nothing left to read. */
static int query_results(CmSqlConnObject *c, int fresh)
{
    MyConn *mc = c->aux;
    MYSQL *m = c->h;
    if (fresh && mysql_field_count(m) > 0) {
        c->phase = PH_QSTORE;
        cm_mysql_after(c, mysql_store_result_start(&mc->res, m));
        return 1;
    }
    if (mysql_more_results(m)) {
        c->phase = PH_QNEXT;
        cm_mysql_after(c, mysql_next_result_start(&mc->iret, m));
        return 1;
    }
    return 0;
}

static void step_done(CmSqlConnObject *c)
{
    MyConn *mc = c->aux;
    CmSqlStorageObject *s = c->storage; // borrowed
    switch (c->phase) {
    case PH_CONNECT:
        if (mc->mret == NULL) {
            if (!cm_mysql_try_next(c))
                fail_my(c);
            return;
        }
        if (cm_mysql_tls_refused(c))
            return;
        /* the watch of the socket connected (maybe not the first one) is
         * set up below */
        cm_sql_conn_unwatch(c);
        cm_sql_conn_set_fd(c, (int)mysql_get_socket((MYSQL *)c->h));
        c->phase = PH_IDLE;
        cm_sql_conn_ready(c);
        break;
    case PH_PREPARE:
        if (mc->iret != 0) {
            int slot = mc->slot;
            unsigned e = cm_mysql_errno(c);
            char buf[512];
            snprintf(buf, sizeof(buf), "mysql: %s", my_err(c));
            if (slot < 0)
                mc->adhoc = NULL;
            mysql_stmt_close(mc->cur);
            mc->cur = NULL;
            if (e >= 2000 && e < 3000) {
                cm_sql_conn_fail(c, s->st->sql.SQLConnectionError, buf);
                return;
            }
            if (cm_mysql_handler_failed(c, e, 1))
                return;
            cm_sql_batch_error_sql(s, c->batch, e == ER_NO_SUCH_TABLE_, buf);
            c->phase = PH_IDLE;
            cm_sql_conn_done(c);
            break;
        }
        if (mc->slot >= 0)
            mc->stmt[mc->slot] = mc->cur;
        if (mc->slot == S_HGET) {
            cm_mysql_handler_columns(mc, mc->cur);
            if (mc->hoff) {
                cm_mysql_run_batch(c); /* the SELECT */
                return;
            }
        }
        if (c->batch->kind == CM_SQL_PING) {
            c->phase = PH_IDLE;
            cm_sql_conn_done(c);
            break;
        }
        execute_batch(c);
        return;
    case PH_EXECUTE:
        if (mc->iret != 0) {
            if (cm_mysql_handler_failed(c, cm_mysql_errno(c), 0))
                return;
            c->phase = PH_IDLE;
            cm_mysql_request_failed(c);
            break;
        }
        if (c->batch->kind == CM_SQL_GET || c->batch->kind == CM_SQL_GET_ALL) {
            c->phase = PH_STORE;
            cm_mysql_after(c, mysql_stmt_store_result_start(&mc->iret, mc->cur));
            return;
        }
        if (c->batch->kind == CM_SQL_SWEEP)
            Py_XSETREF(c->batch->result,
                       PyLong_FromUnsignedLongLong(mysql_stmt_affected_rows(mc->cur)));
        if (c->batch->kind == CM_SQL_SET_ALL) {
            unsigned int zero = 0;
            mysql_stmt_attr_set(mc->cur, STMT_ATTR_ARRAY_SIZE, &zero);
        }
        PyErr_Clear();
        c->phase = PH_IDLE;
        cm_sql_conn_done(c);
        break;
    case PH_STORE:
        c->phase = PH_IDLE;
        if (mc->iret != 0) {
            cm_mysql_request_failed(c);
            break;
        }
        read_rows(c);
        cm_sql_conn_done(c);
        break;
    case PH_QUERY:
    case PH_QNEXT:
        /* next_result: 0 one more, -1 none, > 0 error */
        if (mc->iret > 0 || (c->phase == PH_QUERY && mc->iret != 0)) {
            c->phase = PH_IDLE;
            cm_mysql_request_failed(c);
            break;
        }
        if (mc->iret == 0 && query_results(c, 1))
            return;
        c->phase = PH_IDLE;
        cm_sql_conn_done(c);
        break;
    case PH_HCLOSE:
    case PH_HOPEN:
        if (cm_mysql_handler_done(c))
            return;
        break;
    case PH_QSTORE:
        if (mc->res == NULL && mysql_errno((MYSQL *)c->h) != 0) {
            c->phase = PH_IDLE;
            cm_mysql_request_failed(c);
            break;
        }
        mysql_free_result(mc->res);
        mc->res = NULL;
        if (query_results(c, 0))
            return;
        c->phase = PH_IDLE;
        cm_sql_conn_done(c);
        break;
    default:
        break;
    }
    if (c->net.state != CM_SQL_CLOSED && c->phase == PH_IDLE) {
        free(mc->sql);
        mc->sql = NULL;
        /* idle: any byte from the server now means it is closing */
        if (cm_sql_conn_watch(c, 1, 0) < 0) {
            PyErr_Clear();
            cm_sql_conn_fail(c, NULL, "mysql: cannot watch the socket");
        }
    }
}

static int cont(CmSqlConnObject *c, int ready)
{
    MyConn *mc = c->aux;
    switch (c->phase) {
    case PH_CONNECT:
        return mysql_real_connect_cont(&mc->mret, (MYSQL *)c->h, ready);
    case PH_PREPARE:
        return mysql_stmt_prepare_cont(&mc->iret, mc->cur, ready);
    case PH_EXECUTE:
        return mysql_stmt_execute_cont(&mc->iret, mc->cur, ready);
    case PH_STORE:
        return mysql_stmt_store_result_cont(&mc->iret, mc->cur, ready);
    case PH_QUERY:
    case PH_HOPEN:
    case PH_HCLOSE:
        return mysql_real_query_cont(&mc->iret, (MYSQL *)c->h, ready);
    case PH_QSTORE:
        return mysql_store_result_cont(&mc->res, (MYSQL *)c->h, ready);
    case PH_QNEXT:
        return mysql_next_result_cont(&mc->iret, (MYSQL *)c->h, ready);
    default:
        return 0;
    }
}

static void my_io(CmSqlConnObject *c, int readable, int writable)
{
    if (c->phase == PH_IDLE) {
        if (readable)
            cm_sql_conn_fail(c, c->storage->st->sql.SQLConnectionError,
                             "mysql: the server closed the connection");
        return;
    }
    int ready = (readable ? MYSQL_WAIT_READ : 0) | (writable ? MYSQL_WAIT_WRITE : 0);
    if (!(ready & c->status))
        return;
    cm_mysql_after(c, cont(c, ready));
}

const CmSqlDriver cm_mysql_driver = {
    .name = "mysql",
    .package = "libmariadb-dev",
    .available = 1,
    .key_max = 512,
    .key_nul = 1,
    .open = cm_mysql_open,
    .io = my_io,
    .start = my_start,
    .idle = cm_mysql_idle,
    .close = cm_mysql_close,
    .resolved = cm_mysql_resolved,
    .conn_traverse = cm_mysql_conn_traverse,
};

#else /* !CM_HAVE_MARIADB */

const CmSqlDriver cm_mysql_driver = {
    .name = "mysql",
    .package = "libmariadb-dev",
    .available = 0,
};

#endif
