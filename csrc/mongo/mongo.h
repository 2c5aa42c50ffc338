/* The MongoDB storage: _core.MongoClient, driven from C on the asyncio loop
 * (no libmongoc: it blocks). What the files of the driver share.
 *
 * A storage call becomes a request (CmMongoReq: a find, an update with
 * upsert, a delete, createIndexes) and returns an asyncio future. The
 * request is encoded as one OP_MSG (wire.h) with its BSON built by libbson
 * (cmd.c) on a connection of the instance serving the running loop
 * (net/netloop.h) and sent with everything else queued in that loop
 * iteration (single gets of one iteration coalesced into one find);
 * replies are matched to requests by responseTo. A connection
 * first says hello (the server's limits, whether it is the writable
 * primary); requests queued meanwhile leave once it is answered.
 *
 * Files:
 *   wire.c   OP_MSG framing (plain C, tests/c)
 *   cmd.c    the commands' BSON and what their replies mean
 *   conn.c   CmMongoConnObject on net/conn.h and net/stream.h: hello,
 *            pending requests, reading replies
 *   connect.c  the lookup, the TCP connect, TLS, then the hello
 *   auth.c   SCRAM authentication of a connection (saslStart/saslContinue
 *            around scram.c's conversation)
 *   pool.c   which connection takes a request; the seed list and the
 *            primary (topology)
 *   transport.c  TLS and busy polling: the options, and the spin after a
 *            flush
 *   store.c  the MongoClient type and the module hooks
 *   remote.c the flight's storage interface (flight/remote.h)
 *
 * Documents are cacheme 0.3.0's (written by motor): key (string), value
 * (binary, serializer.dumps(v): ser/envelope.h's CM_ENVELOPE_BARE, as
 * 0.3.0's MongoStorage stored it through BaseStorage.deserialize),
 * updated_at and expire (UTC datetimes; expire null without TTL). Expired
 * documents read as misses. A flight's fill of a node with freshness
 * options adds what 0.3.0 ignores: load_time (seconds, a double) and, with
 * stale_if_error, stale_until (a datetime that much past expire); only a
 * read made for such a node's flight sees a document between expire and
 * stale_until, and its age makes it a miss kept for a failing load. Times
 * are base/clock.h's cm_wall_ns (the test clock moves them). */
#ifndef CM_MONGO_H
#define CM_MONGO_H
#include "state.h"

/* MongoClient and the exceptions, added to the module (a no-op when the
 * build has no libbson: mongo.py then says what to install). */
int cm_mongo_init(PyObject *mod, CmState *st);

#ifdef CM_HAVE_BSON
#include <bson/bson.h>

#include "mongo/scram.h"
#include "mongo/wire.h"
#include "net/conn.h"
#include "net/netloop.h"
#include "net/pool.h"
#include "net/stream.h"
#include "net/tls.h"

typedef struct CmMongoClientObject CmMongoClientObject;
typedef struct CmMongoConnObject CmMongoConnObject;

enum {
    CM_MONGO_GET,
    CM_MONGO_GET_ALL,
    CM_MONGO_SET,
    CM_MONGO_SET_ALL,
    CM_MONGO_DEL,
    CM_MONGO_INDEXES, /* createIndexes on key (unique) and expire */
    CM_MONGO_PING,    /* {ping: 1}: a connection answers */
    CM_MONGO_HELLO,   /* the connection's own handshake (no future) */
    CM_MONGO_SASL,    /* its authentication steps (no future) */
    CM_MONGO_GETS,    /* GETs of one loop iteration as one find (members) */
};

/* indexes_later */
enum { CM_MONGO_INDEXES_MADE, CM_MONGO_INDEXES_WANTED, CM_MONGO_INDEXES_SENT };

/* GETs coalesced into one find at most (its $in list) */
#define CM_MONGO_RUN_MAX 256

/* SASL mechanisms a hello listed (saslSupportedMechs) */
#define CM_MONGO_MECH_SHA1 1
#define CM_MONGO_MECH_SHA256 2

/* One storage call. Owned by the connection it is pending on (or by the
 * caller until pushed); finished exactly once (cm_mongo_req_finish). */
