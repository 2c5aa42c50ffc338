/* The SQL storages' part of the module state (CmState.sql): their types
 * and exception types. state.h embeds it, so this header includes nothing
 * of ours. */
#ifndef CM_SQL_SQLSTATE_H
#define CM_SQL_SQLSTATE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define CM_SQL_OBJECTS(X)                                                                          \
    X(PgClientType)                                                                                \
    X(MySQLClientType)                                                                             \
    X(SQLiteClientType)                                                                            \
    X(SQLError)                                                                                    \
    X(SQLConnectionError)                                                                          \
    X(SQLTimeoutError)                                                                             \
    X(SQLTableError)                                                                               \
    X(SQLKeyError)

typedef struct {
#define CM_SQL_DECLARE(n) PyObject *n;
    CM_SQL_OBJECTS(CM_SQL_DECLARE)
#undef CM_SQL_DECLARE
    PyTypeObject *SqlConnType; /* a pool's connection (pool.c) */
} CmSqlState;

int cm_sql_state_traverse(CmSqlState *ss, visitproc visit, void *arg);
void cm_sql_state_clear(CmSqlState *ss);

#endif
