/* A MongoDB connection on net/conn.h: a non-blocking TCP socket, TLS when
 * asked for (opened by connect.c), the hello handshake, then requests
 * pipelined on it (written and read by net/stream.h's loops) and matched
 * to replies by responseTo. Its deadline is the connect's (hello included) and the
 * oldest reply's. A reply that is not a well-formed OP_MSG, longer than
 * the server's maxMessageSizeBytes, not valid BSON or answering no request
 * of ours closes the connection: every request on it fails with
 * MongoConnectionError (a miss for a get), and the next one reconnects. */
#ifdef CM_HAVE_BSON
#include "mongo/mongo.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/exc.h"
#include "loop/loop.h"
#include "net/stream.h"

static PyObject *conn_on_flush(PyObject *self, PyObject *unused);
static PyMethodDef on_flush_def = {"_on_flush", conn_on_flush, METH_NOARGS, NULL};

const char *cm_mongo_conn_label(CmMongoConnObject *c, char *buf, size_t n)
{
    CmMongoClientObject *cl = cm_mongo_conn_client(c); // borrowed
    if (cl == NULL) {
        snprintf(buf, n, "(closed)");
        return buf;
    }
    return cm_mongo_host_label(cl, c->host, buf, n);
}

void cm_mongo_conn_close_fmt(CmMongoConnObject *c, PyObject *tp, int failed, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PyObject *saved = cm_exc_take();
    PyObject *msg = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (msg == NULL)
        PyErr_Clear();
    cm_net_conn_close(&c->net, tp, msg, failed);
    Py_XDECREF(msg);
    cm_exc_restore(saved);
}

/* net/conn.h's release: what the protocol side holds besides the socket. */
static void conn_release(CmNetConn *nc, int detached)
{
    (void)detached; /* nothing is said to the server on close */
    CmMongoConnObject *c = (CmMongoConnObject *)nc;
    if (c->resolve != NULL) {
        PyObject *r = PyObject_CallMethod(c->resolve, "cancel", NULL);
        if (r == NULL)
            PyErr_Clear();
        Py_XDECREF(r);
        Py_CLEAR(c->resolve);
    }
    cm_mongo_buf_free(&c->out);
    cm_mongo_buf_free(&c->held);
    cm_mongo_buf_free(&c->in);
    Py_CLEAR(c->flush_cb);
    cm_scram_free(c->scram);
    c->scram = NULL;
}

/* net/conn.h's fail_pending: every request waiting on c fails. */
static void conn_fail_pending(CmNetConn *nc, CmNetPool *pool, PyObject *tp, PyObject *msg,
                              int failed)
{
    CmMongoConnObject *c = (CmMongoConnObject *)nc;
    CmState *st = c->net.st;
    CmMongoReq **pend = c->pend;
    size_t n = c->npend;
    c->pend = NULL;
    c->npend = c->cap = 0;
    c->run = NULL; /* one of pend */
    /* a member of a seed list broke the connection: what was pending on it
     * goes once to the next server (finds, upserts and deletes can run
     * twice); not after a timeout (a stalled server may still run them) */
    CmMongoClientObject *cl = // borrowed
        pool ? (CmMongoClientObject *)((char *)pool - offsetof(CmMongoClientObject, pool)) : NULL;
    for (size_t i = 0; i < n && cl != NULL; i++)
        if (pend[i]->kind == CM_MONGO_INDEXES && pend[i]->fut == NULL)
            cl->indexes_later = CM_MONGO_INDEXES_WANTED; /* the next connection, then */
    int again = failed && cl != NULL && cl->nhosts > 1 && tp == st->mongo.ConnectionError && n > 0;
    char label[300];
    if (again) {
        Py_INCREF(cl);
        cm_mongo_host_label(cl, c->host, label, sizeof(label));
        cm_mongo_topology_failed(cl, c->host);
    }
    for (size_t i = 0; i < n; i++) {
        if (again)
            cm_mongo_topology_resend(cl, pend[i], c->net.loop, label, "connection lost");
        else
            cm_mongo_req_fail_msg(st, pend[i], tp, msg);
    }
    free(pend);
    if (again)
        Py_DECREF(cl);
}

static int64_t conn_deadline(const CmNetConn *nc)
{
    const CmMongoConnObject *c = (const CmMongoConnObject *)nc;
    int64_t at = c->net.state < CM_MONGO_READY ? c->connect_deadline : INT64_MAX;
    for (size_t i = 0; i < c->npend; i++)
        if (c->pend[i]->deadline < at)
            at = c->pend[i]->deadline;
    return at;
}

