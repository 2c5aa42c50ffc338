/* Pools: the connections to one server; at most `size`, a new one only when
 * every open one has `pipeline` replies outstanding; after a failure no new
 * connection before retry_at (backoff doubling up to backoff_max). And the
 * server's addresses. */
#include "redis/internal.h"
#include "redis/subscriber.h"
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
    cm_net_pool_init(&p->net, c->st, cfg->backoff_min, cfg->backoff_max);
    p->st = c->st;
    p->client = c;
    p->cfg = cfg;
    p->port = port;
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

/* "redis <label>: why", or NULL (no exception) when it cannot be made. */
static PyObject *pool_msg(CmRedisPool *p, const char *why)
{
    PyObject *msg = PyUnicode_FromFormat("redis %s: %s", p->label, why);
    if (msg == NULL)
        PyErr_Clear();
    return msg;
}

/* Close every connection of the pool (net/pool.h). */
static void pool_close_all(CmRedisPool *p, const char *why)
{
    PyObject *saved = cm_exc_take();
    PyObject *msg = pool_msg(p, why);
    p->run = NULL;
    cm_net_pool_close_all(&p->net, p->st->redis.ConnectionError, msg);
    Py_XDECREF(msg);
    cm_exc_restore(saved);
}

void cm_redis_pool_drop_detached(CmRedisPool *p, const char *why, int fork)
{
    PyObject *saved = cm_exc_take();
    PyObject *msg = pool_msg(p, why);
    p->run = NULL;
    if (p->sub != NULL)
        cm_redis_sub_drop_detached(p->sub, why, fork);
    cm_net_pool_drop_detached(&p->net, p->st->redis.ConnectionError, msg, fork);
    Py_XDECREF(msg);
    cm_exc_restore(saved);
}

void cm_redis_pool_close_gc(CmRedisPool *p)
{
    PyObject *saved = cm_exc_take();
    PyObject *msg = pool_msg(p, "storage collected");
    p->run = NULL;
    if (p->sub != NULL)
        cm_redis_sub_close_gc(p->sub);
    cm_net_pool_close_gc(&p->net, p->st->redis.ConnectionError, msg);
    Py_XDECREF(msg);
    cm_exc_restore(saved);
}

void cm_redis_pool_free(CmRedisPool *p)
{
    if (p == NULL)
        return;
    cm_redis_sub_free(p->sub);
    p->sub = NULL;
    pool_close_all(p, "storage closed");
    cm_net_pool_fini(&p->net, p->st->redis.ConnectionError, NULL);
    cm_redis_pool_forget_addrs(p);
    free(p->host);
    free(p->path);
    free(p);
}

static Py_ssize_t conn_load(const CmNetConn *c, void *arg)
{
    (void)arg;
    return (Py_ssize_t)((const CmRedisConnObject *)c)->len;
}

static CmNetConn *conn_open(void *arg, PyObject *loop)
{
    return (CmNetConn *)cm_redis_conn_open(arg, loop);
}

int cm_redis_pool_traverse(CmRedisPool *p, visitproc visit, void *arg)
{
    int rc = p->sub ? cm_redis_sub_traverse(p->sub, visit, arg) : 0;
    return rc ? rc : cm_net_pool_traverse(&p->net, visit, arg);
}

CmRedisConnObject *cm_redis_pool_conn(CmRedisPool *p, PyObject *loop)
{
    CmNetPool *np = &p->net;
    if (np->loop != loop) {
        PyObject *msg = np->loop != NULL ? pool_msg(p, "event loop changed") : NULL;
        p->run = NULL;
        int rc = cm_net_pool_bind(np, loop, p->st->redis.ConnectionError, msg);
        Py_XDECREF(msg);
        if (rc < 0)
            return NULL;
    }
    if (p->cfg->tracking && p->sub_of == NULL &&
        (!p->track_up || p->track_gen != p->st->generation) && cm_redis_track_start(p, loop) < 0)
        PyErr_Clear(); /* untracked meanwhile: replies fill no local tier */
    const CmNetPick how = {conn_load, conn_open, p->cfg->pipeline, p->cfg->size, 0};
    CmNetConn *c = cm_net_pool_pick(np, loop, &how, p);
    if (c == NULL && !PyErr_Occurred()) {
        int64_t now = cm_now_ns();
        PyErr_Format(p->st->redis.ConnectionError,
                     "redis %s is unavailable (%S); next try in %d ms", p->label,
                     np->last_error ? np->last_error : Py_None,
                     (int)((np->retry_at - now) / 1000000));
    }
    return (CmRedisConnObject *)c;
}

/* The server's addresses, looked up once per pool and kept (a name again
 * only after a connect failed: cm_redis_pool_forget_addrs). A chain of our
 * own (cm_redis_addrs_add, cm_redis_addrs_free): a name's addresses come
 * from the loop's executor (loop/resolve.h, conn.c's cm_redis_conn_open) as
 * strings, each turned into an addrinfo here. */
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
