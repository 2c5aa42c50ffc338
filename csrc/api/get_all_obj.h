/* The GetAll object shared by get_all's files: get_all.c (the call and
 * the caller role), get_all_batch.c (the batch role), get_all_await.c (the
 * awaitable that drives either). Private to them. */
#ifndef CM_GET_ALL_OBJ_H
#define CM_GET_ALL_OBJ_H
#include "core/metrics.h"
#include "core/nodecfg.h"
#include "core/store.h"
#include "state.h"

enum { R_CALLER, R_BATCH };
enum { C_START, C_BATCH, C_WAITS };
enum { B_START, B_REMOTE, B_LEASE, B_LOAD_EACH, B_LOAD_ALL, B_SET_ALL };
#define S_DONE 100

typedef struct {
    PyObject_HEAD
    CmState *st;
    int role;
    int step;
    Py_ssize_t pos;          /* the cache, wait, load or set_all in progress */
    PyObject *sub;           /* iterator of the awaitable being driven */
    CmNodeConfigObject *cfg; /* strong */
    PyObject *cls;           /* the nodes' class */
    PyObject *pending;       /* dict key -> node: what missed every local cache */
    PyObject *lead;          /* dict key -> FlightHandle: the keys this request loads */
    /* caller */
    PyObject *keys;         /* list: the full keys in the order of the nodes */
    PyObject *all;          /* dict key -> node, every node */
    PyObject *results;      /* dict key -> value */
    PyObject *local_missed; /* list of (cache index, [keys]) */
    PyObject *wait_keys;    /* list: keys in flight elsewhere */
    PyObject *wait_aws;     /* list: their awaitables */
    /* set or NULL: joined keys whose flight's value may not fill local
     * tiers (cm_flight_unsure, or invalidated while in flight) */
    PyObject *nofill;
    PyObject *task; /* the batch's Task */
    /* both roles, shared: dict key -> the serial of its flight (an int,
     * cm_flight_reads_past), the keys in flight for a background refresh
     * that the batch reads from the remote caches past it; those
     * they miss leave it (the batch then has the caller wait for the
     * refresh through wait_keys / wait_aws / nofill, which it shares too,
     * or leads them when the refresh is over). NULL: none. */
    PyObject *bg;
    /* batch */
    PyObject *todo;          /* dict key -> node: led keys still without a value */
    PyObject *found;         /* dict key -> value */
    PyObject *settled;       /* set: keys whose flight has its value */
    PyObject *remote_missed; /* list of (cache index, [keys]) */
    PyObject *load_keys;     /* list: the keys loaded one by one */
    PyObject *admitted;      /* dict key -> value: what fills the caches */
    /* dict key -> a CmStoreAge (as bytes: cm_ga_age_put) of a remote hit
     * whose age was read (expire: the soonest it expires there), for the
     * local fills */
    PyObject *ages;
    /* dict key -> CM_REFRESH_* of a remote hit whose age called for a
     * refresh, started once the batch is done (NULL: none) */
    PyObject *due;
    Py_ssize_t remote_settled;
    /* the remote get_all running gives (node, value, updated_at[, load_ns]) */
    int remote_aged;
    int64_t load_start;
    /* cross-process leases (get_all_lease.c): the keys asked for (list, in
     * the order of the answer; None once tried without one), the leases
     * held (list), and the storage's ops that give them back */
    PyObject *lease_keys;
    PyObject *leases;
    PyObject *lease_aw; /* the awaitable of lease_acquire_all while waited on */
    const struct CmRemoteOps *lease_ops;
    Py_ssize_t lease_cache; /* the cache whose storage gave the leases */
} CmGetAllObject;

static inline CmStorageCounters *counters(CmNodeConfigObject *cfg, CmCacheRef *r)
{
    return &cfg->metrics->storages[r->stat];
}

/* logger.warning(fmt, name, exc_info=<the exception being raised>); the
 * exception is cleared. Never fails. */
void cm_ga_log_failed(CmState *st, const char *fmt, PyObject *name);
/* Fill local cache r with values[key] for each key of keys (nodes: key ->
 * node), a key in ages (or NULL) with that age (see CmGetAllObject.ages);
 * a failure is counted as an error of the cache and logged. */
void cm_ga_fill_local(CmState *st, CmNodeConfigObject *cfg, CmCacheRef *r, PyObject *keys,
                      PyObject *values, PyObject *nodes, PyObject *ages);
/* (*ages)[key] = age, the dict made when *ages is NULL: 0, or -1 with an
 * exception. */
int cm_ga_age_put(PyObject **ages, PyObject *key, const CmStoreAge *age);
/* Drive aw (stolen) from now on: 1, or -1 with an exception. */
int cm_ga_start_sub(CmGetAllObject *o, PyObject *aw);
/* list.append((i, keys)) */
int cm_ga_list_append_pair(PyObject *list, Py_ssize_t i, PyObject *keys);
/* A new GetAll, its fields NULL, tracked by the collector. */
CmGetAllObject *cm_ga_alloc(CmState *st, int role, int step);
/* The state machines: res is the outcome of the awaitable driven last
 * (stolen; NULL with the exception set). 1: a new one is driven (o->sub);
 * 0: done, *out the value; -1: failed, exception set. */
int cm_ga_caller_advance(CmGetAllObject *o, PyObject *res, PyObject **out);
int cm_ga_batch_advance(CmGetAllObject *o, PyObject *res, PyObject **out);
/* get_all_lease.c. Ask for the leases of the todo keys: 1 (o->sub, step
 * B_LEASE), 0 when no storage takes leases (or it failed: logged), -1 with
 * an exception. */
int cm_ga_lease_start(CmGetAllObject *o);
/* The answer (stolen; NULL with the exception set): the keys another
 * process loaded move from todo to found, the leases got to o->leases. 0,
 * or -1 with an exception (a cancellation). */
int cm_ga_lease_take(CmGetAllObject *o, PyObject *res);
/* Give back the leases held, and those of a lease awaitable left unread. */
void cm_ga_lease_end(CmGetAllObject *o);
/* Creates st->GetAllType. */
int cm_ga_type_init(PyObject *mod, CmState *st);
#endif
