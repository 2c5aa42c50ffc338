/* get_all's batch: a GetAll in the batch role, run by a Task, for the keys
 * its caller leads. The remote caches' get_all in order, then load_all for
 * what is left (Node.load_all's default: each load in turn), each flight
 * settled as soon as its value is known; then the doorkeeper and the fills
 * of the local caches and of the remote ones that missed (set_all). A
 * storage whose get_all raises counts as a miss of its keys. */
#include "api/get_all_obj.h"

#include "base/clock.h"
#include "base/exc.h"
#include "core/fresh.h"
#include "core/key.h"
#include "flight/flight.h"
#include "flight/remote.h"

/* (a, b) = item; with c given, (a, b, c) or (a, b, c, d), *d NULL for a
 * triple. Borrowed into *a, *b (*c, *d) from *tmp (new ref, to drop). */
static int unpack(PyObject *item, PyObject **tmp, PyObject **a, PyObject **b, PyObject **c,
                  PyObject **d)
{
    Py_ssize_t lo = c != NULL ? 3 : 2, hi = c != NULL ? 4 : 2;
    PyObject *t = PyTuple_CheckExact(item) ? Py_NewRef(item) : PySequence_Tuple(item);
    if (t == NULL)
        return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(t);
    if (n < lo || n > hi) {
        if (n > hi)
            PyErr_Format(PyExc_ValueError, "too many values to unpack (expected %zd)", hi);
        else
            PyErr_Format(PyExc_ValueError, "not enough values to unpack (expected %zd, got %zd)",
                         lo, n);
        Py_DECREF(t);
        return -1;
    }
    *tmp = t;
    *a = PyTuple_GET_ITEM(t, 0);
    *b = PyTuple_GET_ITEM(t, 1);
    if (c != NULL) {
        *c = PyTuple_GET_ITEM(t, 2);
        *d = n == 4 ? PyTuple_GET_ITEM(t, 3) : NULL;
    }
    return 0;
}

/* The full key of a node a storage or load_all handed back. */
static PyObject *full_key_of(CmState *st, PyObject *node)
{
    CmNodeConfigObject *cfg = cm_nodecfg_get(st, Py_TYPE(node)); // borrowed
    if (cfg == NULL)
        return NULL;
    Py_INCREF(cfg); /* key() may rebuild the class's config */
    PyObject *full = cm_full_key(st, node, cfg);
    Py_DECREF(cfg);
    return full;
}

/* Settle every led flight with exc (those settled already keep their
 * value), then take them all out of the table. */
static void lead_fail_all(CmGetAllObject *o, PyObject *exc)
{
    PyObject *key, *h;
    Py_ssize_t i = 0;
    while (PyDict_Next(o->lead, &i, &key, &h))
        cm_flight_handle_settle(h, NULL, exc);
}

static void lead_finish_all(CmGetAllObject *o)
{
    PyObject *key, *h;
    Py_ssize_t i = 0;
    while (PyDict_Next(o->lead, &i, &key, &h))
        cm_flight_handle_finish(h);
}

/* Start storage.get_all(todo nodes, serializer) of cache o->pos; for a
 * node with freshness options, with the values' ages where the storage
 * tells them (flight/remote.h get_all_aged). */
static PyObject *call_remote_get_all(CmGetAllObject *o, CmCacheRef *r)
{
    CmState *st = o->st;
    PyObject *nodes = PyDict_Values(o->todo);
    if (nodes == NULL)
        return NULL;
    const CmRemoteOps *ops = o->cfg->fresh ? cm_remote_find(st, r->storage) : NULL;
    PyObject *aw;
    o->remote_aged =
        ops != NULL && ops->get_all_aged != NULL && ops->direct(st, r->storage, st->s_get_all);
    if (o->remote_aged) {
        aw = ops->get_all_aged(st, r->storage, nodes, o->cfg->serializer);
    } else {
        PyObject *args[3] = {r->storage, nodes, o->cfg->serializer};
        aw = PyObject_VectorcallMethod(st->s_get_all, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                       NULL);
    }
    Py_DECREF(nodes);
    return aw;
}

