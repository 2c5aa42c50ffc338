/* What the files of the singleflight share (flight/ only).
 *
 * Three different things take part in a get() that misses the local caches:
 *   - a GetCall (CmCallObject): the awaitable one caller's get() returns on
 *     a local miss; it leads a flight, waits on one, or drives one for a Task;
 *   - a flight (CmFlight, flight.h): the shared record of one key's load;
 *   - a remote op (CmRemoteOp, remote.h): one storage request made for a call.
 *
 * A call goes through roles:
 *   START  -> LEADS  (no flight for the key: it drives one inline)
 *          -> WAITS  (a flight exists: it waits on it as its own future)
 *          -> DONE   (the flight already has its value)
 *   LEADS  -> cancelled while others wait: its driving state moves into a
 *             new call in role DRIVES run by a Task (leader.c, move_to_task).
 */
#ifndef CM_FLIGHT_CALL_H
#define CM_FLIGHT_CALL_H
#include "flight/flight.h"
#include "flight/remote.h"

#include "base/exc.h"

/* role: what the call is doing for its caller */
enum {
    CALL_START,  /* made by get(), not yet awaited */
    CALL_LEADS,  /* drives its flight inline, in its caller's Task */
    CALL_DRIVES, /* drives a flight handed to a Task of its own */
    CALL_WAITS,  /* waits on another call's flight */
    CALL_DONE,   /* finished, or gave its work away */
};
/* step: where the driver is in its flight */
enum {
    STEP_REMOTE_GET, /* reading the remote caches in order (idx) */
    STEP_LEASE,      /* every remote cache missed: taking or waiting on the key's lease */
    STEP_LOAD,       /* running the load */
    STEP_RESOLVE,    /* the value is in: fill the locals, settle the flight */
    STEP_FILL,       /* filling the remote caches that missed (idx) */
    STEP_END,
};
/* fut_state: the call as the future its Task awaits */
enum {
    FUT_IDLE,      /* not a future now */
    FUT_JOINED,    /* a waiter in its flight's list, not yet awaited */
    FUT_PENDING,   /* awaited: the Task waits for its wakeup */
    FUT_SETTLED,   /* the outcome is in */
    FUT_CANCELLED, /* cancel() was called */
};
/* remote_state: a remote op made for the call with no future */
enum {
    REMOTE_IDLE,    /* none */
    REMOTE_PENDING, /* the op is out */
    REMOTE_DONE,    /* it finished: remote_res / remote_err hold the outcome */
};

typedef struct {
    PyObject_HEAD
    CmState *st;
    int role;       /* CALL_* */
    int step;       /* STEP_* */
    Py_ssize_t idx; /* the cache being read or filled */
    PyObject *node;
    CmNodeConfigObject *cfg;
    PyObject *key;
    Py_hash_t hash;
    PyObject *load_fn;
    PyObject *memo_fn;
    PyObject *memo_argv; /* tuple: positional then keyword values */
    Py_ssize_t memo_nargs;
    PyObject *memo_kwnames;
    uint32_t missed;     /* bit i: cache i missed */
    uint64_t local_puts; /* see CmRequest */
    CmFlight *fl;
    PyObject *sub;     /* awaitable iterator being delegated to */
    PyObject *pending; /* yielded value the Task must see first (handoff) */
    PyObject *lead_px; /* the proxy the leader's Task awaits, until resumed */
    int has_pending;
    int refresh; /* 1 + CM_REFRESH_*: drives a background refresh (refresh.c) */
    /* 1: reads the remote caches past a background refresh's flight
     * instead of waiting for it, with no flight of its own; 2: they missed,
     * it joins that flight (call.c) */
    int bypass;
    /* while bypass: the serial of the flight it reads past, whose state
     * decides whether what it reads may fill the caches
     * (cm_flight_past_fills) */
    uint64_t past;
    int64_t load_start;
    int64_t load_ns; /* how long its load took, once done */
    /* freshness (core/fresh.h): the age a remote get reported with its
     * value (cm_remote_call_age), a value past its TTL kept for
     * stale_if_error, and a refresh (1 + CM_REFRESH_*) to start at the end */
    int64_t remote_updated_ns, remote_load_ns;
    PyObject *stale_value;
    int refresh_due;
    /* a remote hit's age: when the value was written (0: now) and the
     * soonest it can expire there (0: never), for the local fills */
    int64_t fill_written, fill_expire;
    PyObject *value;
    /* the call as the future its Task waits on, while it waits on its flight
     * (WAITS) or on a remote op of its own (see waiter.c) */
    int fut_state;        /* FUT_* */
    int blocking;         /* _asyncio_future_blocking */
    PyObject *loop;       /* the loop it waits on */
    void *loop_tstate;    /* the thread state that runs loop (PyThreadState_Get) */
    PyObject *wakeup;     /* the Task's wakeup */
    PyObject *wakeup_ctx; /* its context (or NULL) */
    PyObject *cancel_msg; /* cancel(msg) */
    /* a remote op made for it with no future (leader.c, start_call) */
    int remote_state;                  /* REMOTE_* */
    const CmRemoteOps *remote;         /* the storage's interface */
    CmRemoteOp *remote_op;             /* borrowed: the op holds us until it finishes */
    PyObject *remote_res, *remote_err; /* its outcome */
    /* the key's cross-process lease while this flight holds it (lease.c),
     * given up through lease_ops when the flight ends */
    PyObject *lease;
    const CmRemoteOps *lease_ops;
    /* the awaitable of lease_acquire while the flight waits on it */
    PyObject *lease_aw;
    int untracked;        /* cm_call_held took it out of the collector's lists */
    int wakeup_untracked; /* ... and the Task's wakeup with it */
    void *free_next;      /* in the free list (st->flight.call_free) */
} CmCallObject;

