/* The RedisClient type (cacheme's RedisStorage subclasses it): settings,
 * one pool or a cluster, instances for other loops (net/netloop.h), and the
 * module hooks of the Redis driver. */
#include "redis/internal.h"
#include "redis/lease.h"
#include "redis/subscriber.h"
#include <limits.h>
#include <math.h>
#include <stdio.h>

static PyObject *client_refresh_slots(CmRedisClientObject *self, PyObject *Py_UNUSED(unused))
{
    CmState *st = self->st;
    PyObject *loop = NULL, *fut = NULL;
    if (self->cluster == NULL) {
        PyErr_SetString(st->redis.Error, "not a cluster storage");
        return NULL;
    }
    if ((loop = cm_loop_running(st)) == NULL || (fut = cm_loop_create_future(st, loop)) == NULL ||
        (self = cm_redis_client_for(self, loop)) == NULL || cm_redis_client_check_open(self) < 0 ||
        cm_cluster_refresh(self, loop, fut) < 0)
        Py_CLEAR(fut);
    Py_XDECREF(loop);
    return fut;
}

static void client_close_pools(CmRedisClientObject *self)
{
    CmRedisPool *p = self->pool;
    CmRedisCluster *cl = self->cluster;
    self->pool = NULL;
    self->cluster = NULL;
    cm_redis_pool_free(p);
    cm_cluster_free(cl);
}

static PyObject *client_close(CmRedisClientObject *self, PyObject *Py_UNUSED(unused))
{
    client_close_pools(self);
    cm_netloops_clear(&self->loops);
    Py_RETURN_NONE;
}

/* _retrying(): entries waiting to be re-sent after TRYAGAIN/CLUSTERDOWN,
 * for tests. */
static PyObject *client_retrying(CmRedisClientObject *self, PyObject *Py_UNUSED(unused))
{
    return PyLong_FromSsize_t(cm_cluster_retrying(self));
}

/* _connections(): open connections (all servers), for tests. */
static PyObject *client_connections(CmRedisClientObject *self, PyObject *Py_UNUSED(unused))
{
    long n = 0;
    if (self->pool != NULL)
        n = self->pool->net.nconns;
    if (self->cluster != NULL) {
        CmRedisPool **pools;
        Py_ssize_t np = cm_cluster_pools(self, &pools);
        for (Py_ssize_t i = 0; i < np; i++)
            n += pools[i]->net.nconns;
    }
    for (Py_ssize_t i = 0; i < cm_netloops_count(&self->loops); i++) {
        PyObject *r =
            client_connections((CmRedisClientObject *)cm_netloops_inst(&self->loops, i), NULL);
        n += r ? PyLong_AsLong(r) : 0;
        Py_XDECREF(r);
    }
    return PyLong_FromLong(n);
}

static PyObject *client_busy_poll_info(CmRedisClientObject *self, PyObject *Py_UNUSED(unused))
{
    return Py_BuildValue("{sd,sn,sn}", "busy_poll", self->spin.limit, "busy_poll_hits",
                         self->spin.hits, "busy_poll_timeouts", self->spin.misses);
}

/* _resolves(): host lookups made (all servers), for tests. */
static PyObject *client_resolves(CmRedisClientObject *self, PyObject *Py_UNUSED(unused))
{
    long n = 0;
    if (self->pool != NULL)
        n = self->pool->resolves;
    if (self->cluster != NULL) {
        CmRedisPool **pools;
        Py_ssize_t np = cm_cluster_pools(self, &pools);
        for (Py_ssize_t i = 0; i < np; i++)
            n += pools[i]->resolves;
    }
    return PyLong_FromLong(n);
}

static int bytes_opt(PyObject *o, PyObject **out)
{
    *out = NULL;
    if (o == NULL || o == Py_None)
        return 0;
    if (PyUnicode_Check(o))
        *out = PyUnicode_AsUTF8String(o);
    else if (PyBytes_Check(o))
        *out = Py_NewRef(o);
    else
        PyErr_Format(PyExc_TypeError, "expected str or bytes, not %.100s", Py_TYPE(o)->tp_name);
    return *out ? 0 : -1;
}

