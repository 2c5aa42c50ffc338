/* Pools: the connections to one server; at most `size`, a new one only when
 * every open one has `pipeline` replies outstanding; after a failure no new
 * connection before retry_at (backoff doubling up to backoff_max). And the
 * server's addresses. */
#include "redis/internal.h"
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

CmRedisPool *cm_redis_pool_new(CmRedisClientObject *c, const char *host, int port, const char *path)
{
    const CmRedisConfig *cfg = &c->cfg;
    CmRedisPool *p = calloc(1, sizeof(*p));
    if (p == NULL)
        goto nomem;
    p->st = c->st;
    p->client = c;
    p->cfg = cfg;
    p->port = port;
    p->backoff = cfg->backoff_min;
    if (path != NULL) {
        if ((p->path = strdup(path)) == NULL)
            goto nomem;
        snprintf(p->label, sizeof(p->label), "%s", path);
    } else {
        if ((p->host = strdup(host)) == NULL)
            goto nomem;
        snprintf(p->label, sizeof(p->label), "%s:%d", host, port);
    }
    return p;
nomem:
    if (p != NULL)
        free(p->host);
    free(p);
    PyErr_NoMemory();
    return NULL;
}

/* Close every connection of the pool. They leave the pool first: closing
 * one runs Python code (the loop's remove_reader, futures), during which
 * another thread may be closing the same connection (then it returns at once
 * and stays where it was: a loop until nconns drops would spin for ever) or
 * free the pool (a connection must not point back to it then). */
static void pool_close_all(CmRedisPool *p, const char *why)
{
    PyObject *saved = cm_exc_take();
    PyObject *msg = PyUnicode_FromFormat("redis %s: %s", p->label, why);
    if (msg == NULL)
        PyErr_Clear();
    CmRedisConnObject **conns = p->conns;
    int n = p->nconns;
    p->conns = NULL;
    p->nconns = 0;
    p->run = NULL;
    for (int i = 0; i < n; i++)
        conns[i]->pool = NULL;
    for (int i = 0; i < n; i++) {
        cm_redis_conn_close(conns[i], p->st->RedisConnectionError, msg ? msg : Py_None, 0);
        Py_DECREF(conns[i]); /* the pool's reference */
    }
    free(conns);
    Py_XDECREF(msg);
    cm_exc_restore(saved);
}

/* Close every connection without touching its loop: the loop is closed or
 * gone, or this is a forked child and the loop (its epoll instance) is the
 * parent's. The sockets are closed, nothing is unregistered, the timers are
 * dropped uncancelled (a closed loop never runs them; a run one finds the
 * connection closed). The pool reconnects on the next call. */
void cm_redis_pool_drop_detached(CmRedisPool *p, const char *why)
{
    for (int i = 0; i < p->nconns; i++) {
        CmRedisConnObject *c = p->conns[i]; // borrowed
        c->reading = c->writing = 0;
        Py_CLEAR(c->timer);
    }
    pool_close_all(p, why);
    Py_CLEAR(p->loop);
    p->retry_at = 0;
    p->backoff = p->cfg->backoff_min;
}

void cm_redis_pool_free(CmRedisPool *p)
{
    if (p == NULL)
        return;
    pool_close_all(p, "storage closed");
    cm_redis_pool_forget_addrs(p);
    free(p->host);
    free(p->path);
    Py_XDECREF(p->loop);
    Py_XDECREF(p->last_error);
    free(p);
}

void cm_redis_pool_forget(CmRedisPool *p, CmRedisConnObject *c, int failed, PyObject *why)
{
    for (int i = 0; i < p->nconns; i++) {
        if (p->conns[i] == c) {
            p->conns[i] = p->conns[--p->nconns];
            Py_DECREF(c);
            break;
        }
    }
    if (!failed)
        return;
    int64_t now = cm_now_ns();
    if (now >= p->retry_at) {
        p->retry_at = now + (int64_t)(p->backoff * 1e9);
        p->backoff = p->backoff * 2 > p->cfg->backoff_max ? p->cfg->backoff_max : p->backoff * 2;
    }
    if (why != NULL && PyUnicode_Check(why))
        Py_XSETREF(p->last_error, Py_NewRef(why));
}

