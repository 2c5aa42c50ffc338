/* The SQL storage type: PgClient, MySQLClient and SQLiteClient are one
 * Python type each over CmSqlStorageObject with its driver's table; their
 * methods check arguments and keys, turn them into requests (request.c)
 * and submit them (submit.c). The module's SQL error types are in
 * sqlmod.c; making, options, GC and the fork and loop-close rules in
 * lifecycle.c. */
#include "sql/sqlstore.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include <structmember.h>

#include "base/args.h"
#include "base/batch.h"
#include "base/exc.h"
#include "core/key.h"
#include "core/ttl.h"
#include "loop/ready.h"
#include "ser/envelope.h"

int cm_sql_check_available(CmSqlStorageObject *s)
{
    if (s->drv->available)
        return 0;
    PyErr_Format(PyExc_RuntimeError,
                 "cacheme was built without the %s client library: install %s "
                 "(apt-get install %s) and rebuild cacheme",
                 s->drv->name, s->drv->package, s->drv->package);
    return -1;
}

/* serializer.dumps(v) as bytes (or v itself, bytes, without a serializer). */
static PyObject *encode(void *storage, PyObject *ser, PyObject *v)
{
    CmSqlStorageObject *s = storage;
    return cm_envelope_encode(s->st, CM_ENVELOPE_BARE, ser, v, s->drv->name);
}

/* 0.3.0's parameter names: each may come by keyword (base/args.h) */
static const CmArgSpec get_spec = CM_ARGSPEC("get", "node", "serializer");
static const CmArgSpec set_spec = CM_ARGSPEC("set", "node", "value", "ttl", "serializer");
static const CmArgSpec get_all_spec = CM_ARGSPEC("get_all", "nodes", "serializer");
static const CmArgSpec set_all_spec = CM_ARGSPEC("set_all", "data", "ttl", "serializer");
static const CmArgSpec remove_spec = CM_ARGSPEC("remove", "node");
static const CmArgSpec get_by_key_spec = CM_ARGSPEC("get_by_key", "key");
static const CmArgSpec remove_by_key_spec = CM_ARGSPEC("remove_by_key", "key");
static const CmArgSpec set_by_key_spec = CM_ARGSPEC("set_by_key", "key", "value", "ttl");

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
        PyErr_Format(s->st->sql.SQLKeyError,
                     "cacheme %s storage: key %R cannot be stored: it holds a lone surrogate, "
                     "which UTF-8 cannot encode (keys must be valid Unicode text)",
                     s->drv->name, key);
        return -1;
    }
    if (!s->drv->key_nul && memchr(p, '\0', (size_t)n) != NULL) {
        PyErr_Format(s->st->sql.SQLKeyError,
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
        PyErr_Format(s->st->sql.SQLKeyError,
                     "cacheme %s storage: key %R... is %zd characters long, longer than the key "
                     "column's limit of %zd characters (VARCHAR(%zd)); use a shorter key()",
                     s->drv->name, head, len, s->drv->key_max, s->drv->key_max);
        Py_DECREF(head);
        return -1;
    }
    return 0;
}

/* The full key of a node, checked (check_key); new reference. */
static PyObject *key_of(void *storage, PyObject *node)
{
    CmSqlStorageObject *s = storage;
    PyObject *key = cm_key_of_node(s->st, node);
    if (key != NULL && check_key(s, key) < 0)
        Py_CLEAR(key);
    return key;
}

static PyObject *storage_get(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    PyObject *buf[2];
    if ((args = cm_args(self, &get_spec, args, nargs, kwnames, buf)) == NULL ||
        cm_sql_check_available(s) < 0)
        return NULL;
    CmSqlReq *r = cm_sql_req_new(CM_SQL_GET);
    if (r == NULL)
        return NULL;
    r->ser = Py_NewRef(args[1]);
    if ((r->key = key_of(s, args[0])) == NULL) {
        cm_sql_req_free(r);
        return NULL;
    }
    return cm_sql_submit(s, r);
}

/* GET_ALL of nodes; aged: its pairs are triples (cm_sql_get_all_aged). */
static PyObject *get_all(CmSqlStorageObject *s, PyObject *nodes, PyObject *ser, int aged)
{
    if (cm_sql_check_available(s) < 0)
        return NULL;
    CmSqlReq *r = cm_sql_req_new(CM_SQL_GET_ALL);
    if (r == NULL)
        return NULL;
    r->ser = Py_NewRef(ser);
    r->aged = aged;
    if (cm_batch_keys(s, key_of, nodes, &r->keys, &r->nodes) < 0) {
        cm_sql_req_free(r);
        return NULL;
    }
    if (PyList_GET_SIZE(r->keys) == 0) {
        cm_sql_req_free(r);
        PyObject *empty = PyList_New(0);
        PyObject *out = empty ? cm_ready_new(s->st, empty) : NULL;
        Py_XDECREF(empty);
        return out;
    }
    return cm_sql_submit(s, r);
}