static int client_init(CmRedisClientObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"host",
                             "port",
                             "path",
                             "username",
                             "password",
                             "db",
                             "pool_size",
                             "connect_timeout",
                             "timeout",
                             "cluster",
                             "pipeline",
                             "retry_backoff",
                             "retry_backoff_max",
                             "busy_poll",
                             "max_reply_elements",
                             "max_bulk_bytes",
                             "ssl",
                             "ssl_ca_certs",
                             "ssl_ca_path",
                             "ssl_certfile",
                             "ssl_keyfile",
                             "ssl_cert_reqs",
                             "ssl_check_hostname",
                             "tracking",
                             "lease",
                             NULL};
    CmState *st = cm_state_from_type(Py_TYPE(self));
    const char *host = "localhost", *path = NULL;
    int port = 6379, size = 100, cluster = 0, pipeline = 128;
    long db = 0;
    double connect_timeout = 5.0, timeout = 5.0, backoff = 0.05, backoff_max = 1.0, lease = 0;
    PyObject *user = NULL, *pass = NULL, *ubytes = NULL, *pbytes = NULL, *ser = NULL;
    PyObject *busy_poll = Py_None;
    Py_ssize_t max_elements = CM_REDIS_MAX_ELEMENTS, max_bulk = CM_REDIS_MAX_BULK;
    int ssl = 0, cert_reqs = 2, check_hostname = 1, tracking = 0;
    CmTlsOptions tlso = {0};
    CmTlsContext tls = {0};
    int rc = -1;
    if (st == NULL)
        return -1;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "|$zizOOliddpiddOnnpzzzzippd:RedisClient", kwlist, &host, &port, &path,
            &user, &pass, &db, &size, &connect_timeout, &timeout, &cluster, &pipeline, &backoff,
            &backoff_max, &busy_poll, &max_elements, &max_bulk, &ssl, &tlso.ca_certs, &tlso.ca_path,
            &tlso.certfile, &tlso.keyfile, &cert_reqs, &check_hostname, &tracking, &lease))
        return -1;
    if (max_elements < 1 || max_elements > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "redis: max_reply_elements must be in 1..%d, got %zd",
                     INT_MAX, max_elements);
        return -1;
    }
    if (max_bulk < 1 || max_bulk > PY_SSIZE_T_MAX - 64) {
        PyErr_Format(PyExc_ValueError, "redis: max_bulk_bytes must be >= 1, got %zd", max_bulk);
        return -1;
    }
    double spin;
    if (cm_busypoll_parse(busy_poll, &spin) < 0)
        return -1;
    if (host == NULL)
        host = "localhost";
    /* each option its own message: what it is, what is allowed */
    const struct {
        const char *name;
        long long v;
        long long lo, hi;
    } ints[] = {{"pool_size", size, 1, INT_MAX},
                {"pipeline", pipeline, 1, INT_MAX},
                {"port", port, 1, 65535},
                {"db", db, 0, INT_MAX}};
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++)
        if (ints[i].v < ints[i].lo || ints[i].v > ints[i].hi) {
            PyErr_Format(PyExc_ValueError, "redis: %s must be between %lld and %lld, not %lld",
                         ints[i].name, ints[i].lo, ints[i].hi, ints[i].v);
            return -1;
        }
    const struct {
        const char *name;
        double v;
    } secs[] = {{"connect_timeout", connect_timeout},
                {"timeout", timeout},
                {"retry_backoff", backoff},
                {"retry_backoff_max", backoff_max}};
    for (size_t i = 0; i < sizeof(secs) / sizeof(secs[0]); i++)
        if (!(secs[i].v > 0) || !(secs[i].v <= 3.1e9)) {
            char buf[64];
            snprintf(buf, sizeof(buf), "%g", secs[i].v);
            PyErr_Format(PyExc_ValueError,
                         "redis: %s must be a finite number of seconds > 0, at most 3.1e9, not %s",
                         secs[i].name, buf);
            return -1;
        }
    if (!(lease >= 0) || !(lease <= 3.1e9)) {
        char buf[64];
        snprintf(buf, sizeof(buf), "%g", lease);
        PyErr_Format(PyExc_ValueError,
                     "redis: lease must be a finite number of seconds >= 0 (0: no lease), at "
                     "most 3.1e9, not %s",
                     buf);
        return -1;
    }
    if (backoff_max < backoff) {
        char lo[64], hi[64];
        snprintf(lo, sizeof(lo), "%g", backoff);
        snprintf(hi, sizeof(hi), "%g", backoff_max);
        PyErr_Format(PyExc_ValueError,
                     "redis: retry_backoff_max (%s) must be >= retry_backoff (%s)", hi, lo);
        return -1;
    }
    if (cluster && path != NULL) {
        PyErr_SetString(PyExc_ValueError,
                        "redis: a cluster is reached over TCP, not a unix socket");
        return -1;
    }
    if (cluster && db != 0) {
        /* SELECT would fail on every connection of every node */
        PyErr_Format(PyExc_ValueError, "redis: a cluster has only database 0, got db=%ld", db);
        return -1;
    }
    if (cert_reqs < 0 || cert_reqs > 2) {
        PyErr_Format(PyExc_ValueError,
                     "redis: ssl_cert_reqs must be 0 (none), 1 (optional) or 2 (required), not %d",
                     cert_reqs);
        return -1;
    }
    if (ssl && path != NULL) {
        PyErr_SetString(PyExc_ValueError, "redis: TLS is spoken over TCP, not a unix socket");
        return -1;
    }
    /* a client never accepts a server without a certificate, so "optional"
     * verifies as "required" does (as Python's ssl module does) */
    tlso.verify = cert_reqs != 0;
    tlso.check_hostname = check_hostname;
    if (ssl && cm_tls_context_init(&tls, &tlso, "redis") < 0)
        return -1;
    if (bytes_opt(user, &ubytes) < 0 || bytes_opt(pass, &pbytes) < 0)
        goto done;
    if ((ser = PyObject_CallNoArgs(st->ser.PickleSerializerType)) == NULL)
        goto done;
    client_close_pools(self);
    self->st = st;
    Py_XSETREF(self->cfg.username, ubytes);
    Py_XSETREF(self->cfg.password, pbytes);
    ubytes = pbytes = NULL;
    self->cfg.db = db;
    self->cfg.connect_timeout = connect_timeout;
    self->cfg.timeout = timeout;
    self->cfg.backoff_min = backoff;
    self->cfg.backoff_max = backoff_max;
    self->cfg.size = size;
    self->cfg.pipeline = pipeline;
    self->cfg.max_reply_elements = max_elements;
    self->cfg.max_bulk_bytes = max_bulk;
    self->cfg.tracking = tracking;
    self->cfg.lease_ms = lease > 0 ? (long long)ceil(lease * 1000.0) : 0;
    cm_tls_context_fini(&self->cfg.tls); /* the pools using it are closed */
    self->cfg.tls = tls;
    tls.ctx = NULL;
    self->spin.limit = spin;
    Py_XSETREF(self->default_serializer, ser);
    ser = NULL;
    Py_XSETREF(self->init_args, Py_NewRef(args));
    Py_XSETREF(self->init_kwds, kwds ? PyDict_Copy(kwds) : NULL);
    if (kwds != NULL && self->init_kwds == NULL)
        goto done;
    cm_netloops_clear(&self->loops);
    if (cluster) {
        if ((self->cluster = cm_cluster_new(self, host, port)) == NULL)
            goto done;
    } else if ((self->pool = cm_redis_pool_new(self, host, port, path)) == NULL) {
        goto done;
    }
    rc = 0;
