/* get(node, load_fn=None): the hot path.
 *
 * On a hit in the first local cache this costs a class-dict lookup for the
 * node's config, the full key (cached on the node), one probe of the C hash
 * table, a policy touch and a reused ready awaitable: no coroutine frame, no
 * Future, no allocation besides the key. */
#include "api/get.h"

#include "core/fresh.h"
#include "core/key.h"
#include "core/store.h"
#include "loop/loop.h"
#include "loop/ready.h"

/* Drive a (normally non-suspending) local storage awaitable to its end. */
static void run_sync(CmState *st, PyObject *aw, CmCacheRef *r, CmMetricsObject *m)
{
    PyObject *it = aw ? PyObject_GetIter(aw) : NULL;
    if (it == NULL && aw != NULL && PyErr_ExceptionMatches(PyExc_TypeError)) {
        PyErr_Clear();
        unaryfunc am = Py_TYPE(aw)->tp_as_async ? Py_TYPE(aw)->tp_as_async->am_await : NULL;
        it = am ? am(aw) : NULL;
    }
    Py_XDECREF(aw);
    if (it != NULL) {
        PyObject *res = NULL;
        PySendResult rs = PyIter_Send(it, Py_None, &res);
        Py_XDECREF(res);
        if (rs == PYGEN_NEXT) {
            PyObject *c = PyObject_CallMethodNoArgs(it, st->s_close);
            Py_XDECREF(c);
            PyErr_Clear();
            m->storages[r->stat].errors++;
            cm_log_warning(st, "cacheme: fill of local storage '%U' (%R) suspended; skipped",
                           r->name, r->storage);
        }
        Py_DECREF(it);
    }
    if (PyErr_Occurred()) {
        m->storages[r->stat].errors++;
        PyErr_WriteUnraisable(r->name);
    }
}

