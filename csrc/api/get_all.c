/* get_all(nodes): many nodes of one class in one request.
 *
 * The call reads the local caches at once; when every node hit, it returns
 * a ready awaitable of the list. Otherwise it returns a GetAll in the
 * caller role: at its first step it joins the flights of keys already in
 * flight and leads a flight for each of the others. The led keys go to a
 * second GetAll in the batch role, run by a Task: the remote caches' get_all
 * in order, then load_all for what is left, each flight settled as soon as
 * its value is known, then the fills. The caller awaits the batch through
 * asyncio.shield, so a cancelled caller cancels the batch only when no
 * other caller waits on its flights.
 *
 * Both roles are state machines that drive one awaitable at a time (the
 * storages' calls, the loads) the way `await` does, delegating send and
 * throw to it. */
#include "api/get_all.h"

#include "api/ready.h"
#include "base/clock.h"
#include "base/exc.h"
#include "core/key.h"
#include "core/nodecfg.h"
#include "core/store.h"
#include "flight/flight.h"
#include "loop/loop.h"

enum { R_CALLER, R_BATCH };
enum { C_START, C_BATCH, C_WAITS };
enum { B_START, B_REMOTE, B_LOAD_EACH, B_LOAD_ALL, B_SET_ALL };
#define S_DONE 100

typedef struct {
    PyObject_HEAD
    CmState *st;
    int role;
    int step;
    Py_ssize_t pos;          /* the cache, wait, load or set_all in progress */
    PyObject *sub;           /* iterator of the awaitable being driven */
    CmNodeConfigObject *cfg; /* strong */
    PyObject *cls;           /* the nodes' class */
    PyObject *pending;       /* dict key -> node: what missed every local cache */
    PyObject *lead;          /* dict key -> FlightHandle: the keys this request loads */
    /* caller */
    PyObject *keys;         /* list: the full keys in the order of the nodes */
    PyObject *all;          /* dict key -> node, every node */
    PyObject *results;      /* dict key -> value */
    PyObject *local_missed; /* list of (cache index, [keys]) */
    PyObject *wait_keys;    /* list: keys in flight elsewhere */
    PyObject *wait_aws;     /* list: their awaitables */
    PyObject *task;         /* the batch's Task */
    /* batch */
    PyObject *todo;          /* dict key -> node: led keys still without a value */
    PyObject *found;         /* dict key -> value */
    PyObject *settled;       /* set: keys whose flight has its value */
    PyObject *remote_missed; /* list of (cache index, [keys]) */
    PyObject *load_keys;     /* list: the keys loaded one by one */
    PyObject *admitted;      /* dict key -> value: what fills the caches */
    Py_ssize_t remote_settled;
    int64_t load_start;
} CmGetAllObject;

/* ---- helpers ----------------------------------------------------------------- */

/* logger.warning(fmt, name, exc_info=<the exception being raised>); the
 * exception is cleared. Never fails. */
static void log_failed(CmState *st, const char *fmt, PyObject *name)
{
    PyObject *exc = cm_exc_take();
    if (st->logger != NULL) {
        PyObject *f = PyUnicode_FromString(fmt);
        PyObject *kw = Py_BuildValue("(s)", "exc_info");
        if (f != NULL && kw != NULL) {
            PyObject *args[4] = {st->logger, f, name, exc ? exc : Py_True};
            PyObject *r = PyObject_VectorcallMethod(st->s_warning, args,
                                                    3 | PY_VECTORCALL_ARGUMENTS_OFFSET, kw);
            Py_XDECREF(r);
        }
        Py_XDECREF(f);
        Py_XDECREF(kw);
        PyErr_Clear();
    }
    Py_XDECREF(exc);
}

static inline CmStorageCounters *counters(CmNodeConfigObject *cfg, CmCacheRef *r)
{
    return &cfg->metrics->storages[r->stat];
}

