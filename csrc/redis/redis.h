/* Redis client of cacheme._core: what the singleflight, the cluster and the
 * module see of the driver. The driver's own files and their design:
 * redis/internal.h. */
#ifndef CM_REDIS_H
#define CM_REDIS_H
#include "state.h"

#include "net/busypoll.h"
#include "net/netloop.h"
#include "net/pool.h"
#include "net/tls.h"
#include "redis/resp.h"

struct addrinfo;

typedef struct CmRedisOp CmRedisOp;
typedef struct CmRedisPool CmRedisPool;
typedef struct CmRedisCluster CmRedisCluster;
typedef struct CmRedisConnObject CmRedisConnObject;
typedef struct CmRedisClientObject CmRedisClientObject;

/* What one request on the wire is; its reply is matched to it in order. */
enum {
    CM_CMD_GET,
    CM_CMD_MGET,
    CM_CMD_SET,
    CM_CMD_DEL,
    CM_CMD_RAW,
    CM_CMD_HELLO,  /* AUTH / SELECT of a new connection (no op) */
    CM_CMD_ASKING, /* before a command sent on an ASK redirect (no op) */
    CM_CMD_GETS,   /* single-key GETs of several ops sent as one GET or MGET */
};

/* One member of a CM_CMD_GETS entry: an op's key, and the op reference. */
typedef struct {
    CmRedisOp *op;
    uint32_t pos;
} CmRedisGetRef;

/* One pending reply. An op (one storage call) has one entry per request it
 * sent; an entry covers positions pos..pos+npos-1 of the op's keys, or the
 * positions listed in `positions` (cluster MGET of one slot). */
typedef struct {
    CmRedisOp *op;       /* NULL for connection-internal requests and GETS */
    uint32_t *positions; /* owned; NULL = contiguous from pos */
    CmRedisGetRef *gets; /* GETS: owned, npos members */
    uint32_t pos, npos;
    uint8_t cmd;
    uint8_t redirects; /* times this request was re-sent on a cluster redirect */
    /* cluster: 1 + the index of the node the map first sent it to (a get_all's
     * piece is one node's requests, redirected or not); 0 unknown */
    uint16_t node;
    /* tracking: the pool's track_epoch when it was sent while tracking was
     * up, else 0 (redis/tracking.c) */
    uint32_t track;
    int64_t deadline; /* monotonic ns */
} CmRedisEntry;

static inline uint32_t cm_entry_position(const CmRedisEntry *e, uint32_t i)
{
    return e->positions ? e->positions[i] : e->pos + i;
}

/* Settings shared by every pool of a client. */
typedef struct {
    PyObject *username; /* bytes or NULL */
    PyObject *password; /* bytes or NULL */
    long db;
    double connect_timeout; /* seconds */
    double timeout;         /* seconds, per command */
    double backoff_min, backoff_max;
    int size;     /* connections per server */
    int pipeline; /* replies outstanding on a connection before another is opened */
    /* a reply's aggregate length and bulk/line size above these fails the
     * connection (a hostile or broken server must not make us reserve memory) */
    Py_ssize_t max_reply_elements;
    Py_ssize_t max_bulk_bytes;
    CmTlsContext tls;   /* rediss://: ctx set */
    int tracking;       /* local tiers kept coherent (redis/tracking.c) */
    long long lease_ms; /* lease=: a key's load lease (redis/lease.h); 0 none */
} CmRedisConfig;

/* The connections to one server (net/pool.h: slots, loop, backoff). A plain
 * C record owned by its client; connections point back to its net part
 * (borrowed) until they are closed. */
struct CmRedisPool {
    CmNetPool net;
    CmState *st;
    CmRedisClientObject *client; /* borrowed: the owner */
    const CmRedisConfig *cfg;    /* borrowed from the client */
    char *host;                  /* NULL for a unix socket */
    char *path;
    int port;
    char label[300];        /* "host:port" or the socket path, for messages */
    struct addrinfo *addrs; /* the host's addresses, NULL until looked up */
    CmRedisConnObject *run; /* borrowed: the connection collecting GETs, or NULL */
    long resolves;          /* lookups made, for tests */
    /* the server's pub/sub connection (redis/subscriber.h), owned, made on
     * first use; and on a subscriber's own pool, the subscriber (borrowed) */
    struct CmRedisSub *sub, *sub_of;
    /* tracking (redis/tracking.c): up, bumped on each lost and up (never
     * 0), and counts for _tracking_info */
    int track_up;
    uint32_t track_epoch;
    /* the state's generation when tracking was last registered: a new one
     * (set_prefix among others) checks the registered prefix again */
    uint64_t track_gen;
    long long track_keys, track_flushes;
};

struct CmRedisClientObject {
    PyObject_HEAD
    CmState *st;
    CmRedisConfig cfg;
    CmRedisPool *pool;       /* single server */
    CmRedisCluster *cluster; /* or a cluster */
    PyObject *default_serializer;
    CmBusyPoll spin; /* single server: waiting for replies on an idle loop */
    /* the instances serving other loops (netloop.h), made from the same
     * RedisClient arguments */
    CmNetLoops loops;
    PyObject *init_args, *init_kwds;
    /* _sub_listen (tests): what the subscriber delivered, or NULL */
    PyObject *sub_log;
    /* leases (redis/lease.c): how many taken and not yet given back (the
     * release answered), and the futures _lease_drain() returned, each on
     * its loop, done when that count is 0: a list of (loop, future), or NULL */
    Py_ssize_t leases_out;
    PyObject *lease_drain;
    /* tracking: the client this one was spawned from for another loop (or
     * NULL), and (on that one) the LocalStores it keeps coherent */
    CmRedisClientObject *origin;
    PyObject *covered;
};

