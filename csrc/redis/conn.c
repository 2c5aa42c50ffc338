/* A Redis connection on net/conn.h: a non-blocking socket (watched for
 * reading while open, for writing while connecting or while the kernel
 * buffer is full), an output buffer, a hiredis reader and the ring of
 * pending entries, whose oldest reply (or the connect) is the connection's
 * deadline. A failure closes it and fails every pending entry with
 * RedisConnectionError or RedisTimeoutError; nothing waits forever. */
#include "redis/internal.h"
#include "redis/subscriber.h"
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loop/resolve.h"
#include "net/stream.h"

static PyObject *conn_on_flush(PyObject *self, PyObject *unused);
static PyMethodDef on_flush_def = {"_on_flush", conn_on_flush, METH_NOARGS, NULL};

/* net/conn.h's release: what the Redis side holds besides the socket. */
static void conn_release(CmNetConn *nc, int detached)
{
    (void)detached; /* nothing is said to the server on close */
    CmRedisConnObject *c = (CmRedisConnObject *)nc;
    CmRedisPool *p = cm_redis_conn_pool(c); // borrowed
    if (c->resolve != NULL) {
        PyObject *r = PyObject_CallMethod(c->resolve, "cancel", NULL);
        if (r == NULL)
            PyErr_Clear();
        Py_XDECREF(r);
        Py_CLEAR(c->resolve);
    }
    cm_buf_free(&c->out);
    if (c->reader != NULL) {
        redisReaderFree(c->reader);
        c->reader = NULL;
    }
    Py_CLEAR(c->flush_cb);
    c->open_run = 0;
    if (p != NULL && p->run == c)
        p->run = NULL;
}

/* net/conn.h's fail_pending: every entry of the ring fails with tp(msg); a
 * cluster refreshes its map soon after a node failed. */
static void conn_fail_pending(CmNetConn *nc, CmNetPool *pool, PyObject *tp, PyObject *msg,
                              int failed)
{
    (void)pool;
    CmRedisConnObject *c = (CmRedisConnObject *)nc;
    CmState *st = c->net.st;
    CmRedisEntry *ring = c->ring;
    size_t head = c->head, len = c->len, cap = c->cap;
    c->ring = NULL;
    c->head = c->len = c->cap = 0;
    CmRedisClientObject *owner = NULL;
    for (size_t i = 0; i < len && owner == NULL; i++) {
        const CmRedisEntry *e = &ring[(head + i) % cap]; // borrowed
        if (e->op != NULL)
            owner = e->op->client;
        else if (e->gets != NULL)
            owner = e->gets[0].op->client;
    }
    Py_XINCREF(owner);
    for (size_t i = 0; i < len; i++)
        cm_redis_entry_fail(st, &ring[(head + i) % cap], tp, msg);
    free(ring);
    struct CmRedisSub *sub = c->sub;
    c->sub = NULL;
    if (sub != NULL)
        cm_redis_sub_closed(sub, c, failed);
    if (failed && owner != NULL && owner->cluster != NULL)
        cm_cluster_node_failed(owner);
    Py_XDECREF(owner);
}

void cm_redis_conn_close(CmRedisConnObject *c, PyObject *tp, PyObject *msg, int failed)
{
    cm_net_conn_close(&c->net, tp, msg, failed);
}

void cm_redis_conn_close_fmt(CmRedisConnObject *c, PyObject *tp, int failed, const char *fmt, ...)
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
        cm_redis_conn_close(c, tp, msg, failed);
        Py_DECREF(msg);
    }
    cm_exc_restore(saved);
}

const char *cm_redis_conn_label(CmRedisConnObject *c)
{
    CmRedisPool *p = cm_redis_conn_pool(c); // borrowed
    return p ? p->label : "redis";
}

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

/* net/conn.h's deadline: the connect's while connecting, and the earliest
 * reply's. */
static int64_t conn_deadline(const CmNetConn *nc)
{
    const CmRedisConnObject *c = (const CmRedisConnObject *)nc;
    int64_t at = conn_first_deadline(c);
    if (c->net.state == CONN_CONNECTING && c->connect_deadline < at)
        at = c->connect_deadline;
    return at;
}