static PyObject *storage_get_all(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    PyObject *buf[2];
    if ((args = cm_args(self, &get_all_spec, args, nargs, kwnames, buf)) == NULL)
        return NULL;
    return get_all((CmSqlStorageObject *)self, args[0], args[1], 0);
}

PyObject *cm_sql_get_all_aged(CmState *st, PyObject *storage, PyObject *nodes, PyObject *ser)
{
    (void)st;
    return get_all((CmSqlStorageObject *)storage, nodes, ser, 1);
}

/* the TTL in seconds, -1 for none (core/ttl.h's rule) */
static int parse_ttl(CmSqlStorageObject *s, PyObject *ttl, double *out)
{
    *out = cm_ttl_seconds(s->st, ttl);
    return *out == -2.0 ? -1 : 0;
}

static PyObject *storage_set(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    PyObject *buf[4];
    if ((args = cm_args(self, &set_spec, args, nargs, kwnames, buf)) == NULL ||
        cm_sql_check_available(s) < 0)
        return NULL;
    CmSqlReq *r = cm_sql_req_new(CM_SQL_SET);
    if (r == NULL)
        return NULL;
    if ((r->key = key_of(s, args[0])) == NULL || (r->value = encode(s, args[3], args[1])) == NULL ||
        parse_ttl(s, args[2], &r->ttl) < 0) {
        cm_sql_req_free(r);
        return NULL;
    }
    return cm_sql_submit(s, r);
}

static PyObject *storage_set_all(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    PyObject *buf[3];
    if ((args = cm_args(self, &set_all_spec, args, nargs, kwnames, buf)) == NULL ||
        cm_sql_check_available(s) < 0)
        return NULL;
    CmSqlReq *r = cm_sql_req_new(CM_SQL_SET_ALL);
    if (r == NULL)
        return NULL;
    if (parse_ttl(s, args[1], &r->ttl) < 0 ||
        cm_batch_pairs(s, key_of, encode, args[0], args[2], &r->keys, &r->values) < 0) {
        cm_sql_req_free(r);
        return NULL;
    }
    if (PyList_GET_SIZE(r->keys) == 0) {
        cm_sql_req_free(r);
        return cm_ready_new(s->st, Py_None);
    }
    return cm_sql_submit(s, r);
}

static PyObject *storage_remove(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    PyObject *buf[1];
    if ((args = cm_args(self, &remove_spec, args, nargs, kwnames, buf)) == NULL ||
        cm_sql_check_available(s) < 0)
        return NULL;
    CmSqlReq *r = cm_sql_req_new(CM_SQL_DEL);
    if (r == NULL)
        return NULL;
    if ((r->key = key_of(s, args[0])) == NULL) {
        cm_sql_req_free(r);
        return NULL;
    }
    return cm_sql_submit(s, r);
}

/* Raw-key forms for 0.3.0's get_by_key/remove_by_key/set_by_key. */
static PyObject *storage_key_req(CmSqlStorageObject *s, int kind, PyObject *key, PyObject *value,
                                 PyObject *ttl)
{
    if (cm_sql_check_available(s) < 0)
        return NULL;
    if (!PyUnicode_Check(key)) {
        PyErr_Format(PyExc_TypeError, "key must be str, not %.100s", Py_TYPE(key)->tp_name);
        return NULL;
    }
    CmSqlReq *r = cm_sql_req_new(kind);
    if (r == NULL)
        return NULL;
    r->key = Py_NewRef(key);
    r->ser = Py_NewRef(Py_None);
    if (check_key(s, key) < 0 ||
        (value != NULL && ((r->value = cm_envelope_encode(s->st, CM_ENVELOPE_BARE, Py_None, value,
                                                          s->drv->name)) == NULL ||
                           parse_ttl(s, ttl, &r->ttl) < 0))) {
        cm_sql_req_free(r);
        return NULL;
    }
    return cm_sql_submit(s, r);
}

static PyObject *storage_get_by_key(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames)
{
    PyObject *buf[1];
    if ((args = cm_args(self, &get_by_key_spec, args, nargs, kwnames, buf)) == NULL)
        return NULL;
    return storage_key_req((CmSqlStorageObject *)self, CM_SQL_GET, args[0], NULL, NULL);
}

