/* A pub/sub connection per Redis server (pool) and process: any channel can
 * be subscribed or unsubscribed at any time, each with a C callback, and
 * watchers hear when the connection is lost and when it is back.
 *
 * Why one connection of its own: a connection in subscribe mode (RESP2)
 * takes no other command, so it cannot be one of the pool's. It is a
 * CmRedisConnObject in a pool of its own (redis/conn.c on net/: connect,
 * TLS, AUTH/SELECT, the loop binding, the after-fork and closed-loop rules,
 * backoff) whose replies, past AUTH/SELECT, are read here rather than
 * matched to requests. On open it sends CLIENT ID; once that is answered,
 * CLIENT TRACKING when asked for (cm_redis_sub_track: it must precede the
 * first SUBSCRIBE), SUBSCRIBE of every channel, and a PING whose answer
 * makes it up (watchers told up=1). Then a PING every `timeout`: the setup
 * or a PING not answered within `timeout` closes it as lost (a stopped
 * server or a silent partition would otherwise keep it "up" and deaf).
 *
 * Lost (the server failed, or closed it): watchers are told (up=0) at once,
 * and a timer reconnects at the pool's backoff (net/pool.h), then sets up
 * anew as above. Messages published while it was down are lost: that is
 * what the "lost" event is for. Closed without a failure (storage closed, event loop
 * changed or closed, forked child): nothing is re-armed; the next
 * cm_redis_sub_start (any subscribe does one) connects on the caller's loop.
 *
 * Callbacks run from the loop's reader callback with no exception set; they
 * must not raise (clear what they cause) and may subscribe, unsubscribe or
 * watch from inside. Everything here is single-threaded (the GIL and the
 * pool's loop). */
#ifndef CM_REDIS_SUBSCRIBER_H
#define CM_REDIS_SUBSCRIBER_H
#include "redis/redis.h"

#include <stddef.h>

typedef struct CmRedisSub CmRedisSub;

/* A message on a channel: msg is the parsed payload (borrowed): bytes for a
 * PUBLISH; for __redis__:invalidate a list of bytes (the keys) or None (a
 * flush, or tracking lost by the server). */
typedef void (*CmRedisSubMsgFn)(void *arg, PyObject *msg);
/* The channel's SUBSCRIBE is confirmed: from now on every PUBLISH to it
 * reaches fn, so a read sent after this cannot miss a write whose message
 * was published before the subscription was in place. Told again after each
 * reconnect (messages published while it was down are lost). */
typedef void (*CmRedisSubReadyFn)(void *arg, const char *channel, size_t len);
/* The connection is up (1: CLIENT ID answered, then the tracking and the
 * SUBSCRIBE of every channel done: a PING sent after them answered) or lost
 * (0). */
typedef void (*CmRedisSubStateFn)(void *arg, int up);

/* The subscriber of pool p (one Redis server), made on first use (it does
 * not connect yet); freed with the pool. NULL with MemoryError. */
CmRedisSub *cm_redis_sub_of(CmRedisPool *p);
/* Connect on loop unless connected or connecting (or backing off: the
 * retry timer connects then). 0, or -1 with an exception. */
int cm_redis_sub_start(CmRedisSub *s, PyObject *loop);
/* Call fn(arg, msg) for every message on channel (len bytes); the same
 * channel may have several (fn, arg). SUBSCRIBE is sent for its first one
 * (and connects: cm_redis_sub_start). ready (may be NULL) is called once the
 * channel's SUBSCRIBE is confirmed (CmRedisSubReadyFn), not from inside
 * this call: 1 when it is in place already (ready is not called until a
 * reconnect), 0 when ready will be called, or -1 with an exception. */
int cm_redis_sub_subscribe(CmRedisSub *s, PyObject *loop, const char *channel, size_t len,
                           CmRedisSubMsgFn fn, CmRedisSubReadyFn ready, void *arg);
/* Forget (fn, arg) on channel; UNSUBSCRIBE when it was the last one. */
void cm_redis_sub_unsubscribe(CmRedisSub *s, const char *channel, size_t len, CmRedisSubMsgFn fn,
                              void *arg);
/* Keys tracked by the connection itself: once its id is known, before it
 * subscribes, it sends CLIENT TRACKING on REDIRECT <its own id> BCAST
 * PREFIX <prefix>, so that every write under prefix comes to it as a message
 * on __redis__:invalidate (subscribe to it to hear them); kept across
 * reconnects. A connection already set up starts over. Connects (as
 * cm_redis_sub_start). 0, or -1 with an exception. */
int cm_redis_sub_track(CmRedisSub *s, PyObject *loop, const char *prefix, size_t len);
/* Be told of lost / up; 0, or -1 with MemoryError. */
int cm_redis_sub_watch(CmRedisSub *s, CmRedisSubStateFn fn, void *arg);
void cm_redis_sub_unwatch(CmRedisSub *s, CmRedisSubStateFn fn, void *arg);
/* The connection's CLIENT ID while it is up, 0 otherwise. */
long long cm_redis_sub_client_id(const CmRedisSub *s);

/* _sub_listen(channel) of RedisClient (tests): subscribe the running
 * loop's instance (single server) to channel; the list returned collects
 * ("message", payload), ("subscribed", channel), ("up", client id) and
 * ("lost", 0). */
PyObject *cm_redis_sub_listen(CmRedisClientObject *self, PyObject *channel);
/* _sub_hold(on) of RedisClient (tests): while on, the subscriber of the
 * running loop's instance (single server) keeps its SUBSCRIBEs and
 * UNSUBSCRIBEs unsent (the order of a subscription and a read on another
 * connection, which sockets do not let a test choose); off sends them.
 * Returns how many are held (on) or were sent (off). */
PyObject *cm_redis_sub_hold(CmRedisClientObject *self, PyObject *on);
/* _sub_unlisten(channel) of RedisClient (tests): drop one of the entries
 * _sub_listen(channel) made (the first); UNSUBSCRIBE when it was the last of
 * the channel's. */
PyObject *cm_redis_sub_unlisten(CmRedisClientObject *self, PyObject *channel);
/* _sub_listen_once(channel) of RedisClient (tests): _sub_listen(channel),
 * then one more entry of the channel that logs ("once", payload) and
 * unsubscribes itself, from inside that callback, from the channel that
 * the payload names. Returns the log. */
PyObject *cm_redis_sub_listen_once(CmRedisClientObject *self, PyObject *channel);
/* The channels and entries looked at so far by the subscriber's operations
 * (tests: _tracking_info's subscriber_visits; a count, not a time, that
 * shows what an operation costs). */
unsigned long long cm_redis_sub_visits(const CmRedisSub *s);

/* For the driver (pool.c, conn.c, client.c). */
/* A reply on the subscriber's connection c past its AUTH/SELECT (stolen). */
void cm_redis_sub_reply(CmRedisSub *s, CmRedisConnObject *c, PyObject *reply);
/* The subscriber's connection c closed; failed: by the server (reconnect). */
void cm_redis_sub_closed(CmRedisSub *s, CmRedisConnObject *c, int failed);
/* Close its connection without touching the loop (fork: 1 in a child). */
void cm_redis_sub_drop_detached(CmRedisSub *s, const char *why, int fork);
/* The owner is garbage: close as net/pool.h's cm_net_pool_close_gc. */
void cm_redis_sub_close_gc(CmRedisSub *s);
int cm_redis_sub_traverse(CmRedisSub *s, visitproc visit, void *arg);
void cm_redis_sub_free(CmRedisSub *s);
#endif