done:
    cm_tls_context_fini(&tls);
    Py_XDECREF(ubytes);
    Py_XDECREF(pbytes);
    Py_XDECREF(ser);
    return rc;
}

/* netloop.h: an instance for another loop is a plain RedisClient made from
 * the same arguments; both hooks close connections without touching a loop. */
static PyObject *client_spawn(PyObject *owner)
{
    CmRedisClientObject *self = (CmRedisClientObject *)owner;
    if (self->init_args == NULL) {
        PyErr_SetString(self->st->redis.Error, "redis storage is not initialised");
        return NULL;
    }
    PyObject *inst = PyObject_Call(self->st->redis.ClientType, self->init_args, self->init_kwds);
    if (inst != NULL) /* tracking: its covered stores are the owner's */
        ((CmRedisClientObject *)inst)->origin = (CmRedisClientObject *)Py_NewRef(owner);
    return inst;
}

static void client_drop_detached(PyObject *inst, const char *why, int fork)
{
    CmRedisClientObject *self = (CmRedisClientObject *)inst;
    if (self->pool != NULL)
        cm_redis_pool_drop_detached(self->pool, why, fork);
    if (self->cluster != NULL) {
        CmRedisPool **pools;
        Py_ssize_t np = cm_cluster_pools(self, &pools);
        for (Py_ssize_t i = 0; i < np; i++)
            cm_redis_pool_drop_detached(pools[i], why, fork);
    }
}

