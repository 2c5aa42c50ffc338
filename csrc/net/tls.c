/* TLS sessions on net/ connections with OpenSSL (see net/tls.h). */
#include "net/tls.h"
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "base/exc.h"

struct CmTlsSession {
    SSL *ssl;
    int handshaken;
    char err[200]; /* why the last operation failed, "" if it did not */
};

/* The socket BIO of OpenSSL, but for its writes: send with MSG_NOSIGNAL, as
 * on a plain socket, so that writing to a server gone away is EPIPE, not a
 * SIGPIPE for a process that has not ignored it (Python ignores it, an
 * embedding program may not). */
static int nosig_write(BIO *b, const char *buf, int len)
{
    int fd = -1;
    BIO_get_fd(b, &fd);
    int n = (int)send(fd, buf, (size_t)len, MSG_NOSIGNAL);
    BIO_clear_retry_flags(b);
    if (n <= 0 && BIO_sock_should_retry(n))
        BIO_set_retry_write(b);
    return n;
}

/* Made once per process and never freed: a table of C functions (no
 * Python object), which every BIO made from it points to for its life. */
static BIO_METHOD *nosig_method;
static pthread_once_t nosig_once = PTHREAD_ONCE_INIT;

static void nosig_method_init(void)
{
    const BIO_METHOD *sock = BIO_s_socket(); // borrowed: OpenSSL's own
    BIO_METHOD *m = BIO_meth_new(BIO_TYPE_SOCKET, "cacheme socket");
    if (m == NULL || BIO_meth_set_write(m, nosig_write) != 1 ||
        BIO_meth_set_read(m, BIO_meth_get_read(sock)) != 1 ||
        BIO_meth_set_puts(m, BIO_meth_get_puts(sock)) != 1 ||
        BIO_meth_set_ctrl(m, BIO_meth_get_ctrl(sock)) != 1 ||
        BIO_meth_set_create(m, BIO_meth_get_create(sock)) != 1 ||
        BIO_meth_set_destroy(m, BIO_meth_get_destroy(sock)) != 1) {
        BIO_meth_free(m);
        return;
    }
    nosig_method = m;
}

/* The reason of the newest error on OpenSSL's queue, or fallback. */
static const char *queue_reason(const char *fallback)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : fallback;
}

/* The oldest one: loading a file stacks the library's own reasons on the
 * first one ("no such file", "bad decrypt"). */
static const char *first_reason(const char *fallback)
{
    unsigned long e = ERR_peek_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : fallback;
}

/* An encrypted key file fails to load instead of OpenSSL's default asking
 * for its pass phrase on the terminal. */
static int no_pass_phrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return 0;
}

static int context_fail(CmTlsContext *t, SSL_CTX *ctx, const char *owner, const char *what,
                        const char *path)
{
    /* a file that cannot be read says so; OpenSSL's reason is then vague */
    const char *why = path != NULL && access(path, R_OK) != 0
                          ? strerror(errno)
                          : first_reason("unknown OpenSSL error");
    PyErr_Format(PyExc_ValueError, "%s: %s %s cannot be used: %s", owner, what, path, why);
    ERR_clear_error();
    SSL_CTX_free(ctx);
    t->bio = NULL;
    return -1;
}

