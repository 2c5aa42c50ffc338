/* The MongoClient type (the base of cacheme.storages.mongo.MongoStorage):
 * its methods check arguments and keys, make requests (cmd.c) and queue them
 * on a connection (pool.c, conn.c) of the instance serving the running loop
 * (net/netloop.h); each returns an asyncio future. Also the module's
 * MongoDB error types. Without libbson at build time nothing is added and
 * cacheme.storages.mongo says what to install. */
#include "mongo/mongo.h"

#ifndef CM_HAVE_BSON
int cm_mongo_init(PyObject *mod, CmState *st)
{
    (void)st;
    return PyModule_AddIntConstant(mod, "_mongo_available", 0);
}
#else
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <structmember.h>

#include "base/args.h"
#include "base/batch.h"
#include "base/exc.h"
#include "core/fresh.h"
#include "core/key.h"
#include "core/ttl.h"
#include "loop/loop.h"
#include "loop/ready.h"
#include "net/netstore.h"
#include "ser/envelope.h"

/* 0.3.0's parameters, by position or keyword (base/args.h) */
static const CmArgSpec get_spec = CM_ARGSPEC("get", "node", "serializer");
static const CmArgSpec get_all_spec = CM_ARGSPEC("get_all", "nodes", "serializer");
static const CmArgSpec set_spec = CM_ARGSPEC("set", "node", "value", "ttl", "serializer");
static const CmArgSpec set_all_spec = CM_ARGSPEC("set_all", "data", "ttl", "serializer");
static const CmArgSpec remove_spec = CM_ARGSPEC("remove", "node");

/* The full key of a node; a key UTF-8 cannot encode (a lone surrogate)
 * cannot be a BSON string: StorageKeyError, never a silent miss. */
static PyObject *key_of(void *storage, PyObject *node)
{
    CmMongoClientObject *s = storage;
    PyObject *key = cm_key_of_node(s->st, node);
    if (key != NULL && PyUnicode_AsUTF8AndSize(key, NULL) == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
            PyErr_Clear();
            PyErr_Format(s->st->StorageKeyError,
                         "cacheme mongodb storage: key %R cannot be stored: it holds a lone "
                         "surrogate, which UTF-8 cannot encode",
                         key);
        }
        Py_CLEAR(key);
    }
    return key;
}

static PyObject *encode(void *storage, PyObject *ser, PyObject *v)
{
    return cm_envelope_encode(((CmMongoClientObject *)storage)->st, CM_ENVELOPE_BARE, ser, v,
                              "mongodb");
}

static int parse_ttl(CmMongoClientObject *s, PyObject *ttl, long long *ms)
{
    double secs = cm_ttl_seconds(s->st, ttl);
    if (secs == -2.0)
        return -1;
    *ms = secs < 0 ? -1 : cm_ttl_ms(secs);
    return 0;
}

/* Queue r on the instance serving the running loop with waiter as its
 * future (NULL: an asyncio Future made here); the future, or NULL with an
 * exception (r freed when not queued). */
static PyObject *submit_to(CmMongoClientObject *self, CmMongoReq *r, PyObject *waiter)
{
    CmState *st = self->st;
    PyObject *fut = NULL;
    CmMongoClientObject *inst = NULL;
    PyObject *loop = cm_loop_running(st);
    if (loop == NULL)
        goto fail;
    /* the future first: making it runs Python code, which may close the
     * storage and free the loop's instance; the instance is held while the
     * request is queued on it */
    fut = waiter ? Py_NewRef(waiter) : cm_loop_create_future(st, loop);
    if (fut == NULL)
        goto fail;
    inst = (CmMongoClientObject *)Py_XNewRef(cm_netloops_for(&self->loops, loop));
    if (inst == NULL)
        goto fail;
    CmMongoConnObject *c = cm_mongo_pool_conn(inst, loop, 0); // borrowed
    if (c == NULL)
        goto fail;
    r->fut = Py_NewRef(fut);
    cm_mongo_conn_push(c, r);
    Py_DECREF(inst);
    Py_DECREF(loop);
    return fut;
fail:
    Py_XDECREF(inst);
    Py_XDECREF(fut);
    Py_XDECREF(loop);
    cm_mongo_req_free(r);
    return NULL;
}

static PyObject *submit(CmMongoClientObject *self, CmMongoReq *r)
{
    return submit_to(self, r, NULL);
}

