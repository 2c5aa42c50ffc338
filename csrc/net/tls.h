/* TLS on a net/ connection (net/conn.h), with OpenSSL, non-blocking.
 *
 * A storage holds one CmTlsContext (an SSL_CTX: the CAs to trust, a client
 * certificate, TLS 1.2 at least, verification on by default) and each of
 * its connections a session of its own (c->tls), started once the TCP
 * connect is done and driven by the driver's io hook until the handshake
 * completes (cm_tls_handshake sets the watches OpenSSL waits for), all
 * inside the driver's connect deadline.
 *
 * Reads and writes go through cm_net_recv / cm_net_send: plain recv/send
 * without TLS (one predictable branch on the hot path), SSL_read/SSL_write
 * with it. They return what recv/send return (-1 with errno EAGAIN when the
 * session must wait), so a driver reads and writes the same way on both.
 * Differences a driver must know:
 *   - a short TLS read ends a record, not the socket's data: keep reading
 *     until EAGAIN. Data OpenSSL took off the socket but has not handed
 *     out (cm_net_pending) will not make the fd readable again, which the
 *     loop's watch and the busy poll both rely on.
 *   - a read may need the socket writable (a TLS 1.3 key update, a
 *     renegotiation) and a write readable. The session then waits for the
 *     other direction: net/conn.c watches that instead, and reports its
 *     readiness to the driver as the readiness it asked for, so the driver
 *     simply retries what returned EAGAIN.
 *   - errors: cm_net_strerror names the TLS failure (a certificate that
 *     did not verify, with X509_verify_cert_error_string's reason).
 *
 * Close is quiet (no close_notify, nothing waited for), so freeing a
 * session never touches its socket: also after fork, where the socket is
 * the parent's. */
#ifndef CM_NET_TLS_H
#define CM_NET_TLS_H
#include "state.h"

#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "net/conn.h"

struct ssl_ctx_st;
struct bio_method_st;

/* What a storage's TLS options say (strings borrowed for the call). */
typedef struct {
    const char *ca_certs; /* a PEM file of CAs, or NULL */
    const char *ca_path;  /* a directory of hashed CA files, or NULL */
    const char *certfile; /* the client's certificate chain (PEM), or NULL */
    const char *keyfile;  /* its key (PEM; NULL: in certfile) */
    int verify;           /* 0: no verification at all; else the server's certificate */
    int check_hostname;   /* the certificate must name the host (or IP) connected to */
    /* what the storage calls ca_certs and certfile in its errors (NULL:
     * redis-py's ssl_ca_certs and ssl_certfile) */
    const char *ca_certs_name, *certfile_name;
} CmTlsOptions;

/* A storage's TLS settings; ctx NULL: no TLS. */
typedef struct {
    struct ssl_ctx_st *ctx;
    struct bio_method_st *bio; /* borrowed: the sessions' socket BIO (no SIGPIPE) */
    int check_host;
} CmTlsContext;

/* c->tls_wait: the session waits for the other direction. */
enum { CM_TLS_READ_WANTS_WRITE = 1, CM_TLS_WRITE_WANTS_READ = 2 };

/* Set up t from o. -1 with ValueError naming owner and the option that
 * failed (a CA file that cannot be loaded, a key that does not match). */
int cm_tls_context_init(CmTlsContext *t, const CmTlsOptions *o, const char *owner);
void cm_tls_context_fini(CmTlsContext *t);

/* Start a session on c's connected socket for host (a name: SNI and name
 * check; an IP literal: IP check). -1 with an exception. */
int cm_tls_start(CmNetConn *c, const CmTlsContext *t, const char *host);
/* One handshake step: 1 done, 0 waiting (c's watches set for it), -1
 * failed (cm_net_strerror says why). */
int cm_tls_handshake(CmNetConn *c);
/* Free c's session, without a word to the server. */
void cm_tls_free(CmNetConn *c);

ssize_t cm_tls_recv(CmNetConn *c, void *buf, size_t n);
ssize_t cm_tls_send(CmNetConn *c, const void *buf, size_t n);
int cm_tls_pending(const CmNetConn *c);
const char *cm_tls_strerror(const CmNetConn *c, int err);

/* recv/send on c's transport: n > 0 bytes, 0 the server closed (recv), -1
 * with errno (EAGAIN: wait for c's watches). */
static inline ssize_t cm_net_recv(CmNetConn *c, void *buf, size_t n)
{
    if (c->tls == NULL)
        return recv(c->fd, buf, n, 0);
    return cm_tls_recv(c, buf, n);
}

static inline ssize_t cm_net_send(CmNetConn *c, const void *buf, size_t n)
{
    if (c->tls == NULL)
        return send(c->fd, buf, n, MSG_NOSIGNAL);
    return cm_tls_send(c, buf, n);
}

/* 1 when bytes already read off the socket wait in the transport (TLS). */
static inline int cm_net_pending(const CmNetConn *c) { return c->tls != NULL && cm_tls_pending(c); }

/* Why the last recv/send (or handshake) on c failed, errno err. */
static inline const char *cm_net_strerror(const CmNetConn *c, int err)
{
    return c->tls == NULL ? strerror(err) : cm_tls_strerror(c, err);
}
#endif