/* (a, b) = item; borrowed into *a, *b from *tmp (new ref, to drop). */
static int unpack2(PyObject *item, PyObject **tmp, PyObject **a, PyObject **b)
{
    PyObject *t = PyTuple_CheckExact(item) ? Py_NewRef(item) : PySequence_Tuple(item);
    if (t == NULL)
        return -1;
    if (PyTuple_GET_SIZE(t) != 2) {
        if (PyTuple_GET_SIZE(t) > 2)
            PyErr_SetString(PyExc_ValueError, "too many values to unpack (expected 2)");
        else
            PyErr_Format(PyExc_ValueError, "not enough values to unpack (expected 2, got %zd)",
                         PyTuple_GET_SIZE(t));
        Py_DECREF(t);
        return -1;
    }
    *tmp = t;
    *a = PyTuple_GET_ITEM(t, 0);
    *b = PyTuple_GET_ITEM(t, 1);
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

/* Fill local cache r with values[key] for each key of keys; a failure is
 * counted as an error of the cache and logged. */
static void fill_local(CmState *st, CmNodeConfigObject *cfg, CmCacheRef *r, PyObject *keys,
                       PyObject *values, PyObject *nodes)
{
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys); i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);               // borrowed
        PyObject *value = PyDict_GetItemWithError(values, key); // borrowed
        int rc = -1;
        if (value == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, key);
        } else if (r->kind == CM_CACHE_LOCAL) {
            Py_hash_t h = PyObject_Hash(key);
            rc = h == -1 ? -1 : cm_store_put((CmStoreObject *)r->storage, key, h, value, r->ttl_ns);
        } else {
            PyObject *node = PyDict_GetItemWithError(nodes, key); // borrowed
            PyObject *aw = NULL;
            if (node != NULL) {
                PyObject *args[5] = {r->storage, node, value, r->ttl, cfg->serializer};
                aw = PyObject_VectorcallMethod(st->s_set, args, 5 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                               NULL);
            } else if (!PyErr_Occurred()) {
                PyErr_SetObject(PyExc_KeyError, key);
            }
            if (aw != NULL && PyCoro_CheckExact(aw)) {
                PyObject *c = PyObject_CallMethodNoArgs(aw, st->s_close);
                Py_XDECREF(c);
                PyErr_Clear();
                Py_CLEAR(aw);
                PyErr_SetString(PyExc_RuntimeError,
                                "a local storage's set() must not need awaiting here");
            }
            rc = aw == NULL ? -1 : 0;
            Py_XDECREF(aw);
        }
        if (rc < 0) {
            counters(cfg, r)->errors++;
            log_failed(st, "cacheme: fill of storage %r failed", r->name);
        }
    }
}

/* Drive aw (stolen) from now on. 1, or -1 with an exception. */
static int start_sub(CmGetAllObject *o, PyObject *aw)
{
    if (aw == NULL)
        return -1;
    o->sub = cm_await_iter(aw);
    Py_DECREF(aw);
    return o->sub ? 1 : -1;
}

static void raise_exc(PyObject *exc) { PyErr_SetObject((PyObject *)Py_TYPE(exc), exc); }

/* Resume the current sub-awaitable with a value or an exception. */
static PySendResult sub_resume(CmGetAllObject *o, PyObject *arg, PyObject *exc, PyObject **res)
{
    if (exc == NULL)
        return PyIter_Send(o->sub, arg, res);
    PyObject *meth = PyObject_GetAttr(o->sub, o->st->s_throw);
    if (meth == NULL) {
        /* an iterator without throw: the exception surfaces at its yield */
        PyErr_Clear();
        raise_exc(exc);
        *res = NULL;
        return PYGEN_ERROR;
    }
    PyObject *r = PyObject_CallOneArg(meth, exc);
    Py_DECREF(meth);
    if (r != NULL) {
        *res = r;
        return PYGEN_NEXT;
    }
    if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyObject *e = cm_exc_take();
        *res = PyObject_GetAttrString(e, "value");
        Py_DECREF(e);
        return *res ? PYGEN_RETURN : PYGEN_ERROR;
    }
    *res = NULL;
    return PYGEN_ERROR;
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

static int list_append_pair(PyObject *list, Py_ssize_t i, PyObject *keys)
{
    PyObject *t = Py_BuildValue("(nO)", i, keys);
    int rc = t ? PyList_Append(list, t) : -1;
    Py_XDECREF(t);
    return rc;
}

/* ---- the batch: remote caches, load, fills ---------------------------------- */

