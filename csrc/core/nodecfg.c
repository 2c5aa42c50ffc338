/* NodeConfig: Meta read once per class (and per storage registration). */
#include "core/nodecfg.h"

#include "base/clock.h"
#include "base/compat.h"
#include "core/fresh.h"
#include "core/store.h"
#include "core/ttl.h"
#include "flight/remote.h"

#include <math.h>
#include <unistd.h>

static void cfg_release(CmNodeConfigObject *c)
{
    for (Py_ssize_t i = 0; i < c->ncaches; i++) {
        Py_CLEAR(c->caches[i].storage);
        Py_CLEAR(c->caches[i].name);
        Py_CLEAR(c->caches[i].ttl);
    }
    c->ncaches = 0;
    Py_CLEAR(c->version);
    Py_CLEAR(c->serializer);
    Py_CLEAR(c->doorkeeper);
    Py_CLEAR(c->metrics);
    Py_CLEAR(c->key_func);
    Py_CLEAR(c->load_func);
}

/* Cache.ttl_jitter (absent on 0.3.0-style cache objects: 0), in [0, 1) and
 * only with a TTL. */
static int read_jitter(CmState *st, PyTypeObject *cls, PyObject *cache, CmCacheRef *ref)
{
    (void)st;
    ref->jitter = 0.0;
    PyObject *j = PyObject_GetAttrString(cache, "ttl_jitter");
    if (j == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    double v = PyFloat_AsDouble(j);
    if (v == -1.0 && PyErr_Occurred()) {
        Py_DECREF(j);
        return -1;
    }
    if (!(v >= 0.0 && v < 1.0)) {
        PyErr_Format(PyExc_ValueError,
                     "%s.Meta.caches: storage '%U': ttl_jitter must be in [0, 1), got %R",
                     cls->tp_name, ref->name, j);
        Py_DECREF(j);
        return -1;
    }
    Py_DECREF(j);
    if (v > 0.0 && ref->ttl_ns < 0) {
        PyErr_Format(PyExc_ValueError, "%s.Meta.caches: storage '%U': ttl_jitter needs a ttl",
                     cls->tp_name, ref->name);
        return -1;
    }
    ref->jitter = v;
    return 0;
}

double cm_uniform(CmState *st)
{
    if (st->jitter_rng == 0)
        st->jitter_rng = (uint64_t)cm_now_ns() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;
    uint64_t z = (st->jitter_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53; /* [0, 1) */
}

/* A factor uniform in [1 - jitter, 1 + jitter). */
static double jitter_factor(CmState *st, double jitter)
{
    return 1.0 + jitter * (2.0 * cm_uniform(st) - 1.0);
}

int64_t cm_cache_write_ttl_ns(CmState *st, const CmCacheRef *r)
{
    if (r->jitter == 0.0 || r->ttl_ns < 0)
        return r->ttl_ns;
    int64_t ns = (int64_t)((double)r->ttl_ns * jitter_factor(st, r->jitter));
    return ns > 0 ? ns : 1;
}

PyObject *cm_cache_write_ttl(CmState *st, const CmCacheRef *r)
{
    if (r->jitter == 0.0 || r->ttl == Py_None)
        return Py_NewRef(r->ttl);
    PyObject *f = PyFloat_FromDouble(jitter_factor(st, r->jitter));
    if (f == NULL)
        return NULL;
    PyObject *t = PyNumber_Multiply(r->ttl, f); /* timedelta * float: a timedelta */
    Py_DECREF(f);
    return t;
}

static int cfg_traverse(PyObject *self, visitproc visit, void *arg)
{
    CmNodeConfigObject *c = (CmNodeConfigObject *)self;
    Py_VISIT(Py_TYPE(self));
    for (Py_ssize_t i = 0; i < c->ncaches; i++) {
        Py_VISIT(c->caches[i].storage);
        Py_VISIT(c->caches[i].ttl);
    }
    Py_VISIT(c->serializer);
    Py_VISIT(c->doorkeeper);
    Py_VISIT(c->metrics);
    Py_VISIT(c->key_func);
    Py_VISIT(c->load_func);
    return 0;
}

static int cfg_clear(PyObject *self)
{
    cfg_release((CmNodeConfigObject *)self);
    return 0;
}

static void cfg_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    cfg_release((CmNodeConfigObject *)self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

/* Metrics of cls, from its own __dict__ (the metaclass puts one there). */
static CmMetricsObject *class_metrics(CmState *st, PyTypeObject *cls)
{
    PyObject *m = cls->tp_dict != NULL // not since 3.12 on a static builtin type
                      ? PyDict_GetItemWithError(cls->tp_dict, st->s__cacheme_metrics)
                      : NULL; // borrowed
    if (m != NULL && Py_IS_TYPE(m, st->MetricsType))
        return (CmMetricsObject *)Py_NewRef(m);
    if (PyErr_Occurred())
        return NULL;
    m = PyType_GenericNew(st->MetricsType, NULL, NULL);
    if (m == NULL)
        return NULL;
    if (PyObject_SetAttr((PyObject *)cls, st->s__cacheme_metrics, m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return (CmMetricsObject *)m;
}

/* Fill one cache entry from a cacheme.Cache(storage=name, ttl=...). */
static int resolve_cache(CmState *st, PyTypeObject *cls, PyObject *cache, CmCacheRef *ref,
                         CmMetricsObject *metrics)
{
    PyObject *name = PyObject_GetAttr(cache, st->s__storage_name);
    if (name == NULL)
        return -1;
    ref->name = name;
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "%s.Meta.caches: storage name must be str, not %.100s",
                     cls->tp_name, Py_TYPE(name)->tp_name);
        return -1;
    }
    PyObject *storage = PyDict_GetItemWithError(st->storages, name); // borrowed
    if (storage == NULL) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError,
                         "%s.Meta.caches: storage '%U' is not registered "
                         "(call cacheme.register_storage('%U', Storage(...)) first)",
                         cls->tp_name, name, name);
        return -1;
    }
    ref->ttl = PyObject_GetAttr(cache, st->s_ttl);
    if (ref->ttl == NULL)
        return -1;
    ref->ttl_ns = cm_ttl_to_ns(st, ref->ttl);
    if (ref->ttl_ns == -2) {
        PyObject *typ, *val, *tb;
        PyErr_Fetch(&typ, &val, &tb);
        PyErr_NormalizeException(&typ, &val, &tb);
        PyErr_Format(typ == PyExc_ValueError ? PyExc_ValueError : PyExc_TypeError,
                     "%s.Meta.caches: storage '%U': %S", cls->tp_name, name, val);
        Py_XDECREF(typ);
        Py_XDECREF(val);
        Py_XDECREF(tb);
        return -1;
    }
    if (read_jitter(st, cls, cache, ref) < 0)
        return -1;
    if ((ref->stat = cm_metrics_storage_index(metrics, name)) < 0)
        return -1;

    if (cm_store_check(st, storage)) {
        ref->kind = CM_CACHE_LOCAL;
        ref->storage = Py_NewRef(storage);
        return 0;
    }
    /* cacheme.Storage wraps the real storage; local ones expose the C store */
    PyObject *inner = PyObject_GetAttr(storage, st->s__local);
    if (inner == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear();
    }
    if (inner != NULL && cm_store_check(st, inner)) {
        ref->kind = CM_CACHE_LOCAL;
        ref->storage = inner;
        return 0;
    }
    Py_XDECREF(inner);
    PyObject *is_local = PyObject_CallMethodNoArgs(storage, st->s_is_local);
    if (is_local == NULL)
        return -1;
    int local = PyObject_IsTrue(is_local);
    Py_DECREF(is_local);
    if (local < 0)
        return -1;
    ref->kind = local ? CM_CACHE_LOCAL_PY : CM_CACHE_REMOTE;
    /* cacheme.Storage forwards to its backend: call that one directly */
    PyObject *backend = PyObject_GetAttrString(storage, "_cacheme_backend");
    if (backend == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear();
    }
    ref->storage = backend != NULL ? backend : Py_NewRef(storage);
    return 0;
}

int cm_meta_duration(CmState *st, PyTypeObject *cls, PyObject *meta, const char *name, double *out)
{
    PyObject *t = PyObject_GetAttrString(meta, name);
    if (t == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    int rc = 0;
    if (t != Py_None) {
        PyObject *secs = PyObject_CallMethodNoArgs(t, st->s_total_seconds);
        double v = secs != NULL ? PyFloat_AsDouble(secs) : -1.0;
        Py_XDECREF(secs);
        if (secs == NULL || (v == -1.0 && PyErr_Occurred()) || !(v > 0) || isinf(v)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s.Meta.%s must be a positive timedelta or None, not %R",
                         cls->tp_name, name, t);
            rc = -1;
        } else {
            *out = v;
        }
    }
    Py_DECREF(t);
    return rc;
}

/* Tell each remote storage that keeps local tiers coherent (flight/remote.h
 * cover: Redis tracking) the local stores in front of it, and cap their
 * TTL by its own: the shortest the remote one can be (its jitter) over the
 * longest the local one can be drawn (its jitter), so a local copy never
 * outlives the key in the storage, whose expiry may come without a word. */
static int cover_locals(CmState *st, CmNodeConfigObject *c)
{
    for (Py_ssize_t j = 0; j < c->ncaches; j++) {
        CmCacheRef *rj = &c->caches[j];
        const CmRemoteOps *ops =
            rj->kind == CM_CACHE_REMOTE ? cm_remote_find(st, rj->storage) : NULL;
        if (ops == NULL || ops->cover == NULL)
            continue;
        for (Py_ssize_t i = 0; i < j; i++) {
            CmCacheRef *ri = &c->caches[i];
            if (ri->kind != CM_CACHE_LOCAL)
                continue;
            int rc = ops->cover(rj->storage, ri->storage);
            if (rc < 0)
                return -1;
            if (rc == 0 || rj->ttl_ns < 0)
                continue;
            int64_t cap = (int64_t)((double)rj->ttl_ns * (1.0 - rj->jitter) / (1.0 + ri->jitter));
            ri->ttl_ns = cm_ttl_cap_ns(ri->ttl_ns, cap > 0 ? cap : 1);
        }
    }
    return 0;
}

static CmNodeConfigObject *cfg_build(CmState *st, PyTypeObject *cls)
{
    CmNodeConfigObject *c = NULL;
    PyObject *meta = NULL, *caches = NULL, *seq = NULL;

    meta = PyObject_GetAttr((PyObject *)cls, st->s_Meta);
    if (meta == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%.100s is not a cacheme Node (it has no Meta)",
                         cls->tp_name);
        }
        goto fail;
    }
    caches = PyObject_GetAttr(meta, st->s_caches);
    if (caches == NULL)
        goto fail;
    seq = PySequence_Fast(caches, "Meta.caches must be a list of cacheme.Cache");
    if (seq == NULL)
        goto fail;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    c = PyObject_GC_NewVar(CmNodeConfigObject, st->NodeConfigType, n);
    if (c == NULL)
        goto fail;
    c->generation = st->generation;
    c->cls = cls;
    c->version = NULL;
    c->serializer = c->doorkeeper = NULL;
    c->metrics = NULL;
    c->key_func = c->load_func = NULL;
    c->meth_tag = 0;
    c->load_timeout = 0;
    c->fresh = 0;
    c->refresh_after_ns = c->stale_ns = 0;
    c->early_beta = 0;
    c->ncaches = 0;
    c->nlocal_prefix = 0;
    c->key_slot = st->key_slot_offset > 0 && st->KeySlotType != NULL &&
                  PyType_IsSubtype(cls, (PyTypeObject *)st->KeySlotType);
    PyObject_GC_Track(c);

    c->version = PyObject_GetAttr(meta, st->s_version);
    if (c->version == NULL)
        goto fail;
    if (!PyUnicode_Check(c->version)) {
        PyErr_Format(PyExc_TypeError, "%s.Meta.version must be str, not %.100s", cls->tp_name,
                     Py_TYPE(c->version)->tp_name);
        goto fail;
    }
    cm_key_affix_init(&c->affix, st->prefix, c->version);
    c->serializer = PyObject_GetAttr(meta, st->s_serializer);
    if (c->serializer == NULL)
        goto fail;
    c->doorkeeper = PyObject_GetAttr(meta, st->s_doorkeeper);
    if (c->doorkeeper == NULL)
        goto fail;
    c->doorkeeper_c = Py_IS_TYPE(c->doorkeeper, st->BloomFilterType);
    if (cm_meta_duration(st, cls, meta, "load_timeout", &c->load_timeout) < 0 ||
        cm_fresh_read_meta(st, cls, meta, c) < 0)
        goto fail;
    if ((c->metrics = class_metrics(st, cls)) == NULL)
        goto fail;

    for (Py_ssize_t i = 0; i < n; i++) {
        CmCacheRef *ref = &c->caches[i];
        memset(ref, 0, sizeof(*ref));
        c->ncaches = i + 1;
        if (resolve_cache(st, cls, PySequence_Fast_GET_ITEM(seq, i), ref, c->metrics) < 0)
            goto fail;
    }
    while (c->nlocal_prefix < n && c->caches[c->nlocal_prefix].kind != CM_CACHE_REMOTE)
        c->nlocal_prefix++;
    if (cover_locals(st, c) < 0)
        goto fail;
    Py_DECREF(meta);
    Py_DECREF(caches);
    Py_DECREF(seq);
    return c;
