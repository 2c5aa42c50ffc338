/* Local tiers kept coherent across processes: RedisClient(tracking=True),
 * on Redis server-assisted client-side caching (CLIENT TRACKING, Redis 6+).
 *
 * What is tracked: each server (pool; every node of a cluster) has one
 * subscriber connection per process (redis/subscriber.h) that registers
 * itself: CLIENT TRACKING on REDIRECT <its own id> BCAST PREFIX "<prefix>:"
 * and SUBSCRIBE __redis__:invalidate. Every write under the key prefix, by
 * anyone, then comes to it as a message naming the key; FLUSHALL/FLUSHDB
 * as a nil message.
 *
 * Why BCAST on the subscriber and not the default mode on each data
 * connection: the default mode remembers, per connection, every key it read
 * (server memory per key and per connection, bounded by
 * tracking-table-max-keys, past which Redis invalidates keys early), must be
 * re-issued on each of up to pool_size connections after any reconnect of
 * either side, misses keys filled locally without a read (refresh), and
 * RESP2 cannot track on a connection that also subscribes. BCAST costs the
 * server one prefix entry per process and node, and its registration lives
 * and dies with the one connection that hears it: lost together, nothing in
 * between. Its price: a message for every write under the prefix, also the
 * process's own fills (they echo back and evict the copy just filled:
 * one more GET per key and fill). benchmarks/COHERENCE.md has the figures.
 *
 * What is evicted: the key named, from every LocalStore that sits in front
 * of this storage in a node's chain (node configs tell us through
 * flight/remote.h's cover, as they are built); Redis keys and local keys
 * are the same full key. A load in flight for the key will not fill
 * (cm_flight_invalidate): that is the read/invalidate race, a GET answered
 * before a write but read by us after the write's invalidation.
 *
 * Gaps: the subscriber lost (or not up yet) means writes unheard. Then each
 * request records at send whether tracking was up and under which epoch
 * (bumped on lost and on up): a reply from outside one unbroken up period
 * fills no local tier (cm_flight_unsure; Redis itself is filled as usual).
 * On lost every covered store is flushed and every flight made unsure; on
 * up again they are flushed once more (anything filled meanwhile was
 * unheard).
 *
 * set_prefix after first use: the next request of each server registers
 * the new prefix (the subscriber starts over: lost, flushed, up).
 *
 * Expiry: Redis deletes expired keys lazily or by sampling, so their
 * invalidation may come late; a covered local TTL is capped by the Redis
 * one (core/nodecfg.c). */
#include "redis/internal.h"
#include "redis/subscriber.h"

#include "core/store.h"
#include "flight/flight.h"

#define TRACK_CHANNEL "__redis__:invalidate"

static CmRedisClientObject *track_owner(CmRedisClientObject *c)
{
    return c->origin != NULL ? c->origin : c;
}

/* Evicting runs Python code (a value's __del__, which may close the
 * storage): the list and each store are held while used. */
static void covered_each(PyObject *covered, PyObject *key, Py_hash_t h)
{
    if (covered == NULL)
        return;
    Py_INCREF(covered);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(covered); i++) {
        PyObject *s = Py_NewRef(PyList_GET_ITEM(covered, i));
        if (key != NULL)
            cm_store_delete((CmStoreObject *)s, key, h);
        else
            cm_store_clear((CmStoreObject *)s);
        Py_DECREF(s);
    }
    Py_DECREF(covered);
}

/* Evict every covered local store and fail every flight's fill. */
static void track_flush(CmRedisPool *p)
{
    covered_each(track_owner(p->client)->covered, NULL, 0);
    cm_flight_unsure_all(p->st);
    p->track_flushes++;
}

static void track_key(CmRedisPool *p, PyObject *raw)
{
    if (!PyBytes_Check(raw))
        return;
    /* our keys are str; one that is not UTF-8 is none of ours */
    PyObject *key = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), NULL);
    Py_hash_t h = key != NULL ? PyObject_Hash(key) : -1;
    if (h == -1) {
        PyErr_Clear();
        Py_XDECREF(key);
        return;
    }
    covered_each(track_owner(p->client)->covered, key, h);
    cm_flight_invalidate(p->st, key, h);
    p->track_keys++;
    Py_DECREF(key);
}

/* A message on __redis__:invalidate: a list of keys, or nil (a flush);
 * one key as bytes (a PUBLISH to the channel) counts too. */
static void track_message(void *arg, PyObject *msg)
{
    CmRedisPool *p = arg; // borrowed: unwatched when it goes
    if (PyBytes_Check(msg)) {
        track_key(p, msg);
        return;
    }
    if (!PyList_Check(msg)) {
        track_flush(p);
        return;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(msg); i++)
        track_key(p, PyList_GET_ITEM(msg, i));
}

static void track_state(void *arg, int up)
{
    CmRedisPool *p = arg; // borrowed
    if (++p->track_epoch == 0)
        p->track_epoch = 1;
    p->track_up = up;
    track_flush(p);
}

