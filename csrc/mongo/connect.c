/* Opening a MongoDB connection: the host's lookup (a name, on the loop's
 * executor: loop/resolve.h), the non-blocking TCP connect, the TLS
 * handshake (net/stream.h, when the storage has a TLS context), all within
 * the connect deadline; then the hello (conn.c takes its reply). */
#ifdef CM_HAVE_BSON
#include "mongo/mongo.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/exc.h"
#include "loop/resolve.h"
#include "net/stream.h"

static PyObject *conn_on_resolved(PyObject *self, PyObject *task);
static PyMethodDef on_resolved_def = {"_on_resolved", conn_on_resolved, METH_O, NULL};

/* Connected: say hello first; requests wait in held until it is answered. */
static void conn_connected(CmMongoConnObject *c)
{
    CmMongoClientObject *cl = cm_mongo_conn_client(c); // borrowed
    CmMongoReq *r = cm_mongo_req_new(CM_MONGO_HELLO);
    c->net.state = CM_MONGO_HANDSHAKE;
    if (r != NULL && cl != NULL) {
        r->id = cm_mongo_next_id(cl);
        r->deadline = c->connect_deadline;
    }
    if (r == NULL || cl == NULL || cm_mongo_hello_encode(cl, &c->out, r->id) < 0 ||
        cm_mongo_conn_add_pending(c, r) < 0 || cm_net_conn_watch(&c->net, 1, 0) < 0) {
        cm_mongo_req_free(r);
        PyErr_Clear();
        cm_mongo_conn_fail_io(c, "handshake failed", ENOMEM);
        return;
    }
    cm_mongo_conn_write(c);
}

/* A TLS handshake step: the hello once it is done. */
void cm_mongo_conn_handshake(CmMongoConnObject *c)
{
    if (cm_net_stream_handshake(&c->net, &cm_mongo_stream_ops) > 0)
        conn_connected(c);
}

/* The TCP connect is done: TLS first when the storage wants it. */
void cm_mongo_conn_established(CmMongoConnObject *c)
{
    CmMongoClientObject *cl = cm_mongo_conn_client(c); // borrowed: connecting, so in its pool
    if (cl == NULL)
        return;
    if (cm_net_stream_start_tls(&c->net, &cm_mongo_stream_ops, &cl->tls, cl->hosts[c->host].host) >
        0)
        conn_connected(c);
}

/* A numeric address (no lookup) connected to without blocking. -1 with
 * errno. */
static int sock_connect(const char *ip, int port, int *pending)
{
    struct addrinfo hints, *res = NULL;
    char sport[16];
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    snprintf(sport, sizeof(sport), "%d", port);
    *pending = 0;
    int rc = getaddrinfo(ip, sport, &hints, &res);
    if (rc != 0) {
        errno = rc == EAI_SYSTEM ? errno : EHOSTUNREACH;
        return -1;
    }
    int fd =
        socket(res->ai_family, res->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, res->ai_protocol);
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, res->ai_addr, res->ai_addrlen) < 0) {
            if (errno == EINPROGRESS)
                *pending = 1;
            else {
                int err = errno;
                close(fd);
                fd = -1;
                errno = err;
            }
        }
    }
    freeaddrinfo(res);
    return fd;
}

/* Connect to ip (numeric): at once, or watched for writability. -1 with
 * errno. */
static int conn_connect_ip(CmMongoConnObject *c, const char *ip, int port)
{
    int pending;
    int fd = sock_connect(ip, port, &pending);
    if (fd < 0)
        return -1;
    c->net.fd = fd;
    if (pending) {
        if (cm_net_conn_watch(&c->net, 0, 1) < 0) {
            PyErr_Clear();
            errno = EBADF;
            return -1;
        }
    } else
        cm_mongo_conn_established(c);
    return 0;
}

static PyObject *conn_on_resolved(PyObject *self, PyObject *task)
{
    CmMongoConnObject *c = (CmMongoConnObject *)self;
    if (c->net.state != CM_NET_CONNECTING || c->resolve != task)
        Py_RETURN_NONE; /* closed (timed out) meanwhile: the task was cancelled */
    Py_INCREF(c);
    Py_CLEAR(c->resolve);
    CmMongoClientObject *cl = cm_mongo_conn_client(c); // borrowed: connecting, so in its pool
    PyObject *res = cm_resolve_result(task);
    int err = EHOSTUNREACH;
    if (res != NULL && PyList_Check(res) && PyList_GET_SIZE(res) == 1 && cl != NULL) {
        PyObject *ips = PyList_GET_ITEM(res, 0); // borrowed
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(ips); i++) {
            const char *ip = PyUnicode_Check(PyList_GET_ITEM(ips, i))
                                 ? PyUnicode_AsUTF8(PyList_GET_ITEM(ips, i))
                                 : NULL;
            if (ip == NULL) {
                PyErr_Clear();
                continue;
            }
            if (conn_connect_ip(c, ip, cl->hosts[c->host].port) == 0) {
                err = 0;
                break;
            }
            err = errno;
        }
    }
    if (res == NULL) {
        PyObject *exc = cm_exc_take();
        char label[300];
        if (cl != NULL)
            cm_mongo_topology_failed(cl, c->host);
        cm_mongo_conn_close_fmt(c, c->net.st->mongo.ConnectionError, 1,
                                "mongodb %s: cannot resolve the host: %S",
                                cm_mongo_conn_label(c, label, sizeof(label)), exc ? exc : Py_None);
        Py_XDECREF(exc);
    } else if (err != 0 && c->net.state != CM_NET_CLOSED)
        cm_mongo_conn_fail_io(c, "connect failed", err);
    Py_XDECREF(res);
    Py_DECREF(c);
    Py_RETURN_NONE;
}

int cm_mongo_conn_start(CmMongoConnObject *c, PyObject *loop)
{
    CmMongoClientObject *cl = cm_mongo_conn_client(c); // borrowed: in its pool while connecting
    const CmMongoHost *h = &cl->hosts[c->host];
    char label[300];
    if (cm_resolve_needed(h->host)) {
        /* a name: looked up in the loop's executor; the connect deadline
         * covers the lookup */
        PyObject *cb = PyCFunction_New(&on_resolved_def, (PyObject *)c);
        PyObject *hosts = cb ? Py_BuildValue("[s]", h->host) : NULL;
        c->resolve = hosts ? cm_resolve_start(loop, hosts, cb) : NULL;
        Py_XDECREF(hosts);
        Py_XDECREF(cb);
        if (c->resolve == NULL)
            return -1;
        return 0;
    }
    if (conn_connect_ip(c, h->host, h->port) < 0) {
        cm_mongo_topology_failed(cl, c->host);
        PyErr_Format(c->net.st->mongo.ConnectionError, "mongodb %s: connect failed: %s",
                     cm_mongo_host_label(cl, c->host, label, sizeof(label)), strerror(errno));
        return -1;
    }
    return 0;
}
#endif
