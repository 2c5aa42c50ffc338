/* Redis storage driven from C on the asyncio loop.
 *
 * Why: a cache in front of a database earns its keep only if a hit costs far
 * less than the load it saves; a Python client spends most of a GET in its
 * own code. Here a storage call writes its RESP request into a connection's
 * buffer and returns an asyncio future; nothing else happens until the loop
 * runs the one flush scheduled (call_soon) for that connection, which sends
 * every request issued in that loop iteration in one write: automatic
 * pipelining, as hiredis's async context and redis-py's pipelines do by hand.
 * Replies are parsed by hiredis's reader with object functions that build
 * Python objects directly (bytes, int, None, list, str for status and
 * RedisResponseError for errors) and are matched to requests in order through
 * a ring of pending entries.
 *
 * Shapes:
 *   CmRedisClientObject  the storage type (RedisClient; cacheme's RedisStorage
 *                        subclasses it), with one pool or a cluster.
 *   CmRedisPool          connections to one server; opens up to `size` of
 *                        them, a new one only when every open one has
 *                        `pipeline` replies outstanding; backs off after a
 *                        failure (no new connection before retry_at, doubling).
 *   CmRedisConnObject    a non-blocking socket registered with the loop
 *                        (add_reader while open, add_writer while connecting
 *                        or while the kernel buffer is full), an output
 *                        buffer, a hiredis reader, the pending ring and one
 *                        timer for the connect timeout or the oldest pending
 *                        reply's deadline. A failure closes it and fails
 *                        every pending entry with RedisConnectionError or
 *                        RedisTimeoutError; nothing waits forever.
 *   CmRedisOp            one storage call: its future, keys, values and the
 *                        replies gathered from its entries (one per request;
 *                        several for set_all and cluster MGETs); settled
 *                        when its last entry is answered or failed.
 *
 * Stored values keep cacheme 0.3.0's layout: serializer.dumps({"value": v,
 * "updated_at": <utc datetime>}), SETEX for whole seconds and PSETEX for
 * the rest (0.3.0 sent SETEX 0 for TTLs below a second, which Redis refuses). */
#include "redis/redis.h"
#include "flight/remote.h"
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <hiredis/hiredis.h> /* HIREDIS_MAJOR */
#include <hiredis/read.h>

#include "base/clock.h"
#include "base/compat.h"
#include "base/exc.h"
#include "core/key.h"
#include "core/ttl.h"
#include "loop/loop.h"
#include "loop/resolve.h"
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

enum { CONN_CONNECTING, CONN_READY, CONN_CLOSED };

struct CmRedisConnObject {
    PyObject_HEAD
    CmState *st;
    CmRedisPool *pool; /* borrowed; NULL once closed */
    PyObject *loop;
    PyObject *flush_cb; /* bound on_flush, made once */
    PyObject *timer;    /* TimerHandle or NULL */
    int64_t timer_at;   /* when it fires (monotonic ns) */
    int fd;
    int state;
    int reading, writing, flush_scheduled, replied;
    int open_run; /* the ring's last entry is a GETS run still taking keys */
    int64_t connect_deadline;
    PyObject *resolve; /* the host's lookup (resolve.h) while it runs, or NULL */
    CmBuf out;
    redisReader *reader;
    CmRedisEntry *ring;
    size_t cap, head, len;
};

enum { OP_GET, OP_MGET, OP_SET, OP_DEL, OP_RAW, OP_INTERNAL };

struct CmRedisOp {
    int kind;
    Py_ssize_t refs;
    CmRedisClientObject *client;
    PyObject *fut;    /* NULL for background internal ops */
    PyObject *ser;    /* GET/MGET */
    PyObject *key;    /* the key of single-key ops (str) */
    PyObject *keys;   /* list of str (MGET, set_all); tuple of bytes (RAW) */
    PyObject *nodes;  /* MGET: the nodes, in order */
    PyObject *value;  /* SET: payload */
    PyObject *values; /* set_all: payloads */
    PyObject *result; /* GET/RAW: the reply; MGET: list of replies */
    PyObject *error;
    long long ttl_ms; /* -1: no TTL */
    int (*done)(CmRedisClientObject *, PyObject *reply, PyObject *error);
    /* a FlightProxy woken straight when the op finishes (instead of through
     * a done-callback of fut), and its loop; see cm_redis_attach_waiter */
    PyObject *waiter, *waiter_loop;
    /* a flight's Get that made the op with no future and is handed the
     * outcome (cm_get_op_done); see cm_redis_get_for */
    PyObject *get;
};

/* ------------------------------------------------------------------ */
/* replies: hiredis object functions building Python objects          */

/* Default bounds of one reply (RedisClient max_reply_elements /
 * max_bulk_bytes): 1 Mi elements is an 8 MiB list; 512 MiB is the largest
 * bulk Redis itself accepts (proto-max-bulk-len), so no stored value is
 * refused by default. */
#define CM_REDIS_MAX_ELEMENTS ((Py_ssize_t)1 << 20)
#define CM_REDIS_MAX_BULK ((Py_ssize_t)512 << 20)

static void *reply_attach(const redisReadTask *task, PyObject *obj)
{
    if (obj != NULL && task->parent != NULL) {
        PyObject *parent = task->parent->obj; // borrowed
        PyList_SET_ITEM(parent, task->idx, obj);
    }
    return obj;
}

static void *reply_string(const redisReadTask *task, char *s, size_t len)
{
    CmRedisConnObject *c = task->privdata;
    PyObject *obj;
    if (task->type == REDIS_REPLY_ERROR) {
        PyObject *msg = PyUnicode_DecodeUTF8(s, (Py_ssize_t)len, "replace");
        obj = msg ? PyObject_CallOneArg(c->st->RedisResponseError, msg) : NULL;
        Py_XDECREF(msg);
    } else if (task->type == REDIS_REPLY_STATUS) {
        obj = PyUnicode_DecodeUTF8(s, (Py_ssize_t)len, "replace");
    } else {
        obj = PyBytes_FromStringAndSize(s, (Py_ssize_t)len);
    }
    if (obj == NULL)
        PyErr_Clear(); /* the reader reports out of memory */
    return reply_attach(task, obj);
}

/* 1 if an aggregate of n elements is within the client's max_reply_elements:
 * PyList_New(n) reserves 8n bytes before a single element has arrived. */
static int reply_elements_ok(const redisReadTask *task, size_t n)
{
    const CmRedisConnObject *c = task->privdata;
    Py_ssize_t max = c->pool != NULL ? c->pool->cfg->max_reply_elements : CM_REDIS_MAX_ELEMENTS;
    return cm_resp_elements_ok(n, (size_t)max);
}

/* hiredis 1.x passes an array's length as a size_t, 0.14 as an int (a nil
 * array goes to createNil in both) */
#if HIREDIS_MAJOR >= 1
typedef size_t CmReplyLen;
#else
typedef int CmReplyLen;
#endif

static void *reply_array(const redisReadTask *task, CmReplyLen n)
{
    Py_ssize_t len = (Py_ssize_t)n;
    PyObject *obj;
    /* NULL fails the reader (REDIS_ERR_OOM), and conn_on_read the connection */
    if (len < 0 || !reply_elements_ok(task, (size_t)len))
        return NULL;
    obj = PyList_New(len);
    if (obj == NULL)
        PyErr_Clear();
    return reply_attach(task, obj);
}

static void *reply_integer(const redisReadTask *task, long long v)
{
    PyObject *obj = PyLong_FromLongLong(v);
    if (obj == NULL)
        PyErr_Clear();
    return reply_attach(task, obj);
}

static void *reply_nil(const redisReadTask *task) { return reply_attach(task, Py_NewRef(Py_None)); }

#if HIREDIS_MAJOR >= 1
/* RESP3 only (we speak RESP2): hiredis 1.x would otherwise put a tag, not an
 * object, where a double or a boolean came */
static void *reply_double(const redisReadTask *task, double v, char *s, size_t len)
{
    (void)s, (void)len;
    PyObject *obj = PyFloat_FromDouble(v);
    if (obj == NULL)
        PyErr_Clear();
    return reply_attach(task, obj);
}

static void *reply_bool(const redisReadTask *task, int v)
{
    return reply_attach(task, PyBool_FromLong(v));
}
#endif

static void reply_free(void *obj) { Py_XDECREF((PyObject *)obj); }

#define CM_HIREDIS_STR_(x) #x
#define CM_HIREDIS_STR(x) CM_HIREDIS_STR_(x)
/* _core._hiredis_version: the hiredis the reader was compiled against */
#define CM_HIREDIS_VERSION                                                                         \
    CM_HIREDIS_STR(HIREDIS_MAJOR)                                                                  \
    "." CM_HIREDIS_STR(HIREDIS_MINOR) "." CM_HIREDIS_STR(HIREDIS_PATCH)

/* by name: hiredis 1.x has more slots than 0.14, in another order */
static redisReplyObjectFunctions reply_fns = {
    .createString = reply_string,
    .createArray = reply_array,
    .createInteger = reply_integer,
    .createNil = reply_nil,
#if HIREDIS_MAJOR >= 1
    .createDouble = reply_double,
    .createBool = reply_bool,
#endif
    .freeObject = reply_free,
};

/* ------------------------------------------------------------------ */
/* ops                                                                */

