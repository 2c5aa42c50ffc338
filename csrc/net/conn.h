/* A network connection watched on the asyncio loop: what every driver
 * (Redis, PostgreSQL, MySQL/MariaDB, and the next ones) shares.
 *
 * A driver's connection type is a Python object whose struct starts with a
 * CmNetConn (the way a subclass starts with its base):
 *
 *     struct CmRedisConnObject { CmNetConn net; ...the driver's fields... };
 *
 * The driver opens its socket (or takes the fd of its client library:
 * libpq's PQsocket, MariaDB's mysql_get_socket), and from then on net/ owns
 * the loop side: which of read/write is watched (only what changes is told
 * to the loop), the one timer, and closing. The driver plugs in with a
 * CmNetOps table; net/ calls it for readiness, an expired deadline, the
 * requests left pending at close, and releasing its handle.
 *
 * Deadlines: one rule for every driver. Each connection has one timer, on
 * its own, armed for its earliest deadline (the connect, or the oldest
 * reply it waits for), and re-armed lazily: a deadline set later than the
 * armed one never touches the timer; when it fires it asks the driver for
 * the current deadline and either expires the connection or re-arms. Why
 * this and not a periodic tick: a timeout fires when it is due (a tick of
 * period p fires up to p late, and a short p costs wakeups on an idle
 * loop), a busy connection costs one call_later per timeout period rather
 * than per request, and an idle one costs nothing. A pool-level deadline (a
 * queue waiting for a connection, a periodic sweep) uses the same
 * CmNetTimer with the same lazy rule.
 *
 * Close: cm_net_conn_close unwatches, cancels the timer, closes the fd (or
 * lets the driver's release close it, for a library that owns its socket),
 * takes the connection out of its pool (counting a failure against the
 * server: backoff), then has the driver fail what was pending. After fork
 * and when the loop is gone, cm_net_pool_drop_detached (net/pool.h) closes
 * without touching the loop, the fd first pointed at /dev/null in a forked
 * child (cm_net_fork_fd, net/netloop.h).
 *
 * A driver whose library owns the socket and connects in steps (libpq's
 * PQconnectPoll, MariaDB Connector/C's _start and _cont calls) sets own_fd
 * to 0, takes the fd the library reports after each step
 * (cm_net_conn_set_fd, then cm_net_conn_watch for what the library waits
 * for), and finishes its handle in release: the library closes the socket
 * (after fork the fd points at /dev/null by then, so its goodbye goes
 * nowhere). Its states past the connect (SQL: idle, busy) are numbered from
 * CM_NET_OPEN, and a driver with one deadline at a time (the connect, then
 * the batch in flight) leaves the deadline hook NULL and calls
 * cm_net_conn_set_deadline when a step starts, with 0 when it is done. */
#ifndef CM_NET_CONN_H
#define CM_NET_CONN_H
#include "state.h"

#include <stdint.h>

typedef struct CmNetConn CmNetConn;
typedef struct CmNetPool CmNetPool;
typedef struct CmTlsSession CmTlsSession;

/* A connection's state. A driver may number states of its own from
 * CM_NET_OPEN up (SQL: idle and busy); anything >= CM_NET_OPEN is open. */
enum { CM_NET_CONNECTING, CM_NET_CLOSED, CM_NET_OPEN };

/* A loop timer armed lazily for the earliest of a set of deadlines. */
typedef struct {
    PyObject *handle; /* the loop's TimerHandle, or NULL */
    int64_t at;       /* when it fires (monotonic ns) */
} CmNetTimer;

/* What a driver plugs into its connections. Every hook is called with the
 * connection alive (net/ holds a reference around each call). */
typedef struct {
    /* The fd is ready. From the loop's watch (one of the two) or from a
     * busy-poll spin (both may be set); only what is watched is reported.
     * It must not raise (errors close the connection). */
    void (*io)(CmNetConn *c, int readable, int writable);
    /* The earliest moment something on c must be done by (the connect, the
     * oldest reply awaited), INT64_MAX when nothing is. NULL: c->deadline
     * (0 for none), for drivers that keep one deadline at a time. */
    int64_t (*deadline)(const CmNetConn *c);
    /* That moment has passed: the driver closes c with its timeout error
     * (cm_net_conn_close with failed=1). */
    void (*expired)(CmNetConn *c);
    /* 1 while c waits for the server (a busy-poll spin polls its fd). */
    int (*awaiting)(const CmNetConn *c);
    /* Release the driver's handle and buffers; the fd is closed by then
     * unless the driver owns it (own_fd 0: its library closes it here).
     * detached: no goodbye to the server is wanted (a forked child, whose fd
     * points at /dev/null by then, or a closed loop). c->pool is still set. */
    void (*release)(CmNetConn *c, int detached);
    /* Fail every request still pending on c with tp(msg) (msg a str or
     * None); c is closed and out of its pool (pool: where it was, or NULL).
     * failed: the server failed (not a close asked for). */
    void (*fail_pending)(CmNetConn *c, CmNetPool *pool, PyObject *tp, PyObject *msg, int failed);
} CmNetOps;

