/* Opening a Redis connection: the host's lookup (on the loop's executor),
 * the non-blocking TCP connect, and the TLS handshake (rediss://, on
 * net/tls.h), all within the connect deadline; then conn.c's
 * cm_redis_conn_ready. */
#include "redis/internal.h"
#include <errno.h>
#include <netdb.h>
#include <string.h>
#include <sys/socket.h>

#include "loop/resolve.h"
#include "net/stream.h"

/* A TLS handshake step (net/stream.h): ready once it is done. */
void cm_redis_conn_handshake(CmRedisConnObject *c)
{
    if (cm_net_stream_handshake(&c->net, &cm_redis_stream_ops) > 0)
        cm_redis_conn_ready(c);
}

/* The TCP connect is done: the TLS handshake starts, or the connection is
 * ready. */
static void conn_established(CmRedisConnObject *c)
{
    CmRedisPool *p = cm_redis_conn_pool(c); // borrowed: open, so in its pool
    if (cm_net_stream_start_tls(&c->net, &cm_redis_stream_ops, &p->cfg->tls, p->host) > 0)
        cm_redis_conn_ready(c);
}

/* Open the socket to the pool's addresses (resolved, or an IP literal or a
 * path) and connect: at once (ready) or watched for writability. -1 with an
 * exception. */
int cm_redis_conn_connect(CmRedisConnObject *c)
{
    CmState *st = c->net.st;
    CmRedisPool *p = cm_redis_conn_pool(c); // borrowed
    int pending;
    c->net.fd = cm_redis_sock_connect(p, &pending);
    if (c->net.fd < 0) {
        PyErr_Format(st->redis.ConnectionError, "redis %s: connect failed: %s", p->label,
                     strerror(errno));
        return -1;
    }
    if (pending) {
        if (cm_net_conn_watch(&c->net, 0, 1) < 0 ||
            cm_net_conn_arm(&c->net, c->connect_deadline) < 0)
            return -1;
    } else {
        conn_established(c);
        if (c->net.state == CONN_CLOSED) {
            PyErr_Format(st->redis.ConnectionError, "redis %s: connection failed", p->label);
            return -1;
        }
    }
    return 0;
}

/* Writable while connecting: the TCP connect finished, or failed. */
void cm_redis_conn_connected(CmRedisConnObject *c)
{
    if (cm_net_stream_connected(&c->net, &cm_redis_stream_ops))
        conn_established(c);
}

/* The host's lookup is done (on the loop): connect to its addresses, or
 * fail the connection with the lookup's error. */
static PyObject *conn_on_resolved(PyObject *self, PyObject *task)
{
    CmRedisConnObject *c = (CmRedisConnObject *)self;
    if (c->net.state != CONN_CONNECTING || c->resolve != task)
        Py_RETURN_NONE; /* closed (timed out) meanwhile: the task was cancelled */
    Py_INCREF(c);
    Py_CLEAR(c->resolve);
    CmRedisPool *p = cm_redis_conn_pool(c); // borrowed: open, so in its pool
    PyObject *res = cm_resolve_result(task);
    int looked_up = res != NULL;
    if (res != NULL && PyList_Check(res) && PyList_GET_SIZE(res) == 1) {
        PyObject *ips = PyList_GET_ITEM(res, 0); // borrowed
        struct addrinfo *addrs = NULL, **tail = &addrs;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(ips); i++) {
            const char *ip = PyUnicode_AsUTF8(PyList_GET_ITEM(ips, i));
            if (ip == NULL)
                break;
            if (cm_redis_addrs_add(&tail, ip, p->port) < 0)
                PyErr_SetFromErrno(PyExc_OSError);
            if (PyErr_Occurred())
                break;
        }
        if (!PyErr_Occurred()) {
            cm_redis_pool_forget_addrs(p);
            p->addrs = addrs;
            if (cm_redis_conn_connect(c) < 0) /* the message names the server */
                looked_up = 2;
        } else
            cm_redis_addrs_free(addrs);
    } else if (res != NULL)
        PyErr_SetString(PyExc_TypeError, "resolve: a list of one list expected");
    Py_XDECREF(res);
    if (PyErr_Occurred()) {
        PyObject *exc = cm_exc_take();
        if (c->net.state != CONN_CLOSED && looked_up == 2)
            cm_redis_conn_close_fmt(c, c->net.st->redis.ConnectionError, 1, "%S", exc);
        else if (c->net.state != CONN_CLOSED)
            cm_redis_conn_close_fmt(c, c->net.st->redis.ConnectionError, 1,
                                    "redis %s: cannot resolve %s: %S", cm_redis_conn_label(c),
                                    p->host, exc);
        Py_XDECREF(exc);
    }
    Py_DECREF(c);
    Py_RETURN_NONE;
}

static PyMethodDef on_resolved_def = {"_on_resolved", conn_on_resolved, METH_O, NULL};

int cm_redis_conn_lookup(CmRedisConnObject *c, PyObject *loop)
{
    CmRedisPool *p = cm_redis_conn_pool(c); // borrowed
    /* looked up in the loop's executor, then conn_on_resolved connects;
     * the connect deadline covers the lookup */
    PyObject *cb = PyCFunction_New(&on_resolved_def, (PyObject *)c);
    PyObject *hosts = cb ? Py_BuildValue("[s]", p->host) : NULL;
    c->resolve = hosts ? cm_resolve_start(loop, hosts, cb) : NULL;
    Py_XDECREF(hosts);
    Py_XDECREF(cb);
    if (c->resolve == NULL)
        return -1;
    p->resolves++;
    return cm_net_conn_arm(&c->net, c->connect_deadline);
}
