/* Leases (`Storage(url="redis://...", lease=timedelta(seconds=N))`): one
 * load per key across every process sharing the Redis.
 *
 * The anchor is memcache's leases (Nishtala et al., "Scaling Memcache at
 * Facebook", NSDI 2013): on a miss one client gets the right to fill, the
 * others wait for its value instead of all loading. Here, when a flight
 * missed every remote cache, it sends `SET <key>:lease <token> NX PX <ms>`.
 *
 *   - Got it (OK): the flight loads and fills as without a lease, then
 *     gives it up with one script: delete the lease if the token is still
 *     ours (an expired lease retaken by another process is not touched),
 *     and PUBLISH on the lease key's channel.
 *   - Did not: subscribe to that channel and, once the SUBSCRIBE is
 *     confirmed, GET the value once (a fill that landed before the
 *     subscription was in place is not missed: the SUBSCRIBE goes out on
 *     the subscriber connection and the GET on a pool connection, so the
 *     server could run the GET first, and a PUBLISH in between would reach
 *     nobody), then wait. A
 *     message means the holder is done: GET again; still a miss (its load
 *     failed) means take the lease anew. A timer at the lease's PTTL
 *     covers a holder that died: when it fires, try to take the lease (one
 *     waiter wins, the others keep waiting).
 *
 * Why pub/sub: a waiter must not poll (cashews' lock polls), must not hold
 * a connection per waiting key (a blocking command such as BLPOP on a
 * per-key list would, and its list must be written once per waiter), and
 * must hear of a fill made by any process. Keyspace notifications need the
 * server's notify-keyspace-events setting, and client tracking would
 * notify only keys this process read, with a per-server cost. One PUBLISH
 * per lease and one SUBSCRIBE per waiting key on the one subscriber
 * connection of the process (redis/subscriber.h) cost little, and the
 * in-process singleflight makes one waiter per key per process. Messages
 * lost while the subscriber reconnects are covered by the PTTL timer.
 *
 * On a cluster the lease key must live in the value key's slot (the value
 * key is what 0.3.0 writes and cannot change): `<key>:lease` when that
 * hashes to the same slot (the key has a hash tag), else `{<key>}:lease`,
 * else a short tag found for the slot (cm_redis_lease_key). PUBLISH reaches
 * every node's subscribers.
 *
 * A lease object serves one flight: it is the awaitable's result while the
 * flight holds the lease, and its callbacks (replies, timer, messages) hold
 * it while it works. */
#include "redis/lease_obj.h"

#include "redis/internal.h"
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "core/key.h"
#include "redis/crc16.h"
#include "redis/subscriber.h"

static const char release_script[] =
    "if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end "
    "redis.call('publish', KEYS[1], '1') return 1";

/* ------------------------------------------------------------------ */
/* the lease key                                                      */

static PyObject *key_with(const char *pre, const char *key, size_t len, const char *post)
{
    size_t a = strlen(pre), z = strlen(post);
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(a + len + z));
    if (b != NULL) {
        char *p = PyBytes_AS_STRING(b);
        memcpy(p, pre, a);
        memcpy(p + a, key, len);
        memcpy(p + a + len, post, z);
    }
    return b;
}

static int same_slot(PyObject *b, unsigned slot)
{
    return cm_key_slot(PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b)) == slot;
}

PyObject *cm_redis_lease_key(const char *key, size_t len, int cluster)
{
    if (!cluster)
        return key_with("", key, len, ":lease");
    unsigned slot = cm_key_slot(key, len);
    PyObject *b = key_with("", key, len, ":lease");
    if (b == NULL || same_slot(b, slot))
        return b;
    Py_SETREF(b, key_with("{", key, len, "}:lease"));
    if (b == NULL || same_slot(b, slot))
        return b;
    /* the key has a '}' but no hash tag: a tag of our own that hashes to its
     * slot, in front (CRC16 spreads short decimal strings over every slot,
     * so the search ends within a few ten thousand tries) */
    for (unsigned long n = 0; n < 10000000UL; n++) {
        char tag[32];
        snprintf(tag, sizeof(tag), "{%lu}:", n);
        if (cm_key_slot(tag + 1, strlen(tag) - 3) != slot)
            continue;
        Py_SETREF(b, key_with(tag, key, len, ":lease"));
        return b;
    }
    Py_DECREF(b);
    PyErr_SetString(PyExc_SystemError, "cacheme redis lease: no tag for the key's slot");
    return NULL;
}