/* Start storage.get_all(todo nodes, serializer) of cache o->pos. */
static PyObject *call_remote_get_all(CmGetAllObject *o, CmCacheRef *r)
{
    PyObject *nodes = PyDict_Values(o->todo);
    if (nodes == NULL)
        return NULL;
    PyObject *args[3] = {r->storage, nodes, o->cfg->serializer};
    PyObject *aw =
        PyObject_VectorcallMethod(o->st->s_get_all, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(nodes);
    return aw;
}

/* What a remote cache returned: found[key] = value for the todo keys. */
static int take_remote(CmGetAllObject *o, PyObject *got, uint64_t *hits)
{
    PyObject *it = PyObject_GetIter(got);
    if (it == NULL)
        return -1;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        PyObject *tmp, *node, *value;
        int rc = unpack2(item, &tmp, &node, &value);
        Py_DECREF(item);
        if (rc < 0)
            break;
        PyObject *key = full_key_of(o->st, node);
        if (key != NULL) {
            rc = PyDict_Contains(o->todo, key);
            if (rc > 0) {
                rc = PyDict_SetItem(o->found, key, value) < 0 || PyDict_DelItem(o->todo, key) < 0
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

/* The load's awaitable under Meta.load_timeout (aw stolen). */
static PyObject *with_timeout(CmGetAllObject *o, PyObject *aw)
{
    double t = o->cfg->load_timeout;
    if (aw == NULL || t <= 0 || o->st->load_timeout_wrap == NULL)
        return aw;
    PyObject *secs = PyFloat_FromDouble(t);
    PyObject *args[2] = {aw, secs};
    PyObject *w = secs ? PyObject_Vectorcall(o->st->load_timeout_wrap, args, 2, NULL) : NULL;
    Py_XDECREF(secs);
    Py_DECREF(aw);
    return w;
}

static void record_load(CmGetAllObject *o, uint64_t ok, uint64_t failed)
{
    CmMetricsObject *m = o->cfg->metrics;
    m->load_success_count += ok;
    m->load_failure_count += failed;
    m->total_load_time += (uint64_t)(cm_now_ns() - o->load_start);
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
        PyObject *h = PyDict_GetItemWithError(o->lead, key); // borrowed
        if (h == NULL)
            return PyErr_Occurred() ? -1 : 0;
        int s = PySet_Contains(o->settled, key);
        if (s < 0)
            return -1;
        if (!s)
            cm_flight_handle_settle(h, value, NULL);
        if (cm_flight_handle_stale(h))
            continue;
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
    PyObject *keys = PyDict_Keys(o->admitted);
    if (keys == NULL)
        return -1;
    for (Py_ssize_t c = 0; c < cfg->ncaches; c++) {
        CmCacheRef *r = &cfg->caches[c];
        if (r->kind != CM_CACHE_REMOTE)
            fill_local(st, cfg, r, keys, o->admitted, o->pending);
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
        PyObject *args[4] = {r->storage, data, r->ttl, o->cfg->serializer};
        PyObject *aw = PyObject_VectorcallMethod(st->s_set_all, args,
                                                 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(data);
        return start_sub(o, aw);
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
    return start_sub(o, with_timeout(o, PyObject_CallMethodNoArgs(node, o->st->s_load)));
}

/* The batch's state machine: res is the outcome of the awaitable it drove
 * (stolen; NULL with the exception set). 1: it drives a new one; 0: done,
 * *out its value (found); -1: failed, exception set. */
static int batch_advance(CmGetAllObject *o, PyObject *res, PyObject **out)
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
            log_failed(st, "cacheme: get_all from storage %r failed", r->name);
            errors = 1;
        } else {
            rc = take_remote(o, res, &hits);
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
        rc = list_append_pair(o->remote_missed, o->pos, keys);
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
            if (start_sub(o, call_remote_get_all(o, r)) == 1)
                return 1;
            return batch_advance(o, NULL, out); /* failed at the call: as if awaited */
        }
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
            if (start_sub(o, with_timeout(o, aw)) < 0)
                goto load_failed;
            return 1;
        }
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
            rc = unpack2(item, &tmp, &node, &value);
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
            log_failed(st, "cacheme: set_all of storage %r failed", r->name);
        } else {
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
            return batch_advance(o, NULL, out); /* failed at the call: as if awaited */
        goto finish_fail;
    }
    lead_finish_all(o);
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
    cm_exc_restore(e);
}
    o->step = S_DONE;
    return -1;
}

/* ---- the caller -------------------------------------------------------------- */

/* Join the keys in flight, lead the others; the batch Task for the led. */
static int caller_start(CmGetAllObject *o)
{
    CmState *st = o->st;
    if ((o->lead = PyDict_New()) == NULL || (o->wait_keys = PyList_New(0)) == NULL ||
        (o->wait_aws = PyList_New(0)) == NULL)
        return -1;
    PyObject *key, *node;
    Py_ssize_t i = 0;
    while (PyDict_Next(o->pending, &i, &key, &node)) {
        Py_hash_t h = PyObject_Hash(key);
        if (h == -1)
            return -1;
        PyObject *aw;
        int j = cm_flight_join(st, key, h, &aw);
        if (j < 0)
            return -1;
        if (j == 1) {
            int rc = PyList_Append(o->wait_keys, key) < 0 || PyList_Append(o->wait_aws, aw) < 0;
            Py_DECREF(aw);
            if (rc)
                return -1;
            continue;
        }
        PyObject *hd = cm_flight_lead(st, key, h);
        if (hd == NULL)
            return -1;
        if (hd == Py_None) {
            Py_DECREF(hd);
            PyErr_SetString(PyExc_RuntimeError, "cacheme: a flight started while joining");
            return -1;
        }
        int rc = PyDict_SetItem(o->lead, key, hd);
        Py_DECREF(hd);
        if (rc < 0)
            return -1;
    }
    Py_ssize_t nlead = PyDict_GET_SIZE(o->lead);
    CmMetricsObject *m = o->cfg->metrics;
    m->hit_count += (uint64_t)(PyList_GET_SIZE(o->keys) - nlead);
    m->miss_count += (uint64_t)nlead;
    if (nlead == 0)
        return 0;

    CmGetAllObject *b = PyObject_GC_New(CmGetAllObject, st->GetAllType);
    if (b == NULL)
        return -1;
    memset((char *)b + sizeof(PyObject), 0, sizeof(CmGetAllObject) - sizeof(PyObject));
    b->st = st;
    b->role = R_BATCH;
    b->step = B_START;
    b->cfg = (CmNodeConfigObject *)Py_NewRef((PyObject *)o->cfg);
    b->cls = Py_NewRef(o->cls);
    b->pending = Py_NewRef(o->pending);
    b->lead = Py_NewRef(o->lead);
    PyObject_GC_Track(b);
    if ((b->todo = PyDict_New()) == NULL || (b->found = PyDict_New()) == NULL ||
        (b->settled = PySet_New(NULL)) == NULL || (b->remote_missed = PyList_New(0)) == NULL) {
        Py_DECREF(b);
        return -1;
    }
    i = 0;
    PyObject *hd;
    while (PyDict_Next(o->lead, &i, &key, &hd)) {
        node = PyDict_GetItemWithError(o->pending, key); // borrowed
        if (node == NULL || PyDict_SetItem(b->todo, key, node) < 0) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, key);
            Py_DECREF(b);
            return -1;
        }
    }
    PyObject *loop = cm_loop_running(st);
    if (loop != NULL) {
        o->task = cm_loop_create_task(st, loop, (PyObject *)b);
        Py_DECREF(loop);
    }
    Py_DECREF(b);
    return o->task ? 0 : -1;
}

