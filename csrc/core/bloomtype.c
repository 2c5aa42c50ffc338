/* The BloomFilter type: BloomFilter(size, false_positive_rate) with put and
 * contains, cleared automatically after `size` puts (see bloom.c). */
#include "core/bloomtype.h"

#include "core/bloom.h"
#include "core/hash.h"

typedef struct {
    PyObject_HEAD
    cm_bloom bloom;
} CmBloomObject;

int cm_bloomtype_seen_or_put(PyObject *bf, Py_hash_t hash)
{
    cm_bloom *b = &((CmBloomObject *)bf)->bloom;
    uint64_t h = cm_mix64((uint64_t)hash);
    if (cm_bloom_contains(b, h))
        return 1;
    cm_bloom_put(b, h);
    return 0;
}

static PyObject *bloomtype_new(PyTypeObject *tp, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"size", "false_positive_rate", NULL};
    long long size;
    double fp;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Ld:BloomFilter", kwlist, &size, &fp))
        return NULL;
    if (size <= 0) {
        PyErr_Format(PyExc_ValueError, "BloomFilter size must be > 0, got %lld", size);
        return NULL;
    }
    if (!(fp > 0.0 && fp < 1.0)) {
        PyErr_Format(PyExc_ValueError,
                     "BloomFilter false_positive_rate must be between 0 and 1, got %R",
                     PyTuple_GET_SIZE(args) > 1 ? PyTuple_GET_ITEM(args, 1) : Py_None);
        return NULL;
    }
    CmBloomObject *self = (CmBloomObject *)tp->tp_alloc(tp, 0);
    if (self == NULL)
        return NULL;
    if (cm_bloom_init(&self->bloom, (uint64_t)size, fp) < 0) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static PyObject *bloomtype_put(PyObject *self, PyObject *key)
{
    Py_hash_t h = PyObject_Hash(key);
    if (h == -1)
        return NULL;
    cm_bloom_put(&((CmBloomObject *)self)->bloom, cm_mix64((uint64_t)h));
    Py_RETURN_NONE;
}

static int bloomtype_sq_contains(PyObject *self, PyObject *key)
{
    Py_hash_t h = PyObject_Hash(key);
    if (h == -1)
        return -1;
    return cm_bloom_contains(&((CmBloomObject *)self)->bloom, cm_mix64((uint64_t)h));
}

static PyObject *bloomtype_contains(PyObject *self, PyObject *key)
{
    int r = bloomtype_sq_contains(self, key);
    return r < 0 ? NULL : PyBool_FromLong(r);
}

static PyObject *bloomtype_clear(PyObject *self, PyObject *Py_UNUSED(x))
{
    cm_bloom_clear(&((CmBloomObject *)self)->bloom);
    Py_RETURN_NONE;
}

static PyObject *bloomtype_get_count(PyObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(((CmBloomObject *)self)->bloom.count);
}

static PyObject *bloomtype_get_size(PyObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(((CmBloomObject *)self)->bloom.capacity);
}

static PyObject *bloomtype_memory(PyObject *self, PyObject *Py_UNUSED(x))
{
    return PyLong_FromSize_t(cm_bloom_memory(&((CmBloomObject *)self)->bloom));
}

static void bloomtype_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    cm_bloom_destroy(&((CmBloomObject *)self)->bloom);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef bloomtype_methods[] = {
    {"put", bloomtype_put, METH_O, "put(key): record key"},
    {"contains", bloomtype_contains, METH_O, "contains(key) -> bool, with false positives"},
    {"clear", bloomtype_clear, METH_NOARGS, "forget everything"},
    {"memory", bloomtype_memory, METH_NOARGS, "bytes of the bit array"},
    {NULL, NULL},
};

static PyGetSetDef bloomtype_getset[] = {
    {"count", bloomtype_get_count, NULL, "puts since the last clear", NULL},
    {"size", bloomtype_get_size, NULL, "puts after which the filter clears itself", NULL},
    {NULL},
};

static PyType_Slot bloomtype_slots[] = {
    {Py_tp_new, bloomtype_new},
    {Py_tp_methods, bloomtype_methods},
    {Py_tp_getset, bloomtype_getset},
    {Py_sq_contains, bloomtype_sq_contains},
    {Py_tp_dealloc, bloomtype_dealloc},
    {Py_tp_doc, "BloomFilter(size, false_positive_rate): cleared after size puts."},
    {0, NULL},
};

static PyType_Spec bloomtype_spec = {
    .name = "cacheme._core.BloomFilter",
    .basicsize = sizeof(CmBloomObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = bloomtype_slots,
};

int cm_bloomtype_init(PyObject *mod, CmState *st)
{
    st->BloomFilterType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &bloomtype_spec, NULL);
    if (st->BloomFilterType == NULL)
        return -1;
    return PyModule_AddType(mod, st->BloomFilterType);
}