static CmRedisOp *op_new(CmRedisClientObject *client, int kind, PyObject *fut)
{
    CmRedisOp *op = calloc(1, sizeof(*op));
    if (op == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    op->kind = kind;
    op->refs = 1; /* the builder's */
    op->client = (CmRedisClientObject *)Py_NewRef(client);
    op->fut = Py_XNewRef(fut);
    op->ttl_ms = -1;
    return op;
}

void cm_redis_op_ref(CmRedisOp *op) { op->refs++; }

PyObject *cm_redis_op_key(CmRedisOp *op, uint32_t i)
{
    if (op->keys == NULL)
        return op->key;
    if (PyTuple_Check(op->keys))
        return PyTuple_GET_SIZE(op->keys) > 1 ? PyTuple_GET_ITEM(op->keys, 1) : NULL;
    return PyList_GET_ITEM(op->keys, i);
}

static void op_set_error(CmRedisOp *op, PyObject *exc)
{
    if (op->error == NULL)
        op->error = Py_NewRef(exc ? exc : op->client->st->RedisError);
}

/* serializer.loads(raw)["value"]; new reference or NULL with an exception. */
static PyObject *decode_value(CmState *st, PyObject *ser, PyObject *raw)
{
    return cm_envelope_decode(st, CM_ENVELOPE_DICT, ser, raw, st->RedisError, "redis");
}

/* [(node, value)] of the keys found and decodable, in order. */
static PyObject *mget_pairs(CmState *st, CmRedisOp *op)
{
    Py_ssize_t n = PyList_GET_SIZE(op->result);
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *raw = PyList_GET_ITEM(op->result, i); // borrowed
        if (raw == Py_None)
            continue;
        PyObject *v = decode_value(st, op->ser, raw);
        if (v == NULL) {
            /* undecodable bytes are a miss, as in get() */
            PyObject *exc = cm_exc_take();
            cm_log_warning(st, "cacheme: redis value of %R cannot be decoded: %R",
                           PyList_GET_ITEM(op->keys, i), exc);
            Py_XDECREF(exc);
            continue;
        }
        PyObject *pair = PyTuple_Pack(2, PyList_GET_ITEM(op->nodes, i), v);
        Py_DECREF(v);
        if (pair == NULL || PyList_Append(out, pair) < 0) {
            Py_XDECREF(pair);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(pair);
    }
    return out;
}

/* ---- waiters woken straight ------------------------------------------------
 *
 * The leader of a flight waits for a storage call through a FlightProxy,
 * which would add itself as a done-callback of the call's future: when the
 * reply comes, set_result schedules it with loop.call_soon (a Handle, its
 * Python frames) and the proxy then wakes the Task. For the future a Redis
 * call has just returned, the proxy is instead given to the op
 * (cm_redis_attach_waiter): the op sets its future as before and hands the
 * proxy to cm_proxy_wake_later, whose one callback per batch of replies
 * wakes every proxy handed over, in the order their ops finished. */

int cm_redis_attach_waiter(CmState *st, PyObject *fut, PyObject *waiter, PyObject *loop)
{
    CmRedisOp *op = st->redis_last_op; // borrowed: cleared when op finishes
    if (op == NULL || op->fut != fut || op->waiter != NULL)
        return 0;
    op->waiter = Py_NewRef(waiter);
    op->waiter_loop = Py_NewRef(loop);
    st->redis_last_op = NULL;
    return 1;
}

static void op_finish(CmRedisOp *op)
{
    CmState *st = op->client->st;
    PyObject *saved = cm_exc_take();
    if (st->redis_last_op == op)
        st->redis_last_op = NULL;
    PyObject *res = NULL;
    PyObject *err = Py_XNewRef(op->error);

    if (err == NULL) {
        switch (op->kind) {
        case OP_GET:
            if (op->result == NULL || op->result == Py_None)
                res = Py_NewRef(st->sentinel);
            else
                res = decode_value(st, op->ser, op->result);
            break;
        case OP_MGET:
            res = mget_pairs(st, op);
            break;
        case OP_RAW:
            res = Py_NewRef(op->result ? op->result : Py_None);
            break;
        default:
            res = Py_NewRef(Py_None);
            break;
        }
        if (res == NULL)
            err = cm_exc_take();
    }
    if (op->done != NULL && op->done(op->client, err ? NULL : op->result, err) < 0) {
        Py_XDECREF(err);
        err = cm_exc_take();
    }
    if (op->fut != NULL) {
        int rc = err ? cm_future_set_exception(st, op->fut, err)
                     : cm_future_set_result(st, op->fut, res);
        if (rc < 0)
            PyErr_Clear(); /* the caller cancelled it */
    }
    if (op->waiter != NULL) {
        cm_remote_wake_waiter(st, op->waiter, op->fut, op->waiter_loop);
        op->waiter = op->waiter_loop = NULL;
    }
    if (op->get != NULL) {
        PyObject *g = op->get;
        op->get = NULL;
        cm_remote_done(st, g, res, err);
    }
    Py_XDECREF(res);
    Py_XDECREF(err);
    Py_DECREF(op->client);
    Py_XDECREF(op->fut);
    Py_XDECREF(op->ser);
    Py_XDECREF(op->key);
    Py_XDECREF(op->keys);
    Py_XDECREF(op->nodes);
    Py_XDECREF(op->value);
    Py_XDECREF(op->values);
    Py_XDECREF(op->result);
    Py_XDECREF(op->error);
    free(op);
    cm_exc_restore(saved);
}

void cm_redis_op_unref(CmRedisOp *op)
{
    if (--op->refs == 0)
        op_finish(op);
}

/* Let an answered entry go. */
static void entry_release(CmRedisEntry *e)
{
    CmRedisOp *op = e->op;
    CmRedisGetRef *gets = e->gets;
    uint32_t n = e->npos;
    free(e->positions);
    e->positions = NULL;
    e->op = NULL;
    e->gets = NULL;
    if (gets != NULL) {
        for (uint32_t i = 0; i < n; i++)
            cm_redis_op_unref(gets[i].op);
        free(gets);
    }
    if (op != NULL)
        cm_redis_op_unref(op);
}

/* Fail the entry's op(s) with exc (borrowed) and let the entry go. */
static void entry_fail_exc(CmRedisEntry *e, PyObject *exc)
{
    if (e->op != NULL)
        op_set_error(e->op, exc);
    for (uint32_t i = 0; e->gets != NULL && i < e->npos; i++)
        op_set_error(e->gets[i].op, exc);
    entry_release(e);
}

void cm_redis_entry_fail(CmState *st, CmRedisEntry *e, PyObject *tp, PyObject *msg)
{
    PyObject *saved = cm_exc_take();
    int wanted = (e->op != NULL && e->op->error == NULL) || e->gets != NULL;
    PyObject *exc = wanted ? PyObject_CallOneArg(tp, msg ? msg : Py_None) : NULL;
    if (exc == NULL)
        PyErr_Clear();
    entry_fail_exc(e, exc ? exc : st->RedisError);
    Py_XDECREF(exc);
    cm_exc_restore(saved);
}

/* Fail the entry with the exception being raised (cleared). */
static void entry_fail_current(CmRedisEntry *e)
{
    PyObject *exc = cm_exc_take();
    entry_fail_exc(e, exc);
    Py_XDECREF(exc);
}

/* ------------------------------------------------------------------ */
/* request encoding                                                   */

static int arg_str(CmBuf *b, PyObject *s)
{
    Py_ssize_t n;
    const char *p;
    if (PyBytes_Check(s)) {
        p = PyBytes_AS_STRING(s);
        n = PyBytes_GET_SIZE(s);
    } else if ((p = PyUnicode_AsUTF8AndSize(s, &n)) == NULL) {
        return -1;
    }
    if (cm_resp_arg(b, p, (size_t)n) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int arg_lit(CmBuf *b, const char *s)
{
    if (cm_resp_arg(b, s, strlen(s)) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int begin(CmBuf *b, size_t argc)
{
    if (cm_resp_begin(b, argc) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* Append the request of an entry; all or nothing. */
static int encode_entry(CmBuf *b, const CmRedisEntry *e)
{
    size_t mark = cm_buf_mark(b);
    CmRedisOp *op = e->op;
    switch (e->cmd) {
    case CM_CMD_GET:
        if (begin(b, 2) < 0 || arg_lit(b, "GET") < 0 || arg_str(b, cm_redis_op_key(op, e->pos)) < 0)
            goto fail;
        break;
    case CM_CMD_MGET:
        if (begin(b, 1 + (size_t)e->npos) < 0 || arg_lit(b, "MGET") < 0)
            goto fail;
        for (uint32_t i = 0; i < e->npos; i++)
            if (arg_str(b, cm_redis_op_key(op, cm_entry_position(e, i))) < 0)
                goto fail;
        break;
    case CM_CMD_GETS:
        if (begin(b, 1 + (size_t)e->npos) < 0 || arg_lit(b, e->npos == 1 ? "GET" : "MGET") < 0)
            goto fail;
        for (uint32_t i = 0; i < e->npos; i++)
            if (arg_str(b, cm_redis_op_key(e->gets[i].op, e->gets[i].pos)) < 0)
                goto fail;
        break;
    case CM_CMD_SET: {
        PyObject *key = cm_redis_op_key(op, e->pos);                                  // borrowed
        PyObject *val = op->values ? PyList_GET_ITEM(op->values, e->pos) : op->value; // borrowed
        long long ttl = op->ttl_ms;
        if (ttl < 0) {
            if (begin(b, 3) < 0 || arg_lit(b, "SET") < 0 || arg_str(b, key) < 0 ||
                arg_str(b, val) < 0)
                goto fail;
        } else {
            int whole = ttl % 1000 == 0;
            if (begin(b, 4) < 0 || arg_lit(b, whole ? "SETEX" : "PSETEX") < 0 ||
                arg_str(b, key) < 0 || cm_resp_arg_ll(b, whole ? ttl / 1000 : ttl) < 0 ||
                arg_str(b, val) < 0)
                goto fail;
        }
        break;
    }
    case CM_CMD_DEL:
        if (begin(b, 2) < 0 || arg_lit(b, "DEL") < 0 || arg_str(b, cm_redis_op_key(op, e->pos)) < 0)
            goto fail;
        break;
    case CM_CMD_RAW: {
        Py_ssize_t n = PyTuple_GET_SIZE(op->keys);
        if (begin(b, (size_t)n) < 0)
            goto fail;
        for (Py_ssize_t i = 0; i < n; i++)
            if (arg_str(b, PyTuple_GET_ITEM(op->keys, i)) < 0)
                goto fail;
        break;
    }
    case CM_CMD_ASKING:
        if (begin(b, 1) < 0 || arg_lit(b, "ASKING") < 0)
            goto fail;
        break;
    default:
        PyErr_SetString(PyExc_SystemError, "redis: unknown request kind");
        goto fail;
    }
    return 0;
fail:
    cm_buf_rollback(b, mark);
    return -1;
}

/* ------------------------------------------------------------------ */
/* connections                                                        */

static PyObject *conn_on_read(PyObject *self, PyObject *unused);
static PyObject *conn_on_write(PyObject *self, PyObject *unused);
static PyObject *conn_on_flush(PyObject *self, PyObject *unused);
static PyObject *conn_on_timer(PyObject *self, PyObject *unused);

static PyMethodDef on_read_def = {"_on_read", conn_on_read, METH_NOARGS, NULL};
static PyMethodDef on_write_def = {"_on_write", conn_on_write, METH_NOARGS, NULL};
static PyMethodDef on_flush_def = {"_on_flush", conn_on_flush, METH_NOARGS, NULL};
static PyMethodDef on_timer_def = {"_on_timer", conn_on_timer, METH_NOARGS, NULL};
static PyObject *conn_on_resolved(PyObject *self, PyObject *task);
static PyMethodDef on_resolved_def = {"_on_resolved", conn_on_resolved, METH_O, NULL};

static void pool_forget(CmRedisPool *p, CmRedisConnObject *c, int failed, PyObject *why);

/* Close the connection: unregister from the loop, close the socket, and fail
 * every pending entry with tp(msg). failed: count it against the server
 * (backoff). Safe to call more than once and from within its callbacks. */
static void conn_close(CmRedisConnObject *c, PyObject *tp, PyObject *msg, int failed)
{
    if (c->state == CONN_CLOSED)
        return;
    CmState *st = c->st;
    PyObject *saved = cm_exc_take();
    Py_INCREF(c);
    c->state = CONN_CLOSED;
    if (c->reading && cm_loop_remove_reader(st, c->loop, c->fd) < 0)
        PyErr_Clear();
    if (c->writing && cm_loop_remove_writer(st, c->loop, c->fd) < 0)
        PyErr_Clear();
    c->reading = c->writing = 0;
    if (c->timer != NULL) {
        cm_handle_cancel(st, c->timer);
        Py_CLEAR(c->timer);
    }
    if (c->resolve != NULL) {
        PyObject *r = PyObject_CallMethod(c->resolve, "cancel", NULL);
        if (r == NULL)
            PyErr_Clear();
        Py_XDECREF(r);
        Py_CLEAR(c->resolve);
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    cm_buf_free(&c->out);
    if (c->reader != NULL) {
        redisReaderFree(c->reader);
        c->reader = NULL;
    }
    Py_CLEAR(c->flush_cb);

    CmRedisEntry *ring = c->ring;
    size_t head = c->head, len = c->len, cap = c->cap;
    c->ring = NULL;
    c->head = c->len = c->cap = 0;

    CmRedisPool *p = c->pool;
    c->pool = NULL;
    CmRedisClientObject *owner = NULL;
    for (size_t i = 0; i < len && owner == NULL; i++) {
        const CmRedisEntry *e = &ring[(head + i) % cap]; // borrowed
        if (e->op != NULL)
            owner = e->op->client;
        else if (e->gets != NULL)
            owner = e->gets[0].op->client;
    }
    c->open_run = 0;
    if (p != NULL && p->run == c)
        p->run = NULL;
    Py_XINCREF(owner);
    if (p != NULL)
        pool_forget(p, c, failed, msg);
    for (size_t i = 0; i < len; i++)
        cm_redis_entry_fail(st, &ring[(head + i) % cap], tp, msg);
    free(ring);
    if (failed && owner != NULL && owner->cluster != NULL)
        cm_cluster_node_failed(owner);
    Py_XDECREF(owner);
    Py_DECREF(c);
    cm_exc_restore(saved);
}

static void conn_close_fmt(CmRedisConnObject *c, PyObject *tp, int failed, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PyObject *saved = cm_exc_take();
    PyObject *msg = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (msg == NULL) {
        PyErr_Clear();
        msg = PyUnicode_FromString("redis connection failed");
    }
    if (msg != NULL) {
        conn_close(c, tp, msg, failed);
        Py_DECREF(msg);
    }
    cm_exc_restore(saved);
}

static const char *conn_label(CmRedisConnObject *c) { return c->pool ? c->pool->label : "redis"; }

/* The earliest reply deadline pending, INT64_MAX if none. Deadlines grow in
 * ring order but for the connection's own AUTH/SELECT at the front, whose
 * clock starts at the connect deadline. */
static int64_t conn_first_deadline(const CmRedisConnObject *c)
{
    int64_t first = INT64_MAX;
    for (size_t i = 0; i < c->len; i++) {
        const CmRedisEntry *e = &c->ring[(c->head + i) % c->cap]; // borrowed
        if (e->deadline < first)
            first = e->deadline;
        if (e->cmd != CM_CMD_HELLO)
            break;
    }
    return first;
}

/* The timer for `at` (monotonic ns), replacing the one armed. */
static int conn_arm_at(CmRedisConnObject *c, int64_t at)
{
    if (c->timer != NULL) {
        cm_handle_cancel(c->st, c->timer);
        Py_CLEAR(c->timer);
    }
    PyObject *cb = PyCFunction_New(&on_timer_def, (PyObject *)c);
    if (cb == NULL)
        return -1;
    int64_t delay = at - cm_now_ns();
    c->timer = cm_loop_call_later(c->st, c->loop, delay < 0 ? 0 : (double)delay / 1e9, cb);
    Py_DECREF(cb);
    c->timer_at = at;
    return c->timer ? 0 : -1;
}

/* The timer for the next thing to check: the connect deadline while
 * connecting, and the earliest reply deadline. */
static int conn_rearm(CmRedisConnObject *c)
{
    int64_t at = conn_first_deadline(c);
    if (c->state == CONN_CONNECTING && c->connect_deadline < at)
        at = c->connect_deadline;
    if (at == INT64_MAX) {
        if (c->timer != NULL) {
            cm_handle_cancel(c->st, c->timer);
            Py_CLEAR(c->timer);
        }
        return 0;
    }
    return conn_arm_at(c, at);
}

static void close_run(CmRedisConnObject *c);

/* Send what the buffer holds; wait for writability if the kernel is full. */
static void conn_write(CmRedisConnObject *c)
{
    if (c->open_run && c->state == CONN_READY)
        close_run(c);
    while (c->state == CONN_READY && cm_buf_pending(&c->out) > 0) {
        ssize_t n = send(c->fd, c->out.data + c->out.pos, cm_buf_pending(&c->out), MSG_NOSIGNAL);
        if (n > 0) {
            cm_buf_consume(&c->out, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->writing) {
                PyObject *cb = PyCFunction_New(&on_write_def, (PyObject *)c);
                int rc = cb ? cm_loop_add_writer(c->st, c->loop, c->fd, cb) : -1;
                Py_XDECREF(cb);
                if (rc < 0) {
                    PyObject *exc = cm_exc_take();
                    conn_close_fmt(c, c->st->RedisConnectionError, 1, "redis %s: %S", conn_label(c),
                                   exc);
                    Py_XDECREF(exc);
                    return;
                }
                c->writing = 1;
            }
            return;
        }
        conn_close_fmt(c, c->st->RedisConnectionError, 1, "redis %s: write failed: %s",
                       conn_label(c), strerror(errno));
        return;
    }
    if (c->writing && c->state == CONN_READY) {
        if (cm_loop_remove_writer(c->st, c->loop, c->fd) < 0)
            PyErr_WriteUnraisable((PyObject *)c);
        c->writing = 0;
    }
}

static void conn_schedule_flush(CmRedisConnObject *c)
{
    if (c->flush_scheduled || c->writing || c->state != CONN_READY)
        return;
    PyObject *h = cm_loop_call_soon(c->st, c->loop, c->flush_cb);
    if (h == NULL) {
        PyErr_Clear();
        conn_write(c); /* no loop to wait for: send now */
        return;
    }
    Py_DECREF(h);
    c->flush_scheduled = 1;
}

static int ring_push(CmRedisConnObject *c, const CmRedisEntry *e)
{
    if (c->len == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        CmRedisEntry *r = malloc(cap * sizeof(*r));
        if (r == NULL)
            return -1;
        for (size_t i = 0; i < c->len; i++)
            r[i] = c->ring[(c->head + i) % c->cap];
        free(c->ring);
        c->ring = r;
        c->cap = cap;
        c->head = 0;
    }
    c->ring[(c->head + c->len) % c->cap] = *e;
    c->len++;
    return 0;
}

/* Coalescing: GETs of single keys queued on a connection in one loop
 * iteration leave as one request, a GET for one key or an MGET for several
 * (at most CM_REDIS_RUN_MAX): one command for the server to parse and run,
 * one reply to read. The run is the ring's last entry while it takes keys;
 * any other command queued after it, or the flush, writes it out first, so
 * the order of commands on the connection is the order they were queued
 * in. The keys of a get_all (an MGET entry) join the run the same way, each
 * as a member of its own: several get_all calls and single gets of one loop
 * iteration then cost the server one MGET, not one each. Single server
 * only: a cluster's MGET must stay within one slot. */
#define CM_REDIS_RUN_MAX 256
#define CM_REDIS_RUN_FIRST 8

static void close_run(CmRedisConnObject *c)
{
    CmRedisEntry *t = &c->ring[(c->head + c->len - 1) % c->cap]; // borrowed
    c->open_run = 0;
    if (c->pool != NULL && c->pool->run == c)
        c->pool->run = NULL;
    if (encode_entry(&c->out, t) == 0)
        return;
    /* the keys were checked as they joined: only memory can fail here */
    CmRedisEntry dead = *t;
    c->len--;
    entry_fail_current(&dead);
}

static void conn_add_get(CmRedisConnObject *c, CmRedisEntry *e)
{
    Py_ssize_t n;
    PyObject *key = cm_redis_op_key(e->op, e->pos); // borrowed
    if (!PyBytes_Check(key) && PyUnicode_AsUTF8AndSize(key, &n) == NULL) {
        entry_fail_current(e);
        return;
    }
    CmRedisEntry *t = c->open_run ? &c->ring[(c->head + c->len - 1) % c->cap] : NULL;
    if (t != NULL && t->npos >= CM_REDIS_RUN_MAX) {
        close_run(c);
        t = NULL;
    }
    if (t == NULL) {
        CmRedisEntry r = {.cmd = CM_CMD_GETS,
                          .deadline = cm_now_ns() + (int64_t)(c->pool->cfg->timeout * 1e9)};
        if ((r.gets = malloc(CM_REDIS_RUN_FIRST * sizeof(*r.gets))) == NULL ||
            ring_push(c, &r) < 0) {
            free(r.gets);
            PyErr_NoMemory();
            entry_fail_current(e);
            return;
        }
        c->open_run = 1;
        c->pool->run = c;
        t = &c->ring[(c->head + c->len - 1) % c->cap];
        if ((c->timer == NULL || t->deadline < c->timer_at) && conn_arm_at(c, t->deadline) < 0)
            PyErr_WriteUnraisable((PyObject *)c);
        conn_schedule_flush(c);
    } else if (t->npos >= CM_REDIS_RUN_FIRST && (t->npos & (t->npos - 1)) == 0) {
        CmRedisGetRef *g = realloc(t->gets, 2 * (size_t)t->npos * sizeof(*g));
        if (g == NULL) {
            PyErr_NoMemory();
            entry_fail_current(e);
            return;
        }
        t->gets = g;
    }
    t->gets[t->npos].op = e->op; /* the entry's op reference moves along */
    t->gets[t->npos].pos = e->pos;
    t->npos++;
    e->op = NULL;
}

/* 1 when every key of the MGET entry e can be sent (else it goes out as an
 * MGET of its own, which fails as a whole and at once, as before). */
static int mget_keys_encode(CmRedisEntry *e)
{
    for (uint32_t i = 0; i < e->npos; i++) {
        Py_ssize_t n;
        PyObject *key = cm_redis_op_key(e->op, e->pos + i); // borrowed
        if (!PyBytes_Check(key) && PyUnicode_AsUTF8AndSize(key, &n) == NULL) {
            PyErr_Clear();
            return 0;
        }
    }
    return 1;
}

void cm_redis_conn_push(CmRedisConnObject *c, CmRedisEntry *e)
{
    CmState *st = c->st;
    if (c->state == CONN_CLOSED) {
        PyObject *msg = PyUnicode_FromString("redis connection closed");
        cm_redis_entry_fail(st, e, st->RedisConnectionError, msg ? msg : Py_None);
        Py_XDECREF(msg);
        PyErr_Clear();
        return;
    }
    if (e->cmd == CM_CMD_GET && e->op != NULL && e->op->client->cluster == NULL) {
        conn_add_get(c, e);
        return;
    }
    if (e->cmd == CM_CMD_MGET && e->op != NULL && e->op->client->cluster == NULL &&
        e->positions == NULL && mget_keys_encode(e)) {
        /* one member per key; the last one takes the entry's op reference */
        for (uint32_t i = 0; i < e->npos; i++) {
            CmRedisEntry m = {.op = e->op, .cmd = CM_CMD_GET, .pos = e->pos + i, .npos = 1};
            if (i + 1 < e->npos)
                cm_redis_op_ref(e->op);
            conn_add_get(c, &m);
        }
        e->op = NULL;
        return;
    }
    if (c->open_run)
        close_run(c);
    size_t mark = cm_buf_mark(&c->out);
    if (encode_entry(&c->out, e) < 0) {
        entry_fail_current(e);
        return;
    }
    e->deadline = cm_now_ns() + (int64_t)(c->pool->cfg->timeout * 1e9);
    if (ring_push(c, e) < 0) {
        cm_buf_rollback(&c->out, mark);
        PyErr_NoMemory();
        entry_fail_current(e);
        return;
    }
    /* a timer armed for a later moment is the connect timer (longer) */
    if ((c->timer == NULL || e->deadline < c->timer_at) && conn_arm_at(c, e->deadline) < 0)
        PyErr_WriteUnraisable((PyObject *)c);
    conn_schedule_flush(c);
}

/* A connection-internal request (AUTH, SELECT). */
static int conn_push_internal(CmRedisConnObject *c, int cmd, size_t argc, const char *const *argv,
                              const size_t *lens)
{
    /* answered within `timeout` of the connect, as any request would be */
    CmRedisEntry e = {.cmd = (uint8_t)cmd,
                      .deadline = c->connect_deadline + (int64_t)(c->pool->cfg->timeout * 1e9)};
    if (cm_resp_command(&c->out, argc, argv, lens) < 0 || ring_push(c, &e) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void conn_ready(CmRedisConnObject *c)
{
    CmState *st = c->st;
    PyObject *cb = NULL;
    c->state = CONN_READY;
    if (c->writing) {
        if (cm_loop_remove_writer(st, c->loop, c->fd) < 0)
            goto fail;
        c->writing = 0;
    }
    if ((cb = PyCFunction_New(&on_read_def, (PyObject *)c)) == NULL ||
        cm_loop_add_reader(st, c->loop, c->fd, cb) < 0)
        goto fail;
    c->reading = 1;
    Py_DECREF(cb);
    cb = NULL;
    /* from connect deadline to reply deadlines */
    if (conn_rearm(c) < 0)
        goto fail;
    conn_write(c);
    return;
fail:
    Py_XDECREF(cb);
    {
        PyObject *exc = cm_exc_take();
        conn_close_fmt(c, st->RedisConnectionError, 1, "redis %s: %S", conn_label(c), exc);
        Py_XDECREF(exc);
    }
}

/* The server's addresses, looked up once per pool and kept (a name again
 * only after a connect failed: pool_forget_addrs). A chain of our own
 * (addrs_add, addrs_free): a name's addresses come from the loop's
 * executor (conn_resolve) as strings, each turned into an addrinfo here. */
static void addrs_free(struct addrinfo *ai)
{
    while (ai != NULL) {
        struct addrinfo *next = ai->ai_next;
        free(ai);
        ai = next;
    }
}

/* Append the numeric address ip (no lookup: AI_NUMERICHOST) at *tail.
 * -1 with errno. */
static int addrs_add(struct addrinfo ***tail, const char *ip, int port)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    char sport[16];
    snprintf(sport, sizeof(sport), "%d", port);
    int rc = getaddrinfo(ip, sport, &hints, &res);
    if (rc != 0) {
        errno = rc == EAI_SYSTEM ? errno : EHOSTUNREACH;
        return -1;
    }
    struct addrinfo *ai = malloc(sizeof(*ai) + res->ai_addrlen);
    if (ai == NULL) {
        freeaddrinfo(res);
        errno = ENOMEM;
        return -1;
    }
    *ai = *res;
    ai->ai_addr = (struct sockaddr *)(ai + 1);
    memcpy(ai->ai_addr, res->ai_addr, res->ai_addrlen);
    ai->ai_canonname = NULL;
    ai->ai_next = NULL;
    freeaddrinfo(res);
    **tail = ai;
    *tail = &ai->ai_next;
    return 0;
}

/* The addresses of an IP literal host. -1 with errno. */
static int pool_resolve(CmRedisPool *p)
{
    struct addrinfo **tail = &p->addrs;
    p->resolves++;
    if (addrs_add(&tail, p->host, p->port) < 0) {
        addrs_free(p->addrs);
        p->addrs = NULL;
        return -1;
    }
    return 0;
}

/* A connect failed: the host may have moved, look it up again next time. */
static void pool_forget_addrs(CmRedisPool *p)
{
    addrs_free(p->addrs);
    p->addrs = NULL;
}

/* A non-blocking socket connecting to the pool's server; *pending is set
 * while the connect is in progress. -1 with errno on failure. */
static int sock_connect(CmRedisPool *p, int *pending)
{
    int fd = -1;
    *pending = 0;
    if (p->path != NULL) {
        struct sockaddr_un sa;
        memset(&sa, 0, sizeof(sa));
        sa.sun_family = AF_UNIX;
        if (strlen(p->path) >= sizeof(sa.sun_path)) {
            errno = ENAMETOOLONG;
            return -1;
        }
        strcpy(sa.sun_path, p->path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -1;
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            return fd;
        /* EAGAIN here is a full backlog, not a connect in progress: it
         * fails, and the pool retries after its backoff */
        if (errno == EINPROGRESS) {
            *pending = 1;
            return fd;
        }
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    if (p->addrs == NULL && pool_resolve(p) < 0)
        return -1;
    int err = ECONNREFUSED;
    for (struct addrinfo *ai = p->addrs; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        if (errno == EINPROGRESS) {
            *pending = 1;
            break;
        }
        err = errno;
        close(fd);
        fd = -1;
    }
    if (fd < 0) {
        pool_forget_addrs(p);
        errno = err;
    }
    return fd;
}

/* Open the socket to the pool's addresses (resolved, or an IP literal or a
 * path) and connect: at once (ready) or watched for writability. -1 with an
 * exception. */
static int conn_connect(CmRedisConnObject *c)
{
    CmState *st = c->st;
    CmRedisPool *p = c->pool; // borrowed
    int pending;
    c->fd = sock_connect(p, &pending);
    if (c->fd < 0) {
        PyErr_Format(st->RedisConnectionError, "redis %s: connect failed: %s", p->label,
                     strerror(errno));
        return -1;
    }
    if (pending) {
        PyObject *cb = PyCFunction_New(&on_write_def, (PyObject *)c);
        int rc = cb ? cm_loop_add_writer(st, c->loop, c->fd, cb) : -1;
        Py_XDECREF(cb);
        if (rc < 0)
            return -1;
        c->writing = 1;
        if (conn_arm_at(c, c->connect_deadline) < 0)
            return -1;
    } else {
        conn_ready(c);
        if (c->state == CONN_CLOSED) {
            PyErr_Format(st->RedisConnectionError, "redis %s: connection failed", p->label);
            return -1;
        }
    }
    return 0;
}

/* The host's lookup is done (on the loop): connect to its addresses, or
 * fail the connection with the lookup's error. */
static PyObject *conn_on_resolved(PyObject *self, PyObject *task)
{
    CmRedisConnObject *c = (CmRedisConnObject *)self;
    if (c->state != CONN_CONNECTING || c->resolve != task)
        Py_RETURN_NONE; /* closed (timed out) meanwhile: the task was cancelled */
    Py_INCREF(c);
    Py_CLEAR(c->resolve);
    CmRedisPool *p = c->pool; // borrowed
    PyObject *res = cm_resolve_result(task);
    int looked_up = res != NULL;
    if (res != NULL && PyList_Check(res) && PyList_GET_SIZE(res) == 1) {
        PyObject *ips = PyList_GET_ITEM(res, 0); // borrowed
        struct addrinfo *addrs = NULL, **tail = &addrs;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(ips); i++) {
            const char *ip = PyUnicode_AsUTF8(PyList_GET_ITEM(ips, i));
            if (ip == NULL)
                break;
            if (addrs_add(&tail, ip, p->port) < 0)
                PyErr_SetFromErrno(PyExc_OSError);
            if (PyErr_Occurred())
                break;
        }
        if (!PyErr_Occurred()) {
            pool_forget_addrs(p);
            p->addrs = addrs;
            if (conn_connect(c) < 0) /* the message names the server */
                looked_up = 2;
        } else
            addrs_free(addrs);
    } else if (res != NULL)
        PyErr_SetString(PyExc_TypeError, "resolve: a list of one list expected");
    Py_XDECREF(res);
    if (PyErr_Occurred()) {
        PyObject *exc = cm_exc_take();
        if (c->state != CONN_CLOSED && looked_up == 2)
            conn_close_fmt(c, c->st->RedisConnectionError, 1, "%S", exc);
        else if (c->state != CONN_CLOSED)
            conn_close_fmt(c, c->st->RedisConnectionError, 1, "redis %s: cannot resolve %s: %S",
                           conn_label(c), p->host, exc);
        Py_XDECREF(exc);
    }
    Py_DECREF(c);
    Py_RETURN_NONE;
}

static CmRedisConnObject *conn_open(CmRedisPool *p, PyObject *loop)
{
    CmState *st = p->st;
    const CmRedisConfig *cfg = p->cfg;
    CmRedisConnObject *c = PyObject_GC_New(CmRedisConnObject, (PyTypeObject *)st->RedisConnType);
    if (c == NULL)
        return NULL;
    c->st = st;
    c->pool = p;
    c->loop = Py_NewRef(loop);
    c->flush_cb = c->timer = NULL;
    c->fd = -1;
    c->state = CONN_CONNECTING;
    c->reading = c->writing = c->flush_scheduled = c->replied = c->open_run = 0;
    c->timer_at = 0;
    c->connect_deadline = cm_now_ns() + (int64_t)(cfg->connect_timeout * 1e9);
    c->resolve = NULL;
    memset(&c->out, 0, sizeof(c->out));
    c->ring = NULL;
    c->cap = c->head = c->len = 0;
    c->reader = redisReaderCreateWithFunctions(&reply_fns);
    PyObject_GC_Track(c);
    if (c->reader == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    c->reader->privdata = c;
    if ((c->flush_cb = PyCFunction_New(&on_flush_def, (PyObject *)c)) == NULL)
        goto fail;
    if (cfg->password != NULL) {
        const char *argv[3] = {"AUTH", NULL, NULL};
        size_t lens[3] = {4, 0, 0};
        size_t argc = 1;
        if (cfg->username != NULL) {
            argv[argc] = PyBytes_AS_STRING(cfg->username);
            lens[argc++] = (size_t)PyBytes_GET_SIZE(cfg->username);
        }
        argv[argc] = PyBytes_AS_STRING(cfg->password);
        lens[argc++] = (size_t)PyBytes_GET_SIZE(cfg->password);
        if (conn_push_internal(c, CM_CMD_HELLO, argc, argv, lens) < 0)
            goto fail;
    }
    if (cfg->db != 0) {
        char db[24];
        size_t n = cm_resp_ll(db, cfg->db);
        const char *argv[2] = {"SELECT", db};
        size_t lens[2] = {6, n};
        if (conn_push_internal(c, CM_CMD_HELLO, 2, argv, lens) < 0)
            goto fail;
    }
    if (p->path == NULL && p->addrs == NULL && cm_resolve_needed(p->host)) {
        /* a name: looked up in the loop's executor, then conn_on_resolved
         * connects; the connect deadline covers the lookup */
        PyObject *cb = PyCFunction_New(&on_resolved_def, (PyObject *)c);
        PyObject *hosts = cb ? Py_BuildValue("[s]", p->host) : NULL;
        c->resolve = hosts ? cm_resolve_start(loop, hosts, cb) : NULL;
        Py_XDECREF(hosts);
        Py_XDECREF(cb);
        if (c->resolve == NULL)
            goto fail;
        p->resolves++;
        if (conn_arm_at(c, c->connect_deadline) < 0)
            goto fail;
        return c;
    }
    if (conn_connect(c) < 0)
        goto fail;
    return c;
fail:
    c->pool = NULL; /* not in the pool yet */
    conn_close(c, st->RedisConnectionError, NULL, 0);
    Py_DECREF(c);
    return NULL;
}

static PyObject *conn_on_write(PyObject *self, PyObject *Py_UNUSED(unused))
{
    CmRedisConnObject *c = (CmRedisConnObject *)self;
    if (c->state == CONN_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err != 0) {
            pool_forget_addrs(c->pool);
            conn_close_fmt(c, c->st->RedisConnectionError, 1, "redis %s: connect failed: %s",
                           conn_label(c), strerror(err));
        } else
            conn_ready(c);
    } else if (c->state == CONN_READY) {
        conn_write(c);
    }
    Py_RETURN_NONE;
}

/* Busy polling (busypoll.h), single server only: a cluster's pools change
 * with its slot map. The context is the client, held for the spin. */
static int spin_collect(void *ctx, struct pollfd *fds, PyObject **objs, int max)
{
    CmRedisPool *p = ((CmRedisClientObject *)ctx)->pool;
    int n = 0;
    for (int i = 0; p != NULL && i < p->nconns && n < max; i++) {
        CmRedisConnObject *c = p->conns[i]; // borrowed
        if (c->state == CONN_READY && c->len > 0 && c->reading)
            n = cm_busypoll_add(fds, objs, n, c->fd, 1, c->writing, (PyObject *)c);
    }
    return n;
}

static void spin_handle(void *ctx, PyObject *obj, short revents)
{
    (void)ctx;
    CmRedisConnObject *c = (CmRedisConnObject *)obj;
    if (cm_busypoll_writable(revents) && c->writing && c->state == CONN_READY)
        Py_XDECREF(conn_on_write(obj, NULL));
    if (cm_busypoll_readable(revents) && c->state == CONN_READY)
        Py_XDECREF(conn_on_read(obj, NULL));
    PyErr_Clear();
}

static PyObject *conn_on_flush(PyObject *self, PyObject *Py_UNUSED(unused))
{
    CmRedisConnObject *c = (CmRedisConnObject *)self;
    c->flush_scheduled = 0;
    if (c->state == CONN_READY && !c->writing)
        conn_write(c);
    CmRedisClientObject *client = c->pool ? c->pool->client : NULL; // borrowed
    if (client != NULL && client->pool == c->pool && c->state == CONN_READY && c->len > 0) {
        cm_busypoll_follow(&client->spin, c->loop);
        if (cm_busypoll_wanted(&client->spin)) {
            Py_INCREF(client);
            cm_busypoll_run(&client->spin, spin_collect, spin_handle, client);
            Py_DECREF(client);
        }
    }
    Py_RETURN_NONE;
}

static PyObject *conn_on_timer(PyObject *self, PyObject *Py_UNUSED(unused))
{
    CmRedisConnObject *c = (CmRedisConnObject *)self;
    Py_CLEAR(c->timer);
    if (c->state == CONN_CLOSED)
        Py_RETURN_NONE;
    int64_t now = cm_now_ns();
    if (c->state == CONN_CONNECTING && now >= c->connect_deadline) {
        pool_forget_addrs(c->pool);
        conn_close_fmt(c, c->st->RedisTimeoutError, 1, "redis %s: connect timed out",
                       conn_label(c));
    } else if (now >= conn_first_deadline(c)) {
        /* replies come in order: the stream is useless past a lost one */
        conn_close_fmt(c, c->st->RedisTimeoutError, 1, "redis %s: no reply within %d ms",
                       conn_label(c), (int)(c->pool->cfg->timeout * 1000));
    } else if (conn_rearm(c) < 0) {
        PyErr_WriteUnraisable(self);
    }
    Py_RETURN_NONE;
}

/* One reply for the entry at the head of the ring (reply stolen). */
static void entry_reply(CmRedisConnObject *c, CmRedisEntry *e, PyObject *reply)
{
    CmState *st = c->st;
    CmRedisOp *op = e->op;
    int is_err = PyObject_TypeCheck(reply, (PyTypeObject *)st->RedisResponseError);
    if (e->cmd == CM_CMD_GETS) {
        int whole = e->npos == 1 || (PyList_Check(reply) && PyList_GET_SIZE(reply) == e->npos);
        PyObject *exc = NULL;
        if (!is_err && !whole &&
            (exc = PyObject_CallFunction(st->RedisError, "s", "unexpected MGET reply")) == NULL)
            exc = cm_exc_take();
        for (uint32_t i = 0; i < e->npos; i++) {
            CmRedisOp *m = e->gets[i].op;
            PyObject *r = e->npos == 1 ? reply : whole ? PyList_GET_ITEM(reply, i) : NULL;
            if (is_err || !whole)
                op_set_error(m, is_err ? reply : exc);
            else if (m->kind == OP_MGET) /* a key of a get_all: its slot */
                PyList_SetItem(m->result, e->gets[i].pos, Py_NewRef(r));
            else
                Py_XSETREF(m->result, Py_NewRef(r));
        }
        Py_XDECREF(exc);
        Py_DECREF(reply);
        entry_release(e);
        return;
    }
    if (op == NULL) {
        if (is_err && e->cmd == CM_CMD_HELLO)
            conn_close_fmt(c, st->RedisConnectionError, 1, "redis %s: %S", conn_label(c), reply);
        Py_DECREF(reply);
        free(e->positions);
        return;
    }
    if (is_err && op->client->cluster != NULL && cm_cluster_redirect(op->client, e, reply)) {
        Py_DECREF(reply);
        return;
    }
    if (is_err) {
        op_set_error(op, reply);
    } else if (e->cmd == CM_CMD_GET || e->cmd == CM_CMD_RAW) {
        Py_XSETREF(op->result, Py_NewRef(reply));
    } else if (e->cmd == CM_CMD_MGET) {
        if (PyList_Check(reply) && PyList_GET_SIZE(reply) == (Py_ssize_t)e->npos) {
            for (uint32_t i = 0; i < e->npos; i++)
                PyList_SetItem(op->result, cm_entry_position(e, i),
                               Py_NewRef(PyList_GET_ITEM(reply, i)));
        } else {
            PyObject *exc = PyObject_CallFunction(st->RedisError, "s", "unexpected MGET reply");
            if (exc == NULL)
                exc = cm_exc_take();
            op_set_error(op, exc);
            Py_XDECREF(exc);
        }
    }
    Py_DECREF(reply);
    entry_release(e);
}

/* Bytes the reader holds that no reply has consumed yet: after the replies
 * are taken, the one reply still arriving. */
static size_t reader_buffered(const CmRedisConnObject *c)
{
    return c->reader->len - c->reader->pos;
}

/* max_bulk_bytes: what the reply still arriving may hold in the reader
 * (elements already done are objects, not bytes) */
static size_t reader_max_bulk(const CmRedisConnObject *c)
{
    return (size_t)(c->pool != NULL ? c->pool->cfg->max_bulk_bytes : CM_REDIS_MAX_BULK);
}

static int reader_pending_ok(const CmRedisConnObject *c)
{
    return cm_resp_pending_ok(c->reader->buf + c->reader->pos, reader_buffered(c),
                              reader_max_bulk(c));
}

static PyObject *conn_on_read(PyObject *self, PyObject *Py_UNUSED(unused))
{
    CmRedisConnObject *c = (CmRedisConnObject *)self;
    CmState *st = c->st;
    char buf[65536];
    Py_INCREF(c);
    while (c->state != CONN_CLOSED) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n > 0) {
            if (redisReaderFeed(c->reader, buf, (size_t)n) != REDIS_OK) {
                conn_close_fmt(c, st->RedisConnectionError, 1, "redis %s: out of memory",
                               conn_label(c));
                goto done;
            }
            /* parse before buffering more than one reply may hold */
            if ((size_t)n < sizeof(buf) || !reader_pending_ok(c))
                break;
            continue;
        }
        if (n == 0) {
            conn_close_fmt(c, st->RedisConnectionError, 1, "redis %s: connection closed by server",
                           conn_label(c));
            goto done;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        conn_close_fmt(c, st->RedisConnectionError, 1, "redis %s: read failed: %s", conn_label(c),
                       strerror(errno));
        goto done;
    }
    while (c->state != CONN_CLOSED) {
        void *reply = NULL;
        if (redisReaderGetReply(c->reader, &reply) != REDIS_OK) {
            if (c->reader->err == REDIS_ERR_OOM && c->pool != NULL)
                conn_close_fmt(c, st->RedisConnectionError, 1,
                               "redis %s: reply refused: an aggregate longer than "
                               "max_reply_elements=%zd (or out of memory)",
                               conn_label(c), c->pool->cfg->max_reply_elements);
            else
                conn_close_fmt(c, st->RedisConnectionError, 1, "redis %s: protocol error: %s",
                               conn_label(c), c->reader->errstr);
            goto done;
        }
        if (reply == NULL) {
            if (!reader_pending_ok(c)) {
                conn_close_fmt(c, st->RedisConnectionError, 1,
                               "redis %s: reply refused: a bulk or line longer than "
                               "max_bulk_bytes=%zu",
                               conn_label(c), reader_max_bulk(c));
                goto done;
            }
            break;
        }
        if (c->len == 0) {
            Py_DECREF((PyObject *)reply);
            conn_close_fmt(c, st->RedisConnectionError, 1, "redis %s: reply without a request",
                           conn_label(c));
            goto done;
        }
        CmRedisEntry e = c->ring[c->head];
        c->head = (c->head + 1) % c->cap;
        c->len--;
        /* the server is usable once a request past AUTH/SELECT is answered;
         * an AUTH error must not reset the backoff it is about to grow */
        if (!c->replied && c->pool != NULL && e.cmd != CM_CMD_HELLO) {
            c->replied = 1;
            c->pool->backoff = c->pool->cfg->backoff_min;
            c->pool->retry_at = 0;
            Py_CLEAR(c->pool->last_error);
        }
        entry_reply(c, &e, (PyObject *)reply);
    }
done:
    Py_DECREF(c);
    Py_RETURN_NONE;
}

static int conn_traverse(CmRedisConnObject *c, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(c));
    Py_VISIT(c->loop);
    Py_VISIT(c->flush_cb);
    Py_VISIT(c->timer);
    Py_VISIT(c->resolve);
    return 0;
}

static int conn_clear(CmRedisConnObject *c)
{
    Py_CLEAR(c->flush_cb);
    Py_CLEAR(c->timer);
    Py_CLEAR(c->resolve);
    return 0;
}

static void conn_dealloc(CmRedisConnObject *c)
{
    PyTypeObject *tp = Py_TYPE(c);
    PyObject_GC_UnTrack(c);
    if (c->fd >= 0)
        close(c->fd);
    if (c->reader != NULL)
        redisReaderFree(c->reader);
    cm_buf_free(&c->out);
    for (size_t i = 0; i < c->len; i++)
        entry_fail_exc(&c->ring[(c->head + i) % c->cap], c->st->RedisError);
    free(c->ring);
    conn_clear(c);
    Py_CLEAR(c->loop);
    tp->tp_free(c);
    Py_DECREF(tp);
}

static PyType_Slot conn_slots[] = {
    {Py_tp_traverse, conn_traverse},
    {Py_tp_clear, conn_clear},
    {Py_tp_dealloc, conn_dealloc},
    {Py_tp_doc, "A connection of a Redis pool (internal)."},
    {0, NULL},
};

static PyType_Spec conn_spec = {
    .name = "cacheme._core._RedisConnection",
    .basicsize = sizeof(CmRedisConnObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = conn_slots,
};

/* ------------------------------------------------------------------ */
/* pools                                                              */

CmRedisPool *cm_redis_pool_new(CmRedisClientObject *c, const char *host, int port, const char *path)
{
    const CmRedisConfig *cfg = &c->cfg;
    CmRedisPool *p = calloc(1, sizeof(*p));
    if (p == NULL)
        goto nomem;
    p->st = c->st;
    p->client = c;
    p->cfg = cfg;
    p->port = port;
    p->backoff = cfg->backoff_min;
    if (path != NULL) {
        if ((p->path = strdup(path)) == NULL)
            goto nomem;
        snprintf(p->label, sizeof(p->label), "%s", path);
    } else {
        if ((p->host = strdup(host)) == NULL)
            goto nomem;
        snprintf(p->label, sizeof(p->label), "%s:%d", host, port);
    }
    return p;
nomem:
    if (p != NULL)
        free(p->host);
    free(p);
    PyErr_NoMemory();
    return NULL;
}

/* Close every connection of the pool. They leave the pool first: closing
 * one runs Python code (the loop's remove_reader, futures), during which
 * another thread may be closing the same connection (then it returns at once
 * and stays where it was: a loop until nconns drops would spin for ever) or
 * free the pool (a connection must not point back to it then). */
static void pool_close_all(CmRedisPool *p, const char *why)
{
    PyObject *saved = cm_exc_take();
    PyObject *msg = PyUnicode_FromFormat("redis %s: %s", p->label, why);
    if (msg == NULL)
        PyErr_Clear();
    CmRedisConnObject **conns = p->conns;
    int n = p->nconns;
    p->conns = NULL;
    p->nconns = 0;
    p->run = NULL;
    for (int i = 0; i < n; i++)
        conns[i]->pool = NULL;
    for (int i = 0; i < n; i++) {
        conn_close(conns[i], p->st->RedisConnectionError, msg ? msg : Py_None, 0);
        Py_DECREF(conns[i]); /* the pool's reference */
    }
    free(conns);
    Py_XDECREF(msg);
    cm_exc_restore(saved);
}

/* Close every connection without touching its loop: the loop is closed or
 * gone, or this is a forked child and the loop (its epoll instance) is the
 * parent's. The sockets are closed, nothing is unregistered, the timers are
 * dropped uncancelled (a closed loop never runs them; a run one finds the
 * connection closed). The pool reconnects on the next call. */
static void pool_drop_detached(CmRedisPool *p, const char *why)
{
    for (int i = 0; i < p->nconns; i++) {
        CmRedisConnObject *c = p->conns[i]; // borrowed
        c->reading = c->writing = 0;
        Py_CLEAR(c->timer);
    }
    pool_close_all(p, why);
    Py_CLEAR(p->loop);
    p->retry_at = 0;
    p->backoff = p->cfg->backoff_min;
}

void cm_redis_pool_free(CmRedisPool *p)
{
    if (p == NULL)
        return;
    pool_close_all(p, "storage closed");
    pool_forget_addrs(p);
    free(p->host);
    free(p->path);
    Py_XDECREF(p->loop);
    Py_XDECREF(p->last_error);
    free(p);
}

static void pool_forget(CmRedisPool *p, CmRedisConnObject *c, int failed, PyObject *why)
{
    for (int i = 0; i < p->nconns; i++) {
        if (p->conns[i] == c) {
            p->conns[i] = p->conns[--p->nconns];
            Py_DECREF(c);
            break;
        }
    }
    if (!failed)
        return;
    int64_t now = cm_now_ns();
    if (now >= p->retry_at) {
        p->retry_at = now + (int64_t)(p->backoff * 1e9);
        p->backoff = p->backoff * 2 > p->cfg->backoff_max ? p->cfg->backoff_max : p->backoff * 2;
    }
    if (why != NULL && PyUnicode_Check(why))
        Py_XSETREF(p->last_error, Py_NewRef(why));
}

CmRedisConnObject *cm_redis_pool_conn(CmRedisPool *p, PyObject *loop)
{
    const CmRedisConfig *cfg = p->cfg;
    if (p->loop != loop) {
        if (p->loop != NULL)
            pool_close_all(p, "event loop changed");
        Py_XSETREF(p->loop, Py_NewRef(loop));
    }
    CmRedisConnObject *best = NULL; // borrowed
    for (int i = 0; i < p->nconns; i++)
        if (best == NULL || p->conns[i]->len < best->len)
            best = p->conns[i];
    if (best != NULL && (best->len < (size_t)cfg->pipeline || p->nconns >= cfg->size))
        return best;
    int64_t now = cm_now_ns();
    if (now < p->retry_at) {
        if (best != NULL)
            return best;
        PyErr_Format(p->st->RedisConnectionError, "redis %s is unavailable (%S); next try in %d ms",
                     p->label, p->last_error ? p->last_error : Py_None,
                     (int)((p->retry_at - now) / 1000000));
        return NULL;
    }
    CmRedisConnObject **conns = realloc(p->conns, sizeof(*conns) * (size_t)(p->nconns + 1));
    if (conns == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    p->conns = conns;
    CmRedisConnObject *c = conn_open(p, loop);
    if (c == NULL) {
        PyObject *exc = cm_exc_take();
        PyObject *why = exc ? PyObject_Str(exc) : NULL;
        if (why == NULL)
            PyErr_Clear();
        pool_forget(p, NULL, 1, why);
        Py_XDECREF(why);
        if (best != NULL) {
            Py_XDECREF(exc);
            return best;
        }
        cm_exc_restore(exc);
        return NULL;
    }
    p->conns[p->nconns++] = c; /* the pool's reference */
    return c;
}

/* ------------------------------------------------------------------ */
/* the client (storage) type                                          */

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
    return cm_cluster_route(self, slot);
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
            run != NULL && run->open_run && run->state != CONN_CLOSED && pool->loop == loop)
            conn = run;
        else if (sc != NULL && sc->pool == pool && sc->conn->state != CONN_CLOSED)
            conn = sc->conn;
        else if ((conn = cm_redis_pool_conn(pool, loop)) != NULL && sc != NULL) {
            sc->pool = pool;
            Py_XSETREF(sc->conn, (CmRedisConnObject *)Py_NewRef(conn));
        }
    }
    if (conn == NULL) {
        entry_fail_current(e);
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
    CmRedisOp *op = op_new(client, OP_INTERNAL, fut);
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
        entry_fail_current(&e);
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
static int client_check_open(CmRedisClientObject *self)
{
    if (self->pool != NULL || self->cluster != NULL)
        return 0;
    PyErr_SetString(self->st->RedisError, "redis storage is closed or not initialised");
    return -1;
}

/* The instance serving loop (netloop.h): self, or one made for the loop;
 * borrowed, NULL with an exception. Taken right before the op that holds
 * it is made (no Python code in between: close_now in another thread may
 * drop an instance). */
static CmRedisClientObject *client_for(CmRedisClientObject *self, PyObject *loop)
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
    if (client_check_open(self) < 0)
        goto done;
    if ((*loop = cm_loop_running(st)) == NULL)
        goto done;
    if ((fut = cm_loop_create_future(st, *loop)) == NULL)
        goto done;
    if ((self = client_for(self, *loop)) == NULL || client_check_open(self) < 0)
        goto done;
    *selfp = self;
    op = op_new(self, kind, fut);
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
    st->redis_last_op = op; /* op_finish clears it, also just below */
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

/* What SET node=value sends: its key, payload and TTL (ms, -1 none). 0, or -1
 * with an exception and nothing to release. */
static int set_args(CmRedisClientObject *self, PyObject *node, PyObject *value, PyObject *ttl,
                    PyObject *ser, PyObject **key, PyObject **payload, long long *ms)
{
    CmState *st = self->st;
    *payload = NULL;
    if ((*key = redis_key_of(st, node)) == NULL)
        return -1;
    if (ttl_ms(st, ttl, ms) < 0 ||
        (*payload = encode_value(st, pick_serializer(self, ser), value)) == NULL) {
        Py_CLEAR(*key);
        return -1;
    }
    return 0;
}

static PyObject *client_get(CmRedisClientObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *loop = NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "get(node, serializer)");
        return NULL;
    }
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
 * Get and hands it the outcome (cm_get_op_done) when it finishes, and the
 * Get is what its Task waits on. Nothing per call for the collector. */

int cm_redis_direct(CmState *st, PyObject *storage, PyObject *name)
{
    if (!PyObject_TypeCheck(storage, (PyTypeObject *)st->RedisClientType))
        return 0;
    PyObject *base = PyDict_GetItemWithError(((PyTypeObject *)st->RedisClientType)->tp_dict, name);
    if (base == NULL || cm_type_lookup(Py_TYPE(storage), name) != base)
        return 0; /* a subclass overrides it */
    if (!(Py_TYPE(storage)->tp_flags & Py_TPFLAGS_MANAGED_DICT) &&
        Py_TYPE(storage)->tp_dictoffset == 0)
        return 1;
    PyObject *d = PyObject_GenericGetDict(storage, NULL);
    if (d == NULL) {
        PyErr_Clear();
        return 0;
    }
    int own = PyDict_GetItemWithError(d, name) == NULL; /* else set on the instance */
    Py_DECREF(d);
    PyErr_Clear();
    return own;
}

static CmRedisOp *op_for(CmRedisClientObject *self, int kind, PyObject *get)
{
    if (client_check_open(self) < 0)
        return NULL;
    CmRedisOp *op = op_new(self, kind, NULL);
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
    if (client_check_open(self) == 0 && (self = client_for(self, loop)) != NULL)
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
    if (set_args(self, node, value, ttl, ser, &key, &payload, &ms) < 0)
        return NULL;
    CmRedisOp *op = NULL;
    if (client_check_open(self) == 0 && (self = client_for(self, loop)) != NULL)
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

static PyObject *client_remove(CmRedisClientObject *self, PyObject *node)
{
    PyObject *loop = NULL;
    PyObject *key = redis_key_of(self->st, node);
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

static PyObject *client_set(CmRedisClientObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *loop = NULL, *key, *payload;
    long long ms;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "set(node, value, ttl, serializer)");
        return NULL;
    }
    if (set_args(self, args[0], args[1], args[2], args[3], &key, &payload, &ms) < 0)
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
        op_set_error(op, exc);
        Py_XDECREF(exc);
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        Py_ssize_t len;
        const char *p = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(op->keys, i), &len);
        if (p == NULL) {
            PyObject *exc = cm_exc_take();
            op_set_error(op, exc);
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
            entry_fail_current(&e);
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

static PyObject *client_get_all(CmRedisClientObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    CmState *st = self->st;
    PyObject *loop = NULL, *nodes = NULL, *keys = NULL, *results = NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "get_all(nodes, serializer)");
        return NULL;
    }
    if ((nodes = PySequence_List(args[0])) == NULL)
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
    op->ser = Py_NewRef(pick_serializer(self, args[1]));
    if (n > 0)
        send_mget(self, loop, op, (uint32_t)n);
    return finish_op(op, loop);
fail:
    Py_XDECREF(nodes);
    Py_XDECREF(keys);
    Py_XDECREF(results);
    return NULL;
}

static PyObject *client_set_all(CmRedisClientObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    CmState *st = self->st;
    PyObject *loop = NULL, *data = NULL, *keys = NULL, *values = NULL;
    long long ms;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "set_all(data, ttl, serializer)");
        return NULL;
    }
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
static PyObject *client_execute(CmRedisClientObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *loop = NULL;
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
    CmRedisOp *op = start_op(&self, OP_RAW, &loop);
    if (op == NULL) {
        Py_DECREF(argv);
        return NULL;
    }
    op->keys = argv;
    CmRedisEntry e = {.op = op, .cmd = CM_CMD_RAW, .npos = 1};
    send_entry(self, loop, &e, NULL);
    return finish_op(op, loop);
}

static PyObject *client_refresh_slots(CmRedisClientObject *self, PyObject *Py_UNUSED(unused))
{
    CmState *st = self->st;
    PyObject *loop = NULL, *fut = NULL;
    if (self->cluster == NULL) {
        PyErr_SetString(st->RedisError, "not a cluster storage");
        return NULL;
    }
    if ((loop = cm_loop_running(st)) == NULL || (fut = cm_loop_create_future(st, loop)) == NULL ||
        (self = client_for(self, loop)) == NULL || client_check_open(self) < 0 ||
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

/* _connections(): open connections (all servers), for tests. */
static PyObject *client_connections(CmRedisClientObject *self, PyObject *Py_UNUSED(unused))
{
    long n = 0;
    if (self->pool != NULL)
        n = self->pool->nconns;
    if (self->cluster != NULL) {
        CmRedisPool **pools;
        Py_ssize_t np = cm_cluster_pools(self, &pools);
        for (Py_ssize_t i = 0; i < np; i++)
            n += pools[i]->nconns;
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
                             NULL};
    CmState *st = cm_state_from_type(Py_TYPE(self));
    const char *host = "localhost", *path = NULL;
    int port = 6379, size = 100, cluster = 0, pipeline = 128;
    long db = 0;
    double connect_timeout = 5.0, timeout = 5.0, backoff = 0.05, backoff_max = 1.0;
    PyObject *user = NULL, *pass = NULL, *ubytes = NULL, *pbytes = NULL, *ser = NULL;
    PyObject *busy_poll = Py_None;
    Py_ssize_t max_elements = CM_REDIS_MAX_ELEMENTS, max_bulk = CM_REDIS_MAX_BULK;
    int rc = -1;
    if (st == NULL)
        return -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$zizOOliddpiddOnn:RedisClient", kwlist, &host,
                                     &port, &path, &user, &pass, &db, &size, &connect_timeout,
                                     &timeout, &cluster, &pipeline, &backoff, &backoff_max,
                                     &busy_poll, &max_elements, &max_bulk))
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
        PyErr_SetString(self->st->RedisError, "redis storage is not initialised");
        return NULL;
    }
    return PyObject_Call(self->st->RedisClientType, self->init_args, self->init_kwds);
}

static void client_drop_detached(PyObject *inst, const char *why)
{
    CmRedisClientObject *self = (CmRedisClientObject *)inst;
    if (self->pool != NULL)
        pool_drop_detached(self->pool, why);
    if (self->cluster != NULL) {
        CmRedisPool **pools;
        Py_ssize_t np = cm_cluster_pools(self, &pools);
        for (Py_ssize_t i = 0; i < np; i++)
            pool_drop_detached(pools[i], why);
    }
}

static void client_forked(PyObject *inst) { client_drop_detached(inst, "inherited over fork"); }
static void client_orphan(PyObject *inst) { client_drop_detached(inst, "event loop closed"); }

static const CmNetKind client_net_kind = {client_spawn, client_forked, client_orphan};

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
    cm_netloops_init(&self->loops, self->st, &client_net_kind, (PyObject *)self);
    return (PyObject *)self;
}

static int client_traverse(CmRedisClientObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->default_serializer);
    Py_VISIT(self->init_args);
    Py_VISIT(self->init_kwds);
    int rc = cm_netloops_traverse(&self->loops, visit, arg);
    return rc ? rc : cm_busypoll_traverse(&self->spin, visit, arg);
}

static int client_clear(CmRedisClientObject *self)
{
    cm_netloops_clear(&self->loops);
    Py_CLEAR(self->init_args);
    Py_CLEAR(self->init_kwds);
    Py_CLEAR(self->default_serializer);
    cm_busypoll_clear(&self->spin);
    return 0;
}

static void client_dealloc(CmRedisClientObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    client_close_pools(self);
    client_clear(self);
    cm_netloops_fini(&self->loops);
    Py_CLEAR(self->cfg.username);
    Py_CLEAR(self->cfg.password);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef client_methods[] = {
    {"get", (PyCFunction)(void (*)(void))client_get, METH_FASTCALL,
     "get(node, serializer) -> awaitable: the cached value or cacheme.models.sentinel"},
    {"get_all", (PyCFunction)(void (*)(void))client_get_all, METH_FASTCALL,
     "get_all(nodes, serializer) -> awaitable: [(node, value)] found (one MGET)"},
    {"set", (PyCFunction)(void (*)(void))client_set, METH_FASTCALL,
     "set(node, value, ttl, serializer) -> awaitable (SET, SETEX or PSETEX)"},
    {"set_all", (PyCFunction)(void (*)(void))client_set_all, METH_FASTCALL,
     "set_all([(node, value)], ttl, serializer) -> awaitable (one pipeline)"},
    {"remove", (PyCFunction)client_remove, METH_O, "remove(node) -> awaitable (DEL)"},
    {"execute", (PyCFunction)(void (*)(void))client_execute, METH_FASTCALL,
     "execute(*args) -> awaitable: the raw reply of any command"},
    {"close_now", (PyCFunction)client_close, METH_NOARGS,
     "Close every connection; pending requests fail with RedisConnectionError."},
    {"_refresh_slots", (PyCFunction)client_refresh_slots, METH_NOARGS, NULL},
    {"_connections", (PyCFunction)client_connections, METH_NOARGS, NULL},
    {"_resolves", (PyCFunction)client_resolves, METH_NOARGS, NULL},
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
                "connect_timeout, timeout, cluster, pipeline, retry_backoff, retry_backoff_max): "
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

static PyObject *new_error(PyObject *mod, const char *name, PyObject *bases, const char *doc)
{
    char full[128];
    snprintf(full, sizeof(full), "cacheme._core.%s", name);
    PyObject *exc = PyErr_NewExceptionWithDoc(full, doc, bases, NULL);
    if (exc != NULL && PyModule_AddObjectRef(mod, name, exc) < 0)
        Py_CLEAR(exc);
    return exc;
}

int cm_redis_init(PyObject *mod, CmState *st)
{
    PyObject *bases = NULL;
    int rc = -1;
#define CM_REDIS_NAME(n, s)                                                                        \
    if ((st->n = PyUnicode_InternFromString(s)) == NULL)                                           \
        goto done;
    CM_REDIS_NAME(s_add_reader, "add_reader")
    CM_REDIS_NAME(s_remove_reader, "remove_reader")
    CM_REDIS_NAME(s_add_writer, "add_writer")
    CM_REDIS_NAME(s_remove_writer, "remove_writer")
    CM_REDIS_NAME(s_call_soon, "call_soon")
    CM_REDIS_NAME(s_call_later, "call_later")
#undef CM_REDIS_NAME
    if (PyModule_AddStringConstant(mod, "_hiredis_version", CM_HIREDIS_VERSION) < 0)
        goto done;
    if ((st->RedisError =
             new_error(mod, "RedisError", PyExc_Exception, "A Redis request failed.")) == NULL)
        goto done;
    if ((bases = PyTuple_Pack(2, st->RedisError, PyExc_ConnectionError)) == NULL ||
        (st->RedisConnectionError = new_error(mod, "RedisConnectionError", bases,
                                              "The Redis server could not be reached or the "
                                              "connection broke.")) == NULL)
        goto done;
    Py_CLEAR(bases);
    if ((bases = PyTuple_Pack(2, st->RedisError, PyExc_TimeoutError)) == NULL ||
        (st->RedisTimeoutError = new_error(mod, "RedisTimeoutError", bases,
                                           "No reply from Redis within the timeout.")) == NULL)
        goto done;
    if ((st->RedisResponseError = new_error(mod, "RedisResponseError", st->RedisError,
                                            "Redis answered with an error.")) == NULL)
        goto done;
    if ((st->RedisConnType = PyType_FromModuleAndSpec(mod, &conn_spec, NULL)) == NULL ||
        (st->RedisClientType = PyType_FromModuleAndSpec(mod, &client_spec, NULL)) == NULL ||
        PyModule_AddObjectRef(mod, "RedisClient", st->RedisClientType) < 0)
        goto done;
    rc = 0;
done:
    Py_XDECREF(bases);
    return rc;
}

int cm_redis_traverse(CmState *st, visitproc visit, void *arg)
{
#define CM_REDIS_VISIT(n) Py_VISIT(st->n);
    CM_REDIS_OBJECTS(CM_REDIS_VISIT)
#undef CM_REDIS_VISIT
    return 0;
}

void cm_redis_clear(CmState *st)
{
#define CM_REDIS_CLEAR(n) Py_CLEAR(st->n);
    CM_REDIS_OBJECTS(CM_REDIS_CLEAR)
#undef CM_REDIS_CLEAR
}