static PyObject *client_get(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    PyObject *buf[2];
    if ((args = cm_args(self, &get_spec, args, nargs, kwnames, buf)) == NULL)
        return NULL;
    CmMongoClientObject *s = (CmMongoClientObject *)self;
    CmMongoReq *r = cm_mongo_req_new(CM_MONGO_GET);
    if (r == NULL)
        return NULL;
    r->ser = Py_NewRef(args[1]);
    if ((r->key = key_of(s, args[0])) == NULL) {
        cm_mongo_req_free(r);
        return NULL;
    }
    return submit(s, r);
}

static PyObject *get_all(PyObject *self, PyObject *nodes, PyObject *ser, int aged);

static PyObject *client_get_all(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    PyObject *buf[2];
    if ((args = cm_args(self, &get_all_spec, args, nargs, kwnames, buf)) == NULL)
        return NULL;
    return get_all(self, args[0], args[1], 0);
}

PyObject *cm_mongo_get_all_aged(PyObject *storage, PyObject *nodes, PyObject *ser)
{
    return get_all(storage, nodes, ser, 1);
}

/* get_all of nodes; aged: triples with updated_at (see CmMongoReq). */
static PyObject *get_all(PyObject *self, PyObject *nodes, PyObject *ser, int aged)
{
    CmMongoClientObject *s = (CmMongoClientObject *)self;
    CmMongoReq *r = cm_mongo_req_new(CM_MONGO_GET_ALL);
    if (r == NULL)
        return NULL;
    r->ser = Py_NewRef(ser);
    r->aged = aged;
    if (cm_batch_keys(s, key_of, nodes, &r->keys, &r->nodes) < 0) {
        cm_mongo_req_free(r);
        return NULL;
    }
    if (PyList_GET_SIZE(r->keys) == 0) {
        cm_mongo_req_free(r);
        PyObject *empty = PyList_New(0);
        PyObject *out = empty ? cm_ready_new(s->st, empty) : NULL;
        Py_XDECREF(empty);
        return out;
    }
    return submit(s, r);
}

static PyObject *client_set(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    PyObject *buf[4];
    if ((args = cm_args(self, &set_spec, args, nargs, kwnames, buf)) == NULL)
        return NULL;
    CmMongoClientObject *s = (CmMongoClientObject *)self;
    CmMongoReq *r = cm_mongo_req_new(CM_MONGO_SET);
    if (r == NULL)
        return NULL;
    if ((r->key = key_of(s, args[0])) == NULL ||
        (r->values = encode(s, args[3], args[1])) == NULL ||
        parse_ttl(s, args[2], &r->ttl_ms) < 0) {
        cm_mongo_req_free(r);
        return NULL;
    }
    return submit(s, r);
}

static PyObject *client_set_all(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    PyObject *buf[3];
    if ((args = cm_args(self, &set_all_spec, args, nargs, kwnames, buf)) == NULL)
        return NULL;
    CmMongoClientObject *s = (CmMongoClientObject *)self;
    CmMongoReq *r = cm_mongo_req_new(CM_MONGO_SET_ALL);
    if (r == NULL)
        return NULL;
    if (parse_ttl(s, args[1], &r->ttl_ms) < 0 ||
        cm_batch_pairs(s, key_of, encode, args[0], args[2], &r->keys, &r->values) < 0) {
        cm_mongo_req_free(r);
        return NULL;
    }
    if (PyList_GET_SIZE(r->keys) == 0) {
        cm_mongo_req_free(r);
        return cm_ready_new(s->st, Py_None);
    }
    return submit(s, r);
}

static PyObject *client_remove(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    PyObject *buf[1];
    if ((args = cm_args(self, &remove_spec, args, nargs, kwnames, buf)) == NULL)
        return NULL;
    PyObject *node = args[0]; // borrowed
    CmMongoClientObject *s = (CmMongoClientObject *)self;
    CmMongoReq *r = cm_mongo_req_new(CM_MONGO_DEL);
    if (r == NULL)
        return NULL;
    if ((r->key = key_of(s, node)) == NULL) {
        cm_mongo_req_free(r);
        return NULL;
    }
    return submit(s, r);
}

static PyObject *client_simple(PyObject *self, int kind)
{
    CmMongoReq *r = cm_mongo_req_new(kind);
    return r ? submit((CmMongoClientObject *)self, r) : NULL;
}

static PyObject *client_create_indexes(PyObject *self, PyObject *Py_UNUSED(unused))
{
    return client_simple(self, CM_MONGO_INDEXES);
}