/* 16 random bytes as hex: a holder's token. */
static PyObject *new_token(void)
{
    static unsigned long long counter;
    unsigned char raw[16];
    if (getrandom(raw, sizeof(raw), GRND_NONBLOCK) != (ssize_t)sizeof(raw)) {
        /* no entropy yet (early boot): pid, time and a counter are unique */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        unsigned long long v[2] = {((unsigned long long)getpid() << 32) ^
                                       (unsigned long long)ts.tv_nsec,
                                   ((unsigned long long)ts.tv_sec << 20) ^ ++counter};
        memcpy(raw, v, sizeof(raw));
    }
    char hex[33];
    for (int i = 0; i < 16; i++)
        snprintf(hex + 2 * i, 3, "%02x", raw[i]);
    return PyBytes_FromStringAndSize(hex, 32);
}

/* ------------------------------------------------------------------ */
/* the lease's steps                                                  */

static void stop_timer(CmLeaseObject *self)
{
    if (self->timer != NULL) {
        cm_handle_cancel(self->st, self->timer);
        Py_CLEAR(self->timer);
    }
}

/* The lease's loop's instance of its storage (borrowed), or NULL with an
 * exception (closed). */
static CmRedisClientObject *lease_client(CmLeaseObject *self)
{
    CmRedisClientObject *c = (CmRedisClientObject *)self->client;
    if (cm_redis_client_check_open(c) < 0 || (c = cm_redis_client_for(c, self->loop)) == NULL ||
        cm_redis_client_check_open(c) < 0)
        return NULL;
    return c;
}

/* The subscriber of the server that holds the lease key, on the lease's
 * loop (borrowed), made if need be; NULL with an exception. Found anew each
 * time rather than kept: a closed storage frees its pools and their
 * subscribers. */
static CmRedisSub *lease_sub(CmLeaseObject *self)
{
    CmRedisClientObject *c = lease_client(self);
    if (c == NULL)
        return NULL;
    CmRedisPool *pool = c->pool; // borrowed
    if (c->cluster != NULL) {
        uint16_t node;
        unsigned slot =
            cm_key_slot(PyBytes_AS_STRING(self->lkey), (size_t)PyBytes_GET_SIZE(self->lkey));
        if ((pool = cm_cluster_route(c, slot, &node)) == NULL)
            return NULL;
    }
    return cm_redis_sub_of(pool);
}

static void on_message(void *arg, PyObject *msg);
static void on_subscribed(void *arg, const char *channel, size_t len);

/* Stop listening (messages, timer). The subscription is dropped from every
 * server's subscriber, not only the one the lease key routes to now: the
 * slot may have moved since (an entry left behind would name this lease
 * once it is freed). */
void cm_rlease_quiet(CmLeaseObject *self)
{
    stop_timer(self);
    if (!self->listen)
        return;
    self->listen = 0;
    CmRedisClientObject *c = lease_client(self); // borrowed
    if (c == NULL) {
        PyErr_Clear(); /* closed: its subscribers are freed */
    } else {
        CmRedisPool *one[1] = {c->pool}, **pools = one;
        Py_ssize_t np = c->pool != NULL;
        for (Py_ssize_t i = 0;; i++) {
            if (c->cluster != NULL) /* read again: an unsubscribe may close a connection */
                np = cm_cluster_pools(c, &pools);
            if (i >= np)
                break;
            if (pools[i]->sub != NULL)
                cm_redis_sub_unsubscribe(pools[i]->sub, PyBytes_AS_STRING(self->lkey),
                                         (size_t)PyBytes_GET_SIZE(self->lkey), on_message, self);
        }
    }
    Py_DECREF(self); /* the subscription's reference; a caller holds another */
}

