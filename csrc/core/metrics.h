/* Per-node-class counters: the 0.3.0 Metrics API plus per-storage hits,
 * misses and errors. Plain C counters bumped on the hot path. */
#ifndef CM_METRICS_H
#define CM_METRICS_H
#include "state.h"

typedef struct {
    PyObject *name; /* storage name (str) */
    uint64_t hits, misses, errors;
} CmStorageCounters;

typedef struct {
    PyObject_HEAD
    uint64_t hit_count, miss_count;
    uint64_t load_success_count, load_failure_count;
    uint64_t total_load_time; /* ns */
    Py_ssize_t nstorages;
    CmStorageCounters *storages;
} CmMetricsObject;

/* Index of the counters for a storage name, added if new; -1 on error. */
Py_ssize_t cm_metrics_storage_index(CmMetricsObject *m, PyObject *name);
#endif