/* A value of remote cache r written at updated (an int, UTC ns; 0
 * unknown) with load time load (an int, ns, or NULL: unknown): 1 when it
 * is past r's TTL, kept there only for stale_if_error (a miss for get_all,
 * which has no fallback to give); else 0, its age in *age (written 0:
 * unknown). -1 with an exception. */
static int remote_age(CmGetAllObject *o, CmCacheRef *r, PyObject *updated, PyObject *load,
                      CmStoreAge *age)
{
    long long ns = PyLong_AsLongLong(updated);
    long long load_ns = load != NULL ? PyLong_AsLongLong(load) : 0;
    age->written = 0;
    if ((ns == -1 || load_ns == -1) && PyErr_Occurred())
        return -1;
    return ns != 0 && cm_fresh_remote_age(o->cfg, r, ns, load_ns > 0 ? load_ns : 0, age);
}

/* o->ages[key] = the age of a remote hit of cache r (age->written not 0);
 * o->due[key] = the refresh that age calls for, if any. */
static int keep_age(CmGetAllObject *o, CmCacheRef *r, PyObject *key, const CmStoreAge *age)
{
    CmStoreAge kept = *age;
    kept.expire = cm_fresh_remote_end(r, age->written);
    int rc = cm_ga_age_put(&o->ages, key, &kept);
    int kind = rc == 0 ? cm_fresh_due(o->st, o->cfg, age) : -1;
    if (kind >= 0 && o->bg != NULL) {
        /* its refresh runs already */
        int in = PyDict_Contains(o->bg, key);
        if (in != 0)
            return in < 0 ? -1 : 0;
    }
    if (kind >= 0) {
        PyObject *k = PyLong_FromLong(kind);
        if (k == NULL || (o->due == NULL && (o->due = PyDict_New()) == NULL))
            rc = -1;
        else
            rc = PyDict_SetItem(o->due, key, k);
        Py_XDECREF(k);
    }
    return rc;
}

/* The batch is done: start the refreshes its remote hits called for (the
 * keys are out of the flight table; one already in flight again counts).
 * A failure is reported as unraisable. */
static void start_due(CmGetAllObject *o)
{
    PyObject *key, *kind;
    Py_ssize_t i = 0;
    while (PyDict_Next(o->due, &i, &key, &kind)) {
        PyObject *node = PyDict_GetItemWithError(o->pending, key); // borrowed
        Py_hash_t h = node != NULL ? PyObject_Hash(key) : -1;
        CmRequest req = {.node = node, .cfg = o->cfg, .key = key, .hash = h};
        if (h == -1 || cm_refresh_start(o->st, &req, (int)PyLong_AsLong(kind)) < 0) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, key);
            PyErr_WriteUnraisable(key);
        }
    }
}

/* What remote cache r returned: found[key] = value for the todo keys. */
static int take_remote(CmGetAllObject *o, CmCacheRef *r, PyObject *got, uint64_t *hits)
{
    PyObject *it = PyObject_GetIter(got);
    if (it == NULL)
        return -1;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        PyObject *tmp, *node, *value, *updated = NULL, *load = NULL;
        CmStoreAge age = {.written = 0};
        int rc = unpack(item, &tmp, &node, &value, o->remote_aged ? &updated : NULL, &load);
        Py_DECREF(item);
        if (rc == 0 && updated != NULL && (rc = remote_age(o, r, updated, load, &age)) != 0) {
            Py_DECREF(tmp);
            if (rc < 0)
                break;
            continue; /* a miss */
        }
        if (rc < 0)
            break;
        PyObject *key = full_key_of(o->st, node);
        if (key != NULL) {
            rc = PyDict_Contains(o->todo, key);
            if (rc > 0) {
                rc = PyDict_SetItem(o->found, key, value) < 0 || PyDict_DelItem(o->todo, key) < 0 ||
                             (age.written != 0 && keep_age(o, r, key, &age) < 0)
                         ? -1
                         : 0;
                (*hits)++;
            }
            Py_DECREF(key);
        } else {
            rc = -1;
        }
        Py_DECREF(tmp);
        if (rc < 0)
            break;
    }
    Py_DECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}