/* net/conn.h's expired: the connect or a reply is late. */
static void conn_expired(CmNetConn *nc)
{
    CmRedisConnObject *c = (CmRedisConnObject *)nc;
    CmRedisPool *p = cm_redis_conn_pool(c); // borrowed
    if (c->net.state == CONN_CONNECTING && cm_now_ns() >= c->connect_deadline) {
        if (p != NULL)
            cm_redis_pool_forget_addrs(p);
        cm_redis_conn_close_fmt(c, c->net.st->redis.TimeoutError, 1, "redis %s: %s timed out",
                                cm_redis_conn_label(c),
                                c->net.tls != NULL ? "TLS handshake" : "connect");
    } else {
        /* replies come in order: the stream is useless past a lost one */
        cm_redis_conn_close_fmt(c, c->net.st->redis.TimeoutError, 1,
                                "redis %s: no reply within %d ms", cm_redis_conn_label(c),
                                p ? (int)(p->cfg->timeout * 1000) : 0);
    }
}

static void close_run(CmRedisConnObject *c);

/* Send what the buffer holds; wait for writability if the kernel is full. */
static void conn_write(CmRedisConnObject *c)
{
    if (c->open_run && c->net.state == CONN_READY)
        close_run(c);
    cm_net_stream_write(&c->net, &cm_redis_stream_ops);
}

static void conn_schedule_flush(CmRedisConnObject *c)
{
    if (c->flush_scheduled || c->net.writing || c->net.state != CONN_READY)
        return;
    PyObject *h = cm_loop_call_soon(c->net.st, c->net.loop, c->flush_cb);
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
    CmRedisPool *p = cm_redis_conn_pool(c);                      // borrowed
    c->open_run = 0;
    if (p != NULL && p->run == c)
        p->run = NULL;
    if (cm_redis_encode_entry(&c->out, t) == 0)
        return;
    /* the keys were checked as they joined: only memory can fail here */
    CmRedisEntry dead = *t;
    c->len--;
    cm_redis_entry_fail_current(&dead);
}

