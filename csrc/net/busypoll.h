/* Busy polling for replies while the asyncio loop has nothing else to do.
 *
 * On an idle loop a reply that takes tens of microseconds costs more in the
 * sleep and wakeup around epoll_wait than in the round trip itself: on the
 * development VM a Redis PING takes 30 us when the client spins on a
 * non-blocking recv and 76-83 us when it sleeps in recv or epoll_wait. So a
 * network storage, after sending a request, schedules one callback with
 * call_soon. When it runs and the loop's ready queue is empty (nothing else
 * would run before the loop goes to sleep), it polls the sockets with
 * requests in flight, with a zero timeout, for up to `limit` seconds and
 * hands what is ready to the driver, which resolves futures. It stops as
 * soon as the ready queue is not empty (a future resolved, so a task is
 * scheduled) or nothing is in flight.
 *
 * Inline waits (SQL): a request sent while the ready queue is empty may
 * instead be waited for in the caller's own call; when its reply comes
 * within the limit, the call returns the result and the caller does not
 * yield to the loop (a round trip then costs no loop iteration either). To
 * keep the loop responsive, at most CM_BUSYPOLL_INLINE_BUDGET of such waits
 * run between two loop iterations: the first one puts a marker callback in
 * the ready queue, and until the loop has run it, later requests past the
 * budget go through the loop. So tasks that are ready always run first, and
 * other sockets and timers wait at most about a millisecond.
 *
 * Between two empty polls the spin calls sched_yield(), so that a thread
 * waiting for this CPU (the server itself, on a loaded machine) runs first.
 *
 * The loop's own fd (asyncio's epoll selector, uvloop's libuv backend) is
 * polled with the sockets: it is readable when any fd the loop watches is,
 * so data for another socket (a client's next HTTP request) ends the spin
 * and the loop serves it at once. Timers that fall due wait for the spin,
 * which the limit bounds.
 *
 * The ready queue: asyncio's is BaseEventLoop._ready, a deque. uvloop keeps
 * its own deque in a C field of the Loop, out of Python's reach; the loop's
 * GC traverse still reports it, so among the deques it reports, the one
 * that loop.call_soon appends its (at once cancelled) handle to is taken.
 * A loop where no single deque qualifies never spins.
 *
 * What it costs: CPU while spinning. A spin that times out (a server slower
 * than `limit`) doubles the number of requests that skip the spin (up to
 * 1024), and an answered one resets it, so a slow server costs one wasted
 * spin per 1024 requests. With one usable CPU the default is off: the spin
 * would take the CPU from the server it waits for. */
#ifndef CM_BUSYPOLL_H
#define CM_BUSYPOLL_H
#include "state.h"

#include <poll.h>
#include <stdint.h>

#define CM_BUSYPOLL_DEFAULT 0.0002 /* seconds */
#define CM_BUSYPOLL_MAX_FDS 64
#define CM_BUSYPOLL_MAX_SKIP 1024
#define CM_BUSYPOLL_INLINE_BUDGET 1000000 /* ns of inline waits between loop iterations */

typedef struct {
    double limit;         /* seconds; 0: off */
    PyObject *loop;       /* the loop followed, or NULL */
    PyObject *ready;      /* its ready deque, or NULL: no spinning */
    int loop_fd;          /* the fd the loop sleeps on (epoll), or -1 */
    int pending;          /* the callback is scheduled */
    int skip;             /* requests left that do not spin */
    int backoff;          /* skip after the next timeout */
    int marker;           /* the marker callback is in the ready queue */
    int64_t inline_since; /* first inline wait since the loop ran the marker; 0: none */
    Py_ssize_t hits;      /* spins that ended with a reply */
    Py_ssize_t misses;    /* spins that timed out */
    Py_ssize_t inlined;   /* requests answered within their own call */
    Py_ssize_t yields;    /* spins cut short by other I/O ready on the loop */
} CmBusyPoll;

/* The default limit for this process: CM_BUSYPOLL_DEFAULT, or 0 when the
 * process may run on one CPU only. */
double cm_busypoll_default(void);
/* The `busy_poll` option: None is cm_busypoll_default(); else a number of
 * seconds, 0 (off) to 0.01. -1 with TypeError/ValueError. */
int cm_busypoll_parse(PyObject *opt, double *limit);
/* Follow the loop requests are sent on (a no-op while it stays the same):
 * find its ready queue and fd, unless the limit is 0. Runs in the loop's
 * thread (it may call loop.call_soon). Never raises. */
void cm_busypoll_follow(CmBusyPoll *bp, PyObject *loop);
/* A request was sent: 1 when the caller should schedule the callback now
 * (and then call cm_busypoll_scheduled), else 0. */
int cm_busypoll_wanted(CmBusyPoll *bp);
static inline void cm_busypoll_scheduled(CmBusyPoll *bp) { bp->pending = 1; }

/* One spin. collect() fills up to max pollfds (and the object each belongs
 * to, a new reference) for what is in flight and returns how many; handle()
 * is given each object whose fd is ready, with its revents (it must not
 * raise). The objects are released after each round. Never raises. */
typedef int (*cm_busypoll_collect)(void *ctx, struct pollfd *fds, PyObject **objs, int max);
typedef void (*cm_busypoll_handle)(void *ctx, PyObject *obj, short revents);
/* For collect(): put fd (watched for reading/writing) and obj (a new
 * reference is taken) at position n; returns n + 1. */
static inline int cm_busypoll_add(struct pollfd *fds, PyObject **objs, int n, int fd, int read,
                                  int write, PyObject *obj)
{
    fds[n].fd = fd;
    fds[n].events = (short)((read ? POLLIN : 0) | (write ? POLLOUT : 0));
    fds[n].revents = 0;
    objs[n] = Py_NewRef(obj);
    return n + 1;
}
/* For handle(): what the revents mean (an error or hang-up reads as
 * readable, so that the driver sees it on its next read). */
static inline int cm_busypoll_readable(short revents)
{
    return (revents & (POLLIN | POLLHUP | POLLERR)) != 0;
}
static inline int cm_busypoll_writable(short revents)
{
    return (revents & (POLLOUT | POLLERR)) != 0;
}
void cm_busypoll_run(CmBusyPoll *bp, cm_busypoll_collect collect, cm_busypoll_handle handle,
                     void *ctx);

/* Inline waits. 1 when a request just sent may be waited for now: the
 * ready queue holds nothing but the marker, the budget is not spent, and
 * no timeout backoff is pending. The caller then schedules the marker when
 * inline_since is 0 (and sets marker and inline_since = now), and calls
 * cm_busypoll_wait. */
int cm_busypoll_inline_ok(CmBusyPoll *bp, int64_t now);
/* Spin until done(ctx) is 1 (-1 stops: an error); 1 when it is. */
int cm_busypoll_wait(CmBusyPoll *bp, cm_busypoll_collect collect, cm_busypoll_handle handle,
                     int (*done)(void *ctx), void *ctx);
/* The marker ran: the loop has iterated, the budget starts over. */
static inline void cm_busypoll_iterated(CmBusyPoll *bp)
{
    bp->marker = 0;
    bp->inline_since = 0;
}

int cm_busypoll_traverse(CmBusyPoll *bp, visitproc visit, void *arg);
void cm_busypoll_clear(CmBusyPoll *bp);
#endif
