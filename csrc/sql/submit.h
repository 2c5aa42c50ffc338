/* Submitting a request (submit.c): to the instance serving the running
 * loop, bound to that loop, with busy polling for the reply. */
#ifndef CM_SQL_SUBMIT_H
#define CM_SQL_SUBMIT_H
#include "sql/request.h"

/* Queue the request (stolen) and return its awaitable: a ready one when it
 * finished within the call, else a future of the running loop. NULL with an
 * exception. */
PyObject *cm_sql_submit(CmSqlStorageObject *owner, CmSqlReq *r);
/* The same for a flight's call (sql/remote.c), on loop_hint (the running
 * loop, or NULL to look it up): queue the request (stolen) with `waiter` as
 * its future and give it held in *held, with the instance
 * serving the running loop in *inst (a new reference). A driver that runs
 * inline (SQLite) runs it now: the waiter is told before this returns (or
 * when the driver's wait for a lock ends), *held and *inst are NULL. 0, or
 * -1 with an exception (the request freed, the waiter not told). */
int cm_sql_submit_held(CmSqlStorageObject *owner, CmSqlReq *r, PyObject *loop_hint,
                       PyObject *waiter, CmSqlReq **held, CmSqlStorageObject **inst);

#endif