typedef struct CmMongoReq {
    int kind;
    int retried;      /* sent again once after the primary changed */
    int32_t id;       /* requestID of its message */
    int64_t deadline; /* reply due by (monotonic ns) */
    PyObject *fut;    /* the caller's future; NULL for HELLO */
    PyObject *ser;    /* GET/GET_ALL: the serializer (or None) */
    PyObject *key;    /* GET/SET/DEL: str */
    PyObject *keys;   /* GET_ALL/SET_ALL: list of str */
    PyObject *nodes;  /* GET_ALL: the nodes, in the order of keys */
    PyObject *values; /* SET: bytes; SET_ALL: list of bytes */
    long long ttl_ms; /* SET/SET_ALL: -1 for none */
    /* a flight's fill of a node with freshness options (remote.c): its
     * load time (ns, > 0: stored as load_time, seconds) and how long past
     * expire the document is kept (ms, > 0: stored as stale_until) */
    int64_t load_ns;
    long long stale_ms;
    /* GET made for a flight's call with freshness options: the document's
     * age is told to it (cm_mongo_flight_age); GET_ALL: its pairs are
     * (node, value, updated_at ns, load_time ns) tuples. stale (GET): a document past
     * expire that its stale_until keeps is read too (the age says it is
     * past its TTL). */
    int aged, stale;
    /* GETS: the GET requests it answers (owned), in the order of keys */
    struct CmMongoReq **members;
    int nmembers, capm;
} CmMongoReq;

/* A connection: net/conn.h's part and the protocol's. */
enum { CM_MONGO_HANDSHAKE = CM_NET_OPEN, CM_MONGO_READY };

struct CmMongoConnObject {
    CmNetConn net;
    int host; /* index of its server in the client's hosts */
    int flush_scheduled;
    int64_t connect_deadline;
    size_t max_message; /* the server's maxMessageSizeBytes */
    PyObject *flush_cb; /* bound on_flush, made once */
    PyObject *resolve;  /* the host's lookup while it runs, or NULL */
    CmMongoBuf out;     /* to send now */
    CmMongoBuf held;    /* encoded requests waiting for the handshake */
    CmMongoBuf in;      /* received, not yet parsed */
    CmMongoReq **pend;  /* sent or held, awaiting replies */
    size_t npend, cap;
    CmScram *scram;  /* the authentication conversation, or NULL */
    CmMongoReq *run; /* the GETS still taking GETs (pending, not encoded), or NULL */
    int sasl_mech, sasl_step;
};

/* A server of the seed list (or one a hello named as the primary). */
typedef struct {
    char *host;
    int port;
} CmMongoHost;

struct CmMongoClientObject {
    PyObject_HEAD
    CmState *st;
    CmMongoHost *hosts;
    int nhosts;
    int primary;        /* the server requests go to (index in hosts) */
    PyObject *database; /* str */
    PyObject *collection;
    Py_ssize_t pool_size;
    double timeout, connect_timeout;
    int32_t next_id;
    /* credentials (NULL: none): user and password as UTF-8 bytes, the
     * database they belong to, the mechanism (0: chosen from the hello;
     * else a CmScramMech), and the salted password's cache (scram.h) */
    PyObject *user, *password, *auth_source;
    int auth_mech;
    CmScramCache *scram_cache;
    CmNetPool pool; /* connections to the primary */
    CmNetLoops loops;
    CmTlsContext tls; /* ctx NULL: plain TCP (transport.c) */
    /* connect() could not create the indexes (the server was down): the
     * next connection that is ready sends createIndexes first (conn.c) */
    int indexes_later; /* CM_MONGO_INDEXES_* */
    CmBusyPoll spin;
    PyObject *init_args, *init_kwds;
    PyObject *weakreflist;
};

static inline CmMongoClientObject *cm_mongo_conn_client(const CmMongoConnObject *c)
{
    return c->net.pool
               ? (CmMongoClientObject *)((char *)c->net.pool - offsetof(CmMongoClientObject, pool))
               : NULL;
}

/* The next request id of cl (unique per client, never 0 nor negative). */
static inline int32_t cm_mongo_next_id(CmMongoClientObject *cl)
{
    if (++cl->next_id <= 0)
        cl->next_id = 1;
    return cl->next_id;
}

