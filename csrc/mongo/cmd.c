/* The commands' BSON (libbson) and what their replies mean: find for get
 * and get_all, update with upsert for set and set_all (one command, one
 * statement per key, in a document sequence), delete, createIndexes, ping
 * and the connection's hello. Every command names its database ($db) and
 * carries maxTimeMS from the storage's timeout, so the server gives up when
 * the client does. */
#ifdef CM_HAVE_BSON
#include "mongo/mongo.h"

#include <bson/bson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "base/exc.h"
#include "loop/loop.h"
#include "ser/envelope.h"

CmMongoReq *cm_mongo_req_new(int kind)
{
    CmMongoReq *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    r->kind = kind;
    r->ttl_ms = -1;
    return r;
}

void cm_mongo_req_free(CmMongoReq *r)
{
    if (r == NULL)
        return;
    Py_XDECREF(r->fut);
    Py_XDECREF(r->ser);
    Py_XDECREF(r->key);
    Py_XDECREF(r->keys);
    Py_XDECREF(r->nodes);
    Py_XDECREF(r->values);
    for (int i = 0; i < r->nmembers; i++)
        cm_mongo_req_free(r->members[i]);
    free(r->members);
    free(r);
}

int cm_mongo_req_add_member(CmMongoReq *run, CmMongoReq *r)
{
    if (run->nmembers == run->capm) {
        int cap = run->capm ? run->capm * 2 : 8;
        CmMongoReq **m = realloc(run->members, (size_t)cap * sizeof(*m));
        if (m == NULL)
            return -1;
        run->members = m;
        run->capm = cap;
    }
    run->members[run->nmembers++] = r;
    return 0;
}

int cm_mongo_req_traverse(const CmMongoReq *r, visitproc visit, void *arg)
{
    Py_VISIT(r->fut);
    Py_VISIT(r->ser);
    Py_VISIT(r->key);
    Py_VISIT(r->keys);
    Py_VISIT(r->nodes);
    Py_VISIT(r->values);
    for (int i = 0; i < r->nmembers; i++) {
        int rc = cm_mongo_req_traverse(r->members[i], visit, arg);
        if (rc)
            return rc;
    }
    return 0;
}

/* Settle r's future (unless its caller cancelled it) and free r. One of
 * res/exc is set (borrowed). */
static void req_settle(CmState *st, CmMongoReq *r, PyObject *res, PyObject *exc)
{
    PyObject *saved = cm_exc_take();
    /* a coalesced find fails for each of its GETs */
    for (int i = 0; i < r->nmembers; i++)
        req_settle(st, r->members[i], res, exc);
    r->nmembers = 0;
    if (r->fut != NULL) {
        int done = cm_future_done(st, r->fut);
        int rc = 0;
        if (done == 0)
            rc = exc ? cm_future_set_exception(st, r->fut, exc)
                     : cm_future_set_result(st, r->fut, res);
        /* a closed loop cannot schedule the future's callbacks (asyncio's
         * RuntimeError, not a subclass): its callers are gone with it (as
         * the Redis client, quietly) */
        if ((done < 0 || rc < 0) && PyErr_Occurred() == PyExc_RuntimeError)
            PyErr_Clear();
        else if (done < 0 || rc < 0)
            PyErr_WriteUnraisable(r->fut);
    }
    cm_mongo_req_free(r);
    cm_exc_restore(saved);
}

void cm_mongo_req_fail(CmState *st, CmMongoReq *r, PyObject *exc) { req_settle(st, r, NULL, exc); }

void cm_mongo_req_fail_msg(CmState *st, CmMongoReq *r, PyObject *tp, PyObject *msg)
{
    PyObject *saved = cm_exc_take();
    PyObject *exc = PyObject_CallOneArg(tp, msg ? msg : Py_None);
    if (exc == NULL) {
        exc = cm_exc_take();
    }
    req_settle(st, r, NULL, exc ? exc : st->mongo.Error);
    Py_XDECREF(exc);
    cm_exc_restore(saved);
}

/* Milliseconds since the epoch (BSON datetimes), on the test clock as
 * the ages the flight reads against it. */
static int64_t now_ms(void) { return cm_wall_ns() / 1000000; }

