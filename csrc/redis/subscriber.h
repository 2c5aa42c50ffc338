/* A pub/sub connection per Redis server (pool) and process: any channel can
 * be subscribed or unsubscribed at any time, each with a C callback, and
 * watchers hear when the connection is lost and when it is back.
 *
 * Why one connection of its own: a connection in subscribe mode (RESP2)
 * takes no other command, so it cannot be one of the pool's. It is a
 * CmRedisConnObject in a pool of its own (redis/conn.c on net/: connect,
 * TLS, AUTH/SELECT, the loop binding, the after-fork and closed-loop rules,
 * backoff) whose replies, past AUTH/SELECT, are read here rather than
 * matched to requests. On open it sends CLIENT ID (the id other
 * connections name in CLIENT TRACKING ... REDIRECT) and SUBSCRIBE of every
 * channel asked for.
 *
 * Lost (the server failed, or closed it): watchers are told (up=0) at once,
 * and a timer reconnects at the pool's backoff (net/pool.h); once CLIENT ID
 * is answered again the channels are subscribed anew and watchers are told
 * (up=1). Messages published while it was down are lost: that is what the
 * "lost" event is for. Closed without a failure (storage closed, event loop
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
/* The connection is up (1: CLIENT ID answered, channels re-subscribed) or
 * lost (0). */
typedef void (*CmRedisSubStateFn)(void *arg, int up);

/* The subscriber of pool p (one Redis server), made on first use (it does
 * not connect yet); freed with the pool. NULL with MemoryError. */
CmRedisSub *cm_redis_sub_of(CmRedisPool *p);
/* Connect on loop unless connected or connecting (or backing off: the
 * retry timer connects then). 0, or -1 with an exception. */
int cm_redis_sub_start(CmRedisSub *s, PyObject *loop);
/* Call fn(arg, msg) for every message on channel (len bytes); the same
 * channel may have several (fn, arg). SUBSCRIBE is sent for its first one
 * (and connects: cm_redis_sub_start). 0, or -1 with an exception. */
int cm_redis_sub_subscribe(CmRedisSub *s, PyObject *loop, const char *channel, size_t len,
                           CmRedisSubMsgFn fn, void *arg);
/* Forget (fn, arg) on channel; UNSUBSCRIBE when it was the last one. */
void cm_redis_sub_unsubscribe(CmRedisSub *s, const char *channel, size_t len, CmRedisSubMsgFn fn,
                              void *arg);
/* Be told of lost / up; 0, or -1 with MemoryError. */
int cm_redis_sub_watch(CmRedisSub *s, CmRedisSubStateFn fn, void *arg);
void cm_redis_sub_unwatch(CmRedisSub *s, CmRedisSubStateFn fn, void *arg);
/* The connection's CLIENT ID while it is up, 0 otherwise. */
long long cm_redis_sub_client_id(const CmRedisSub *s);

/* _sub_listen(channel) of RedisClient (tests): subscribe the running
 * loop's instance (single server) to channel; the list returned collects
 * ("message", payload), ("up", client id) and ("lost", 0). */
PyObject *cm_redis_sub_listen(CmRedisClientObject *self, PyObject *channel);

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