/* The flight gets (lease, value), or exc (borrowed): the lease stops. */
static void finish(CmLeaseObject *self, PyObject *lease, PyObject *value, PyObject *exc)
{
    CmState *st = self->st;
    cm_rlease_quiet(self);
    self->state = lease != Py_None ? L_HELD : L_DONE;
    if (self->group != NULL) {
        cm_rlease_group_put(self, lease, value, exc);
        return;
    }
    int done = cm_future_done(st, self->fut);
    if (done != 0) {
        if (done < 0)
            PyErr_WriteUnraisable((PyObject *)self);
        if (lease != Py_None) /* the flight left: nobody loads under it */
            cm_rlease_release(self);
        return;
    }
    int rc;
    if (exc != NULL) {
        rc = cm_future_set_exception(st, self->fut, exc);
    } else {
        PyObject *res = PyTuple_Pack(2, lease, value);
        rc = res ? cm_future_set_result(st, self->fut, res) : -1;
        Py_XDECREF(res);
    }
    if (rc < 0)
        PyErr_WriteUnraisable((PyObject *)self);
}

/* The flight gets the exception being raised (cleared). */
static void fail(CmLeaseObject *self)
{
    PyObject *e = cm_exc_take();
    finish(self, Py_None, Py_None, e);
    Py_XDECREF(e);
}

/* The lease became ours: counted on the client until given back. */
static void own(CmLeaseObject *self)
{
    if (!self->owned) {
        self->owned = 1;
        self->forks = self->st->forks;
        ((CmRedisClientObject *)self->client)->leases_out++;
    }
}

