/* get_all's leases (redis/lease.h, lease_acquire_all): a group lease
 * object whose members are one key's leases (redis/lease.c), taken one at a
 * time in lease-key order, whose future gets the list of their outcomes
 * once every key has a lease or a value. */
#include "redis/lease_obj.h"

#include "redis/internal.h"

static void group_next(CmLeaseObject *g);

/* Let the group's members go (they no longer report to it). */
static void group_clear(CmLeaseObject *g)
{
    PyObject *members = g->members;
    g->members = NULL;
    for (Py_ssize_t i = 0; members != NULL && i < PyList_GET_SIZE(members); i++) {
        CmLeaseObject *m = (CmLeaseObject *)PyList_GET_ITEM(members, i); // borrowed
        if (m != NULL)
            Py_CLEAR(m->group);
    }
    Py_XDECREF(members);
}

/* The get_all left before every member finished: those still at work
 * stop, those that hold their lease give it back. */
void cm_rlease_group_left(CmLeaseObject *g)
{
    Py_INCREF(g);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(g->members); i++) {
        CmLeaseObject *m = (CmLeaseObject *)PyList_GET_ITEM(g->members, i); // borrowed
        if (m->state == L_HELD) {
            cm_rlease_release(m);
        } else if (m->state != L_RELEASE && m->state != L_DONE) {
            cm_rlease_quiet(m);
            m->state = L_DONE;
        }
    }
    group_clear(g);
    g->state = L_DONE;
    Py_DECREF(g);
}

/* Member m finished: its (lease, value) in the group's results; a lease
 * that failed is logged and the key loads without one (value sentinel). */
void cm_rlease_group_put(CmLeaseObject *m, PyObject *lease, PyObject *value, PyObject *exc)
{
    CmState *st = m->st;
    CmLeaseObject *g = (CmLeaseObject *)m->group; // borrowed: m holds it
    if (exc != NULL) {
        cm_log_warning(st, "cacheme: redis lease of %R failed: %R", m->lkey, exc);
        value = st->sentinel;
    }
    PyObject *t = PyTuple_Pack(2, lease, value);
    if (t == NULL) {
        PyErr_WriteUnraisable((PyObject *)m);
        if (lease != Py_None)
            cm_rlease_release(m);
        t = Py_NewRef(Py_None); /* not a pair: the key loads without a lease */
    }
    PyList_SetItem(g->results, m->index, t); /* steals */
    g->remaining--;
    group_next(g);
}

/* Take the next key's lease in order, or hand out the results when every
 * key has a lease or a value. One at a time, in the order of the lease
 * keys: a process waits for a key only while the keys it holds come before
 * it, in every process the same order, so two get_alls never wait for each
 * other's leases (a deadlock until both leases expire). */
static void group_next(CmLeaseObject *g)
{
    CmState *st = g->st;
    while (g->members != NULL && g->index < PyList_GET_SIZE(g->members)) {
        CmLeaseObject *m = (CmLeaseObject *)PyList_GET_ITEM(g->members, g->index++); // borrowed
        if (cm_rlease_try(m) == 0)
            return; /* its replies go on (group_put) */
        PyObject *e = cm_exc_take();
        cm_log_warning(st, "cacheme: redis lease of %R failed: %R", m->lkey, e);
        Py_XDECREF(e);
        m->state = L_DONE;
        PyObject *t = PyTuple_Pack(2, Py_None, st->sentinel);
        if (t == NULL) {
            PyErr_WriteUnraisable((PyObject *)m);
            t = Py_NewRef(Py_None);
        }
        PyList_SetItem(g->results, m->index, t); /* steals */
        g->remaining--;
    }
    if (g->remaining > 0 || g->state == L_DONE)
        return;
    Py_INCREF(g);
    group_clear(g); /* m->group is gone from here */
    g->state = L_DONE;
    int done = cm_future_done(st, g->fut);
    if (done == 0 && cm_future_set_result(st, g->fut, g->results) < 0)
        done = -1;
    /* a closed loop cannot schedule the future's callbacks (asyncio's
     * RuntimeError, not a subclass): its get_all is gone with it */
    if (done < 0 && PyErr_Occurred() == PyExc_RuntimeError)
        PyErr_Clear();
    else if (done < 0)
        PyErr_WriteUnraisable((PyObject *)g);
    if (done != 0) { /* nobody takes them: the leases got go back */
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(g->results); i++) {
            PyObject *r = PyList_GET_ITEM(g->results, i); // borrowed
            if (PyTuple_Check(r) && PyTuple_GET_ITEM(r, 0) != Py_None &&
                ((CmLeaseObject *)PyTuple_GET_ITEM(r, 0))->state == L_HELD)
                cm_rlease_release((CmLeaseObject *)PyTuple_GET_ITEM(r, 0));
        }
    }
    Py_DECREF(g);
}

PyObject *cm_redis_lease_acquire_all(CmState *st, PyObject *storage, PyObject *nodes, PyObject *ser)
{
    CmRedisClientObject *c = (CmRedisClientObject *)storage;
    CmLeaseObject *g = NULL;
    PyObject *loop = NULL, *out = NULL, *order = NULL;
    if (c->cfg.lease_ms <= 0)
        Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(nodes);
    if ((loop = cm_loop_running(st)) == NULL)
        return NULL;
    if ((g = cm_rlease_alloc(st)) == NULL)
        goto done;
    g->state = L_IDLE;
    if ((g->members = PyList_New(0)) == NULL || (g->results = PyList_New(n)) == NULL ||
        (order = PyList_New(n)) == NULL || (g->fut = cm_loop_create_future(st, loop)) == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyList_SET_ITEM(g->results, i, Py_NewRef(Py_None));
        CmLeaseObject *m = cm_rlease_new(st, storage, PyList_GET_ITEM(nodes, i), ser, loop);
        if (m == NULL)
            goto done;
        m->group = Py_NewRef(g);
        m->index = i;
        /* (lease key, index, member): sorted by key, never compares members */
        PyObject *t = Py_BuildValue("(OnN)", m->lkey, i, (PyObject *)m);
        if (t == NULL)
            goto done;
        PyList_SET_ITEM(order, i, t);
    }
    if (PyList_Sort(order) < 0)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++)
        if (PyList_Append(g->members, PyTuple_GET_ITEM(PyList_GET_ITEM(order, i), 2)) < 0)
            goto done;
    if (cm_rlease_watch_fut(g) < 0)
        goto done;
    out = Py_NewRef(g->fut);
    g->remaining = n;
    g->index = 0;
    group_next(g);
done:
    if (out == NULL && order != NULL) /* the members not yet in g->members */
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *t = PyList_GET_ITEM(order, i); // borrowed
            if (t != NULL)
                Py_CLEAR(((CmLeaseObject *)PyTuple_GET_ITEM(t, 2))->group);
        }
    Py_XDECREF(order);
    if (out == NULL && g != NULL)
        group_clear(g);
    Py_XDECREF(g);
    Py_XDECREF(loop);
    return out;
}