static PyObject *client_ping(PyObject *self, PyObject *Py_UNUSED(unused))
{
    return client_simple(self, CM_MONGO_PING);
}

/* Close every connection as how says (net/netstore.h), failing what is
 * pending with MongoConnectionError(why). */
static void close_conns(CmMongoClientObject *s, int how, const char *why)
{
    cm_netstore_close(&s->pool, s->st->mongo.ConnectionError, how, why);
}

static PyObject *client_close_now(PyObject *self, PyObject *Py_UNUSED(unused))
{
    CmMongoClientObject *s = (CmMongoClientObject *)self;
    close_conns(s, CM_NETSTORE_CLOSE, "mongodb: storage closed");
    cm_netloops_clear(&s->loops);
    Py_RETURN_NONE;
}

static PyObject *client_pool_info(PyObject *self, PyObject *Py_UNUSED(unused))
{
    CmMongoClientObject *s = (CmMongoClientObject *)self;
    Py_ssize_t ready = 0, connecting = 0, pending = 0;
    char label[300];
    for (int i = 0; i < s->pool.nconns; i++) {
        CmMongoConnObject *c = (CmMongoConnObject *)s->pool.conns[i];
        ready += c->net.state == CM_MONGO_READY;
        connecting += c->net.state != CM_MONGO_READY;
        pending += (Py_ssize_t)c->npend;
    }
    return Py_BuildValue("{sn,sn,sn,ss}", "ready", ready, "connecting", connecting, "pending",
                         pending, "primary",
                         cm_mongo_host_label(s, s->primary, label, sizeof(label)));
}

static void free_hosts(CmMongoClientObject *s)
{
    for (int i = 0; i < s->nhosts; i++)
        free(s->hosts[i].host);
    free(s->hosts);
    s->hosts = NULL;
    s->nhosts = s->primary = 0;
}

int cm_mongo_get_for(PyObject *storage, PyObject *node, PyObject *ser, PyObject *waiter,
                     unsigned int fresh)
{
    CmMongoClientObject *s = (CmMongoClientObject *)storage;
    CmMongoReq *r = cm_mongo_req_new(CM_MONGO_GET);
    if (r == NULL)
        return -1;
    r->ser = Py_NewRef(ser);
    r->aged = fresh != 0;
    r->stale = (fresh & CM_FRESH_STALE) != 0;
    if ((r->key = key_of(s, node)) == NULL) {
        cm_mongo_req_free(r);
        return -1;
    }
    PyObject *fut = submit_to(s, r, waiter);
    Py_XDECREF(fut);
    return fut ? 0 : -1;
}

int cm_mongo_set_for(PyObject *storage, PyObject *node, PyObject *value, PyObject *ttl,
                     PyObject *ser, PyObject *waiter, int64_t load_ns, int64_t stale_ns)
{
    CmMongoClientObject *s = (CmMongoClientObject *)storage;
    CmMongoReq *r = cm_mongo_req_new(CM_MONGO_SET);
    if (r == NULL)
        return -1;
    if ((r->key = key_of(s, node)) == NULL || (r->values = encode(s, ser, value)) == NULL ||
        parse_ttl(s, ttl, &r->ttl_ms) < 0) {
        cm_mongo_req_free(r);
        return -1;
    }
    r->load_ns = load_ns;
    if (stale_ns > 0 && r->ttl_ms >= 0) {
        /* expire at the TTL (0.3.0 and plain gets miss past it), kept
         * stale_if_error longer (stale_until) for the flight's reads */
        long long stale_ms = (long long)((stale_ns + 500000) / 1000000);
        r->ttl_ms = r->ttl_ms > stale_ms ? r->ttl_ms - stale_ms : 1;
        r->stale_ms = stale_ms;
    }
    PyObject *fut = submit_to(s, r, waiter);
    Py_XDECREF(fut);
    return fut ? 0 : -1;
}