/* A drain future's loop runs this (call_soon_threadsafe): done now. */
static PyObject *drain_fire(PyObject *client, PyObject *fut)
{
    CmState *st = ((CmRedisClientObject *)client)->st;
    int done = cm_future_done(st, fut);
    if (done < 0 || (done == 0 && cm_future_set_result(st, fut, Py_None) < 0))
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef drain_fire_def = {"_lease_drained", drain_fire, METH_O, NULL};

/* Every lease is given back: each drain future is completed by its own
 * loop (close() may run on several loops in several threads; the last
 * release is answered on any of them). */
static void drained(CmRedisClientObject *c)
{
    PyObject *drains = c->lease_drain; /* list of (loop, future) */
    c->lease_drain = NULL;
    PyObject *exc = cm_exc_take(); /* a dealloc may run with one set */
    PyObject *cb = PyCFunction_New(&drain_fire_def, (PyObject *)c);
    if (cb == NULL)
        PyErr_WriteUnraisable(drains);
    for (Py_ssize_t i = 0; cb != NULL && i < PyList_GET_SIZE(drains); i++) {
        PyObject *d = PyList_GET_ITEM(drains, i); // borrowed
        if (cm_loop_call_soon_threadsafe_arg(c->st, PyTuple_GET_ITEM(d, 0), cb,
                                             PyTuple_GET_ITEM(d, 1), NULL) < 0) {
            /* a closed loop: nobody awaits its future any more */
            if (PyErr_ExceptionMatches(PyExc_RuntimeError))
                PyErr_Clear();
            else
                PyErr_WriteUnraisable(cb);
        }
    }
    Py_XDECREF(cb);
    Py_DECREF(drains);
    cm_exc_restore(exc);
}

/* Given back (its release answered or not sendable, or the lease object
 * gone: it expires by itself): close() waits no more for it. */
static void disown(CmLeaseObject *self)
{
    if (!self->owned)
        return;
    self->owned = 0;
    if (self->forks != self->st->forks)
        return; /* the parent's (inherited over fork): not counted here */
    CmRedisClientObject *c = (CmRedisClientObject *)self->client; // borrowed
    if (--c->leases_out == 0 && c->lease_drain != NULL)
        drained(c);
}

/* Hear the reply of fut (stolen; NULL: the call failed) in on_reply, in
 * state. 0, or -1 with an exception. */
static int await_reply(CmLeaseObject *self, int state, PyObject *fut)
{
    if (fut == NULL)
        return -1;
    int rc = cm_future_add_done_callback_own_context(self->st, fut, self->on_reply);
    Py_DECREF(fut);
    if (rc == 0)
        self->sent = self->state = state;
    return rc;
}

/* Send argv (stolen; routed by the lease key). 0, or -1 with an exception. */
static int send_cmd(CmLeaseObject *self, int state, PyObject *argv)
{
    if (argv == NULL)
        return -1;
    PyObject *fut = cm_redis_execute_at((CmRedisClientObject *)self->client, argv, self->lkey);
    Py_DECREF(argv);
    return await_reply(self, state, fut);
}

int cm_rlease_try(CmLeaseObject *self)
{
    CmRedisClientObject *c = (CmRedisClientObject *)self->client;
    char ms[32];
    snprintf(ms, sizeof(ms), "%lld", c->cfg.lease_ms);
    return send_cmd(self, L_TRY,
                    Py_BuildValue("(yOOyyy)", "SET", self->lkey, self->token, "NX", "PX", ms));
}

static int step_check(CmLeaseObject *self, int state)
{
    PyObject *args[2] = {self->node, self->ser};
    self->woken = 0; /* what wakes it from now on may not be in this read */
    return await_reply(self, state,
                       cm_redis_client_get((CmRedisClientObject *)self->client, args, 2, NULL));
}

static int step_ttl(CmLeaseObject *self)
{
    return send_cmd(self, L_TTL, Py_BuildValue("(yO)", "PTTL", self->lkey));
}

/* Wait for a message, or for the lease to expire in ms. */
static int step_idle(CmLeaseObject *self, long long ms)
{
    if (ms < 1)
        ms = 1;
    stop_timer(self);
    self->timer = cm_loop_call_later(self->st, self->loop, (double)ms / 1000.0, self->on_timer);
    if (self->timer == NULL)
        return -1;
    self->state = L_IDLE;
    return 0;
}

/* Subscribe to the lease key's channel (one waiter per key per process:
 * the singleflight's); the value is read again once the subscription is in
 * place (on_subscribed), now if it is already. 0, or -1 with an exception. */
static int subscribe_key(CmLeaseObject *self)
{
    if (self->listen)
        return step_check(self, L_CHECK);
    CmRedisSub *s = lease_sub(self); // borrowed
    if (s == NULL)
        return -1;
    int rc = cm_redis_sub_subscribe(s, self->loop, PyBytes_AS_STRING(self->lkey),
                                    (size_t)PyBytes_GET_SIZE(self->lkey), on_message, on_subscribed,
                                    self);
    if (rc < 0) {
        /* a subscriber that failed to start keeps its entries for its next
         * start: this one names the lease, which holds no reference for it */
        PyObject *e = cm_exc_take();
        cm_redis_sub_unsubscribe(s, PyBytes_AS_STRING(self->lkey),
                                 (size_t)PyBytes_GET_SIZE(self->lkey), on_message, self);
        cm_exc_restore(e);
        return -1;
    }
    self->listen = 1;
    Py_INCREF(self); /* the subscriber's arg */
    if (rc == 1)
        return step_check(self, L_CHECK);
    /* a confirmation that never comes (the subscriber down, the channel
     * refused) waits no longer than a lease lives: then it reads anyway */
    if (step_idle(self, ((CmRedisClientObject *)self->client)->cfg.lease_ms) < 0)
        return -1;
    self->state = L_SUB;
    return 0;
}

/* Something happened to the key: read it again now, or as soon as the
 * command out is answered. */
static void wake(CmLeaseObject *self)
{
    if (self->state != L_IDLE) {
        self->woken = 1;
        return;
    }
    stop_timer(self);
    if (step_check(self, L_CHECK) < 0)
        fail(self);
}

/* A message on the lease key's channel: its holder is done. */
static void on_message(void *arg, PyObject *msg)
{
    (void)msg;
    CmLeaseObject *self = (CmLeaseObject *)arg;
    Py_INCREF(self);
    wake(self);
    Py_DECREF(self);
}

/* The SUBSCRIBE of the lease key's channel is confirmed: the first read
 * goes out now; after a reconnect (messages published while the subscriber
 * was down are lost; the expiry timer covered the gap) read again. */
static void on_subscribed(void *arg, const char *channel, size_t len)
{
    (void)channel;
    (void)len;
    CmLeaseObject *self = (CmLeaseObject *)arg;
    Py_INCREF(self);
    if (self->state == L_SUB) {
        stop_timer(self);
        if (step_check(self, L_CHECK) < 0)
            fail(self);
    } else {
        wake(self);
    }
    Py_DECREF(self);
}

/* Give the lease up: delete it if still ours, and wake the waiters. */
void cm_rlease_release(CmLeaseObject *self)
{
    if (self->owned && self->forks != self->st->forks) {
        /* inherited over fork: the parent holds it and gives it back */
        self->state = L_DONE;
        disown(self);
        return;
    }
    PyObject *argv = Py_BuildValue("(yyyOO)", "EVAL", release_script, "1", self->lkey, self->token);
    if (send_cmd(self, L_RELEASE, argv) < 0) {
        /* no loop running any more (teardown): the lease expires by itself */
        PyErr_Clear();
        self->state = L_DONE;
        disown(self);
    }
}

/* The reply to the command sent in state self->sent: the next step. */
static int advance(CmLeaseObject *self, PyObject *r)
{
    switch (self->sent) {
    case L_TRY:
        if (PyUnicode_Check(r)) { /* +OK */
            own(self);
            return step_check(self, L_VERIFY);
        }
        return subscribe_key(self);
    case L_VERIFY:
        /* a holder that finished after the flight's read and before our
         * SET filled it: loading again would be a second load */
        if (r != self->st->sentinel) {
            finish(self, Py_None, r, NULL);
            cm_rlease_release(self);
        } else {
            finish(self, (PyObject *)self, Py_None, NULL);
        }
        return 0;
    case L_CHECK:
        if (r != self->st->sentinel) {
            finish(self, Py_None, r, NULL);
            return 0;
        }
        return self->woken ? step_check(self, L_CHECK) : step_ttl(self);
    case L_TTL: {
        long long ms = PyLong_Check(r) ? PyLong_AsLongLong(r) : -1;
        if (ms == -1 && PyErr_Occurred())
            return -1;
        if (self->woken) /* the holder finished meanwhile */
            return step_check(self, L_CHECK);
        if (ms == -2) /* gone: released or expired */
            return cm_rlease_try(self);
        return step_idle(self, ms >= 0 ? ms : ((CmRedisClientObject *)self->client)->cfg.lease_ms);
    }
    }
    return 0;
}

static PyObject *lease_on_reply(PyObject *op, PyObject *req)
{
    CmLeaseObject *self = (CmLeaseObject *)op;
    PyObject *r = cm_future_result(self->st, req);
    if (self->state == L_RELEASE || self->state == L_DONE) {
        /* the release answered, or the flight left while this was out: a
         * lease we got then is nobody's, give it back */
        int got =
            self->state == L_DONE &&
            ((self->sent == L_TRY && r != NULL && PyUnicode_Check(r)) || self->sent == L_VERIFY);
        if (got) /* counted already when sent in L_VERIFY (advance) */
            own(self);
        Py_XDECREF(r);
        PyErr_Clear();
        int released = self->state == L_RELEASE;
        self->state = L_DONE;
        if (got)
            cm_rlease_release(self);
        else if (released)
            disown(self);
        Py_RETURN_NONE;
    }
    if (r == NULL || advance(self, r) < 0)
        fail(self);
    Py_XDECREF(r);
    Py_RETURN_NONE;
}

static PyObject *lease_on_timer(PyObject *op, PyObject *Py_UNUSED(unused))
{
    CmLeaseObject *self = (CmLeaseObject *)op;
    Py_CLEAR(self->timer);
    /* the lease expired (its holder died), or its message was lost: the
     * value, else the lease */
    if ((self->state == L_IDLE || self->state == L_SUB) && step_check(self, L_CHECK) < 0)
        fail(self);
    Py_RETURN_NONE;
}

/* The flight's future is done: by finish(), or cancelled (the flight left). */
static PyObject *lease_on_fut(PyObject *op, PyObject *Py_UNUSED(fut))
{
    CmLeaseObject *self = (CmLeaseObject *)op;
    if (self->members != NULL) {
        cm_rlease_group_left(self);
    } else if (self->state != L_HELD && self->state != L_RELEASE) {
        cm_rlease_quiet(self);
        self->state = L_DONE;
    }
    Py_RETURN_NONE;
}

static PyMethodDef lease_on_reply_def = {"_on_reply", lease_on_reply, METH_O, NULL};
static PyMethodDef lease_on_timer_def = {"_on_timer", lease_on_timer, METH_NOARGS, NULL};
static PyMethodDef lease_on_fut_def = {"_on_fut", lease_on_fut, METH_O, NULL};

CmLeaseObject *cm_rlease_alloc(CmState *st)
{
    CmLeaseObject *self = PyObject_GC_New(CmLeaseObject, (PyTypeObject *)st->redis.LeaseType);
    if (self == NULL)
        return NULL;
    memset((char *)self + offsetof(CmLeaseObject, st), 0,
           sizeof(CmLeaseObject) - offsetof(CmLeaseObject, st));
    self->st = cm_state_hold(st);
    PyObject_GC_Track(self);
    return self;
}

CmLeaseObject *cm_rlease_new(CmState *st, PyObject *storage, PyObject *node, PyObject *ser,
                             PyObject *loop)
{
    CmRedisClientObject *c = (CmRedisClientObject *)storage;
    PyObject *key = cm_key_of_node(st, node);
    if (key == NULL)
        return NULL;
    CmLeaseObject *self = cm_rlease_alloc(st);
    if (self == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    self->client = Py_NewRef(storage);
    self->node = Py_NewRef(node);
    self->ser = Py_NewRef(ser);
    self->loop = Py_NewRef(loop);
    Py_ssize_t klen;
    const char *k = PyUnicode_AsUTF8AndSize(key, &klen);
    if (k == NULL ||
        (self->lkey = cm_redis_lease_key(k, (size_t)klen, c->cluster != NULL)) == NULL ||
        (self->token = new_token()) == NULL ||
        (self->on_reply = PyCFunction_New(&lease_on_reply_def, (PyObject *)self)) == NULL ||
        (self->on_timer = PyCFunction_New(&lease_on_timer_def, (PyObject *)self)) == NULL ||
        (self->on_fut = PyCFunction_New(&lease_on_fut_def, (PyObject *)self)) == NULL)
        Py_CLEAR(self);
    Py_DECREF(key);
    return self;
}

int cm_rlease_watch_fut(CmLeaseObject *self)
{
    if (self->on_fut == NULL &&
        (self->on_fut = PyCFunction_New(&lease_on_fut_def, (PyObject *)self)) == NULL)
        return -1;
    return cm_future_add_done_callback_own_context(self->st, self->fut, self->on_fut);
}

/* ------------------------------------------------------------------ */
/* the flight's lease ops                                             */

PyObject *cm_redis_lease_acquire(CmState *st, PyObject *storage, PyObject *node, PyObject *ser)
{
    CmRedisClientObject *c = (CmRedisClientObject *)storage;
    CmLeaseObject *self = NULL;
    PyObject *loop = NULL, *out = NULL;
    if (c->cfg.lease_ms <= 0)
        Py_RETURN_NONE;
    if ((loop = cm_loop_running(st)) == NULL ||
        (self = cm_rlease_new(st, storage, node, ser, loop)) == NULL ||
        (self->fut = cm_loop_create_future(st, loop)) == NULL)
        goto done;
    if (cm_rlease_try(self) < 0)
        goto done;
    if (cm_rlease_watch_fut(self) < 0) {
        self->state = L_DONE; /* the SET's reply gives back what it got */
        goto done;
    }
    out = Py_NewRef(self->fut);
done:
    Py_XDECREF(loop);
    Py_XDECREF(self);
    return out;
}

void cm_redis_lease_release(CmState *st, PyObject *lease)
{
    (void)st;
    CmLeaseObject *self = (CmLeaseObject *)lease;
    if (self->state == L_HELD)
        cm_rlease_release(self);
    Py_DECREF(lease);
}

/* ------------------------------------------------------------------ */
/* the type                                                           */

static int lease_traverse(PyObject *op, visitproc visit, void *arg)
{
    CmLeaseObject *self = (CmLeaseObject *)op;
    Py_VISIT(Py_TYPE(op));
    CM_STATE_VISIT(self->st);
    Py_VISIT(self->client);
    Py_VISIT(self->node);
    Py_VISIT(self->ser);
    Py_VISIT(self->loop);
    Py_VISIT(self->fut);
    Py_VISIT(self->timer);
    Py_VISIT(self->on_reply);
    Py_VISIT(self->on_timer);
    Py_VISIT(self->on_fut);
    Py_VISIT(self->group);
    Py_VISIT(self->members);
    Py_VISIT(self->results);
    return 0;
}

static int lease_clear(PyObject *op)
{
    CmLeaseObject *self = (CmLeaseObject *)op;
    if (self->client != NULL)
        disown(self); /* never given back: it expires by itself */
    Py_CLEAR(self->client);
    Py_CLEAR(self->node);
    Py_CLEAR(self->ser);
    Py_CLEAR(self->lkey);
    Py_CLEAR(self->token);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->fut);
    Py_CLEAR(self->timer);
    Py_CLEAR(self->on_reply);
    Py_CLEAR(self->on_timer);
    Py_CLEAR(self->on_fut);
    Py_CLEAR(self->group);
    Py_CLEAR(self->members);
    Py_CLEAR(self->results);
    return 0;
}

static void lease_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    CmState *st = ((CmLeaseObject *)op)->st;
    PyObject_GC_UnTrack(op);
    lease_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
    cm_state_release(st);
}

