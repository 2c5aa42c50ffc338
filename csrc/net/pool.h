/* The connections of one storage to one server, written once for every
 * driver: the slots, the loop they are bound to, backoff after failures,
 * closing (also after fork), and busy polling over them.
 *
 * A CmNetPool is a plain C record embedded in the driver's pool (Redis:
 * CmRedisPool, one per server; SQL: the storage object).
 *
 * Loop binding, the same rule for every driver. Connections are watched on
 * one loop and settle futures of that loop, so a pool follows the running
 * loop: on a call from another loop it first closes what the old loop had
 * (the normal way: the old loop is idle or closed) and starts the backoff
 * over, since a new loop is a new start (asyncio.run called again, a test's
 * loop). With netloop.h's per-loop instances a pool only sees its loop
 * change once the old home loop is closed; a pool reached from another
 * thread while its loop still runs there refuses with RuntimeError rather
 * than touch that loop's connections (they are not ours to close).
 *
 * Backoff: after a failed connect no new connection is opened before
 * retry_at; the wait starts at backoff_min and doubles up to backoff_max.
 * Failures within one wait count once (several connections failing
 * together are one outage). The first success starts it over.
 *
 * Busy polling (net/busypoll.h): cm_net_pool_spin and cm_net_pool_wait
 * poll the fds of the pool's connections that await the server (the
 * driver's `awaiting` hook) and hand what is ready to the driver's `io`.
 *
 * Picking a connection for a request: cm_net_pool_pick takes the least
 * loaded one and opens another (up to a size) when it is busy (Redis
 * pipelines, MongoDB); SQL hands a batch to an idle one on its own.
 *
 * What stays the driver's: a queue of requests waiting for a connection and its
 * deadlines (on a CmNetTimer of its own, net/conn.h, the same lazy rule),
 * periodic housekeeping, and the messages. */
#ifndef CM_NET_POOL_H
#define CM_NET_POOL_H
#include "state.h"

#include "net/busypoll.h"
#include "net/conn.h"

struct CmNetPool {
    CmState *st;
    PyObject *loop;    /* the loop the connections are watched on, or NULL */
    CmNetConn **conns; /* the pool's references */
    int nconns, cap;
    double backoff_min, backoff_max; /* seconds */
    double backoff;                  /* seconds: the next wait */
    int64_t retry_at;                /* no new connection before (monotonic ns); 0: now */
    PyObject *last_error;            /* why the last connect failed: the msg given to
                                        cm_net_conn_close or the why given to
                                        cm_net_pool_forget, or NULL */
};

/* Set up p (zeroed memory). */
void cm_net_pool_init(CmNetPool *p, CmState *st, double backoff_min, double backoff_max);
/* Close every connection (normally, not failed) with tp(msg) and free the
 * slots; the pool can be used again. */
void cm_net_pool_close_all(CmNetPool *p, PyObject *tp, PyObject *msg);
/* Close every connection without touching its loop: a forked child (fork:
 * each fd is pointed at /dev/null first) or a loop closed or gone. The
 * loop is forgotten and the backoff starts over; the pool reconnects on
 * the next call. */
void cm_net_pool_drop_detached(CmNetPool *p, PyObject *tp, PyObject *msg, int fork);
/* The owner is garbage (its GC clear): close the connections, the normal
 * way while their loop is open (it must stop watching them), detached when
 * it is closed or is garbage too (cleared: it cannot tell). */
void cm_net_pool_close_gc(CmNetPool *p, PyObject *tp, PyObject *msg);
/* cm_net_pool_close_all, and the loop and last_error dropped. */
void cm_net_pool_fini(CmNetPool *p, PyObject *tp, PyObject *msg);
/* GC: the loop, last_error and the pool's reference to each connection. */
int cm_net_pool_traverse(CmNetPool *p, visitproc visit, void *arg);

