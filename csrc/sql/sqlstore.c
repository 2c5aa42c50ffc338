/* The SQL storage type: PgClient, MySQLClient and SQLiteClient are one
 * Python type each over CmSqlStorageObject with its driver's table; their
 * methods check arguments and keys, turn them into requests (request.c)
 * and submit them (submit.c). Also the module's SQL error types. Making,
 * options, GC and the fork and loop-close rules are lifecycle.c's. */
#include "sql/sqlstore.h"

#include <stdio.h>
#include <string.h>

#include <structmember.h>

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
static PyObject *encode(CmSqlStorageObject *s, PyObject *ser, PyObject *v)
{
    return cm_envelope_encode(s->st, CM_ENVELOPE_BARE, ser, v, s->drv->name);
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
    if (!check_nargs("get", nargs, 2) || cm_sql_check_available(s) < 0)
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

static PyObject *storage_get_all(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    PyObject *seq = NULL;
    if (!check_nargs("get_all", nargs, 2) || cm_sql_check_available(s) < 0)
        return NULL;
    CmSqlReq *r = cm_sql_req_new(CM_SQL_GET_ALL);
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
        cm_sql_req_free(r);
        PyObject *empty = PyList_New(0);
        PyObject *out = empty ? cm_ready_new(s->st, empty) : NULL;
        Py_XDECREF(empty);
        return out;
    }
    return cm_sql_submit(s, r);
fail:
    Py_XDECREF(seq);
    cm_sql_req_free(r);
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
    if (!check_nargs("set", nargs, 4) || cm_sql_check_available(s) < 0)
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

static PyObject *storage_set_all(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    PyObject *seq = NULL, *index = NULL;
    if (!check_nargs("set_all", nargs, 3) || cm_sql_check_available(s) < 0)
        return NULL;
    CmSqlReq *r = cm_sql_req_new(CM_SQL_SET_ALL);
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
        cm_sql_req_free(r);
        return cm_ready_new(s->st, Py_None);
    }
    return cm_sql_submit(s, r);
fail:
    Py_XDECREF(seq);
    Py_XDECREF(index);
    cm_sql_req_free(r);
    return NULL;
}

static PyObject *storage_remove(PyObject *self, PyObject *node)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)self;
    if (cm_sql_check_available(s) < 0)
        return NULL;
    CmSqlReq *r = cm_sql_req_new(CM_SQL_DEL);
    if (r == NULL)
        return NULL;
    if ((r->key = key_of(s, node)) == NULL) {
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
    return Py_BuildValue("{sn,sn,sn,sn,sd,sn,sn,sn}", "idle", idle, "busy", busy, "connecting",
                         connecting, "queued", s->queued, "busy_poll", s->spin.limit,
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
    if (cm_sql_pool_init(mod, st) < 0 || (st->sql.PgClientType = add_type(mod, &pg_spec)) == NULL ||
        (st->sql.MySQLClientType = add_type(mod, &mysql_spec)) == NULL ||
        (st->sql.SQLiteClientType = add_type(mod, &sqlite_spec)) == NULL)
        goto done;
    if ((st->sql.SQLError = add_error(mod, "SQLError", NULL, "An SQL storage failed.")) == NULL)
        goto done;
    if ((bases = PyTuple_Pack(2, st->sql.SQLError, PyExc_ConnectionError)) == NULL ||
        (st->sql.SQLConnectionError = add_error(mod, "SQLConnectionError", bases,
                                                "The SQL server cannot be reached.")) == NULL)
        goto done;
    Py_SETREF(bases, PyTuple_Pack(2, st->sql.SQLError, PyExc_TimeoutError));
    if (bases == NULL ||
        (st->sql.SQLTimeoutError = add_error(mod, "SQLTimeoutError", bases,
                                             "An SQL request or connect timed out.")) == NULL)
        goto done;
    if ((st->sql.SQLTableError = add_error(mod, "SQLTableError", st->sql.SQLError,
                                           "The storage table does not exist.")) == NULL)
        goto done;
    /* the base of SQLKeyError and the Redis storage's error for the same:
     * a flight raises it to its caller instead of counting a miss */
    if ((st->StorageKeyError =
             add_error(mod, "StorageKeyError", PyExc_ValueError,
                       "A key a remote storage cannot hold as it is: raised to the caller of get, "
                       "get_all and invalidate, never a silent miss.")) == NULL)
        goto done;
    Py_SETREF(bases, PyTuple_Pack(2, st->sql.SQLError, st->StorageKeyError));
    if (bases == NULL ||
        (st->sql.SQLKeyError = add_error(mod, "SQLKeyError", bases,
                                         "A key the table cannot hold as it is (NUL, a lone "
                                         "surrogate, longer than the key column): raised to the "
                                         "caller, never a silent miss.")) == NULL)
        goto done;
    rc = 0;
done:
    Py_XDECREF(bases);
    return rc;
}

int cm_sql_state_traverse(CmSqlState *ss, visitproc visit, void *arg)
{
    Py_VISIT(ss->SqlConnType);
#define CM_SQL_VISIT(n) Py_VISIT(ss->n);
    CM_SQL_OBJECTS(CM_SQL_VISIT)
#undef CM_SQL_VISIT
    return 0;
}

void cm_sql_state_clear(CmSqlState *ss)
{
    Py_CLEAR(ss->SqlConnType);
#define CM_SQL_CLEAR(n) Py_CLEAR(ss->n);
    CM_SQL_OBJECTS(CM_SQL_CLEAR)
#undef CM_SQL_CLEAR
}

int cm_sql_traverse(CmState *st, visitproc visit, void *arg)
{
    Py_VISIT(st->StorageKeyError);
    return cm_sql_state_traverse(&st->sql, visit, arg);
}

void cm_sql_clear(CmState *st)
{
    Py_CLEAR(st->StorageKeyError);
    cm_sql_state_clear(&st->sql);
}

/* ---- requests of a flight's call (sql/remote.c, flight/remote.h) ---------- */

CmSqlReq *cm_sql_get_for(PyObject *storage, PyObject *node, PyObject *ser, PyObject *waiter,
                         CmSqlStorageObject **inst)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)storage;
    if (cm_sql_check_available(s) < 0)
        return NULL;
    CmSqlReq *r = cm_sql_req_new(CM_SQL_GET);
    if (r == NULL)
        return NULL;
    r->ser = Py_NewRef(ser);
    if ((r->key = key_of(s, node)) == NULL) {
        cm_sql_req_free(r);
        return NULL;
    }
    return cm_sql_submit_held(s, r, waiter, inst);
}

CmSqlReq *cm_sql_set_for(PyObject *storage, PyObject *node, PyObject *value, PyObject *ttl,
                         PyObject *ser, PyObject *waiter, CmSqlStorageObject **inst)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)storage;
    if (cm_sql_check_available(s) < 0)
        return NULL;
    CmSqlReq *r = cm_sql_req_new(CM_SQL_SET);
    if (r == NULL)
        return NULL;
    if ((r->key = key_of(s, node)) == NULL || (r->value = encode(s, ser, value)) == NULL ||
        parse_ttl(s, ttl, &r->ttl) < 0) {
        cm_sql_req_free(r);
        return NULL;
    }
    return cm_sql_submit_held(s, r, waiter, inst);
}