static int append_str(bson_t *b, const char *name, PyObject *s)
{
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(s, &n);
    if (p == NULL)
        return -1;
    if (n > INT32_MAX - 16 || !bson_append_utf8(b, name, -1, p, (int)n)) {
        PyErr_SetString(PyExc_ValueError, "mongodb: key too long for a BSON document");
        return -1;
    }
    return 0;
}

/* {key: k} */
static int append_key_filter(bson_t *b, const char *name, PyObject *key)
{
    bson_t q;
    if (!bson_append_document_begin(b, name, -1, &q))
        goto big;
    if (append_str(&q, "key", key) < 0)
        return -1;
    if (!bson_append_document_end(b, &q))
        goto big;
    return 0;
big:
    PyErr_SetString(PyExc_ValueError, "mongodb: document too large");
    return -1;
}

/* One update statement: {q: {key}, u: {$set: {value, updated_at, expire}},
 * upsert: true}, 0.3.0's update_one(..., upsert=True); r's load_time and
 * stale_until when it has them (mongo.h), else $unset (a write without
 * them drops those of the value it replaces). */
static int append_upsert(bson_t *doc, PyObject *key, PyObject *value, const CmMongoReq *r,
                         int64_t now)
{
    bson_t u, set, unset;
    char *data;
    Py_ssize_t n;
    long long ttl_ms = r->ttl_ms;
    int timed = r->load_ns > 0, kept = r->stale_ms > 0 && ttl_ms >= 0;
    if (PyBytes_AsStringAndSize(value, &data, &n) < 0)
        return -1;
    if (append_key_filter(doc, "q", key) < 0)
        return -1;
    if (n > INT32_MAX - 64 || !bson_append_document_begin(doc, "u", 1, &u) ||
        !bson_append_document_begin(&u, "$set", 4, &set) ||
        !bson_append_binary(&set, "value", 5, BSON_SUBTYPE_BINARY, (const uint8_t *)data,
                            (uint32_t)n) ||
        !bson_append_date_time(&set, "updated_at", 10, now) ||
        !(ttl_ms < 0 ? bson_append_null(&set, "expire", 6)
                     : bson_append_date_time(&set, "expire", 6, now + ttl_ms)) ||
        !(!timed || bson_append_double(&set, "load_time", 9, (double)r->load_ns / 1e9)) ||
        !(!kept || bson_append_date_time(&set, "stale_until", 11, now + ttl_ms + r->stale_ms)) ||
        !bson_append_document_end(&u, &set) ||
        !(timed && kept ? 1
                        : bson_append_document_begin(&u, "$unset", 6, &unset) &&
                              (timed || bson_append_utf8(&unset, "load_time", 9, "", 0)) &&
                              (kept || bson_append_utf8(&unset, "stale_until", 11, "", 0)) &&
                              bson_append_document_end(&u, &unset)) ||
        !bson_append_document_end(doc, &u) || !bson_append_bool(doc, "upsert", 6, true)) {
        PyErr_SetString(PyExc_ValueError, "mongodb: value too large for a BSON document");
        return -1;
    }
    return 0;
}

static const char *kind_name(int kind)
{
    switch (kind) {
    case CM_MONGO_GET:
    case CM_MONGO_GET_ALL:
    case CM_MONGO_GETS:
        return "find";
    case CM_MONGO_SET:
    case CM_MONGO_SET_ALL:
        return "update";
    case CM_MONGO_DEL:
        return "delete";
    case CM_MONGO_INDEXES:
        return "createIndexes";
    case CM_MONGO_PING:
        return "ping";
    default:
        return "hello";
    }
}

/* The command document of r, without its statements (update and delete
 * send those as a document sequence). -1 with an exception. */