fail:
    Py_XDECREF(meta);
    Py_XDECREF(caches);
    Py_XDECREF(seq);
    Py_XDECREF(c);
    return NULL;
}

CmNodeConfigObject *cm_nodecfg_lookup(CmState *st, PyTypeObject *cls)
{
    /* since 3.12 a static builtin type (object...) has no tp_dict: no config */
    PyObject *cur = cls->tp_dict != NULL ? PyDict_GetItemWithError(cls->tp_dict, st->s___cacheme__)
                                         : NULL; // borrowed
    if (cur == NULL || !Py_IS_TYPE(cur, st->NodeConfigType) ||
        ((CmNodeConfigObject *)cur)->generation != st->generation) {
        if (PyErr_Occurred())
            return NULL;
        CmNodeConfigObject *c = cfg_build(st, cls);
        if (c == NULL)
            return NULL;
        /* through setattr so the type's attribute cache stays right */
        int rc = PyObject_SetAttr((PyObject *)cls, st->s___cacheme__, (PyObject *)c);
        Py_DECREF(c); /* the class dict holds it now */
        if (rc < 0)
            return NULL;
        cur = (PyObject *)c;
    }
    /* the class is held too, so its address cannot be reused while cached */
    Py_XSETREF(st->last_cls, Py_NewRef(cls));
    Py_XSETREF(st->last_cfg, Py_NewRef(cur));
    return (CmNodeConfigObject *)cur;
}

