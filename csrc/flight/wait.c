/* The future of a flight's remote request: see flight/wait.h. */
#include "flight/wait.h"

#include "base/exc.h"

static void tell_call(CmFlightWaitObject *w, PyObject *res, PyObject *err)
{
    PyObject *call = w->call;
    w->call = NULL;
    if (call != NULL)
        cm_remote_done(w->st, call, res, err); /* steals call */
}

/* set_result(v) / set_exception(e): the call gets the outcome (once). */
static PyObject *wait_tell(CmFlightWaitObject *w, PyObject *res, PyObject *err)
{
    if (w->told)
        Py_RETURN_NONE;
    w->told = 1;
    if (w->held) {
        w->res = Py_XNewRef(res);
        w->err = Py_XNewRef(err);
    } else
        tell_call(w, res, err);
    Py_RETURN_NONE;
}

void cm_flight_wait_age(PyObject *fut, int64_t updated, int64_t unit_ns, int64_t load_ns)
{
    CmFlightWaitObject *w = (CmFlightWaitObject *)fut; // borrowed
    if (w != NULL && w->call != NULL && updated > 0 && updated < INT64_MAX / unit_ns)
        cm_remote_call_age(w->call, updated * unit_ns, load_ns);
}

void cm_flight_wait_tell(CmFlightWaitObject *w, PyObject *res, PyObject *err)
{
    Py_DECREF(wait_tell(w, res, err));
}

static PyObject *wait_set_result(PyObject *self, PyObject *v)
{
    return wait_tell((CmFlightWaitObject *)self, v, NULL);
}

static PyObject *wait_set_exception(PyObject *self, PyObject *e)
{
    if (!PyExceptionClass_Check(e))
        return wait_tell((CmFlightWaitObject *)self, NULL, e);
    /* a class, as Future.set_exception takes one: the call raises an instance */
    PyObject *exc = PyObject_CallNoArgs(e);
    if (exc == NULL && (exc = cm_exc_take()) == NULL)
        exc = Py_NewRef(e); /* the call must be told something */
    PyObject *r = wait_tell((CmFlightWaitObject *)self, NULL, exc);
    Py_DECREF(exc);
    return r;
}

/* done(): told, or nobody left to tell, so the request is not worth
 * sending (as for a cancelled Future) */
static PyObject *wait_done(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmFlightWaitObject *w = (CmFlightWaitObject *)self;
    return PyBool_FromLong(w->told || (w->call == NULL && !w->held));
}

static void wait_dealloc(PyObject *self)
{
    CmFlightWaitObject *w = (CmFlightWaitObject *)self;
    PyTypeObject *tp = Py_TYPE(self);
    CmState *st = w->st;
    Py_CLEAR(w->call);
    Py_CLEAR(w->res);
    Py_CLEAR(w->err);
    Py_CLEAR(w->inst);
    tp->tp_free(self);
    Py_DECREF(tp);
    cm_state_release(st);
}

static PyMethodDef wait_methods[] = {
    {"set_result", wait_set_result, METH_O, NULL},
    {"set_exception", wait_set_exception, METH_O, NULL},
    {"done", wait_done, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

PyType_Slot cm_flight_wait_slots[] = {
    {Py_tp_methods, wait_methods},
    {Py_tp_dealloc, wait_dealloc},
    {0, NULL},
};

int cm_flight_wait_register(PyObject *mod, CmState *st, PyType_Spec *spec, const char *attr,
                            const CmRemoteOps *ops, PyObject *const *types, int n)
{
    PyObject *tp = PyType_FromModuleAndSpec(mod, spec, NULL);
    if (tp == NULL)
        return -1;
    int rc = PyModule_AddObjectRef(mod, attr, tp);
    for (int i = 0; rc == 0 && i < n; i++)
        rc = cm_remote_register(st, (PyTypeObject *)types[i], ops, tp);
    Py_DECREF(tp);
    return rc < 0 ? -1 : 0;
}

CmFlightWaitObject *cm_flight_wait_new(CmState *st, const CmRemoteOps *ops, PyObject *call,
                                       int held)
{
    PyTypeObject *tp = (PyTypeObject *)cm_remote_data(st, ops); // borrowed
    if (tp == NULL) {
        PyErr_SetString(PyExc_SystemError, "cacheme: the storage type is not registered");
        return NULL;
    }
    CmFlightWaitObject *w = PyObject_New(CmFlightWaitObject, tp);
    if (w == NULL)
        return NULL;
    w->st = cm_state_hold(st);
    w->call = Py_NewRef(call);
    w->held = held;
    w->told = 0;
    w->res = w->err = w->inst = NULL;
    w->req = NULL;
    return w;
}

PyObject *cm_flight_wait_handoff(CmRemoteOp *op, PyObject *call)
{
    CmFlightWaitObject *w = (CmFlightWaitObject *)op;
    PyObject *old = w->call;
    w->call = Py_XNewRef(call);
    return old;
}

void cm_flight_wait_unref(CmRemoteOp *op)
{
    CmFlightWaitObject *w = (CmFlightWaitObject *)op;
    w->held = 0;
    if (w->told && (w->res != NULL || w->err != NULL)) {
        PyObject *res = w->res, *err = w->err;
        w->res = w->err = NULL;
        tell_call(w, res, err);
        Py_XDECREF(res);
        Py_XDECREF(err);
    }
    Py_DECREF(w);
}