/* The caller was cancelled while it awaited the batch: the batch goes on
 * while another caller waits on one of its flights. */
static void caller_cancelled(CmGetAllObject *o)
{
    PyObject *e = cm_exc_take();
    int done = cm_future_done(o->st, o->task);
    if (done == 0) {
        PyObject *key, *h;
        Py_ssize_t i = 0;
        while (PyDict_Next(o->lead, &i, &key, &h)) {
            if (cm_flight_handle_live_waiters(h) > 0) {
                done = 1;
                break;
            }
        }
    }
    if (done == 0 && cm_future_cancel(o->st, o->task) < 0)
        PyErr_WriteUnraisable(o->task);
    PyErr_Clear();
    cm_exc_restore(e);
}

/* Fill the local caches that missed with what came from further away. */
static int caller_fill(CmState *st, CmNodeConfigObject *cfg, PyObject *local_missed,
                       PyObject *results, PyObject *lead, PyObject *nodes)
{
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(local_missed); i++) {
        PyObject *t = PyList_GET_ITEM(local_missed, i); // borrowed
        CmCacheRef *r = &cfg->caches[PyLong_AsSsize_t(PyTuple_GET_ITEM(t, 0))];
        PyObject *missed = PyTuple_GET_ITEM(t, 1); // borrowed
        PyObject *fill = PyList_New(0);
        if (fill == NULL)
            return -1;
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(missed); j++) {
            PyObject *key = PyList_GET_ITEM(missed, j);
            int in = PyDict_Contains(results, key);
            if (in > 0 && lead != NULL) {
                in = PyDict_Contains(lead, key); /* the batch filled those */
                in = in < 0 ? -1 : !in;
            }
            if (in < 0 || (in > 0 && PyList_Append(fill, key) < 0)) {
                Py_DECREF(fill);
                return -1;
            }
        }
        fill_local(st, cfg, r, fill, results, nodes);
        Py_DECREF(fill);
    }
    return 0;
}

static PyObject *caller_result(PyObject *keys, PyObject *results)
{
    Py_ssize_t n = PyList_GET_SIZE(keys);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyDict_GetItemWithError(results, PyList_GET_ITEM(keys, i)); // borrowed
        if (v == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, PyList_GET_ITEM(keys, i));
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, Py_NewRef(v));
    }
    return out;
}

/* The caller's state machine (see batch_advance for the contract). */
static int caller_advance(CmGetAllObject *o, PyObject *res, PyObject **out)
{
    int rc;
    switch (o->step) {
    case C_START:
        if (res == NULL)
            goto error;
        Py_DECREF(res);
        if (caller_start(o) < 0)
            goto error;
        o->pos = 0;
        if (o->task != NULL) {
            o->step = C_BATCH;
            if (start_sub(o, PyObject_CallOneArg(o->st->shield, o->task)) < 0)
                goto error;
            return 1;
        }
        goto next_wait;
    case C_BATCH:
        if (res == NULL) {
            if (PyErr_ExceptionMatches(o->st->CancelledError))
                caller_cancelled(o);
            goto error;
        }
        rc = PyDict_Update(o->results, res);
        Py_DECREF(res);
        if (rc < 0)
            goto error;
        goto next_wait;
    case C_WAITS:
        if (res == NULL)
            goto error;
        rc = PyDict_SetItem(o->results, PyList_GET_ITEM(o->wait_keys, o->pos), res);
        Py_DECREF(res);
        if (rc < 0)
            goto error;
        o->pos++;
        goto next_wait;
    default:
        PyErr_SetString(PyExc_RuntimeError, "get_all: bad state");
        return -1;
    }
next_wait:
    if (o->pos < PyList_GET_SIZE(o->wait_aws)) {
        o->step = C_WAITS;
        if (start_sub(o, Py_NewRef(PyList_GET_ITEM(o->wait_aws, o->pos))) < 0)
            goto error;
        return 1;
    }
    o->step = S_DONE;
    if (caller_fill(o->st, o->cfg, o->local_missed, o->results, o->lead, o->all) < 0)
        return -1;
    *out = caller_result(o->keys, o->results);
    return *out ? 0 : -1;
error:
    o->step = S_DONE;
    return -1;
}

/* ---- the awaitable ------------------------------------------------------------ */

