/* Flights driven from Python (cacheme.core's get_all): _flight_lead(key)
 * starts a flight and returns its FlightHandle, which the Python code
 * settles with resolve() or fail() (dropping it unsettled fails it);
 * _flight_join(key) waits on a flight as a GetCall in role WAITS;
 * _flight_invalidate(key) keeps a load in flight from filling caches. */
#include "flight/call.h"

#include "loop/loop.h"
#include "loop/ready.h"

/* A flight led by Python code: get_all registers one per key it loads. */
typedef struct {
    PyObject_HEAD
    CmState *st;
    CmFlight *fl;
} CmFlightHandleObject;

static PyObject *handle_resolve(PyObject *self, PyObject *value)
{
    CmFlightHandleObject *h = (CmFlightHandleObject *)self;
    if (h->fl->done) {
        PyErr_SetString(PyExc_RuntimeError, "flight already settled");
        return NULL;
    }
    cm_flight_settle(h->st, h->fl, value, NULL);
    Py_RETURN_NONE;
}

static PyObject *handle_fail(PyObject *self, PyObject *exc)
{
    CmFlightHandleObject *h = (CmFlightHandleObject *)self;
    if (!PyExceptionInstance_Check(exc)) {
        PyErr_SetString(PyExc_TypeError, "fail() needs an exception instance");
        return NULL;
    }
    cm_flight_settle(h->st, h->fl, NULL, exc);
    Py_RETURN_NONE;
}

static PyObject *handle_finish(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmFlightHandleObject *h = (CmFlightHandleObject *)self;
    cm_flight_remove(h->st, h->fl);
    Py_RETURN_NONE;
}

static PyObject *handle_stale(PyObject *self, PyObject *Py_UNUSED(x))
{
    return PyBool_FromLong(((CmFlightHandleObject *)self)->fl->stale);
}

static PyObject *handle_live_waiters(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmFlightHandleObject *h = (CmFlightHandleObject *)self;
    return PyLong_FromSsize_t(h->fl->done ? 0 : h->fl->nwaiters);
}

static void handle_dealloc(PyObject *self)
{
    CmFlightHandleObject *h = (CmFlightHandleObject *)self;
    PyTypeObject *tp = Py_TYPE(self);
    if (h->fl != NULL) {
        if (!h->fl->done) {
            PyObject *typ, *val, *tb;
            PyErr_Fetch(&typ, &val, &tb);
            PyObject *e = PyObject_CallFunction(PyExc_RuntimeError, "s",
                                                "cacheme: the load of this key was abandoned");
            if (e != NULL) {
                cm_flight_settle(h->st, h->fl, NULL, e);
                Py_DECREF(e);
            } else {
                PyErr_Clear();
            }
            PyErr_Restore(typ, val, tb);
        }
        cm_flight_remove(h->st, h->fl);
        cm_flight_release(h->st, h->fl);
    }
    CmState *st = h->st;
    tp->tp_free(self);
    Py_DECREF(tp);
    cm_state_release(st);
}

static PyMethodDef handle_methods[] = {
    {"resolve", handle_resolve, METH_O, "give every waiter this value"},
    {"fail", handle_fail, METH_O, "give every waiter this exception"},
    {"finish", handle_finish, METH_NOARGS, "take the flight out of the table"},
    {"stale", handle_stale, METH_NOARGS, "invalidated while in flight"},
    {"live_waiters", handle_live_waiters, METH_NOARGS, NULL},
    {NULL, NULL},
};

static PyType_Slot handle_slots[] = {
    {Py_tp_methods, handle_methods},
    {Py_tp_dealloc, handle_dealloc},
    {0, NULL},
};

