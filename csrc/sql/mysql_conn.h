/* What the files of the MySQL/MariaDB driver share (mysql.c: statements
 * and requests; mysql_connect.c: connecting; mysql_handler.c: the HANDLER
 * read path): the connection's scratch record and the steps of its state
 * machine. Internal to the driver. */
#ifndef CM_SQL_MYSQL_CONN_H
#define CM_SQL_MYSQL_CONN_H
#include "sql/sqlstore.h"

#ifdef CM_HAVE_MARIADB
#include <mariadb/mysql.h> /* not "mysql.h": that is ours */

#include <mariadb/errmsg.h>

#define MY_BUCKETS 9 /* 1 .. 256 */
#define MY_MAX_IN 256
#define MY_MAX_COALESCE 64
#define ER_NO_SUCH_TABLE_ 1146
#define ER_UNKNOWN_TABLE_ 1109     /* "Unknown table 'cm_get' in HANDLER" */
#define MY_MAX_COLS 16             /* columns of a row we read (the handler's: all) */
#define MY_HANDLER_AGE 500000000LL /* ns: a handler is closed this long after opening */

enum {
    PH_CONNECT,
    PH_IDLE,
    PH_PREPARE,
    PH_EXECUTE,
    PH_STORE,
    PH_QUERY,
    PH_QSTORE,
    PH_QNEXT,
    PH_HOPEN,
    PH_HCLOSE,
    PH_RESOLVE /* the host is being looked up (lookup.c) */
};
/* S_HGET: the single GET through the handler; S_GET: the same as a SELECT
 * (tables the handler cannot read, the connection check) */
enum { S_GET, S_HGET, S_SET, S_MSET, S_DEL, S_SWEEP, S_MGET0 };
#define S_COUNT (S_MGET0 + MY_BUCKETS)

typedef struct {
    MYSQL_STMT *stmt[S_COUNT];
    MYSQL_STMT *adhoc; /* get_all beyond MY_MAX_IN keys */
    MYSQL_STMT *cur;
    int slot;  /* statement being prepared, -1: adhoc */
    int nkeys; /* IN list size of the current statement */
    MYSQL *mret;
    MYSQL_RES *res; /* execute(): a result set being dropped */
    int iret;
    /* parameter buffers of the request in flight, kept for the next one (no
     * allocation per request); room for cap_params parameters, cap_rows rows */
    int cap_params, cap_rows;
    MYSQL_BIND *binds;
    unsigned long *lens;
    char **ptrs;
    long long *ttls;
    char *inds;
    char *sql;
    /* the handler (see the top): open since hopened (monotonic ns); hoff:
     * reads go through the SELECT on this connection; hvalue, hupdated:
     * columns of `value` and `updated_at` in its rows (known once S_HGET is
     * prepared; hupdated -1: none); hretried: the batch has reopened it once */
    int hopen, hoff, hretried, hvalue, hupdated;
    int64_t hopened;
    int64_t used;         /* monotonic ns: the batch in flight or the last one started */
    PyObject *addrs;      /* the host's addresses (list of str) once looked up */
    Py_ssize_t next_addr; /* the next one to try when a connect fails */
    char hsql[320];
} MyConn;

/* mysql.c */
/* After a _start/_cont: wait for what it asks, or go on (status 0). */
void cm_mysql_after(CmSqlConnObject *c, int status);
/* Pick (or prepare) the statement of the batch, then execute. */
void cm_mysql_run_batch(CmSqlConnObject *c);
/* The request failed on the server: connection lost, or an error of this
 * request alone. */
void cm_mysql_request_failed(CmSqlConnObject *c);
unsigned cm_mysql_errno(CmSqlConnObject *c);
void cm_mysql_free_params(MyConn *mc);

/* mysql_connect.c */
int cm_mysql_open(CmSqlConnObject *c);
void cm_mysql_close(CmSqlConnObject *c);
int cm_mysql_conn_traverse(CmSqlConnObject *c, visitproc visit, void *arg);
/* The host lookup (cm_sql_conn_lookup) is done: connect to its addresses in
 * turn. -1 with an exception. */
int cm_mysql_resolved(CmSqlConnObject *c, PyObject *addrs);
/* A connect to a looked-up address failed: start one to the next address
 * on a new handle. 1 if there was one (the connection started, or failed
 * for good), 0 if none is left. */
int cm_mysql_try_next(CmSqlConnObject *c);
/* Connected: 1 when ssl_mode asks for TLS and the connection has none
 * (Connector/C 3.3 enforces it only with verification); c is failed. */
int cm_mysql_tls_refused(CmSqlConnObject *c);

/* mysql_handler.c */
/* Where `value` and `updated_at` are in the rows of the prepared S_HGET;
 * hoff when they are not rows we can read. */
void cm_mysql_handler_columns(MyConn *mc, MYSQL_STMT *st);
/* Open the handler; closing it first when it is due. 1 if a step was
 * started, 0 if it is open (or cannot be: hoff). */
int cm_mysql_handler_ready(CmSqlConnObject *c);
/* S_HGET failed with error e: reopen and retry once, or fall back to the
 * SELECT. 1 if the batch was restarted. */
int cm_mysql_handler_failed(CmSqlConnObject *c, unsigned e, int fallback);
/* A HANDLER OPEN or CLOSE completed. 1 if a step was started, 0 if the
 * connection went idle. */
int cm_mysql_handler_done(CmSqlConnObject *c);
/* The storage's tick, for an idle connection: close a handler that is due. */
void cm_mysql_idle(CmSqlConnObject *c, int64_t now);

#endif /* CM_HAVE_MARIADB */
#endif
