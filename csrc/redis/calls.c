/* The storage calls of RedisClient (get, set, get_all, set_all, remove,
 * execute, and a flight's Get calls): each makes an op, routes its entries
 * to connections (by slot on a cluster) and hands out the future. */
#include "redis/internal.h"
#include <stdlib.h>

#include "base/args.h"
#include "core/key.h"
#include "core/ttl.h"
#include "flight/remote.h"
#include "redis/crc16.h"
#include "ser/envelope.h"

/* The full key of a node, as Redis gets it: UTF-8. A key that UTF-8 cannot
 * encode (a lone surrogate) raises StorageKeyError naming it, which reaches
 * the caller instead of a miss on every request. New reference. */
static PyObject *redis_key_of(CmState *st, PyObject *node)
{
    PyObject *key = cm_key_of_node(st, node);
    if (key != NULL && PyUnicode_AsUTF8AndSize(key, NULL) == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
            PyErr_Clear();
            PyErr_Format(st->StorageKeyError,
                         "cacheme redis storage: key %R cannot be stored: it holds a lone "
                         "surrogate, which UTF-8 cannot encode (keys must be valid Unicode text)",
                         key);
        }
        Py_CLEAR(key);
    }
    return key;
}

/* A route cache: consecutive entries of one op to the same pool share a
 * connection, so a set_all is one pipeline. It holds a reference to the
 * connection: sending an entry may close it (a write failing when the flush
 * could not be scheduled), and the pool then lets go of its own. */
typedef struct {
    CmRedisPool *pool; // borrowed
    CmRedisConnObject *conn;
} SendCache;

static CmRedisPool *route(CmRedisClientObject *self, CmRedisEntry *e)
{
    if (self->cluster == NULL)
        return self->pool;
    PyObject *key = cm_redis_op_key(e->op, cm_entry_position(e, 0)); // borrowed
    unsigned slot = 0;
    if (key != NULL) {
        Py_ssize_t n;
        const char *p;
        if (PyBytes_Check(key)) {
            p = PyBytes_AS_STRING(key);
            n = PyBytes_GET_SIZE(key);
        } else if ((p = PyUnicode_AsUTF8AndSize(key, &n)) == NULL) {
            return NULL;
        }
        slot = cm_key_slot(p, (size_t)n);
    }
    /* a redirected request stays part of the piece it was first sent in */
    uint16_t node;
    CmRedisPool *pool = cm_cluster_route(self, slot, &node);
    if (e->node == 0)
        e->node = node;
    return pool;
}

/* Route an entry and queue it on a connection of its server; the entry (with
 * its op reference) is the connection's from then on, also on failure. */
static void route_entry(CmRedisClientObject *self, PyObject *loop, CmRedisEntry *e, SendCache *sc)
{
    CmRedisPool *pool = route(self, e); // borrowed
    CmRedisConnObject *conn = NULL;     // borrowed
    if (pool != NULL) {
        CmRedisConnObject *run = pool->run; // borrowed
        if ((e->cmd == CM_CMD_GET || (e->cmd == CM_CMD_MGET && e->positions == NULL)) &&
            run != NULL && run->open_run && run->net.state != CONN_CLOSED && pool->net.loop == loop)
            conn = run;
        else if (sc != NULL && sc->pool == pool && sc->conn->net.state != CONN_CLOSED)
            conn = sc->conn;
        else if ((conn = cm_redis_pool_conn(pool, loop)) != NULL && sc != NULL) {
            sc->pool = pool;
            Py_XSETREF(sc->conn, (CmRedisConnObject *)Py_NewRef(conn));
        }
    }
    if (conn == NULL) {
        cm_redis_entry_fail_current(e);
        return;
    }
    cm_redis_conn_push(conn, e);
}

/* Send one entry of an op (the op gains a reference while it is out). */
static void send_entry(CmRedisClientObject *self, PyObject *loop, CmRedisEntry *e, SendCache *sc)
{
    cm_redis_op_ref(e->op);
    route_entry(self, loop, e, sc);
}

void cm_redis_resend(CmRedisClientObject *self, PyObject *loop, CmRedisEntry *e)
{
    route_entry(self, loop, e, NULL);
}

CmRedisOp *cm_redis_op_internal(CmRedisClientObject *client, PyObject *args,
                                int (*done)(CmRedisClientObject *, PyObject *, PyObject *),
                                PyObject *fut)
{
    CmRedisOp *op = cm_redis_op_new(client, OP_INTERNAL, fut);
    if (op == NULL)
        return NULL;
    op->keys = Py_NewRef(args);
    op->done = done;
    return op;
}