static PyType_Spec handle_spec = {
    .name = "cacheme._core.FlightHandle",
    .basicsize = sizeof(CmFlightHandleObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = handle_slots,
};

static PyObject *arg_key(PyObject *key, Py_hash_t *hash)
{
    if (!PyUnicode_CheckExact(key)) {
        PyErr_Format(PyExc_TypeError, "key must be str, not %.100s", Py_TYPE(key)->tp_name);
        return NULL;
    }
    *hash = PyObject_Hash(key);
    return *hash == -1 ? NULL : key;
}

/* _flight_join(key, metrics) -> None if no flight, else an awaitable of its value */
int cm_flight_join(CmState *st, PyObject *key, Py_hash_t hash, PyObject **aw)
{
    *aw = NULL;
    if (cm_flight_joinable(st, cm_flight_find(st, key, hash)) == NULL)
        return 0;
    /* allocated before the flight is looked up for good: the allocation may
     * run the collector, and finalizers that end the flight */
    CmCallObject *g = (CmCallObject *)cm_call_alloc(st);
    if (g == NULL)
        return -1;
    g->key = Py_NewRef(key);
    g->hash = hash;
    CmFlight *fl = cm_flight_find(st, key, hash);
    if (fl == NULL || fl->done) {
        PyObject *v = fl != NULL ? Py_NewRef(fl->value) : NULL;
        int unsure = fl != NULL && (fl->unsure || fl->stale);
        g->role = CALL_DONE;
        Py_DECREF(g);
        if (v == NULL)
            return 0;
        *aw = cm_ready_new(st, v);
        Py_DECREF(v);
        return *aw ? 1 + unsure : -1;
    }
    if (cm_waiter_join(g, fl) < 0) {
        g->role = CALL_DONE;
        Py_DECREF(g);
        return -1;
    }
    *aw = (PyObject *)g;
    return 1;
}

uint64_t cm_flight_reads_past(CmState *st, CmNodeConfigObject *cfg, PyObject *key, Py_hash_t hash)
{
    CmFlight *fl = cm_flight_find(st, key, hash);
    return cm_flight_read_past(fl, cfg) ? fl->serial : 0;
}

int cm_flight_joined_unsure(CmState *st, PyObject *aw)
{
    if (Py_TYPE(aw) != st->flight.CallType)
        return 0;                            /* settled when joined: cm_flight_join said */
    CmFlight *fl = ((CmCallObject *)aw)->fl; // borrowed: the call holds a reference
    return fl != NULL && (fl->unsure || fl->stale);
}

PyObject *cm_flight_lead(CmState *st, PyObject *key, Py_hash_t hash)
{
    if (cm_flight_joinable(st, cm_flight_find(st, key, hash)) != NULL)
        Py_RETURN_NONE;
    /* its loop, for cm_flight_joinable: get_all leads in its loop */
    PyObject *loop = cm_loop_running(st);
    if (loop == NULL)
        PyErr_Clear();
    CmFlightHandleObject *h = PyObject_New(CmFlightHandleObject, st->flight.FlightHandleType);
    if (h == NULL) {
        Py_XDECREF(loop);
        return NULL;
    }
    h->st = cm_state_hold(st);
    h->fl = cm_flight_start(st, key, hash);
    if (h->fl == NULL) {
        Py_XDECREF(loop);
        Py_DECREF(h);
        return NULL;
    }
    h->fl->loop = loop; /* stolen */
    h->fl->tstate = PyThreadState_Get();
    return (PyObject *)h;
}

void cm_flight_handle_settle(PyObject *h, PyObject *value, PyObject *exc)
{
    CmFlightHandleObject *fh = (CmFlightHandleObject *)h; // borrowed
    cm_flight_settle(fh->st, fh->fl, value, exc);
}

int cm_flight_handle_stale(PyObject *h) { return ((CmFlightHandleObject *)h)->fl->stale; }
int cm_flight_handle_unsure(PyObject *h) { return ((CmFlightHandleObject *)h)->fl->unsure; }

Py_ssize_t cm_flight_handle_live_waiters(PyObject *h)
{
    CmFlight *fl = ((CmFlightHandleObject *)h)->fl;
    return fl->done ? 0 : fl->nwaiters;
}

void cm_flight_handle_finish(PyObject *h)
{
    CmFlightHandleObject *fh = (CmFlightHandleObject *)h;
    cm_flight_remove(fh->st, fh->fl);
}

static PyObject *py_flight_join(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    CmState *st = cm_state_from_module(mod);
    Py_hash_t hash;
    PyObject *aw;
    if (nargs != 1 || arg_key(args[0], &hash) == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "_flight_join(key)");
        return NULL;
    }
    int rc = cm_flight_join(st, args[0], hash, &aw);
    if (rc < 0)
        return NULL;
    return rc ? aw : Py_NewRef(Py_None);
}

static PyObject *py_flight_lead(PyObject *mod, PyObject *key)
{
    CmState *st = cm_state_from_module(mod);
    Py_hash_t hash;
    if (arg_key(key, &hash) == NULL)
        return NULL;
    return cm_flight_lead(st, key, hash);
}

/* _flight_invalidate(key): a load in flight for key will not fill caches */
static PyObject *py_flight_invalidate(PyObject *mod, PyObject *key)
{
    CmState *st = cm_state_from_module(mod);
    Py_hash_t hash;
    if (arg_key(key, &hash) == NULL)
        return NULL;
    cm_flight_invalidate(st, key, hash);
    Py_RETURN_NONE;
}

static PyMethodDef handle_functions[] = {
    {"_flight_join", (PyCFunction)(void (*)(void))py_flight_join, METH_FASTCALL, NULL},
    {"_flight_lead", py_flight_lead, METH_O, NULL},
    {"_flight_invalidate", py_flight_invalidate, METH_O, NULL},
    {NULL, NULL},
};

int cm_handle_init(PyObject *mod, CmState *st)
{
    st->flight.FlightHandleType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &handle_spec, NULL);
    if (st->flight.FlightHandleType == NULL)
        return -1;
    return PyModule_AddFunctions(mod, handle_functions);
}
