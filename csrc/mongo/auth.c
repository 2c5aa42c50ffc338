/* Authentication of a connection with SCRAM (scram.h), right after its
 * hello: saslStart with the client-first message, saslContinue with the
 * client-final one, the server's signature checked, then (if the server
 * still says it is not done) an empty saslContinue. The mechanism is the
 * URL's authMechanism, else SCRAM-SHA-256 when the hello's
 * saslSupportedMechs lists it, else SCRAM-SHA-1 (MongoDB's rule). Requests
 * queued meanwhile wait until it succeeds; a failure closes the connection
 * and fails them with MongoAuthError. */
#ifdef CM_HAVE_BSON
#include "mongo/mongo.h"

#include <bson/bson.h>
#include <stdlib.h>
#include <string.h>

/* saslStart (conv < 0) or saslContinue as one OP_MSG. -1: out of memory. */
static int sasl_encode(CmMongoClientObject *cl, CmMongoBuf *b, int32_t id, const char *mech,
                       int32_t conv, const char *payload, size_t len)
{
    bson_t cmd, opts;
    Py_ssize_t dbn;
    const char *db = PyUnicode_AsUTF8AndSize(cl->auth_source, &dbn);
    if (db == NULL)
        return -1;
    bson_init(&cmd);
    int ok;
    if (conv < 0)
        ok = bson_append_int32(&cmd, "saslStart", 9, 1) &&
             bson_append_utf8(&cmd, "mechanism", 9, mech, -1) &&
             bson_append_binary(&cmd, "payload", 7, BSON_SUBTYPE_BINARY, (const uint8_t *)payload,
                                (uint32_t)len) &&
             bson_append_int32(&cmd, "autoAuthorize", 13, 1) &&
             bson_append_document_begin(&cmd, "options", 7, &opts) &&
             bson_append_bool(&opts, "skipEmptyExchange", 17, true) &&
             bson_append_document_end(&cmd, &opts);
    else
        ok = bson_append_int32(&cmd, "saslContinue", 12, 1) &&
             bson_append_int32(&cmd, "conversationId", 14, conv) &&
             bson_append_binary(&cmd, "payload", 7, BSON_SUBTYPE_BINARY, (const uint8_t *)payload,
                                (uint32_t)len);
    ok = ok && bson_append_utf8(&cmd, "$db", 3, db, (int)dbn);
    return cm_mongo_cmd_append(b, &cmd, ok, id);
}

