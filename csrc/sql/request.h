/* An SQL request: what one storage call (get, get_all, set, set_all,
 * remove, execute, a sweep) becomes. It carries the keys and bytes, a TTL
 * in seconds and a deadline; a driver fills its result (raw rows) or its
 * error, and finishing it decodes the result for the caller and sets its
 * future. Plain C records linked in the storage's queue or a connection's
 * batch; each holds its Python objects strongly. */
#ifndef CM_SQL_REQUEST_H
#define CM_SQL_REQUEST_H
#include "state.h"

typedef struct CmSqlReq CmSqlReq;
typedef struct CmSqlStorageObject CmSqlStorageObject;

enum {
    CM_SQL_GET,     /* key -> result: the raw value or NULL */
    CM_SQL_GET_ALL, /* keys -> result: dict key -> raw value */
    CM_SQL_SET,     /* key, value, ttl */
    CM_SQL_SET_ALL, /* keys, values, ttl (keys unique) */
    CM_SQL_DEL,     /* key */
    CM_SQL_SWEEP,   /* limit -> result: int, rows deleted */
    CM_SQL_EXEC,    /* key holds an SQL statement without parameters (DDL) */
    CM_SQL_PING,    /* done as soon as a connection is ready */
};

struct CmSqlReq {
    CmSqlReq *next;
    int kind;
    PyObject *fut;    /* NULL for background requests (the sweep) */
    PyObject *ser;    /* GET, GET_ALL: serializer or None */
    PyObject *key;    /* str */
    PyObject *keys;   /* list of str */
    PyObject *nodes;  /* GET_ALL: list of nodes, parallel to keys */
    PyObject *value;  /* bytes */
    PyObject *values; /* list of bytes, parallel to keys */
    double ttl;       /* seconds; < 0: no expiry */
    long limit;
    int64_t deadline; /* monotonic ns */
    /* GET of a flight's call for a node with freshness options
     * (cm_sql_get_for): its row's updated_at is told to the call (UTC us since the epoch; 0:
     * unknown, the driver reads none). GET_ALL (cm_sql_get_all_aged): its pairs are (node, value,
     * updated_at ns) triples. */
    int aged;
    int64_t updated_us;
    /* GET_ALL's or a coalesced GET's rows' updated_at: key -> int (UTC us),
     * or NULL (none read, or none wanted) */
    PyObject *ages;
    PyObject *result;
    PyObject *error;
    /* set while its submitter may still wait for it in its own call (see
     * submit.c): then finishing it only sets `finished`, and the submitter
     * takes the result (no future) or attaches a future */
    int held;
    int finished;
};

/* A new request of kind (no TTL); NULL with MemoryError. */
CmSqlReq *cm_sql_req_new(int kind);
/* Free r and drop its references (its future is left as it is). */
void cm_sql_req_free(CmSqlReq *r);
/* Finish a request: set its future (result or error) and free it; a held
 * one is only marked finished. Never raises. */
void cm_sql_req_finish(CmSqlStorageObject *s, CmSqlReq *r);
/* Visit the Python objects of every request of the chain r (for the GC
 * traverse of what holds them: the storage's queue, a connection's batch,
 * SQLite's lock waiters). */
int cm_sql_req_traverse(CmSqlReq *r, visitproc visit, void *arg);
/* What the caller of a finished request sees; new reference. */
PyObject *cm_sql_req_value(CmSqlStorageObject *s, CmSqlReq *r);
/* Set the request's error (first one wins) to exc_type(msg). */
void cm_sql_req_error(CmSqlStorageObject *s, CmSqlReq *r, PyObject *exc_type, const char *msg);
/* The error for a statement that failed: the missing-table message when
 * missing, else exc_type(msg). */
void cm_sql_req_error_sql(CmSqlStorageObject *s, CmSqlReq *r, int missing_table, const char *msg);
/* The same for every request of the chain b (a connection's batch). */
void cm_sql_batch_error(CmSqlStorageObject *s, CmSqlReq *b, PyObject *exc_type, const char *msg);
void cm_sql_batch_error_sql(CmSqlStorageObject *s, CmSqlReq *b, int missing_table, const char *msg);
/* A batch that could not be sent (it cannot be encoded, or out of memory)
 * fails alone, with the pending exception's type and text (cleared), or
 * SQLError("<driver>: bad request") without one. */
void cm_sql_batch_error_pending(CmSqlStorageObject *s, CmSqlReq *b);
/* 1 when a request of the chain b (one statement's requests) is aged:
 * its rows' updated_at is worth reading (else drivers pass 0). */
int cm_sql_chain_aged(const CmSqlReq *b);
/* Append key -> raw to a GET_ALL/coalesced GET result dict, and the row's
 * updated_at (UTC us, 0 unknown: not kept) to its ages. */
int cm_sql_result_put(CmSqlReq *r, const char *key, size_t klen, PyObject *raw_steal,
                      int64_t updated_us);
/* The one coalesced-row splitter: the rows of a coalesced GET (the chain b
 * of GETs read with one statement) were put in b's result dict with
 * cm_sql_result_put; hand each request its own row, or none (a miss), and
 * its updated_at. */
void cm_sql_split_rows(CmSqlReq *b);

/* "ttl seconds from now" in microseconds, or -1 without TTL. */
long long cm_sql_ttl_us(const CmSqlReq *r);
/* UTC wall clock as "YYYY-MM-DD HH:MM:SS.ffffff+00:00" (the way Python's
 * sqlite3 stored 0.3.0's aware datetimes), offset by delta_us; buf >= 40. */
void cm_sql_utc_text(char *buf, size_t n, long long delta_us);
int64_t cm_sql_now(void);
/* A UTC civil date and time as us since the epoch (proleptic Gregorian). */
int64_t cm_sql_civil_us(int64_t year, int month, int day, int hour, int minute, int second,
                        int64_t us);
/* A timestamp's text ("YYYY-MM-DD HH:MM:SS[.ffffff][+HH:MM|Z]", a T for the
 * space accepted; no offset: UTC) as UTC us since the epoch; 0 when it is
 * not one. */
int64_t cm_sql_parse_utc_us(const char *text, size_t n);

#endif
