/* Per-node-class counters: the 0.3.0 Metrics API plus per-storage hits,
 * misses and errors. Plain C counters bumped on the hot path. */
#ifndef CM_METRICS_H
#define CM_METRICS_H
#include "state.h"

typedef struct {
    PyObject *name; /* storage name (str) */
    uint64_t hits, misses, errors;
    /* fills of this storage after a load: done, and failed (the failed
     * ones are counted in errors too) */
    uint64_t sets, set_errors;
} CmStorageCounters;

/* Load durations as a histogram: upper bounds in ns (Prometheus's default
 * buckets, 5 ms .. 10 s, with 1 ms and 2.5 ms in front for loads served by
 * a fast database); the last bucket is +Inf. */
#define CM_LOAD_BUCKETS 14
extern const uint64_t cm_load_bucket_ns[CM_LOAD_BUCKETS - 1];

/* Refreshes of the freshness options (core/fresh.h), by kind. */
enum {
    CM_REFRESH_BACKGROUND,     /* refresh_after: reloaded behind a hit */
    CM_REFRESH_EARLY,          /* early_refresh: reloaded behind a hit, by chance */
    CM_REFRESH_STALE_IF_ERROR, /* a failed load answered with a kept value */
    CM_REFRESH_KINDS,
};

typedef struct {
    PyObject_HEAD
    uint64_t hit_count, miss_count;
    uint64_t load_success_count, load_failure_count;
    uint64_t total_load_time;               /* ns */
    uint64_t load_buckets[CM_LOAD_BUCKETS]; /* observations per bucket (not cumulative) */
    uint64_t refreshes[CM_REFRESH_KINDS];
    Py_ssize_t nstorages;
    CmStorageCounters *storages;
} CmMetricsObject;

/* A load call (one node's, or a batch's Node.load_all) took ns: its time
 * summed and put in its bucket. The caller counts its successes/failures. */
static inline void cm_metrics_observe_load(CmMetricsObject *m, uint64_t ns)
{
    m->total_load_time += ns;
    int b = 0;
    while (b < CM_LOAD_BUCKETS - 1 && ns > cm_load_bucket_ns[b])
        b++;
    m->load_buckets[b]++;
}

/* Index of the counters for a storage name, added if new; -1 on error. */
Py_ssize_t cm_metrics_storage_index(CmMetricsObject *m, PyObject *name);
#endif
