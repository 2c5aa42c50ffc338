/* The connection pool of an SQL storage (pool.c): the request queue,
 * dispatch to idle connections, the SQL side of closing, and the tick for
 * what waits in the queue, drivers' housekeeping and the expired-row sweep.
 *
 * The transport is net/'s (net/conn.h, net/pool.h), as for every driver:
 * a connection (CmSqlConnObject) starts with a CmNetConn (its fd, the
 * watches on the storage's loop, its state, its deadline timer), and the
 * storage embeds a CmNetPool (the slots, the loop they are bound to,
 * backoff after a failed connect). Its driver opens it, sends batches
 * taken from the queue and reads their results, and reports back through
 * the cm_sql_conn_* calls below. */
#ifndef CM_SQL_POOL_H
#define CM_SQL_POOL_H
#include "sql/request.h"

#include "net/conn.h"
#include "net/pool.h"

typedef struct CmSqlConnObject CmSqlConnObject;

/* A connection's state (c->net.state): net/'s connecting and closed, and
 * two open states of SQL's own */
enum {
    CM_SQL_CONNECTING = CM_NET_CONNECTING,
    CM_SQL_CLOSED = CM_NET_CLOSED,
    CM_SQL_IDLE = CM_NET_OPEN,
    CM_SQL_BUSY,
};

struct CmSqlConnObject {
    CmNetConn net;               /* first: the transport (net/conn.h) */
    CmSqlStorageObject *storage; /* borrowed; the storage owns the conn; NULL once closed */
    int phase;                   /* driver's sub-state */
    int status;                  /* driver's scratch (MariaDB's wait status) */
    int err;                     /* driver's scratch: the batch has failed */
    CmSqlReq *batch;             /* requests in flight on this connection */
    void *h;                     /* driver handle (PGconn *, MYSQL *) */
    void *aux;                   /* driver scratch */
    PyObject *lookup;            /* the host lookup's task (lookup.c), or NULL */
};

/* For drivers. */
/* Watch the connection's fd for reading/writing (only what changes is told
 * to the loop); -1 with an exception. */
static inline int cm_sql_conn_watch(CmSqlConnObject *c, int read, int write)
{
    return cm_net_conn_watch(&c->net, read, write);
}
/* Stop watching (also when the fd is about to change or be closed). */
static inline void cm_sql_conn_unwatch(CmSqlConnObject *c) { cm_net_conn_unwatch(&c->net); }
/* The library's socket is now fd (-1: none). */
static inline void cm_sql_conn_set_fd(CmSqlConnObject *c, int fd)
{
    cm_net_conn_set_fd(&c->net, fd);
}
/* The connect or the batch in flight must be done by at (monotonic ns; 0:
 * nothing due); past it, the connection fails with SQLTimeoutError. */
void cm_sql_conn_deadline(CmSqlConnObject *c, int64_t at);
/* Close the connection and fail its batch with exc_type(msg); connecting:
 * counts as a failed connect (backoff). Never raises. */
void cm_sql_conn_fail(CmSqlConnObject *c, PyObject *exc_type, const char *msg);
/* cm_sql_conn_fail with the pending exception's text (cleared): as it is
 * when it came from the connect (connected), else after "<driver>: cannot
 * resolve the host: ". For a connect that follows a host lookup. */
void cm_sql_conn_fail_lookup(CmSqlConnObject *c, int connected);
/* lookup.c: look up hosts (a list of names) off the loop thread, the task
 * held in c->lookup; when it is done, the driver's `resolved` gets the
 * addresses (a list per host of lists of numeric address strs, none
 * empty), or the connection fails (cm_sql_conn_fail_lookup). The driver
 * sets its phase. -1 with an exception. */
int cm_sql_conn_lookup(CmSqlConnObject *c, PyObject *hosts);
/* Give up the lookup in flight, if any (the connection closes). */
void cm_sql_conn_lookup_cancel(CmSqlConnObject *c);
/* The batch in flight is answered: finish its requests; the conn is idle. */
void cm_sql_conn_done(CmSqlConnObject *c);
/* The connection is ready for requests (after connect and prepare). */
void cm_sql_conn_ready(CmSqlConnObject *c);
/* Take the first queued request (NULL if none), or up to max GETs in a row
 * when the first is a GET (linked through next). */
CmSqlReq *cm_sql_take(CmSqlStorageObject *s, int max_gets);

/* For the storage (submit.c, sqlstore.c). */
/* Append r to the queue (the queue owns it until it is taken). */
void cm_sql_enqueue(CmSqlStorageObject *s, CmSqlReq *r);
/* Hand queued requests to idle connections, opening new ones (within
 * pool_size and the backoff) for the rest; schedules the tick. */
void cm_sql_dispatch(CmSqlStorageObject *s);
/* Close every connection and fail every queued request with why. */
void cm_sql_close_all(CmSqlStorageObject *s, const char *why);
/* The connection type (module state's SqlConnType). */
int cm_sql_pool_init(PyObject *mod, CmState *st);

#endif