static int settle_found(CmGetAllObject *o, PyObject *key, PyObject *value)
{
    PyObject *h = PyDict_GetItemWithError(o->lead, key); // borrowed
    if (h == NULL)
        return PyErr_Occurred() ? -1 : 0;
    cm_flight_handle_settle(h, value, NULL);
    return PySet_Add(o->settled, key);
}

/* The keys read past a refresh (o->bg) that the remote caches missed leave
 * todo and bg: the caller waits for that refresh (wait_keys, wait_aws), or,
 * when it is over, they are led and loaded with the others. 0, or -1 with
 * an exception. */
static int bg_missed(CmGetAllObject *o)
{
    CmState *st = o->st;
    PyObject *keys = o->bg != NULL ? PyDict_Keys(o->bg) : NULL;
    if (keys == NULL)
        return o->bg != NULL ? -1 : 0;
    int rc = 0;
    for (Py_ssize_t i = 0; rc == 0 && i < PyList_GET_SIZE(keys); i++) {
        PyObject *key = PyList_GET_ITEM(keys, i); // borrowed
        int in = PyDict_Contains(o->todo, key);
        if (in <= 0) {
            rc = in; /* found: the batch fills it */
            continue;
        }
        Py_hash_t h = PyObject_Hash(key);
        PyObject *aw;
        int j = h == -1 ? -1 : cm_flight_join(st, key, h, &aw);
        if (j > 0) {
            rc = PyList_Append(o->wait_keys, key) < 0 || PyList_Append(o->wait_aws, aw) < 0 ||
                         (j == 2 && PySet_Add(o->nofill, key) < 0) ||
                         PyDict_DelItem(o->todo, key) < 0
                     ? -1
                     : 0;
            Py_DECREF(aw);
        } else if (j == 0) {
            PyObject *hd = cm_flight_lead(st, key, h);
            if (hd == Py_None) {
                Py_DECREF(hd);
                PyErr_SetString(PyExc_RuntimeError, "cacheme: a flight started while joining");
                hd = NULL;
            }
            rc = hd == NULL || PyDict_SetItem(o->lead, key, hd) < 0 ? -1 : 0;
            Py_XDECREF(hd);
        } else {
            rc = -1;
        }
        if (rc == 0)
            rc = PyDict_DelItem(o->bg, key) < 0 ? -1 : 0;
    }
    Py_DECREF(keys);
    return rc;
}

