/* The pub/sub connection of one Redis server (redis/subscriber.h).
 *
 * The subscriptions are kept by channel name: a SubChan per name, found
 * through a hash table (chained, seeded), holding its subscribers (fn, arg)
 * in subscription order, and linked with the other names in the order their
 * subscription began (the order of the SUBSCRIBEs of a reconnect). So a
 * subscribe, an unsubscribe, a message and a confirmation cost
 * O(subscribers of that name), not O(every channel): a Redis lease waits on
 * one channel per key, and thousands of keys may be waited on at once. */
#include "redis/subscriber.h"
#include "core/siphash.h"
#include "redis/internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    CmRedisSubMsgFn fn;      /* NULL: removed while dispatching, compacted after */
    CmRedisSubReadyFn ready; /* or NULL */
    void *arg;
    int told; /* `ready` was told (on this connection) */
} SubEntry;

typedef struct SubChan SubChan;
struct SubChan {
    char *name; /* owned */
    size_t len;
    uint64_t hash;
    SubChan *chain;       /* the next in its hash bucket */
    SubChan *prev, *next; /* the order in which the subscriptions began */
    SubChan *dirty_next;  /* on s->dirty: holds removed entries */
    int dirty;
    SubEntry *subs; /* subscription order; removed ones (fn NULL) until compacted */
    size_t nsubs, capsubs;
    size_t nlive; /* entries with fn set */
    /* the number (on this connection) of the SUBSCRIBE whose confirmation
     * puts its live entries in place (0: not sent yet) */
    uint64_t at;
};

/* A SUBSCRIBE or UNSUBSCRIBE held back by _sub_hold (tests). */
typedef struct {
    const char *cmd; /* static */
    char *name;      /* owned */
    size_t len;
} SubHeld;

typedef struct {
    CmRedisSubStateFn fn; /* NULL: removed while dispatching */
    void *arg;
} SubWatch;

