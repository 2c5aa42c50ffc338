/* PgClient and MySQLClient as remote storages of the singleflight
 * (flight/remote.h). A flight's read or fill is a request whose future is a
 * small object of ours (CmSqlWait): when the request is answered the storage
 * tells it as it would tell an asyncio Future, and it hands the outcome to
 * the flight's call, which its Task awaits. No Future, no FlightProxy and no
 * done-callback per request. SQLite runs its requests inline (a ready value
 * already costs no suspension): it keeps the Python method path. */
#include "flight/remote.h"
#include "base/compat.h"
#include "base/exc.h"
#include "sql/sqlstore.h"

/* The op: the request's future, and until released what it is queued on. */
typedef struct {
    PyObject_HEAD
    CmState *st;
    PyObject *call;           /* the flight's call told the outcome, or NULL */
    CmSqlStorageObject *inst; /* the instance it is queued on, until released */
    CmSqlReq *req;            /* borrowed: the held request, until released */
} CmSqlWaitObject;

static const CmRemoteOps sql_remote_ops;

/* set_result(v) / set_exception(e): the call gets the outcome (once). */
static PyObject *wait_tell(CmSqlWaitObject *w, PyObject *res, PyObject *err)
{
    PyObject *call = w->call;
    w->call = NULL;
    if (call != NULL)
        cm_remote_done(w->st, call, res, err); /* steals call */
    Py_RETURN_NONE;
}

static PyObject *wait_set_result(PyObject *self, PyObject *v)
{
    return wait_tell((CmSqlWaitObject *)self, v, NULL);
}

static PyObject *wait_set_exception(PyObject *self, PyObject *e)
{
    if (!PyExceptionClass_Check(e))
        return wait_tell((CmSqlWaitObject *)self, NULL, e);
    /* a class, as Future.set_exception takes one: the call raises an instance */
    PyObject *exc = PyObject_CallNoArgs(e);
    if (exc == NULL && (exc = cm_exc_take()) == NULL)
        exc = Py_NewRef(e); /* the call must be told something */
    PyObject *r = wait_tell((CmSqlWaitObject *)self, NULL, exc);
    Py_DECREF(exc);
    return r;
}

/* done(): with nobody to tell, the request is not worth sending (as for a
 * cancelled Future) */
static PyObject *wait_done(PyObject *self, PyObject *Py_UNUSED(x))
{
    return PyBool_FromLong(((CmSqlWaitObject *)self)->call == NULL);
}

static void wait_dealloc(PyObject *self)
{
    CmSqlWaitObject *w = (CmSqlWaitObject *)self;
    PyTypeObject *tp = Py_TYPE(self);
    Py_CLEAR(w->call);
    Py_CLEAR(w->inst);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef wait_methods[] = {
    {"set_result", wait_set_result, METH_O, NULL},
    {"set_exception", wait_set_exception, METH_O, NULL},
    {"done", wait_done, METH_NOARGS, NULL},
    {NULL, NULL},
};

static PyType_Slot wait_slots[] = {
    {Py_tp_methods, wait_methods},
    {Py_tp_dealloc, wait_dealloc},
    {0, NULL},
};

static PyType_Spec wait_spec = {
    .name = "cacheme._core.SqlFlightWait",
    .basicsize = sizeof(CmSqlWaitObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = wait_slots,
};

/* 1 if storage is a PgClient or MySQLClient whose method `name` is the
 * type's own (not overridden by a subclass or the instance). */
static int sql_direct(CmState *st, PyObject *storage, PyObject *name)
{
    PyTypeObject *base = NULL;
    if (PyObject_TypeCheck(storage, (PyTypeObject *)st->sql.PgClientType))
        base = (PyTypeObject *)st->sql.PgClientType;
    else if (PyObject_TypeCheck(storage, (PyTypeObject *)st->sql.MySQLClientType))
        base = (PyTypeObject *)st->sql.MySQLClientType;
    else
        return 0;
    return cm_remote_method_is_own(storage, base, name);
}

static CmSqlWaitObject *wait_new(CmState *st, PyObject *call)
{
    PyTypeObject *tp = (PyTypeObject *)cm_remote_data(st, &sql_remote_ops); // borrowed
    if (tp == NULL) {
        PyErr_SetString(PyExc_SystemError, "cacheme: SQL storages are not registered");
        return NULL;
    }
    CmSqlWaitObject *w = PyObject_New(CmSqlWaitObject, tp);
    if (w == NULL)
        return NULL;
    w->st = st;
    w->call = Py_NewRef(call);
    w->inst = NULL;
    w->req = NULL;
    return w;
}

static CmRemoteOp *sql_get(PyObject *storage, PyObject *node, PyObject *ser, PyObject *loop,
                           PyObject *call)
{
    (void)loop; /* the storage follows the running loop */
    CmSqlWaitObject *w = wait_new(((CmSqlStorageObject *)storage)->st, call);
    if (w == NULL)
        return NULL;
    if ((w->req = cm_sql_get_for(storage, node, ser, (PyObject *)w, &w->inst)) == NULL) {
        Py_DECREF(w);
        return NULL;
    }
    return (CmRemoteOp *)w;
}

static CmRemoteOp *sql_set(PyObject *storage, PyObject *node, PyObject *value, PyObject *ttl,
                           PyObject *ser, PyObject *loop, PyObject *call)
{
    (void)loop;
    CmSqlWaitObject *w = wait_new(((CmSqlStorageObject *)storage)->st, call);
    if (w == NULL)
        return NULL;
    if ((w->req = cm_sql_set_for(storage, node, value, ttl, ser, (PyObject *)w, &w->inst)) ==
        NULL) {
        Py_DECREF(w);
        return NULL;
    }
    return (CmRemoteOp *)w;
}

static PyObject *sql_handoff(CmRemoteOp *op, PyObject *call)
{
    CmSqlWaitObject *w = (CmSqlWaitObject *)op;
    PyObject *old = w->call;
    w->call = Py_XNewRef(call);
    return old;
}

/* The caller's reference goes, and with it the hold on the request: one
 * answered meanwhile is told now. */
static void sql_unref(CmRemoteOp *op)
{
    CmSqlWaitObject *w = (CmSqlWaitObject *)op;
    CmSqlReq *r = w->req;
    CmSqlStorageObject *inst = w->inst;
    w->req = NULL;
    w->inst = NULL;
    if (r != NULL)
        cm_sql_req_release(inst, r);
    Py_XDECREF(inst);
    Py_DECREF(w);
}

static const CmRemoteOps sql_remote_ops = {
    .direct = sql_direct,
    .get = sql_get,
    .set = sql_set,
    .handoff = sql_handoff,
    .unref = sql_unref,
    .attach_waiter = NULL,
};

int cm_sql_remote_init(PyObject *mod, CmState *st)
{
    PyObject *tp = PyType_FromModuleAndSpec(mod, &wait_spec, NULL);
    if (tp == NULL)
        return -1;
    /* on the module for tests (how many requests of flights are out) */
    int rc = PyModule_AddObjectRef(mod, "_SqlFlightWait", tp) < 0 ||
                     cm_remote_register(st, (PyTypeObject *)st->sql.PgClientType, &sql_remote_ops,
                                        tp) < 0 ||
                     cm_remote_register(st, (PyTypeObject *)st->sql.MySQLClientType,
                                        &sql_remote_ops, tp) < 0
                 ? -1
                 : 0;
    Py_DECREF(tp);
    return rc;
}