/* The leases counted are the parent's (lease.c tells them by st->forks):
 * the child's close() has none to wait for. */
static void client_forked(PyObject *inst)
{
    CmRedisClientObject *self = (CmRedisClientObject *)inst;
    self->leases_out = 0;
    Py_CLEAR(self->lease_drain);
    client_drop_detached(inst, "inherited over fork", 1);
}
static void client_orphan(PyObject *inst) { client_drop_detached(inst, "event loop closed", 0); }

static const CmNetKind client_net_kind = {client_spawn, client_forked, client_orphan, NULL};

static PyObject *client_new(PyTypeObject *tp, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    CmRedisClientObject *self = (CmRedisClientObject *)tp->tp_alloc(tp, 0);
    if (self == NULL)
        return NULL;
    if ((self->st = cm_state_from_type(tp)) == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    cm_state_hold(self->st); /* released by client_dealloc */
    cm_netloops_init(&self->loops, self->st, &client_net_kind, (PyObject *)self);
    return (PyObject *)self;
}

static int client_traverse(CmRedisClientObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    CM_STATE_VISIT(self->st);
    Py_VISIT(self->default_serializer);
    Py_VISIT(self->init_args);
    Py_VISIT(self->init_kwds);
    Py_VISIT(self->sub_log);
    Py_VISIT(self->lease_drain);
    Py_VISIT(self->origin);
    Py_VISIT(self->covered);
    /* the pools are C records of the client's: their connections (and
     * through them the pending ops, which hold the client) are its own */
    int rc = self->pool ? cm_redis_pool_traverse(self->pool, visit, arg) : 0;
    if (rc == 0 && self->cluster != NULL) {
        CmRedisPool **pools;
        Py_ssize_t np = cm_cluster_pools(self, &pools);
        for (Py_ssize_t i = 0; rc == 0 && i < np; i++)
            rc = cm_redis_pool_traverse(pools[i], visit, arg);
    }
    if (rc == 0)
        rc = cm_cluster_traverse(self->cluster, visit, arg);
    if (rc == 0)
        rc = cm_netloops_traverse(&self->loops, visit, arg);
    return rc ? rc : cm_busypoll_traverse(&self->spin, visit, arg);
}

static int client_clear(CmRedisClientObject *self)
{
    /* a garbage client's connections close: a live loop must stop watching
     * them, a closed (or garbage) one is not touched */
    if (self->pool != NULL)
        cm_redis_pool_close_gc(self->pool);
    if (self->cluster != NULL) {
        CmRedisPool **pools;
        Py_ssize_t np = cm_cluster_pools(self, &pools);
        for (Py_ssize_t i = 0; i < np; i++)
            cm_redis_pool_close_gc(pools[i]);
    }
    cm_cluster_clear(self->cluster);
    cm_netloops_clear(&self->loops);
    Py_CLEAR(self->init_args);
    Py_CLEAR(self->init_kwds);
    Py_CLEAR(self->default_serializer);
    Py_CLEAR(self->sub_log);
    Py_CLEAR(self->lease_drain);
    Py_CLEAR(self->origin);
    Py_CLEAR(self->covered);
    cm_busypoll_clear(&self->spin);
    return 0;
}

static void client_dealloc(CmRedisClientObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    /* out of the after-fork walk before any Python code runs (a fork
     * meanwhile would find the client at refcount 0) */
    cm_netloops_unlink(&self->loops);
    client_close_pools(self);
    client_clear(self);
    cm_netloops_fini(&self->loops);
    Py_CLEAR(self->cfg.username);
    Py_CLEAR(self->cfg.password);
    cm_tls_context_fini(&self->cfg.tls);
    CmState *st = self->st;
    tp->tp_free(self);
    Py_DECREF(tp);
    cm_state_release(st);
}

static PyMethodDef client_methods[] = {
    {"get", (PyCFunction)(void (*)(void))cm_redis_client_get, METH_FASTCALL | METH_KEYWORDS,
     "get($self, /, node, serializer)\n--\n\n"
     "An awaitable: the cached value or cacheme.models.sentinel."},
    {"get_all", (PyCFunction)(void (*)(void))cm_redis_client_get_all, METH_FASTCALL | METH_KEYWORDS,
     "get_all($self, /, nodes, serializer)\n--\n\n"
     "An awaitable: [(node, value)] found (one MGET)."},
    {"set", (PyCFunction)(void (*)(void))cm_redis_client_set, METH_FASTCALL | METH_KEYWORDS,
     "set($self, /, node, value, ttl, serializer)\n--\n\n"
     "An awaitable (SET, SETEX or PSETEX)."},
    {"set_all", (PyCFunction)(void (*)(void))cm_redis_client_set_all, METH_FASTCALL | METH_KEYWORDS,
     "set_all($self, /, data, ttl, serializer)\n--\n\n"
     "An awaitable storing [(node, value)] (one pipeline)."},
    {"remove", (PyCFunction)(void (*)(void))cm_redis_client_remove, METH_FASTCALL | METH_KEYWORDS,
     "remove($self, /, node)\n--\n\nAn awaitable (DEL)."},
    {"execute", (PyCFunction)(void (*)(void))cm_redis_client_execute, METH_FASTCALL,
     "execute(*args) -> awaitable: the raw reply of any command"},
    {"close_now", (PyCFunction)client_close, METH_NOARGS,
     "Close every connection; pending requests fail with RedisConnectionError."},
    {"_refresh_slots", (PyCFunction)client_refresh_slots, METH_NOARGS, NULL},
    {"_connections", (PyCFunction)client_connections, METH_NOARGS, NULL},
    {"_retrying", (PyCFunction)client_retrying, METH_NOARGS, NULL},
    {"_resolves", (PyCFunction)client_resolves, METH_NOARGS, NULL},
    {"_sub_listen", (PyCFunction)cm_redis_sub_listen, METH_O, NULL},
    {"_sub_hold", (PyCFunction)cm_redis_sub_hold, METH_O, NULL},
    {"_sub_unlisten", (PyCFunction)cm_redis_sub_unlisten, METH_O, NULL},
    {"_sub_listen_once", (PyCFunction)cm_redis_sub_listen_once, METH_O, NULL},
    {"_tracking_info", (PyCFunction)cm_redis_track_info, METH_NOARGS, NULL},
    {"_tracking_inject", (PyCFunction)cm_redis_track_inject, METH_O, NULL},
    {"_lease_key", cm_redis_lease_key_method, METH_O, NULL},
    {"_lease_drain", cm_redis_lease_drain, METH_NOARGS, NULL},
    {"busy_poll_info", (PyCFunction)client_busy_poll_info, METH_NOARGS,
     "busy_poll_info() -> {'busy_poll': limit, 'busy_poll_hits': n, 'busy_poll_timeouts': n}"},
    {NULL, NULL},
};

static PyType_Slot client_slots[] = {
    {Py_tp_new, client_new},
    {Py_tp_init, client_init},
    {Py_tp_methods, client_methods},
    {Py_tp_traverse, client_traverse},
    {Py_tp_clear, client_clear},
    {Py_tp_dealloc, client_dealloc},
    {Py_tp_doc, "RedisClient(*, host, port, path, username, password, db, pool_size, "
                "connect_timeout, timeout, cluster, pipeline, retry_backoff, retry_backoff_max, "
                "busy_poll, max_reply_elements, max_bulk_bytes, ssl, ssl_ca_certs, ssl_ca_path, "
                "ssl_certfile, ssl_keyfile, ssl_cert_reqs, ssl_check_hostname, tracking, lease): "
                "the C Redis client behind cacheme's RedisStorage."},
    {0, NULL},
};

static PyType_Spec client_spec = {
    .name = "cacheme._core.RedisClient",
    .basicsize = sizeof(CmRedisClientObject),
    .flags =
        Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = client_slots,
};

/* ------------------------------------------------------------------ */
/* module hooks                                                       */

int cm_redis_init(PyObject *mod, CmState *st)
{
    PyObject *bases = NULL;
    int rc = -1;
    if (PyModule_AddStringConstant(mod, "_hiredis_version", CM_HIREDIS_VERSION) < 0)
        goto done;
    if ((st->redis.Error = cm_exc_add_type(mod, "RedisError", PyExc_Exception,
                                           "A Redis request failed.")) == NULL)
        goto done;
    if ((bases = PyTuple_Pack(2, st->redis.Error, PyExc_ConnectionError)) == NULL ||
        (st->redis.ConnectionError = cm_exc_add_type(mod, "RedisConnectionError", bases,
                                                     "The Redis server could not be reached or the "
                                                     "connection broke.")) == NULL)
        goto done;
    Py_CLEAR(bases);
    if ((bases = PyTuple_Pack(2, st->redis.Error, PyExc_TimeoutError)) == NULL ||
        (st->redis.TimeoutError = cm_exc_add_type(
             mod, "RedisTimeoutError", bases, "No reply from Redis within the timeout.")) == NULL)
        goto done;
    if ((st->redis.ResponseError = cm_exc_add_type(mod, "RedisResponseError", st->redis.Error,
                                                   "Redis answered with an error.")) == NULL)
        goto done;
    if ((st->redis.ConnType = PyType_FromModuleAndSpec(mod, &cm_redis_conn_spec, NULL)) == NULL ||
        (st->redis.ClientType = PyType_FromModuleAndSpec(mod, &client_spec, NULL)) == NULL ||
        (st->redis.PartialResultType = PyType_FromModuleAndSpec(
             mod, &cm_redis_partial_spec, (PyObject *)&PyList_Type)) == NULL ||
        PyModule_AddObjectRef(mod, "PartialResult", st->redis.PartialResultType) < 0 ||
        PyModule_AddObjectRef(mod, "RedisClient", st->redis.ClientType) < 0)
        goto done;
    rc = 0;
done:
    Py_XDECREF(bases);
    return rc;
}

int cm_redis_traverse(CmState *st, visitproc visit, void *arg)
{
    return cm_redis_state_traverse(&st->redis, visit, arg);
}

void cm_redis_clear(CmState *st) { cm_redis_state_clear(&st->redis); }