static int client_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"hosts",       "database",        "collection", "pool_size",
                             "timeout",     "connect_timeout", "user",       "password",
                             "auth_source", "auth_mechanism",  "tls",        "busy_poll",
                             NULL};
    CmMongoClientObject *s = (CmMongoClientObject *)self;
    PyObject *hosts, *database, *collection;
    PyObject *user = Py_None, *password = Py_None, *auth_source = NULL, *mech = Py_None;
    PyObject *tls = Py_None, *busy_poll = Py_None;
    Py_ssize_t pool_size = 50;
    double timeout = 5.0, connect_timeout = 5.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!UU|$nddOOUOOO:MongoClient", kwlist,
                                     &PyList_Type, &hosts, &database, &collection, &pool_size,
                                     &timeout, &connect_timeout, &user, &password, &auth_source,
                                     &mech, &tls, &busy_poll))
        return -1;
    int auth_mech = 0;
    PyObject *ubytes = NULL, *pbytes = NULL;
    if (mech != Py_None) {
        const char *m = PyUnicode_Check(mech) ? PyUnicode_AsUTF8(mech) : NULL;
        if (m != NULL && strcmp(m, "SCRAM-SHA-256") == 0)
            auth_mech = CM_SCRAM_SHA_256;
        else if (m != NULL && strcmp(m, "SCRAM-SHA-1") == 0)
            auth_mech = CM_SCRAM_SHA_1_MONGO;
        else {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError,
                         "MongoClient: auth_mechanism %R is not supported (SCRAM-SHA-256 or "
                         "SCRAM-SHA-1)",
                         mech);
            return -1;
        }
    }
    if (user != Py_None) {
        if (!PyUnicode_Check(user) || !PyUnicode_Check(password) ||
            PyUnicode_GET_LENGTH(user) == 0) {
            PyErr_SetString(PyExc_TypeError,
                            "MongoClient: user and password must be str (user non-empty)");
            return -1;
        }
        if ((ubytes = PyUnicode_AsUTF8String(user)) == NULL ||
            (pbytes = PyUnicode_AsUTF8String(password)) == NULL) {
            Py_XDECREF(ubytes);
            return -1;
        }
        if (memchr(PyBytes_AS_STRING(ubytes), 0, (size_t)PyBytes_GET_SIZE(ubytes)) != NULL) {
            Py_DECREF(ubytes);
            Py_DECREF(pbytes);
            PyErr_SetString(PyExc_ValueError, "MongoClient: user holds a NUL character");
            return -1;
        }
    }
    Py_ssize_t n = PyList_GET_SIZE(hosts);
    if (n < 1 || n > 64) {
        PyErr_SetString(PyExc_ValueError, "MongoClient: hosts must list 1 to 64 (host, port)");
        return -1;
    }
    if (pool_size < 1) {
        PyErr_Format(PyExc_ValueError, "MongoClient: pool_size must be at least 1, not %zd",
                     pool_size);
        return -1;
    }
    if (!(timeout > 0 && timeout <= CM_TTL_MAX_SECONDS) ||
        !(connect_timeout > 0 && connect_timeout <= CM_TTL_MAX_SECONDS)) {
        PyErr_SetString(PyExc_ValueError,
                        "MongoClient: timeout and connect_timeout must be finite seconds > 0");
        return -1;
    }
    if (PyUnicode_GET_LENGTH(database) == 0 || PyUnicode_GET_LENGTH(collection) == 0) {
        PyErr_SetString(PyExc_ValueError, "MongoClient: database and collection must be named");
        return -1;
    }
    CmMongoHost *v = calloc((size_t)n, sizeof(*v));
    if (v == NULL) {
        Py_XDECREF(ubytes);
        Py_XDECREF(pbytes);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *h;
        int port;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(hosts, i), "si:MongoClient host", &h, &port) ||
            port <= 0 || port > 65535 || (v[i].host = strdup(h)) == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "MongoClient: a host's port must be 1-65535");
            for (Py_ssize_t j = 0; j <= i; j++)
                free(v[j].host);
            free(v);
            Py_XDECREF(ubytes);
            Py_XDECREF(pbytes);
            return -1;
        }
        v[i].port = port;
    }
    CmMongoTransport tr;
    if (cm_mongo_transport_parse(tls, busy_poll, &tr) < 0) {
        for (Py_ssize_t j = 0; j < n; j++)
            free(v[j].host);
        free(v);
        Py_XDECREF(ubytes);
        Py_XDECREF(pbytes);
        return -1;
    }
    close_conns(s, CM_NETSTORE_CLOSE, "mongodb: storage re-initialized");
    cm_mongo_transport_set(s, &tr);
    cm_netloops_clear(&s->loops);
    free_hosts(s);
    s->hosts = v;
    s->nhosts = (int)n;
    Py_XSETREF(s->database, Py_NewRef(database));
    Py_XSETREF(s->collection, Py_NewRef(collection));
    Py_XSETREF(s->user, ubytes);
    Py_XSETREF(s->password, pbytes);
    Py_XSETREF(s->auth_source,
               auth_source ? Py_NewRef(auth_source) : PyUnicode_FromString("admin"));
    if (s->auth_source == NULL)
        return -1;
    s->auth_mech = auth_mech;
    s->pool_size = pool_size;
    s->timeout = timeout;
    s->connect_timeout = connect_timeout;
    return cm_netstore_keep_args(&s->init_args, &s->init_kwds, args, kwds);
}

