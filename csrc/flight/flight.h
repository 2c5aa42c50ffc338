/* The singleflight: one load per key in flight, shared by every caller.
 *
 * The leader drives its flight inline (remote gets, then the load, then the
 * fills), delegating send/throw to each awaitable the way `await` does, so a
 * flight that never suspends costs no Task and no Future. At its first
 * suspension the flight is handed to a Task. Every other caller waits on
 * the flight as its own future (a waiting GetCall speaks the future
 * protocol to its Task): cancelling one caller then never cancels or
 * strands the others, and the load is cancelled only when every caller has
 * gone. Remote storages are reached through flight/remote.h only.
 */
#ifndef CM_FLIGHT_H
#define CM_FLIGHT_H
#include "core/nodecfg.h"
#include "core/store.h"
#include "state.h"

struct CmFlight {
    CmFlight *next; /* bucket chain */
    PyObject *key;  /* str, hash computed */
    Py_hash_t hash;
    int in_table;
    int done;       /* value or exc is final */
    int abandoned;  /* every caller left: removed from the table, load cancelled */
    int stale;      /* invalidated while in flight: do not fill */
    int background; /* a refresh behind a hit (refresh.c): its waiters leaving never cancel it */
    /* a read of it may predate a write nobody told us of (a coherent
     * storage's invalidations were not heard): fill no local tier */
    int unsure;
    /* this flight's number, unique per process: a read past it (a call or
     * get_all holding no reference to the record) names it by this */
    uint64_t serial;
    PyObject *value, *exc;
    PyObject *exc_tb; /* exc's traceback when it settled: restored on each raise */
    /* the calls waiting (role WAITS), strong references: settled and
     * woken in a batch when the flight settles; one that leaves (cancelled,
     * closed) takes itself out */
    PyObject **waiters;
    Py_ssize_t nwaiters, capwaiters;
    PyObject *task; /* the Task driving it after the first suspension */
    /* the loop its leader runs on, in thread state `tstate` (NULL for a
     * flight led outside a running loop): a waiter in the same thread waits
     * on it; cm_flight_joinable asks it whether the flight can still end */
    PyObject *loop;
    void *tstate;
    Py_ssize_t refs;
};

/* fl (NULL: none) is a background refresh still loading, which a caller of
 * a node with remote caches, having missed the local ones, reads those
 * past rather than join (they hold the value it replaces): 1, else 0. */
static inline int cm_flight_read_past(const CmFlight *fl, const CmNodeConfigObject *cfg)
{
    return fl != NULL && fl->background && !fl->done && cfg->nlocal_prefix < cfg->ncaches;
}

/* Describes a request that missed every local cache. */
typedef struct {
    PyObject *node;
    PyTypeObject *cls; /* config from this class instead of the node's */
    CmNodeConfigObject *cfg;
    PyObject *key;
    Py_hash_t hash;
    PyObject *load_fn;          /* or NULL */
    PyObject *memo_fn;          /* Memoize: fn(*args) instead of load */
    PyObject *const *memo_args; /* borrowed, copied if the request goes on */
    Py_ssize_t memo_nargs;      /* positional count */
    PyObject *memo_kwnames;     /* or NULL */
    uint32_t missed;            /* bit i: cache i missed */
    uint64_t local_puts;        /* sum of the local stores' puts when they missed */
} CmRequest;

/* The awaitable (a GetCall) for a request that missed the local caches;
 * new ref. */
PyObject *cm_get_begin(CmState *st, CmRequest *req);

/* Reload req's key in the background (a refresh of kind CM_REFRESH_*, after
 * a hit that found its value due): a flight of its own, driven by a Task
 * on the running loop, that loads and fills every cache; nobody waits for
 * it. Nothing is started while the key is in flight already. req->cfg,
 * key and hash must be set. 0, or -1 with an exception. */
int cm_refresh_start(CmState *st, CmRequest *req, int kind);
/* A lookup of key in local store (a cache of req->cfg, a node with freshness
 * options): the value (new reference) and its age in *age, or NULL on a
 * miss, with a background refresh of req's node started behind a hit whose
 * age calls for one (a failure to start it is reported, never raised: the
 * value is good). */
PyObject *cm_refresh_lookup(CmState *st, CmRequest *req, CmStoreObject *store, PyObject *key,
                            Py_hash_t hash, CmStoreAge *age);

