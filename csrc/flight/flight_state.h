/* The singleflight's part of the module state (CmState.flight): the table
 * of keys in flight, the free lists of its records and objects, and the
 * registry of remote storage types it can call without a future. Kept apart
 * from flight.h so that state.h can embed it without including the rest. */
#ifndef CM_FLIGHT_STATE_H
#define CM_FLIGHT_STATE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

typedef struct CmFlight CmFlight;
typedef struct CmRemoteOps CmRemoteOps;

/* Calls and proxies kept for reuse: a load that suspends allocates neither,
 * so the collector does not count them (see call_dealloc). */
#define CM_CALL_FREE_MAX 16384
#define CM_PROXY_FREE_MAX 4096
#define CM_FLIGHT_FREE_MAX 256
/* Remote storage types with an interface of their own (Redis, SQL, ...). */
#define CM_REMOTE_MAX 8

/* key -> CmFlight, chained buckets of plain C records (flight/table.c). */
typedef struct {
    CmFlight **buckets;
    size_t mask;
    size_t used;
} CmFlightTable;

typedef struct {
    PyTypeObject *CallType;         /* GetCall: what get() returns on a local miss */
    PyTypeObject *ProxyType;        /* FlightProxy: what a leader's Task awaits */
    PyTypeObject *FlightHandleType; /* a flight led from Python (get_all) */
    CmFlightTable table;
    CmFlight *flight_free; /* free records, chained through next */
    size_t flight_free_len;
    uint64_t flight_serial; /* the last flight's CmFlight.serial */
    void *call_free;        /* free GetCall objects, chained through free_next */
    size_t call_free_len;
    void *proxy_free; /* free FlightProxy objects, chained through owner */
    size_t proxy_free_len;
    /* cacheme.core._load_with_timeout(aw, seconds): a load under
     * Meta.load_timeout (set by cacheme.core, see call_loader) */
    PyObject *load_timeout_wrap;
    /* storage types that implement flight/remote.h (strong references) */
    struct {
        PyTypeObject *type;
        const CmRemoteOps *ops;
        PyObject *data; /* the storage's own object for its ops, or NULL */
    } remotes[CM_REMOTE_MAX];
    int nremotes;
} CmFlightState;

#endif