static int client_traverse(PyObject *self, visitproc visit, void *arg)
{
    CmMongoClientObject *s = (CmMongoClientObject *)self;
    Py_VISIT(s->database);
    Py_VISIT(s->collection);
    Py_VISIT(s->user);
    Py_VISIT(s->password);
    Py_VISIT(s->auth_source);
    int rc =
        cm_netstore_traverse(self, &s->pool, &s->loops, s->init_args, s->init_kwds, visit, arg);
    return rc ? rc : cm_mongo_transport_traverse(s, visit, arg);
}

static int client_clear(PyObject *self)
{
    CmMongoClientObject *s = (CmMongoClientObject *)self;
    close_conns(s, CM_NETSTORE_CLOSE_GC, "mongodb: storage deleted");
    cm_netstore_clear(&s->pool, &s->loops, &s->init_args, &s->init_kwds,
                      s->st->mongo.ConnectionError);
    cm_mongo_transport_clear(s);
    return 0;
}

static void client_dealloc(PyObject *self)
{
    CmMongoClientObject *s = (CmMongoClientObject *)self;
    cm_netstore_dealloc_start(self, s->weakreflist, client_clear, &s->loops);
    free_hosts(s);
    cm_scram_cache_free(s->scram_cache);
    cm_mongo_transport_fini(s);
    Py_CLEAR(s->database);
    Py_CLEAR(s->collection);
    Py_CLEAR(s->user);
    Py_CLEAR(s->password);
    Py_CLEAR(s->auth_source);
    cm_netstore_dealloc_end(self, &s->pool);
}

/* netloop.h: an instance for another loop, made from the same arguments. */
static PyObject *client_spawn(PyObject *owner)
{
    CmMongoClientObject *s = (CmMongoClientObject *)owner;
    return cm_netstore_spawn(s->st->mongo.ClientType, s->init_args, s->init_kwds,
                             s->st->mongo.Error, "mongodb");
}

/* netloop.h: close every connection without touching the loop (the
 * parent's after fork; closed or gone). */
static void client_forked(PyObject *inst)
{
    Py_INCREF(inst);
    close_conns((CmMongoClientObject *)inst, CM_NETSTORE_DETACH_FORK,
                "mongodb: inherited over fork");
    Py_DECREF(inst);
}

static void client_orphan(PyObject *inst)
{
    Py_INCREF(inst);
    close_conns((CmMongoClientObject *)inst, CM_NETSTORE_DETACH,
                "mongodb: the event loop was closed");
    Py_DECREF(inst);
}

static const CmNetKind client_net_kind = {client_spawn, client_forked, client_orphan, NULL};

static PyObject *client_new(PyTypeObject *tp, PyObject *a, PyObject *k)
{
    (void)a, (void)k;
    CmState *st = cm_state_from_type(tp);
    CmMongoClientObject *s = st ? (CmMongoClientObject *)tp->tp_alloc(tp, 0) : NULL;
    if (s == NULL)
        return NULL;
    s->st = st;
    s->pool_size = 50;
    s->timeout = s->connect_timeout = 5.0;
    cm_netstore_init(&s->pool, &s->loops, st, &client_net_kind, (PyObject *)s);
    if ((s->scram_cache = cm_scram_cache_new()) == NULL) {
        Py_DECREF(s);
        return PyErr_NoMemory();
    }
    return (PyObject *)s;
}