static int build_command(CmMongoClientObject *cl, CmMongoReq *r, bson_t *cmd)
{
    const char *verb = kind_name(r->kind);
    int ok = 1;
    switch (r->kind) {
    case CM_MONGO_GET:
    case CM_MONGO_GET_ALL:
    case CM_MONGO_GETS: {
        bson_t filter, in, arr;
        if (append_str(cmd, verb, cl->collection) < 0)
            return -1;
        /* one key: an equality, which any server answers from the key index */
        PyObject *one = r->kind == CM_MONGO_GET                        ? r->key
                        : r->kind == CM_MONGO_GETS && r->nmembers == 1 ? r->members[0]->key
                                                                       : NULL;
        if (one != NULL) {
            if (append_key_filter(cmd, "filter", one) < 0)
                return -1;
            ok = bson_append_int32(cmd, "limit", 5, 1);
        } else {
            Py_ssize_t n = PyList_GET_SIZE(r->keys);
            ok = bson_append_document_begin(cmd, "filter", 6, &filter) &&
                 bson_append_document_begin(&filter, "key", 3, &in) &&
                 bson_append_array_begin(&in, "$in", 3, &arr);
            for (Py_ssize_t i = 0; ok && i < n; i++) {
                char idx[24];
                const char *name;
                size_t len = bson_uint32_to_string((uint32_t)i, &name, idx, sizeof(idx));
                Py_ssize_t sn;
                const char *s = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(r->keys, i), &sn);
                if (s == NULL)
                    return -1;
                ok = sn < INT32_MAX - 16 && bson_append_utf8(&arr, name, (int)len, s, (int)sn);
            }
            ok = ok && bson_append_array_end(&in, &arr) && bson_append_document_end(&filter, &in) &&
                 bson_append_document_end(cmd, &filter) &&
                 bson_append_int32(cmd, "batchSize", 9, (int32_t)(n < INT32_MAX ? n : INT32_MAX));
        }
        /* one reply holds the result: no cursor is left open on the server */
        ok = ok && bson_append_bool(cmd, "singleBatch", 11, true);
        break;
    }
    case CM_MONGO_SET:
    case CM_MONGO_SET_ALL:
    case CM_MONGO_DEL:
        if (append_str(cmd, verb, cl->collection) < 0)
            return -1;
        ok = bson_append_bool(cmd, "ordered", 7, r->kind != CM_MONGO_SET_ALL);
        break;
    case CM_MONGO_INDEXES: {
        /* scripts/mongo.js's two indexes, named as the server names them */
        bson_t arr, ix, key;
        if (append_str(cmd, verb, cl->collection) < 0)
            return -1;
        ok = bson_append_array_begin(cmd, "indexes", 7, &arr) &&
             bson_append_document_begin(&arr, "0", 1, &ix) &&
             bson_append_document_begin(&ix, "key", 3, &key) &&
             bson_append_int32(&key, "key", 3, 1) && bson_append_document_end(&ix, &key) &&
             bson_append_utf8(&ix, "name", 4, "key_1", 5) &&
             bson_append_bool(&ix, "unique", 6, true) && bson_append_document_end(&arr, &ix) &&
             bson_append_document_begin(&arr, "1", 1, &ix) &&
             bson_append_document_begin(&ix, "key", 3, &key) &&
             bson_append_int32(&key, "expire", 6, 1) && bson_append_document_end(&ix, &key) &&
             bson_append_utf8(&ix, "name", 4, "expire_1", 8) &&
             bson_append_document_end(&arr, &ix) && bson_append_array_end(cmd, &arr);
        break;
    }
    case CM_MONGO_PING:
        ok = bson_append_int32(cmd, "ping", 4, 1);
        break;
    default:
        PyErr_SetString(PyExc_SystemError, "mongodb: unknown request");
        return -1;
    }
    if (ok && r->kind != CM_MONGO_PING && r->kind != CM_MONGO_INDEXES) {
        /* an int32, the type every server takes (timeouts past 24 days are
         * the client's alone) */
        double ms = ceil(cl->timeout * 1000.0);
        ok = bson_append_int32(cmd, "maxTimeMS", 9,
                               ms < 1           ? 1
                               : ms > INT32_MAX ? INT32_MAX
                                                : (int32_t)ms);
    }
    if (ok && append_str(cmd, "$db", cl->database) < 0)
        return -1;
    if (!ok) {
        PyErr_Format(cl->st->mongo.Error, "mongodb %s: command too large for a BSON document",
                     verb);
        return -1;
    }
    return 0;
}