/* cmd.c */
CmMongoReq *cm_mongo_req_new(int kind);
/* Free a request that was never pushed, or that is finished. */
void cm_mongo_req_free(CmMongoReq *r);
/* A GET joins a GETS (ownership moves); -1 when out of memory. */
int cm_mongo_req_add_member(CmMongoReq *run, CmMongoReq *r);
/* Append r's command as one OP_MSG with request id r->id to b; -1 with an
 * exception (a value too large for a message: MongoError). */
int cm_mongo_req_encode(CmMongoClientObject *cl, CmMongoReq *r, CmMongoBuf *b, size_t max);
/* The reply body (checked framing) for r: settles r's future. Returns 0,
 * or 1 when the server says it is no longer the primary (r is then not
 * finished: the caller sends it again after rediscovery, or fails it). */
int cm_mongo_req_reply(CmMongoClientObject *cl, CmMongoReq *r, const uint8_t *body, size_t n);
/* Settle r's future with exc (borrowed) and free r. */
void cm_mongo_req_fail(CmState *st, CmMongoReq *r, PyObject *exc);
void cm_mongo_req_fail_msg(CmState *st, CmMongoReq *r, PyObject *tp, PyObject *msg);
int cm_mongo_req_traverse(const CmMongoReq *r, visitproc visit, void *arg);
/* The hello reply: 1 writable primary, 0 not (*primary_hint set to a new
 * "host:port" string from its `primary` field, or NULL), -1 with an
 * exception. *max_message from maxMessageSizeBytes, *mechs the
 * CM_MONGO_MECH_* of saslSupportedMechs. */
int cm_mongo_hello_parse(const uint8_t *body, size_t n, size_t *max_message, int *mechs,
                         char **primary_hint);
/* The end of an internal command's encoding (hello, SASL): cmd, built if
 * ok, appended to b as one OP_MSG with request id `id`, and destroyed
 * either way. -1 with MemoryError (b left as it was). */
int cm_mongo_cmd_append(CmMongoBuf *b, bson_t *cmd, int ok, int32_t id);
/* Append the hello command as one OP_MSG (asking for the mechanisms of
 * cl's user when it has one). -1 with an exception. */
int cm_mongo_hello_encode(CmMongoClientObject *cl, CmMongoBuf *b, int32_t id);

/* conn.c */
CmMongoConnObject *cm_mongo_conn_open(CmMongoClientObject *cl, PyObject *loop);
/* Queue r on c (ownership moves to c); on failure r is failed. */
void cm_mongo_conn_push(CmMongoConnObject *c, CmMongoReq *r);
/* Add an internal request to c's pending list; -1 when out of memory. */
int cm_mongo_conn_add_pending(CmMongoConnObject *c, CmMongoReq *r);
void cm_mongo_conn_close_fmt(CmMongoConnObject *c, PyObject *tp, int failed, const char *fmt, ...);
/* Close c: what failed and errno err (counted against the server; a seed
 * that cannot be connected to passes the turn). */
void cm_mongo_conn_fail_io(CmMongoConnObject *c, const char *what, int err);
/* Send what c's out buffer holds (net/stream.h). */
void cm_mongo_conn_write(CmMongoConnObject *c);
/* "host:port" of c's server into buf. */
const char *cm_mongo_conn_label(CmMongoConnObject *c, char *buf, size_t n);
/* c's buffers and reply parser on net/stream.h's loops. */
extern const CmNetStreamOps cm_mongo_stream_ops;
extern PyType_Spec cm_mongo_conn_spec;

/* connect.c: start connecting c (new, in its pool, the deadline armed):
 * the lookup of a name, else the TCP connect. -1 with an exception. */
int cm_mongo_conn_start(CmMongoConnObject *c, PyObject *loop);
/* The TCP connect is done: TLS first when the storage has it, then the
 * hello. */
void cm_mongo_conn_established(CmMongoConnObject *c);
/* A TLS handshake step (c connecting with a session): the hello once done. */
void cm_mongo_conn_handshake(CmMongoConnObject *c);

