/* Metrics: counters of a node class, read through the 0.3.0 method names.
 * Rates are 0.0 (not ZeroDivisionError) before anything was counted. */
#include "core/metrics.h"
#include <string.h>
#include <structmember.h>

#define MS 1000000ull
const uint64_t cm_load_bucket_ns[CM_LOAD_BUCKETS - 1] = {
    1 * MS,   2500000ull, 5 * MS,    10 * MS,   25 * MS,   50 * MS,    100 * MS,
    250 * MS, 500 * MS,   1000 * MS, 2500 * MS, 5000 * MS, 10000 * MS,
};

Py_ssize_t cm_metrics_storage_index(CmMetricsObject *m, PyObject *name)
{
    for (Py_ssize_t i = 0; i < m->nstorages; i++) {
        int eq = PyObject_RichCompareBool(m->storages[i].name, name, Py_EQ);
        if (eq < 0)
            return -1;
        if (eq)
            return i;
    }
    CmStorageCounters *grown =
        PyMem_Realloc(m->storages, sizeof(CmStorageCounters) * (m->nstorages + 1));
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    m->storages = grown;
    m->storages[m->nstorages] = (CmStorageCounters){Py_NewRef(name), 0, 0, 0, 0, 0};
    return m->nstorages++;
}

static PyObject *metrics_new(PyTypeObject *tp, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Metrics() takes no arguments");
        return NULL;
    }
    return tp->tp_alloc(tp, 0); /* zeroed */
}

static double ratio(uint64_t a, uint64_t b) { return b == 0 ? 0.0 : (double)a / (double)b; }

#define M(self) ((CmMetricsObject *)(self))
#define CM_METRIC_INT(fn, expr)                                                                    \
    static PyObject *fn(PyObject *self, PyObject *Py_UNUSED(x))                                    \
    {                                                                                              \
        return PyLong_FromUnsignedLongLong(expr);                                                  \
    }
#define CM_METRIC_RATE(fn, expr)                                                                   \
    static PyObject *fn(PyObject *self, PyObject *Py_UNUSED(x)) { return PyFloat_FromDouble(expr); }

CM_METRIC_INT(metrics_request_count, M(self)->hit_count + M(self)->miss_count)
CM_METRIC_INT(metrics_hit_count, M(self)->hit_count)
CM_METRIC_INT(metrics_miss_count, M(self)->miss_count)
CM_METRIC_INT(metrics_load_success_count, M(self)->load_success_count)
CM_METRIC_INT(metrics_load_failure_count, M(self)->load_failure_count)
CM_METRIC_INT(metrics_load_count, M(self)->load_success_count + M(self)->load_failure_count)
CM_METRIC_INT(metrics_total_load_time, M(self)->total_load_time)
CM_METRIC_RATE(metrics_hit_rate,
               ratio(M(self)->hit_count, M(self)->hit_count + M(self)->miss_count))
CM_METRIC_RATE(metrics_miss_rate,
               ratio(M(self)->miss_count, M(self)->hit_count + M(self)->miss_count))
CM_METRIC_RATE(metrics_load_failure_rate,
               ratio(M(self)->load_failure_count,
                     M(self)->load_success_count + M(self)->load_failure_count))
CM_METRIC_RATE(metrics_average_load_time,
               ratio(M(self)->total_load_time,
                     M(self)->load_success_count + M(self)->load_failure_count))

static PyObject *metrics_storage_stats(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmMetricsObject *m = M(self);
    PyObject *out = PyDict_New();
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < m->nstorages; i++) {
        CmStorageCounters *c = &m->storages[i];
        PyObject *d = Py_BuildValue(
            "{sKsKsKsKsK}", "hits", (unsigned long long)c->hits, "misses",
            (unsigned long long)c->misses, "errors", (unsigned long long)c->errors, "sets",
            (unsigned long long)c->sets, "set_errors", (unsigned long long)c->set_errors);
        if (d == NULL || PyDict_SetItem(out, c->name, d) < 0) {
            Py_XDECREF(d);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(d);
    }
    return out;
}

