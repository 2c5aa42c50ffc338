/* The HANDLER read path of the MySQL/MariaDB driver.
 *
 * A single GET reads through a HANDLER (`HANDLER t OPEN AS cm_get`, then a
 * prepared `HANDLER cm_get READ `key` = (?) WHERE BINARY `key` = ? AND <not
 * expired>`): the server skips the optimizer, which is about a third of its
 * work for a point SELECT. What the handler interface gives up (a
 * consistent view across reads) does not matter to one row. Two things need
 * care:
 * - an open handler holds a metadata lock, so that TRUNCATE/ALTER/DROP of
 *   the table from elsewhere waits for it (forever, by default). A handler
 *   MY_HANDLER_AGE old is closed: before the next read on a connection in
 *   use, by the storage's tick on one unused for half that time. DDL
 *   elsewhere then waits at most about MY_HANDLER_AGE plus a tick.
 * - HANDLER READ looks the value up cut to the index's width (the column's,
 *   or a prefix index's) and under its collation: its WHERE compares `key`
 *   again, in full and byte for byte, so that a longer key never reads the
 *   row of its prefix, nor 'user' the row of 'User'.
 * A handler closed by the server (our own DDL on the connection, or any
 * statement but a HANDLER one that the connection runs while a DDL waits
 * for the handler) is reopened and the read retried once. */
#include "sql/mysql_conn.h"

#include <stdio.h>
#include <string.h>

#ifdef CM_HAVE_MARIADB

/* Where `value` and `updated_at` are in the rows of the prepared S_HGET;
 * hoff when they are not rows we can read. */
void cm_mysql_handler_columns(MyConn *mc, MYSQL_STMT *st)
{
    MYSQL_RES *meta = mysql_stmt_result_metadata(st);
    unsigned n = meta ? mysql_num_fields(meta) : 0;
    MYSQL_FIELD *f = meta ? mysql_fetch_fields(meta) : NULL;
    mc->hvalue = mc->hupdated = -1;
    for (unsigned i = 0; f != NULL && i < n; i++) {
        if (strcmp(f[i].name, "value") == 0)
            mc->hvalue = (int)i;
        else if (strcmp(f[i].name, "updated_at") == 0)
            mc->hupdated = (int)i;
    }
    if (meta != NULL)
        mysql_free_result(meta);
    if (mc->hvalue < 0 || n > MY_MAX_COLS)
        mc->hoff = 1;
}

static void handler_query(CmSqlConnObject *c, int phase, const char *sql)
{
    MyConn *mc = c->aux;
    c->phase = phase;
    cm_mysql_after(c, mysql_real_query_start(&mc->iret, (MYSQL *)c->h, sql, strlen(sql)));
}

/* Open the handler; closing it first when it is due (see the top). 1 if a
 * step was started, 0 if it is open. */
int cm_mysql_handler_ready(CmSqlConnObject *c)
{
    MyConn *mc = c->aux;
    if (mc->hopen && mc->used - mc->hopened >= MY_HANDLER_AGE) {
        handler_query(c, PH_HCLOSE, "HANDLER cm_get CLOSE");
        return 1;
    }
    if (mc->hopen)
        return 0;
    const char *t = PyUnicode_AsUTF8(c->storage->table);
    int n = t ? snprintf(mc->hsql, sizeof(mc->hsql), "HANDLER %s OPEN AS cm_get", t) : -1;
    if (n < 0 || (size_t)n >= sizeof(mc->hsql)) {
        PyErr_Clear();
        mc->hoff = 1;
        return 0;
    }
    handler_query(c, PH_HOPEN, mc->hsql);
    return 1;
}

/* S_HGET failed with error e. A handler the server closed (1109) is reopened
 * and the batch run again, once; then, or for any other error but a missing
 * table (when fallback), the connection reads with the SELECT. 1 if the batch
 * was restarted. */
int cm_mysql_handler_failed(CmSqlConnObject *c, unsigned e, int fallback)
{
    MyConn *mc = c->aux;
    if (mc->slot != S_HGET || e == ER_NO_SUCH_TABLE_ || (e != ER_UNKNOWN_TABLE_ && !fallback))
        return 0;
    if (e != ER_UNKNOWN_TABLE_ || mc->hretried)
        mc->hoff = 1;
    mc->hretried = 1;
    mc->hopen = 0;
    cm_mysql_run_batch(c);
    return 1;
}

/* A HANDLER OPEN or CLOSE completed: note whether it is open, then run the
 * batch that waits for it (none after the tick's close of an idle
 * connection). */
int cm_mysql_handler_done(CmSqlConnObject *c)
{
    MyConn *mc = c->aux;
    unsigned e = mc->iret != 0 ? cm_mysql_errno(c) : 0;
    int opening = c->phase == PH_HOPEN;
    c->phase = PH_IDLE;
    if ((e >= 2000 && e < 3000) || (opening && e == ER_NO_SUCH_TABLE_)) {
        cm_mysql_request_failed(c); /* the connection, or the table, is gone */
        return 0;
    }
    /* closed, or already gone (1109): not open either way */
    mc->hopen = opening && e == 0;
    if (mc->hopen)
        mc->hopened = cm_sql_now();
    else if (opening)
        mc->hoff = 1; /* a view, an engine without handlers: the SELECT */
    if (c->batch == NULL) {
        cm_sql_conn_done(c);
        return 0;
    }
    cm_mysql_run_batch(c);
    return 1;
}

/* The storage's tick, for an idle connection: close a handler that is due,
 * so that DDL elsewhere is not held up by a quiet pool. Not on a
 * connection in use (idle between two reads): its next read does it. */
void cm_mysql_idle(CmSqlConnObject *c, int64_t now)
{
    MyConn *mc = c->aux;
    if (mc == NULL || !mc->hopen || now - mc->hopened < MY_HANDLER_AGE ||
        now - mc->used < MY_HANDLER_AGE / 2)
        return;
    c->net.state = CM_SQL_BUSY;
    cm_sql_conn_deadline(c, now + (int64_t)(c->storage->timeout * 1e9));
    handler_query(c, PH_HCLOSE, "HANDLER cm_get CLOSE");
}

#endif /* CM_HAVE_MARIADB */