/* The statements of an update or delete, as the kind 1 section. */
static int put_statements(CmMongoReq *r, CmMongoBuf *b)
{
    size_t mark;
    int64_t now = now_ms();
    if (cm_mongo_msg_seq_begin(b, r->kind == CM_MONGO_DEL ? "deletes" : "updates", &mark) < 0)
        goto nomem;
    Py_ssize_t n = r->kind == CM_MONGO_SET_ALL ? PyList_GET_SIZE(r->keys) : 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        bson_t doc;
        bson_init(&doc);
        int rc;
        if (r->kind == CM_MONGO_DEL)
            rc = append_key_filter(&doc, "q", r->key) < 0 || !bson_append_int32(&doc, "limit", 5, 1)
                     ? -1
                     : 0;
        else if (r->kind == CM_MONGO_SET)
            rc = append_upsert(&doc, r->key, r->values, r, now);
        else
            rc = append_upsert(&doc, PyList_GET_ITEM(r->keys, i), PyList_GET_ITEM(r->values, i), r,
                               now);
        if (rc == 0 && cm_mongo_buf_put(b, bson_get_data(&doc), doc.len) < 0) {
            bson_destroy(&doc);
            goto nomem;
        }
        bson_destroy(&doc);
        if (rc < 0)
            return -1;
    }
    cm_mongo_msg_seq_end(b, mark);
    return 0;
nomem:
    PyErr_NoMemory();
    return -1;
}

