/* A SQL storage's life, apart from its requests (sqlstore.c): made for a
 * driver, its options checked and taken (re-initialising closes what the
 * old ones opened), its Python objects shown to the GC, and let go of
 * without touching a loop that is closed, gone, or the parent's after
 * fork (the netloop.h hooks: an instance for another loop is made from the
 * same arguments). */
#include "sql/sqlstore.h"

#include <math.h>

#include "base/exc.h"
#include "core/ttl.h"
#include "loop/loop.h"
#include "net/netstore.h"

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

int cm_sql_storage_init(PyObject *self, PyObject *args, PyObject *kwds)
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
    if (cm_sql_check_available(s) < 0)
        return -1;
    cm_sql_close_all(s, "storage re-initialized");
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
    if (cm_netstore_keep_args(&s->init_args, &s->init_kwds, args, kwds) < 0)
        return -1;
    cm_netloops_clear(&s->loops);
    if (s->drv->setup != NULL && s->drv->setup(s) < 0)
        return -1;
    return 0;
}

int cm_sql_storage_traverse(PyObject *self, visitproc visit, void *arg)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    Py_VISIT(s->tick);
    Py_VISIT(s->table);
    Py_VISIT(s->dsn);
    Py_VISIT(s->options);
    int rc = cm_sql_req_traverse(s->head, visit, arg);
    if (rc == 0)
        rc =
            cm_netstore_traverse(self, &s->pool, &s->loops, s->init_args, s->init_kwds, visit, arg);
    if (rc == 0 && s->drv != NULL && s->drv->traverse != NULL)
        rc = s->drv->traverse(s, visit, arg);
    return rc ? rc : cm_busypoll_traverse(&s->spin, visit, arg);
}

static void storage_drop_detached(CmSqlStorageObject *s, int fork, const char *why);

/* 1 when loop can still be told about fds and timers: not closed, nor torn
 * down by the collector in the same cycle as the storage. */
static int loop_usable(PyObject *loop) { return loop != NULL && !cm_loop_is_closed(loop, 1); }

int cm_sql_storage_clear(PyObject *self)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    /* a pending tick holds the storage: here it is gone or its loop is */
    Py_CLEAR(s->tick);
    if (s->pool.nconns > 0 && !loop_usable(s->pool.loop))
        storage_drop_detached(s, 0, "storage deleted");
    cm_sql_close_all(s, "storage deleted");
    cm_netstore_clear(&s->pool, &s->loops, &s->init_args, &s->init_kwds,
                      s->st->sql.SQLConnectionError);
    cm_busypoll_clear(&s->spin);
    return 0;
}

void cm_sql_storage_dealloc(PyObject *self)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    cm_netstore_dealloc_start(self, s->weakreflist, cm_sql_storage_clear, &s->loops);
    if (s->drv != NULL && s->drv->teardown != NULL)
        s->drv->teardown(s);
    Py_CLEAR(s->table);
    Py_CLEAR(s->dsn);
    Py_CLEAR(s->options);
    cm_netstore_dealloc_end(self, &s->pool);
}

/* netloop.h: an instance for another loop is the driver's own type made
 * from the same arguments. */
static PyObject *storage_spawn(PyObject *owner)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)owner;
    CmState *st = s->st;
    PyObject *tp = s->drv == &cm_pg_driver      ? st->sql.PgClientType
                   : s->drv == &cm_mysql_driver ? st->sql.MySQLClientType
                                                : st->sql.SQLiteClientType;
    return cm_netstore_spawn(tp, s->init_args, s->init_kwds, st->sql.SQLError, s->drv->name);
}

/* Close every connection and fail what waits, without touching the loop
 * (closed, gone, or the parent's after fork): nothing is unregistered, the
 * tick is dropped uncancelled. fork: each socket is first pointed at
 * /dev/null, so the driver's goodbye (libpq's Terminate, MariaDB's
 * COM_QUIT) and close never reach the parent's connection. */
/* The caller holds s (see cm_netstore_close), as cm_sql_storage_clear
 * calls it from the storage's dealloc. */
static void storage_drop_detached(CmSqlStorageObject *s, int fork, const char *why)
{
    cm_netstore_close(&s->pool, s->st->sql.SQLConnectionError,
                      fork ? CM_NETSTORE_DETACH_FORK : CM_NETSTORE_DETACH, why);
    Py_CLEAR(s->tick);
    cm_sql_close_all(s, why); /* the queue: no connection is left */
}

static void storage_forked(PyObject *inst)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)Py_NewRef(inst);
    storage_drop_detached(s, 1, "inherited over fork");
    if (s->drv->sync && s->h != NULL) {
        /* SQLite: a connection must not be used, nor closed, across fork
         * (its locks and WAL state are the parent's): left as it is, and
         * the child opens its own */
        s->h = NULL;
        if (s->drv->setup != NULL && s->drv->setup(s) < 0)
            PyErr_WriteUnraisable(inst);
    }
    Py_DECREF(s);
}

static void storage_orphan(PyObject *inst)
{
    Py_INCREF(inst);
    storage_drop_detached((CmSqlStorageObject *)inst, 0, "the event loop was closed");
    Py_DECREF(inst);
}

/* The home loop is closed and the next one takes the storage over: its idle
 * connections are kept for that loop (bind_loop, submit.c, re-watches them
 * there), what else the closed loop had is dropped. SQLite has none. */
static void storage_handover(PyObject *inst)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)inst;
    if (s->drv->sync || s->head != NULL)
        storage_orphan(inst);
}

static const CmNetKind storage_net_kind = {storage_spawn, storage_forked, storage_orphan,
                                           storage_handover};

PyObject *cm_sql_storage_new(PyTypeObject *tp, const CmSqlDriver *drv)
{
    CmState *st = cm_state_from_type(tp);
    CmSqlStorageObject *s = st ? (CmSqlStorageObject *)tp->tp_alloc(tp, 0) : NULL;
    if (s == NULL)
        return NULL;
    s->st = st;
    s->drv = drv;
    s->pool_size = 10;
    s->timeout = s->connect_timeout = 5.0;
    cm_netstore_init(&s->pool, &s->loops, st, &storage_net_kind, (PyObject *)s);
    return (PyObject *)s;
}