/* pool.c, conn.c, op.c, calls.c: used by the cluster */
CmRedisPool *cm_redis_pool_new(CmRedisClientObject *c, const char *host, int port,
                               const char *path);
void cm_redis_pool_free(CmRedisPool *p);
/* GC: the pool's connections and its subscriber's. */
int cm_redis_pool_traverse(CmRedisPool *p, visitproc visit, void *arg);
/* A connection of the pool for the running loop (borrowed), opening one if
 * needed; NULL with an exception while the server is unreachable. */
CmRedisConnObject *cm_redis_pool_conn(CmRedisPool *p, PyObject *loop);
/* Queue the request of *e on conn; the entry (and its positions) is the
 * connection's from then on, also on failure (then the op is failed). */
void cm_redis_conn_push(CmRedisConnObject *conn, CmRedisEntry *e);
/* Fail an entry's op with an exception of type tp (message msg). */
void cm_redis_entry_fail(CmState *st, CmRedisEntry *e, PyObject *tp, PyObject *msg);
/* Take/drop an op reference (one per entry in flight, one while building). */
void cm_redis_op_ref(CmRedisOp *op);
void cm_redis_op_unref(CmRedisOp *op);
/* The key of the op at position i (a str, borrowed). */
PyObject *cm_redis_op_key(CmRedisOp *op, uint32_t i);
/* A raw reply of an internal op (CLUSTER SLOTS); sent as CM_CMD_RAW. */
CmRedisOp *cm_redis_op_internal(CmRedisClientObject *client, PyObject *args,
                                int (*done)(CmRedisClientObject *, PyObject *reply,
                                            PyObject *error),
                                PyObject *fut);
/* Send an internal op's request on a pool; -1 (op failed, exception set). */
int cm_redis_send_on(CmRedisPool *pool, PyObject *loop, CmRedisOp *op);
/* Route an answered entry anew and send it (a cluster retry); the entry and
 * its op reference are the connection's from then on. */
void cm_redis_resend(CmRedisClientObject *self, PyObject *loop, CmRedisEntry *e);

/* cluster.c */
CmRedisCluster *cm_cluster_new(CmRedisClientObject *c, const char *host, int port);
void cm_cluster_free(CmRedisCluster *cl);
/* The client's tp_traverse and tp_clear of what the cluster holds (entries
 * waiting to be re-sent); NULL is no cluster. */
int cm_cluster_traverse(CmRedisCluster *cl, visitproc visit, void *arg);
void cm_cluster_clear(CmRedisCluster *cl);
/* Entries waiting to be re-sent (for tests). */
Py_ssize_t cm_cluster_retrying(CmRedisClientObject *c);
/* The pool serving a slot (borrowed), NULL with an exception; *node is set
 * to its CmRedisEntry.node. */
CmRedisPool *cm_cluster_route(CmRedisClientObject *c, unsigned slot, uint16_t *node);
/* "host:port" of an entry's node (borrowed, valid until the cluster
 * changes), NULL if unknown or the cluster is closed. */
const char *cm_cluster_node_label(CmRedisClientObject *c, uint16_t node);
/* 1 when an error reply was a MOVED/ASK redirect and the entry was sent on,
 * or a TRYAGAIN/CLUSTERDOWN and it will be sent again after a pause (the
 * entry is then no longer the caller's); 0 when it was none of those. */
int cm_cluster_redirect(CmRedisClientObject *c, CmRedisEntry *e, PyObject *err);
/* Ask a node for the slot map; fut (may be NULL) gets None or the error. */
int cm_cluster_refresh(CmRedisClientObject *c, PyObject *loop, PyObject *fut);
/* A connection to a node failed: refresh the map soon. */
void cm_cluster_node_failed(CmRedisClientObject *c);
Py_ssize_t cm_cluster_pools(CmRedisClientObject *c, CmRedisPool ***pools);

/* Calls of a flight (redis.c, "calls of a flight's Get"), adapted to the
 * singleflight's interface by redis/remote.c (see flight/remote.h).
 * cm_redis_direct: 1 if storage's method `name` is RedisClient's own (not
 * overridden by its class or instance). cm_redis_get_for / cm_redis_set_for:
 * send GET / SET for the flight's call `get` (the op takes a reference) on
 * loop, with no future; they return the op with the caller's reference
 * (drop it with cm_redis_op_unref, which may finish it), or NULL with an
 * exception. cm_redis_op_handoff: the op's outcome goes to `get` (a new
 * reference taken; NULL: nobody) instead; returns the op's reference to the
 * call it had. cm_redis_attach_waiter: make waiter (a FlightProxy of loop)
 * be woken straight by the op behind fut, the future a Redis storage call
 * just returned: 1 attached, 0 not (fut is not such an op's, or it has a
 * waiter). */
int cm_redis_direct(CmState *st, PyObject *storage, PyObject *name);
CmRedisOp *cm_redis_get_for(PyObject *client, PyObject *node, PyObject *ser, PyObject *loop,
                            PyObject *get);
CmRedisOp *cm_redis_set_for(PyObject *client, PyObject *node, PyObject *value, PyObject *ttl,
                            PyObject *ser, PyObject *loop, PyObject *get);
PyObject *cm_redis_op_handoff(CmRedisOp *op, PyObject *get);
int cm_redis_attach_waiter(CmState *st, PyObject *fut, PyObject *waiter, PyObject *loop);
/* get_all(nodes, ser) whose pairs are (node, value, updated_at ns, load
 * time ns): CmRemoteOps.get_all_aged. */
PyObject *cm_redis_get_all_aged(CmState *st, PyObject *client, PyObject *nodes, PyObject *ser);
/* redis/remote.c: RedisClient registered with the singleflight */
int cm_redis_remote_init(PyObject *mod, CmState *st);
#endif