static PySendResult ga_step(CmGetAllObject *o, PyObject *arg, PyObject *exc, PyObject **out)
{
    *out = NULL;
    if (o->step == S_DONE) {
        if (exc != NULL)
            raise_exc(exc);
        else
            PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited get_all");
        return PYGEN_ERROR;
    }
    PyObject *res;
    PySendResult rs;
    if (o->sub == NULL) { /* the first step */
        if (exc != NULL)
            raise_exc(exc);
        res = exc != NULL ? NULL : Py_NewRef(Py_None);
    } else {
        rs = sub_resume(o, arg, exc, &res);
        if (rs == PYGEN_NEXT) {
            *out = res;
            return PYGEN_NEXT;
        }
    }
    for (;;) {
        if (o->sub != NULL) {
            PyObject *e = res == NULL ? cm_exc_take() : NULL;
            Py_CLEAR(o->sub);
            cm_exc_restore(e);
        }
        int r = o->role == R_CALLER ? caller_advance(o, res, out) : batch_advance(o, res, out);
        if (r == 0)
            return PYGEN_RETURN;
        if (r < 0)
            return PYGEN_ERROR;
        rs = PyIter_Send(o->sub, Py_None, &res);
        if (rs == PYGEN_NEXT) {
            *out = res;
            return PYGEN_NEXT;
        }
        if (rs == PYGEN_ERROR)
            res = NULL;
    }
}

static PySendResult ga_am_send(PyObject *self, PyObject *arg, PyObject **out)
{
    return ga_step((CmGetAllObject *)self, arg, NULL, out);
}

/* send/throw as methods: StopIteration carries the final value. */
static PyObject *finish_method(PySendResult r, PyObject *res)
{
    if (r == PYGEN_NEXT)
        return res;
    if (r == PYGEN_RETURN) {
        PyObject *e = PyObject_CallOneArg(PyExc_StopIteration, res);
        if (e != NULL) {
            PyErr_SetObject(PyExc_StopIteration, e);
            Py_DECREF(e);
        }
        Py_DECREF(res);
    }
    return NULL;
}

static PyObject *ga_iternext(PyObject *self)
{
    PyObject *res = NULL;
    return finish_method(ga_am_send(self, Py_None, &res), res);
}

static PyObject *ga_send(PyObject *self, PyObject *arg)
{
    PyObject *res = NULL;
    return finish_method(ga_am_send(self, arg, &res), res);
}

static PyObject *ga_throw(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
        return NULL;
    }
    PyObject *exc;
    if (PyExceptionInstance_Check(args[0]))
        exc = Py_NewRef(args[0]);
    else if (PyExceptionClass_Check(args[0])) {
        PyObject *val = nargs > 1 ? args[1] : Py_None;
        exc = PyExceptionInstance_Check(val) ? Py_NewRef(val)
              : val == Py_None               ? PyObject_CallNoArgs(args[0])
                                             : PyObject_CallOneArg(args[0], val);
        if (exc == NULL)
            return NULL;
    } else {
        PyErr_SetString(PyExc_TypeError, "exceptions must derive from BaseException");
        return NULL;
    }
    PyObject *res = NULL;
    PySendResult r = ga_step((CmGetAllObject *)self, NULL, exc, &res);
    Py_DECREF(exc);
    return finish_method(r, res);
}

/* Stop driving the awaitable in progress. A batch stopped before its end
 * leaves its flights to the handles' release (they fail as abandoned). */
static PyObject *ga_close(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmGetAllObject *o = (CmGetAllObject *)self;
    o->step = S_DONE;
    if (o->sub != NULL) {
        PyObject *sub = o->sub;
        o->sub = NULL;
        PyObject *meth = PyObject_GetAttr(sub, o->st->s_close);
        PyObject *r = meth ? PyObject_CallNoArgs(meth) : NULL;
        Py_XDECREF(meth);
        Py_DECREF(sub);
        if (r == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                return NULL;
            PyErr_Clear();
        }
        Py_XDECREF(r);
    }
    Py_RETURN_NONE;
}

static PyObject *ga_await(PyObject *self) { return Py_NewRef(self); }

#define GA_FIELDS(X)                                                                               \
    X(sub)                                                                                         \
    X(cfg)                                                                                         \
    X(cls)                                                                                         \
    X(pending)                                                                                     \
    X(lead)                                                                                        \
    X(keys)                                                                                        \
    X(all)                                                                                         \
    X(results)                                                                                     \
    X(local_missed)                                                                                \
    X(wait_keys)                                                                                   \
    X(wait_aws)                                                                                    \
    X(task)                                                                                        \
    X(todo)                                                                                        \
    X(found)                                                                                       \
    X(settled)                                                                                     \
    X(remote_missed)                                                                               \
    X(load_keys)                                                                                   \
    X(admitted)

static int ga_traverse(PyObject *self, visitproc visit, void *arg)
{
    CmGetAllObject *o = (CmGetAllObject *)self;
    Py_VISIT(Py_TYPE(self));
#define GA_VISIT(f) Py_VISIT(o->f);
    GA_FIELDS(GA_VISIT)
#undef GA_VISIT
    return 0;
}