int cm_redis_track_start(CmRedisPool *p, PyObject *loop)
{
    CmRedisSub *s = p->sub;
    if (s == NULL) {
        if ((s = cm_redis_sub_of(p)) == NULL)
            return -1;
        if (cm_redis_sub_watch(s, track_state, p) < 0 ||
            cm_redis_sub_subscribe(s, loop, TRACK_CHANNEL, sizeof(TRACK_CHANNEL) - 1, track_message,
                                   NULL, p) < 0)
            return -1;
    }
    Py_ssize_t n;
    const char *prefix = PyUnicode_AsUTF8AndSize(p->st->prefix, &n);
    if (prefix == NULL)
        return -1;
    char buf[256];
    if ((size_t)n + 2 > sizeof(buf)) {
        PyErr_Format(PyExc_ValueError, "redis tracking: key prefix longer than %d bytes",
                     (int)sizeof(buf) - 2);
        return -1;
    }
    memcpy(buf, prefix, (size_t)n);
    buf[n] = ':';
    /* another prefix (set_prefix after first use): the subscriber starts
     * over with it (lost, flushed, then up), the old one is not watched */
    if (cm_redis_sub_track(s, loop, buf, (size_t)n + 1) < 0)
        return -1;
    p->track_gen = p->st->generation;
    return 0;
}

void cm_redis_track_unsure(CmRedisEntry *e)
{
    if (e->cmd == CM_CMD_GETS) {
        for (uint32_t i = 0; i < e->npos; i++) {
            CmRedisOp *op = e->gets[i].op;
            PyObject *key = cm_redis_op_key(op, e->gets[i].pos); // borrowed
            if (PyUnicode_Check(key))
                cm_flight_unsure(op->client->st, key, PyObject_Hash(key));
        }
    } else if ((e->cmd == CM_CMD_GET || e->cmd == CM_CMD_MGET) && e->op != NULL) {
        for (uint32_t i = 0; i < e->npos; i++) {
            PyObject *key = cm_redis_op_key(e->op, cm_entry_position(e, i)); // borrowed
            if (PyUnicode_Check(key))
                cm_flight_unsure(e->op->client->st, key, PyObject_Hash(key));
        }
    }
    PyErr_Clear(); /* a hash cannot fail on a str; nothing to report */
}

/* flight/remote.h's cover: local sits in front of storage in a chain. */
int cm_redis_cover(PyObject *storage, PyObject *local)
{
    CmRedisClientObject *c = track_owner((CmRedisClientObject *)storage);
    if (!c->cfg.tracking)
        return 0;
    if (c->covered == NULL && (c->covered = PyList_New(0)) == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(c->covered); i++)
        if (PyList_GET_ITEM(c->covered, i) == local)
            return 1;
    return PyList_Append(c->covered, local) < 0 ? -1 : 1;
}

/* _tracking_info() (tests, benchmarks): the running loop's instance's
 * servers summed. */
PyObject *cm_redis_track_info(CmRedisClientObject *self, PyObject *Py_UNUSED(unused))
{
    CmState *st = self->st;
    PyObject *loop = cm_loop_running(st);
    if (loop == NULL || (self = cm_redis_client_for(self, loop)) == NULL) {
        Py_XDECREF(loop);
        return NULL;
    }
    Py_DECREF(loop);
    CmRedisPool *one[1] = {self->pool}, **pools = one;
    Py_ssize_t np = self->pool != NULL;
    if (self->cluster != NULL)
        np = cm_cluster_pools(self, &pools);
    long long up = 0, keys = 0, flushes = 0;
    unsigned long long visits = 0;
    PyObject *ids = PyList_New(0);
    for (Py_ssize_t i = 0; ids != NULL && i < np; i++) {
        CmRedisPool *p = pools[i]; // borrowed
        up += p->track_up;
        keys += p->track_keys;
        flushes += p->track_flushes;
        visits += p->sub ? cm_redis_sub_visits(p->sub) : 0;
        long long id = p->sub ? cm_redis_sub_client_id(p->sub) : 0;
        PyObject *v = id ? PyLong_FromLongLong(id) : NULL;
        if (id && (v == NULL || PyList_Append(ids, v) < 0))
            Py_CLEAR(ids);
        Py_XDECREF(v);
    }
    if (ids == NULL)
        return NULL;
    PyObject *covered = track_owner(self)->covered; // borrowed
    return Py_BuildValue("{sLsLsLsNsnsK}", "up", up, "invalidated_keys", keys, "flushes", flushes,
                         "subscriber_ids", ids, "covered_stores",
                         covered ? PyList_GET_SIZE(covered) : (Py_ssize_t)0, "subscriber_visits",
                         visits);
}

/* _tracking_inject(msg) (tests): msg handled as if every server of the
 * running loop's instance had sent it on __redis__:invalidate (the order of
 * an invalidation and a reply, which sockets do not let a test choose). */
PyObject *cm_redis_track_inject(CmRedisClientObject *self, PyObject *msg)
{
    PyObject *loop = cm_loop_running(self->st);
    if (loop == NULL || (self = cm_redis_client_for(self, loop)) == NULL) {
        Py_XDECREF(loop);
        return NULL;
    }
    Py_DECREF(loop);
    if (!PyBytes_Check(msg) && !PyList_Check(msg) && msg != Py_None) {
        PyErr_Format(PyExc_TypeError, "_tracking_inject: bytes, list or None, not %.100s",
                     Py_TYPE(msg)->tp_name);
        return NULL;
    }
    CmRedisPool *one[1] = {self->pool}, **pools = one;
    Py_ssize_t np = self->pool != NULL;
    if (self->cluster != NULL)
        np = cm_cluster_pools(self, &pools);
    for (Py_ssize_t i = 0; i < np; i++)
        track_message(pools[i], msg);
    Py_RETURN_NONE;
}