static void conn_expired(CmNetConn *nc)
{
    CmMongoConnObject *c = (CmMongoConnObject *)nc;
    CmMongoClientObject *cl = cm_mongo_conn_client(c); // borrowed
    char label[300];
    cm_mongo_conn_label(c, label, sizeof(label));
    if (c->net.state < CM_MONGO_READY) {
        if (cl != NULL)
            cm_mongo_topology_failed(cl, c->host);
        cm_mongo_conn_close_fmt(c, c->net.st->mongo.TimeoutError, 1, "mongodb %s: %s timed out",
                                label, c->net.tls != NULL ? "TLS handshake" : "connect");
    } else {
        cm_mongo_conn_close_fmt(c, c->net.st->mongo.TimeoutError, 1,
                                "mongodb %s: no reply within %d ms", label,
                                cl ? (int)(cl->timeout * 1000) : 0);
    }
}

static int conn_awaiting(const CmNetConn *nc)
{
    const CmMongoConnObject *c = (const CmMongoConnObject *)nc;
    return c->net.state >= CM_NET_OPEN && c->npend > 0;
}

static void stream_failed(CmNetConn *nc, const char *why);

void cm_mongo_conn_fail_io(CmMongoConnObject *c, const char *what, int err)
{
    char why[300];
    snprintf(why, sizeof(why), "%s: %s", what, strerror(err));
    stream_failed(&c->net, why);
}

static void close_run(CmMongoConnObject *c);
static CmMongoReq *pend_take(CmMongoConnObject *c, int32_t response_to);

/* Send what out holds; wait for writability when the kernel is full. */
void cm_mongo_conn_write(CmMongoConnObject *c)
{
    if (c->run != NULL)
        close_run(c);
    cm_net_stream_write(&c->net, &cm_mongo_stream_ops);
}

static void conn_schedule_flush(CmMongoConnObject *c)
{
    if (c->flush_scheduled || c->net.writing || c->net.state < CM_NET_OPEN)
        return;
    PyObject *h = cm_loop_call_soon(c->net.st, c->net.loop, c->flush_cb);
    if (h == NULL) {
        PyErr_Clear();
        cm_mongo_conn_write(c); /* no loop to wait for: send now */
        return;
    }
    Py_DECREF(h);
    c->flush_scheduled = 1;
}

static PyObject *conn_on_flush(PyObject *self, PyObject *Py_UNUSED(unused))
{
    CmMongoConnObject *c = (CmMongoConnObject *)self;
    c->flush_scheduled = 0;
    if (c->net.state >= CM_NET_OPEN && !c->net.writing)
        cm_mongo_conn_write(c);
    cm_mongo_transport_sent(c);
    Py_RETURN_NONE;
}

int cm_mongo_conn_add_pending(CmMongoConnObject *c, CmMongoReq *r)
{
    if (c->npend == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 16;
        CmMongoReq **p = realloc(c->pend, cap * sizeof(*p));
        if (p == NULL)
            return -1;
        c->pend = p;
        c->cap = cap;
    }
    c->pend[c->npend++] = r;
    return 0;
}

/* The pending request answered by response_to, taken off the list. */
static CmMongoReq *pend_take(CmMongoConnObject *c, int32_t response_to)
{
    for (size_t i = 0; i < c->npend; i++) {
        CmMongoReq *r = c->pend[i];
        if (r->id == response_to) {
            memmove(c->pend + i, c->pend + i + 1, (c->npend - i - 1) * sizeof(*c->pend));
            c->npend--;
            return r;
        }
    }
    return NULL;
}

/* Coalescing: GETs queued on a ready connection in one loop iteration
 * leave as one find of their keys ($in), the server's one query and one
 * reply for all of them (at most CM_MONGO_RUN_MAX keys). The run is written
 * out when another command is queued after it, or at the flush, so that
 * commands leave in the order they were queued. */
static void close_run(CmMongoConnObject *c)
{
    CmState *st = c->net.st;
    CmMongoReq *run = c->run;
    CmMongoClientObject *cl = cm_mongo_conn_client(c); // borrowed
    c->run = NULL;
    if (run == NULL || cl == NULL)
        return;
    PyObject *keys = PyList_New(run->nmembers);
    for (int i = 0; keys != NULL && i < run->nmembers; i++)
        PyList_SET_ITEM(keys, i, Py_NewRef(run->members[i]->key));
    run->keys = keys;
    if (keys == NULL || cm_mongo_req_encode(cl, run, &c->out, c->max_message) < 0) {
        PyObject *exc = cm_exc_take();
        pend_take(c, run->id);
        cm_mongo_req_fail(st, run, exc ? exc : st->mongo.Error);
        Py_XDECREF(exc);
    }
}