/* Sum of the puts of cfg's C local stores. */
uint64_t cm_local_puts(CmNodeConfigObject *cfg);

/* Fill local caches [0, upto) of cfg that missed, honouring the doorkeeper
 * decision already taken; age: NULL for a value just loaded, else its age
 * where it was read from (cm_fresh_put): it keeps that age and does not
 * outlive it. */
void cm_fill_locals(CmState *st, CmNodeConfigObject *cfg, PyObject *key, Py_hash_t hash,
                    PyObject *value, uint32_t missed, const CmStoreAge *age);

/* The flight's part of the module state (CmState.flight): traverse and
 * clear, called by module.c. The traverse covers the records in the table
 * and the Python objects they hold. */
int cm_flight_state_traverse(CmState *st, visitproc visit, void *arg);
void cm_flight_state_clear(CmState *st);
/* After fork() in the child: no flight of the parent's can be joined.
 * Called from module.c's os.register_at_fork hook (_after_fork_child). */
void cm_flight_after_fork_child(CmState *st);
/* The load's awaitable aw (stolen; NULL passes through) under the node's
 * Meta.load_timeout: wrapped so that past it the load is cancelled and
 * raises TimeoutError. New reference, or NULL with an exception. */
PyObject *cm_flight_load_timeout(CmState *st, CmNodeConfigObject *cfg, PyObject *aw);
/* Flights joined and led by get_all (api/get_all.c), with the FlightHandle
 * of flight/handle.c. */
/* Join the flight of key if there is one: 1 with *aw (new ref) the
 * awaitable of its value, 2 the same for a flight settled already whose
 * value may not fill local tiers (cm_flight_unsure, or invalidated), 0 when
 * there is none, -1 with an exception. */
int cm_flight_join(CmState *st, PyObject *key, Py_hash_t hash, PyObject **aw);
/* cm_flight_read_past for key's flight: its serial, else 0. */
uint64_t cm_flight_reads_past(CmState *st, CmNodeConfigObject *cfg, PyObject *key, Py_hash_t hash);
/* A read past the refresh flight `serial` (cm_flight_read_past) may fill
 * caches with what it read: 1 while that flight is still key's, unsettled,
 * and neither invalidated nor made unsure since, else 0 (the refresh has
 * filled them with a newer value, or the value read may be invalidated). */
int cm_flight_past_fills(CmState *st, PyObject *key, Py_hash_t hash, uint64_t serial);
/* Once aw (of cm_flight_join) gave its value: 1 when the flight's value may
 * not fill local tiers (marked unsure or invalidated while it was awaited),
 * else 0. */
int cm_flight_joined_unsure(CmState *st, PyObject *aw);
/* Lead a new flight for key: a FlightHandle (new ref; dropping it unsettled
 * fails the flight), Py_None (new ref) when key is in flight already, or
 * NULL with an exception. The functions below take such a handle. */
PyObject *cm_flight_lead(CmState *st, PyObject *key, Py_hash_t hash);
/* Give every waiter value, or exc; a no-op on a settled flight. */
void cm_flight_handle_settle(PyObject *h, PyObject *value, PyObject *exc);
/* Invalidated while in flight: its value must not fill any cache. */
int cm_flight_handle_stale(PyObject *h);
/* key changed elsewhere (invalidate, a Redis invalidation message): a load
 * in flight for it will not fill caches, and new callers load anew once it
 * is done. */
void cm_flight_invalidate(CmState *st, PyObject *key, Py_hash_t hash);
/* A read for key may predate a write that was not heard of (redis/
 * tracking.c): its flight fills no local tier (the remote ones as usual). */
void cm_flight_unsure(CmState *st, PyObject *key, Py_hash_t hash);
/* The same for every flight (a coherent storage's invalidations were lost). */
void cm_flight_unsure_all(CmState *st);
/* The flight's value may not fill local tiers (cm_flight_unsure). */
int cm_flight_handle_unsure(PyObject *h);
/* Callers still waiting on the flight (0 once it is settled). */
Py_ssize_t cm_flight_handle_live_waiters(PyObject *h);
/* Take the flight out of the table: new callers load anew. */
void cm_flight_handle_finish(PyObject *h);

#endif