static int ga_clear(PyObject *self)
{
    CmGetAllObject *o = (CmGetAllObject *)self;
#define GA_CLEAR(f) Py_CLEAR(o->f);
    GA_FIELDS(GA_CLEAR)
#undef GA_CLEAR
    return 0;
}

static void ga_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    ga_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef ga_methods[] = {
    {"send", ga_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))ga_throw, METH_FASTCALL, NULL},
    {"close", ga_close, METH_NOARGS, NULL},
    {NULL, NULL},
};

static PyType_Slot ga_slots[] = {
    {Py_am_await, ga_await},       {Py_am_send, ga_am_send},    {Py_tp_iter, ga_await},
    {Py_tp_iternext, ga_iternext}, {Py_tp_methods, ga_methods}, {Py_tp_traverse, ga_traverse},
    {Py_tp_clear, ga_clear},       {Py_tp_dealloc, ga_dealloc}, {0, NULL},
};

static PyType_Spec ga_spec = {
    .name = "cacheme._core.GetAll",
    .basicsize = sizeof(CmGetAllObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = ga_slots,
};

/* ---- get_all(nodes) ------------------------------------------------------------ */

/* Every node of one class, a Node: the class, borrowed. */
static PyTypeObject *check_same_class(CmState *st, PyObject *nodes)
{
    PyObject *first = PyList_GET_ITEM(nodes, 0);
    PyTypeObject *cls = Py_TYPE(first);
    int ok = st->NodeType ? PyObject_IsInstance(first, st->NodeType) : 0;
    if (ok < 0)
        return NULL;
    if (!ok) {
        PyObject *name = PyType_GetName(cls);
        if (name != NULL) {
            PyErr_Format(PyExc_TypeError, "get_all() expects cacheme.Node instances, got %U", name);
            Py_DECREF(name);
        }
        return NULL;
    }
    for (Py_ssize_t i = 1; i < PyList_GET_SIZE(nodes); i++) {
        PyTypeObject *t = Py_TYPE(PyList_GET_ITEM(nodes, i));
        if (t != cls) {
            PyObject *a = PyType_GetQualName(cls);
            PyObject *b = a ? PyType_GetQualName(t) : NULL;
            if (b != NULL)
                PyErr_Format(PyExc_TypeError,
                             "get_all() needs nodes of one class: expected %U, got %U", a, b);
            Py_XDECREF(a);
            Py_XDECREF(b);
            return NULL;
        }
    }
    return cls;
}

/* The full key of a node of cfg's class: built from parts into the node's
 * key slot when it has one (as get() does), else the general way. */
static PyObject *node_full_key(CmState *st, CmNodeConfigObject *cfg, PyObject *node)
{
    PyObject **slot = cm_nodecfg_key_slot(st, cfg, node); // borrowed
    if (slot == NULL || *slot != NULL)
        return cm_full_key(st, node, cfg);
    PyObject *key = cm_key_call(st, node, cfg);
    if (key == NULL)
        return NULL;
    CmKeyParts parts;
    Py_hash_t hash;
    PyObject *full = cm_key_parts(st, &cfg->affix, key, cfg->version, &parts, &hash)
                         ? cm_key_build_parts(slot, &parts, hash)
                         : cm_key_build(st, node, key, cfg->version, -1);
    Py_DECREF(key);
    return full;
}

static int key_eq(PyObject *a, PyObject *b)
{
    if (a == b)
        return 1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(a);
    return n == PyUnicode_GET_LENGTH(b) && PyUnicode_KIND(a) == PyUnicode_KIND(b) &&
           memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * PyUnicode_KIND(a)) == 0;
}

/* The distinct keys of a get_all, in the order of their first node; a
 * repeated key counts once, as a dict of them would (and, as in such a
 * dict, keeps its last node). Arrays of one allocation. */
typedef struct {
    Py_ssize_t n, nu;  /* nodes, distinct keys */
    Py_ssize_t *pos;   /* [n]: node i's distinct key */
    PyObject **ukey;   /* [nu]: borrowed from the keys list */
    PyObject **unode;  /* [nu]: borrowed from the nodes list */
    PyObject **uval;   /* [nu]: owned, NULL while unknown */
    Py_hash_t *uhash;  /* [nu] */
    Py_ssize_t *table; /* [mask + 1]: open addressing over ukey, -1 empty */
    size_t mask;
} CmKeySet;

