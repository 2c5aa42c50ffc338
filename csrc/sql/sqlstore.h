/* SQL storages (PostgreSQL, MySQL/MariaDB, SQLite): what the three share.
 *
 * The Python-facing types PgClient, MySQLClient and SQLiteClient are one
 * storage type (CmSqlStorageObject) with a driver table each. The storage
 * turns get/get_all/set/set_all/remove into requests (CmSqlReq: keys, bytes,
 * a TTL in seconds, an asyncio future) and queues them; a pool of up to
 * pool_size connections (CmSqlConnObject, one socket each, watched on the
 * running loop through loop.h) takes them from the queue. A driver knows how
 * to open a connection, send a request and read its result; everything else
 * (the queue, the pool, futures, timeouts, backoff after a failed connect,
 * the expired-row sweep, the row layout) lives in sqlstore.c.
 *
 * SQLite has no socket: its driver runs each request inline (`sync`), the
 * statements being short point lookups and upserts in WAL mode.
 *
 * Rows are cacheme 0.3.0's: key (unique), value (serializer.dumps(v), or the
 * raw bytes without a serializer), expire (UTC, NULL for no TTL),
 * updated_at. Expired rows read as misses (the SQL compares expire with the
 * server's clock) and are deleted by a bounded periodic sweep. */
#ifndef CM_SQLSTORE_H
#define CM_SQLSTORE_H
#include "state.h"

#include "net/busypoll.h"
#include "net/netloop.h"

typedef struct CmSqlReq CmSqlReq;
typedef struct CmSqlStorageObject CmSqlStorageObject;
typedef struct CmSqlConnObject CmSqlConnObject;

enum {
    CM_SQL_GET,     /* key -> result: the raw value or NULL */
    CM_SQL_GET_ALL, /* keys -> result: dict key -> raw value */
    CM_SQL_SET,     /* key, value, ttl */
    CM_SQL_SET_ALL, /* keys, values, ttl (keys unique) */
    CM_SQL_DEL,     /* key */
    CM_SQL_SWEEP,   /* limit -> result: int, rows deleted */
    CM_SQL_EXEC,    /* key holds an SQL statement without parameters (DDL) */
    CM_SQL_PING,    /* done as soon as a connection is ready */
};

struct CmSqlReq {
    CmSqlReq *next;
    int kind;
    PyObject *fut;    /* NULL for background requests (the sweep) */
    PyObject *ser;    /* GET, GET_ALL: serializer or None */
    PyObject *key;    /* str */
    PyObject *keys;   /* list of str */
    PyObject *nodes;  /* GET_ALL: list of nodes, parallel to keys */
    PyObject *value;  /* bytes */
    PyObject *values; /* list of bytes, parallel to keys */
    double ttl;       /* seconds; < 0: no expiry */
    long limit;
    int64_t deadline; /* monotonic ns */
    PyObject *result;
    PyObject *error;
    /* set while its submitter may still wait for it in its own call (see
     * submit): then finishing it only sets `finished`, and the submitter
     * takes the result (no future) or attaches a future */
    int held;
    int finished;
};

enum { CM_SQL_CONNECTING, CM_SQL_IDLE, CM_SQL_BUSY, CM_SQL_CLOSED };

struct CmSqlConnObject {
    PyObject_HEAD
    CmSqlStorageObject *storage; /* borrowed; the storage owns the conn; NULL once closed */
    int state;
    int fd;
    int reading, writing;
    int phase;        /* driver's sub-state */
    int status;       /* driver's scratch (MariaDB's wait status) */
    int err;          /* driver's scratch: the batch has failed */
    int64_t deadline; /* of the connect or the batch in flight; 0: none */
    CmSqlReq *batch;  /* requests in flight on this connection */
    void *h;          /* driver handle (PGconn *, MYSQL *) */
    void *aux;        /* driver scratch */
};

typedef struct {
    const char *name;    /* "postgresql" */
    const char *package; /* Debian package of the library */
    int available;       /* the library was found at build time */
    int sync;            /* requests run inline (no connections) */
    /* keys the table can hold: at most key_max characters (its VARCHAR;
     * 0: any), NUL characters only with key_nul (PostgreSQL's text cannot
     * hold them); others are refused with SQLKeyError */
    Py_ssize_t key_max;
    int key_nul;
    /* storage-level setup/teardown (sqlite: the database handle) */
    int (*setup)(CmSqlStorageObject *s);
    void (*teardown)(CmSqlStorageObject *s);
    /* connections: start connecting (set fd and watches), progress on
     * readiness, take requests from the queue when idle, free the handle */
    int (*open)(CmSqlConnObject *c);
    void (*io)(CmSqlConnObject *c, int readable, int writable);
    void (*start)(CmSqlConnObject *c);
    /* optional, from the storage's periodic tick for each idle connection:
     * housekeeping (it may start a step without a batch) */
    void (*idle)(CmSqlConnObject *c, int64_t now);
    void (*close)(CmSqlConnObject *c);
    /* sync drivers: run one request, filling result or raising; or set its
     * fut (a future on the running loop) and keep it, to finish it later
     * from the loop with cm_sql_req_finish */
    int (*run)(CmSqlStorageObject *s, CmSqlReq *r);
} CmSqlDriver;

