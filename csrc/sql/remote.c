/* PgClient and MySQLClient as remote storages of the singleflight
 * (flight/remote.h). A flight's read or fill is a request whose future is a
 * flight wait (flight/wait.h, type SqlFlightWait), held with the instance
 * it is queued on until the flight lets the op go. SQLite runs its requests
 * inline (a ready value already costs no suspension): it keeps the Python
 * method path. */
#include "flight/wait.h"
#include "sql/sqlstore.h"

static const CmRemoteOps sql_remote_ops;

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

static CmRemoteOp *sql_get(PyObject *storage, PyObject *node, PyObject *ser, PyObject *loop,
                           PyObject *call)
{
    (void)loop; /* the storage follows the running loop */
    CmFlightWaitObject *w =
        cm_flight_wait_new(((CmSqlStorageObject *)storage)->st, &sql_remote_ops, call, 0);
    if (w == NULL)
        return NULL;
    CmSqlStorageObject *inst = NULL;
    if ((w->req = cm_sql_get_for(storage, node, ser, (PyObject *)w, &inst)) == NULL) {
        Py_DECREF(w);
        return NULL;
    }
    w->inst = (PyObject *)inst;
    return (CmRemoteOp *)w;
}

static CmRemoteOp *sql_set(PyObject *storage, PyObject *node, PyObject *value, PyObject *ttl,
                           PyObject *ser, PyObject *loop, PyObject *call)
{
    (void)loop;
    CmFlightWaitObject *w =
        cm_flight_wait_new(((CmSqlStorageObject *)storage)->st, &sql_remote_ops, call, 0);
    if (w == NULL)
        return NULL;
    CmSqlStorageObject *inst = NULL;
    if ((w->req = cm_sql_set_for(storage, node, value, ttl, ser, (PyObject *)w, &inst)) == NULL) {
        Py_DECREF(w);
        return NULL;
    }
    w->inst = (PyObject *)inst;
    return (CmRemoteOp *)w;
}

/* PostgreSQL's reads give each row's updated_at (pg.c); MySQL's do not
 * (its HANDLER read has the value only): without ages there, the options
 * act through the local caches in front of it. */
static int sql_ages(CmState *st, PyObject *storage)
{
    return PyObject_TypeCheck(storage, (PyTypeObject *)st->sql.PgClientType);
}

void cm_sql_flight_age(CmSqlReq *r)
{
    CmFlightWaitObject *w = (CmFlightWaitObject *)r->fut; // borrowed: cm_sql_get_for's wait
    if (w != NULL && w->call != NULL && r->updated_us > 0 && r->updated_us < INT64_MAX / 1000)
        cm_remote_call_age(w->call, r->updated_us * 1000, 0);
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
    .ages = sql_ages,
};

static PyType_Spec wait_spec = CM_FLIGHT_WAIT_SPEC("cacheme._core.SqlFlightWait");

int cm_sql_remote_init(PyObject *mod, CmState *st)
{
    PyObject *types[] = {st->sql.PgClientType, st->sql.MySQLClientType};
    /* _SqlFlightWait on the module for tests (how many requests of flights are out) */
    return cm_flight_wait_register(mod, st, &wait_spec, "_SqlFlightWait", &sql_remote_ops, types,
                                   2);
}