/* ---- table.c: the flight records */
CmFlight *cm_flight_find(CmState *st, PyObject *key, Py_hash_t hash);
/* fl (of cm_flight_find), or NULL when nobody here could wait for it: its
 * loop was closed under it (loop.close() with its Task pending), or, on
 * its own thread, that loop is not the one running (only that loop can
 * settle it). Such a flight leaves the table, and the caller leads anew;
 * those already in it keep it. Asks the loop only for a flight in progress
 * (a join). */
CmFlight *cm_flight_joinable(CmState *st, CmFlight *fl);
/* A new flight in the table with one reference (the caller's). */
CmFlight *cm_flight_start(CmState *st, PyObject *key, Py_hash_t hash);
void cm_flight_unlink(CmState *st, CmFlight *fl);
void cm_flight_release(CmState *st, CmFlight *fl);
void cm_flight_remove(CmState *st, CmFlight *fl);
void cm_flight_table_empty(CmState *st);
void cm_flight_table_free(CmState *st);
int cm_flight_table_traverse(CmState *st, visitproc visit, void *arg);
int cm_flight_add_waiter(CmFlight *fl, PyObject *call);
void cm_flight_drop_waiter(CmFlight *fl, PyObject *call);
void cm_flight_settle(CmState *st, CmFlight *fl, PyObject *value, PyObject *exc);
void cm_flight_raise(CmFlight *fl);

/* ---- call.c: the GetCall type */
int cm_call_init(PyObject *mod, CmState *st);
PyObject *cm_call_alloc(CmState *st);
void cm_call_free_clear(CmState *st);
void cm_call_held(PyObject *call);
void cm_call_unheld(PyObject *call);
void cm_call_wakeup_track(CmCallObject *g);
void cm_call_abort(CmCallObject *g);

/* ---- leader.c: driving a flight */
PySendResult cm_leader_drive(CmCallObject *g, PyObject *arg, PyObject *exc, PyObject **out);
PySendResult cm_leader_suspend(CmCallObject *g, PyObject *yielded, PyObject **out);
int cm_leader_leaves(CmCallObject *g, PyObject *pending);
int cm_leader_cancelled(CmCallObject *g, PyObject *pending);
PyObject *cm_call_recheck_locals(CmCallObject *g);

/* ---- lease.c: a flight's cross-process lease (flight/remote.h) */
/* Start taking the lease of one of g's remote caches that missed: 1 (g->sub
 * is the awaitable), 0 when no storage takes leases. Never fails: a storage
 * that cannot is logged and counted, and the flight loads without one. */
int cm_lease_start(CmCallObject *g);
/* The outcome of g->sub (res or e, both stolen): 0 with g->step set (LOAD,
 * or RESOLVE with g->value), -1 with *err the flight's failure (a
 * cancellation). */
int cm_lease_done(CmCallObject *g, PyObject *res, PyObject *e, PyObject **err);
/* Give up the lease g holds, if any. */
void cm_lease_end(CmCallObject *g);

/* ---- remote.c: a call waiting on a remote op of its own */
void cm_call_remote_release(CmCallObject *g);
void cm_call_remote_detach(CmCallObject *g);
PySendResult cm_call_remote_resume(CmCallObject *g, PyObject *exc, PyObject **res);
void cm_remote_clear(CmState *st);
int cm_remote_traverse(CmState *st, visitproc visit, void *arg);

/* ---- waiter.c: a call as its own future */
int cm_waiter_join(CmCallObject *g, CmFlight *fl);
void cm_waiter_leave(CmCallObject *g);
void cm_waiter_settled(CmState *st, PyObject *call, int cancelled);
PySendResult cm_waiter_step(CmCallObject *g, PyObject *exc, PyObject **out);
PyObject *cm_call_cancelled_error(CmCallObject *g);
void cm_call_fire(CmCallObject *g);
void cm_call_fire_batched(PyObject *call);
void cm_call_wake(CmState *st, CmCallObject *g);
PyObject *cm_call_add_done_callback(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames);
PyObject *cm_call_remove_done_callback(PyObject *self, PyObject *fn);
PyObject *cm_call_cancel(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                         PyObject *kwnames);
PyObject *cm_call_result(PyObject *self, PyObject *unused);
PyObject *cm_call_exception(PyObject *self, PyObject *unused);
PyObject *cm_call_done(PyObject *self, PyObject *unused);
PyObject *cm_call_cancelled(PyObject *self, PyObject *unused);
PyObject *cm_call_get_blocking(PyObject *self, void *unused);

/* ---- proxy.c: the leader's stand-in future */
int cm_proxy_init(PyObject *mod, CmState *st);
PyObject *cm_proxy_new(CmCallObject *g, PyObject *target);
void cm_proxy_free_clear(CmState *st);
int cm_proxy_thrown_by_target(CmState *st, PyObject *px, PyObject *exc);

/* ---- handle.c: flights led from Python */
int cm_handle_init(PyObject *mod, CmState *st);
#endif