static PyMethodDef client_methods[] = {
    {"get", (PyCFunction)(void (*)(void))client_get, METH_FASTCALL | METH_KEYWORDS,
     "get($self, /, node, serializer)\n--\n\n"
     "An awaitable of the cached value or cacheme.models.sentinel."},
    {"get_all", (PyCFunction)(void (*)(void))client_get_all, METH_FASTCALL | METH_KEYWORDS,
     "get_all($self, /, nodes, serializer)\n--\n\n"
     "An awaitable of [(node, value)] found, in one find."},
    {"set", (PyCFunction)(void (*)(void))client_set, METH_FASTCALL | METH_KEYWORDS,
     "set($self, /, node, value, ttl, serializer)\n--\n\nAn awaitable upsert."},
    {"set_all", (PyCFunction)(void (*)(void))client_set_all, METH_FASTCALL | METH_KEYWORDS,
     "set_all($self, /, data, ttl, serializer)\n--\n\n"
     "An awaitable of the upserts, in one update command."},
    {"remove", (PyCFunction)(void (*)(void))client_remove, METH_FASTCALL | METH_KEYWORDS,
     "remove($self, /, node)\n--\n\nAn awaitable delete."},
    {"_create_indexes", client_create_indexes, METH_NOARGS,
     "awaitable createIndexes: key (unique) and expire"},
    {"_ping", client_ping, METH_NOARGS, "awaitable done when the primary answers"},
    {"close_now", client_close_now, METH_NOARGS, "close every connection"},
    {"pool_info", client_pool_info, METH_NOARGS, "connections by state, pending requests"},
    {"busy_poll_info", cm_mongo_busy_poll_info, METH_NOARGS,
     "busy_poll_info() -> {'busy_poll': limit, 'busy_poll_hits': n, 'busy_poll_timeouts': n}"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef client_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(CmMongoClientObject, weakreflist), READONLY, NULL},
    {"_indexes_later", T_INT, offsetof(CmMongoClientObject, indexes_later), 0,
     "1: createIndexes goes first on the next connection (connect() found the server down)"},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot client_slots[] = {
    {Py_tp_new, client_new},
    {Py_tp_init, client_init},
    {Py_tp_methods, client_methods},
    {Py_tp_members, client_members},
    {Py_tp_traverse, client_traverse},
    {Py_tp_clear, client_clear},
    {Py_tp_dealloc, client_dealloc},
    {Py_tp_doc,
     "MongoClient(hosts, database, collection, *, pool_size, timeout, "
     "connect_timeout, user, password, auth_source, auth_mechanism, tls, busy_poll): MongoDB "
     "storage on OP_MSG, driven from C"},
    {0, NULL},
};

static PyType_Spec client_spec = {
    .name = "cacheme._core.MongoClient",
    .basicsize = sizeof(CmMongoClientObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = client_slots,
};

int cm_mongo_init(PyObject *mod, CmState *st)
{
    CmMongoState *ms = &st->mongo;
    PyObject *bases = NULL;
    int rc = -1;
    if (PyModule_AddIntConstant(mod, "_mongo_available", 1) < 0)
        return -1;
    if ((ms->ConnType = PyType_FromModuleAndSpec(mod, &cm_mongo_conn_spec, NULL)) == NULL)
        return -1;
    if ((ms->ClientType = PyType_FromModuleAndSpec(mod, &client_spec, NULL)) == NULL ||
        PyModule_AddType(mod, (PyTypeObject *)ms->ClientType) < 0)
        return -1;
    if ((ms->Error = cm_exc_add_type(mod, "MongoError", NULL, "The MongoDB storage failed.")) ==
        NULL)
        return -1;
    if ((bases = PyTuple_Pack(2, ms->Error, PyExc_ConnectionError)) == NULL ||
        (ms->ConnectionError = cm_exc_add_type(mod, "MongoConnectionError", bases,
                                               "The MongoDB server cannot be reached, or broke the "
                                               "protocol.")) == NULL)
        goto done;
    Py_SETREF(bases, PyTuple_Pack(2, ms->Error, PyExc_TimeoutError));
    if (bases == NULL ||
        (ms->TimeoutError = cm_exc_add_type(mod, "MongoTimeoutError", bases,
                                            "A MongoDB request or connect timed out.")) == NULL)
        goto done;
    if ((ms->ServerError = cm_exc_add_type(mod, "MongoServerError", ms->Error,
                                           "The server refused a command (ok: 0 or a write error); "
                                           "`code` is the server's error code.")) == NULL)
        goto done;
    if ((ms->AuthError = cm_exc_add_type(mod, "MongoAuthError", ms->ConnectionError,
                                         "The server refused our credentials (SCRAM).")) == NULL)
        goto done;
    if (cm_mongo_remote_init(mod, st) < 0)
        goto done;
    rc = 0;
done:
    Py_XDECREF(bases);
    return rc;
}
#endif
