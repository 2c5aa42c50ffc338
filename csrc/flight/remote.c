/* The flight's side of flight/remote.h: the registry of storage types, and
 * a call waiting on a remote op made for it with no future. The call is
 * then what its Task awaits (it yields itself, see waiter.c); the op holds
 * the call until it finishes and hands it the outcome (cm_remote_done). */
#include "core/fresh.h"
#include "flight/call.h"

#include "base/compat.h"
#include "core/ttl.h"

int cm_remote_register(CmState *st, PyTypeObject *type, const CmRemoteOps *ops, PyObject *data)
{
    CmFlightState *fs = &st->flight;
    if (fs->nremotes == CM_REMOTE_MAX) {
        PyErr_SetString(PyExc_SystemError, "cacheme: too many remote storage types");
        return -1;
    }
    fs->remotes[fs->nremotes].type = (PyTypeObject *)Py_NewRef(type);
    fs->remotes[fs->nremotes].ops = ops;
    fs->remotes[fs->nremotes].data = Py_XNewRef(data);
    fs->nremotes++;
    return 0;
}

PyObject *cm_remote_data(CmState *st, const CmRemoteOps *ops)
{
    for (int i = 0; i < st->flight.nremotes; i++) {
        if (st->flight.remotes[i].ops == ops)
            return st->flight.remotes[i].data; // borrowed
    }
    return NULL;
}

unsigned int cm_remote_call_fresh(PyObject *call, int64_t *load_ns)
{
    CmCallObject *g = (CmCallObject *)call;
    *load_ns = g->load_ns;
    return g->cfg != NULL ? g->cfg->fresh : 0;
}

int64_t cm_remote_call_stale_ns(PyObject *call)
{
    CmCallObject *g = (CmCallObject *)call;
    return g->cfg != NULL && (g->cfg->fresh & CM_FRESH_STALE) ? g->cfg->stale_ns : 0;
}

void cm_remote_call_age(PyObject *call, int64_t updated_ns, int64_t load_ns)
{
    CmCallObject *g = (CmCallObject *)call;
    g->remote_updated_ns = updated_ns;
    g->remote_load_ns = load_ns;
}

int cm_remote_attach_waiter(CmState *st, PyObject *fut, PyObject *waiter, PyObject *loop)
{
    CmFlightState *fs = &st->flight;
    for (int i = 0; i < fs->nremotes; i++) {
        const CmRemoteOps *ops = fs->remotes[i].ops;
        if (ops->attach_waiter != NULL && ops->attach_waiter(st, fut, waiter, loop))
            return 1;
    }
    return 0;
}

int cm_remote_traverse(CmState *st, visitproc visit, void *arg)
{
    for (int i = 0; i < st->flight.nremotes; i++) {
        Py_VISIT(st->flight.remotes[i].type);
        Py_VISIT(st->flight.remotes[i].data);
    }
    return 0;
}

void cm_remote_clear(CmState *st)
{
    for (int i = 0; i < st->flight.nremotes; i++) {
        Py_CLEAR(st->flight.remotes[i].type);
        Py_CLEAR(st->flight.remotes[i].data);
    }
    st->flight.nremotes = 0;
}

/* The remote op made for g lets it go: the op goes on, its outcome to nobody. */
void cm_call_remote_release(CmCallObject *g)
{
    if (g->remote_op == NULL)
        return;
    PyObject *me = g->remote->handoff(g->remote_op, NULL);
    g->remote_op = NULL;
    cm_call_unheld((PyObject *)g);
    Py_XDECREF(me); /* never the last: our caller has a reference */
}

/* The remote op made for g is no longer awaited. */
void cm_call_remote_detach(CmCallObject *g)
{
    cm_call_remote_release(g);
    g->remote_state = REMOTE_IDLE;
    Py_CLEAR(g->remote_res);
    Py_CLEAR(g->remote_err);
}

/* The remote op made for call o finished (called by its storage). */
void cm_remote_done(CmState *st, PyObject *o, PyObject *res, PyObject *err)
{
    CmCallObject *g = (CmCallObject *)o;
    g->remote_op = NULL;
    g->remote_state = REMOTE_DONE;
    Py_XSETREF(g->remote_res, Py_XNewRef(res));
    Py_XSETREF(g->remote_err, Py_XNewRef(err));
    if (g->fut_state == FUT_PENDING) {
        g->fut_state = FUT_SETTLED;
        if (g->wakeup != NULL) {
            cm_call_wake(st, g);
            return;
        }
    }
    cm_call_unheld(o);
    Py_DECREF(g);
}

/* Resume the remote op made for g: NEXT (yield g, the op is still out),
 * RETURN with its value, or ERROR (its failure, or exc thrown in). */
PySendResult cm_call_remote_resume(CmCallObject *g, PyObject *exc, PyObject **res)
{
    *res = NULL;
    if (exc == NULL && g->fut_state == FUT_CANCELLED) {
        /* cancelled and sent to rather than thrown into: as a Future does */
        cm_call_remote_detach(g);
        g->fut_state = FUT_IDLE;
        cm_call_cancelled_error(g);
        return PYGEN_ERROR;
    }
    g->fut_state = FUT_IDLE;
    if (exc != NULL) {
        cm_call_remote_detach(g);
        cm_raise_exc(exc);
        return PYGEN_ERROR;
    }
    if (g->remote_state == REMOTE_PENDING) {
        g->fut_state = FUT_PENDING;
        g->blocking = 1;
        *res = Py_NewRef(g);
        return PYGEN_NEXT;
    }
    g->remote_state = REMOTE_IDLE;
    PyObject *e = g->remote_err;
    g->remote_err = NULL;
    *res = g->remote_res;
    g->remote_res = NULL;
    if (e != NULL) {
        Py_CLEAR(*res);
        cm_raise_exc(e);
        Py_DECREF(e);
        return PYGEN_ERROR;
    }
    return PYGEN_RETURN;
}

int cm_remote_method_is_own(PyObject *storage, PyTypeObject *base, PyObject *name)
{
    PyObject *own = PyDict_GetItemWithError(base->tp_dict, name); // borrowed
    if (own == NULL || cm_type_lookup(Py_TYPE(storage), name) != own) {
        PyErr_Clear();
        return 0;
    }
    if (!(Py_TYPE(storage)->tp_flags & Py_TPFLAGS_MANAGED_DICT) &&
        Py_TYPE(storage)->tp_dictoffset == 0)
        return 1;
    PyObject *d = PyObject_GenericGetDict(storage, NULL);
    if (d == NULL) {
        PyErr_Clear();
        return 0;
    }
    int mine = PyDict_GetItemWithError(d, name) == NULL; /* else set on the instance */
    Py_DECREF(d);
    PyErr_Clear();
    return mine;
}

/* Tell each remote storage that keeps local tiers coherent (flight/remote.h
 * cover: Redis tracking) the local stores in front of it, and cap their
 * TTL by its own: the shortest the remote one can be (its jitter) over the
 * longest the local one can be drawn (its jitter), so a local copy never
 * outlives the key in the storage, whose expiry may come without a word. */
int cm_remote_cover_locals(CmState *st, CmNodeConfigObject *c)
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
