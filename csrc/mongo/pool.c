/* Which connection takes a request, and which server they go to.
 *
 * Connections: the least loaded one; a new one (up to pool_size) when every
 * open one has a request outstanding, since a server runs one command at a
 * time per connection. After a failed connect no new one before the
 * backoff (net/pool.h) has passed.
 *
 * Topology: the URL's seed list. Requests go to one server, the primary;
 * the first seed until a hello says otherwise. A server that is not the
 * writable primary names the primary in its hello (`primary`): that one is
 * used from then on (added to the list if it was not a seed); a seed that
 * cannot be reached, or that names no primary, passes the turn to the next
 * seed. A request answered NotWritablePrimary (or another "not primary"
 * code), or pending on a connection to the primary that broke, is sent
 * once more, to the primary found anew. */
#ifdef CM_HAVE_BSON
#include "mongo/mongo.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/exc.h"

const char *cm_mongo_host_label(CmMongoClientObject *cl, int i, char *buf, size_t n)
{
    if (i < 0 || i >= cl->nhosts)
        snprintf(buf, n, "?");
    else if (strchr(cl->hosts[i].host, ':') != NULL)
        snprintf(buf, n, "[%s]:%d", cl->hosts[i].host, cl->hosts[i].port);
    else
        snprintf(buf, n, "%s:%d", cl->hosts[i].host, cl->hosts[i].port);
    return buf;
}

/* Close the pool's connections (to a server that is no longer the
 * primary); what is pending on them fails. */
static void close_all(CmMongoClientObject *cl, const char *why)
{
    PyObject *saved = cm_exc_take();
    PyObject *msg = PyUnicode_FromFormat("mongodb: %s", why);
    if (msg == NULL)
        PyErr_Clear();
    cm_net_pool_close_all(&cl->pool, cl->st->mongo.ConnectionError, msg);
    Py_XDECREF(msg);
    cm_exc_restore(saved);
}

/* The index of "host:port" in the list, added when new; -1 when it cannot
 * be parsed or added. */
static int host_index(CmMongoClientObject *cl, const char *hp)
{
    const char *colon = strrchr(hp, ':');
    size_t hl = colon ? (size_t)(colon - hp) : strlen(hp);
    int port = colon ? atoi(colon + 1) : 27017;
    if (hl > 1 && hp[0] == '[' && hp[hl - 1] == ']') {
        hp++;
        hl -= 2;
    }
    if (hl == 0 || port <= 0 || port > 65535)
        return -1;
    for (int i = 0; i < cl->nhosts; i++)
        if (cl->hosts[i].port == port && strlen(cl->hosts[i].host) == hl &&
            strncmp(cl->hosts[i].host, hp, hl) == 0)
            return i;
    if (cl->nhosts >= 64)
        return -1;
    CmMongoHost *v = realloc(cl->hosts, (size_t)(cl->nhosts + 1) * sizeof(*v));
    if (v == NULL)
        return -1;
    cl->hosts = v;
    if ((v[cl->nhosts].host = strndup(hp, hl)) == NULL)
        return -1;
    v[cl->nhosts].port = port;
    return cl->nhosts++;
}

void cm_mongo_topology_moved(CmMongoClientObject *cl, int host, const char *hint)
{
    if (host != cl->primary)
        return; /* already moved on */
    int next = hint ? host_index(cl, hint) : -1;
    if (next < 0 || next == host)
        next = (host + 1) % cl->nhosts;
    cl->primary = next;
    close_all(cl, "the server is no longer the writable primary");
}

void cm_mongo_topology_failed(CmMongoClientObject *cl, int host)
{
    if (host == cl->primary && cl->nhosts > 1)
        cl->primary = (host + 1) % cl->nhosts;
}

/* r was refused by a server that is no longer the primary: sent once more
 * to the primary found anew (a coalesced find: each of its GETs), or
 * failed. label names the old server. */
void cm_mongo_topology_resend(CmMongoClientObject *cl, CmMongoReq *r, PyObject *loop,
                              const char *label, const char *why)
{
    CmState *st = cl->st;
    if (r->kind == CM_MONGO_GETS) {
        CmMongoReq **m = r->members;
        int n = r->nmembers;
        r->members = NULL;
        r->nmembers = r->capm = 0;
        cm_mongo_req_free(r);
        for (int i = 0; i < n; i++)
            cm_mongo_topology_resend(cl, m[i], loop, label, why);
        free(m);
        return;
    }
    CmMongoConnObject *to = NULL;
    if (!r->retried && r->fut != NULL) {
        r->retried = 1;
        to = cm_mongo_pool_conn(cl, loop, 1);
    }
    if (to != NULL) {
        cm_mongo_conn_push(to, r);
        return;
    }
    PyObject *exc = cm_exc_take();
    PyObject *msg = PyUnicode_FromFormat("mongodb %s: %s (%S)", label, why, exc ? exc : Py_None);
    PyErr_Clear();
    cm_mongo_req_fail_msg(st, r, st->mongo.ConnectionError, msg);
    Py_XDECREF(msg);
    Py_XDECREF(exc);
}

/* Connections to the primary take requests. */
static Py_ssize_t conn_load(const CmNetConn *nc, void *arg)
{
    const CmMongoConnObject *c = (const CmMongoConnObject *)nc;
    return c->host == ((CmMongoClientObject *)arg)->primary ? (Py_ssize_t)c->npend : -1;
}

static CmNetConn *conn_open(void *arg, PyObject *loop)
{
    return (CmNetConn *)cm_mongo_conn_open(arg, loop);
}

CmMongoConnObject *cm_mongo_pool_conn(CmMongoClientObject *cl, PyObject *loop, int retry)
{
    CmNetPool *np = &cl->pool;
    char label[300];
    if (np->loop != loop) {
        PyObject *msg =
            np->loop != NULL ? PyUnicode_FromString("mongodb: event loop changed") : NULL;
        PyErr_Clear();
        int rc = cm_net_pool_bind(np, loop, cl->st->mongo.ConnectionError, msg);
        Py_XDECREF(msg);
        if (rc < 0)
            return NULL;
    }
    /* a server runs one command at a time per connection: a new one when
     * every open one has a request outstanding; a request sent again to a
     * new primary is one connect, not a storm: each is sent again once */
    const CmNetPick how = {conn_load, conn_open, 1, cl->pool_size, retry};
    CmNetConn *c = cm_net_pool_pick(np, loop, &how, cl);
    if (c == NULL && !PyErr_Occurred()) {
        int64_t now = cm_now_ns();
        PyErr_Format(
            cl->st->mongo.ConnectionError, "mongodb %s is unavailable (%S); next try in %d ms",
            cm_mongo_host_label(cl, cl->primary, label, sizeof(label)),
            np->last_error ? np->last_error : Py_None, (int)((np->retry_at - now) / 1000000));
    }
    return (CmMongoConnObject *)c;
}
#endif