/* auth.c: start authenticating c (the hello listed mechs); then each SASL
 * reply: 1 authenticated, 0 the next message is queued, -1 with an
 * exception (MongoAuthError, or MemoryError). */
int cm_mongo_auth_start(CmMongoConnObject *c, int mechs);
int cm_mongo_auth_step(CmMongoConnObject *c, const uint8_t *body, size_t n);

/* store.c, for remote.c: queue GET node (SET node = value with ttl) on the
 * instance serving the running loop with waiter as the request's future
 * (an object answering done, set_result and set_exception as a Future
 * does). 0, or -1 with an exception (nothing queued). */
/* fresh: the CM_FRESH_* options of the flight's node (0: none). For a
 * set, load_ns and stale_ns as cm_remote_call_fresh and
 * cm_remote_call_stale_ns say (ttl is then longer by stale_ns). */
int cm_mongo_get_for(PyObject *storage, PyObject *node, PyObject *ser, PyObject *waiter,
                     unsigned int fresh);
int cm_mongo_set_for(PyObject *storage, PyObject *node, PyObject *value, PyObject *ttl,
                     PyObject *ser, PyObject *waiter, int64_t load_ns, int64_t stale_ns);
/* storage.get_all(nodes, ser) whose pairs are (node, value, updated_at ns,
 * load_time ns): an awaitable, or NULL with an exception. */
PyObject *cm_mongo_get_all_aged(PyObject *storage, PyObject *nodes, PyObject *ser);
/* remote.c: a GET of r->aged read a document written at updated_ms (UTC
 * ms) with load_ns: told to the flight's call of its wait (r->fut). */
void cm_mongo_flight_age(CmMongoReq *r, int64_t updated_ms, int64_t load_ns);
/* remote.c: MongoClient registered with the singleflight */
int cm_mongo_remote_init(PyObject *mod, CmState *st);

/* transport.c. The options tls (None, or a dict: ca_file,
 * certificate_key_file, allow_invalid_certificates,
 * allow_invalid_hostnames) and busy_poll (busypoll.h) checked into t. -1
 * with ValueError/TypeError naming the option. */
typedef struct {
    CmTlsContext tls;
    double spin;
} CmMongoTransport;
int cm_mongo_transport_parse(PyObject *tls, PyObject *busy_poll, CmMongoTransport *t);
/* cl takes t's settings (its connections must be closed by then). */
void cm_mongo_transport_set(CmMongoClientObject *cl, CmMongoTransport *t);
void cm_mongo_transport_fini(CmMongoClientObject *cl);
int cm_mongo_transport_traverse(CmMongoClientObject *cl, visitproc visit, void *arg);
void cm_mongo_transport_clear(CmMongoClientObject *cl);
/* busy_poll_info() */
PyObject *cm_mongo_busy_poll_info(PyObject *self, PyObject *unused);
/* Requests went out on c (its flush): a busy-poll spin for the replies. */
void cm_mongo_transport_sent(CmMongoConnObject *c);

/* pool.c */
/* The connection of cl to take a request on loop (borrowed), or NULL with
 * an exception (backing off after failures; retry: a request sent again
 * to a new primary may open a connection meanwhile). */
CmMongoConnObject *cm_mongo_pool_conn(CmMongoClientObject *cl, PyObject *loop, int retry);
/* The server said it is not the primary (hint: the one it names, or NULL):
 * requests go elsewhere from now on; its connections are closed. */
void cm_mongo_topology_moved(CmMongoClientObject *cl, int host, const char *hint);
/* r was refused by a server that is no longer the primary, or was pending
 * on a connection to it that broke (label: the server, why: what
 * happened): sent once more to the primary found anew (a coalesced find:
 * each of its GETs), or failed. */
void cm_mongo_topology_resend(CmMongoClientObject *cl, CmMongoReq *r, PyObject *loop,
                              const char *label, const char *why);
/* A connect to host failed: the next seed is tried next time. */
void cm_mongo_topology_failed(CmMongoClientObject *cl, int host);
/* "host:port" of the i-th server (static buffer per call site). */
const char *cm_mongo_host_label(CmMongoClientObject *cl, int i, char *buf, size_t n);
#endif
#endif