/* cls.load_all is Node.load_all's own: 1, else 0 (-1 on error). */
static int default_load_all(CmGetAllObject *o, PyObject **bound)
{
    *bound = PyObject_GetAttrString(o->cls, "load_all");
    if (*bound == NULL)
        return -1;
    PyObject *f = PyObject_GetAttrString(*bound, "__func__");
    if (f == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    int same = f == o->st->node_load_all;
    Py_DECREF(f);
    return same;
}

static void record_load(CmGetAllObject *o, uint64_t ok, uint64_t failed)
{
    CmMetricsObject *m = o->cfg->metrics;
    m->load_success_count += ok;
    m->load_failure_count += failed;
    cm_metrics_observe_load(m, (uint64_t)(cm_now_ns() - o->load_start));
}

/* Doorkeeper: a key is stored on its second request. 1 admitted, 0 not. */
static int doorkeeper_admits(CmState *st, PyObject *dk, PyObject *key)
{
    PyObject *r = PyObject_CallMethodOneArg(dk, st->s_contains, key);
    int seen = r ? PyObject_IsTrue(r) : -1;
    Py_XDECREF(r);
    if (seen != 0)
        return seen;
    r = PyObject_CallMethodOneArg(dk, st->s_put, key);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* key was read past its refresh's flight (o->bg): 1 when what was read
 * may fill the caches (cm_flight_past_fills), 0 not, -1 with an
 * exception. */
static int past_fills(CmGetAllObject *o, PyObject *key)
{
    PyObject *serial = PyDict_GetItemWithError(o->bg, key); // borrowed
    if (serial == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, key);
        return -1;
    }
    unsigned long long past = PyLong_AsUnsignedLongLong(serial);
    Py_hash_t h = past == (unsigned long long)-1 && PyErr_Occurred() ? -1 : PyObject_Hash(key);
    if (h == -1)
        return -1;
    return cm_flight_past_fills(o->st, key, h, past);
}

/* After the loads: settle what is left, pick what fills the caches, fill
 * the local ones. */
static int batch_admit(CmGetAllObject *o)
{
    CmState *st = o->st;
    CmNodeConfigObject *cfg = o->cfg;
    if ((o->admitted = PyDict_New()) == NULL)
        return -1;
    PyObject *key, *value;
    Py_ssize_t i = 0;
    while (PyDict_Next(o->found, &i, &key, &value)) {
        /* NULL: read past a refresh (o->bg), no flight of ours */
        PyObject *h = PyDict_GetItemWithError(o->lead, key); // borrowed
        if (h == NULL && PyErr_Occurred())
            return -1;
        int s = h != NULL ? PySet_Contains(o->settled, key) : 1;
        if (s < 0)
            return -1;
        if (!s)
            cm_flight_handle_settle(h, value, NULL);
        if (h != NULL && cm_flight_handle_stale(h))
            continue;
        if (h == NULL) {
            int ok = past_fills(o, key);
            if (ok < 0)
                return -1;
            if (!ok)
                continue;
        }
        if (cfg->doorkeeper != Py_None) {
            int ok = doorkeeper_admits(st, cfg->doorkeeper, key);
            if (ok < 0)
                return -1;
            if (!ok)
                continue;
        }
        if (PyDict_SetItem(o->admitted, key, value) < 0)
            return -1;
    }
    /* the local tiers take what no unheard write may have changed
     * (cm_flight_unsure); the remote ones all that was admitted */
    PyObject *keys = PyList_New(0);
    if (keys == NULL)
        return -1;
    i = 0;
    while (PyDict_Next(o->admitted, &i, &key, &value)) {
        PyObject *h = PyDict_GetItemWithError(o->lead, key); // borrowed
        if ((h == NULL && PyErr_Occurred()) ||
            ((h == NULL || !cm_flight_handle_unsure(h)) && PyList_Append(keys, key) < 0)) {
            Py_DECREF(keys);
            return -1;
        }
    }
    for (Py_ssize_t c = 0; c < cfg->ncaches; c++) {
        CmCacheRef *r = &cfg->caches[c];
        if (r->kind != CM_CACHE_REMOTE)
            cm_ga_fill_local(st, cfg, r, keys, o->admitted, o->pending, o->ages);
    }
    Py_DECREF(keys);
    return 0;
}

/* The next set_all of a remote cache that missed admitted keys: 1 started,
 * 0 none left, -1 error (the call failed: o->step is B_SET_ALL). */
static int next_set_all(CmGetAllObject *o)
{
    CmState *st = o->st;
    for (; o->pos < PyList_GET_SIZE(o->remote_missed); o->pos++) {
        PyObject *t = PyList_GET_ITEM(o->remote_missed, o->pos); // borrowed
        CmCacheRef *r = &o->cfg->caches[PyLong_AsSsize_t(PyTuple_GET_ITEM(t, 0))];
        PyObject *missed = PyTuple_GET_ITEM(t, 1); // borrowed
        PyObject *data = PyList_New(0);
        if (data == NULL)
            return -1;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(missed); i++) {
            PyObject *key = PyList_GET_ITEM(missed, i);
            PyObject *value = PyDict_GetItemWithError(o->admitted, key); // borrowed
            if (value == NULL) {
                if (PyErr_Occurred()) {
                    Py_DECREF(data);
                    return -1;
                }
                continue;
            }
            PyObject *node = PyDict_GetItemWithError(o->pending, key); // borrowed
            PyObject *pair = node ? PyTuple_Pack(2, node, value) : NULL;
            if (pair == NULL || PyList_Append(data, pair) < 0) {
                if (!PyErr_Occurred())
                    PyErr_SetObject(PyExc_KeyError, key);
                Py_XDECREF(pair);
                Py_DECREF(data);
                return -1;
            }
            Py_DECREF(pair);
        }
        if (PyList_GET_SIZE(data) == 0) {
            Py_DECREF(data);
            continue;
        }
        o->step = B_SET_ALL;
        /* one TTL for the batch: set_all takes one */
        PyObject *ttl = cm_cache_write_ttl(st, r);
        PyObject *args[4] = {r->storage, data, ttl, o->cfg->serializer};
        PyObject *aw = ttl ? PyObject_VectorcallMethod(st->s_set_all, args,
                                                       4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL)
                           : NULL;
        Py_XDECREF(ttl);
        Py_DECREF(data);
        return cm_ga_start_sub(o, aw);
    }
    return 0;
}