static PyType_Slot lease_slots[] = {
    {Py_tp_traverse, lease_traverse},
    {Py_tp_clear, lease_clear},
    {Py_tp_dealloc, lease_dealloc},
    {Py_tp_doc, "A key's load lease in Redis, held or waited for by one flight."},
    {0, NULL},
};

static PyType_Spec lease_spec = {
    .name = "cacheme._core._RedisLease",
    .basicsize = sizeof(CmLeaseObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = lease_slots,
};

int cm_redis_lease_init(PyObject *mod, CmState *st)
{
    st->redis.LeaseType = PyType_FromModuleAndSpec(mod, &lease_spec, NULL);
    return st->redis.LeaseType ? 0 : -1;
}

PyObject *cm_redis_lease_drain(PyObject *self, PyObject *Py_UNUSED(unused))
{
    CmRedisClientObject *c = (CmRedisClientObject *)self;
    if (c->leases_out <= 0)
        Py_RETURN_NONE;
    PyObject *loop = cm_loop_running(c->st), *fut = NULL, *d = NULL;
    if (loop == NULL || (fut = cm_loop_create_future(c->st, loop)) == NULL ||
        (d = PyTuple_Pack(2, loop, fut)) == NULL)
        goto fail;
    if (c->lease_drain == NULL && (c->lease_drain = PyList_New(0)) == NULL)
        goto fail;
    if (PyList_Append(c->lease_drain, d) < 0)
        goto fail;
    Py_DECREF(d);
    Py_DECREF(loop);
    return fut;
fail:
    Py_XDECREF(d);
    Py_XDECREF(fut);
    Py_XDECREF(loop);
    return NULL;
}

PyObject *cm_redis_lease_key_method(PyObject *self, PyObject *key)
{
    Py_ssize_t len;
    const char *k = PyUnicode_AsUTF8AndSize(key, &len);
    if (k == NULL)
        return NULL;
    return cm_redis_lease_key(k, (size_t)len, ((CmRedisClientObject *)self)->cluster != NULL);
}