int cm_nodecfg_resolve_methods(CmState *st, CmNodeConfigObject *cfg)
{
    PyTypeObject *tp = cfg->cls;
    if (tp->tp_getattro != PyObject_GenericGetAttr)
        return 0;
    PyObject *k = cm_type_lookup(tp, st->s_key);  // borrowed
    PyObject *l = cm_type_lookup(tp, st->s_load); // borrowed
    if (!(tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) || tp->tp_version_tag == 0)
        return 0;
    Py_XSETREF(cfg->key_func, k != NULL && PyFunction_Check(k) ? Py_NewRef(k) : NULL);
    Py_XSETREF(cfg->load_func, l != NULL && PyFunction_Check(l) ? Py_NewRef(l) : NULL);
    cfg->meth_tag = tp->tp_version_tag;
    return 1;
}

/* ---- Python entry points --------------------------------------------------- */

static PyObject *py_full_key(PyObject *mod, PyObject *node)
{
    CmState *st = cm_state_from_module(mod);
    CmNodeConfigObject *cfg = cm_nodecfg_get(st, Py_TYPE(node));
    if (cfg == NULL)
        return NULL;
    /* held across key(), which may rebuild the class's config */
    Py_INCREF(cfg);
    PyObject *full = cm_full_key(st, node, cfg);
    Py_DECREF(cfg);
    return full;
}