int cm_redis_send_on(CmRedisPool *pool, PyObject *loop, CmRedisOp *op)
{
    CmRedisEntry e = {.op = op, .cmd = CM_CMD_RAW, .npos = 1};
    cm_redis_op_ref(op);
    CmRedisConnObject *conn = cm_redis_pool_conn(pool, loop); // borrowed
    if (conn == NULL) {
        cm_redis_entry_fail_current(&e);
        return -1;
    }
    cm_redis_conn_push(conn, &e);
    return 0;
}

static PyObject *pick_serializer(CmRedisClientObject *self, PyObject *ser)
{
    return ser == Py_None ? self->default_serializer : ser; // borrowed
}

/* serializer.dumps({"value": v, "updated_at": now(utc)}) as bytes. */
static PyObject *encode_value(CmState *st, PyObject *ser, PyObject *value)
{
    return cm_envelope_encode(st, CM_ENVELOPE_DICT, ser, value, "redis");
}

/* the TTL as PX milliseconds, -1 for none (core/ttl.h's rule) */
static int ttl_ms(CmState *st, PyObject *ttl, long long *out)
{
    double sec = cm_ttl_seconds(st, ttl);
    if (sec == -2.0)
        return -1;
    *out = sec < 0 ? -1 : cm_ttl_ms(sec);
    return 0;
}

/* 0, or -1 with RedisError when the client has no pool (closed) */
int cm_redis_client_check_open(CmRedisClientObject *self)
{
    if (self->pool != NULL || self->cluster != NULL)
        return 0;
    PyErr_SetString(self->st->redis.Error, "redis storage is closed or not initialised");
    return -1;
}

/* The instance serving loop (netloop.h): self, or one made for the loop;
 * borrowed, NULL with an exception. Taken right before the op that holds
 * it is made (no Python code in between: close_now in another thread may
 * drop an instance). */
CmRedisClientObject *cm_redis_client_for(CmRedisClientObject *self, PyObject *loop)
{
    return (CmRedisClientObject *)cm_netloops_for(&self->loops, loop);
}

/* The common start of a storage call: the running loop, its instance
 * (*selfp becomes it; borrowed) and a future. */
static CmRedisOp *start_op(CmRedisClientObject **selfp, int kind, PyObject **loop)
{
    CmRedisClientObject *self = *selfp;
    CmState *st = self->st;
    CmRedisOp *op = NULL;
    PyObject *fut = NULL;
    if (cm_redis_client_check_open(self) < 0)
        goto done;
    if ((*loop = cm_loop_running(st)) == NULL)
        goto done;
    if ((fut = cm_loop_create_future(st, *loop)) == NULL)
        goto done;
    if ((self = cm_redis_client_for(self, *loop)) == NULL || cm_redis_client_check_open(self) < 0)
        goto done;
    *selfp = self;
    op = cm_redis_op_new(self, kind, fut);
done:
    Py_XDECREF(fut);
    if (op == NULL)
        Py_CLEAR(*loop);
    return op;
}

/* Drop the builder's reference and hand out the future. */
static PyObject *finish_op(CmRedisOp *op, PyObject *loop)
{
    PyObject *fut = Py_NewRef(op->fut);
    CmState *st = op->client->st;
    st->redis.last_op = op; /* op_finish clears it, also just below */
    cm_redis_op_unref(op);
    Py_DECREF(loop);
    return fut;
}

/* The GET of op (the key stolen), sent on loop. */
static void send_get(CmRedisClientObject *self, PyObject *loop, CmRedisOp *op, PyObject *key,
                     PyObject *ser)
{
    op->key = key;
    op->ser = Py_NewRef(pick_serializer(self, ser));
    CmRedisEntry e = {.op = op, .cmd = CM_CMD_GET, .npos = 1};
    send_entry(self, loop, &e, NULL);
}

/* The SET of op (key and payload stolen), sent on loop. */
static void send_set(CmRedisClientObject *self, PyObject *loop, CmRedisOp *op, PyObject *key,
                     PyObject *payload, long long ms)
{
    op->key = key;
    op->value = payload;
    op->ttl_ms = ms;
    CmRedisEntry e = {.op = op, .cmd = CM_CMD_SET, .npos = 1};
    send_entry(self, loop, &e, NULL);
}

/* What SET node=value sends: its key, payload and TTL (ms, -1 none); for a
 * flight's call `get` (or NULL) of a node with freshness options, the
 * payload has the load's time. 0, or -1 with an exception and nothing to
 * release. */