static int keyset_init(CmKeySet *s, Py_ssize_t n)
{
    size_t size = 8;
    while (size < (size_t)n * 2)
        size <<= 1;
    size_t bytes = (size_t)n * (sizeof(Py_ssize_t) + 3 * sizeof(PyObject *) + sizeof(Py_hash_t)) +
                   size * sizeof(Py_ssize_t);
    char *m = PyMem_Calloc(1, bytes);
    if (m == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    s->n = n;
    s->nu = 0;
    s->pos = (Py_ssize_t *)m;
    s->ukey = (PyObject **)(s->pos + n);
    s->unode = s->ukey + n;
    s->uval = s->unode + n;
    s->uhash = (Py_hash_t *)(s->uval + n);
    s->table = (Py_ssize_t *)(s->uhash + n);
    s->mask = size - 1;
    memset(s->table, 0xff, size * sizeof(Py_ssize_t)); /* -1 */
    return 0;
}

static void keyset_free(CmKeySet *s)
{
    if (s->pos == NULL)
        return;
    for (Py_ssize_t u = 0; u < s->nu; u++)
        Py_XDECREF(s->uval[u]);
    PyMem_Free(s->pos);
    s->pos = NULL;
}

/* Node i has key (its hash computed). */
static void keyset_add(CmKeySet *s, Py_ssize_t i, PyObject *key, PyObject *node)
{
    Py_hash_t h = ((PyASCIIObject *)key)->hash; /* computed by the key's builder */
    if (h == -1)
        h = PyObject_Hash(key); /* a str: cannot fail */
    size_t j = (size_t)h & s->mask;
    for (Py_ssize_t u; (u = s->table[j]) != -1; j = (j + 1) & s->mask) {
        if (s->uhash[u] == h && key_eq(s->ukey[u], key)) {
            s->pos[i] = u;
            s->unode[u] = node;
            return;
        }
    }
    Py_ssize_t u = s->nu++;
    s->table[j] = u;
    s->ukey[u] = key;
    s->uhash[u] = h;
    s->unode[u] = node;
    s->pos[i] = u;
}

/* Read local cache r for every distinct key still without a value; the
 * keys it missed are appended to missed. Returns how many it had. */
static Py_ssize_t read_local(CmState *st, CmNodeConfigObject *cfg, CmCacheRef *r, CmKeySet *s,
                             PyObject *missed)
{
    uint64_t hits = 0, errors = 0, misses = 0;
    for (Py_ssize_t u = 0; u < s->nu; u++) {
        if (s->uval[u] != NULL)
            continue;
        PyObject *v;
        if (r->kind == CM_CACHE_LOCAL) {
            v = cm_store_lookup((CmStoreObject *)r->storage, s->ukey[u], s->uhash[u]);
        } else {
            PyObject *args[3] = {r->storage, s->unode[u], cfg->serializer};
            v = PyObject_VectorcallMethod(st->s_get_sync, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                          NULL);
            if (v == NULL) {
                log_failed(st, "cacheme: get from storage %r failed", r->name);
                errors++;
            } else if (v == st->sentinel) {
                Py_CLEAR(v);
            }
        }
        if (v == NULL) {
            misses++;
            if (PyList_Append(missed, s->ukey[u]) < 0)
                return -1;
            continue;
        }
        s->uval[u] = v;
        hits++;
    }
    CmStorageCounters *c = counters(cfg, r);
    c->hits += hits;
    c->misses += misses;
    c->errors += errors;
    return (Py_ssize_t)hits;
}

/* The values in the order of the nodes. */
static PyObject *keyset_result(CmKeySet *s)
{
    PyObject *out = PyList_New(s->n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < s->n; i++)
        PyList_SET_ITEM(out, i, Py_NewRef(s->uval[s->pos[i]]));
    return out;
}

/* key -> value of the distinct keys known (all: key -> node of every one;
 * pending: of those unknown). */
static int keyset_dicts(CmKeySet *s, PyObject *results, PyObject *all, PyObject *pending)
{
    for (Py_ssize_t u = 0; u < s->nu; u++) {
        if (PyDict_SetItem(all, s->ukey[u], s->unode[u]) < 0)
            return -1;
        int rc = s->uval[u] != NULL ? PyDict_SetItem(results, s->ukey[u], s->uval[u])
                                    : PyDict_SetItem(pending, s->ukey[u], s->unode[u]);
        if (rc < 0)
            return -1;
    }
    return 0;
}

static PyObject *py_get_all(PyObject *mod, PyObject *arg)
{
    CmState *st = cm_state_from_module(mod);
    PyObject *nodes = PySequence_List(arg);
    if (nodes == NULL)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(nodes);
    if (n == 0) {
        PyObject *r = cm_ready_new(st, nodes);
        Py_DECREF(nodes);
        return r;
    }
    PyObject *result = NULL;
    PyObject *keys = NULL, *pending = NULL, *results = NULL, *local_missed = NULL, *all = NULL;
    CmKeySet s = {0};
    PyTypeObject *cls = check_same_class(st, nodes);
    if (cls == NULL) {
        Py_DECREF(nodes);
        return NULL;
    }
    CmNodeConfigObject *cfg = cm_nodecfg_get(st, cls); // borrowed
    if (cfg == NULL) {
        Py_DECREF(nodes);
        return NULL;
    }
    /* held for the whole call: key() or a Python storage may rebuild it */
    Py_INCREF(cfg);
    if ((keys = PyList_New(n)) == NULL || keyset_init(&s, n) < 0)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *node = PyList_GET_ITEM(nodes, i);
        PyObject *key = node_full_key(st, cfg, node);
        if (key == NULL)
            goto done;
        PyList_SET_ITEM(keys, i, key);
        keyset_add(&s, i, key, node);
    }
    Py_ssize_t unknown = s.nu;
    for (Py_ssize_t c = 0; c < cfg->ncaches && unknown > 0; c++) {
        CmCacheRef *r = &cfg->caches[c];
        if (r->kind == CM_CACHE_REMOTE)
            continue;
        PyObject *missed = PyList_New(0);
        if (missed == NULL)
            goto done;
        Py_ssize_t hits = read_local(st, cfg, r, &s, missed);
        int rc = hits < 0 ? -1 : 0;
        if (rc == 0 && PyList_GET_SIZE(missed) > 0) {
            if (local_missed == NULL && (local_missed = PyList_New(0)) == NULL)
                rc = -1;
            else
                rc = list_append_pair(local_missed, c, missed);
        }
        Py_DECREF(missed);
        if (rc < 0)
            goto done;
        unknown -= hits;
    }
    if (unknown == 0 && local_missed == NULL) {
        /* every node hit the first local cache: no flight, no batch */
        cfg->metrics->hit_count += (uint64_t)n;
        PyObject *list = keyset_result(&s);
        if (list != NULL) {
            result = cm_ready_new(st, list);
            Py_DECREF(list);
        }
        goto done;
    }
    if ((results = PyDict_New()) == NULL || (all = PyDict_New()) == NULL ||
        (pending = PyDict_New()) == NULL || keyset_dicts(&s, results, all, pending) < 0)
        goto done;
    if (local_missed == NULL && (local_missed = PyList_New(0)) == NULL)
        goto done;
    if (unknown == 0) {
        /* every node hit a local cache: fill the earlier ones that missed */
        cfg->metrics->hit_count += (uint64_t)n;
        if (caller_fill(st, cfg, local_missed, results, NULL, all) < 0)
            goto done;
        PyObject *list = keyset_result(&s);
        if (list != NULL) {
            result = cm_ready_new(st, list);
            Py_DECREF(list);
        }
        goto done;
    }
    CmGetAllObject *o = PyObject_GC_New(CmGetAllObject, st->GetAllType);
    if (o == NULL)
        goto done;
    memset((char *)o + sizeof(PyObject), 0, sizeof(CmGetAllObject) - sizeof(PyObject));
    o->st = st;
    o->role = R_CALLER;
    o->step = C_START;
    o->cfg = (CmNodeConfigObject *)Py_NewRef((PyObject *)cfg);
    o->cls = Py_NewRef((PyObject *)cls);
    o->keys = Py_NewRef(keys);
    o->pending = Py_NewRef(pending);
    o->all = Py_NewRef(all);
    o->results = Py_NewRef(results);
    o->local_missed = Py_NewRef(local_missed);
    PyObject_GC_Track(o);
    result = (PyObject *)o;
done:
    keyset_free(&s);
    Py_XDECREF(keys);
    Py_XDECREF(pending);
    Py_XDECREF(results);
    Py_XDECREF(local_missed);
    Py_XDECREF(all);
    Py_DECREF(cfg);
    Py_DECREF(nodes);
    return result;
}

