/* MongoClient as a remote storage of the singleflight (flight/remote.h),
 * as sql/remote.c does it: a flight's read or fill is a request whose
 * future is a small object of ours (CmMongoWait), told the outcome as an
 * asyncio Future would be, which hands it to the flight's call. No Future,
 * no FlightProxy and no done-callback per request.
 *
 * A request can fail while it is being queued (a value too large for a
 * message): the wait is held until the flight has the op (unref), and an
 * outcome that came meanwhile is told then, never inside the flight's own
 * get/set call. */
#ifdef CM_HAVE_BSON
#include "flight/remote.h"
#include "base/exc.h"
#include "mongo/mongo.h"

typedef struct {
    PyObject_HEAD
    CmState *st;
    PyObject *call; /* the flight's call told the outcome, or NULL */
    int held;       /* until the flight has the op: outcomes are kept */
    int told;       /* an outcome came (kept in res/err while held) */
    PyObject *res, *err;
} CmMongoWaitObject;

static const CmRemoteOps mongo_remote_ops;

static void wait_tell_call(CmMongoWaitObject *w, PyObject *res, PyObject *err)
{
    PyObject *call = w->call;
    w->call = NULL;
    if (call != NULL)
        cm_remote_done(w->st, call, res, err); /* steals call */
}

/* set_result(v) / set_exception(e): the call gets the outcome (once). */
static PyObject *wait_tell(CmMongoWaitObject *w, PyObject *res, PyObject *err)
{
    if (w->told)
        Py_RETURN_NONE;
    w->told = 1;
    if (w->held) {
        w->res = Py_XNewRef(res);
        w->err = Py_XNewRef(err);
    } else
        wait_tell_call(w, res, err);
    Py_RETURN_NONE;
}

static PyObject *wait_set_result(PyObject *self, PyObject *v)
{
    return wait_tell((CmMongoWaitObject *)self, v, NULL);
}

static PyObject *wait_set_exception(PyObject *self, PyObject *e)
{
    if (!PyExceptionClass_Check(e))
        return wait_tell((CmMongoWaitObject *)self, NULL, e);
    /* a class, as Future.set_exception takes one: the call raises an instance */
    PyObject *exc = PyObject_CallNoArgs(e);
    if (exc == NULL && (exc = cm_exc_take()) == NULL)
        exc = Py_NewRef(e); /* the call must be told something */
    PyObject *r = wait_tell((CmMongoWaitObject *)self, NULL, exc);
    Py_DECREF(exc);
    return r;
}

/* done(): told, or nobody left to tell (as for a cancelled Future) */
static PyObject *wait_done(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmMongoWaitObject *w = (CmMongoWaitObject *)self;
    return PyBool_FromLong(w->told || (w->call == NULL && !w->held));
}

static void wait_dealloc(PyObject *self)
{
    CmMongoWaitObject *w = (CmMongoWaitObject *)self;
    PyTypeObject *tp = Py_TYPE(self);
    Py_CLEAR(w->call);
    Py_CLEAR(w->res);
    Py_CLEAR(w->err);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef wait_methods[] = {
    {"set_result", wait_set_result, METH_O, NULL},
    {"set_exception", wait_set_exception, METH_O, NULL},
    {"done", wait_done, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot wait_slots[] = {
    {Py_tp_methods, wait_methods},
    {Py_tp_dealloc, wait_dealloc},
    {0, NULL},
};

static PyType_Spec wait_spec = {
    .name = "cacheme._core.MongoFlightWait",
    .basicsize = sizeof(CmMongoWaitObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = wait_slots,
};

/* 1 if storage is a MongoClient whose method `name` is the type's own. */
static int mongo_direct(CmState *st, PyObject *storage, PyObject *name)
{
    PyTypeObject *base = (PyTypeObject *)st->mongo.ClientType;
    return PyObject_TypeCheck(storage, base) && cm_remote_method_is_own(storage, base, name);
}

static CmMongoWaitObject *wait_new(CmState *st, PyObject *call)
{
    PyTypeObject *tp = (PyTypeObject *)cm_remote_data(st, &mongo_remote_ops); // borrowed
    if (tp == NULL) {
        PyErr_SetString(PyExc_SystemError, "cacheme: the MongoDB storage is not registered");
        return NULL;
    }
    CmMongoWaitObject *w = PyObject_New(CmMongoWaitObject, tp);
    if (w == NULL)
        return NULL;
    w->st = st;
    w->call = Py_NewRef(call);
    w->held = 1;
    w->told = 0;
    w->res = w->err = NULL;
    return w;
}

static CmRemoteOp *mongo_get(PyObject *storage, PyObject *node, PyObject *ser, PyObject *loop,
                             PyObject *call)
{
    (void)loop; /* the storage follows the running loop */
    CmMongoWaitObject *w = wait_new(((CmMongoClientObject *)storage)->st, call);
    if (w == NULL)
        return NULL;
    if (cm_mongo_get_for(storage, node, ser, (PyObject *)w) < 0) {
        Py_DECREF(w);
        return NULL;
    }
    return (CmRemoteOp *)w;
}

static CmRemoteOp *mongo_set(PyObject *storage, PyObject *node, PyObject *value, PyObject *ttl,
                             PyObject *ser, PyObject *loop, PyObject *call)
{
    (void)loop;
    CmMongoWaitObject *w = wait_new(((CmMongoClientObject *)storage)->st, call);
    if (w == NULL)
        return NULL;
    if (cm_mongo_set_for(storage, node, value, ttl, ser, (PyObject *)w) < 0) {
        Py_DECREF(w);
        return NULL;
    }
    return (CmRemoteOp *)w;
}

static PyObject *mongo_handoff(CmRemoteOp *op, PyObject *call)
{
    CmMongoWaitObject *w = (CmMongoWaitObject *)op;
    PyObject *old = w->call;
    w->call = Py_XNewRef(call);
    return old;
}

/* The flight's reference goes, and with it the hold: an outcome that came
 * meanwhile is told now. */
static void mongo_unref(CmRemoteOp *op)
{
    CmMongoWaitObject *w = (CmMongoWaitObject *)op;
    w->held = 0;
    if (w->told && (w->res != NULL || w->err != NULL)) {
        PyObject *res = w->res, *err = w->err;
        w->res = w->err = NULL;
        wait_tell_call(w, res, err);
        Py_XDECREF(res);
        Py_XDECREF(err);
    }
    Py_DECREF(w);
}

static const CmRemoteOps mongo_remote_ops = {
    .direct = mongo_direct,
    .get = mongo_get,
    .set = mongo_set,
    .handoff = mongo_handoff,
    .unref = mongo_unref,
    .attach_waiter = NULL,
};

int cm_mongo_remote_init(PyObject *mod, CmState *st)
{
    PyObject *tp = PyType_FromModuleAndSpec(mod, &wait_spec, NULL);
    if (tp == NULL)
        return -1;
    /* on the module for tests */
    int rc = PyModule_AddObjectRef(mod, "_MongoFlightWait", tp) < 0 ||
                     cm_remote_register(st, (PyTypeObject *)st->mongo.ClientType, &mongo_remote_ops,
                                        tp) < 0
                 ? -1
                 : 0;
    Py_DECREF(tp);
    return rc;
}
#endif