struct CmRedisSub {
    CmRedisPool *pool;       /* owned: the one connection's own pool */
    CmRedisConnObject *conn; /* borrowed: open or connecting (in pool), or NULL */
    long long id;            /* CLIENT ID once answered, else 0 */
    int up;                  /* the PING after the setup answered */
    char *track;             /* owned: the BCAST prefix of cm_redis_sub_track, or NULL */
    size_t track_len;
    SubChan **buckets; /* the channels by name: nbuckets (a power of 2, or 0) chains */
    size_t nbuckets, nchans;
    uint64_t seed, seed2;  /* the key of chan_hash */
    SubChan *first, *last; /* every channel, in the order their subscription began */
    SubChan *dirty;        /* channels with removed entries, compacted once not dispatching */
    SubWatch *watch;
    size_t nwatch, capwatch;
    int watch_dirty;
    int dispatching; /* >0 while callbacks run: removals only clear fn */
    int gone;        /* its owner is garbage: never connects again */
    int pinged;      /* a PING (or the setup) is not answered yet */
    /* (UN)SUBSCRIBEs sent and confirmed on this connection: each names one
     * channel and is answered by one confirmation, in order */
    uint64_t sent, confirmed;
    int hold; /* _sub_hold (tests): (UN)SUBSCRIBEs kept in `held`, unsent */
    SubHeld *held;
    size_t nheld, capheld;
    /* channels and entries looked at (tests: _tracking_info's
     * subscriber_visits, a count that shows the cost of each operation) */
    uint64_t visits;
    /* while connected, the keepalive: a PING every `timeout`, and the
     * connection closed when one is not answered within it; else the
     * reconnect at the backoff */
    CmNetTimer retry;
    PyObject *token;    /* capsule naming this sub for the timer; its
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
    /* the channel hash's key: Python's (per process, PYTHONHASHSEED) hash of
     * a constant, mixed with the time and this address */
    PyObject *b = PyBytes_FromString("cacheme.RedisSub");
    Py_hash_t h = b != NULL ? PyObject_Hash(b) : -1;
    Py_XDECREF(b);
    if (h == -1 && PyErr_Occurred())
        goto fail;
    s->seed = (uint64_t)h ^ (uint64_t)cm_now_ns();
    s->seed2 = ((uint64_t)h * 0x9e3779b97f4a7c15ULL) ^ (uint64_t)(uintptr_t)s;
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

long long cm_redis_sub_client_id(const CmRedisSub *s) { return s->up ? s->id : 0; }

unsigned long long cm_redis_sub_visits(const CmRedisSub *s) { return s->visits; }

static int grow(void **v, size_t n, size_t *cap, size_t size);

/* Append a command to the connection's output (no reply entry: the replies
 * are read by cm_redis_sub_reply). */
static int sub_send(CmRedisSub *s, const char *cmd, const char *arg, size_t len)
{
    const char *argv[2] = {cmd, arg};
    size_t lens[2] = {strlen(cmd), len};
    return cm_redis_conn_send_raw(s->conn, 2, argv, lens);
}

/* Send (or hold, _sub_hold) a SUBSCRIBE or UNSUBSCRIBE of one channel: the
 * number of its confirmation, or 0 with an exception. */
static uint64_t sub_send_chan(CmRedisSub *s, const char *cmd, const char *channel, size_t len)
{
    if (s->hold) {
        char *name = malloc(len ? len : 1);
        if (name == NULL || grow((void **)&s->held, s->nheld, &s->capheld, sizeof(*s->held)) < 0) {
            free(name);
            if (!PyErr_Occurred())
                PyErr_NoMemory();
            return 0;
        }
        memcpy(name, channel, len);
        s->held[s->nheld++] = (SubHeld){cmd, name, len};
    } else if (sub_send(s, cmd, channel, len) < 0) {
        return 0;
    }
    return ++s->sent;
}

static void held_clear(CmRedisSub *s)
{
    for (size_t i = 0; i < s->nheld; i++)
        free(s->held[i].name);
    s->nheld = 0;
}

/* SipHash-1-3 keyed by the subscriber's seed: names chosen to collide
 * (lease channels are named after keys) cannot be, without the key. */
static uint64_t chan_hash(const CmRedisSub *s, const char *name, size_t len)
{
    return cm_siphash13(s->seed, s->seed2, name, len);
}

/* The channel named so (live entries or not), or NULL. */
static SubChan *chan_lookup(CmRedisSub *s, const char *name, size_t len)
{
    if (s->nbuckets == 0)
        return NULL;
    uint64_t h = chan_hash(s, name, len);
    for (SubChan *ch = s->buckets[h & (s->nbuckets - 1)]; ch != NULL; ch = ch->chain) {
        s->visits++;
        if (ch->hash == h && ch->len == len && memcmp(ch->name, name, len) == 0)
            return ch;
    }
    return NULL;
}

/* Take ch out of the order of the subscriptions. */
static void chan_unlink(CmRedisSub *s, SubChan *ch)
{
    if (ch->prev != NULL)
        ch->prev->next = ch->next;
    else if (s->first == ch)
        s->first = ch->next;
    if (ch->next != NULL)
        ch->next->prev = ch->prev;
    else if (s->last == ch)
        s->last = ch->prev;
    ch->prev = ch->next = NULL;
}

/* Put ch last in that order. */
static void chan_append(CmRedisSub *s, SubChan *ch)
{
    ch->prev = s->last;
    ch->next = NULL;
    if (s->last != NULL)
        s->last->next = ch;
    else
        s->first = ch;
    s->last = ch;
}

/* The channel named so, made (last in the order, no entry) if need be;
 * NULL with MemoryError. */
static SubChan *chan_get(CmRedisSub *s, const char *name, size_t len)
{
    SubChan *ch = chan_lookup(s, name, len);
    if (ch != NULL)
        return ch;
    if (s->nchans >= s->nbuckets) { /* at most one channel a bucket on average */
        size_t nb = s->nbuckets ? 2 * s->nbuckets : 16;
        SubChan **b = calloc(nb, sizeof(*b));
        if (b == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        for (size_t i = 0; i < s->nbuckets; i++)
            for (SubChan *c = s->buckets[i], *next; c != NULL; c = next) {
                next = c->chain;
                s->visits++; /* amortised: at most 2 a channel made */
                c->chain = b[c->hash & (nb - 1)];
                b[c->hash & (nb - 1)] = c;
            }
        free(s->buckets);
        s->buckets = b;
        s->nbuckets = nb;
    }
    ch = calloc(1, sizeof(*ch));
    char *n = malloc(len ? len : 1);
    if (ch == NULL || n == NULL) {
        free(ch);
        free(n);
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(n, name, len);
    ch->name = n;
    ch->len = len;
    ch->hash = chan_hash(s, name, len);
    SubChan **bucket = &s->buckets[ch->hash & (s->nbuckets - 1)];
    ch->chain = *bucket;
    *bucket = ch;
    s->nchans++;
    chan_append(s, ch);
    return ch;
}

static void chan_free(CmRedisSub *s, SubChan *ch)
{
    SubChan **p = &s->buckets[ch->hash & (s->nbuckets - 1)];
    while (*p != ch)
        p = &(*p)->chain;
    *p = ch->chain;
    s->nchans--;
    chan_unlink(s, ch);
    free(ch->subs);
    free(ch->name);
    free(ch);
}

/* ch has removed entries (or none at all): compacted (freed when empty) by
 * sub_compact once no callback runs. */
static void chan_dirty(CmRedisSub *s, SubChan *ch)
{
    if (ch->dirty)
        return;
    ch->dirty = 1;
    ch->dirty_next = s->dirty;
    s->dirty = ch;
}

/* Drop the entries removed while callbacks ran, and the channels left with
 * none; each channel so marked is visited once (its own entries). */
static void sub_compact(CmRedisSub *s)
{
    while (s->dirty != NULL) {
        SubChan *ch = s->dirty;
        s->dirty = ch->dirty_next;
        ch->dirty = 0;
        ch->dirty_next = NULL;
        size_t j = 0;
        for (size_t i = 0; i < ch->nsubs; i++) {
            s->visits++;
            if (ch->subs[i].fn != NULL)
                ch->subs[j++] = ch->subs[i];
        }
        ch->nsubs = j;
        if (j == 0)
            chan_free(s, ch);
    }
    if (s->watch_dirty) {
        size_t j = 0;
        for (size_t i = 0; i < s->nwatch; i++)
            if (s->watch[i].fn != NULL)
                s->watch[j++] = s->watch[i];
        s->nwatch = j;
        s->watch_dirty = 0;
    }
}

int cm_redis_sub_start(CmRedisSub *s, PyObject *loop)
{
    if (s->conn != NULL)
        return 0;
    if (s->gone) {
        PyErr_SetString(s->pool->st->redis.ConnectionError, "redis storage collected");
        return -1;
    }
    if (s->retry.handle != NULL && s->pool->net.loop == loop)
        return 0; /* the retry timer connects */
    cm_net_timer_cancel(s->pool->st, &s->retry);
    CmRedisConnObject *c = cm_redis_pool_conn(s->pool, loop); // borrowed
    if (c == NULL)
        return -1;
    s->conn = c;
    c->sub = s;
    /* a new connection: nothing subscribed on it yet */
    s->sent = s->confirmed = 0;
    held_clear(s);
    for (SubChan *ch = s->first; ch != NULL; ch = ch->next) {
        ch->at = 0;
        for (size_t i = 0; i < ch->nsubs; i++)
            ch->subs[i].told = 0;
        s->visits += 1 + ch->nsubs;
    }
    /* CLIENT ID alone: the rest (sub_setup) waits for it, as CLIENT
     * TRACKING names it and must come before the first SUBSCRIBE */
    if (sub_send(s, "CLIENT", "ID", 2) < 0) {
        cm_redis_conn_close(c, s->pool->st->redis.ConnectionError, NULL, 0);
        return -1;
    }
    /* the setup is answered within `timeout`, like any request */
    s->pinged = 1;
    if (cm_net_timer_arm(s->pool->st, loop, &s->retry,
                         cm_now_ns() + (int64_t)(s->pool->cfg->timeout * 1e9), s->retry_cb) < 0) {
        cm_redis_conn_close(c, s->pool->st->redis.ConnectionError, NULL, 0);
        return -1;
    }
    return 0;
}

/* CLIENT ID answered: tracking, every channel, then a PING whose answer
 * says all of it was done (up). -1 with MemoryError. */
static int sub_setup(CmRedisSub *s)
{
    if (s->track != NULL) {
        char id[24];
        size_t n = cm_resp_ll(id, s->id);
        const char *argv[8] = {"CLIENT", "TRACKING", "on",     "REDIRECT",
                               id,       "BCAST",    "PREFIX", s->track};
        size_t lens[8] = {6, 8, 2, 8, n, 5, 6, s->track_len};
        if (cm_redis_conn_send_raw(s->conn, 8, argv, lens) < 0)
            return -1;
    }
    /* one SUBSCRIBE per name, in the order the subscriptions began */
    for (SubChan *ch = s->first; ch != NULL; ch = ch->next) {
        s->visits++;
        if (ch->nlive > 0 && (ch->at = sub_send_chan(s, "SUBSCRIBE", ch->name, ch->len)) == 0)
            return -1;
    }
    const char *ping = "PING";
    size_t four = 4;
    return cm_redis_conn_send_raw(s->conn, 1, &ping, &four);
}

int cm_redis_sub_track(CmRedisSub *s, PyObject *loop, const char *prefix, size_t len)
{
    if (s->track != NULL && s->track_len == len && memcmp(s->track, prefix, len) == 0)
        return cm_redis_sub_start(s, loop);
    char *t = malloc(len ? len : 1);
    if (t == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(t, prefix, len);
    free(s->track);
    s->track = t;
    s->track_len = len;
    /* a connection past its CLIENT ID cannot take CLIENT TRACKING any
     * more (subscribe mode): it starts over */
    if (s->conn != NULL && s->id != 0)
        cm_redis_conn_close(s->conn, s->pool->st->redis.ConnectionError, NULL, 0);
    return cm_redis_sub_start(s, loop);
}

/* Room for one more element in *v (n used of *cap, each size bytes). -1
 * with MemoryError. */
static int grow(void **v, size_t n, size_t *cap, size_t size)
{
    if (n < *cap)
        return 0;
    size_t c = *cap ? 2 * *cap : 4;
    void *p = realloc(*v, c * size);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *v = p;
    *cap = c;
    return 0;
}

int cm_redis_sub_subscribe(CmRedisSub *s, PyObject *loop, const char *channel, size_t len,
                           CmRedisSubMsgFn fn, CmRedisSubReadyFn ready, void *arg)
{
    SubChan *ch = chan_get(s, channel, len); // borrowed
    if (ch == NULL)
        return -1;
    if (grow((void **)&ch->subs, ch->nsubs, &ch->capsubs, sizeof(*ch->subs)) < 0) {
        if (ch->nsubs == 0) { /* made just now */
            chan_dirty(s, ch);
            if (!s->dispatching)
                sub_compact(s);
        }
        return -1;
    }
    int shared = ch->nlive > 0; /* its SUBSCRIBE is sent (or to be) already */
    if (!shared && s->last != ch) {
        /* a subscription that begins again (its entries were removed while
         * callbacks ran) comes last, as a new one would */
        chan_unlink(s, ch);
        chan_append(s, ch);
    }
    SubEntry *e = &ch->subs[ch->nsubs++]; // borrowed
    *e = (SubEntry){fn, ready, arg, 0};
    ch->nlive++;
    if (s->conn == NULL)
        return cm_redis_sub_start(s, loop); /* subscribes every channel */
    if (s->id == 0)
        return 0; /* sub_setup subscribes it */
    if (shared) {
        /* its SUBSCRIBE is out already (or confirmed: in place now) */
        e->told = ch->at != 0 && ch->at <= s->confirmed;
        return e->told;
    }
    if ((ch->at = sub_send_chan(s, "SUBSCRIBE", channel, len)) == 0) {
        /* nothing ran meanwhile: the entry is still the last */
        ch->nsubs--;
        ch->nlive--;
        chan_dirty(s, ch);
        if (!s->dispatching)
            sub_compact(s);
        PyObject *exc = cm_exc_take();
        cm_redis_conn_close(s->conn, s->pool->st->redis.ConnectionError, NULL, 0);
        cm_exc_restore(exc);
        return -1;
    }
    return 0;
}

void cm_redis_sub_unsubscribe(CmRedisSub *s, const char *channel, size_t len, CmRedisSubMsgFn fn,
                              void *arg)
{
    SubChan *ch = chan_lookup(s, channel, len); // borrowed
    for (size_t i = 0; ch != NULL && i < ch->nsubs; i++) {
        SubEntry *e = &ch->subs[i]; // borrowed
        s->visits++;
        if (e->fn != fn || e->arg != arg)
            continue;
        e->fn = NULL;
        ch->nlive--;
        chan_dirty(s, ch);
        if (s->conn != NULL && s->id != 0 && ch->nlive == 0 &&
            sub_send_chan(s, "UNSUBSCRIBE", channel, len) == 0) {
            /* a connection that cannot take a command is of no use (its
             * close may run callbacks: ch is not used after it) */
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
    if (grow((void **)&s->watch, s->nwatch, &s->capwatch, sizeof(*s->watch)) < 0)
        return -1;
    s->watch[s->nwatch++] = (SubWatch){fn, arg};
    return 0;
}

void cm_redis_sub_unwatch(CmRedisSub *s, CmRedisSubStateFn fn, void *arg)
{
    for (size_t i = 0; i < s->nwatch; i++)
        if (s->watch[i].fn == fn && s->watch[i].arg == arg) {
            s->watch[i].fn = NULL;
            s->watch_dirty = 1;
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
    SubChan *ch = chan_lookup(s, PyBytes_AS_STRING(channel), (size_t)PyBytes_GET_SIZE(channel));
    if (ch == NULL)
        return;
    /* ch stays (compaction waits for the dispatch to end); its entries may
     * move (added in a callback: called too) */
    s->dispatching++;
    for (size_t i = 0; i < ch->nsubs; i++) {
        SubEntry e = ch->subs[i];
        s->visits++;
        if (e.fn != NULL)
            e.fn(e.arg, msg);
    }
    if (--s->dispatching == 0)
        sub_compact(s);
}

/* The SUBSCRIBE of channel is confirmed (s->confirmed counts it): tell its
 * entries in place now (added meanwhile: told too when in place). Only the
 * entries of that name can be: an entry's SUBSCRIBE is the one sent for its
 * name, and each confirmation answers the command of that number. */
static void sub_ready(CmRedisSub *s, PyObject *channel)
{
    SubChan *ch = chan_lookup(s, PyBytes_AS_STRING(channel), (size_t)PyBytes_GET_SIZE(channel));
    if (ch == NULL)
        return;
    s->dispatching++;
    for (size_t i = 0; i < ch->nsubs; i++) {
        /* a subscription begun again (or a reconnect) in a callback: its
         * SUBSCRIBE is a later one, and the entries before it are gone */
        if (ch->at == 0 || ch->at > s->confirmed)
            break;
        SubEntry *e = &ch->subs[i]; // borrowed: the array may move in a callback
        s->visits++;
        if (e->fn == NULL || e->told)
            continue;
        e->told = 1;
        if (e->ready != NULL) {
            SubEntry c = *e;
            c.ready(c.arg, ch->name, ch->len);
        }
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
        if (sub_setup(s) < 0) {
            PyErr_Clear();
            cm_redis_conn_close_fmt(c, st->redis.ConnectionError, 1,
                                    "redis %s: subscriber: out of memory", cm_redis_conn_label(c));
        }
        return;
    }
    /* CLIENT TRACKING's OK; PONG (no channel yet) or ["pong", ""] */
    int pong = PyUnicode_Check(reply) && PyUnicode_CompareWithASCIIString(reply, "PONG") == 0;
    if (PyList_Check(reply) && PyList_GET_SIZE(reply) == 2 &&
        is_kind(PyList_GET_ITEM(reply, 0), "pong"))
        pong = 1;
    if (pong && s->up) { /* the keepalive's */
        Py_DECREF(reply);
        s->pinged = 0;
        return;
    }
    if (pong && s->id != 0 && !s->up) {
        Py_DECREF(reply);
        s->up = 1;
        s->pinged = 0;
        cm_net_pool_ok(&s->pool->net);
        sub_notify(s, 1);
        return;
    }
    if (PyUnicode_Check(reply) && PyUnicode_CompareWithASCIIString(reply, "OK") == 0 &&
        s->id != 0 && !s->up) {
        Py_DECREF(reply);
        return;
    }
    /* ["message", channel, payload] or the confirmation of a (un)subscribe */
    if (PyList_Check(reply) && PyList_GET_SIZE(reply) == 3 &&
        PyBytes_Check(PyList_GET_ITEM(reply, 1))) {
        PyObject *kind = PyList_GET_ITEM(reply, 0); // borrowed
        if (is_kind(kind, "message"))
            sub_message(s, PyList_GET_ITEM(reply, 1), PyList_GET_ITEM(reply, 2));
        if (is_kind(kind, "subscribe") || is_kind(kind, "unsubscribe"))
            s->confirmed++;
        if (is_kind(kind, "subscribe"))
            sub_ready(s, PyList_GET_ITEM(reply, 1));
        if (is_kind(kind, "message") || is_kind(kind, "subscribe") ||
            is_kind(kind, "unsubscribe")) {
            Py_DECREF(reply);
            return;
        }
    }
    /* an error (NOPERM on a channel, CLIENT TRACKING before Redis 6) or
     * anything else: the subscriptions cannot be trusted; logged (again
     * after each backoff while the server refuses) and started over */
    PyObject *label = PyUnicode_FromString(cm_redis_conn_label(c));
    if (label != NULL)
        cm_log_warning(st, "cacheme: redis %U: subscriber connection refused: %R", label, reply);
    Py_XDECREF(label);
    PyErr_Clear();
    cm_redis_conn_close_fmt(c, st->redis.ConnectionError, 1, "redis %s: subscriber: %R",
                            cm_redis_conn_label(c), reply);
    Py_DECREF(reply);
}

/* The keepalive: the last PING (or the setup) unanswered within `timeout`
 * means a server or a network that is gone without a word (a partition, a
 * stopped server), whose invalidations would never come: the connection
 * is closed as failed (lost, then reconnected). Else another PING. */
static void sub_keepalive(CmRedisSub *s)
{
    CmRedisConnObject *c = s->conn; // borrowed: open, in s->pool
    CmState *st = s->pool->st;
    int ms = (int)(s->pool->cfg->timeout * 1000);
    if (s->pinged) {
        cm_redis_conn_close_fmt(c, st->redis.TimeoutError, 1,
                                "redis %s: subscriber: no answer within %d ms",
                                cm_redis_conn_label(c), ms);
        return;
    }
    const char *ping = "PING";
    size_t four = 4;
    if (cm_redis_conn_send_raw(c, 1, &ping, &four) < 0 ||
        cm_net_timer_arm(st, c->net.loop, &s->retry, cm_now_ns() + (int64_t)ms * 1000000,
                         s->retry_cb) < 0) {
        PyObject *exc = cm_exc_take();
        cm_redis_conn_close_fmt(c, st->redis.ConnectionError, 1, "redis %s: subscriber: %S",
                                cm_redis_conn_label(c), exc);
        Py_XDECREF(exc);
        return;
    }
    s->pinged = 1;
}

/* The timer: the keepalive while connected, else connect again on the
 * pool's loop. */
static PyObject *sub_on_retry(PyObject *token, PyObject *Py_UNUSED(unused))
{
    CmRedisSub *s = PyCapsule_GetContext(token);
    if (s == NULL || s->gone) {
        PyErr_Clear();
        Py_RETURN_NONE; /* freed or collected meanwhile */
    }
    Py_CLEAR(s->retry.handle);
    s->retry.at = 0;
    if (s->conn != NULL) {
        sub_keepalive(s);
        Py_RETURN_NONE;
    }
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
    int was_up = s->up;
    s->conn = NULL;
    s->id = 0;
    s->up = 0;
    s->pinged = 0;
    /* the keepalive goes with the connection (a detached close dropped it
     * before: its loop is not to be touched) */
    cm_net_timer_cancel(s->pool->st, &s->retry);
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
    s->gone = 1; /* the timer, if it fires, finds it so */
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
        s->pool->sub_of = NULL;
        if (s->conn != NULL) /* closing it tells no one */
            s->conn->sub = NULL;
        s->conn = NULL;
        cm_redis_pool_free(s->pool);
    }
    while (s->first != NULL)
        chan_free(s, s->first);
    free(s->buckets);
    held_clear(s);
    free(s->held);
    free(s->watch);
    free(s->track);
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

static void log_ready(void *arg, const char *channel, size_t len)
{
    PyObject *b = PyBytes_FromStringAndSize(channel, (Py_ssize_t)len);
    if (b == NULL)
        PyErr_WriteUnraisable(arg);
    else
        log_append(arg, "subscribed", b);
    Py_XDECREF(b);
}

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

/* The subscriber of the running loop's instance of *self (borrowed), made
 * if need be, and *self that instance; NULL with an exception (TypeError
 * when channel, unless NULL, is not bytes). */
static CmRedisSub *test_sub(CmRedisClientObject **self, const char *what, PyObject *channel)
{
    if (channel != NULL && !PyBytes_Check(channel)) {
        PyErr_Format(PyExc_TypeError, "%s: channel must be bytes, not %.100s", what,
                     Py_TYPE(channel)->tp_name);
        return NULL;
    }
    CmState *st = (*self)->st;
    PyObject *loop = cm_loop_running(st);
    CmRedisClientObject *c = loop ? cm_redis_client_for(*self, loop) : NULL; // borrowed
    Py_XDECREF(loop);
    if (c == NULL || cm_redis_client_check_open(c) < 0)
        return NULL;
    if (c->pool == NULL) {
        PyErr_Format(st->redis.Error, "%s: single server only", what);
        return NULL;
    }
    *self = c;
    return cm_redis_sub_of(c->pool);
}

PyObject *cm_redis_sub_listen(CmRedisClientObject *self, PyObject *channel)
{
    CmRedisSub *s = test_sub(&self, "_sub_listen", channel);
    if (s == NULL)
        return NULL;
    if (self->sub_log == NULL) {
        if ((self->sub_log = PyList_New(0)) == NULL)
            return NULL;
        if (cm_redis_sub_watch(s, log_state, self) < 0) {
            Py_CLEAR(self->sub_log);
            return NULL;
        }
    }
    PyObject *loop = cm_loop_running(self->st);
    int rc = loop == NULL ? -1
                          : cm_redis_sub_subscribe(s, loop, PyBytes_AS_STRING(channel),
                                                   (size_t)PyBytes_GET_SIZE(channel), log_message,
                                                   log_ready, self->sub_log);
    Py_XDECREF(loop);
    if (rc < 0)
        return NULL;
    if (rc == 1) /* in place already: no confirmation will say so */
        log_append(self->sub_log, "subscribed", channel);
    return Py_NewRef(self->sub_log);
}

/* The (log_message, sub_log) entries of _sub_listen, and the self-removing
 * one of _sub_listen_once (arg: the client, as log_state's). */
static void log_once(void *arg, PyObject *msg)
{
    CmRedisClientObject *self = arg; // borrowed: its subscriber goes with it
    if (self->sub_log == NULL || self->pool == NULL || self->pool->sub == NULL)
        return;
    log_append(self->sub_log, "once", msg);
    if (PyBytes_Check(msg)) /* the payload names the channel */
        cm_redis_sub_unsubscribe(self->pool->sub, PyBytes_AS_STRING(msg),
                                 (size_t)PyBytes_GET_SIZE(msg), log_once, self);
}

PyObject *cm_redis_sub_listen_once(CmRedisClientObject *self, PyObject *channel)
{
    CmRedisClientObject *inst = self; // borrowed: the running loop's instance
    CmRedisSub *s = test_sub(&inst, "_sub_listen_once", channel);
    if (s == NULL)
        return NULL;
    PyObject *log = cm_redis_sub_listen(self, channel); /* the log and its watcher */
    if (log == NULL)
        return NULL;
    PyObject *loop = cm_loop_running(self->st);
    int rc = loop == NULL
                 ? -1
                 : cm_redis_sub_subscribe(s, loop, PyBytes_AS_STRING(channel),
                                          (size_t)PyBytes_GET_SIZE(channel), log_once, NULL, inst);
    Py_XDECREF(loop);
    if (rc < 0)
        Py_CLEAR(log);
    return log;
}

PyObject *cm_redis_sub_unlisten(CmRedisClientObject *self, PyObject *channel)
{
    CmRedisSub *s = test_sub(&self, "_sub_unlisten", channel);
    if (s == NULL)
        return NULL;
    if (self->sub_log != NULL)
        cm_redis_sub_unsubscribe(s, PyBytes_AS_STRING(channel), (size_t)PyBytes_GET_SIZE(channel),
                                 log_message, self->sub_log);
    Py_RETURN_NONE;
}

PyObject *cm_redis_sub_hold(CmRedisClientObject *self, PyObject *on)
{
    int hold = PyObject_IsTrue(on);
    CmRedisSub *s = hold < 0 ? NULL : test_sub(&self, "_sub_hold", NULL);
    if (s == NULL)
        return NULL;
    size_t n = s->nheld;
    if (hold) {
        s->hold = 1;
        return PyLong_FromSize_t(n);
    }
    s->hold = 0;
    for (size_t i = 0; i < s->nheld; i++) {
        SubHeld *h = &s->held[i]; // borrowed
        if (s->conn != NULL && sub_send(s, h->cmd, h->name, h->len) < 0) {
            held_clear(s);
            PyObject *exc = cm_exc_take();
            cm_redis_conn_close(s->conn, s->pool->st->redis.ConnectionError, NULL, 0);
            cm_exc_restore(exc);
            return NULL;
        }
    }
    held_clear(s);
    return PyLong_FromSize_t(n);
}
