/* What the files of the Redis driver share (not for other concepts: they use
 * redis.h).
 *
 * A storage call writes its RESP request into a connection's buffer and
 * returns an asyncio future; the loop then runs the one flush scheduled
 * (call_soon) for that connection, which sends every request of that loop
 * iteration in one write (automatic pipelining). hiredis's reader parses the
 * replies with object functions that build Python objects directly, and a
 * ring of pending entries matches them to requests in order.
 *
 * Files:
 *   reply.c    hiredis object functions (0.14 and 1.x)
 *   op.c       CmRedisOp: one storage call, its future or flight Get, and
 *              how entries' replies and failures settle it
 *   request.c  RESP encoding of an entry
 *   conn.c     CmRedisConnObject: socket, loop watches, timer, pending
 *              ring, GET coalescing, reading replies
 *   connect.c  opening one: host lookup, TCP connect, TLS handshake
 *   pool.c     CmRedisPool: connections to one server, backoff, addresses
 *   calls.c    routing entries to connections, and the storage calls
 *   client.c   the RedisClient type and the module hooks
 *   cluster.c  slot map and redirects
 *
 * Stored values keep cacheme 0.3.0's layout (ser/envelope.h), SETEX for
 * whole seconds and PSETEX for the rest (0.3.0 sent SETEX 0 for TTLs below
 * a second, which Redis refuses). */
#ifndef CM_REDIS_INTERNAL_H
#define CM_REDIS_INTERNAL_H
#include "redis/redis.h"

#include <hiredis/hiredis.h> /* HIREDIS_MAJOR */
#include <hiredis/read.h>

#include "base/clock.h"
#include "base/compat.h"
#include "base/exc.h"
#include "loop/loop.h"
#include "net/conn.h"
#include "net/stream.h"
#include <stddef.h>

/* Default bounds of one reply (RedisClient max_reply_elements /
 * max_bulk_bytes): 1 Mi elements is an 8 MiB list; 512 MiB is the largest
 * bulk Redis itself accepts (proto-max-bulk-len), so no stored value is
 * refused by default. */
#define CM_REDIS_MAX_ELEMENTS ((Py_ssize_t)1 << 20)
#define CM_REDIS_MAX_BULK ((Py_ssize_t)512 << 20)

#define CM_HIREDIS_STR_(x) #x
#define CM_HIREDIS_STR(x) CM_HIREDIS_STR_(x)
/* _core._hiredis_version: the hiredis the reader was compiled against */
#define CM_HIREDIS_VERSION                                                                         \
    CM_HIREDIS_STR(HIREDIS_MAJOR)                                                                  \
    "." CM_HIREDIS_STR(HIREDIS_MINOR) "." CM_HIREDIS_STR(HIREDIS_PATCH)

/* A connection's states are net/conn.h's; open is ready for requests. */
enum { CONN_CONNECTING = CM_NET_CONNECTING, CONN_READY = CM_NET_OPEN, CONN_CLOSED = CM_NET_CLOSED };

/* A connection: net/conn.h's part (socket, loop, watches, deadline timer,
 * its pool) and the Redis protocol's. */
struct CmRedisConnObject {
    CmNetConn net;
    PyObject *flush_cb; /* bound on_flush, made once */
    int flush_scheduled, replied;
    int open_run; /* the ring's last entry is a GETS run still taking keys */
    int64_t connect_deadline;
    PyObject *resolve; /* the host's lookup (resolve.h) while it runs, or NULL */
    CmBuf out;
    redisReader *reader;
    CmRedisEntry *ring;
    size_t cap, head, len;
    /* the subscriber whose connection this is (borrowed; cleared when it
     * closes or the subscriber goes), or NULL */
    struct CmRedisSub *sub;
};

/* The pool of a connection, NULL once it is closed. */
static inline CmRedisPool *cm_redis_conn_pool(const CmRedisConnObject *c)
{
    return c->net.pool ? (CmRedisPool *)((char *)c->net.pool - offsetof(CmRedisPool, net)) : NULL;
}

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
    /* cluster MGET: {node label: exception} of the nodes whose requests
     * failed (their keys are misses), and the requests answered */
    PyObject *failed;
    uint32_t answered;
    long long ttl_ms; /* -1: no TTL */
    int aged;         /* MGET: (node, value, updated_at ns) triples */
    int (*done)(CmRedisClientObject *, PyObject *reply, PyObject *error);
    /* a FlightProxy woken straight when the op finishes (instead of through
     * a done-callback of fut), and its loop; see cm_redis_attach_waiter */
    PyObject *waiter, *waiter_loop;
    /* a flight's Get that made the op with no future and is handed the
     * outcome (cm_remote_done); see cm_redis_get_for */
    PyObject *get;
};

/* reply.c */
extern redisReplyObjectFunctions cm_redis_reply_fns;

/* op.c */
CmRedisOp *cm_redis_op_new(CmRedisClientObject *client, int kind, PyObject *fut);
/* Keep the first error of an op (exc borrowed; NULL: RedisError). */
void cm_redis_op_set_error(CmRedisOp *op, PyObject *exc);
/* Let an answered entry go (drops its op references). */
void cm_redis_entry_release(CmRedisEntry *e);
/* Fail the entry's op(s) with exc (borrowed) and let the entry go. */
void cm_redis_entry_fail_exc(CmRedisEntry *e, PyObject *exc);
/* Fail the entry with the exception being raised (cleared). */
void cm_redis_entry_fail_current(CmRedisEntry *e);
/* GC: the objects an entry holds through its op(s). An op is visited only
 * while the entry holds its one reference (the usual case once the call
 * has returned): an op shared with a flight's Get or with other entries
 * has other owners, and visiting it from each would count its objects'
 * references more than once. Unvisited, they only look alive. */