/* _get_all_setup(Node): what get_all needs from cacheme.models. */
static PyObject *py_get_all_setup(PyObject *mod, PyObject *node_type)
{
    CmState *st = cm_state_from_module(mod);
    if (!PyType_Check(node_type)) {
        PyErr_SetString(PyExc_TypeError, "_get_all_setup(Node)");
        return NULL;
    }
    PyObject *la = PyObject_GetAttrString(node_type, "load_all");
    PyObject *f = la ? PyObject_GetAttrString(la, "__func__") : NULL;
    Py_XDECREF(la);
    if (f == NULL)
        return NULL;
    Py_XSETREF(st->node_load_all, f);
    Py_XSETREF(st->NodeType, Py_NewRef(node_type));
    Py_RETURN_NONE;
}

static PyMethodDef get_all_functions[] = {
    {"get_all", py_get_all, METH_O,
     "get_all(nodes) -> awaitable of the values of nodes of one class, in order"},
    {"_get_all_setup", py_get_all_setup, METH_O, NULL},
    {NULL, NULL},
};

int cm_get_all_init(PyObject *mod, CmState *st)
{
    st->GetAllType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &ga_spec, NULL);
    if (st->GetAllType == NULL)
        return -1;
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    if (asyncio == NULL)
        return -1;
    st->shield = PyObject_GetAttrString(asyncio, "shield");
    Py_DECREF(asyncio);
    if (st->shield == NULL)
        return -1;
    return PyModule_AddFunctions(mod, get_all_functions);
}

int cm_get_all_traverse(CmState *st, visitproc visit, void *arg)
{
    Py_VISIT(st->GetAllType);
    Py_VISIT(st->NodeType);
    Py_VISIT(st->node_load_all);
    Py_VISIT(st->shield);
    return 0;
}

void cm_get_all_clear(CmState *st)
{
    Py_CLEAR(st->GetAllType);
    Py_CLEAR(st->NodeType);
    Py_CLEAR(st->node_load_all);
    Py_CLEAR(st->shield);
}
