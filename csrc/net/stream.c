/* The write and read loops of a byte-stream connection (net/stream.h). */
#include "net/stream.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "base/exc.h"

#define STREAM_CHUNK 65536

/* ops->failed with "what: why" (what NULL: why alone). */
static void failed(CmNetConn *c, const CmNetStreamOps *ops, const char *what, const char *why)
{
    char msg[400];
    if (what != NULL && why != NULL)
        snprintf(msg, sizeof(msg), "%s: %s", what, why);
    else
        snprintf(msg, sizeof(msg), "%s", what ? what : why);
    ops->failed(c, msg);
}

/* failed() with the exception being raised as why (a watch that could
 * not be set: the loop is closing). */
static void failed_exc(CmNetConn *c, const CmNetStreamOps *ops, const char *what)
{
    PyObject *exc = cm_exc_take();
    PyObject *s = exc ? PyObject_Str(exc) : NULL;
    const char *why = s ? PyUnicode_AsUTF8(s) : NULL;
    PyErr_Clear();
    failed(c, ops, what, why ? why : "cannot watch the socket");
    Py_XDECREF(s);
    Py_XDECREF(exc);
}

void cm_net_stream_write(CmNetConn *c, const CmNetStreamOps *ops)
{
    for (;;) {
        size_t n = 0;
        const void *p = c->state >= CM_NET_OPEN ? ops->out(c, &n) : NULL;
        if (p == NULL || n == 0)
            break;
        ssize_t k = cm_net_send(c, p, n);
        if (k > 0) {
            ops->sent(c, (size_t)k);
            continue;
        }
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (cm_net_conn_watch(c, 1, 1) < 0)
                failed_exc(c, ops, "write failed");
            return;
        }
        failed(c, ops, "write failed", cm_net_strerror(c, k < 0 ? errno : EPIPE));
        return;
    }
    if (c->writing && c->state >= CM_NET_OPEN && cm_net_conn_watch(c, 1, 0) < 0)
        PyErr_WriteUnraisable((PyObject *)c);
}

void cm_net_stream_read(CmNetConn *c, const CmNetStreamOps *ops)
{
    char chunk[STREAM_CHUNK];
    const int tls = c->tls != NULL; /* the session lives as long as c is open */
    Py_INCREF(c);
again:
    while (c->state >= CM_NET_OPEN) {
        size_t room = sizeof(chunk);
        void *buf = ops->room != NULL ? ops->room(c, &room) : chunk;
        if (buf == NULL) {
            failed(c, ops, "read failed", strerror(ENOMEM));
            goto done;
        }
        ssize_t n = cm_net_recv(c, buf, room);
        if (n > 0) {
            /* a plain socket is drained by a short read; TLS only by EAGAIN */
            if (ops->took(c, buf, (size_t)n) != 0 || ((size_t)n < room && !tls))
                break;
            continue;
        }
        if (n == 0) {
            failed(c, ops, "connection closed by server", NULL);
            goto done;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        failed(c, ops, "read failed", cm_net_strerror(c, errno));
        goto done;
    }
    if (c->state >= CM_NET_OPEN)
        ops->parse(c);
    if (tls && c->state >= CM_NET_OPEN && cm_net_pending(c))
        goto again;
done:
    Py_DECREF(c);
}

int cm_net_stream_connected(CmNetConn *c, const CmNetStreamOps *ops)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err == 0)
        return 1;
    failed(c, ops, "connect failed", strerror(err));
    return 0;
}

int cm_net_stream_handshake(CmNetConn *c, const CmNetStreamOps *ops)
{
    int rc = cm_tls_handshake(c);
    if (rc < 0)
        failed(c, ops, NULL, cm_net_strerror(c, EPROTO)); /* it says "TLS ..." */
    return rc;
}

int cm_net_stream_start_tls(CmNetConn *c, const CmNetStreamOps *ops, const CmTlsContext *t,
                            const char *host)
{
    if (t == NULL || t->ctx == NULL)
        return 1;
    if (cm_tls_start(c, t, host) < 0) {
        failed_exc(c, ops, "TLS failed");
        return -1;
    }
    return cm_net_stream_handshake(c, ops);
}