struct CmNetConn {
    PyObject_HEAD
    CmState *st;
    const CmNetOps *ops;
    CmNetPool *pool;      /* borrowed: the pool that holds it; NULL once closed */
    PyObject *loop;       /* the loop its fd is watched on */
    int fd;               /* -1 while there is none */
    int own_fd;           /* net/ closes the fd (a socket of the driver's own) */
    int state;            /* CM_NET_CONNECTING, CM_NET_CLOSED, or open (>= CM_NET_OPEN) */
    int reading, writing; /* what the driver watches for (cm_net_conn_watch) */
    /* what the loop watches: the driver's wishes, but for a TLS session
     * waiting for the other direction (tls_wait, net/tls.h) */
    int loop_read, loop_write;
    CmTlsSession *tls; /* TLS (net/tls.h), or NULL: a plain socket */
    int tls_wait;
    int64_t deadline; /* for drivers without a deadline hook; 0: none */
    CmNetTimer timer;
};

/* Set up the CmNetConn part of a new connection object (the rest of it is
 * the driver's): no fd yet, connecting, on loop. */
void cm_net_conn_init(CmNetConn *c, CmState *st, const CmNetOps *ops, PyObject *loop);

/* Watch the fd for reading/writing; only what changes reaches the loop.
 * -1 with an exception. */
int cm_net_conn_watch(CmNetConn *c, int read, int write);
/* Tell the loop what c's watches and TLS wait amount to now (after
 * tls_wait changed). -1 with an exception. */
int cm_net_conn_rewatch(CmNetConn *c);
/* The fd is ready (what the loop watches): the driver's io is told, in
 * terms of what it watches for. */
void cm_net_conn_ready(CmNetConn *c, int readable, int writable);
/* Stop watching (also before the fd changes or is closed). Never raises. */
void cm_net_conn_unwatch(CmNetConn *c);
/* The library moved the connection to another fd (libpq during connect):
 * stop watching the old one; watch the new one with cm_net_conn_watch. */
void cm_net_conn_set_fd(CmNetConn *c, int fd);

/* Something on c must be done by at (monotonic ns): the timer is armed for
 * it unless it is armed already for an earlier moment. -1 with an
 * exception. */
int cm_net_conn_arm(CmNetConn *c, int64_t at);
/* Drivers without a deadline hook: c->deadline = at (0: none), armed. */
int cm_net_conn_set_deadline(CmNetConn *c, int64_t at);

/* c is open and idle, and its loop is closed (nothing is watched there any
 * more): watch it on loop instead, for what the driver watches for; the
 * timer of the closed loop is dropped. -1 with an exception. */
int cm_net_conn_rehome(CmNetConn *c, PyObject *loop);

/* Close c and fail what is pending on it with tp(msg) (msg: a str, or NULL
 * for None). failed: count it against the server (backoff, last_error).
 * Idempotent, safe from within c's own hooks; keeps the exception being
 * raised, if any. */
void cm_net_conn_close(CmNetConn *c, PyObject *tp, PyObject *msg, int failed);
/* Close without touching the loop (it is closed, or the parent's after
 * fork: then fork is 1 and the fd is pointed at /dev/null first); not
 * counted as a failure. */
void cm_net_conn_close_detached(CmNetConn *c, PyObject *tp, PyObject *msg, int fork);

/* GC support for connection types that are GC-tracked. */
int cm_net_conn_traverse(CmNetConn *c, visitproc visit, void *arg);
/* Dealloc's end: close an fd still open (no loop call), drop the loop and
 * timer, free c, then drop its type and the module (cm_state_hold). */
void cm_net_conn_dealloc(CmNetConn *c);

/* Timers (a connection's, or a pool's). Arm t for at on loop, unless armed
 * for an earlier moment; cb is called when it fires (the owner then clears
 * t->handle, checks and re-arms). -1 with an exception. */
int cm_net_timer_arm(CmState *st, PyObject *loop, CmNetTimer *t, int64_t at, PyObject *cb);
/* Cancel (loop alive) and forget. */
void cm_net_timer_cancel(CmState *st, CmNetTimer *t);
/* Forget without cancelling (the loop is closed or not ours after fork). */
static inline void cm_net_timer_drop(CmNetTimer *t)
{
    Py_CLEAR(t->handle);
    t->at = 0;
}
#endif