static void conn_add_get(CmRedisConnObject *c, CmRedisEntry *e)
{
    CmRedisPool *p = cm_redis_conn_pool(c); // borrowed: the caller checked it is open
    Py_ssize_t n;
    PyObject *key = cm_redis_op_key(e->op, e->pos); // borrowed
    if (!PyBytes_Check(key) && PyUnicode_AsUTF8AndSize(key, &n) == NULL) {
        cm_redis_entry_fail_current(e);
        return;
    }
    CmRedisEntry *t = c->open_run ? &c->ring[(c->head + c->len - 1) % c->cap] : NULL;
    if (t != NULL && t->npos >= CM_REDIS_RUN_MAX) {
        close_run(c);
        t = NULL;
    }
    if (t == NULL) {
        CmRedisEntry r = {.cmd = CM_CMD_GETS,
                          .track = cm_redis_track_mark(p),
                          .deadline = cm_now_ns() + (int64_t)(p->cfg->timeout * 1e9)};
        if ((r.gets = malloc(CM_REDIS_RUN_FIRST * sizeof(*r.gets))) == NULL ||
            ring_push(c, &r) < 0) {
            free(r.gets);
            PyErr_NoMemory();
            cm_redis_entry_fail_current(e);
            return;
        }
        c->open_run = 1;
        p->run = c;
        t = &c->ring[(c->head + c->len - 1) % c->cap];
        if (cm_net_conn_arm(&c->net, t->deadline) < 0)
            PyErr_WriteUnraisable((PyObject *)c);
        conn_schedule_flush(c);
    } else if (t->npos >= CM_REDIS_RUN_FIRST && (t->npos & (t->npos - 1)) == 0) {
        CmRedisGetRef *g = realloc(t->gets, 2 * (size_t)t->npos * sizeof(*g));
        if (g == NULL) {
            PyErr_NoMemory();
            cm_redis_entry_fail_current(e);
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
 * MGET of its own, which fails as a whole and at once). */
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
    CmState *st = c->net.st;
    if (c->net.state == CONN_CLOSED) {
        PyObject *msg = PyUnicode_FromString("redis connection closed");
        cm_redis_entry_fail(st, e, st->redis.ConnectionError, msg ? msg : Py_None);
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
    if (cm_redis_encode_entry(&c->out, e) < 0) {
        cm_redis_entry_fail_current(e);
        return;
    }
    e->deadline = cm_now_ns() + (int64_t)(cm_redis_conn_pool(c)->cfg->timeout * 1e9);
    e->track = cm_redis_track_mark(cm_redis_conn_pool(c));
    if (ring_push(c, e) < 0) {
        cm_buf_rollback(&c->out, mark);
        PyErr_NoMemory();
        cm_redis_entry_fail_current(e);
        return;
    }
    if (cm_net_conn_arm(&c->net, e->deadline) < 0)
        PyErr_WriteUnraisable((PyObject *)c);
    conn_schedule_flush(c);
}

int cm_redis_conn_send_raw(CmRedisConnObject *c, size_t argc, const char *const *argv,
                           const size_t *lens)
{
    if (c->open_run)
        close_run(c);
    if (cm_resp_command(&c->out, argc, argv, lens) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    conn_schedule_flush(c);
    return 0;
}

/* A connection-internal request (AUTH, SELECT). */
static int conn_push_internal(CmRedisConnObject *c, int cmd, size_t argc, const char *const *argv,
                              const size_t *lens)
{
    /* answered within `timeout` of the connect, as any request would be */
    CmRedisEntry e = {.cmd = (uint8_t)cmd,
                      .deadline = c->connect_deadline +
                                  (int64_t)(cm_redis_conn_pool(c)->cfg->timeout * 1e9)};
    if (cm_resp_command(&c->out, argc, argv, lens) < 0 || ring_push(c, &e) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

void cm_redis_conn_ready(CmRedisConnObject *c)
{
    c->net.state = CONN_READY;
    /* the connect timer, if armed, finds the reply deadlines when it fires */
    if (cm_net_conn_watch(&c->net, 1, 0) < 0) {
        PyObject *exc = cm_exc_take();
        cm_redis_conn_close_fmt(c, c->net.st->redis.ConnectionError, 1, "redis %s: %S",
                                cm_redis_conn_label(c), exc);
        Py_XDECREF(exc);
        return;
    }
    conn_write(c);
}

static void conn_io(CmNetConn *nc, int readable, int writable);
static int conn_awaiting(const CmNetConn *nc);

static const CmNetOps conn_ops = {
    .io = conn_io,
    .deadline = conn_deadline,
    .expired = conn_expired,
    .awaiting = conn_awaiting,
    .release = conn_release,
    .fail_pending = conn_fail_pending,
};

CmRedisConnObject *cm_redis_conn_open(CmRedisPool *p, PyObject *loop)
{
    CmState *st = p->st;
    const CmRedisConfig *cfg = p->cfg;
    CmRedisConnObject *c = PyObject_GC_New(CmRedisConnObject, (PyTypeObject *)st->redis.ConnType);
    if (c == NULL)
        return NULL;
    cm_net_conn_init(&c->net, st, &conn_ops, loop);
    c->net.pool = &p->net; /* added to it once open */
    c->flush_cb = NULL;
    c->flush_scheduled = c->replied = c->open_run = 0;
    c->connect_deadline = cm_now_ns() + (int64_t)(cfg->connect_timeout * 1e9);
    c->resolve = NULL;
    c->sub = NULL;
    memset(&c->out, 0, sizeof(c->out));
    c->ring = NULL;
    c->cap = c->head = c->len = 0;
    c->reader = redisReaderCreateWithFunctions(&cm_redis_reply_fns);
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
        if (cm_redis_conn_lookup(c, loop) < 0)
            goto fail;
        return c;
    }
    if (cm_redis_conn_connect(c) < 0)
        goto fail;
    return c;
fail:
    c->net.pool = NULL; /* not in the pool yet */
    cm_redis_conn_close(c, st->redis.ConnectionError, NULL, 0);
    Py_DECREF(c);
    return NULL;
}

/* Writable: the connect finished (or failed), or the kernel took more. */
static void conn_on_write(CmRedisConnObject *c)
{
    if (c->net.state == CONN_CONNECTING)
        cm_redis_conn_connected(c);
    else if (c->net.state == CONN_READY) {
        conn_write(c);
    }
}

/* net/conn.h's io: from the loop's watches and from busy polling. */
static void conn_io(CmNetConn *nc, int readable, int writable)
{
    CmRedisConnObject *c = (CmRedisConnObject *)nc;
    if (c->net.state == CONN_CONNECTING && c->net.tls != NULL) {
        cm_redis_conn_handshake(c);
        return;
    }
    if (writable)
        conn_on_write(c);
    if (readable && c->net.state == CONN_READY)
        cm_net_stream_read(&c->net, &cm_redis_stream_ops);
}

/* net/conn.h's awaiting: replies are due (busy polling spins on it). */
static int conn_awaiting(const CmNetConn *nc)
{
    const CmRedisConnObject *c = (const CmRedisConnObject *)nc;
    return c->net.state == CONN_READY && c->len > 0;
}

/* Busy polling (busypoll.h), single server only: a cluster's pools change
 * with its slot map. The owner is the client, held for the spin. */
static CmNetPool *client_pool(void *owner)
{
    CmRedisPool *p = ((CmRedisClientObject *)owner)->pool; // borrowed
    return p ? &p->net : NULL;
}

static PyObject *conn_on_flush(PyObject *self, PyObject *Py_UNUSED(unused))
{
    CmRedisConnObject *c = (CmRedisConnObject *)self;
    CmRedisPool *p = cm_redis_conn_pool(c); // borrowed
    c->flush_scheduled = 0;
    if (c->net.state == CONN_READY && !c->net.writing)
        conn_write(c);
    CmRedisClientObject *client = p ? p->client : NULL; // borrowed
    if (client != NULL && client->pool == p && c->net.state == CONN_READY && c->len > 0)
        cm_net_pool_spin_sent(client_pool, (PyObject *)client, &client->spin, c->net.loop);
    Py_RETURN_NONE;
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
    CmRedisPool *p = cm_redis_conn_pool(c); // borrowed
    return (size_t)(p != NULL ? p->cfg->max_bulk_bytes : CM_REDIS_MAX_BULK);
}

static int reader_pending_ok(const CmRedisConnObject *c)
{
    return cm_resp_pending_ok(c->reader->buf + c->reader->pos, reader_buffered(c),
                              reader_max_bulk(c));
}

/* net/stream.h's took: feed the reader; parse before buffering more than
 * one reply may hold. */
static int stream_took(CmNetConn *nc, const void *p, size_t n)
{
    CmRedisConnObject *c = (CmRedisConnObject *)nc;
    if (redisReaderFeed(c->reader, p, n) != REDIS_OK) {
        cm_redis_conn_close_fmt(c, c->net.st->redis.ConnectionError, 1, "redis %s: out of memory",
                                cm_redis_conn_label(c));
        return 1;
    }
    return !reader_pending_ok(c);
}

/* net/stream.h's parse: answer the entries at the head of the ring. */
static void stream_parse(CmNetConn *nc)
{
    CmRedisConnObject *c = (CmRedisConnObject *)nc;
    CmState *st = c->net.st;
    while (c->net.state != CONN_CLOSED) {
        void *reply = NULL;
        if (redisReaderGetReply(c->reader, &reply) != REDIS_OK) {
            if (c->reader->err == REDIS_ERR_OOM && cm_redis_conn_pool(c) != NULL)
                cm_redis_conn_close_fmt(c, st->redis.ConnectionError, 1,
                                        "redis %s: reply refused: an aggregate longer than "
                                        "max_reply_elements=%zd (or out of memory)",
                                        cm_redis_conn_label(c),
                                        cm_redis_conn_pool(c)->cfg->max_reply_elements);
            else
                cm_redis_conn_close_fmt(c, st->redis.ConnectionError, 1,
                                        "redis %s: protocol error: %s", cm_redis_conn_label(c),
                                        c->reader->errstr);
            return;
        }
        if (reply == NULL) {
            if (!reader_pending_ok(c))
                cm_redis_conn_close_fmt(c, st->redis.ConnectionError, 1,
                                        "redis %s: reply refused: a bulk or line longer than "
                                        "max_bulk_bytes=%zu",
                                        cm_redis_conn_label(c), reader_max_bulk(c));
            return;
        }
        if (c->len == 0 && c->sub != NULL) {
            /* a subscriber's connection past its AUTH/SELECT */
            cm_redis_sub_reply(c->sub, c, (PyObject *)reply);
            continue;
        }
        if (c->len == 0) {
            Py_DECREF((PyObject *)reply);
            cm_redis_conn_close_fmt(c, st->redis.ConnectionError, 1,
                                    "redis %s: reply without a request", cm_redis_conn_label(c));
            return;
        }
        CmRedisEntry e = c->ring[c->head];
        c->head = (c->head + 1) % c->cap;
        c->len--;
        /* the server is usable once a request past AUTH/SELECT is answered;
         * an AUTH error must not reset the backoff it is about to grow */
        if (!c->replied && c->net.pool != NULL && e.cmd != CM_CMD_HELLO) {
            c->replied = 1;
            cm_net_pool_ok(c->net.pool);
        }
        if (cm_redis_track_unsure_on(cm_redis_conn_pool(c), &e))
            cm_redis_track_unsure(&e);
        cm_redis_entry_reply(c, &e, (PyObject *)reply);
    }
}

static const void *stream_out(CmNetConn *nc, size_t *n)
{
    CmRedisConnObject *c = (CmRedisConnObject *)nc;
    *n = cm_buf_pending(&c->out);
    return c->out.data + c->out.pos;
}

static void stream_sent(CmNetConn *nc, size_t n)
{
    cm_buf_consume(&((CmRedisConnObject *)nc)->out, n);
}

/* net/stream.h's failed: a failed TCP connect looks the host up again. */
static void stream_failed(CmNetConn *nc, const char *why)
{
    CmRedisConnObject *c = (CmRedisConnObject *)nc;
    CmRedisPool *p = cm_redis_conn_pool(c); // borrowed
    if (c->net.state == CONN_CONNECTING && c->net.tls == NULL && p != NULL)
        cm_redis_pool_forget_addrs(p);
    cm_redis_conn_close_fmt(c, c->net.st->redis.ConnectionError, 1, "redis %s: %s",
                            cm_redis_conn_label(c), why);
}

const CmNetStreamOps cm_redis_stream_ops = {
    .out = stream_out,
    .sent = stream_sent,
    .room = NULL,
    .took = stream_took,
    .parse = stream_parse,
    .failed = stream_failed,
};

static int conn_traverse(CmRedisConnObject *c, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(c));
    Py_VISIT(c->flush_cb);
    Py_VISIT(c->resolve);
    for (size_t i = 0; i < c->len; i++) {
        int rc = cm_redis_entry_traverse(&c->ring[(c->head + i) % c->cap], visit, arg);
        if (rc)
            return rc;
    }
    return cm_net_conn_traverse(&c->net, visit, arg);
}

static int conn_clear(CmRedisConnObject *c)
{
    Py_CLEAR(c->flush_cb);
    Py_CLEAR(c->net.timer.handle);
    Py_CLEAR(c->resolve);
    return 0;
}

static void conn_dealloc(CmRedisConnObject *c)
{
    PyObject_GC_UnTrack(c);
    if (c->reader != NULL)
        redisReaderFree(c->reader);
    cm_buf_free(&c->out);
    for (size_t i = 0; i < c->len; i++)
        cm_redis_entry_fail_exc(&c->ring[(c->head + i) % c->cap], c->net.st->redis.Error);
    free(c->ring);
    conn_clear(c);
    cm_net_conn_dealloc(&c->net);
}

static PyType_Slot conn_slots[] = {
    {Py_tp_traverse, conn_traverse},
    {Py_tp_clear, conn_clear},
    {Py_tp_dealloc, conn_dealloc},
    {Py_tp_doc, "A connection of a Redis pool (internal)."},
    {0, NULL},
};

PyType_Spec cm_redis_conn_spec = {
    .name = "cacheme._core._RedisConnection",
    .basicsize = sizeof(CmRedisConnObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = conn_slots,
};