/* The KeyError of load_all for the todo keys it gave nothing for. */
static int fail_left(CmGetAllObject *o, PyObject *left, Py_ssize_t ntodo)
{
    PyObject *qual = PyObject_GetAttrString(o->cls, "__qualname__");
    if (qual == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(left); i++) {
        PyObject *key = PyList_GET_ITEM(left, i);               // borrowed
        PyObject *node = PyDict_GetItemWithError(o->todo, key); // borrowed
        PyObject *h = PyDict_GetItemWithError(o->lead, key);    // borrowed
        PyObject *msg =
            node && h ? PyUnicode_FromFormat("%S.load_all() returned no value for %R (key %R)",
                                             qual, node, key)
                      : NULL;
        PyObject *e = msg ? PyObject_CallOneArg(PyExc_KeyError, msg) : NULL;
        Py_XDECREF(msg);
        if (e == NULL) {
            Py_DECREF(qual);
            return -1;
        }
        cm_flight_handle_settle(h, NULL, e);
        Py_DECREF(e);
    }
    if (PyList_GET_SIZE(left) > 0) {
        PyObject *key, *value;
        Py_ssize_t i = 0;
        while (PyDict_Next(o->found, &i, &key, &value)) {
            int s = PySet_Contains(o->settled, key);
            if (s < 0 || (!s && settle_found(o, key, value) < 0)) {
                Py_DECREF(qual);
                return -1;
            }
        }
        PyErr_Format(PyExc_KeyError,
                     "%S.load_all() returned no value for %zd of %zd nodes, e.g. key %R", qual,
                     PyList_GET_SIZE(left), ntodo, PyList_GET_ITEM(left, 0));
        Py_DECREF(qual);
        return -1;
    }
    Py_DECREF(qual);
    return 0;
}

/* The loads are in (found holds their values): metrics, then the keys
 * load_all left out fail. */
static int loads_done(CmGetAllObject *o)
{
    Py_ssize_t ntodo = PyDict_GET_SIZE(o->todo);
    PyObject *left = PyList_New(0);
    if (left == NULL)
        return -1;
    PyObject *key, *node;
    Py_ssize_t i = 0;
    while (PyDict_Next(o->todo, &i, &key, &node)) {
        int got = PyDict_Contains(o->found, key);
        if (got < 0 || (!got && PyList_Append(left, key) < 0)) {
            Py_DECREF(left);
            return -1;
        }
    }
    record_load(o, (uint64_t)(ntodo - PyList_GET_SIZE(left)), (uint64_t)PyList_GET_SIZE(left));
    int rc = fail_left(o, left, ntodo);
    Py_DECREF(left);
    return rc;
}

/* Start the next node.load() of the default load_all: 1 started, 0 none
 * left, -1 error. */
static int next_load(CmGetAllObject *o)
{
    if (o->pos >= PyList_GET_SIZE(o->load_keys))
        return 0;
    PyObject *key = PyList_GET_ITEM(o->load_keys, o->pos);  // borrowed
    PyObject *node = PyDict_GetItemWithError(o->todo, key); // borrowed
    if (node == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, key);
        return -1;
    }
    return cm_ga_start_sub(
        o, cm_flight_load_timeout(o->st, o->cfg, PyObject_CallMethodNoArgs(node, o->st->s_load)));
}

/* The batch's state machine: res is the outcome of the awaitable it drove
 * (stolen; NULL with the exception set). 1: it drives a new one; 0: done,
 * *out its value (found); -1: failed, exception set. */