int cm_tls_context_init(CmTlsContext *t, const CmTlsOptions *o, const char *owner)
{
    t->ctx = NULL;
    t->bio = NULL;
    t->check_host = 0;
    if (o->keyfile != NULL && o->certfile == NULL) {
        PyErr_Format(PyExc_ValueError, "%s: ssl_keyfile needs ssl_certfile", owner);
        return -1;
    }
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    pthread_once(&nosig_once, nosig_method_init);
    if (ctx != NULL && (t->bio = nosig_method) == NULL) {
        SSL_CTX_free(ctx);
        ctx = NULL;
    }
    if (ctx == NULL) {
        PyErr_Format(PyExc_MemoryError, "%s: no TLS context: %s", owner, queue_reason("?"));
        ERR_clear_error();
        return -1;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* SSL_write may send part of a buffer, and is retried on the same bytes
     * wherever the output buffer has moved to */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_quiet_shutdown(ctx, 1);
    SSL_CTX_set_default_passwd_cb(ctx, no_pass_phrase);
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
    /* a server gone without close_notify reads as closed, as on a plain
     * socket; a reply cut short is an incomplete reply all the same */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif
    SSL_CTX_set_verify(ctx, o->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    struct stat sb;
    if (o->ca_path != NULL && stat(o->ca_path, &sb) != 0)
        return context_fail(t, ctx, owner, "ssl_ca_path", o->ca_path);
    if (o->ca_path != NULL && !S_ISDIR(sb.st_mode)) { /* OpenSSL would look at it lazily */
        PyErr_Format(PyExc_ValueError, "%s: ssl_ca_path %s is not a directory", owner, o->ca_path);
        SSL_CTX_free(ctx);
        return -1;
    }
    if (o->ca_certs != NULL || o->ca_path != NULL) {
        if (SSL_CTX_load_verify_locations(ctx, o->ca_certs, o->ca_path) != 1)
            return context_fail(t, ctx, owner,
                                o->ca_certs ? (o->ca_certs_name ? o->ca_certs_name : "ssl_ca_certs")
                                            : "ssl_ca_path",
                                o->ca_certs ? o->ca_certs : o->ca_path);
    } else if (o->verify && SSL_CTX_set_default_verify_paths(ctx) != 1) {
        return context_fail(t, ctx, owner, "the system's", "CA certificates");
    }
    if (o->certfile != NULL) {
        const char *key = o->keyfile ? o->keyfile : o->certfile;
        if (SSL_CTX_use_certificate_chain_file(ctx, o->certfile) != 1)
            return context_fail(t, ctx, owner, o->certfile_name ? o->certfile_name : "ssl_certfile",
                                o->certfile);
        if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(ctx) != 1)
            return context_fail(t, ctx, owner,
                                o->keyfile ? "ssl_keyfile"
                                           : (o->certfile_name ? o->certfile_name : "ssl_certfile"),
                                key);
    }
    ERR_clear_error();
    t->ctx = ctx;
    t->check_host = o->verify && o->check_hostname;
    return 0;
}

void cm_tls_context_fini(CmTlsContext *t)
{
    SSL_CTX_free(t->ctx); /* sessions hold references of their own */
    t->ctx = NULL;
    t->bio = NULL;
}

static int is_ip(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

int cm_tls_start(CmNetConn *c, const CmTlsContext *t, const char *host)
{
    CmTlsSession *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    ERR_clear_error();
    BIO *bio = NULL;
    int ok = (s->ssl = SSL_new(t->ctx)) != NULL && (bio = BIO_new(t->bio)) != NULL;
    if (ok) {
        BIO_set_fd(bio, c->fd, BIO_NOCLOSE);
        SSL_set_bio(s->ssl, bio, bio); /* the session's from now on */
    }
    if (ok && host != NULL) {
        int ip = is_ip(host);
        if (!ip) /* SNI names a host, never an address (RFC 6066) */
            ok = SSL_set_tlsext_host_name(s->ssl, host) == 1;
        if (ok && t->check_host && ip)
            ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s->ssl), host) == 1;
        else if (ok && t->check_host) {
            SSL_set_hostflags(s->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            ok = SSL_set1_host(s->ssl, host) == 1;
        }
    }
    if (!ok) {
        PyErr_Format(PyExc_ConnectionError, "TLS session for %s: %s", host ? host : "?",
                     queue_reason("out of memory"));
        ERR_clear_error();
        if (s->ssl == NULL || SSL_get_rbio(s->ssl) != bio)
            BIO_free(bio);
        SSL_free(s->ssl);
        free(s);
        return -1;
    }
    SSL_set_connect_state(s->ssl);
    c->tls = s;
    c->tls_wait = 0;
    return 0;
}

void cm_tls_free(CmNetConn *c)
{
    CmTlsSession *s = c->tls;
    if (s == NULL)
        return;
    c->tls = NULL;
    c->tls_wait = 0;
    SSL_free(s->ssl); /* quiet shutdown (the context's): nothing is sent */
    free(s);
}

/* Why an operation failed (SSL_get_error's e, errno saved): into s->err. */
static void describe(CmTlsSession *s, int e, int saved_errno)
{
    unsigned long code = ERR_peek_last_error();
    long vr = SSL_get_verify_result(s->ssl);
    if (e == SSL_ERROR_SSL && ERR_GET_LIB(code) == ERR_LIB_SSL &&
        ERR_GET_REASON(code) == SSL_R_CERTIFICATE_VERIFY_FAILED && vr != X509_V_OK)
        snprintf(s->err, sizeof(s->err), "TLS certificate verify failed: %s",
                 X509_verify_cert_error_string(vr));
    else if (e == SSL_ERROR_SSL)
        snprintf(s->err, sizeof(s->err), "TLS %s: %s", s->handshaken ? "error" : "handshake failed",
                 queue_reason("protocol error"));
    else if (e == SSL_ERROR_SYSCALL && saved_errno != 0)
        snprintf(s->err, sizeof(s->err), "%s%s",
                 s->handshaken ? "" : "TLS handshake: ", strerror(saved_errno));
    else
        snprintf(s->err, sizeof(s->err), "%s",
                 s->handshaken ? "TLS connection closed by server"
                               : "TLS handshake: connection closed by server");
    ERR_clear_error();
}

/* The session now waits for wait (0: nothing but what it was asked);
 * the loop's watches follow. -1 when they cannot (errno EIO). */
static int set_wait(CmNetConn *c, int wait)
{
    if (wait == c->tls_wait)
        return 0;
    c->tls_wait = wait;
    if (cm_net_conn_rewatch(c) < 0) {
        PyObject *exc = cm_exc_take();
        snprintf(c->tls->err, sizeof(c->tls->err), "TLS: cannot watch the socket");
        Py_XDECREF(exc);
        errno = EIO;
        return -1;
    }
    return 0;
}

int cm_tls_handshake(CmNetConn *c)
{
    CmTlsSession *s = c->tls;
    ERR_clear_error();
    int rc = SSL_do_handshake(s->ssl);
    if (rc == 1) {
        s->handshaken = 1;
        return 1;
    }
    int saved = errno;
    int e = SSL_get_error(s->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        if (cm_net_conn_watch(c, e == SSL_ERROR_WANT_READ, e == SSL_ERROR_WANT_WRITE) == 0)
            return 0;
        PyObject *exc = cm_exc_take();
        snprintf(s->err, sizeof(s->err), "TLS handshake: cannot watch the socket");
        Py_XDECREF(exc);
        return -1;
    }
    describe(s, e, saved);
    return -1;
}

ssize_t cm_tls_recv(CmNetConn *c, void *buf, size_t n)
{
    CmTlsSession *s = c->tls;
    size_t got = 0;
    ERR_clear_error();
    int rc = SSL_read_ex(s->ssl, buf, n, &got);
    if (rc == 1)
        return set_wait(c, 0) < 0 ? -1 : (ssize_t)got;
    int saved = errno;
    int e = SSL_get_error(s->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        if (set_wait(c, e == SSL_ERROR_WANT_WRITE ? CM_TLS_READ_WANTS_WRITE : 0) < 0)
            return -1;
        errno = EAGAIN;
        return -1;
    }
    if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && saved == 0)) {
        ERR_clear_error();
        return 0;
    }
    describe(s, e, saved);
    errno = saved == 0 || saved == EAGAIN ? EPROTO : saved;
    return -1;
}

ssize_t cm_tls_send(CmNetConn *c, const void *buf, size_t n)
{
    CmTlsSession *s = c->tls;
    size_t put = 0;
    if (n == 0)
        return 0;
    ERR_clear_error();
    int rc = SSL_write_ex(s->ssl, buf, n, &put);
    if (rc == 1)
        return set_wait(c, 0) < 0 ? -1 : (ssize_t)put;
    int saved = errno;
    int e = SSL_get_error(s->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        if (set_wait(c, e == SSL_ERROR_WANT_READ ? CM_TLS_WRITE_WANTS_READ : 0) < 0)
            return -1;
        errno = EAGAIN;
        return -1;
    }
    describe(s, e, saved);
    errno = saved == 0 || saved == EAGAIN ? EPIPE : saved;
    return -1;
}

int cm_tls_pending(const CmNetConn *c) { return SSL_pending(c->tls->ssl) > 0; }

const char *cm_tls_strerror(const CmNetConn *c, int err)
{
    if (c->tls != NULL && c->tls->err[0])
        return c->tls->err;
    return strerror(err);
}