static PyObject *storage_remove_by_key(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                       PyObject *kwnames)
{
    PyObject *buf[1];
    if ((args = cm_args(self, &remove_by_key_spec, args, nargs, kwnames, buf)) == NULL)
        return NULL;
    return storage_key_req((CmSqlStorageObject *)self, CM_SQL_DEL, args[0], NULL, NULL);
}

static PyObject *storage_set_by_key(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames)
{
    PyObject *buf[3];
    if ((args = cm_args(self, &set_by_key_spec, args, nargs, kwnames, buf)) == NULL)
        return NULL;
    return storage_key_req((CmSqlStorageObject *)self, CM_SQL_SET, args[0], args[1], args[2]);
}

static PyObject *storage_execute(PyObject *self, PyObject *sql)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    if (cm_sql_check_available(s) < 0)
        return NULL;
    if (!PyUnicode_Check(sql)) {
        PyErr_SetString(PyExc_TypeError, "execute: sql must be str");
        return NULL;
    }
    CmSqlReq *r = cm_sql_req_new(CM_SQL_EXEC);
    if (r == NULL)
        return NULL;
    r->key = Py_NewRef(sql);
    return cm_sql_submit(s, r);
}

static PyObject *storage_ping(PyObject *self, PyObject *Py_UNUSED(unused))
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    if (cm_sql_check_available(s) < 0)
        return NULL;
    CmSqlReq *r = cm_sql_req_new(CM_SQL_PING);
    return r ? cm_sql_submit(s, r) : NULL;
}

static PyObject *storage_sweep(PyObject *self, PyObject *arg)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    long limit = PyLong_AsLong(arg);
    if ((limit == -1 && PyErr_Occurred()) || cm_sql_check_available(s) < 0)
        return NULL;
    CmSqlReq *r = cm_sql_req_new(CM_SQL_SWEEP);
    if (r == NULL)
        return NULL;
    r->limit = limit;
    return cm_sql_submit(s, r);
}

static PyObject *storage_close_now(PyObject *self, PyObject *Py_UNUSED(unused))
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    cm_sql_close_all(s, "storage closed");
    if (s->drv->teardown != NULL)
        s->drv->teardown(s);
    cm_netloops_clear(&s->loops);
    /* a closed storage connects anew on its next request: what the driver
     * prepares for every connection (PostgreSQL's PREPARE text) is made again */
    if (s->drv->setup != NULL && s->drv->setup(s) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *storage_pool_info(PyObject *self, PyObject *Py_UNUSED(unused))
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    Py_ssize_t idle = 0, busy = 0, connecting = 0;
    for (int i = 0; i < s->pool.nconns; i++) {
        int state = s->pool.conns[i]->state;
        idle += state == CM_SQL_IDLE;
        busy += state == CM_SQL_BUSY;
        connecting += state == CM_SQL_CONNECTING;
    }
    Py_ssize_t opened = s->opened; /* by the instances of the open loops too */
    for (Py_ssize_t i = 0; i < cm_netloops_count(&s->loops); i++)
        opened += ((CmSqlStorageObject *)cm_netloops_inst(&s->loops, i))->opened;
    return Py_BuildValue("{sn,sn,sn,sn,sn,sn,sd,sn,sn,sn}", "idle", idle, "busy", busy,
                         "connecting", connecting, "queued", s->queued, "opened", opened,
                         "instances_made", s->loops.spawned, "busy_poll", s->spin.limit,
                         "busy_poll_hits", s->spin.hits, "busy_poll_timeouts", s->spin.misses,
                         "busy_poll_inline", s->spin.inlined);
}

static PyObject *pg_new(PyTypeObject *tp, PyObject *a, PyObject *k)
{
    (void)a, (void)k;
    return cm_sql_storage_new(tp, &cm_pg_driver);
}
static PyObject *mysql_new(PyTypeObject *tp, PyObject *a, PyObject *k)
{
    (void)a, (void)k;
    return cm_sql_storage_new(tp, &cm_mysql_driver);
}
static PyObject *sqlite_new(PyTypeObject *tp, PyObject *a, PyObject *k)
{
    (void)a, (void)k;
    return cm_sql_storage_new(tp, &cm_sqlite_driver);
}

static PyObject *storage_get_available(PyObject *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(((CmSqlStorageObject *)self)->drv->available);
}

/* CM_KW(f): a METH_FASTCALL | METH_KEYWORDS method (base/args.h) */
#define CM_KW(f) (PyCFunction)(void (*)(void))(f), METH_FASTCALL | METH_KEYWORDS