/* _load_histogram() -> ((upper bound in seconds, ...), [count per bucket]):
 * the last count is the +Inf bucket; counts are per bucket, not cumulative */
static PyObject *metrics_load_histogram(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmMetricsObject *m = M(self);
    PyObject *bounds = PyTuple_New(CM_LOAD_BUCKETS - 1);
    PyObject *counts = PyList_New(CM_LOAD_BUCKETS);
    if (bounds == NULL || counts == NULL)
        goto fail;
    for (int i = 0; i < CM_LOAD_BUCKETS; i++) {
        if (i < CM_LOAD_BUCKETS - 1) {
            PyObject *b = PyFloat_FromDouble((double)cm_load_bucket_ns[i] / 1e9);
            if (b == NULL)
                goto fail;
            PyTuple_SET_ITEM(bounds, i, b);
        }
        PyObject *c = PyLong_FromUnsignedLongLong(m->load_buckets[i]);
        if (c == NULL)
            goto fail;
        PyList_SET_ITEM(counts, i, c);
    }
    return Py_BuildValue("(NN)", bounds, counts);
fail:
    Py_XDECREF(bounds);
    Py_XDECREF(counts);
    return NULL;
}

/* refresh_counts() -> {"background": n, "early": n, "stale_if_error": n} */
static PyObject *metrics_refresh_counts(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmMetricsObject *m = M(self);
    return Py_BuildValue("{sKsKsK}", "background",
                         (unsigned long long)m->refreshes[CM_REFRESH_BACKGROUND], "early",
                         (unsigned long long)m->refreshes[CM_REFRESH_EARLY], "stale_if_error",
                         (unsigned long long)m->refreshes[CM_REFRESH_STALE_IF_ERROR]);
}

static PyObject *metrics_reset(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmMetricsObject *m = M(self);
    m->hit_count = m->miss_count = 0;
    m->load_success_count = m->load_failure_count = m->total_load_time = 0;
    memset(m->load_buckets, 0, sizeof(m->load_buckets));
    memset(m->refreshes, 0, sizeof(m->refreshes));
    for (Py_ssize_t i = 0; i < m->nstorages; i++) {
        CmStorageCounters *c = &m->storages[i];
        c->hits = c->misses = c->errors = c->sets = c->set_errors = 0;
    }
    Py_RETURN_NONE;
}

/* _record(hits, misses, load_ok, load_fail, load_ns): for the Python parts
 * of the request flow (get_all) */
static PyObject *metrics_record(PyObject *self, PyObject *args)
{
    unsigned long long h, mi, ok, fail, ns;
    if (!PyArg_ParseTuple(args, "KKKKK:_record", &h, &mi, &ok, &fail, &ns))
        return NULL;
    CmMetricsObject *m = M(self);
    m->hit_count += h;
    m->miss_count += mi;
    m->load_success_count += ok;
    m->load_failure_count += fail;
    if (ok + fail > 0)
        cm_metrics_observe_load(m, ns);
    Py_RETURN_NONE;
}

/* _record_storage(name, hits, misses, errors) */
static PyObject *metrics_record_storage(PyObject *self, PyObject *args)
{
    PyObject *name;
    unsigned long long h, mi, e;
    if (!PyArg_ParseTuple(args, "UKKK:_record_storage", &name, &h, &mi, &e))
        return NULL;
    CmMetricsObject *m = M(self);
    Py_ssize_t i = cm_metrics_storage_index(m, name);
    if (i < 0)
        return NULL;
    m->storages[i].hits += h;
    m->storages[i].misses += mi;
    m->storages[i].errors += e;
    Py_RETURN_NONE;
}

static PyObject *metrics_repr(PyObject *self)
{
    CmMetricsObject *m = M(self);
    return PyUnicode_FromFormat("<Metrics hits=%llu misses=%llu loads=%llu failures=%llu>",
                                (unsigned long long)m->hit_count, (unsigned long long)m->miss_count,
                                (unsigned long long)m->load_success_count,
                                (unsigned long long)m->load_failure_count);
}