static void conn_add_get(CmMongoConnObject *c, CmMongoClientObject *cl, CmMongoReq *r)
{
    CmState *st = c->net.st;
    if (c->run != NULL && c->run->nmembers >= CM_MONGO_RUN_MAX)
        close_run(c);
    if (c->run == NULL) {
        CmMongoReq *run = cm_mongo_req_new(CM_MONGO_GETS);
        if (run == NULL) {
            PyErr_Clear();
            cm_mongo_req_fail(st, r, PyExc_MemoryError);
            return;
        }
        run->id = cm_mongo_next_id(cl);
        run->deadline = cm_now_ns() + (int64_t)(cl->timeout * 1e9);
        if (cm_mongo_conn_add_pending(c, run) < 0) {
            cm_mongo_req_free(run);
            cm_mongo_req_fail(st, r, PyExc_MemoryError);
            return;
        }
        c->run = run;
        if (cm_net_conn_arm(&c->net, run->deadline) < 0)
            PyErr_WriteUnraisable((PyObject *)c);
        conn_schedule_flush(c);
    }
    if (cm_mongo_req_add_member(c->run, r) < 0)
        cm_mongo_req_fail(st, r, PyExc_MemoryError);
}

void cm_mongo_conn_push(CmMongoConnObject *c, CmMongoReq *r)
{
    CmState *st = c->net.st;
    CmMongoClientObject *cl = cm_mongo_conn_client(c); // borrowed
    if (c->net.state == CM_NET_CLOSED || cl == NULL) {
        PyObject *msg = PyUnicode_FromString("mongodb connection closed");
        PyErr_Clear();
        cm_mongo_req_fail_msg(st, r, st->mongo.ConnectionError, msg);
        Py_XDECREF(msg);
        return;
    }
    if (r->kind == CM_MONGO_GET && c->net.state == CM_MONGO_READY) {
        conn_add_get(c, cl, r);
        return;
    }
    if (c->run != NULL)
        close_run(c);
    r->id = cm_mongo_next_id(cl);
    CmMongoBuf *b = c->net.state == CM_MONGO_READY ? &c->out : &c->held;
    if (cm_mongo_req_encode(cl, r, b, c->max_message) < 0) {
        PyObject *exc = cm_exc_take();
        cm_mongo_req_fail(st, r, exc ? exc : st->mongo.Error);
        Py_XDECREF(exc);
        return;
    }
    r->deadline = cm_now_ns() + (int64_t)(cl->timeout * 1e9);
    if (cm_mongo_conn_add_pending(c, r) < 0) {
        /* the message is in the buffer: its reply will find no request */
        cm_mongo_req_fail(st, r, PyExc_MemoryError);
        return;
    }
    if (cm_net_conn_arm(&c->net, r->deadline) < 0)
        PyErr_WriteUnraisable((PyObject *)c);
    if (c->net.state == CM_MONGO_READY)
        conn_schedule_flush(c);
}

static void conn_ready(CmMongoConnObject *c);

/* Close c with the exception being raised (its type and message): a
 * failed handshake step. Counted against the server (backoff). */
static void conn_close_exc(CmMongoConnObject *c)
{
    CmState *st = c->net.st;
    char label[300];
    PyObject *exc = cm_exc_take();
    PyObject *tp = exc && PyObject_TypeCheck(exc, (PyTypeObject *)st->mongo.Error)
                       ? (PyObject *)Py_TYPE(exc)
                       : st->mongo.ConnectionError;
    cm_mongo_conn_close_fmt(c, tp, 1, "mongodb %s: %S",
                            cm_mongo_conn_label(c, label, sizeof(label)), exc ? exc : Py_None);
    Py_XDECREF(exc);
}

/* The hello reply: ready (requests held meanwhile leave now), or the
 * server is not the primary (they go to the one it names). */