static int set_args(CmRedisClientObject *self, PyObject *node, PyObject *value, PyObject *ttl,
                    PyObject *ser, PyObject *get, PyObject **key, PyObject **payload, long long *ms)
{
    CmState *st = self->st;
    int64_t load_ns = 0;
    *payload = NULL;
    if ((*key = redis_key_of(st, node)) == NULL)
        return -1;
    if (get != NULL && cm_remote_call_fresh(get, &load_ns) != 0)
        *payload = cm_envelope_encode_timed(st, pick_serializer(self, ser), value,
                                            load_ns > 0 ? load_ns : -1, "redis");
    else
        *payload = encode_value(st, pick_serializer(self, ser), value);
    if (*payload == NULL || ttl_ms(st, ttl, ms) < 0) {
        Py_CLEAR(*payload);
        Py_CLEAR(*key);
        return -1;
    }
    return 0;
}

/* 0.3.0's parameter names: each may come by keyword (base/args.h) */
static const CmArgSpec get_spec = CM_ARGSPEC("get", "node", "serializer");
static const CmArgSpec set_spec = CM_ARGSPEC("set", "node", "value", "ttl", "serializer");
static const CmArgSpec get_all_spec = CM_ARGSPEC("get_all", "nodes", "serializer");
static const CmArgSpec set_all_spec = CM_ARGSPEC("set_all", "data", "ttl", "serializer");
static const CmArgSpec remove_spec = CM_ARGSPEC("remove", "node");

