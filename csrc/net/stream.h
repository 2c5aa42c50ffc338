/* The write and read loops of a connection that speaks a byte-stream
 * protocol over net/tls.h's transport (Redis's RESP, MongoDB's OP_MSG),
 * written once for both, and the TLS handshake step between the TCP
 * connect and the protocol's first words.
 *
 * The driver keeps its own buffers and parser and plugs them in with a
 * CmNetStreamOps table; the loops own the rest: EINTR, EAGAIN and which
 * direction to watch for, partial TLS records (a TLS read is drained to
 * EAGAIN, and what OpenSSL holds after the parse is read before returning:
 * net/tls.h), a read that stops to parse before buffering more than one
 * reply may hold, and naming a failure for the driver to close with. */
#ifndef CM_NET_STREAM_H
#define CM_NET_STREAM_H
#include "state.h"

#include <stddef.h>

#include "net/conn.h"
#include "net/tls.h"

typedef struct {
    /* The bytes waiting to be sent (*n of them), or NULL / *n 0: none. */
    const void *(*out)(CmNetConn *c, size_t *n);
    /* n of them went. */
    void (*sent)(CmNetConn *c, size_t n);
    /* Where the next read goes (*n bytes of room, at least 1), or NULL
     * when out of memory. NULL hook: a 64 KiB buffer of the read loop's,
     * handed to took. */
    void *(*room)(CmNetConn *c, size_t *n);
    /* n bytes arrived at p. 0: read on; 1: stop and parse first (the
     * buffer holds a reply, or as much as one may). It may close c. */
    int (*took)(CmNetConn *c, const void *p, size_t n);
    /* Answer what has arrived; it may close c. */
    void (*parse)(CmNetConn *c);
    /* c failed: why, a message such as "read failed: Connection reset by
     * peer" or "TLS certificate verify failed: ...". Close c, counted as a
     * failure. */
    void (*failed)(CmNetConn *c, const char *why);
} CmNetStreamOps;

/* Send what ops->out holds while c is open; when the kernel is full, c is
 * watched for writing as well until it drains, and then no longer. */
void cm_net_stream_write(CmNetConn *c, const CmNetStreamOps *ops);
/* c is readable: read what came (ops->took), answer it (ops->parse), and
 * again while TLS holds bytes read off the socket. */
void cm_net_stream_read(CmNetConn *c, const CmNetStreamOps *ops);

/* The TCP connect of c (CM_NET_CONNECTING, c->fd set) finished or failed
 * (c became writable). 1: connected; 0: failed (ops->failed was told,
 * c is closed). */
int cm_net_stream_connected(CmNetConn *c, const CmNetStreamOps *ops);
/* The TCP connect is done: start TLS on c when t has a context (host: the
 * name or IP to check the certificate against), else nothing to do.
 * 1: the transport is up; 0: the handshake runs (finish it with
 * cm_net_stream_handshake from the io hook while c->tls is set and c is
 * connecting); -1: failed (ops->failed was told). */
int cm_net_stream_start_tls(CmNetConn *c, const CmNetStreamOps *ops, const CmTlsContext *t,
                            const char *host);
/* One handshake step: 1 done, 0 waiting, -1 failed (ops->failed was told). */
int cm_net_stream_handshake(CmNetConn *c, const CmNetStreamOps *ops);
#endif
