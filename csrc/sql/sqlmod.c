/* The SQL storages' share of the module: their types (made in
 * sqlstore.c), their exception types, and their part of the module state's
 * traverse and clear. */
#include "sql/sqlstore.h"

#include "base/exc.h"

int cm_sql_init(PyObject *mod, CmState *st)
{
    int rc = -1;
    PyObject *bases = NULL;
    if (cm_sql_pool_init(mod, st) < 0 || cm_sql_add_types(mod, st) < 0)
        goto done;
    if ((st->sql.SQLError = cm_exc_add_type(mod, "SQLError", NULL, "An SQL storage failed.")) ==
        NULL)
        goto done;
    if ((bases = PyTuple_Pack(2, st->sql.SQLError, PyExc_ConnectionError)) == NULL ||
        (st->sql.SQLConnectionError = cm_exc_add_type(mod, "SQLConnectionError", bases,
                                                      "The SQL server cannot be reached.")) == NULL)
        goto done;
    Py_SETREF(bases, PyTuple_Pack(2, st->sql.SQLError, PyExc_TimeoutError));
    if (bases == NULL ||
        (st->sql.SQLTimeoutError = cm_exc_add_type(mod, "SQLTimeoutError", bases,
                                                   "An SQL request or connect timed out.")) == NULL)
        goto done;
    if ((st->sql.SQLTableError = cm_exc_add_type(mod, "SQLTableError", st->sql.SQLError,
                                                 "The storage table does not exist.")) == NULL)
        goto done;
    /* the base of SQLKeyError and the Redis storage's error for the same:
     * a flight raises it to its caller instead of counting a miss */
    if ((st->StorageKeyError = cm_exc_add_type(
             mod, "StorageKeyError", PyExc_ValueError,
             "A key a remote storage cannot hold as it is: raised to the caller of get, "
             "get_all and invalidate, never a silent miss.")) == NULL)
        goto done;
    Py_SETREF(bases, PyTuple_Pack(2, st->sql.SQLError, st->StorageKeyError));
    if (bases == NULL || (st->sql.SQLKeyError = cm_exc_add_type(
                              mod, "SQLKeyError", bases,
                              "A key the table cannot hold as it is (NUL, a lone "
                              "surrogate, longer than the key column): raised to the "
                              "caller, never a silent miss.")) == NULL)
        goto done;
    rc = 0;
done:
    Py_XDECREF(bases);
    return rc;
}

int cm_sql_state_traverse(CmSqlState *ss, visitproc visit, void *arg)
{
    Py_VISIT(ss->SqlConnType);
#define CM_SQL_VISIT(n) Py_VISIT(ss->n);
    CM_SQL_OBJECTS(CM_SQL_VISIT)
#undef CM_SQL_VISIT
    return 0;
}

void cm_sql_state_clear(CmSqlState *ss)
{
    Py_CLEAR(ss->SqlConnType);
#define CM_SQL_CLEAR(n) Py_CLEAR(ss->n);
    CM_SQL_OBJECTS(CM_SQL_CLEAR)
#undef CM_SQL_CLEAR
}

int cm_sql_traverse(CmState *st, visitproc visit, void *arg)
{
    Py_VISIT(st->StorageKeyError);
    return cm_sql_state_traverse(&st->sql, visit, arg);
}

void cm_sql_clear(CmState *st)
{
    Py_CLEAR(st->StorageKeyError);
    cm_sql_state_clear(&st->sql);
}