int cm_redis_entry_traverse(const CmRedisEntry *e, visitproc visit, void *arg);
/* One reply for the entry taken off the head of c's ring (reply stolen). */
void cm_redis_entry_reply(CmRedisConnObject *c, CmRedisEntry *e, PyObject *reply);

/* the PartialResult type (op.c), made by cm_redis_init */
extern PyType_Spec cm_redis_partial_spec;

/* request.c: append the request of an entry to b; all or nothing. */
int cm_redis_encode_entry(CmBuf *b, const CmRedisEntry *e);

/* conn.c */
CmRedisConnObject *cm_redis_conn_open(CmRedisPool *p, PyObject *loop);
/* Close: unregister, close the socket, fail every pending entry with
 * tp(msg); failed counts against the server (backoff). Idempotent. */
void cm_redis_conn_close(CmRedisConnObject *c, PyObject *tp, PyObject *msg, int failed);
void cm_redis_conn_close_fmt(CmRedisConnObject *c, PyObject *tp, int failed, const char *fmt, ...);
const char *cm_redis_conn_label(CmRedisConnObject *c);
/* Queue a command whose reply is not matched to an entry (a subscriber's:
 * redis/subscriber.c reads them); sent with the next flush, or once
 * connected. -1 with MemoryError. */
int cm_redis_conn_send_raw(CmRedisConnObject *c, size_t argc, const char *const *argv,
                           const size_t *lens);
/* Connected (and TLS set up): watch for replies, send what is queued. */
void cm_redis_conn_ready(CmRedisConnObject *c);
/* Its buffers and reply parser on net/stream.h's loops. */
extern const CmNetStreamOps cm_redis_stream_ops;

/* connect.c. The pool's host is a name: look it up, then connect. -1 with
 * an exception. */
int cm_redis_conn_lookup(CmRedisConnObject *c, PyObject *loop);
/* Connect to the pool's addresses; -1 with an exception. */
int cm_redis_conn_connect(CmRedisConnObject *c);
/* Writable while connecting: the TCP connect is done (or failed). */
void cm_redis_conn_connected(CmRedisConnObject *c);
/* A step of the TLS handshake (ready or closed when it ends). */
void cm_redis_conn_handshake(CmRedisConnObject *c);
/* the _RedisConnection type, made by cm_redis_init */
extern PyType_Spec cm_redis_conn_spec;

/* pool.c */
/* Close every connection without touching its loop: fork (fds pointed at
 * /dev/null first) or a closed loop. */
void cm_redis_pool_drop_detached(CmRedisPool *p, const char *why, int fork);
void cm_redis_pool_forget_addrs(CmRedisPool *p);
void cm_redis_addrs_free(struct addrinfo *ai);
int cm_redis_addrs_add(struct addrinfo ***tail, const char *ip, int port);
/* A non-blocking socket connecting to the pool's server; *pending is set
 * while the connect is in progress. -1 with errno. */
int cm_redis_sock_connect(CmRedisPool *p, int *pending);

/* The client is garbage: close its pools' connections (net/pool.h). */
void cm_redis_pool_close_gc(CmRedisPool *p);

/* tracking.c */
/* Have pool p's subscriber track the key prefix (connecting it); -1 with
 * an exception. */
int cm_redis_track_start(CmRedisPool *p, PyObject *loop);
/* A reply to e came from outside one unbroken period of tracking: its keys'
 * flights must not fill local tiers. */
void cm_redis_track_unsure(CmRedisEntry *e);
/* The tracking epoch to record in an entry sent on p now. */
static inline uint32_t cm_redis_track_mark(const CmRedisPool *p)
{
    return p->track_up ? p->track_epoch : 0;
}
/* 1 when a reply to e on p must not fill local tiers. */
static inline int cm_redis_track_unsure_on(const CmRedisPool *p, const CmRedisEntry *e)
{
    return p->cfg->tracking && (e->track == 0 || e->track != p->track_epoch);
}
int cm_redis_cover(PyObject *storage, PyObject *local);
PyObject *cm_redis_track_info(CmRedisClientObject *self, PyObject *unused);
PyObject *cm_redis_track_inject(CmRedisClientObject *self, PyObject *msg);

/* calls.c */
int cm_redis_client_check_open(CmRedisClientObject *self);
CmRedisClientObject *cm_redis_client_for(CmRedisClientObject *self, PyObject *loop);
/* the storage methods (METH_FASTCALL | METH_KEYWORDS: base/args.h) */
PyObject *cm_redis_client_get(CmRedisClientObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames);
PyObject *cm_redis_client_get_all(CmRedisClientObject *self, PyObject *const *args,
                                  Py_ssize_t nargs, PyObject *kwnames);
PyObject *cm_redis_client_set(CmRedisClientObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames);
PyObject *cm_redis_client_set_all(CmRedisClientObject *self, PyObject *const *args,
                                  Py_ssize_t nargs, PyObject *kwnames);
PyObject *cm_redis_client_remove(CmRedisClientObject *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames);
PyObject *cm_redis_client_execute(CmRedisClientObject *self, PyObject *const *args,
                                  Py_ssize_t nargs);
/* The same with argv a tuple of bytes (borrowed), routed on a cluster by
 * route (bytes, borrowed) instead of argv[1] when not NULL (EVAL). */
PyObject *cm_redis_execute_at(CmRedisClientObject *self, PyObject *argv, PyObject *route);
#endif