PyObject *cm_redis_client_get(CmRedisClientObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    PyObject *loop = NULL, *buf[2];
    if ((args = cm_args((PyObject *)self, &get_spec, args, nargs, kwnames, buf)) == NULL)
        return NULL;
    PyObject *key = redis_key_of(self->st, args[0]);
    if (key == NULL)
        return NULL;
    CmRedisOp *op = start_op(&self, OP_GET, &loop);
    if (op == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    send_get(self, loop, op, key, args[1]);
    return finish_op(op, loop);
}

/* ---- calls of a flight's Get ------------------------------------------------
 *
 * A flight's Get that reads or fills a Redis storage whose get/set are
 * RedisClient's own makes the op itself, with no future: the op holds the
 * Get and hands it the outcome (cm_remote_done) when it finishes, and the
 * Get is what its Task waits on. Nothing per call for the collector. */

int cm_redis_direct(CmState *st, PyObject *storage, PyObject *name)
{
    PyTypeObject *base = (PyTypeObject *)st->redis.ClientType;
    return PyObject_TypeCheck(storage, base) && cm_remote_method_is_own(storage, base, name);
}

static CmRedisOp *op_for(CmRedisClientObject *self, int kind, PyObject *get)
{
    if (cm_redis_client_check_open(self) < 0)
        return NULL;
    CmRedisOp *op = cm_redis_op_new(self, kind, NULL);
    if (op != NULL)
        op->get = Py_NewRef(get);
    return op;
}

CmRedisOp *cm_redis_get_for(PyObject *client, PyObject *node, PyObject *ser, PyObject *loop,
                            PyObject *get)
{
    CmRedisClientObject *self = (CmRedisClientObject *)client;
    PyObject *key = redis_key_of(self->st, node);
    if (key == NULL)
        return NULL;
    CmRedisOp *op = NULL;
    if (cm_redis_client_check_open(self) == 0 && (self = cm_redis_client_for(self, loop)) != NULL)
        op = op_for(self, OP_GET, get);
    if (op == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    send_get(self, loop, op, key, ser);
    return op;
}

CmRedisOp *cm_redis_set_for(PyObject *client, PyObject *node, PyObject *value, PyObject *ttl,
                            PyObject *ser, PyObject *loop, PyObject *get)
{
    CmRedisClientObject *self = (CmRedisClientObject *)client;
    PyObject *key, *payload;
    long long ms;
    if (set_args(self, node, value, ttl, ser, get, &key, &payload, &ms) < 0)
        return NULL;
    CmRedisOp *op = NULL;
    if (cm_redis_client_check_open(self) == 0 && (self = cm_redis_client_for(self, loop)) != NULL)
        op = op_for(self, OP_SET, get);
    if (op == NULL) {
        Py_DECREF(key);
        Py_DECREF(payload);
        return NULL;
    }
    send_set(self, loop, op, key, payload, ms);
    return op;
}

PyObject *cm_redis_op_handoff(CmRedisOp *op, PyObject *get)
{
    PyObject *old = op->get;
    op->get = Py_XNewRef(get);
    return old;
}

PyObject *cm_redis_client_remove(CmRedisClientObject *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    PyObject *loop = NULL, *buf[1];
    if ((args = cm_args((PyObject *)self, &remove_spec, args, nargs, kwnames, buf)) == NULL)
        return NULL;
    PyObject *key = redis_key_of(self->st, args[0]);
    if (key == NULL)
        return NULL;
    CmRedisOp *op = start_op(&self, OP_DEL, &loop);
    if (op == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    op->key = key;
    CmRedisEntry e = {.op = op, .cmd = CM_CMD_DEL, .npos = 1};
    send_entry(self, loop, &e, NULL);
    return finish_op(op, loop);
}

PyObject *cm_redis_client_set(CmRedisClientObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    PyObject *loop = NULL, *key, *payload, *buf[4];
    long long ms;
    if ((args = cm_args((PyObject *)self, &set_spec, args, nargs, kwnames, buf)) == NULL)
        return NULL;
    if (set_args(self, args[0], args[1], args[2], args[3], NULL, &key, &payload, &ms) < 0)
        return NULL;
    CmRedisOp *op = start_op(&self, OP_SET, &loop);
    if (op == NULL) {
        Py_DECREF(key);
        Py_DECREF(payload);
        return NULL;
    }
    send_set(self, loop, op, key, payload, ms);
    return finish_op(op, loop);
}

static int cmp_slot_pos(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Send MGET entries for positions 0..n-1 of op: one MGET on a single
 * server, one per slot on a cluster (MGET may not cross slots). */
static void send_mget(CmRedisClientObject *self, PyObject *loop, CmRedisOp *op, uint32_t n)
{
    if (self->cluster == NULL) {
        CmRedisEntry e = {.op = op, .cmd = CM_CMD_MGET, .npos = n};
        send_entry(self, loop, &e, NULL);
        return;
    }
    uint64_t *sp = malloc(sizeof(*sp) * n);
    if (sp == NULL) {
        PyErr_NoMemory();
        PyObject *exc = cm_exc_take();
        cm_redis_op_set_error(op, exc);
        Py_XDECREF(exc);
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        Py_ssize_t len;
        const char *p = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(op->keys, i), &len);
        if (p == NULL) {
            PyObject *exc = cm_exc_take();
            cm_redis_op_set_error(op, exc);
            Py_XDECREF(exc);
            free(sp);
            return;
        }
        sp[i] = ((uint64_t)cm_key_slot(p, (size_t)len) << 32) | i;
    }
    qsort(sp, n, sizeof(*sp), cmp_slot_pos);
    for (uint32_t i = 0; i < n;) {
        uint32_t j = i;
        while (j < n && (sp[j] >> 32) == (sp[i] >> 32))
            j++;
        CmRedisEntry e = {.op = op, .cmd = CM_CMD_MGET, .npos = j - i};
        e.positions = malloc(sizeof(uint32_t) * (j - i));
        if (e.positions == NULL) {
            PyErr_NoMemory();
            cm_redis_op_ref(op);
            cm_redis_entry_fail_current(&e);
            break;
        }
        for (uint32_t k = i; k < j; k++)
            e.positions[k - i] = (uint32_t)(sp[k] & 0xffffffffu);
        e.pos = e.positions[0];
        send_entry(self, loop, &e, NULL);
        i = j;
    }
    free(sp);
}

/* MGET of the nodes (a sequence); aged: the pairs carry each value's
 * updated_at and load time (cm_redis_get_all_aged). */
static PyObject *get_all_op(CmRedisClientObject *self, PyObject *seq, PyObject *ser, int aged)
{
    CmState *st = self->st;
    PyObject *loop = NULL, *nodes = NULL, *keys = NULL, *results = NULL;
    if ((nodes = PySequence_List(seq)) == NULL)
        goto fail;
    Py_ssize_t n = PyList_GET_SIZE(nodes);
    if (n > (Py_ssize_t)UINT32_MAX / 2) {
        PyErr_SetString(PyExc_OverflowError, "too many nodes");
        goto fail;
    }
    if ((keys = PyList_New(n)) == NULL || (results = PyList_New(n)) == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = redis_key_of(st, PyList_GET_ITEM(nodes, i));
        if (k == NULL)
            goto fail;
        PyList_SET_ITEM(keys, i, k);
        PyList_SET_ITEM(results, i, Py_NewRef(Py_None));
    }
    CmRedisOp *op = start_op(&self, OP_MGET, &loop);
    if (op == NULL)
        goto fail;
    op->nodes = nodes;
    op->keys = keys;
    op->result = results;
    op->ser = Py_NewRef(pick_serializer(self, ser));
    op->aged = aged;
    if (n > 0)
        send_mget(self, loop, op, (uint32_t)n);
    return finish_op(op, loop);
fail:
    Py_XDECREF(nodes);
    Py_XDECREF(keys);
    Py_XDECREF(results);
    return NULL;
}

PyObject *cm_redis_client_get_all(CmRedisClientObject *self, PyObject *const *args,
                                  Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *buf[2];
    if ((args = cm_args((PyObject *)self, &get_all_spec, args, nargs, kwnames, buf)) == NULL)
        return NULL;
    return get_all_op(self, args[0], args[1], 0);
}

PyObject *cm_redis_get_all_aged(CmState *st, PyObject *client, PyObject *nodes, PyObject *ser)
{
    (void)st;
    return get_all_op((CmRedisClientObject *)client, nodes, ser, 1);
}

PyObject *cm_redis_client_set_all(CmRedisClientObject *self, PyObject *const *args,
                                  Py_ssize_t nargs, PyObject *kwnames)
{
    CmState *st = self->st;
    PyObject *loop = NULL, *data = NULL, *keys = NULL, *values = NULL, *buf[3];
    long long ms;
    if ((args = cm_args((PyObject *)self, &set_all_spec, args, nargs, kwnames, buf)) == NULL)
        return NULL;
    PyObject *ser = pick_serializer(self, args[2]); // borrowed
    if ((data = PySequence_List(args[0])) == NULL || ttl_ms(st, args[1], &ms) < 0)
        goto fail;
    Py_ssize_t n = PyList_GET_SIZE(data);
    if ((keys = PyList_New(n)) == NULL || (values = PyList_New(n)) == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(data, i); // borrowed
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "set_all() expects (node, value) pairs");
            goto fail;
        }
        PyObject *k = redis_key_of(st, PyTuple_GET_ITEM(item, 0));
        if (k == NULL)
            goto fail;
        PyList_SET_ITEM(keys, i, k);
        PyObject *v = encode_value(st, ser, PyTuple_GET_ITEM(item, 1));
        if (v == NULL)
            goto fail;
        PyList_SET_ITEM(values, i, v);
    }
    CmRedisOp *op = start_op(&self, OP_SET, &loop);
    if (op == NULL)
        goto fail;
    op->keys = keys;
    op->values = values;
    op->ttl_ms = ms;
    SendCache sc = {NULL, NULL};
    for (Py_ssize_t i = 0; i < n; i++) {
        CmRedisEntry e = {.op = op, .cmd = CM_CMD_SET, .pos = (uint32_t)i, .npos = 1};
        send_entry(self, loop, &e, &sc);
    }
    Py_XDECREF(sc.conn);
    Py_DECREF(data);
    return finish_op(op, loop);
fail:
    Py_XDECREF(data);
    Py_XDECREF(keys);
    Py_XDECREF(values);
    return NULL;
}

/* execute(*args): any command; the raw reply (bytes, int, None, str for a
 * status, list). Routed by its first argument after the command name. */
PyObject *cm_redis_client_execute(CmRedisClientObject *self, PyObject *const *args,
                                  Py_ssize_t nargs)
{
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "execute() needs a command");
        return NULL;
    }
    PyObject *argv = PyTuple_New(nargs);
    if (argv == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < nargs; i++) {
        PyObject *a = args[i], *b;
        if (PyBytes_Check(a))
            b = Py_NewRef(a);
        else if (PyUnicode_Check(a))
            b = PyUnicode_AsUTF8String(a);
        else if (PyLong_Check(a) || PyFloat_Check(a)) {
            PyObject *s = PyObject_Str(a);
            b = s ? PyUnicode_AsUTF8String(s) : NULL;
            Py_XDECREF(s);
        } else {
            PyErr_Format(PyExc_TypeError,
                         "execute() arguments must be bytes, str, int or float, "
                         "not %.100s",
                         Py_TYPE(a)->tp_name);
            b = NULL;
        }
        if (b == NULL) {
            Py_DECREF(argv);
            return NULL;
        }
        PyTuple_SET_ITEM(argv, i, b);
    }
    PyObject *fut = cm_redis_execute_at(self, argv, NULL);
    Py_DECREF(argv);
    return fut;
}

PyObject *cm_redis_execute_at(CmRedisClientObject *self, PyObject *argv, PyObject *route)
{
    PyObject *loop = NULL;
    CmRedisOp *op = start_op(&self, OP_RAW, &loop);
    if (op == NULL)
        return NULL;
    op->keys = Py_NewRef(argv);
    op->key = Py_XNewRef(route);
    CmRedisEntry e = {.op = op, .cmd = CM_CMD_RAW, .npos = 1};
    send_entry(self, loop, &e, NULL);
    return finish_op(op, loop);
}
