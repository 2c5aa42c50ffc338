/* PgClient, MySQLClient and SQLiteClient as remote storages of the
 * singleflight (flight/remote.h). A flight's read or fill is a request whose
 * future is a flight wait (flight/wait.h, type SqlFlightWait), held with the
 * instance it is queued on until the flight lets the op go. SQLite runs its
 * requests inline: its wait is made held, keeping the outcome told within
 * the flight's get/set call until the flight has the op. Every read gives
 * the row's updated_at (the value's age). */
#include "flight/wait.h"
#include "sql/sqlstore.h"

static const CmRemoteOps sql_remote_ops;

/* 1 if storage is a PgClient, MySQLClient or SQLiteClient whose method
 * `name` is the type's own (not overridden by a subclass or the instance). */
static int sql_direct(CmState *st, PyObject *storage, PyObject *name)
{
    PyObject *types[] = {st->sql.PgClientType, st->sql.MySQLClientType, st->sql.SQLiteClientType};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (PyObject_TypeCheck(storage, (PyTypeObject *)types[i]))
            return cm_remote_method_is_own(storage, (PyTypeObject *)types[i], name);
    return 0;
}

/* A wait for call; held when storage runs its requests inline. */
static CmFlightWaitObject *wait_for(PyObject *storage, PyObject *call)
{
    CmSqlStorageObject *s = (CmSqlStorageObject *)storage;
    return cm_flight_wait_new(s->st, &sql_remote_ops, call, s->drv->sync);
}

static CmRemoteOp *sql_get(PyObject *storage, PyObject *node, PyObject *ser, PyObject *loop,
                           PyObject *call)
{
    /* the storage follows the running loop: the flight's */
    CmFlightWaitObject *w = wait_for(storage, call);
    if (w == NULL)
        return NULL;
    CmSqlReq *r = NULL;
    CmSqlStorageObject *inst = NULL;
    int64_t load_ns; /* stored by fills only */
    /* the age is read for a node with freshness options only */
    int aged = cm_remote_call_fresh(call, &load_ns) != 0;
    if (cm_sql_get_for(storage, node, ser, aged, loop, (PyObject *)w, &r, &inst) < 0) {
        Py_DECREF(w);
        return NULL;
    }
    w->req = r;
    w->inst = (PyObject *)inst;
    return (CmRemoteOp *)w;
}

static CmRemoteOp *sql_set(PyObject *storage, PyObject *node, PyObject *value, PyObject *ttl,
                           PyObject *ser, PyObject *loop, PyObject *call)
{
    CmFlightWaitObject *w = wait_for(storage, call);
    if (w == NULL)
        return NULL;
    CmSqlReq *r = NULL;
    CmSqlStorageObject *inst = NULL;
    if (cm_sql_set_for(storage, node, value, ttl, ser, loop, (PyObject *)w, &r, &inst) < 0) {
        Py_DECREF(w);
        return NULL;
    }
    w->req = r;
    w->inst = (PyObject *)inst;
    return (CmRemoteOp *)w;
}

void cm_sql_flight_age(CmSqlReq *r)
{
    cm_flight_wait_age(r->fut, r->updated_us, 1000, 0); /* r->fut: cm_sql_get_for's wait */
}

int cm_sql_tell_wait(CmState *st, PyObject *fut, PyObject *res, PyObject *err)
{
    if ((PyObject *)Py_TYPE(fut) != cm_remote_data(st, &sql_remote_ops))
        return 0;
    cm_flight_wait_tell((CmFlightWaitObject *)fut, res, err);
    return 1;
}

/* The caller's reference goes, and with it the hold on the request: one
 * answered meanwhile is told now. */
static void sql_unref(CmRemoteOp *op)
{
    CmFlightWaitObject *w = (CmFlightWaitObject *)op;
    CmSqlReq *r = w->req;
    PyObject *inst = w->inst;
    w->req = NULL;
    w->inst = NULL;
    if (r != NULL)
        cm_sql_req_release((CmSqlStorageObject *)inst, r);
    Py_XDECREF(inst);
    cm_flight_wait_unref(op);
}

static const CmRemoteOps sql_remote_ops = {
    .direct = sql_direct,
    .get = sql_get,
    .set = sql_set,
    .handoff = cm_flight_wait_handoff,
    .unref = sql_unref,
    .attach_waiter = NULL,
    .ages = 1,
    .get_all_aged = cm_sql_get_all_aged,
};

static PyType_Spec wait_spec = CM_FLIGHT_WAIT_SPEC("cacheme._core.SqlFlightWait");

int cm_sql_remote_init(PyObject *mod, CmState *st)
{
    PyObject *types[] = {st->sql.PgClientType, st->sql.MySQLClientType, st->sql.SQLiteClientType};
    /* _SqlFlightWait on the module for tests (how many requests of flights are out) */
    return cm_flight_wait_register(mod, st, &wait_spec, "_SqlFlightWait", &sql_remote_ops, types,
                                   3);
}
