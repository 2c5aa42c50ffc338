/* A connection: a non-blocking socket registered with the loop (add_reader
 * while open, add_writer while connecting or while the kernel buffer is
 * full), an output buffer, a hiredis reader, the ring of pending entries and
 * one timer for the connect timeout or the oldest pending reply's deadline.
 * A failure closes it and fails every pending entry with
 * RedisConnectionError or RedisTimeoutError; nothing waits forever. */
#include "redis/internal.h"
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loop/resolve.h"

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

/* Close the connection: unregister from the loop, close the socket, and fail
 * every pending entry with tp(msg). failed: count it against the server
 * (backoff). Safe to call more than once and from within its callbacks. */
void cm_redis_conn_close(CmRedisConnObject *c, PyObject *tp, PyObject *msg, int failed)
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
        cm_redis_pool_forget(p, c, failed, msg);
    for (size_t i = 0; i < len; i++)
        cm_redis_entry_fail(st, &ring[(head + i) % cap], tp, msg);
    free(ring);
    if (failed && owner != NULL && owner->cluster != NULL)
        cm_cluster_node_failed(owner);
    Py_XDECREF(owner);
    Py_DECREF(c);
    cm_exc_restore(saved);
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

const char *cm_redis_conn_label(CmRedisConnObject *c) { return c->pool ? c->pool->label : "redis"; }

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
                    cm_redis_conn_close_fmt(c, c->st->RedisConnectionError, 1, "redis %s: %S",
                                            cm_redis_conn_label(c), exc);
                    Py_XDECREF(exc);
                    return;
                }
                c->writing = 1;
            }
            return;
        }
        cm_redis_conn_close_fmt(c, c->st->RedisConnectionError, 1, "redis %s: write failed: %s",
                                cm_redis_conn_label(c), strerror(errno));
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
    if (cm_redis_encode_entry(&c->out, t) == 0)
        return;
    /* the keys were checked as they joined: only memory can fail here */
    CmRedisEntry dead = *t;
    c->len--;
    cm_redis_entry_fail_current(&dead);
}

static void conn_add_get(CmRedisConnObject *c, CmRedisEntry *e)
{
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
                          .deadline = cm_now_ns() + (int64_t)(c->pool->cfg->timeout * 1e9)};
        if ((r.gets = malloc(CM_REDIS_RUN_FIRST * sizeof(*r.gets))) == NULL ||
            ring_push(c, &r) < 0) {
            free(r.gets);
            PyErr_NoMemory();
            cm_redis_entry_fail_current(e);
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
    if (cm_redis_encode_entry(&c->out, e) < 0) {
        cm_redis_entry_fail_current(e);
        return;
    }
    e->deadline = cm_now_ns() + (int64_t)(c->pool->cfg->timeout * 1e9);
    if (ring_push(c, e) < 0) {
        cm_buf_rollback(&c->out, mark);
        PyErr_NoMemory();
        cm_redis_entry_fail_current(e);
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
        cm_redis_conn_close_fmt(c, st->RedisConnectionError, 1, "redis %s: %S",
                                cm_redis_conn_label(c), exc);
        Py_XDECREF(exc);
    }
}

/* Open the socket to the pool's addresses (resolved, or an IP literal or a
 * path) and connect: at once (ready) or watched for writability. -1 with an
 * exception. */
static int conn_connect(CmRedisConnObject *c)
{
    CmState *st = c->st;
    CmRedisPool *p = c->pool; // borrowed
    int pending;
    c->fd = cm_redis_sock_connect(p, &pending);
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
            if (cm_redis_addrs_add(&tail, ip, p->port) < 0)
                PyErr_SetFromErrno(PyExc_OSError);
            if (PyErr_Occurred())
                break;
        }
        if (!PyErr_Occurred()) {
            cm_redis_pool_forget_addrs(p);
            p->addrs = addrs;
            if (conn_connect(c) < 0) /* the message names the server */
                looked_up = 2;
        } else
            cm_redis_addrs_free(addrs);
    } else if (res != NULL)
        PyErr_SetString(PyExc_TypeError, "resolve: a list of one list expected");
    Py_XDECREF(res);
    if (PyErr_Occurred()) {
        PyObject *exc = cm_exc_take();
        if (c->state != CONN_CLOSED && looked_up == 2)
            cm_redis_conn_close_fmt(c, c->st->RedisConnectionError, 1, "%S", exc);
        else if (c->state != CONN_CLOSED)
            cm_redis_conn_close_fmt(c, c->st->RedisConnectionError, 1,
                                    "redis %s: cannot resolve %s: %S", cm_redis_conn_label(c),
                                    p->host, exc);
        Py_XDECREF(exc);
    }
    Py_DECREF(c);
    Py_RETURN_NONE;
}

