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
 * Both roles are state machines run by the GetAll awaitable
 * (get_all_await.c); this file has the call and the caller's, the batch's
 * is in get_all_batch.c. */
#include "api/get_all.h"

#include "api/get_all_obj.h"
#include "base/exc.h"
#include "core/key.h"
#include "core/store.h"
#include "flight/flight.h"
#include "loop/loop.h"
#include "loop/ready.h"

/* key came from a flight whose value may not fill local tiers. */
static int nofill_add(CmGetAllObject *o, PyObject *key)
{
    if (o->nofill == NULL && (o->nofill = PySet_New(NULL)) == NULL)
        return -1;
    return PySet_Add(o->nofill, key);
}

/* Join the keys in flight, lead the others; the batch Task for the led and
 * for those it reads past a refresh (o->bg). */
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
        uint64_t past = cm_flight_reads_past(st, o->cfg, key, h);
        if (past != 0) { /* as get does */
            PyObject *serial = PyLong_FromUnsignedLongLong(past);
            int rc = serial == NULL || (o->bg == NULL && (o->bg = PyDict_New()) == NULL) ||
                     PyDict_SetItem(o->bg, key, serial) < 0;
            Py_XDECREF(serial);
            if (rc)
                return -1;
            continue;
        }
        PyObject *aw;
        int j = cm_flight_join(st, key, h, &aw);
        if (j < 0)
            return -1;
        if (j > 0) {
            int rc = PyList_Append(o->wait_keys, key) < 0 || PyList_Append(o->wait_aws, aw) < 0 ||
                     (j == 2 && nofill_add(o, key) < 0);
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
    Py_ssize_t nlead = PyDict_GET_SIZE(o->lead) + (o->bg != NULL ? PyDict_GET_SIZE(o->bg) : 0);
    CmMetricsObject *m = o->cfg->metrics;
    m->hit_count += (uint64_t)(PyList_GET_SIZE(o->keys) - nlead);
    m->miss_count += (uint64_t)nlead;
    if (nlead == 0)
        return 0;
    if (o->bg != NULL && o->nofill == NULL && (o->nofill = PySet_New(NULL)) == NULL)
        return -1;

    CmGetAllObject *b = cm_ga_alloc(st, R_BATCH, B_START);
    if (b == NULL)
        return -1;
    b->cfg = (CmNodeConfigObject *)Py_NewRef((PyObject *)o->cfg);
    b->cls = Py_NewRef(o->cls);
    b->pending = Py_NewRef(o->pending);
    b->lead = Py_NewRef(o->lead);
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
    if (o->bg != NULL) {
        /* read by the batch too, past their refreshes */
        PyObject *serial;
        i = 0;
        while (PyDict_Next(o->bg, &i, &key, &serial)) {
            node = PyDict_GetItemWithError(o->pending, key); // borrowed
            if (node == NULL || PyDict_SetItem(b->todo, key, node) < 0) {
                if (!PyErr_Occurred())
                    PyErr_SetObject(PyExc_KeyError, key);
                Py_DECREF(b);
                return -1;
            }
        }
        b->bg = Py_NewRef(o->bg);
        b->wait_keys = Py_NewRef(o->wait_keys);
        b->wait_aws = Py_NewRef(o->wait_aws);
        b->nofill = Py_NewRef(o->nofill);
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

/* Fill the local caches that missed with the values of results: those of
 * only (NULL: all) but not of lead nor of bg (the batch filled those, or
 * knew not to) nor of nofill (each NULL: none); a key in ages (NULL: none)
 * with that age. */
static int caller_fill(CmState *st, CmNodeConfigObject *cfg, PyObject *local_missed,
                       PyObject *results, PyObject *only, PyObject *lead, PyObject *bg,
                       PyObject *nofill, PyObject *nodes, PyObject *ages)
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
            if (in > 0 && only != NULL)
                in = PyDict_Contains(only, key);
            if (in > 0 && lead != NULL) {
                in = PyDict_Contains(lead, key);
                in = in < 0 ? -1 : !in;
            }
            if (in > 0 && bg != NULL) {
                in = PyDict_Contains(bg, key);
                in = in < 0 ? -1 : !in;
            }
            if (in > 0 && nofill != NULL) {
                in = PySet_Contains(nofill, key);
                in = in < 0 ? -1 : !in;
            }
            if (in < 0 || (in > 0 && PyList_Append(fill, key) < 0)) {
                Py_DECREF(fill);
                return -1;
            }
        }
        cm_ga_fill_local(st, cfg, r, fill, results, nodes, ages);
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

/* The caller's state machine (see cm_ga_batch_advance for the contract). */
int cm_ga_caller_advance(CmGetAllObject *o, PyObject *res, PyObject **out)
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
            if (cm_ga_start_sub(o, PyObject_CallOneArg(o->st->shield, o->task)) < 0)
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
        if (rc == 0 && cm_flight_joined_unsure(o->st, PyList_GET_ITEM(o->wait_aws, o->pos)))
            rc = nofill_add(o, PyList_GET_ITEM(o->wait_keys, o->pos));
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
        if (cm_ga_start_sub(o, Py_NewRef(PyList_GET_ITEM(o->wait_aws, o->pos))) < 0)
            goto error;
        return 1;
    }
    o->step = S_DONE;
    /* what missed every local cache (the local hits were copied at once) */
    if (caller_fill(o->st, o->cfg, o->local_missed, o->results, o->pending, o->lead, o->bg,
                    o->nofill, o->all, NULL) < 0)
        return -1;
    *out = caller_result(o->keys, o->results);
    return *out ? 0 : -1;
