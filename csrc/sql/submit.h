/* Submitting a request (submit.c): to the instance serving the running
 * loop, bound to that loop, with busy polling for the reply. */
#ifndef CM_SQL_SUBMIT_H
#define CM_SQL_SUBMIT_H
#include "sql/request.h"

/* Queue the request (stolen) and return its awaitable: a ready one when it
 * finished within the call, else a future of the running loop. NULL with an
 * exception. */
PyObject *cm_sql_submit(CmSqlStorageObject *owner, CmSqlReq *r);

#endif