static PyObject *py_node_config(PyObject *mod, PyObject *cls)
{
    CmState *st = cm_state_from_module(mod);
    if (!PyType_Check(cls)) {
        PyErr_Format(PyExc_TypeError, "expected a node class, not %.100s", Py_TYPE(cls)->tp_name);
        return NULL;
    }
    CmNodeConfigObject *c = cm_nodecfg_get(st, (PyTypeObject *)cls);
    if (c == NULL)
        return NULL;
    /* (version, [(name, kind, storage, ttl)], serializer, doorkeeper, metrics);
     * c held: an allocation may run the collector, and finalizers that
     * rebuild the config */
    Py_INCREF(c);
    PyObject *res = NULL;
    PyObject *caches = PyList_New(c->ncaches);
    if (caches == NULL)
        goto done;
    static const char *kinds[] = {"local", "local", "remote"};
    for (Py_ssize_t i = 0; i < c->ncaches; i++) {
        CmCacheRef *r = &c->caches[i];
        PyObject *t = Py_BuildValue("(OsOO)", r->name, kinds[r->kind], r->storage, r->ttl);
        if (t == NULL) {
            Py_DECREF(caches);
            goto done;
        }
        PyList_SET_ITEM(caches, i, t);
    }
    res = Py_BuildValue("(ONOOO)", c->version, caches, c->serializer, c->doorkeeper,
                        (PyObject *)c->metrics);
done:
    Py_DECREF(c);
    return res;
}