int cm_ga_batch_advance(CmGetAllObject *o, PyObject *res, PyObject **out)
{
    CmState *st = o->st;
    CmNodeConfigObject *cfg = o->cfg;
    int rc;
    switch (o->step) {
    case B_START:
        if (res == NULL)
            goto fail;
        Py_DECREF(res);
        o->pos = 0;
        goto next_remote;
    case B_REMOTE: {
        CmCacheRef *r = &cfg->caches[o->pos];
        uint64_t hits = 0, errors = 0;
        if (res == NULL) {
            /* a key the storage cannot hold would miss every time */
            if (PyErr_ExceptionMatches(st->StorageKeyError) ||
                !PyErr_ExceptionMatches(PyExc_Exception))
                goto fail;
            cm_ga_log_failed(st, "cacheme: get_all from storage %r failed", r->name);
            errors = 1;
        } else {
            /* a batch some of whose pieces failed (a cluster with a master
             * down) says how many: each counts as an error of the storage */
            if (!PyList_CheckExact(res)) {
                PyObject *n = PyObject_GetAttrString(res, "errors");
                long v = n != NULL && PyLong_Check(n) ? PyLong_AsLong(n) : 0;
                Py_XDECREF(n);
                PyErr_Clear(); /* no such attribute: a plain sequence of pairs */
                if (v > 0)
                    errors = (uint64_t)v;
            }
            rc = take_remote(o, r, res, &hits);
            Py_DECREF(res);
            if (rc < 0)
                goto fail;
        }
        counters(cfg, r)->hits += hits;
        counters(cfg, r)->misses += (uint64_t)PyDict_GET_SIZE(o->todo);
        counters(cfg, r)->errors += errors;
        PyObject *keys = PyDict_Keys(o->todo);
        if (keys == NULL)
            goto fail;
        rc = cm_ga_list_append_pair(o->remote_missed, o->pos, keys);
        Py_DECREF(keys);
        if (rc < 0)
            goto fail;
        o->pos++;
    }
    next_remote:
        for (; o->pos < cfg->ncaches; o->pos++) {
            CmCacheRef *r = &cfg->caches[o->pos];
            if (r->kind != CM_CACHE_REMOTE || PyDict_GET_SIZE(o->todo) == 0)
                continue;
            o->step = B_REMOTE;
            if (cm_ga_start_sub(o, call_remote_get_all(o, r)) == 1)
                return 1;
            return cm_ga_batch_advance(o, NULL, out); /* failed at the call: as if awaited */
        }
        if (bg_missed(o) < 0)
            goto fail;
        {
            /* what the remote caches had is settled now: its waiters need
             * not wait for the others' loads */
            PyObject *key, *value;
            Py_ssize_t i = 0;
            while (PyDict_Next(o->found, &i, &key, &value))
                if (settle_found(o, key, value) < 0)
                    goto fail;
        }
        o->remote_settled = PySet_GET_SIZE(o->settled);
        if (PyDict_GET_SIZE(o->todo) == 0)
            goto admit;
        if (o->lease_keys == NULL) {
            rc = cm_ga_lease_start(o);
            if (rc != 0) {
                if (rc < 0)
                    goto fail;
                return 1;
            }
        }
        o->load_start = cm_now_ns();
        {
            PyObject *bound;
            int dflt = default_load_all(o, &bound);
            if (dflt < 0) {
                Py_XDECREF(bound);
                goto load_failed;
            }
            if (dflt) {
                /* Node.load_all's own loop (each load in turn), each flight
                 * settled as soon as its load is in */
                Py_DECREF(bound);
                if ((o->load_keys = PyDict_Keys(o->todo)) == NULL)
                    goto load_failed;
                o->step = B_LOAD_EACH;
                o->pos = 0;
                goto next_load;
            }
            PyObject *nodes = PyDict_Values(o->todo);
            PyObject *tup = nodes ? PyList_AsTuple(nodes) : NULL;
            Py_XDECREF(nodes);
            PyObject *aw = tup ? PyObject_CallOneArg(bound, tup) : NULL;
            Py_XDECREF(tup);
            Py_DECREF(bound);
            o->step = B_LOAD_ALL;
            if (cm_ga_start_sub(o, cm_flight_load_timeout(o->st, o->cfg, aw)) < 0)
                goto load_failed;
            return 1;
        }
    case B_LEASE:
        if (cm_ga_lease_take(o, res) < 0)
            goto fail;
        o->pos = cfg->ncaches;
        goto next_remote;
    case B_LOAD_EACH: {
        if (res == NULL)
            goto load_failed;
        PyObject *key = PyList_GET_ITEM(o->load_keys, o->pos); // borrowed
        rc = PyDict_SetItem(o->found, key, res) < 0 || settle_found(o, key, res) < 0 ? -1 : 0;
        Py_DECREF(res);
        if (rc < 0)
            goto fail;
        o->pos++;
    }
    next_load:
        rc = next_load(o);
        if (rc < 0)
            goto load_failed;
        if (rc == 1)
            return 1;
        if (loads_done(o) < 0)
            goto fail;
        goto admit;
    case B_LOAD_ALL: {
        if (res == NULL)
            goto load_failed;
        PyObject *it = PyObject_GetIter(res);
        Py_DECREF(res);
        if (it == NULL)
            goto fail;
        PyObject *item;
        while ((item = PyIter_Next(it)) != NULL) {
            PyObject *tmp, *node, *value;
            rc = unpack(item, &tmp, &node, &value, NULL, NULL);
            Py_DECREF(item);
            if (rc < 0)
                break;
            PyObject *key = full_key_of(st, node);
            rc = key ? PyDict_Contains(o->todo, key) : -1;
            if (rc > 0)
                rc = PyDict_SetItem(o->found, key, value);
            Py_XDECREF(key);
            Py_DECREF(tmp);
            if (rc < 0)
                break;
        }
        Py_DECREF(it);
        if (PyErr_Occurred() || loads_done(o) < 0)
            goto fail;
        goto admit;
    }
    case B_SET_ALL: {
        if (res == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_Exception))
                goto finish_fail;
            PyObject *t = PyList_GET_ITEM(o->remote_missed, o->pos); // borrowed
            CmCacheRef *r = &cfg->caches[PyLong_AsSsize_t(PyTuple_GET_ITEM(t, 0))];
            counters(cfg, r)->errors++;
            counters(cfg, r)->set_errors++;
            cm_ga_log_failed(st, "cacheme: set_all of storage %r failed", r->name);
        } else {
            PyObject *t = PyList_GET_ITEM(o->remote_missed, o->pos); // borrowed
            counters(cfg, &cfg->caches[PyLong_AsSsize_t(PyTuple_GET_ITEM(t, 0))])->sets++;
            Py_DECREF(res);
        }
        o->pos++;
        goto next_fill;
    }
    default:
        PyErr_SetString(PyExc_RuntimeError, "get_all: bad state");
        return -1;
    }