/* Bind the pool to loop (the rule above). tp(msg) fails what the old loop
 * had. 0; -1 with RuntimeError when the old loop runs in another thread. */
int cm_net_pool_bind(CmNetPool *p, PyObject *loop, PyObject *tp, PyObject *msg);

/* Add a new connection (reference stolen). -1 with MemoryError (the
 * reference is then dropped). */
int cm_net_pool_add(CmNetPool *p, CmNetConn *c);
/* Bind the pool to loop when its old loop is closed, keeping the
 * connections for which keep(c) is 1 (idle ones: the driver's say) and
 * whose socket has nothing to read (a server that closed or sent something
 * unasked makes it readable): they are watched on loop from now on
 * (cm_net_conn_rehome), so a new loop (asyncio.run called again) needs no
 * new connection. The others are closed with tp(msg) without touching the
 * closed loop. The backoff starts over. */
void cm_net_pool_adopt(CmNetPool *p, PyObject *loop, int (*keep)(CmNetConn *c), PyObject *tp,
                       PyObject *msg);

/* Reserve a slot for one more connection, so that adding it cannot fail.
 * -1 with MemoryError. */
int cm_net_pool_reserve(CmNetPool *p);
/* c leaves the pool (the pool's reference dropped; c may be NULL: a
 * connect that failed before it was added). failed: count a failure
 * (backoff) with why (any object, or NULL) as last_error. */
void cm_net_pool_forget(CmNetPool *p, CmNetConn *c, int failed, PyObject *why);
/* The server answered: backoff starts over, last_error is cleared. */
void cm_net_pool_ok(CmNetPool *p);
/* How a driver picks the connection for a request (cm_net_pool_pick). */
typedef struct {
    /* requests outstanding on c (-1: c does not take requests now) */
    Py_ssize_t (*load)(const CmNetConn *c, void *arg);
    /* a new connection (not added yet), or NULL with an exception */
    CmNetConn *(*open)(void *arg, PyObject *loop);
    Py_ssize_t busy; /* a connection with this many outstanding wants company */
    Py_ssize_t size; /* but no more than this many connections */
    int force;       /* open one despite the backoff when none takes requests */
} CmNetPick;

/* The least loaded connection of p, unless it has how->busy requests
 * outstanding while p holds fewer than how->size: then a new one (added to
 * p), and the least loaded one still when none may be opened (backoff) or
 * the open fails (counted: backoff). NULL when there is none: with the
 * open's exception, or with none set while backing off (the caller names
 * the server, p->last_error and p->retry_at). The pool is bound by then. */
CmNetConn *cm_net_pool_pick(CmNetPool *p, PyObject *loop, const CmNetPick *how, void *arg);

/* 1 while no new connection may be opened (now < retry_at). */
static inline int cm_net_pool_backing_off(const CmNetPool *p, int64_t now)
{
    return now < p->retry_at;
}

/* One busy-poll spin over the connections that await the server. The pool
 * is pool_of(owner) (borrowed, NULL: none), asked for before each round:
 * code run by the driver's io may close the storage and free the pool.
 * The caller holds owner, and bp lives as long as it. */
void cm_net_pool_spin(CmNetPool *(*pool_of)(void *owner), void *owner, CmBusyPoll *bp);
/* Requests just went out on loop (a flush callback's end): follow the
 * loop and spin when busypoll.h says so. owner is a Python object, held for
 * the spin. */
void cm_net_pool_spin_sent(CmNetPool *(*pool_of)(void *owner), PyObject *owner, CmBusyPoll *bp,
                           PyObject *loop);
/* An inline wait (busypoll.h): spin until done(arg) is 1; 1 when it is. */
int cm_net_pool_wait(CmNetPool *(*pool_of)(void *owner), void *owner, CmBusyPoll *bp,
                     int (*done)(void *arg), void *arg);
/* 1 when a connection of the pool awaits the server. */
int cm_net_pool_awaiting(const CmNetPool *p);
#endif