PyObject *cm_get(CmState *st, CmRequest *req)
{
    PyObject *node = req->node; // borrowed
    PyTypeObject *cls = req->cls ? req->cls : Py_TYPE(node);
    CmNodeConfigObject *cfg = cm_nodecfg_get(st, cls);
    if (cfg == NULL)
        return NULL;
    /* held for the whole call: key(), a Python storage or a serializer may
     * rebuild the class's config (set_prefix, register_storage) */
    Py_INCREF(cfg);
    CmMetricsObject *m = cfg->metrics; // borrowed from cfg
    /* an empty slot is the common case: a node built for this call */
    PyObject **slot = cm_nodecfg_key_slot(st, cfg, node); // borrowed
    PyObject *full = NULL;
    PyObject *key = NULL; /* node.key(), while the full key is not built */
    PyObject *result = NULL;
    CmKeyParts parts;
    Py_hash_t hash;
    uint32_t missed = 0;
    CmStoreAge age; /* of a hit on a local store, for a node with freshness options */

    if (slot == NULL || *slot != NULL) {
        full = cm_key_cached(st, node);
        if (full == NULL && PyErr_Occurred())
            goto done;
    }
    if (full != NULL) {
        hash = ((PyASCIIObject *)full)->hash;
    } else {
        if ((key = cm_key_call(st, node, cfg)) == NULL)
            goto done;
        if (!cm_key_parts(st, &cfg->affix, key, cfg->version, &parts, &hash)) {
            full = cm_key_build(st, node, key, cfg->version, -1);
            if (full == NULL)
                goto done;
            hash = ((PyASCIIObject *)full)->hash;
        }
    }

    /* a node with freshness options reads ages, by the full key */
    if (cfg->fresh) {
        req->cfg = cfg;
        if (full == NULL &&
            (full = slot != NULL ? cm_key_build_parts(slot, &parts, hash)
                                 : cm_key_build(st, node, key, cfg->version, hash)) == NULL)
            goto done;
    }

    for (Py_ssize_t i = 0; i < cfg->ncaches && i < 32; i++) {
        CmCacheRef *r = &cfg->caches[i];
        PyObject *v;
        if (r->kind == CM_CACHE_LOCAL) {
            CmStoreObject *store = (CmStoreObject *)r->storage;
            v = cfg->fresh ? cm_refresh_lookup(st, req, store, full, hash, &age)
                : full     ? cm_store_lookup(store, full, hash)
                           : cm_store_lookup_parts(store, &parts, hash);
        } else if (r->kind == CM_CACHE_LOCAL_PY) {
            PyObject *args[3] = {r->storage, node, cfg->serializer};
            v = PyObject_VectorcallMethod(st->s_get_sync, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                          NULL);
            if (v == NULL) {
                m->storages[r->stat].errors++;
                PyErr_WriteUnraisable(r->name);
            } else if (v == st->sentinel) {
                Py_CLEAR(v);
            }
        } else {
            continue;
        }
        if (v == NULL) {
            m->storages[r->stat].misses++;
            missed |= 1u << i;
            continue;
        }
        m->storages[r->stat].hits++;
        m->hit_count++;
        if (missed) {
            /* a later local cache had it: fill the earlier ones */
            if (full == NULL && (full = cm_key_build(st, node, key, cfg->version, hash)) == NULL) {
                Py_DECREF(v);
                goto done;
            }
            /* with the age it has there: a copy is no newer than its source */
            cm_fill_locals(st, cfg, full, hash, v, missed,
                           cfg->fresh && r->kind == CM_CACHE_LOCAL ? &age : NULL);
            for (Py_ssize_t j = 0; j < i; j++) {
                CmCacheRef *pr = &cfg->caches[j];
                if (pr->kind == CM_CACHE_LOCAL_PY && (missed & (1u << j))) {
                    PyObject *ttl = cm_cache_write_ttl(st, pr);
                    PyObject *args[5] = {pr->storage, node, v, ttl, cfg->serializer};
                    run_sync(st,
                             ttl ? PyObject_VectorcallMethod(
                                       st->s_set, args, 5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL)
                                 : NULL,
                             pr, m);
                    Py_XDECREF(ttl);
                }
            }
        }
        result = cm_ready_new(st, v);
        Py_DECREF(v);
        goto done;
    }
    /* every local cache missed: the singleflight takes it from here */
    if (full == NULL &&
        (full = slot != NULL ? cm_key_build_parts(slot, &parts, hash)
                             : cm_key_build(st, node, key, cfg->version, hash)) == NULL)
        goto done;
    req->cfg = cfg;
    req->key = full;
    req->hash = hash;
    req->missed = missed;
    req->local_puts = cm_local_puts(cfg);
    result = cm_get_begin(st, req);
done:
    Py_XDECREF(key);
    Py_XDECREF(full);
    Py_DECREF(cfg);
    return result;
}

static PyObject *py_get(PyObject *mod, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    CmState *st = cm_state_from_module(mod);
    /* what a local hit reads (no need to clear all of it); cm_get fills the
     * rest before the request goes on */
    CmRequest req;
    req.cls = NULL;
    req.load_fn = NULL;
    req.memo_fn = NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs < 1 || nargs + nkw > 2) {
        PyErr_SetString(PyExc_TypeError, "get(node, load_fn=None)");
        return NULL;
    }
    req.node = args[0];
    if (nargs == 2)
        req.load_fn = args[1];
    else if (nkw == 1) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0)) ||
            PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "load_fn") != 0) {
            PyErr_Format(PyExc_TypeError, "get() got an unexpected keyword argument '%S'",
                         PyTuple_GET_ITEM(kwnames, 0));
            return NULL;
        }
        req.load_fn = args[1];
    }
    if (req.load_fn == Py_None)
        req.load_fn = NULL;
    if (req.load_fn != NULL && !PyCallable_Check(req.load_fn)) {
        PyErr_Format(PyExc_TypeError, "load_fn must be callable, not %.100s",
                     Py_TYPE(req.load_fn)->tp_name);
        return NULL;
    }
    return cm_get(st, &req);
}

static PyMethodDef get_functions[] = {
    {"get", (PyCFunction)(void (*)(void))py_get, METH_FASTCALL | METH_KEYWORDS,
     "get(node, load_fn=None) -> awaitable of the node's value"},
    {NULL, NULL},
};

int cm_get_init(PyObject *mod, CmState *st)
{
    (void)st;
    return PyModule_AddFunctions(mod, get_functions);
}
