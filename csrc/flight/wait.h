/* The future of a flight's remote request (flight/remote.h), written once
 * for every storage that queues a request with a future it is handed (SQL's
 * PgClient and MySQLClient, MongoClient).
 *
 * When the request is answered the storage tells the wait as it would tell
 * an asyncio Future (set_result, set_exception; done() first), and the wait
 * hands the outcome to the flight's call, which its Task awaits: no Future,
 * no FlightProxy and no done-callback per request. Each storage makes its
 * own type from CM_FLIGHT_WAIT_SPEC (so tests can count its objects by
 * their type's references) and registers it as its ops' data.
 *
 * A wait made `held` keeps an outcome that comes before the flight has the
 * op (a request failed while it was being queued) and tells it on
 * cm_flight_wait_unref, never inside the flight's own get/set call. SQL
 * holds its request instead (sql/submit.c) and keeps it, with the instance
 * it is queued on, in `req` and `inst` until the op is let go.
 *
 * Not a GC type, on purpose: the only references to a wait are the
 * request's (its future, until the request is finished or failed, which
 * every request is by its deadline or its storage's close) and the flight's
 * (dropped by unref as soon as the op is made; the call keeps a borrowed
 * pointer). What it refers to (the call, the instance, an outcome kept
 * while held) it lets go when it tells or is handed off, so no cycle runs
 * through it for longer than a request is out, and being tracked would
 * cost every request a GC header and a track/untrack for nothing. */
#ifndef CM_FLIGHT_WAIT_H
#define CM_FLIGHT_WAIT_H
#include "flight/remote.h"

typedef struct {
    PyObject_HEAD
    CmState *st;
    PyObject *call; /* the flight's call told the outcome, or NULL */
    int held;       /* until the flight has the op: outcomes are kept */
    int told;       /* an outcome came (kept in res/err while held) */
    PyObject *res, *err;
    PyObject *inst; /* the storage's: the instance queued on, until let go, or NULL */
    void *req;      /* the storage's, borrowed: its held request, until let go, or NULL */
} CmFlightWaitObject;

extern PyType_Slot cm_flight_wait_slots[];

/* A storage's wait type: CM_FLIGHT_WAIT_SPEC("cacheme._core.XFlightWait") */
#define CM_FLIGHT_WAIT_SPEC(NAME)                                                                  \
    {                                                                                              \
        .name = NAME, .basicsize = sizeof(CmFlightWaitObject),                                     \
        .flags =                                                                                   \
            Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,     \
        .slots = cm_flight_wait_slots                                                              \
    }

/* Make the wait type from spec, add it to mod as `attr` (for tests) and
 * register ops for each of the n storage types with it as the ops' data.
 * 0, or -1 with an exception. */
int cm_flight_wait_register(PyObject *mod, CmState *st, PyType_Spec *spec, const char *attr,
                            const CmRemoteOps *ops, PyObject *const *types, int n);

/* A new wait for call (a reference taken), of the type registered with
 * ops; held: see above. NULL with an exception. */
CmFlightWaitObject *cm_flight_wait_new(CmState *st, const CmRemoteOps *ops, PyObject *call,
                                       int held);

/* What set_result(res) or set_exception(err) (an instance) does, without
 * the method call: for the storage that made w. */
void cm_flight_wait_tell(CmFlightWaitObject *w, PyObject *res, PyObject *err);

/* fut (a flight wait, or NULL) is the future of a get made for a flight:
 * tell its call the value's updated_at, in units of unit_ns since the epoch
 * (ignored when not > 0 or beyond int64 ns), and the load time stored with
 * it (ns, 0 none) (cm_remote_call_age). */
void cm_flight_wait_age(PyObject *fut, int64_t updated, int64_t unit_ns, int64_t load_ns);

/* CmRemoteOps.handoff of a wait. */
PyObject *cm_flight_wait_handoff(CmRemoteOp *op, PyObject *call);

/* CmRemoteOps.unref of a wait: the hold goes with the flight's reference,
 * and an outcome kept meanwhile is told now. (A storage with more to let go
 * does that first, then calls this.) */
void cm_flight_wait_unref(CmRemoteOp *op);

#endif