static PyMethodDef metrics_methods[] = {
    {"request_count", metrics_request_count, METH_NOARGS, "hit_count + miss_count"},
    {"hit_count", metrics_hit_count, METH_NOARGS, "requests answered from a cache"},
    {"hit_rate", metrics_hit_rate, METH_NOARGS, "hit_count / request_count (0.0 if none)"},
    {"miss_count", metrics_miss_count, METH_NOARGS, "requests that started a load"},
    {"miss_rate", metrics_miss_rate, METH_NOARGS, "miss_count / request_count (0.0 if none)"},
    {"load_success_count", metrics_load_success_count, METH_NOARGS, NULL},
    {"load_failure_count", metrics_load_failure_count, METH_NOARGS, NULL},
    {"load_failure_rate", metrics_load_failure_rate, METH_NOARGS,
     "load_failure_count / load_count (0.0 if none)"},
    {"load_count", metrics_load_count, METH_NOARGS, NULL},
    {"total_load_time", metrics_total_load_time, METH_NOARGS, "nanoseconds spent loading"},
    {"average_load_time", metrics_average_load_time, METH_NOARGS,
     "total_load_time / load_count (0.0 if none)"},
    {"storage_stats", metrics_storage_stats, METH_NOARGS,
     "{storage name: {'hits', 'misses', 'errors'}}"},
    {"refresh_counts", metrics_refresh_counts, METH_NOARGS,
     "{'background', 'early', 'stale_if_error'}: refreshes of the freshness options"},
    {"reset", metrics_reset, METH_NOARGS, "zero every counter"},
    {"_load_histogram", metrics_load_histogram, METH_NOARGS, NULL},
    {"_record", metrics_record, METH_VARARGS, NULL},
    {"_record_storage", metrics_record_storage, METH_VARARGS, NULL},
    {NULL, NULL},
};

static PyMemberDef metrics_members[] = {
    {"_hit_count", T_ULONGLONG, offsetof(CmMetricsObject, hit_count), READONLY, NULL},
    {"_miss_count", T_ULONGLONG, offsetof(CmMetricsObject, miss_count), READONLY, NULL},
    {"_load_success_count", T_ULONGLONG, offsetof(CmMetricsObject, load_success_count), READONLY,
     NULL},
    {"_load_failure_count", T_ULONGLONG, offsetof(CmMetricsObject, load_failure_count), READONLY,
     NULL},
    {"_total_load_time", T_ULONGLONG, offsetof(CmMetricsObject, total_load_time), READONLY, NULL},
    {NULL},
};

static int metrics_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    return 0; /* names are str: they cannot form cycles */
}

static void metrics_dealloc(PyObject *self)
{
    CmMetricsObject *m = M(self);
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    for (Py_ssize_t i = 0; i < m->nstorages; i++)
        Py_DECREF(m->storages[i].name);
    PyMem_Free(m->storages);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyType_Slot metrics_slots[] = {
    {Py_tp_new, metrics_new},
    {Py_tp_methods, metrics_methods},
    {Py_tp_members, metrics_members},
    {Py_tp_repr, metrics_repr},
    {Py_tp_traverse, metrics_traverse},
    {Py_tp_dealloc, metrics_dealloc},
    {Py_tp_doc, "Counters of one node class (cacheme.stats(NodeClass))."},
    {0, NULL},
};

static PyType_Spec metrics_spec = {
    .name = "cacheme._core.Metrics",
    .basicsize = sizeof(CmMetricsObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = metrics_slots,
};

int cm_metrics_init(PyObject *mod, CmState *st)
{
    st->MetricsType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &metrics_spec, NULL);
    if (st->MetricsType == NULL)
        return -1;
    return PyModule_AddType(mod, st->MetricsType);
}
