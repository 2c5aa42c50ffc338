/* SQL storages (PostgreSQL, MySQL/MariaDB, SQLite): what the three share.
 *
 * The Python-facing types PgClient, MySQLClient and SQLiteClient are one
 * storage type (CmSqlStorageObject, sqlstore.c, its life in lifecycle.c)
 * with a driver table each.
 * The storage turns get/get_all/set/set_all/remove into requests (CmSqlReq,
 * request.c: keys, bytes, a TTL in seconds, an asyncio future) and submits
 * them (submit.c); a pool of up to pool_size connections (CmSqlConnObject,
 * pool.c: one socket each, watched on the running loop through loop.h)
 * takes them from the queue. A driver (pg.c, mysql.c, sqlite.c) knows how
 * to open a connection, send a request and read its result; everything
 * else (the queue, the pool, futures, timeouts, backoff after a failed
 * connect, the expired-row sweep, the row layout) is shared.
 *
 * SQLite has no socket: its driver runs each request inline (`sync`), the
 * statements being short point lookups and upserts in WAL mode.
 *
 * Reads give each row's updated_at (UTC) with the value, for the freshness
 * options: the age a flight's GET tells its call (sql/remote.c), and the
 * triples of get_all_aged.
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
#include "sql/pool.h"
#include "sql/request.h"
#include "sql/submit.h"

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
    /* after a host lookup the driver started (cm_sql_conn_lookup): connect
     * to addrs, its addresses; -1 with an exception fails the connection */
    int (*resolved)(CmSqlConnObject *c, PyObject *addrs);
    void (*io)(CmSqlConnObject *c, int readable, int writable);
    void (*start)(CmSqlConnObject *c);
    /* optional, from the storage's periodic tick for each idle connection:
     * housekeeping (it may start a step without a batch) */
    void (*idle)(CmSqlConnObject *c, int64_t now);
    void (*close)(CmSqlConnObject *c);
    /* optional: visit the Python objects the driver keeps for a connection
     * (a host lookup's task) or for the storage (SQLite's lock waiters) */
    int (*conn_traverse)(CmSqlConnObject *c, visitproc visit, void *arg);
    int (*traverse)(CmSqlStorageObject *s, visitproc visit, void *arg);
    /* sync drivers: run one request, filling result or raising (0, -1);
     * or keep it, to finish it later from the loop with cm_sql_req_finish,
     * its fut set (a new future on the running loop, unless it has one) (1) */
    int (*run)(CmSqlStorageObject *s, CmSqlReq *r);
} CmSqlDriver;

struct CmSqlStorageObject {
    PyObject_HEAD
    CmState *st;
    const CmSqlDriver *drv;
    PyObject *table;   /* str, a validated identifier */
    PyObject *dsn;     /* str: libpq conninfo/URL, MySQL URL parts, SQLite path */
    PyObject *options; /* dict of driver options (host, port, user, ...) */
    Py_ssize_t pool_size;
    double timeout, connect_timeout, sweep_interval;
    long sweep_limit;
    /* the connections (CmSqlConnObject), the loop they are watched on, the
     * backoff after a failed connect and its error (net/pool.h) */
    CmNetPool pool;
    CmSqlReq *head, *tail;
    Py_ssize_t queued;
    Py_ssize_t opened; /* connections opened by this instance (pool_info) */
    PyObject *tick;    /* TimerHandle of the periodic check, or NULL */
    int64_t next_sweep;
    int sweeping;
    int dispatching;
    CmBusyPoll spin; /* waiting for replies on an idle loop (busypoll.h) */
    void *h;         /* driver's storage-level handle (sqlite3 *) */
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

/* The library of the storage's driver was found at build time; else -1
 * with a RuntimeError telling what to install. */
int cm_sql_check_available(CmSqlStorageObject *s);

/* lifecycle.c: the type's slots for a storage's life (tp_init checks and
 * takes the options; tp_traverse, tp_clear, tp_dealloc), and a new storage
 * of type tp for driver drv (its tp_new). */
int cm_sql_storage_init(PyObject *self, PyObject *args, PyObject *kwds);
int cm_sql_storage_traverse(PyObject *self, visitproc visit, void *arg);
int cm_sql_storage_clear(PyObject *self);
void cm_sql_storage_dealloc(PyObject *self);
PyObject *cm_sql_storage_new(PyTypeObject *tp, const CmSqlDriver *drv);

/* sqlmod.c: the types, errors and state of the SQL storages */
int cm_sql_init(PyObject *mod, CmState *st);
/* sqlstore.c: PgClient, MySQLClient, SQLiteClient added to mod and st */
int cm_sql_add_types(PyObject *mod, CmState *st);
int cm_sql_traverse(CmState *st, visitproc visit, void *arg);
void cm_sql_clear(CmState *st);

/* ---- requests of a flight's call (sql/remote.c, flight/remote.h) ---------- */
/* Queue GET node (cm_sql_get_for; aged: its row's updated_at is told to the
 * waiter's call, cm_sql_flight_age), or SET node = value with ttl
 * (cm_sql_set_for), on the instance serving loop (the running one; NULL: it
 * is looked up), with `waiter` as the request's future: an object answering
 * done, set_result and set_exception as a Future does, which the storage
 * tells instead of an asyncio Future. The request is given held (see
 * CmSqlReq) in *held, with the instance in *inst (a new reference); a
 * storage whose driver runs inline (SQLite) runs it at once and tells the
 * waiter (*held and *inst NULL; see cm_sql_submit_held). 0, or -1 with an
 * exception. */
int cm_sql_get_for(PyObject *storage, PyObject *node, PyObject *ser, int aged, PyObject *loop,
                   PyObject *waiter, CmSqlReq **held, CmSqlStorageObject **inst);
int cm_sql_set_for(PyObject *storage, PyObject *node, PyObject *value, PyObject *ttl, PyObject *ser,
                   PyObject *loop, PyObject *waiter, CmSqlReq **held, CmSqlStorageObject **inst);
/* CmRemoteOps.get_all_aged: storage.get_all(nodes, ser) whose pairs are
 * (node, value, updated_at: UTC ns, 0 unknown) triples. */
PyObject *cm_sql_get_all_aged(CmState *st, PyObject *storage, PyObject *nodes, PyObject *ser);
/* Let a held request go: finished while held, it is finished now (its
 * waiter told, the request freed); else it finishes when answered. */
void cm_sql_req_release(CmSqlStorageObject *inst, CmSqlReq *r);
/* sql/remote.c: when fut is a flight's wait, tell it res or err (an
 * instance) as its set_result/set_exception would, and 1; else 0. */
int cm_sql_tell_wait(CmState *st, PyObject *fut, PyObject *res, PyObject *err);
/* sql/remote.c: tell the flight's call of an aged GET (its fut, a flight
 * wait) the row's updated_at, before the GET is finished. */
void cm_sql_flight_age(CmSqlReq *r);
/* sql/remote.c: PgClient, MySQLClient and SQLiteClient registered with the
 * singleflight */
int cm_sql_remote_init(PyObject *mod, CmState *st);
/* ---- end of the requests of a flight's call ---- */

#endif