/* Queue the next SASL message on c as an internal request. */
static int sasl_send(CmMongoConnObject *c, const char *mech, int32_t conv, const char *payload,
                     size_t len)
{
    CmMongoClientObject *cl = cm_mongo_conn_client(c); // borrowed
    CmMongoReq *r = cm_mongo_req_new(CM_MONGO_SASL);
    if (r == NULL)
        return -1;
    r->id = cm_mongo_next_id(cl);
    r->deadline = c->connect_deadline;
    if (sasl_encode(cl, &c->out, r->id, mech, conv, payload, len) < 0 ||
        cm_mongo_conn_add_pending(c, r) < 0) {
        cm_mongo_req_free(r);
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int scram_error(CmMongoClientObject *cl, int rc, const char *err)
{
    if (rc == CM_SCRAM_NOMEM)
        PyErr_NoMemory();
    else
        PyErr_Format(cl->st->mongo.AuthError, "authentication failed: %s", err);
    return -1;
}

int cm_mongo_auth_start(CmMongoConnObject *c, int mechs)
{
    CmMongoClientObject *cl = cm_mongo_conn_client(c); // borrowed
    int mech = cl->auth_mech;
    if (mech == 0)
        mech = (mechs & CM_MONGO_MECH_SHA256) ? CM_SCRAM_SHA_256 : CM_SCRAM_SHA_1_MONGO;
    const char *err = NULL;
    const char *msg;
    size_t len;
    CmScram *s = NULL;
    int rc = cm_scram_new(&s, (CmScramMech)mech, PyBytes_AS_STRING(cl->user),
                          (size_t)PyBytes_GET_SIZE(cl->user), PyBytes_AS_STRING(cl->password),
                          (size_t)PyBytes_GET_SIZE(cl->password), NULL, 0, cl->scram_cache, &err);
    if (rc != CM_SCRAM_OK)
        return scram_error(cl, rc, err);
    c->scram = s;
    c->sasl_mech = mech;
    if ((rc = cm_scram_client_first(s, &msg, &len, &err)) != CM_SCRAM_OK)
        return scram_error(cl, rc, err);
    return sasl_send(c, cm_scram_mech_name((CmScramMech)mech), -1, msg, len);
}

/* A SASL reply's conversationId, done and payload (pointing into body). */
static int sasl_reply(CmMongoClientObject *cl, const uint8_t *body, size_t n, int32_t *conv,
                      int *done, const char **payload, uint32_t *plen)
{
    bson_t reply;
    bson_iter_t it;
    size_t off;
    if (!bson_init_static(&reply, body, n) || !bson_validate(&reply, BSON_VALIDATE_NONE, &off)) {
        PyErr_SetString(cl->st->mongo.ConnectionError, "SASL reply is not valid BSON");
        return -1;
    }
    double ok = 0;
    const char *errmsg = "no errmsg";
    *conv = 0;
    *done = 0;
    *payload = "";
    *plen = 0;
    if (!bson_iter_init(&it, &reply))
        return -1;
    while (bson_iter_next(&it)) {
        const char *k = bson_iter_key(&it);
        if (strcmp(k, "ok") == 0)
            ok = bson_iter_as_bool(&it) ? 1 : 0;
        else if (strcmp(k, "errmsg") == 0 && BSON_ITER_HOLDS_UTF8(&it))
            errmsg = bson_iter_utf8(&it, NULL);
        else if (strcmp(k, "conversationId") == 0 && BSON_ITER_HOLDS_INT32(&it))
            *conv = bson_iter_int32(&it);
        else if (strcmp(k, "done") == 0)
            *done = bson_iter_as_bool(&it);
        else if (strcmp(k, "payload") == 0 && BSON_ITER_HOLDS_BINARY(&it)) {
            bson_subtype_t sub;
            const uint8_t *p;
            bson_iter_binary(&it, &sub, plen, &p);
            *payload = (const char *)p;
        }
    }
    if (ok != 1) {
        PyErr_Format(cl->st->mongo.AuthError, "authentication failed: %s", errmsg);
        return -1;
    }
    return 0;
}

int cm_mongo_auth_step(CmMongoConnObject *c, const uint8_t *body, size_t n)
{
    CmMongoClientObject *cl = cm_mongo_conn_client(c); // borrowed
    int32_t conv;
    int done, rc;
    const char *payload, *err = NULL, *msg;
    uint32_t plen;
    size_t len;
    if (sasl_reply(cl, body, n, &conv, &done, &payload, &plen) < 0)
        return -1;
    c->sasl_step++;
    if (c->sasl_step == 1) {
        /* server-first: answer with our proof */
        rc = cm_scram_client_final(c->scram, payload, plen, &msg, &len, &err);
        if (rc != CM_SCRAM_OK)
            return scram_error(cl, rc, err);
        return sasl_send(c, NULL, conv, msg, len) < 0 ? -1 : 0;
    }
    if (c->sasl_step == 2) {
        /* server-final: the server proves it knows the password too */
        rc = cm_scram_verify_server_final(c->scram, payload, plen, &err);
        if (rc != CM_SCRAM_OK)
            return scram_error(cl, rc, err);
        if (done)
            return 1;
        return sasl_send(c, NULL, conv, "", 0) < 0 ? -1 : 0;
    }
    if (done)
        return 1;
    PyErr_SetString(cl->st->mongo.AuthError,
                    "authentication failed: the server did not finish the conversation");
    return -1;
}
#endif