CmRedisConnObject *cm_redis_pool_conn(CmRedisPool *p, PyObject *loop)
{
    const CmRedisConfig *cfg = p->cfg;
    if (p->loop != loop) {
        if (p->loop != NULL)
            pool_close_all(p, "event loop changed");
        Py_XSETREF(p->loop, Py_NewRef(loop));
    }
    CmRedisConnObject *best = NULL; // borrowed
    for (int i = 0; i < p->nconns; i++)
        if (best == NULL || p->conns[i]->len < best->len)
            best = p->conns[i];
    if (best != NULL && (best->len < (size_t)cfg->pipeline || p->nconns >= cfg->size))
        return best;
    int64_t now = cm_now_ns();
    if (now < p->retry_at) {
        if (best != NULL)
            return best;
        PyErr_Format(p->st->RedisConnectionError, "redis %s is unavailable (%S); next try in %d ms",
                     p->label, p->last_error ? p->last_error : Py_None,
                     (int)((p->retry_at - now) / 1000000));
        return NULL;
    }
    CmRedisConnObject **conns = realloc(p->conns, sizeof(*conns) * (size_t)(p->nconns + 1));
    if (conns == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    p->conns = conns;
    CmRedisConnObject *c = cm_redis_conn_open(p, loop);
    if (c == NULL) {
        PyObject *exc = cm_exc_take();
        PyObject *why = exc ? PyObject_Str(exc) : NULL;
        if (why == NULL)
            PyErr_Clear();
        cm_redis_pool_forget(p, NULL, 1, why);
        Py_XDECREF(why);
        if (best != NULL) {
            Py_XDECREF(exc);
            return best;
        }
        cm_exc_restore(exc);
        return NULL;
    }
    p->conns[p->nconns++] = c; /* the pool's reference */
    return c;
}

/* The server's addresses, looked up once per pool and kept (a name again
 * only after a connect failed: cm_redis_pool_forget_addrs). A chain of our own
 * (cm_redis_addrs_add, cm_redis_addrs_free): a name's addresses come from the loop's
 * executor (conn_resolve) as strings, each turned into an addrinfo here. */
void cm_redis_addrs_free(struct addrinfo *ai)
{
    while (ai != NULL) {
        struct addrinfo *next = ai->ai_next;
        free(ai);
        ai = next;
    }
}

/* Append the numeric address ip (no lookup: AI_NUMERICHOST) at *tail.
 * -1 with errno. */
int cm_redis_addrs_add(struct addrinfo ***tail, const char *ip, int port)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    char sport[16];
    snprintf(sport, sizeof(sport), "%d", port);
    int rc = getaddrinfo(ip, sport, &hints, &res);
    if (rc != 0) {
        errno = rc == EAI_SYSTEM ? errno : EHOSTUNREACH;
        return -1;
    }
    struct addrinfo *ai = malloc(sizeof(*ai) + res->ai_addrlen);
    if (ai == NULL) {
        freeaddrinfo(res);
        errno = ENOMEM;
        return -1;
    }
    *ai = *res;
    ai->ai_addr = (struct sockaddr *)(ai + 1);
    memcpy(ai->ai_addr, res->ai_addr, res->ai_addrlen);
    ai->ai_canonname = NULL;
    ai->ai_next = NULL;
    freeaddrinfo(res);
    **tail = ai;
    *tail = &ai->ai_next;
    return 0;
}

/* The addresses of an IP literal host. -1 with errno. */
static int pool_resolve(CmRedisPool *p)
{
    struct addrinfo **tail = &p->addrs;
    p->resolves++;
    if (cm_redis_addrs_add(&tail, p->host, p->port) < 0) {
        cm_redis_addrs_free(p->addrs);
        p->addrs = NULL;
        return -1;
    }
    return 0;
}

/* A connect failed: the host may have moved, look it up again next time. */
void cm_redis_pool_forget_addrs(CmRedisPool *p)
{
    cm_redis_addrs_free(p->addrs);
    p->addrs = NULL;
}

/* A non-blocking socket connecting to the pool's server; *pending is set
 * while the connect is in progress. -1 with errno on failure. */
int cm_redis_sock_connect(CmRedisPool *p, int *pending)
{
    int fd = -1;
    *pending = 0;
    if (p->path != NULL) {
        struct sockaddr_un sa;
        memset(&sa, 0, sizeof(sa));
        sa.sun_family = AF_UNIX;
        if (strlen(p->path) >= sizeof(sa.sun_path)) {
            errno = ENAMETOOLONG;
            return -1;
        }
        strcpy(sa.sun_path, p->path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -1;
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            return fd;
        /* EAGAIN here is a full backlog, not a connect in progress: it
         * fails, and the pool retries after its backoff */
        if (errno == EINPROGRESS) {
            *pending = 1;
            return fd;
        }
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    if (p->addrs == NULL && pool_resolve(p) < 0)
        return -1;
    int err = ECONNREFUSED;
    for (struct addrinfo *ai = p->addrs; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        if (errno == EINPROGRESS) {
            *pending = 1;
            break;
        }
        err = errno;
        close(fd);
        fd = -1;
    }
    if (fd < 0) {
        cm_redis_pool_forget_addrs(p);
        errno = err;
    }
    return fd;
}