struct CmSqlStorageObject {
    PyObject_HEAD
    CmState *st;
    const CmSqlDriver *drv;
    PyObject *loop;    /* the loop the connections are watched on */
    PyObject *table;   /* str, a validated identifier */
    PyObject *dsn;     /* str: libpq conninfo/URL, MySQL URL parts, SQLite path */
    PyObject *options; /* dict of driver options (host, port, user, ...) */
    Py_ssize_t pool_size;
    double timeout, connect_timeout, sweep_interval;
    long sweep_limit;
    CmSqlConnObject **conns;
    Py_ssize_t nconns, conns_cap;
    CmSqlReq *head, *tail;
    Py_ssize_t queued;
    PyObject *tick; /* TimerHandle of the periodic check, or NULL */
    int64_t retry_at, backoff, next_sweep;
    int sweeping;
    int dispatching;
    PyObject *last_error; /* why the last connect failed */
    CmBusyPoll spin;      /* waiting for replies on an idle loop (busypoll.h) */
    void *h;              /* driver's storage-level handle (sqlite3 *) */
    void *aux;
    PyObject *weakreflist;
    /* the instances serving other loops (netloop.h), made from the same
     * arguments */
    CmNetLoops loops;
    PyObject *init_args, *init_kwds;
};

/* Drivers (pg.c, mysql.c, sqlite.c). */
extern const CmSqlDriver cm_pg_driver;
extern const CmSqlDriver cm_mysql_driver;
extern const CmSqlDriver cm_sqlite_driver;

/* For drivers. */
/* Watch the connection's fd for reading/writing (only what changes is told
 * to the loop); -1 with an exception. */
int cm_sql_conn_watch(CmSqlConnObject *c, int read, int write);
/* Stop watching (also when the fd is about to change or be closed). */
void cm_sql_conn_unwatch(CmSqlConnObject *c);
/* Close the connection and fail its batch with exc_type(msg); connecting:
 * counts as a failed connect (backoff). Never raises. */
void cm_sql_conn_fail(CmSqlConnObject *c, PyObject *exc_type, const char *msg);
/* cm_sql_conn_fail with the pending exception's text (cleared): as it is
 * when it came from the connect (connected), else after "<driver>: cannot
 * resolve the host: ". For a connect that follows a host lookup. */
void cm_sql_conn_fail_lookup(CmSqlConnObject *c, int connected);
/* The batch in flight is answered: finish its requests; the conn is idle. */
void cm_sql_conn_done(CmSqlConnObject *c);
/* The connection is ready for requests (after connect and prepare). */
void cm_sql_conn_ready(CmSqlConnObject *c);
/* Take the first queued request (NULL if none), or up to max GETs in a row
 * when the first is a GET (linked through next). */
CmSqlReq *cm_sql_take(CmSqlStorageObject *s, int max_gets);
/* Finish a request: set its future (result or error) and free it. */
void cm_sql_req_finish(CmSqlStorageObject *s, CmSqlReq *r);
/* Set the request's error (first one wins) to exc_type(msg). */
void cm_sql_req_error(CmSqlStorageObject *s, CmSqlReq *r, PyObject *exc_type, const char *msg);
/* The error for a statement that failed: the missing-table message when
 * missing, else exc_type(msg). */
void cm_sql_req_error_sql(CmSqlStorageObject *s, CmSqlReq *r, int missing_table, const char *msg);
/* Append key -> raw to a GET_ALL/coalesced GET result dict. */
int cm_sql_result_put(CmSqlReq *r, const char *key, size_t klen, PyObject *raw_steal);
/* "ttl seconds from now" in microseconds, or -1 without TTL. */
long long cm_sql_ttl_us(const CmSqlReq *r);
/* UTC wall clock as "YYYY-MM-DD HH:MM:SS.ffffff+00:00" (the way Python's
 * sqlite3 stored 0.3.0's aware datetimes), offset by delta_us; buf >= 40. */
void cm_sql_utc_text(char *buf, size_t n, long long delta_us);
int64_t cm_sql_now(void);

int cm_sql_init(PyObject *mod, CmState *st);
int cm_sql_traverse(CmState *st, visitproc visit, void *arg);
void cm_sql_clear(CmState *st);

/* ---- requests of a flight's call (sql/remote.c, flight/remote.h) ---------- */
/* Queue GET node (cm_sql_get_for), or SET node = value with ttl
 * (cm_sql_set_for), on the instance serving the running loop, with `waiter`
 * as the request's future: an object answering done, set_result and
 * set_exception as a Future does, which the storage tells instead of an
 * asyncio Future. The request is returned held (see CmSqlReq), with the
 * instance in *inst (a new reference), or NULL with an exception. A storage
 * whose driver runs inline (SQLite) refuses with a SystemError. */
CmSqlReq *cm_sql_get_for(PyObject *storage, PyObject *node, PyObject *ser, PyObject *waiter,
                         CmSqlStorageObject **inst);
CmSqlReq *cm_sql_set_for(PyObject *storage, PyObject *node, PyObject *value, PyObject *ttl,
                         PyObject *ser, PyObject *waiter, CmSqlStorageObject **inst);
/* Let a held request go: finished while held, it is finished now (its
 * waiter told, the request freed); else it finishes when answered. */
void cm_sql_req_release(CmSqlStorageObject *inst, CmSqlReq *r);
/* sql/remote.c: PgClient and MySQLClient registered with the singleflight */
int cm_sql_remote_init(PyObject *mod, CmState *st);
/* ---- end of the requests of a flight's call ---- */

#endif