int cm_mongo_req_encode(CmMongoClientObject *cl, CmMongoReq *r, CmMongoBuf *b, size_t max)
{
    size_t start = b->len;
    bson_t cmd;
    bson_init(&cmd);
    if (build_command(cl, r, &cmd) < 0)
        goto fail;
    if (cm_mongo_msg_begin(b, &start) < 0 ||
        cm_mongo_msg_body(b, bson_get_data(&cmd), cmd.len) < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    if ((r->kind == CM_MONGO_SET || r->kind == CM_MONGO_SET_ALL || r->kind == CM_MONGO_DEL) &&
        put_statements(r, b) < 0)
        goto fail;
    if (cm_mongo_msg_end(b, start, r->id, max) < 0) {
        PyErr_Format(cl->st->mongo.Error,
                     "mongodb %s: the request is larger than the server's maxMessageSizeBytes "
                     "(%zu)",
                     kind_name(r->kind), max);
        goto fail;
    }
    bson_destroy(&cmd);
    return 0;
fail:
    cm_mongo_msg_abort(b, start);
    bson_destroy(&cmd);
    return -1;
}

int cm_mongo_hello_encode(CmMongoClientObject *cl, CmMongoBuf *b, int32_t id)
{
    /* the handshake: who we are (client metadata), no compression */
    bson_t cmd, client, driver, os, comp;
    bson_init(&cmd);
    /* the command's name comes first */
    int ok = bson_append_int32(&cmd, "hello", 5, 1) && bson_append_bool(&cmd, "helloOk", 7, true);
    if (!ok) {
        bson_destroy(&cmd);
        PyErr_NoMemory();
        return -1;
    }
    if (cl->user != NULL) {
        /* "<db>.<user>": the server lists the mechanisms of that user */
        PyObject *who = PyUnicode_FromFormat("%U.%s", cl->auth_source, PyBytes_AS_STRING(cl->user));
        const char *w = who ? PyUnicode_AsUTF8(who) : NULL;
        int appended = w != NULL && bson_append_utf8(&cmd, "saslSupportedMechs", 18, w, -1);
        Py_XDECREF(who);
        if (!appended) {
            bson_destroy(&cmd);
            if (!PyErr_Occurred())
                PyErr_NoMemory();
            return -1;
        }
    }
    ok = bson_append_document_begin(&cmd, "client", 6, &client) &&
         bson_append_document_begin(&client, "driver", 6, &driver) &&
         bson_append_utf8(&driver, "name", 4, "cacheme", 7) &&
         bson_append_utf8(&driver, "version", 7, "c", 1) &&
         bson_append_document_end(&client, &driver) &&
         bson_append_document_begin(&client, "os", 2, &os) &&
         bson_append_utf8(&os, "type", 4, "Linux", 5) && bson_append_document_end(&client, &os) &&
         bson_append_document_end(&cmd, &client) &&
         bson_append_array_begin(&cmd, "compression", 11, &comp) &&
         bson_append_array_end(&cmd, &comp) && bson_append_utf8(&cmd, "$db", 3, "admin", 5);
    return cm_mongo_cmd_append(b, &cmd, ok, id);
}

int cm_mongo_cmd_append(CmMongoBuf *b, bson_t *cmd, int ok, int32_t id)
{
    size_t start = b->len;
    if (!ok || cm_mongo_msg_begin(b, &start) < 0 ||
        cm_mongo_msg_body(b, bson_get_data(cmd), cmd->len) < 0 ||
        cm_mongo_msg_end(b, start, id, CM_MONGO_MAX_MESSAGE) < 0) {
        cm_mongo_msg_abort(b, start);
        bson_destroy(cmd);
        PyErr_NoMemory();
        return -1;
    }
    bson_destroy(cmd);
    return 0;
}

/* ---- replies ------------------------------------------------------------ */

/* A number field as a double (ok, code), or dflt. */
static double num_field(const bson_t *doc, const char *name, double dflt)
{
    bson_iter_t it;
    if (!bson_iter_init_find(&it, doc, name))
        return dflt;
    switch (bson_iter_type(&it)) {
    case BSON_TYPE_DOUBLE:
        return bson_iter_double(&it);
    case BSON_TYPE_INT32:
        return bson_iter_int32(&it);
    case BSON_TYPE_INT64:
        return (double)bson_iter_int64(&it);
    case BSON_TYPE_BOOL:
        return bson_iter_bool(&it);
    default:
        return dflt;
    }
}

static const char *str_field(const bson_t *doc, const char *name, const char *dflt)
{
    bson_iter_t it;
    if (bson_iter_init_find(&it, doc, name) && BSON_ITER_HOLDS_UTF8(&it))
        return bson_iter_utf8(&it, NULL);
    return dflt;
}

/* The codes that mean "not the primary (any more)": the request may go to
 * the new primary once. */
static int not_primary_code(int code)
{
    return code == 10107 || code == 13435 || code == 11602 || code == 189 || code == 91;
}

/* MongoServerError("mongodb <verb>: <errmsg> (code N[, codeName])") with
 * .code set; a new reference, never NULL (falls back to the type). */
static PyObject *server_error(CmState *st, const char *verb, const bson_t *err)
{
    int code = (int)num_field(err, "code", 0);
    const char *msg = str_field(err, "errmsg", "no errmsg");
    const char *name = str_field(err, "codeName", NULL);
    PyObject *exc = NULL;
    PyObject *text =
        name ? PyUnicode_FromFormat("mongodb %s failed: %s (code %d, %s)", verb, msg, code, name)
             : PyUnicode_FromFormat("mongodb %s failed: %s (code %d)", verb, msg, code);
    if (text == NULL)
        PyErr_Clear();
    else {
        exc = PyObject_CallOneArg(st->mongo.ServerError, text);
        PyObject *c = exc ? PyLong_FromLong(code) : NULL;
        if (c == NULL || PyObject_SetAttrString(exc, "code", c) < 0)
            PyErr_Clear();
        Py_XDECREF(c);
        Py_DECREF(text);
    }
    PyErr_Clear();
    return exc ? exc : Py_NewRef(st->mongo.ServerError);
}

/* The first document of an array field as a bson_t (static, into doc). */
static int first_doc_of(const bson_t *doc, const char *name, bson_t *out)
{
    bson_iter_t it, sub;
    if (!bson_iter_init_find(&it, doc, name) || !BSON_ITER_HOLDS_ARRAY(&it) ||
        !bson_iter_recurse(&it, &sub))
        return 0;
    while (bson_iter_next(&sub)) {
        if (!BSON_ITER_HOLDS_DOCUMENT(&sub))
            continue;
        uint32_t len;
        const uint8_t *data;
        bson_iter_document(&sub, &len, &data);
        return bson_init_static(out, data, len) ? 1 : 0;
    }
    return 0;
}

/* A document field as a bson_t (static, into doc): 1 found, 0 not. */
static int doc_field(const bson_t *doc, const char *name, bson_t *out)
{
    bson_iter_t it;
    uint32_t len;
    const uint8_t *data;
    if (!bson_iter_init_find(&it, doc, name) || !BSON_ITER_HOLDS_DOCUMENT(&it))
        return 0;
    bson_iter_document(&it, &len, &data);
    return bson_init_static(out, data, len) ? 1 : 0;
}

/* A document a find returned, with a value to give. */
typedef struct {
    PyObject *raw;      /* the value's bytes */
    int64_t updated_ms; /* updated_at (UTC ms), 0: none */
    int64_t load_ns;    /* load_time, 0: none */
    int kept;           /* past expire, kept by its stale_until */
} Found;

/* The documents of a find reply: index maps each key to its Found (a
 * PyLong, the position in docs). */
typedef struct {
    PyObject *index;
    Found *docs;
    Py_ssize_t n, cap;
} FoundSet;

static void found_free(FoundSet *fs)
{
    for (Py_ssize_t i = 0; i < fs->n; i++)
        Py_DECREF(fs->docs[i].raw);
    free(fs->docs);
    Py_CLEAR(fs->index);
}

/* A found document: its key (new reference in *key, NULL when it has none)
 * and what to give in *f (f->raw a new reference, NULL when the document is
 * expired, and not kept, or has no binary value). -1 with an exception. */
static int read_found(const bson_t *doc, int64_t now, PyObject **key, Found *f)
{
    bson_iter_t it;
    const char *k = NULL;
    uint32_t klen = 0, vlen = 0;
    const uint8_t *v = NULL;
    int expired = 0, keep = 0;
    *key = NULL;
    *f = (Found){.raw = NULL};
    if (!bson_iter_init(&it, doc))
        return 0;
    while (bson_iter_next(&it)) {
        const char *name = bson_iter_key(&it);
        if (strcmp(name, "key") == 0 && BSON_ITER_HOLDS_UTF8(&it))
            k = bson_iter_utf8(&it, &klen);
        else if (strcmp(name, "value") == 0 && BSON_ITER_HOLDS_BINARY(&it)) {
            bson_subtype_t sub;
            bson_iter_binary(&it, &sub, &vlen, &v);
        } else if (strcmp(name, "expire") == 0 && BSON_ITER_HOLDS_DATE_TIME(&it))
            expired = bson_iter_date_time(&it) <= now; /* 0.3.0: expire <= now is a miss */
        else if (strcmp(name, "updated_at") == 0 && BSON_ITER_HOLDS_DATE_TIME(&it))
            f->updated_ms = bson_iter_date_time(&it);
        else if (strcmp(name, "load_time") == 0 && BSON_ITER_HOLDS_DOUBLE(&it)) {
            double secs = bson_iter_double(&it);
            f->load_ns = secs > 0 && secs < 1e6 ? (int64_t)(secs * 1e9) : 0;
        } else if (strcmp(name, "stale_until") == 0 && BSON_ITER_HOLDS_DATE_TIME(&it))
            keep = bson_iter_date_time(&it) > now;
    }
    if (k == NULL)
        return 0;
    if (expired && !(keep && f->updated_ms > 0))
        v = NULL;
    f->kept = expired;
    if ((*key = PyUnicode_DecodeUTF8(k, klen, "surrogatepass")) == NULL)
        return -1;
    if (v != NULL && (f->raw = PyBytes_FromStringAndSize((const char *)v, vlen)) == NULL) {
        Py_CLEAR(*key);
        return -1;
    }
    return 0;
}

static int found_add(FoundSet *fs, PyObject *key, Found *f)
{
    if (fs->n == fs->cap) {
        Py_ssize_t cap = fs->cap ? fs->cap * 2 : 8;
        Found *d = realloc(fs->docs, (size_t)cap * sizeof(*d));
        if (d == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        fs->docs = d;
        fs->cap = cap;
    }
    PyObject *i = PyLong_FromSsize_t(fs->n);
    int rc = i != NULL ? PyDict_SetItem(fs->index, key, i) : -1;
    Py_XDECREF(i);
    if (rc < 0)
        return -1;
    fs->docs[fs->n++] = *f;
    f->raw = NULL; /* moved */
    return 0;
}

/* The find reply's documents into fs (found_free it either way); 0, or -1
 * with an exception. */
static int found_set(CmState *st, const bson_t *reply, FoundSet *fs)
{
    bson_iter_t it, batch;
    *fs = (FoundSet){.index = NULL};
    if (!bson_iter_init(&it, reply) ||
        !bson_iter_find_descendant(&it, "cursor.firstBatch", &batch) ||
        !BSON_ITER_HOLDS_ARRAY(&batch) || !bson_iter_recurse(&batch, &it)) {
        PyErr_SetString(st->mongo.Error, "mongodb find: reply without cursor.firstBatch");
        return -1;
    }
    if ((fs->index = PyDict_New()) == NULL)
        return -1;
    int64_t now = now_ms();
    int rc = 0;
    while (rc == 0 && bson_iter_next(&it)) {
        if (!BSON_ITER_HOLDS_DOCUMENT(&it))
            continue;
        uint32_t len;
        const uint8_t *data;
        bson_t doc;
        bson_iter_document(&it, &len, &data);
        if (!bson_init_static(&doc, data, len))
            continue;
        PyObject *key;
        Found f;
        if (read_found(&doc, now, &key, &f) < 0)
            rc = -1;
        else if (f.raw != NULL && found_add(fs, key, &f) < 0)
            rc = -1;
        Py_XDECREF(key);
        Py_XDECREF(f.raw);
    }
    return rc;
}

/* The document of key in fs (borrowed), or NULL: none (or an error set),
 * or one past expire when the reader does not take kept ones (stale 0). */
static const Found *found_get(const FoundSet *fs, PyObject *key, int stale)
{
    PyObject *i = PyDict_GetItemWithError(fs->index, key); // borrowed
    if (i == NULL)
        return NULL;
    const Found *f = &fs->docs[PyLong_AsSsize_t(i)];
    return f->kept && !stale ? NULL : f;
}

static PyObject *decode(CmState *st, PyObject *ser, PyObject *raw)
{
    return cm_envelope_decode(st, CM_ENVELOPE_BARE, ser, raw, st->mongo.Error, "mongodb");
}

/* The value of GET g from fs (new reference): a miss is the sentinel; the
 * age of what a flight's GET read is told to its call. NULL with an
 * exception. */
static PyObject *get_value(CmState *st, CmMongoReq *g, const FoundSet *fs)
{
    const Found *f = found_get(fs, g->key, g->stale);
    if (f == NULL)
        return PyErr_Occurred() ? NULL : Py_NewRef(st->sentinel);
    PyObject *v = decode(st, g->ser, f->raw);
    if (v != NULL && g->aged)
        cm_mongo_flight_age(g, f->updated_ms, f->load_ns);
    return v;
}

/* What r's caller gets from a successful reply; new reference or NULL with
 * an exception. */
static PyObject *result_of(CmMongoClientObject *cl, CmMongoReq *r, const bson_t *reply)
{
    CmState *st = cl->st;
    FoundSet fs;
    if (r->kind == CM_MONGO_GET) {
        PyObject *v = found_set(st, reply, &fs) < 0 ? NULL : get_value(st, r, &fs);
        found_free(&fs);
        return v;
    }
    if (r->kind == CM_MONGO_GETS) {
        /* each GET its value, or a miss; an undecodable value fails that
         * GET alone (a miss for its flight) */
        if (found_set(st, reply, &fs) < 0) {
            found_free(&fs);
            return NULL;
        }
        for (int i = 0; i < r->nmembers; i++) {
            CmMongoReq *g = r->members[i];
            PyObject *v = get_value(st, g, &fs);
            if (v == NULL) {
                PyObject *exc = cm_exc_take();
                req_settle(st, g, NULL, exc ? exc : st->mongo.Error);
                Py_XDECREF(exc);
            } else {
                req_settle(st, g, v, NULL);
                Py_DECREF(v);
            }
        }
        r->nmembers = 0;
        found_free(&fs);
        return Py_NewRef(Py_None);
    }
    if (r->kind == CM_MONGO_GET_ALL) {
        PyObject *out = found_set(st, reply, &fs) == 0 ? PyList_New(0) : NULL;
        for (Py_ssize_t i = 0; out != NULL && i < PyList_GET_SIZE(r->keys); i++) {
            const Found *f = found_get(&fs, PyList_GET_ITEM(r->keys, i), 0);
            if (f == NULL) {
                if (PyErr_Occurred())
                    Py_CLEAR(out);
                continue;
            }
            PyObject *v = decode(st, r->ser, f->raw);
            if (v == NULL) {
                /* undecodable bytes are a miss, as in get() */
                PyObject *exc = cm_exc_take();
                cm_log_warning(st, "cacheme: mongodb value of %R cannot be decoded: %R",
                               PyList_GET_ITEM(r->keys, i), exc);
                Py_XDECREF(exc);
                continue;
            }
            PyObject *pair =
                r->aged ? Py_BuildValue(
                              "(ONLL)", PyList_GET_ITEM(r->nodes, i), v,
                              (long long)(f->updated_ms > 0 && f->updated_ms < INT64_MAX / 1000000
                                              ? f->updated_ms * 1000000
                                              : 0),
                              (long long)f->load_ns)
                        : PyTuple_Pack(2, PyList_GET_ITEM(r->nodes, i), v);
            if (!r->aged)
                Py_DECREF(v);
            if (pair == NULL || PyList_Append(out, pair) < 0)
                Py_CLEAR(out);
            Py_XDECREF(pair);
        }
        found_free(&fs);
        return out;
    }
    if (r->kind == CM_MONGO_DEL)
        return PyLong_FromLong((long)num_field(reply, "n", 0));
    return Py_NewRef(Py_None);
}

int cm_mongo_req_reply(CmMongoClientObject *cl, CmMongoReq *r, const uint8_t *body, size_t n)
{
    CmState *st = cl->st;
    const char *verb = kind_name(r->kind);
    bson_t reply, err;
    size_t off;
    if (!bson_init_static(&reply, body, n) || !bson_validate(&reply, BSON_VALIDATE_NONE, &off)) {
        PyObject *msg = PyUnicode_FromFormat("mongodb %s: reply is not valid BSON", verb);
        cm_mongo_req_fail_msg(st, r, st->mongo.ConnectionError, msg);
        Py_XDECREF(msg);
        return -1;
    }
    if (num_field(&reply, "ok", 0) != 1.0) {
        int code = (int)num_field(&reply, "code", 0);
        if (not_primary_code(code))
            return 1;
        PyObject *exc = server_error(st, verb, &reply);
        cm_mongo_req_fail(st, r, exc);
        Py_DECREF(exc);
        return 0;
    }
    if (first_doc_of(&reply, "writeErrors", &err) || doc_field(&reply, "writeConcernError", &err)) {
        PyObject *exc = server_error(st, verb, &err);
        cm_mongo_req_fail(st, r, exc);
        Py_DECREF(exc);
        return 0;
    }
    PyObject *res = result_of(cl, r, &reply);
    if (res == NULL) {
        PyObject *exc = cm_exc_take();
        cm_mongo_req_fail(st, r, exc ? exc : st->mongo.Error);
        Py_XDECREF(exc);
        return 0;
    }
    req_settle(st, r, res, NULL);
    Py_DECREF(res);
    return 0;
}

/* saslSupportedMechs as CM_MONGO_MECH_* bits */
static int mechs_of(const bson_t *reply)
{
    bson_iter_t it, sub;
    int mechs = 0;
    if (!bson_iter_init_find(&it, reply, "saslSupportedMechs") || !BSON_ITER_HOLDS_ARRAY(&it) ||
        !bson_iter_recurse(&it, &sub))
        return 0;
    while (bson_iter_next(&sub)) {
        const char *m = BSON_ITER_HOLDS_UTF8(&sub) ? bson_iter_utf8(&sub, NULL) : "";
        if (strcmp(m, "SCRAM-SHA-256") == 0)
            mechs |= CM_MONGO_MECH_SHA256;
        else if (strcmp(m, "SCRAM-SHA-1") == 0)
            mechs |= CM_MONGO_MECH_SHA1;
    }
    return mechs;
}

int cm_mongo_hello_parse(const uint8_t *body, size_t n, size_t *max_message, int *mechs,
                         char **primary_hint)
{
    bson_t reply;
    size_t off;
    *primary_hint = NULL;
    *mechs = 0;
    if (!bson_init_static(&reply, body, n) || !bson_validate(&reply, BSON_VALIDATE_NONE, &off)) {
        PyErr_SetString(PyExc_ValueError, "hello reply is not valid BSON");
        return -1;
    }
    if (num_field(&reply, "ok", 0) != 1.0) {
        PyErr_Format(PyExc_ValueError, "hello failed: %s", str_field(&reply, "errmsg", "?"));
        return -1;
    }
    double mx = num_field(&reply, "maxMessageSizeBytes", CM_MONGO_MAX_MESSAGE);
    *max_message = mx >= 1024 && mx <= 1e9 ? (size_t)mx : CM_MONGO_MAX_MESSAGE;
    *mechs = mechs_of(&reply);
    double primary = num_field(&reply, "isWritablePrimary", -1);
    if (primary < 0)
        primary = num_field(&reply, "ismaster", 0); /* servers before 4.4.2 */
    if (primary == 1.0)
        return 1;
    const char *hint = str_field(&reply, "primary", NULL);
    if (hint != NULL && (*primary_hint = strdup(hint)) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}
#endif