CmRedisConnObject *cm_redis_conn_open(CmRedisPool *p, PyObject *loop)
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
    cm_redis_conn_close(c, st->RedisConnectionError, NULL, 0);
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
            cm_redis_pool_forget_addrs(c->pool);
            cm_redis_conn_close_fmt(c, c->st->RedisConnectionError, 1,
                                    "redis %s: connect failed: %s", cm_redis_conn_label(c),
                                    strerror(err));
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
        cm_redis_pool_forget_addrs(c->pool);
        cm_redis_conn_close_fmt(c, c->st->RedisTimeoutError, 1, "redis %s: connect timed out",
                                cm_redis_conn_label(c));
    } else if (now >= conn_first_deadline(c)) {
        /* replies come in order: the stream is useless past a lost one */
        cm_redis_conn_close_fmt(c, c->st->RedisTimeoutError, 1, "redis %s: no reply within %d ms",
                                cm_redis_conn_label(c), (int)(c->pool->cfg->timeout * 1000));
    } else if (conn_rearm(c) < 0) {
        PyErr_WriteUnraisable(self);
    }
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
                cm_redis_conn_close_fmt(c, st->RedisConnectionError, 1, "redis %s: out of memory",
                                        cm_redis_conn_label(c));
                goto done;
            }
            /* parse before buffering more than one reply may hold */
            if ((size_t)n < sizeof(buf) || !reader_pending_ok(c))
                break;
            continue;
        }
        if (n == 0) {
            cm_redis_conn_close_fmt(c, st->RedisConnectionError, 1,
                                    "redis %s: connection closed by server",
                                    cm_redis_conn_label(c));
            goto done;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        cm_redis_conn_close_fmt(c, st->RedisConnectionError, 1, "redis %s: read failed: %s",
                                cm_redis_conn_label(c), strerror(errno));
        goto done;
    }
    while (c->state != CONN_CLOSED) {
        void *reply = NULL;
        if (redisReaderGetReply(c->reader, &reply) != REDIS_OK) {
            if (c->reader->err == REDIS_ERR_OOM && c->pool != NULL)
                cm_redis_conn_close_fmt(c, st->RedisConnectionError, 1,
                                        "redis %s: reply refused: an aggregate longer than "
                                        "max_reply_elements=%zd (or out of memory)",
                                        cm_redis_conn_label(c), c->pool->cfg->max_reply_elements);
            else
                cm_redis_conn_close_fmt(c, st->RedisConnectionError, 1,
                                        "redis %s: protocol error: %s", cm_redis_conn_label(c),
                                        c->reader->errstr);
            goto done;
        }
        if (reply == NULL) {
            if (!reader_pending_ok(c)) {
                cm_redis_conn_close_fmt(c, st->RedisConnectionError, 1,
                                        "redis %s: reply refused: a bulk or line longer than "
                                        "max_bulk_bytes=%zu",
                                        cm_redis_conn_label(c), reader_max_bulk(c));
                goto done;
            }
            break;
        }
        if (c->len == 0) {
            Py_DECREF((PyObject *)reply);
            cm_redis_conn_close_fmt(c, st->RedisConnectionError, 1,
                                    "redis %s: reply without a request", cm_redis_conn_label(c));
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
        cm_redis_entry_reply(c, &e, (PyObject *)reply);
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
        cm_redis_entry_fail_exc(&c->ring[(c->head + i) % c->cap], c->st->RedisError);
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

PyType_Spec cm_redis_conn_spec = {
    .name = "cacheme._core._RedisConnection",
    .basicsize = sizeof(CmRedisConnObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = conn_slots,
};
