/* A connection's host lookup, the same for every SQL driver that connects
 * by host name (PostgreSQL, MySQL): the names are looked up off the loop
 * thread (loop/resolve.h) while the connect's deadline runs, the task is
 * held by the connection (shown to the collector by the pool's traverse,
 * cancelled when the connection closes), and once it is done the driver's
 * `resolved` connects to the addresses. A lookup that fails fails the
 * connection as "cannot resolve the host"; a connect to what it found that
 * fails, with the driver's own message. */
#include "sql/sqlstore.h"

#include "loop/resolve.h"

/* Called by the task (on the loop) when the lookup is done. */
static PyObject *lookup_done(PyObject *self, PyObject *task)
{
    CmSqlConnObject *c = (CmSqlConnObject *)self;
    if (c->net.state != CM_SQL_CONNECTING || c->lookup != task || c->storage == NULL)
        Py_RETURN_NONE; /* closed meanwhile (timed out): the task was cancelled */
    Py_INCREF(c);
    Py_CLEAR(c->lookup); /* task stays alive: the caller holds it */
    PyObject *addrs = cm_resolve_result(task);
    int ok = addrs != NULL && PyList_Check(addrs);
    for (Py_ssize_t i = 0; ok && i < PyList_GET_SIZE(addrs); i++) {
        PyObject *ips = PyList_GET_ITEM(addrs, i); // borrowed
        ok = PyList_Check(ips) && PyList_GET_SIZE(ips) > 0;
    }
    if (!ok) {
        if (addrs != NULL)
            PyErr_SetString(PyExc_TypeError, "resolve: a list of lists of addresses expected");
        cm_sql_conn_fail_lookup(c, 0);
    } else if (c->storage->drv->resolved(c, addrs) < 0) {
        cm_sql_conn_fail_lookup(c, 1);
    }
    Py_XDECREF(addrs);
    Py_DECREF(c);
    Py_RETURN_NONE;
}

static PyMethodDef lookup_done_def = {"_on_resolved", lookup_done, METH_O, NULL};

int cm_sql_conn_lookup(CmSqlConnObject *c, PyObject *hosts)
{
    PyObject *cb = PyCFunction_New(&lookup_done_def, (PyObject *)c);
    if (cb == NULL)
        return -1;
    PyObject *task = cm_resolve_start(c->storage->pool.loop, hosts, cb);
    Py_DECREF(cb);
    if (task == NULL)
        return -1;
    Py_XSETREF(c->lookup, task);
    return 0;
}

void cm_sql_conn_lookup_cancel(CmSqlConnObject *c)
{
    PyObject *task = c->lookup;
    if (task == NULL)
        return;
    c->lookup = NULL;
    PyObject *r = PyObject_CallMethod(task, "cancel", NULL);
    if (r == NULL)
        PyErr_Clear();
    Py_XDECREF(r);
    Py_DECREF(task);
}