static PyMethodDef storage_methods[] = {
    {"get", CM_KW(storage_get),
     "get($self, /, node, serializer)\n--\n\n"
     "An awaitable of the cached value or cacheme.models.sentinel."},
    {"get_all", CM_KW(storage_get_all),
     "get_all($self, /, nodes, serializer)\n--\n\n"
     "An awaitable of [(node, value)] found, in one query."},
    {"set", CM_KW(storage_set),
     "set($self, /, node, value, ttl, serializer)\n--\n\nAn awaitable upsert."},
    {"set_all", CM_KW(storage_set_all),
     "set_all($self, /, data, ttl, serializer)\n--\n\n"
     "An awaitable multi-row upsert of [(node, value)], one round trip."},
    {"remove", CM_KW(storage_remove), "remove($self, /, node)\n--\n\nAn awaitable delete."},
    {"get_by_key", CM_KW(storage_get_by_key),
     "get_by_key($self, /, key)\n--\n\nAn awaitable of the raw value or sentinel."},
    {"remove_by_key", CM_KW(storage_remove_by_key), "remove_by_key($self, /, key)\n--\n\n"},
    {"set_by_key", CM_KW(storage_set_by_key),
     "set_by_key($self, /, key, value, ttl)\n--\n\nAn awaitable upsert of raw bytes."},
    {"execute", storage_execute, METH_O, "execute(sql): run one statement without parameters"},
    {"_ping", storage_ping, METH_NOARGS, "awaitable done when a connection is ready"},
    {"sweep", storage_sweep, METH_O, "sweep(limit): delete up to limit expired rows; count"},
    {"close_now", storage_close_now, METH_NOARGS, "close every connection"},
    {"pool_info", storage_pool_info, METH_NOARGS,
     "connections by state, queued requests, and connections opened (this instance's and its live "
     "clones'), clones made for other loops"},
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
    {Py_tp_new, NEW}, {Py_tp_init, cm_sql_storage_init}, {Py_tp_methods, storage_methods},         \
        {Py_tp_getset, storage_getset}, {Py_tp_members, storage_members},                          \
        {Py_tp_traverse, cm_sql_storage_traverse}, {Py_tp_clear, cm_sql_storage_clear},            \
        {Py_tp_dealloc, cm_sql_storage_dealloc}, {Py_tp_doc, DOC}, {0, NULL},

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

/* PgClient, MySQLClient and SQLiteClient, added to mod (sql/sqlmod.c). */
int cm_sql_add_types(PyObject *mod, CmState *st)
{
    const struct {
        PyType_Spec *spec;
        PyObject **slot;
    } types[] = {{&pg_spec, &st->sql.PgClientType},
                 {&mysql_spec, &st->sql.MySQLClientType},
                 {&sqlite_spec, &st->sql.SQLiteClientType}};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        PyObject *tp = PyType_FromModuleAndSpec(mod, types[i].spec, NULL);
        if (tp != NULL && PyModule_AddType(mod, (PyTypeObject *)tp) < 0)
            Py_CLEAR(tp);
        if ((*types[i].slot = tp) == NULL)
            return -1;
    }
    return 0;
}

/* ---- requests of a flight's call (sql/remote.c, flight/remote.h) ---------- */

int cm_sql_get_for(PyObject *storage, PyObject *node, PyObject *ser, int aged, PyObject *loop,
                   PyObject *waiter, CmSqlReq **held, CmSqlStorageObject **inst)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)storage;
    if (cm_sql_check_available(s) < 0)
        return -1;
    CmSqlReq *r = cm_sql_req_new(CM_SQL_GET);
    if (r == NULL)
        return -1;
    r->ser = Py_NewRef(ser);
    r->aged = aged;
    if ((r->key = key_of(s, node)) == NULL) {
        cm_sql_req_free(r);
        return -1;
    }
    return cm_sql_submit_held(s, r, loop, waiter, held, inst);
}

int cm_sql_set_for(PyObject *storage, PyObject *node, PyObject *value, PyObject *ttl, PyObject *ser,
                   PyObject *loop, PyObject *waiter, CmSqlReq **held, CmSqlStorageObject **inst)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)storage;
    if (cm_sql_check_available(s) < 0)
        return -1;
    CmSqlReq *r = cm_sql_req_new(CM_SQL_SET);
    if (r == NULL)
        return -1;
    if ((r->key = key_of(s, node)) == NULL || (r->value = encode(s, ser, value)) == NULL ||
        parse_ttl(s, ttl, &r->ttl) < 0) {
        cm_sql_req_free(r);
        return -1;
    }
    return cm_sql_submit_held(s, r, loop, waiter, held, inst);
}