admit:
    if (batch_admit(o) < 0)
        goto finish_fail;
    o->pos = 0;
next_fill:
    rc = next_set_all(o);
    if (rc == 1)
        return 1;
    if (rc < 0) {
        if (o->step == B_SET_ALL && o->sub == NULL && PyErr_ExceptionMatches(PyExc_Exception))
            return cm_ga_batch_advance(o, NULL, out); /* failed at the call: as if awaited */
        goto finish_fail;
    }
    lead_finish_all(o);
    cm_ga_lease_end(o);
    if (o->due != NULL)
        start_due(o);
    o->step = S_DONE;
    *out = Py_NewRef(o->found);
    return 0;

load_failed : {
    uint64_t ok = (uint64_t)(PySet_GET_SIZE(o->settled) - o->remote_settled);
    uint64_t ntodo = (uint64_t)PyDict_GET_SIZE(o->todo);
    record_load(o, ok, ntodo - ok);
}
fail : {
    PyObject *e = cm_exc_take();
    if (e != NULL)
        lead_fail_all(o, e); /* a no-op for the flights already settled */
    cm_exc_restore(e);
}
finish_fail : {
    PyObject *e = cm_exc_take();
    lead_finish_all(o);
    cm_ga_lease_end(o);
    cm_exc_restore(e);
}
    o->step = S_DONE;
    return -1;
}
