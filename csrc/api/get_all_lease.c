/* get_all's part of cross-process leases (flight/remote.h's lease ops; the
 * design is flight/lease.c's). When the batch's keys missed every remote
 * cache, the first remote cache whose storage takes leases is asked for
 * the lease of each key left (in turn, see redis/lease.c). The keys whose lease this
 * process got are loaded and filled as without leases, and their leases
 * given back at the end; the keys another process held come back with
 * that process's value, which fills the local caches only. */
#include "api/get_all_obj.h"

#include "base/exc.h"
#include "flight/remote.h"
#include "loop/loop.h"

int cm_ga_lease_start(CmGetAllObject *o)
{
    CmState *st = o->st;
    CmNodeConfigObject *cfg = o->cfg;
    o->lease_keys = Py_NewRef(Py_None); /* tried: once per batch */
    for (Py_ssize_t i = 0; i < cfg->ncaches; i++) {
        CmCacheRef *r = &cfg->caches[i];
        if (r->kind != CM_CACHE_REMOTE)
            continue;
        const CmRemoteOps *ops = cm_remote_find(st, r->storage);
        if (ops == NULL || ops->lease_acquire_all == NULL ||
            !ops->direct(st, r->storage, st->s_get))
            continue;
        PyObject *nodes = PyDict_Values(o->todo);
        PyObject *keys = nodes ? PyDict_Keys(o->todo) : NULL;
        PyObject *aw = keys ? ops->lease_acquire_all(st, r->storage, nodes, cfg->serializer) : NULL;
        Py_XDECREF(nodes);
        if (aw == Py_None) {
            Py_DECREF(aw);
            Py_DECREF(keys);
            continue;
        }
        if (aw == NULL) {
            Py_XDECREF(keys);
            counters(cfg, r)->errors++;
            cm_ga_log_failed(st, "cacheme: lease of storage %r failed", r->name);
            return 0;
        }
        Py_SETREF(o->lease_keys, keys);
        o->lease_ops = ops;
        o->lease_cache = i;
        o->step = B_LEASE;
        o->lease_aw = Py_NewRef(aw);
        return cm_ga_start_sub(o, aw);
    }
    return 0;
}

/* Take key out of every remote cache's missed keys: its holder filled them. */
static int not_missed(CmGetAllObject *o, PyObject *key)
{
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(o->remote_missed); i++) {
        PyObject *keys = PyTuple_GET_ITEM(PyList_GET_ITEM(o->remote_missed, i), 1); // borrowed
        Py_ssize_t at = PySequence_Index(keys, key);
        if (at < 0) {
            if (!PyErr_ExceptionMatches(PyExc_ValueError))
                return -1;
            PyErr_Clear();
        } else if (PySequence_DelItem(keys, at) < 0) {
            return -1;
        }
    }
    return 0;
}

/* The get_all leaves without the lease awaitable's outcome (cancelled as it
 * came, or closed): every lease in it is given back, those still coming stop. */
static void lease_drop(CmGetAllObject *o)
{
    PyObject *aw = o->lease_aw;
    o->lease_aw = NULL;
    if (aw != NULL)
        cm_lease_aw_drop(o->st, o->lease_ops, aw);
}

int cm_ga_lease_take(CmGetAllObject *o, PyObject *res)
{
    CmState *st = o->st;
    if (res == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            /* cancelled while waiting, or in the same loop iteration as the
             * awaitable got its outcome (then thrown in instead of it) */
            lease_drop(o);
            return -1;
        }
        Py_CLEAR(o->lease_aw);
        cm_ga_log_failed(st, "cacheme: get_all of %r: waiting on the leases failed", o->cls);
        return 0;
    }
    Py_CLEAR(o->lease_aw);
    int rc = -1;
    if ((o->leases = PyList_New(0)) == NULL)
        goto done;
    Py_ssize_t n = PyList_Check(res) ? PyList_GET_SIZE(res) : 0;
    for (Py_ssize_t i = 0; i < n && i < PyList_GET_SIZE(o->lease_keys); i++) {
        PyObject *t = PyList_GET_ITEM(res, i);             // borrowed
        PyObject *key = PyList_GET_ITEM(o->lease_keys, i); // borrowed
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 2)
            continue; /* its lease failed: it loads without one */
        PyObject *lease = PyTuple_GET_ITEM(t, 0), *value = PyTuple_GET_ITEM(t, 1); // borrowed
        if (lease != Py_None) {
            if (PyList_Append(o->leases, lease) < 0)
                goto done;
        } else if (value != st->sentinel) {
            if (PyDict_SetItem(o->found, key, value) < 0 || PyDict_DelItem(o->todo, key) < 0 ||
                not_missed(o, key) < 0)
                goto done;
            /* read from that storage after all: a hit, not the miss counted */
            CmStorageCounters *c = counters(o->cfg, &o->cfg->caches[o->lease_cache]);
            c->hits++;
            c->misses--;
        }
    }
    rc = 0;
done:
    Py_DECREF(res);
    return rc;
}

void cm_ga_lease_end(CmGetAllObject *o)
{
    lease_drop(o);
    PyObject *leases = o->leases;
    o->leases = NULL;
    for (Py_ssize_t i = 0; leases != NULL && i < PyList_GET_SIZE(leases); i++)
        o->lease_ops->lease_release(o->st, Py_NewRef(PyList_GET_ITEM(leases, i)));
    Py_XDECREF(leases);
}
