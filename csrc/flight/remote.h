/* How the singleflight reaches a remote storage without a Python future.
 *
 * A storage type that can run a read or a fill for a flight's call with no
 * future of its own (the call is then what its Task waits on) registers a
 * table of these functions for its type. The singleflight never calls a
 * driver by name: it looks the storage's type up here, and a storage
 * without an entry is called through its Python methods (get/set return an
 * awaitable). The storage reports back through cm_remote_done and
 * cm_remote_wake_waiter. This header includes nothing of any driver.
 */
#ifndef CM_FLIGHT_REMOTE_H
#define CM_FLIGHT_REMOTE_H
#include "state.h"

/* A storage's own record of one request in flight; opaque to the flight. */
typedef struct CmRemoteOp CmRemoteOp;

struct CmRemoteOps {
    /* 1 if storage's method `name` (st->s_get or st->s_set) is its type's
     * own, so that get/set below do what calling it would; 0 if a subclass
     * or the instance overrides it (the flight then calls the method). */
    int (*direct)(CmState *st, PyObject *storage, PyObject *name);
    /* Send a read of node (a fill of node = value with ttl) on loop for the
     * flight's call `call`, with no future: the op takes a reference to the
     * call and hands it the outcome through cm_remote_done. Returns the op
     * with the caller's reference (drop it with unref), or NULL with an
     * exception. */
    CmRemoteOp *(*get)(PyObject *storage, PyObject *node, PyObject *ser, PyObject *loop,
                       PyObject *call);
    CmRemoteOp *(*set)(PyObject *storage, PyObject *node, PyObject *value, PyObject *ttl,
                       PyObject *ser, PyObject *loop, PyObject *call);
    /* The op's outcome goes to `call` (a new reference taken; NULL: to
     * nobody, the op goes on) instead; returns the op's reference to the
     * call it had. */
    PyObject *(*handoff)(CmRemoteOp *op, PyObject *call);
    /* Drop a reference to the op; the last one may finish it at once. */
    void (*unref)(CmRemoteOp *op);
    /* Optional (NULL: none). fut is a future a storage call of this type
     * has just returned: make waiter (a FlightProxy of loop) be woken by the
     * op behind it through cm_remote_wake_waiter, rather than as a
     * done-callback of fut. 1 attached, 0 not. */
    int (*attach_waiter)(CmState *st, PyObject *fut, PyObject *waiter, PyObject *loop);
    /* 1: gets made for a call report the value's age (cm_remote_call_age;
     * a fill may store the call's load time, else early_refresh has no
     * delta there), so that the freshness options work on the storage,
     * stale_if_error included (fills for it get a TTL longer by
     * Meta.stale_if_error: the age says when the value expired). */
    int ages;
    /* Optional (NULL: none), with ages: storage.get_all(nodes, ser) whose
     * pairs are triples (node, value, updated_at: UTC ns since the epoch, 0
     * unknown) or 4-tuples (node, value, updated_at, load_ns: the load time
     * stored with the value, ns, 0 none), for get_all of a node with
     * freshness options: a hit whose age is due starts a refresh, and the
     * local copies keep load_ns (early_refresh's delta). NULL with an
     * exception. */
    PyObject *(*get_all_aged)(CmState *st, PyObject *storage, PyObject *nodes, PyObject *ser);
    /* Optional (NULL: none). local (a LocalStore) sits in front of storage
     * in a node's chain (told as node configs are built): 1 when storage
     * keeps it coherent (evicts from it what changes in the storage, Redis
     * tracking), 0 when not; -1 with an exception. A covered local's TTL
     * is capped by storage's (the storage may expire a key without a word). */
    int (*cover)(PyObject *storage, PyObject *local);
    /* Optional (NULL: none): a lease on the key across processes, so that
     * one process loads it while the others wait for its value. Asked when
     * every remote cache missed, before the load. lease_acquire: an
     * awaitable of a 2-tuple (lease, value): lease (not None) when this
     * process holds the key's lease and is to load and fill; else value,
     * which the holder loaded (read from this storage). Py_None (new
     * reference) when the storage takes no leases; NULL with an exception.
     * lease_release: give the lease up (stolen) once the fills are done or
     * the flight failed, waking the other processes. Never raises. */
    PyObject *(*lease_acquire)(CmState *st, PyObject *storage, PyObject *node, PyObject *ser);
    void (*lease_release)(CmState *st, PyObject *lease);
    /* get_all's lease_acquire for many nodes (a non-empty list) at once: an
     * awaitable of a list with, per node in order, (lease, value) as above
     * or (None, sentinel) when its lease failed (logged: it loads without
     * one); Py_None when the storage takes no leases. */
    PyObject *(*lease_acquire_all)(CmState *st, PyObject *storage, PyObject *nodes, PyObject *ser);
};

