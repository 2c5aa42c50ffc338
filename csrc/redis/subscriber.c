/* The pub/sub connection of one Redis server (redis/subscriber.h). */
#include "redis/subscriber.h"
#include "redis/internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    char *name; /* owned */
    size_t len;
    CmRedisSubMsgFn fn; /* NULL: removed while dispatching, compacted after */
    void *arg;
} SubChan;

typedef struct {
    CmRedisSubStateFn fn; /* NULL: removed while dispatching */
    void *arg;
} SubWatch;

struct CmRedisSub {
    CmRedisPool *pool;       /* owned: the one connection's own pool */
    CmRedisConnObject *conn; /* borrowed: open or connecting (in pool), or NULL */
    long long id;            /* CLIENT ID while up, else 0 */
    SubChan *chans;
    size_t nchans, capchans;
    SubWatch *watch;
    size_t nwatch, capwatch;
    int dispatching; /* >0 while callbacks run: removals only clear fn */
    CmNetTimer retry;
    PyObject *token;    /* capsule naming this sub for the retry timer; its
                           context is cleared when the sub is freed */
    PyObject *retry_cb; /* bound to token */
};

static PyObject *sub_on_retry(PyObject *token, PyObject *unused);
static PyMethodDef on_retry_def = {"_sub_retry", sub_on_retry, METH_NOARGS, NULL};

CmRedisSub *cm_redis_sub_of(CmRedisPool *p)
{
    if (p->sub != NULL)
        return p->sub;
    CmRedisSub *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    if ((s->pool = cm_redis_pool_new(p->client, p->host, p->port, p->path)) == NULL)
        goto fail;
    s->pool->sub_of = s;
    /* the capsule's pointer is the sub; its context says it is alive */
    if ((s->token = PyCapsule_New(s, "cacheme._core.RedisSub", NULL)) == NULL ||
        PyCapsule_SetContext(s->token, s) < 0 ||
        (s->retry_cb = PyCFunction_New(&on_retry_def, s->token)) == NULL)
        goto fail;
    p->sub = s;
    return s;
fail:
    cm_redis_sub_free(s);
    return NULL;
}

long long cm_redis_sub_client_id(const CmRedisSub *s) { return s->id; }

/* Append a command to the connection's output (no reply entry: the replies
 * are read by cm_redis_sub_reply). */
static int sub_send(CmRedisSub *s, const char *cmd, const char *arg, size_t len)
{
    const char *argv[2] = {cmd, arg};
    size_t lens[2] = {strlen(cmd), len};
    return cm_redis_conn_send_raw(s->conn, 2, argv, lens);
}

/* The index of the first live entry naming channel, skip excluded; nchans
 * when none. */
static size_t chan_find(const CmRedisSub *s, const char *channel, size_t len, size_t skip)
{
    for (size_t i = 0; i < s->nchans; i++)
        if (i != skip && s->chans[i].fn != NULL && s->chans[i].len == len &&
            memcmp(s->chans[i].name, channel, len) == 0)
            return i;
    return s->nchans;
}

int cm_redis_sub_start(CmRedisSub *s, PyObject *loop)
{
    if (s->conn != NULL)
        return 0;
    if (s->retry.handle != NULL && s->pool->net.loop == loop)
        return 0; /* the retry timer connects */
    cm_net_timer_cancel(s->pool->st, &s->retry);
    CmRedisConnObject *c = cm_redis_pool_conn(s->pool, loop); // borrowed
    if (c == NULL)
        return -1;
    s->conn = c;
    /* CLIENT ID first: its reply (an integer) is the first one past
     * AUTH/SELECT, before any pub/sub message can come */
    if (sub_send(s, "CLIENT", "ID", 2) < 0)
        goto fail;
    for (size_t i = 0; i < s->nchans; i++) {
        SubChan *ch = &s->chans[i]; // borrowed
        if (ch->fn != NULL && chan_find(s, ch->name, ch->len, s->nchans) == i &&
            sub_send(s, "SUBSCRIBE", ch->name, ch->len) < 0)
            goto fail;
    }
    return 0;
fail:
    cm_redis_conn_close(c, s->pool->st->redis.ConnectionError, NULL, 0);
    return -1;
}