error:
    o->step = S_DONE;
    return -1;
}

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
    /* [nu], zeroed, or NULL: the age of each hit on a local cache read
     * after another one missed (for a node with freshness options), which
     * its copies into the caches before keep (written 0: none) */
    CmStoreAge *uage;
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
    if (s->uage != NULL) {
        PyMem_Free(s->uage);
        s->uage = NULL;
    }
}

/* Node i has key (its hash computed). */
static void keyset_add(CmKeySet *s, Py_ssize_t i, PyObject *key, PyObject *node)
{
    Py_hash_t h = ((PyASCIIObject *)key)->hash; /* computed by the key's builder */
    if (h == -1)
        h = PyObject_Hash(key); /* a str: cannot fail */
    size_t j = (size_t)h & s->mask;
    for (Py_ssize_t u; (u = s->table[j]) != -1; j = (j + 1) & s->mask) {
        if (s->uhash[u] == h && cm_key_eq(s->ukey[u], key)) {
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
 * keys it missed are appended to missed, the ages of its hits kept in
 * s->uage when that is given. Returns how many it had. */
static Py_ssize_t read_local(CmState *st, CmNodeConfigObject *cfg, CmCacheRef *r, CmKeySet *s,
                             PyObject *missed)
{
    uint64_t hits = 0, errors = 0, misses = 0;
    CmStoreAge *ages = s->uage, tmp;
    for (Py_ssize_t u = 0; u < s->nu; u++) {
        if (s->uval[u] != NULL)
            continue;
        PyObject *v;
        if (r->kind == CM_CACHE_LOCAL && cfg->fresh) {
            CmRequest req = {.node = s->unode[u], .cfg = cfg};
            v = cm_refresh_lookup(st, &req, (CmStoreObject *)r->storage, s->ukey[u], s->uhash[u],
                                  ages != NULL ? &ages[u] : &tmp);
        } else if (r->kind == CM_CACHE_LOCAL) {
            v = cm_store_lookup((CmStoreObject *)r->storage, s->ukey[u], s->uhash[u]);
        } else {
            PyObject *args[3] = {r->storage, s->unode[u], cfg->serializer};
            v = PyObject_VectorcallMethod(st->s_get_sync, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                          NULL);
            if (v == NULL) {
                cm_ga_log_failed(st, "cacheme: get from storage %r failed", r->name);
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

/* *ages: key -> age, as CmGetAllObject.ages, of the hits whose age
 * s->uage kept (left NULL if none). 0, or -1 with an exception. */
static int keyset_ages(CmKeySet *s, PyObject **ages)
{
    for (Py_ssize_t u = 0; u < s->nu; u++) {
        if (s->uage[u].written != 0 && cm_ga_age_put(ages, s->ukey[u], &s->uage[u]) < 0)
            return -1;
    }
    return 0;
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
    PyObject *ages = NULL;
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
        /* what this cache has fills those before it that missed, with its
         * age there, as get's fills do (cm_fill_locals) */
        if (cfg->fresh && r->kind == CM_CACHE_LOCAL && local_missed != NULL && s.uage == NULL &&
            (s.uage = PyMem_Calloc((size_t)s.nu, sizeof(CmStoreAge))) == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        PyObject *missed = PyList_New(0);
        if (missed == NULL)
            goto done;
        Py_ssize_t hits = read_local(st, cfg, r, &s, missed);
        int rc = hits < 0 ? -1 : 0;
        if (rc == 0 && PyList_GET_SIZE(missed) > 0) {
            if (local_missed == NULL && (local_missed = PyList_New(0)) == NULL)
                rc = -1;
            else
                rc = cm_ga_list_append_pair(local_missed, c, missed);
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
    /* a hit on a later local cache fills the earlier ones that missed now,
     * as get's does: filled once this get_all's flights are over, the
     * copy would undo what came meanwhile (an invalidation, a refresh) */
    if (s.uage != NULL && keyset_ages(&s, &ages) < 0)
        goto done;
    if (caller_fill(st, cfg, local_missed, results, NULL, NULL, NULL, NULL, all, ages) < 0)
        goto done;
    if (unknown == 0) {
        /* every node hit a local cache */
        cfg->metrics->hit_count += (uint64_t)n;
        PyObject *list = keyset_result(&s);
        if (list != NULL) {
            result = cm_ready_new(st, list);
            Py_DECREF(list);
        }
        goto done;
    }
    CmGetAllObject *o = cm_ga_alloc(st, R_CALLER, C_START);
    if (o == NULL)
        goto done;
    o->cfg = (CmNodeConfigObject *)Py_NewRef((PyObject *)cfg);
    o->cls = Py_NewRef((PyObject *)cls);
    o->keys = Py_NewRef(keys);
    o->pending = Py_NewRef(pending);
    o->all = Py_NewRef(all);
    o->results = Py_NewRef(results);
    o->local_missed = Py_NewRef(local_missed);
    result = (PyObject *)o;
done:
    keyset_free(&s);
    Py_XDECREF(keys);
    Py_XDECREF(pending);
    Py_XDECREF(results);
    Py_XDECREF(local_missed);
    Py_XDECREF(all);
    Py_XDECREF(ages);
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
    if (cm_ga_type_init(mod, st) < 0)
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