/* Give back the leases of aw (reference stolen), an awaitable of ops'
 * lease_acquire or lease_acquire_all that its caller leaves without its
 * outcome: each lease in a done result, (lease, value) or a list of them;
 * a pending aw is cancelled (no lease is taken for nobody). Never raises;
 * an exception being raised is kept. */
void cm_lease_aw_drop(CmState *st, const CmRemoteOps *ops, PyObject *aw);

/* Register ops for storages of type (and its subclasses), with data (a
 * reference taken, or NULL) that the ops may ask for with cm_remote_data;
 * 0, or -1 with an exception. */
int cm_remote_register(CmState *st, PyTypeObject *type, const CmRemoteOps *ops, PyObject *data);
/* The data registered with ops (borrowed), or NULL. */
PyObject *cm_remote_data(CmState *st, const CmRemoteOps *ops);

/* st->nodecfg_built (set by cm_flight_init): each remote storage with a
 * cover op told of the local caches in front of it in cfg, and those
 * covered capped at its TTL; 0, or -1 with an exception. */
int cm_remote_cover_locals(CmState *st, struct CmNodeConfigObject_ *cfg);

/* The ops of storage's type, or NULL. */
static inline const CmRemoteOps *cm_remote_find(CmState *st, PyObject *storage)
{
    CmFlightState *fs = &st->flight;
    for (int i = 0; i < fs->nremotes; i++) {
        if (PyObject_TypeCheck(storage, fs->remotes[i].type))
            return fs->remotes[i].ops;
    }
    return NULL;
}

/* Offer waiter to every registered type's attach_waiter: 1 attached. */
/* For a storage's ops.direct: 1 if storage's method `name` is base's own
 * (not overridden by a subclass or set on the instance), so the flight may
 * call the storage's C functions instead of the method. Never raises. */
int cm_remote_method_is_own(PyObject *storage, PyTypeObject *base, PyObject *name);
int cm_remote_attach_waiter(CmState *st, PyObject *fut, PyObject *waiter, PyObject *loop);

/* For a storage whose ops have .ages, about the call an op is made for:
 * the CM_FRESH_* options of its node (0: none, nothing to report), and
 * the time its load took in *load_ns (ns; 0 unknown), to store with a fill. */
unsigned int cm_remote_call_fresh(PyObject *call, int64_t *load_ns);
/* Meta.stale_if_error of call's node in ns (0: none): how much longer than
 * its TTL a fill for it was asked to keep the value (see ages above). */
int64_t cm_remote_call_stale_ns(PyObject *call);
/* What a get made for call read with the value, before cm_remote_done:
 * its updated_at (UTC ns since the epoch, 0 unknown) and the load time
 * stored with it (ns, 0 none). */
void cm_remote_call_age(PyObject *call, int64_t updated_ns, int64_t load_ns);

/* Called by a storage. The op made for `call` (reference stolen) finished
 * with res or err (borrowed). */
void cm_remote_done(CmState *st, PyObject *call, PyObject *res, PyObject *err);
/* Wake waiter (stolen; of loop, stolen), which waits for fut, from one loop
 * callback shared with the other objects woken before it runs. */
void cm_remote_wake_waiter(CmState *st, PyObject *waiter, PyObject *fut, PyObject *loop);

#endif