static PyObject *py_set_prefix(PyObject *mod, PyObject *prefix)
{
    CmState *st = cm_state_from_module(mod);
    if (!PyUnicode_Check(prefix)) {
        PyErr_Format(PyExc_TypeError, "prefix must be str, not %.100s", Py_TYPE(prefix)->tp_name);
        return NULL;
    }
    Py_SETREF(st->prefix, Py_NewRef(prefix));
    st->generation++; /* the configs' key affixes hold the prefix */
    Py_RETURN_NONE;
}

static PyObject *py_get_prefix(PyObject *mod, PyObject *Py_UNUSED(x))
{
    return Py_NewRef(cm_state_from_module(mod)->prefix);
}

static PyObject *py_add_storage(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    CmState *st = cm_state_from_module(mod);
    if (nargs != 2 || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "_add_storage(name: str, storage)");
        return NULL;
    }
    if (PyDict_SetItem(st->storages, args[0], args[1]) < 0)
        return NULL;
    st->generation++;
    Py_RETURN_NONE;
}

/* Forget a registered storage (cacheme.close): node configs resolve again,
 * so a node naming it then fails with "not registered" instead of using a
 * closed storage. A name not registered is not an error. */
static PyObject *py_remove_storage(PyObject *mod, PyObject *name)
{
    CmState *st = cm_state_from_module(mod);
    if (!PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "_remove_storage(name: str)");
        return NULL;
    }
    int r = PyDict_Contains(st->storages, name);
    if (r < 0 || (r > 0 && PyDict_DelItem(st->storages, name) < 0))
        return NULL;
    if (r > 0)
        st->generation++;
    Py_RETURN_NONE;
}

static PyObject *py_storages(PyObject *mod, PyObject *Py_UNUSED(x))
{
    return PyDict_Copy(cm_state_from_module(mod)->storages);
}

static PyObject *py_set_logger(PyObject *mod, PyObject *logger)
{
    CmState *st = cm_state_from_module(mod);
    Py_XSETREF(st->logger, Py_NewRef(logger));
    Py_RETURN_NONE;
}

static PyMethodDef nodecfg_functions[] = {
    {"full_key", py_full_key, METH_O, "full_key(node) -> '{prefix}:{key()}:{version}'"},
    {"node_config", py_node_config, METH_O, "the resolved Meta of a node class"},
    {"set_prefix", py_set_prefix, METH_O, "set the key prefix (default 'cacheme')"},
    {"get_prefix", py_get_prefix, METH_NOARGS, NULL},
    {"_add_storage", (PyCFunction)(void (*)(void))py_add_storage, METH_FASTCALL, NULL},
    {"_remove_storage", py_remove_storage, METH_O, NULL},
    {"_storages", py_storages, METH_NOARGS, NULL},
    {"_set_logger", py_set_logger, METH_O, NULL},
    {NULL, NULL},
};

static PyType_Slot cfg_slots[] = {
    {Py_tp_traverse, cfg_traverse},
    {Py_tp_clear, cfg_clear},
    {Py_tp_dealloc, cfg_dealloc},
    {0, NULL},
};

static PyType_Spec cfg_spec = {
    .name = "cacheme._core.NodeConfig",
    .basicsize = offsetof(CmNodeConfigObject, caches),
    .itemsize = sizeof(CmCacheRef),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = cfg_slots,
};

int cm_nodecfg_init(PyObject *mod, CmState *st)
{
    st->NodeConfigType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &cfg_spec, NULL);
    if (st->NodeConfigType == NULL)
        return -1;
    return PyModule_AddFunctions(mod, nodecfg_functions);
}