static void conn_hello(CmMongoConnObject *c, const uint8_t *body, size_t n)
{
    CmMongoClientObject *cl = cm_mongo_conn_client(c); // borrowed
    char *hint = NULL;
    char label[300];
    int mechs;
    int rc = cm_mongo_hello_parse(body, n, &c->max_message, &mechs, &hint);
    if (rc < 0) {
        PyObject *exc = cm_exc_take();
        cm_mongo_conn_close_fmt(c, c->net.st->mongo.ConnectionError, 1, "mongodb %s: %S",
                                cm_mongo_conn_label(c, label, sizeof(label)), exc ? exc : Py_None);
        Py_XDECREF(exc);
        return;
    }
    if (rc == 0) {
        cm_mongo_conn_label(c, label, sizeof(label));
        /* the requests waiting here are sent again to the primary (once) */
        CmMongoReq **pend = c->pend;
        size_t np = c->npend;
        PyObject *loop = Py_NewRef(c->net.loop);
        c->pend = NULL;
        c->npend = c->cap = 0;
        Py_XINCREF(cl);
        if (cl != NULL)
            cm_mongo_topology_moved(cl, c->host, hint);
        cm_mongo_conn_close_fmt(c, c->net.st->mongo.ConnectionError, 0,
                                "mongodb %s: not the writable primary", label);
        for (size_t i = 0; i < np; i++) {
            if (cl != NULL)
                cm_mongo_topology_resend(cl, pend[i], loop, label, "not the writable primary");
            else
                cm_mongo_req_fail(c->net.st, pend[i], c->net.st->mongo.ConnectionError);
        }
        free(pend);
        free(hint);
        Py_XDECREF(cl);
        Py_DECREF(loop);
        return;
    }
    free(hint);
    if (cl != NULL && cl->user != NULL) {
        if (cm_mongo_auth_start(c, mechs) < 0)
            conn_close_exc(c);
        else
            cm_mongo_conn_write(c);
        return;
    }
    conn_ready(c);
}

/* The indexes connect() could not create (the server was down) are
 * created now, before anything else on c; no one waits for them. */
static void conn_send_indexes(CmMongoConnObject *c)
{
    CmMongoClientObject *cl = cm_mongo_conn_client(c); // borrowed
    if (cl == NULL || cl->indexes_later != CM_MONGO_INDEXES_WANTED)
        return;
    CmMongoReq *r = cm_mongo_req_new(CM_MONGO_INDEXES);
    if (r == NULL) {
        PyErr_Clear(); /* the next connection tries */
        return;
    }
    r->id = cm_mongo_next_id(cl);
    r->deadline = cm_now_ns() + (int64_t)(cl->timeout * 1e9);
    if (cm_mongo_req_encode(cl, r, &c->out, c->max_message) < 0) {
        PyErr_Clear();
        cm_mongo_req_free(r);
        return;
    }
    if (cm_mongo_conn_add_pending(c, r) < 0) {
        /* its reply will find no request: the connection closes, and the
         * next one tries again */
        cm_mongo_req_free(r);
        return;
    }
    cl->indexes_later = CM_MONGO_INDEXES_SENT;
    if (cm_net_conn_arm(&c->net, r->deadline) < 0)
        PyErr_WriteUnraisable((PyObject *)c);
}

/* Requests held during the handshake leave now (after the indexes, when
 * they are still to be made). */
static void conn_ready(CmMongoConnObject *c)
{
    c->net.state = CM_MONGO_READY;
    if (c->net.pool != NULL)
        cm_net_pool_ok(c->net.pool);
    conn_send_indexes(c);
    if (cm_mongo_buf_pending(&c->held) > 0) {
        if (cm_mongo_buf_put(&c->out, c->held.data + c->held.pos, cm_mongo_buf_pending(&c->held)) <
            0) {
            cm_mongo_conn_fail_io(c, "out of memory", ENOMEM);
            return;
        }
        cm_mongo_buf_free(&c->held);
    }
    cm_mongo_conn_write(c);
}

/* One reply: the request it answers settled (or sent again to a new
 * primary). */
