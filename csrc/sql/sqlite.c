/* SQLite driver of the SQL storage: libsqlite3, statements run inline.
 *
 * Why inline and not a worker thread: in WAL mode a read never waits for a
 * writer, and a point lookup by the unique key index is a few microseconds
 * (benchmarks/SQL.md has the numbers), less than handing the work to a
 * thread and waking the loop back. The awaitable returned is ready at once
 * (no Future, no loop iteration).
 *
 * Writes take the database's write lock. SQLite's own busy handler would
 * sleep for it on the loop thread, GIL held, stalling every task and thread:
 * it is off (busy timeout 0). A statement that finds the database locked
 * (SQLITE_BUSY) gets a future instead and waits in the storage's queue of
 * waiting requests, retried from a loop timer (1 ms, doubling up to 50 ms)
 * in order, later writes of the same loop queued behind it (reads run at
 * once: they see what is committed); past
 * busy_timeout (100 ms by default, the `busy_timeout` option, in seconds)
 * it fails with SQLTimeoutError (a failed fill is logged, never raised into
 * get).
 *
 * Timestamps are text as Python's sqlite3 stored 0.3.0's aware datetimes
 * ("YYYY-MM-DD HH:MM:SS.ffffff+00:00"), so that both read each other's rows;
 * expire is compared as text with now, which orders like the times. A read
 * for a flight's call or an aged get_all also parses the row's updated_at
 * (0.3.0's: "YYYY-MM-DD HH:MM:SS.fff", UTC, from the column's default). */
#include "sql/sqlite.h"

#include "base/exc.h"
#include "loop/loop.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef CM_HAVE_SQLITE
#include <sqlite3.h>

#define MGET_CACHED 32
#define MGET_CHUNK 256

#define BUSY_RETRY_MIN 1000000LL /* ns */
#define BUSY_RETRY_MAX 50000000LL

typedef struct {
    sqlite3 *db;
    sqlite3_stmt *get;      /* the point read, with updated_at (aged) */
    sqlite3_stmt *get_bare; /* ... without it: a read that takes no age */
    sqlite3_stmt *set, *del, *sweep;
    sqlite3_stmt *mget[MGET_CACHED + 1];
    double busy;          /* busy_timeout, seconds */
    int busy_hit;         /* the last error raised was SQLITE_BUSY */
    CmSqlReq *wait_head;  /* requests waiting for the lock, in order (r->next) */
    CmSqlReq *wait_tail;  /* ... */
    PyObject *wait_loop;  /* the loop of their futures and of the timer */
    PyObject *wait_timer; /* TimerHandle of the next retry, or NULL */
    int64_t wait_backoff; /* ns */
} CmSqliteH;

static void wait_fail_all(CmSqlStorageObject *s, const char *msg);

static int sqlite_traverse(CmSqlStorageObject *s, visitproc visit, void *arg)
{
    CmSqliteH *h = s->h;
    if (h == NULL)
        return 0;
    Py_VISIT(h->wait_loop);
    Py_VISIT(h->wait_timer);
    return cm_sql_req_traverse(h->wait_head, visit, arg);
}

static void finalize_all(CmSqliteH *h)
{
    sqlite3_finalize(h->get);
    sqlite3_finalize(h->get_bare);
    sqlite3_finalize(h->set);
    sqlite3_finalize(h->del);
    sqlite3_finalize(h->sweep);
    h->get = h->get_bare = h->set = h->del = h->sweep = NULL;
    for (int i = 0; i <= MGET_CACHED; i++) {
        sqlite3_finalize(h->mget[i]);
        h->mget[i] = NULL;
    }
}

static void sqlite_teardown(CmSqlStorageObject *s)
{
    CmSqliteH *h = s->h;
    if (h == NULL)
        return;
    wait_fail_all(s, "sqlite: storage closed");
    finalize_all(h);
    if (h->db != NULL)
        sqlite3_close_v2(h->db);
    free(h);
    s->h = NULL;
}

static int is_missing_table(sqlite3 *db)
{
    return strstr(sqlite3_errmsg(db), "no such table") != NULL;
}

