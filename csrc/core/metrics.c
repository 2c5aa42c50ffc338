/* Metrics: counters of a node class, read through the 0.3.0 method names.
 * Rates are 0.0 (not ZeroDivisionError) before anything was counted. */
#include "core/metrics.h"
#include <structmember.h>

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
    m->storages[m->nstorages] = (CmStorageCounters){Py_NewRef(name), 0, 0, 0};
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
        PyObject *d =
            Py_BuildValue("{sKsKsK}", "hits", (unsigned long long)c->hits, "misses",
                          (unsigned long long)c->misses, "errors", (unsigned long long)c->errors);
        if (d == NULL || PyDict_SetItem(out, c->name, d) < 0) {
            Py_XDECREF(d);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(d);
    }
    return out;
}

static PyObject *metrics_reset(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmMetricsObject *m = M(self);
    m->hit_count = m->miss_count = 0;
    m->load_success_count = m->load_failure_count = m->total_load_time = 0;
    for (Py_ssize_t i = 0; i < m->nstorages; i++)
        m->storages[i].hits = m->storages[i].misses = m->storages[i].errors = 0;
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
    m->total_load_time += ns;
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
    {"reset", metrics_reset, METH_NOARGS, "zero every counter"},
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