static void conn_reply(CmMongoConnObject *c, const CmMongoReply *m)
{
    CmState *st = c->net.st;
    char label[300];
    CmMongoReq *r = pend_take(c, m->response_to);
    if (r == NULL) {
        cm_mongo_conn_close_fmt(c, st->mongo.ConnectionError, 1,
                                "mongodb %s: reply to no request of ours (responseTo %d)",
                                cm_mongo_conn_label(c, label, sizeof(label)), (int)m->response_to);
        return;
    }
    if (r->kind == CM_MONGO_HELLO) {
        cm_mongo_req_free(r);
        conn_hello(c, m->body, m->body_len);
        return;
    }
    if (r->kind == CM_MONGO_SASL) {
        cm_mongo_req_free(r);
        int done = cm_mongo_auth_step(c, m->body, m->body_len);
        if (done < 0)
            conn_close_exc(c);
        else if (done == 1) {
            cm_scram_free(c->scram);
            c->scram = NULL;
            conn_ready(c);
        } else
            cm_mongo_conn_write(c);
        return;
    }
    CmMongoClientObject *cl = cm_mongo_conn_client(c); // borrowed: open
    int rc = cm_mongo_req_reply(cl, r, m->body, m->body_len);
    if (rc < 0) {
        cm_mongo_conn_close_fmt(c, st->mongo.ConnectionError, 1,
                                "mongodb %s: reply is not valid BSON",
                                cm_mongo_conn_label(c, label, sizeof(label)));
        return;
    }
    if (rc == 1) {
        /* not the primary any more: once more, to the new one */
        cm_mongo_conn_label(c, label, sizeof(label));
        PyObject *loop = Py_NewRef(c->net.loop);
        Py_INCREF(cl);
        cm_mongo_topology_moved(cl, c->host, NULL);
        cm_mongo_topology_resend(cl, r, loop, label, "not the writable primary");
        Py_DECREF(cl);
        Py_DECREF(loop);
    }
}

/* net/stream.h's hooks: out and in are c's buffers. */
static const void *stream_out(CmNetConn *nc, size_t *n)
{
    CmMongoConnObject *c = (CmMongoConnObject *)nc;
    *n = cm_mongo_buf_pending(&c->out);
    return c->out.data + c->out.pos;
}

static void stream_sent(CmNetConn *nc, size_t n)
{
    cm_mongo_buf_consume(&((CmMongoConnObject *)nc)->out, n);
}

static void *stream_room(CmNetConn *nc, size_t *n)
{
    CmMongoConnObject *c = (CmMongoConnObject *)nc;
    if (cm_mongo_buf_reserve(&c->in, 65536) < 0)
        return NULL;
    *n = c->in.cap - c->in.len;
    return c->in.data + c->in.len;
}

/* Parse before buffering more than one reply may hold. */
static int stream_took(CmNetConn *nc, const void *p, size_t n)
{
    CmMongoConnObject *c = (CmMongoConnObject *)nc;
    (void)p; /* read into in by stream_room */
    c->in.len += n;
    CmMongoReply m;
    const char *err = NULL;
    return cm_mongo_reply_parse(c->in.data + c->in.pos, cm_mongo_buf_pending(&c->in),
                                c->max_message, &m, &err) != 0;
}

/* Answer every complete reply. */
static void stream_parse(CmNetConn *nc)
{
    CmMongoConnObject *c = (CmMongoConnObject *)nc;
    char label[300];
    while (c->net.state >= CM_NET_OPEN && cm_mongo_buf_pending(&c->in) > 0) {
        CmMongoReply m;
        const char *err = NULL;
        long got = cm_mongo_reply_parse(c->in.data + c->in.pos, cm_mongo_buf_pending(&c->in),
                                        c->max_message, &m, &err);
        if (got == 0)
            break;
        if (got < 0) {
            cm_mongo_conn_close_fmt(c, c->net.st->mongo.ConnectionError, 1,
                                    "mongodb %s: invalid reply: %s",
                                    cm_mongo_conn_label(c, label, sizeof(label)), err);
            return;
        }
        /* the reply points into in: it is consumed once answered */
        conn_reply(c, &m);
        if (c->net.state == CM_NET_CLOSED)
            return;
        cm_mongo_buf_consume(&c->in, (size_t)got);
    }
    cm_mongo_buf_compact(&c->in);
}

/* net/stream.h's failed. A failed connect passes the turn to the next
 * seed. */
static void stream_failed(CmNetConn *nc, const char *why)
{
    CmMongoConnObject *c = (CmMongoConnObject *)nc;
    char label[300];
    if (c->net.state < CM_MONGO_READY && cm_mongo_conn_client(c) != NULL)
        cm_mongo_topology_failed(cm_mongo_conn_client(c), c->host);
    cm_mongo_conn_close_fmt(c, c->net.st->mongo.ConnectionError, 1, "mongodb %s: %s",
                            cm_mongo_conn_label(c, label, sizeof(label)), why);
}

const CmNetStreamOps cm_mongo_stream_ops = {
    .out = stream_out,
    .sent = stream_sent,
    .room = stream_room,
    .took = stream_took,
    .parse = stream_parse,
    .failed = stream_failed,
};