static int raise_db(CmSqlStorageObject *s, sqlite3 *db, int rc)
{
    CmState *st = s->st;
    if (db != NULL && is_missing_table(db)) {
        PyErr_Format(st->sql.SQLTableError,
                     "cacheme sqlite storage: table '%U' does not exist; create it with the DDL in "
                     "cacheme/storages/scripts/sqlite.sql (table name replaced) or pass "
                     "create_table=True",
                     s->table);
        return -1;
    }
    PyObject *tp =
        (rc == SQLITE_BUSY || rc == SQLITE_LOCKED) ? st->sql.SQLTimeoutError : st->sql.SQLError;
    if (s->h != NULL)
        ((CmSqliteH *)s->h)->busy_hit = rc == SQLITE_BUSY;
    PyErr_Format(tp, "sqlite: %s", db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    return -1;
}

static CmSqliteH *db_open(CmSqlStorageObject *s)
{
    CmSqliteH *h = s->h;
    if (h != NULL)
        return h;
    const char *path = PyUnicode_AsUTF8(s->dsn);
    if (path == NULL)
        return NULL;
    if ((h = calloc(1, sizeof(*h))) == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    int rc = sqlite3_open_v2(
        path, &h->db,
        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_URI, NULL);
    if (rc != SQLITE_OK) {
        raise_db(s, h->db, rc);
        goto fail;
    }
    double busy = 0.1;
    PyObject *o = PyDict_GetItemString(s->options, "busy_timeout"); // borrowed
    if (o != NULL && (busy = PyFloat_AsDouble(o)) == -1 && PyErr_Occurred())
        goto fail;
    /* never sleeps on the loop thread: a locked database is waited for
     * from a loop timer (wait_push) */
    h->busy = busy;
    sqlite3_busy_timeout(h->db, 0);
    rc = sqlite3_exec(h->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", NULL, NULL,
                      NULL);
    if (rc != SQLITE_OK) {
        raise_db(s, h->db, rc);
        goto fail;
    }
    s->h = h;
    return h;
fail:
    if (h->db != NULL)
        sqlite3_close_v2(h->db);
    free(h);
    return NULL;
}

static int prepare(CmSqlStorageObject *s, sqlite3_stmt **out, const char *fmt, const char *in)
{
    CmSqliteH *h = s->h;
    if (*out != NULL)
        return 0;
    const char *t = PyUnicode_AsUTF8(s->table);
    if (t == NULL)
        return -1;
    size_t n = strlen(fmt) + 3 * strlen(t) + (in ? strlen(in) : 0) + 1;
    char *sql = malloc(n);
    if (sql == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    snprintf(sql, n, fmt, t, in ? in : "");
    int rc = sqlite3_prepare_v3(h->db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL);
    free(sql);
    if (rc != SQLITE_OK) {
        *out = NULL;
        return raise_db(s, h->db, rc);
    }
    return 0;
}

static int prepare_fixed(CmSqlStorageObject *s)
{
    CmSqliteH *h = s->h;
    return prepare(s, &h->get,
                   "SELECT value, updated_at FROM %1$s WHERE \"key\" = ?1 AND "
                   "(expire IS NULL OR expire > ?2)%2$s",
                   NULL) < 0 ||
                   prepare(s, &h->get_bare,
                           "SELECT value FROM %1$s WHERE \"key\" = ?1 AND "
                           "(expire IS NULL OR expire > ?2)%2$s",
                           NULL) < 0 ||
                   prepare(s, &h->set,
                           "INSERT INTO %1$s (\"key\", value, expire, updated_at) VALUES "
                           "(?1, ?2, ?3, ?4) ON CONFLICT (\"key\") DO UPDATE SET "
                           "value = excluded.value, expire = excluded.expire, "
                           "updated_at = excluded.updated_at%2$s",
                           NULL) < 0 ||
                   prepare(s, &h->del, "DELETE FROM %1$s WHERE \"key\" = ?1%2$s", NULL) < 0 ||
                   prepare(s, &h->sweep,
                           "DELETE FROM %1$s WHERE id IN (SELECT id FROM %1$s WHERE expire <= ?1 "
                           "LIMIT ?2)%2$s",
                           NULL) < 0
               ? -1
               : 0;
}

/* The 64-bit forms: an int length would wrap above 2 GiB (undefined for
 * sqlite3_bind_blob); past SQLITE_LIMIT_LENGTH they fail with SQLITE_TOOBIG. */
static int bind_str(sqlite3_stmt *stmt, int i, PyObject *o)
{
    Py_ssize_t n;
    const char *p;
    if (PyBytes_Check(o))
        return sqlite3_bind_blob64(stmt, i, PyBytes_AS_STRING(o),
                                   (sqlite3_uint64)PyBytes_GET_SIZE(o), SQLITE_STATIC);
    if ((p = PyUnicode_AsUTF8AndSize(o, &n)) == NULL)
        return -1;
    return sqlite3_bind_text64(stmt, i, p, (sqlite3_uint64)n, SQLITE_STATIC, SQLITE_UTF8);
}

/* A timestamp column (updated_at) as UTC us since the epoch; 0 unknown. */
static int64_t column_utc_us(sqlite3_stmt *stmt, int col)
{
    const char *t = (const char *)sqlite3_column_text(stmt, col);
    return t ? cm_sql_parse_utc_us(t, (size_t)sqlite3_column_bytes(stmt, col)) : 0;
}

static PyObject *column_raw(sqlite3_stmt *stmt, int col, int as_str)
{
    int type = sqlite3_column_type(stmt, col);
    if (type == SQLITE_NULL)
        return Py_NewRef(Py_None);
    const void *p = sqlite3_column_blob(stmt, col);
    int n = sqlite3_column_bytes(stmt, col);
    if (type == SQLITE_TEXT && as_str)
        return PyUnicode_DecodeUTF8(p ? p : "", n, "surrogateescape");
    return PyBytes_FromStringAndSize(p ? p : "", n);
}

/* step a write statement to its end; -1 with an exception */
static int step_done(CmSqlStorageObject *s, sqlite3_stmt *stmt)
{
    int rc = sqlite3_step(stmt);
    int out = 0;
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        out = raise_db(s, ((CmSqliteH *)s->h)->db, rc);
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    return out;
}

static int do_set(CmSqlStorageObject *s, PyObject *key, PyObject *value, const char *expire,
                  const char *now)
{
    sqlite3_stmt *st = ((CmSqliteH *)s->h)->set;
    if (bind_str(st, 1, key) != SQLITE_OK || bind_str(st, 2, value) != SQLITE_OK ||
        (expire ? sqlite3_bind_text(st, 3, expire, -1, SQLITE_STATIC) : sqlite3_bind_null(st, 3)) !=
            SQLITE_OK ||
        sqlite3_bind_text(st, 4, now, -1, SQLITE_STATIC) != SQLITE_OK) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (!PyErr_Occurred())
            raise_db(s, ((CmSqliteH *)s->h)->db, SQLITE_ERROR);
        return -1;
    }
    return step_done(s, st);
}

static long do_sweep(CmSqlStorageObject *s, long limit, const char *now)
{
    CmSqliteH *h = s->h;
    sqlite3_bind_text(h->sweep, 1, now, -1, SQLITE_STATIC);
    sqlite3_bind_int64(h->sweep, 2, limit);
    if (step_done(s, h->sweep) < 0)
        return -1;
    return (long)sqlite3_changes(h->db);
}

static int do_mget(CmSqlStorageObject *s, CmSqlReq *r, Py_ssize_t from, Py_ssize_t n,
                   const char *now)
{
    CmSqliteH *h = s->h;
    sqlite3_stmt *stmt = NULL;
    int rc = -1, own = n > MGET_CACHED;
    if (own || h->mget[n] == NULL) {
        char *in = malloc((size_t)n * 2 + 1);
        if (in == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            in[2 * i] = i ? ',' : ' ';
            in[2 * i + 1] = '?';
        }
        in[2 * n] = '\0';
        sqlite3_stmt **slot = own ? &stmt : &h->mget[n];
        int prc = prepare(s, slot,
                          "SELECT \"key\", value, updated_at FROM %1$s WHERE \"key\" IN (%2$s) AND "
                          "(expire IS NULL OR expire > ?)",
                          in);
        free(in);
        if (prc < 0)
            return -1;
    }
    if (!own)
        stmt = h->mget[n];
    for (Py_ssize_t i = 0; i < n; i++)
        if (bind_str(stmt, (int)i + 1, PyList_GET_ITEM(r->keys, from + i)) != SQLITE_OK)
            goto done;
    sqlite3_bind_text(stmt, (int)n + 1, now, -1, SQLITE_STATIC);
    int src;
    while ((src = sqlite3_step(stmt)) == SQLITE_ROW) {
        const char *k = (const char *)sqlite3_column_text(stmt, 0);
        if (cm_sql_result_put(r, k ? k : "", (size_t)sqlite3_column_bytes(stmt, 0),
                              column_raw(stmt, 1, r->ser == Py_None),
                              r->aged ? column_utc_us(stmt, 2) : 0) < 0)
            goto done;
    }
    if (src != SQLITE_DONE) {
        raise_db(s, h->db, src);
        goto done;
    }
    rc = 0;
done:
    if (rc < 0 && !PyErr_Occurred())
        raise_db(s, h->db, SQLITE_ERROR);
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    if (own)
        sqlite3_finalize(stmt);
    return rc;
}

static int run_one(CmSqlStorageObject *s, CmSqlReq *r)
{
    CmSqliteH *h = s->h;
    char now[48], expire[48];
    int rc = -1;
    h->busy_hit = 0;
    if (r->kind == CM_SQL_EXEC) {
        const char *sql = PyUnicode_AsUTF8(r->key);
        if (sql == NULL)
            return -1;
        finalize_all(h);
        int erc = sqlite3_exec(h->db, sql, NULL, NULL, NULL);
        return erc == SQLITE_OK ? 0 : raise_db(s, h->db, erc);
    }
    if (prepare_fixed(s) < 0)
        return -1;
    cm_sql_utc_text(now, sizeof(now), 0);
    if (r->ttl >= 0)
        cm_sql_utc_text(expire, sizeof(expire), cm_sql_ttl_us(r));
    switch (r->kind) {
    case CM_SQL_PING:
        rc = 0;
        break;
    case CM_SQL_GET: {
        /* the updated_at column costs SQLite ~350 instructions per row */
        sqlite3_stmt *st = r->aged ? h->get : h->get_bare;
        int src;
        if (bind_str(st, 1, r->key) != SQLITE_OK ||
            sqlite3_bind_text(st, 2, now, -1, SQLITE_STATIC) != SQLITE_OK) {
            if (!PyErr_Occurred())
                raise_db(s, h->db, SQLITE_ERROR);
        } else if ((src = sqlite3_step(st)) == SQLITE_ROW) {
            r->result = column_raw(st, 0, r->ser == Py_None);
            rc = r->result ? 0 : -1;
            if (r->aged)
                r->updated_us = column_utc_us(st, 1);
        } else if (src == SQLITE_DONE) {
            rc = 0;
        } else {
            raise_db(s, h->db, src);
        }
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        break;
    }
    case CM_SQL_GET_ALL: {
        Py_ssize_t n = PyList_GET_SIZE(r->keys);
        rc = 0;
        for (Py_ssize_t i = 0; i < n && rc == 0; i += MGET_CHUNK)
            rc = do_mget(s, r, i, n - i < MGET_CHUNK ? n - i : MGET_CHUNK, now);
        break;
    }
    case CM_SQL_SET:
        rc = do_set(s, r->key, r->value, r->ttl >= 0 ? expire : NULL, now);
        break;
    case CM_SQL_SET_ALL: {
        int brc = sqlite3_exec(h->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        if (brc != SQLITE_OK) {
            raise_db(s, h->db, brc);
            break;
        }
        rc = 0;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(r->keys) && rc == 0; i++)
            rc = do_set(s, PyList_GET_ITEM(r->keys, i), PyList_GET_ITEM(r->values, i),
                        r->ttl >= 0 ? expire : NULL, now);
        brc = sqlite3_exec(h->db, rc == 0 ? "COMMIT" : "ROLLBACK", NULL, NULL, NULL);
        if (rc == 0 && brc != SQLITE_OK)
            rc = raise_db(s, h->db, brc);
        break;
    }
    case CM_SQL_DEL:
        if (bind_str(h->del, 1, r->key) != SQLITE_OK) {
            if (!PyErr_Occurred())
                raise_db(s, h->db, SQLITE_ERROR);
            break;
        }
        rc = step_done(s, h->del);
        break;
    case CM_SQL_SWEEP: {
        long n = do_sweep(s, r->limit, now);
        if (n >= 0 && (r->result = PyLong_FromLong(n)) != NULL)
            rc = 0;
        break;
    }
    default:
        PyErr_SetString(PyExc_SystemError, "sqlite: unknown request");
        break;
    }
    /* the periodic sweep rides on writes: bounded, at most once an interval */
    if (rc == 0 && (r->kind == CM_SQL_SET || r->kind == CM_SQL_SET_ALL) && s->sweep_interval > 0 &&
        cm_sql_now() >= s->next_sweep) {
        s->next_sweep = cm_sql_now() + (int64_t)(s->sweep_interval * 1e9);
        if (do_sweep(s, s->sweep_limit, now) < 0)
            PyErr_Clear();
    }
    return rc;
}

/* ------------------------------------------------------------------ */
/* waiting for a locked database, from the loop                       */

static PyObject *wait_on_timer(PyObject *self, PyObject *unused);
static PyMethodDef wait_timer_def = {"_on_retry", wait_on_timer, METH_NOARGS, NULL};

static CmSqlReq *wait_pop(CmSqliteH *h)
{
    CmSqlReq *r = h->wait_head;
    h->wait_head = r->next;
    if (h->wait_head == NULL)
        h->wait_tail = NULL;
    r->next = NULL;
    return r;
}

/* Fail every waiting request with SQLConnectionError(msg) (the storage
 * closes), and stop the timer. */
static void wait_fail_all(CmSqlStorageObject *s, const char *msg)
{
    CmSqliteH *h = s->h;
    if (h->wait_timer != NULL) {
        cm_handle_cancel(s->st, h->wait_timer);
        Py_CLEAR(h->wait_timer);
    }
    while (h->wait_head != NULL) {
        CmSqlReq *r = wait_pop(h);
        cm_sql_req_error(s, r, s->st->sql.SQLConnectionError, msg);
        cm_sql_req_finish(s, r);
    }
    Py_CLEAR(h->wait_loop);
}

/* The timer for the next retry (the storage held by its callback). */
static int wait_arm(CmSqlStorageObject *s)
{
    CmSqliteH *h = s->h;
    PyObject *cb = PyCFunction_New(&wait_timer_def, (PyObject *)s);
    if (cb == NULL)
        return -1;
    h->wait_timer = cm_loop_call_later(s->st, h->wait_loop, (double)h->wait_backoff / 1e9, cb);
    Py_DECREF(cb);
    return h->wait_timer ? 0 : -1;
}

/* r waits (behind those already waiting): its future on the running loop.
 * 0, or -1 with an exception (no running loop: nothing to wait on). */
static int wait_push(CmSqlStorageObject *s, CmSqlReq *r, PyObject *loop)
{
    CmSqliteH *h = s->h;
    if (r->fut == NULL && (r->fut = cm_loop_create_future(s->st, loop)) == NULL)
        return -1;
    r->deadline = cm_sql_now() + (int64_t)(h->busy * 1e9);
    r->next = NULL;
    if (h->wait_head == NULL) {
        h->wait_loop = Py_NewRef(loop);
        h->wait_backoff = BUSY_RETRY_MIN;
        h->wait_head = h->wait_tail = r;
        if (wait_arm(s) < 0) {
            h->wait_head = h->wait_tail = NULL;
            Py_CLEAR(h->wait_loop);
            Py_CLEAR(r->fut);
            return -1;
        }
        return 0;
    }
    h->wait_tail->next = r;
    h->wait_tail = r;
    return 0;
}

static PyObject *wait_on_timer(PyObject *self, PyObject *Py_UNUSED(unused))
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    CmSqliteH *h = s->h;
    if (h == NULL)
        Py_RETURN_NONE;
    Py_INCREF(s);
    Py_CLEAR(h->wait_timer);
    while (h->wait_head != NULL) {
        CmSqlReq *r = h->wait_head; // borrowed: still queued
        int done = cm_future_done(s->st, r->fut);
        if (done != 0) { /* cancelled by its caller: not run */
            PyErr_Clear();
            cm_sql_req_finish(s, wait_pop(h));
            continue;
        }
        Py_CLEAR(r->result); /* a get_all's rows of the last try */
        Py_CLEAR(r->ages);
        if (run_one(s, r) < 0) {
            if (h->busy_hit && cm_sql_now() < r->deadline) {
                PyErr_Clear();
                break; /* still locked: later */
            }
            wait_pop(h);
            if (h->busy_hit) {
                char msg[160];
                PyErr_Clear();
                snprintf(msg, sizeof(msg),
                         "sqlite: database is locked (waited busy_timeout, %g s, for the lock)",
                         h->busy);
                cm_sql_req_error(s, r, s->st->sql.SQLTimeoutError, msg);
            } else {
                PyObject *exc = cm_exc_take();
                if (r->error == NULL)
                    r->error = exc;
                else
                    Py_XDECREF(exc);
            }
            cm_sql_req_finish(s, r);
            continue;
        }
        cm_sql_req_finish(s, wait_pop(h));
        h->wait_backoff = BUSY_RETRY_MIN;
    }
    if (h->wait_head != NULL) {
        h->wait_backoff =
            h->wait_backoff * 2 > BUSY_RETRY_MAX ? BUSY_RETRY_MAX : h->wait_backoff * 2;
        int64_t left = h->wait_head->deadline - cm_sql_now();
        if (left < h->wait_backoff)
            h->wait_backoff = left > 0 ? left : 0;
        if (wait_arm(s) < 0) {
            PyErr_WriteUnraisable(self);
            wait_fail_all(s, "sqlite: cannot wait for the lock");
        }
    } else
        Py_CLEAR(h->wait_loop);
    Py_DECREF(s);
    Py_RETURN_NONE;
}

/* Run the request inline (0); a locked database (or requests already
 * waiting on this loop) makes it wait from the loop (1, r->fut set). */
static int sqlite_run(CmSqlStorageObject *s, CmSqlReq *r)
{
    CmSqliteH *h = db_open(s);
    if (h == NULL)
        return -1;
    PyObject *loop = NULL;
    int read = r->kind == CM_SQL_GET || r->kind == CM_SQL_GET_ALL || r->kind == CM_SQL_PING;
    if (h->wait_head != NULL && !read) {
        /* behind those waiting, in order; reads go past them (WAL: they
         * do not wait for a writer), and another loop (thread) cannot wait
         * on this one's timer: it runs inline */
        if ((loop = cm_loop_running(s->st)) == NULL)
            PyErr_Clear();
        else if (loop == h->wait_loop) {
            int rc = wait_push(s, r, loop);
            Py_DECREF(loop);
            return rc < 0 ? -1 : 1;
        }
        Py_CLEAR(loop);
    }
    if (run_one(s, r) == 0)
        return 0;
    if (!h->busy_hit || !(h->busy > 0))
        return -1;
    /* locked: wait from the loop, if one is running */
    PyObject *exc = cm_exc_take();
    if ((loop = cm_loop_running(s->st)) == NULL) {
        PyErr_Clear();
        cm_exc_restore(exc);
        return -1;
    }
    Py_XDECREF(exc);
    if (h->wait_head != NULL && loop != h->wait_loop) {
        Py_DECREF(loop);
        PyErr_SetString(s->st->sql.SQLTimeoutError,
                        "sqlite: database is locked (and waited for by another event loop)");
        return -1;
    }
    Py_CLEAR(r->result);
    Py_CLEAR(r->ages);
    int rc = wait_push(s, r, loop);
    Py_DECREF(loop);
    return rc < 0 ? -1 : 1;
}

const CmSqlDriver cm_sqlite_driver = {
    .name = "sqlite",
    .package = "libsqlite3-dev",
    .available = 1,
    .key_max = 0,
    .key_nul = 1,
    .sync = 1,
    .teardown = sqlite_teardown,
    .run = sqlite_run,
    .traverse = sqlite_traverse,
};

#else /* !CM_HAVE_SQLITE */

const CmSqlDriver cm_sqlite_driver = {
    .name = "sqlite",
    .package = "libsqlite3-dev",
    .available = 0,
};

#endif