int cm_redis_sub_subscribe(CmRedisSub *s, PyObject *loop, const char *channel, size_t len,
                           CmRedisSubMsgFn fn, void *arg)
{
    if (s->nchans == s->capchans) {
        size_t cap = s->capchans ? 2 * s->capchans : 4;
        SubChan *v = realloc(s->chans, cap * sizeof(*v));
        if (v == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        s->chans = v;
        s->capchans = cap;
    }
    char *name = malloc(len ? len : 1);
    if (name == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(name, channel, len);
    int first = chan_find(s, channel, len, s->nchans) == s->nchans;
    s->chans[s->nchans++] = (SubChan){name, len, fn, arg};
    if (s->conn == NULL)
        return cm_redis_sub_start(s, loop); /* subscribes every channel */
    if (first && sub_send(s, "SUBSCRIBE", channel, len) < 0) {
        cm_redis_conn_close(s->conn, s->pool->st->redis.ConnectionError, NULL, 0);
        return -1;
    }
    return 0;
}

/* Drop the entries removed while callbacks ran. */
static void sub_compact(CmRedisSub *s)
{
    size_t j = 0;
    for (size_t i = 0; i < s->nchans; i++) {
        if (s->chans[i].fn == NULL)
            free(s->chans[i].name);
        else
            s->chans[j++] = s->chans[i];
    }
    s->nchans = j;
    j = 0;
    for (size_t i = 0; i < s->nwatch; i++)
        if (s->watch[i].fn != NULL)
            s->watch[j++] = s->watch[i];
    s->nwatch = j;
}

void cm_redis_sub_unsubscribe(CmRedisSub *s, const char *channel, size_t len, CmRedisSubMsgFn fn,
                              void *arg)
{
    for (size_t i = 0; i < s->nchans; i++) {
        SubChan *ch = &s->chans[i]; // borrowed
        if (ch->fn != fn || ch->arg != arg || ch->len != len || memcmp(ch->name, channel, len))
            continue;
        ch->fn = NULL;
        if (s->conn != NULL && chan_find(s, channel, len, s->nchans) == s->nchans &&
            sub_send(s, "UNSUBSCRIBE", channel, len) < 0) {
            /* a connection that cannot take a command is of no use */
            PyErr_Clear();
            cm_redis_conn_close(s->conn, s->pool->st->redis.ConnectionError, NULL, 0);
        }
        break;
    }
    if (!s->dispatching)
        sub_compact(s);
}

int cm_redis_sub_watch(CmRedisSub *s, CmRedisSubStateFn fn, void *arg)
{
    if (s->nwatch == s->capwatch) {
        size_t cap = s->capwatch ? 2 * s->capwatch : 4;
        SubWatch *v = realloc(s->watch, cap * sizeof(*v));
        if (v == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        s->watch = v;
        s->capwatch = cap;
    }
    s->watch[s->nwatch++] = (SubWatch){fn, arg};
    return 0;
}

void cm_redis_sub_unwatch(CmRedisSub *s, CmRedisSubStateFn fn, void *arg)
{
    for (size_t i = 0; i < s->nwatch; i++)
        if (s->watch[i].fn == fn && s->watch[i].arg == arg) {
            s->watch[i].fn = NULL;
            break;
        }
    if (!s->dispatching)
        sub_compact(s);
}

/* Tell the watchers (entries added meanwhile are told too). */
static void sub_notify(CmRedisSub *s, int up)
{
    s->dispatching++;
    for (size_t i = 0; i < s->nwatch; i++) {
        SubWatch w = s->watch[i];
        if (w.fn != NULL)
            w.fn(w.arg, up);
    }
    if (--s->dispatching == 0)
        sub_compact(s);
}

static void sub_message(CmRedisSub *s, PyObject *channel, PyObject *msg)
{
    const char *name = PyBytes_AS_STRING(channel);
    size_t len = (size_t)PyBytes_GET_SIZE(channel);
    s->dispatching++;
    for (size_t i = 0; i < s->nchans; i++) {
        SubChan ch = s->chans[i];
        if (ch.fn != NULL && ch.len == len && memcmp(ch.name, name, len) == 0)
            ch.fn(ch.arg, msg);
    }
    if (--s->dispatching == 0)
        sub_compact(s);
}

static int is_kind(PyObject *v, const char *kind)
{
    return PyBytes_Check(v) && strcmp(PyBytes_AS_STRING(v), kind) == 0;
}

void cm_redis_sub_reply(CmRedisSub *s, CmRedisConnObject *c, PyObject *reply)
{
    CmState *st = c->net.st;
    if (c != s->conn) {
        Py_DECREF(reply);
        return;
    }
    if (PyLong_Check(reply) && s->id == 0) {
        long long id = PyLong_AsLongLong(reply);
        Py_DECREF(reply);
        if (id <= 0) {
            PyErr_Clear();
            cm_redis_conn_close_fmt(c, st->redis.ConnectionError, 1,
                                    "redis %s: bad CLIENT ID reply", cm_redis_conn_label(c));
            return;
        }
        s->id = id;
        cm_net_pool_ok(&s->pool->net);
        sub_notify(s, 1);
        return;
    }
    /* ["message", channel, payload] or the confirmation of a (un)subscribe */
    if (PyList_Check(reply) && PyList_GET_SIZE(reply) == 3 &&
        PyBytes_Check(PyList_GET_ITEM(reply, 1))) {
        PyObject *kind = PyList_GET_ITEM(reply, 0); // borrowed
        if (is_kind(kind, "message"))
            sub_message(s, PyList_GET_ITEM(reply, 1), PyList_GET_ITEM(reply, 2));
        if (is_kind(kind, "message") || is_kind(kind, "subscribe") ||
            is_kind(kind, "unsubscribe")) {
            Py_DECREF(reply);
            return;
        }
    }
    /* an error (NOPERM on a channel, CLIENT refused) or anything else: the
     * subscriptions cannot be trusted; start over after the backoff */
    cm_redis_conn_close_fmt(c, st->redis.ConnectionError, 1, "redis %s: subscriber: %R",
                            cm_redis_conn_label(c), reply);
    Py_DECREF(reply);
}

/* The retry timer: connect again on the pool's loop. */
static PyObject *sub_on_retry(PyObject *token, PyObject *Py_UNUSED(unused))
{
    CmRedisSub *s = PyCapsule_GetContext(token);
    if (s == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE; /* freed meanwhile */
    }
    Py_CLEAR(s->retry.handle);
    s->retry.at = 0;
    PyObject *loop = s->pool->net.loop; // borrowed
    if (s->conn == NULL && loop != NULL && cm_redis_sub_start(s, loop) < 0) {
        /* still down: cm_redis_pool_conn counted it; try at the next backoff */
        PyErr_Clear();
        int64_t at = s->pool->net.retry_at;
        if (cm_net_timer_arm(s->pool->st, loop, &s->retry, at, s->retry_cb) < 0)
            PyErr_WriteUnraisable(token);
    }
    Py_RETURN_NONE;
}

void cm_redis_sub_closed(CmRedisSub *s, CmRedisConnObject *c, int failed)
{
    if (c != s->conn)
        return;
    int was_up = s->id != 0;
    s->conn = NULL;
    s->id = 0;
    if (failed && c->net.loop != NULL) {
        int64_t now = cm_now_ns(), at = s->pool->net.retry_at;
        if (cm_net_timer_arm(s->pool->st, c->net.loop, &s->retry, at > now ? at : now,
                             s->retry_cb) < 0)
            PyErr_WriteUnraisable(s->token);
    }
    if (was_up)
        sub_notify(s, 0);
}

void cm_redis_sub_drop_detached(CmRedisSub *s, const char *why, int fork)
{
    cm_net_timer_drop(&s->retry);
    cm_redis_pool_drop_detached(s->pool, why, fork);
}

void cm_redis_sub_close_gc(CmRedisSub *s)
{
    cm_net_timer_drop(&s->retry);
    cm_redis_pool_close_gc(s->pool);
}

int cm_redis_sub_traverse(CmRedisSub *s, visitproc visit, void *arg)
{
    Py_VISIT(s->token);
    Py_VISIT(s->retry_cb);
    Py_VISIT(s->retry.handle);
    return cm_net_pool_traverse(&s->pool->net, visit, arg);
}

void cm_redis_sub_free(CmRedisSub *s)
{
    if (s == NULL)
        return;
    if (s->retry.handle != NULL)
        cm_net_timer_cancel(s->pool->st, &s->retry);
    if (s->token != NULL && PyCapsule_SetContext(s->token, NULL) < 0)
        PyErr_Clear();
    if (s->pool != NULL) {
        s->pool->sub_of = NULL; /* closing it tells no one */
        s->conn = NULL;
        cm_redis_pool_free(s->pool);
    }
    for (size_t i = 0; i < s->nchans; i++)
        free(s->chans[i].name);
    free(s->chans);
    free(s->watch);
    Py_XDECREF(s->retry_cb);
    Py_XDECREF(s->token);
    free(s);
}

/* ------------------------------------------------------------------ */
/* _sub_listen (tests)                                                */

static void log_append(PyObject *log, const char *what, PyObject *v)
{
    PyObject *t = Py_BuildValue("(sO)", what, v);
    if (t == NULL || PyList_Append(log, t) < 0)
        PyErr_WriteUnraisable(log);
    Py_XDECREF(t);
}

static void log_message(void *arg, PyObject *msg) { log_append(arg, "message", msg); }

static void log_state(void *arg, int up)
{
    CmRedisClientObject *self = arg; // borrowed: unwatched before it goes
    if (self->sub_log == NULL || self->pool == NULL || self->pool->sub == NULL)
        return;
    PyObject *id = PyLong_FromLongLong(up ? cm_redis_sub_client_id(self->pool->sub) : 0);
    if (id == NULL) {
        PyErr_WriteUnraisable(self->sub_log);
        return;
    }
    log_append(self->sub_log, up ? "up" : "lost", id);
    Py_DECREF(id);
}

PyObject *cm_redis_sub_listen(CmRedisClientObject *self, PyObject *channel)
{
    CmState *st = self->st;
    PyObject *loop = NULL, *res = NULL;
    if (!PyBytes_Check(channel)) {
        PyErr_Format(PyExc_TypeError, "_sub_listen: channel must be bytes, not %.100s",
                     Py_TYPE(channel)->tp_name);
        return NULL;
    }
    if ((loop = cm_loop_running(st)) == NULL || (self = cm_redis_client_for(self, loop)) == NULL ||
        cm_redis_client_check_open(self) < 0)
        goto done;
    if (self->pool == NULL) {
        PyErr_SetString(st->redis.Error, "_sub_listen: single server only");
        goto done;
    }
    CmRedisSub *s = cm_redis_sub_of(self->pool);
    if (s == NULL)
        goto done;
    if (self->sub_log == NULL) {
        if ((self->sub_log = PyList_New(0)) == NULL || cm_redis_sub_watch(s, log_state, self) < 0)
            goto done;
    }
    if (cm_redis_sub_subscribe(s, loop, PyBytes_AS_STRING(channel),
                               (size_t)PyBytes_GET_SIZE(channel), log_message, self->sub_log) < 0)
        goto done;
    res = Py_NewRef(self->sub_log);
done:
    Py_XDECREF(loop);
    return res;
}