/* net/conn.h's io: the connect (and TLS handshake) finished or failed,
 * the kernel took more, or replies came. */
static void conn_io(CmNetConn *nc, int readable, int writable)
{
    CmMongoConnObject *c = (CmMongoConnObject *)nc;
    if (c->net.state == CM_NET_CONNECTING) {
        if (c->net.tls != NULL)
            cm_mongo_conn_handshake(c);
        else if (writable && cm_net_stream_connected(&c->net, &cm_mongo_stream_ops))
            cm_mongo_conn_established(c);
        return;
    }
    if (writable && c->net.state >= CM_NET_OPEN)
        cm_mongo_conn_write(c);
    if (readable && c->net.state >= CM_NET_OPEN)
        cm_net_stream_read(&c->net, &cm_mongo_stream_ops);
}

static const CmNetOps conn_ops = {
    .io = conn_io,
    .deadline = conn_deadline,
    .expired = conn_expired,
    .awaiting = conn_awaiting,
    .release = conn_release,
    .fail_pending = conn_fail_pending,
};

CmMongoConnObject *cm_mongo_conn_open(CmMongoClientObject *cl, PyObject *loop)
{
    CmState *st = cl->st;
    CmMongoConnObject *c = PyObject_GC_New(CmMongoConnObject, (PyTypeObject *)st->mongo.ConnType);
    if (c == NULL)
        return NULL;
    cm_net_conn_init(&c->net, st, &conn_ops, loop);
    c->net.pool = &cl->pool; /* added to it by the caller */
    c->host = cl->primary;
    c->flush_scheduled = 0;
    c->connect_deadline = cm_now_ns() + (int64_t)(cl->connect_timeout * 1e9);
    c->max_message = CM_MONGO_MAX_MESSAGE;
    c->flush_cb = NULL;
    c->resolve = NULL;
    memset(&c->out, 0, sizeof(c->out));
    memset(&c->held, 0, sizeof(c->held));
    memset(&c->in, 0, sizeof(c->in));
    c->pend = NULL;
    c->npend = c->cap = 0;
    c->scram = NULL;
    c->run = NULL;
    c->sasl_mech = c->sasl_step = 0;
    PyObject_GC_Track(c);
    if ((c->flush_cb = PyCFunction_New(&on_flush_def, (PyObject *)c)) == NULL)
        goto fail;
    if (cm_net_conn_arm(&c->net, c->connect_deadline) < 0 || cm_mongo_conn_start(c, loop) < 0)
        goto fail;
    return c;
fail:
    c->net.pool = NULL; /* not in the pool yet */
    cm_net_conn_close(&c->net, st->mongo.ConnectionError, NULL, 0);
    Py_DECREF(c);
    return NULL;
}

static int conn_traverse(CmMongoConnObject *c, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(c));
    Py_VISIT(c->flush_cb);
    Py_VISIT(c->resolve);
    for (size_t i = 0; i < c->npend; i++) {
        int rc = cm_mongo_req_traverse(c->pend[i], visit, arg);
        if (rc)
            return rc;
    }
    return cm_net_conn_traverse(&c->net, visit, arg);
}

static int conn_clear(CmMongoConnObject *c)
{
    Py_CLEAR(c->flush_cb);
    Py_CLEAR(c->net.timer.handle);
    Py_CLEAR(c->resolve);
    return 0;
}

static void conn_dealloc(CmMongoConnObject *c)
{
    PyObject_GC_UnTrack(c);
    cm_mongo_buf_free(&c->out);
    cm_mongo_buf_free(&c->held);
    cm_mongo_buf_free(&c->in);
    cm_scram_free(c->scram);
    for (size_t i = 0; i < c->npend; i++)
        cm_mongo_req_fail(c->net.st, c->pend[i], c->net.st->mongo.ConnectionError);
    free(c->pend);
    conn_clear(c);
    cm_net_conn_dealloc(&c->net);
}

static PyType_Slot conn_slots[] = {
    {Py_tp_traverse, conn_traverse},
    {Py_tp_clear, conn_clear},
    {Py_tp_dealloc, conn_dealloc},
    {Py_tp_doc, "A connection of a MongoDB storage (internal)."},
    {0, NULL},
};

PyType_Spec cm_mongo_conn_spec = {
    .name = "cacheme._core._MongoConnection",
    .basicsize = sizeof(CmMongoConnObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = conn_slots,
};
#endif
