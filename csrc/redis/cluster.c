/* Redis Cluster routing: the slot map, per-node pools and redirects.
 *
 * Keys map to one of 16384 slots (CRC16 with hash tags, crc16.c); each slot
 * is served by one master. The map comes from CLUSTER SLOTS, asked of any
 * known node at connect and again (at most once per REFRESH_GAP) after a
 * MOVED or a connection failure. A MOVED reply updates the slot at once and
 * re-sends the request to the named node; an ASK reply re-sends it there
 * after ASKING, without touching the map (a slot being migrated).
 * CLUSTERDOWN (a slot not served for now; the map is refreshed too) is
 * transient: the request is re-sent RETRY_DELAY later. Each request is
 * re-sent at most MAX_REDIRECTS times, whatever the reason.
 *
 * Multi-key requests were split by slot before they left (calls.c,
 * send_mget) and their replies are written back by position, so order is
 * kept whatever node answers. A slot half migrated holds some of an MGET's
 * keys on the source and the rest on the target, for as long as the
 * migration takes: the source answers TRYAGAIN (some keys here, some gone)
 * or ASK (none here), and waiting would not help. Such an MGET is followed
 * key by key instead: one GET per key routed by the map (on TRYAGAIN; the
 * source then answers each GET, or ASK for a key already moved) or ASKING +
 * GET on the target (on ASK). A single-key request cannot be answered
 * TRYAGAIN; if one is, it is retried like CLUSTERDOWN. */
#include "redis/redis.h" /* Python.h first */

#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/exc.h"
#include "loop/loop.h"
#include "redis/crc16.h"
#include "redis/internal.h"

#define MAX_REDIRECTS 5
#define REFRESH_GAP_NS (100 * 1000 * 1000)
#define RETRY_DELAY 0.05 /* seconds */

struct CmRedisCluster {
    CmRedisPool **pools;
    int npools;
    int16_t slots[CM_CLUSTER_SLOTS]; /* index into pools, -1 unknown */
    int refreshing;                  /* a CLUSTER SLOTS request is out */
    int stale;                       /* the map is known to be out of date */
    int64_t last_refresh;
    int next; /* round robin of the node asked for the map */
    CmState *st;
    /* entries waiting out a TRYAGAIN/CLUSTERDOWN, sent again together by
     * one timer on retry_loop (NULL while none is armed) */
    CmRedisEntry *retry;
    size_t nretry, retry_cap;
    PyObject *retry_loop;
};

CmRedisCluster *cm_cluster_new(CmRedisClientObject *c, const char *host, int port)
{
    CmRedisCluster *cl = calloc(1, sizeof(*cl));
    if (cl == NULL || (cl->pools = malloc(sizeof(*cl->pools))) == NULL) {
        free(cl);
        PyErr_NoMemory();
        return NULL;
    }
    memset(cl->slots, 0xff, sizeof(cl->slots));
    if ((cl->pools[0] = cm_redis_pool_new(c, host, port, NULL)) == NULL) {
        free(cl->pools);
        free(cl);
        return NULL;
    }
    cl->npools = 1;
    cl->stale = 1;
    cl->st = c->st;
    return cl;
}

void cm_cluster_free(CmRedisCluster *cl)
{
    if (cl == NULL)
        return;
    for (int i = 0; i < cl->npools; i++)
        cm_redis_pool_free(cl->pools[i]);
    if (cl->nretry > 0) {
        PyObject *msg = PyUnicode_FromString("redis storage closed");
        if (msg == NULL)
            PyErr_Clear();
        for (size_t i = 0; i < cl->nretry; i++)
            cm_redis_entry_fail(cl->st, &cl->retry[i], cl->st->redis.ConnectionError, msg);
        Py_XDECREF(msg);
    }
    free(cl->retry);
    Py_XDECREF(cl->retry_loop);
    free(cl->pools);
    free(cl);
}

/* The entries waiting out a TRYAGAIN/CLUSTERDOWN hold their ops, which
 * hold the client: the client's traverse shows them to the collector, so
 * that a cycle through them is found. */
int cm_cluster_traverse(CmRedisCluster *cl, visitproc visit, void *arg)
{
    if (cl == NULL)
        return 0;
    Py_VISIT(cl->retry_loop);
    for (size_t i = 0; i < cl->nretry; i++) {
        int rc = cm_redis_entry_traverse(&cl->retry[i], visit, arg);
        if (rc)
            return rc;
    }
    return 0;
}

/* The client is garbage: the waiting entries fail (their ops let the client
 * go), and the retry timer, if still armed, finds them gone. */
void cm_cluster_clear(CmRedisCluster *cl)
{
    if (cl == NULL)
        return;
    CmRedisEntry *retry = cl->retry;
    size_t n = cl->nretry;
    cl->retry = NULL;
    cl->nretry = cl->retry_cap = 0;
    if (n > 0) {
        PyObject *saved = cm_exc_take();
        PyObject *msg = PyUnicode_FromString("redis storage collected");
        if (msg == NULL)
            PyErr_Clear();
        for (size_t i = 0; i < n; i++)
            cm_redis_entry_fail(cl->st, &retry[i], cl->st->redis.ConnectionError, msg);
        Py_XDECREF(msg);
        cm_exc_restore(saved);
    }
    free(retry);
    Py_CLEAR(cl->retry_loop);
}

Py_ssize_t cm_cluster_retrying(CmRedisClientObject *c)
{
    return c->cluster ? (Py_ssize_t)c->cluster->nretry : 0;
}

Py_ssize_t cm_cluster_pools(CmRedisClientObject *c, CmRedisPool ***pools)
{
    *pools = c->cluster ? c->cluster->pools : NULL;
    return c->cluster ? c->cluster->npools : 0;
}

/* The pool of host:port, added if new; -1 with an exception. */
static int node_index(CmRedisClientObject *c, const char *host, int port)
{
    CmRedisCluster *cl = c->cluster;
    for (int i = 0; i < cl->npools; i++)
        if (cl->pools[i]->host && cl->pools[i]->port == port && !strcmp(cl->pools[i]->host, host))
            return i;
    if (cl->npools >= INT16_MAX) {
        PyErr_SetString(c->st->redis.Error, "redis cluster: too many nodes");
        return -1;
    }
    CmRedisPool **pools = realloc(cl->pools, sizeof(*pools) * (size_t)(cl->npools + 1));
    if (pools == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    cl->pools = pools;
    if ((pools[cl->npools] = cm_redis_pool_new(c, host, port, NULL)) == NULL)
        return -1;
    return cl->npools++;
}

/* CLUSTER SLOTS: [[start, end, [host, port, id], replica...], ...] */
static int apply_slots(CmRedisClientObject *c, PyObject *reply, PyObject *error)
{
    CmRedisCluster *cl = c->cluster;
    if (cl == NULL)
        return 0; /* closed meanwhile */
    cl->refreshing = 0;
    cl->last_refresh = cm_now_ns();
    if (error != NULL || reply == NULL)
        return 0; /* stays stale; the caller's future gets the error */
    if (!PyList_Check(reply))
        goto bad;
    int16_t slots[CM_CLUSTER_SLOTS];
    memset(slots, 0xff, sizeof(slots));
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(reply); i++) {
        PyObject *r = PyList_GET_ITEM(reply, i); // borrowed
        if (!PyList_Check(r) || PyList_GET_SIZE(r) < 3)
            goto bad;
        long start = PyLong_AsLong(PyList_GET_ITEM(r, 0));
        long end = PyLong_AsLong(PyList_GET_ITEM(r, 1));
        PyObject *master = PyList_GET_ITEM(r, 2); // borrowed
        if (PyErr_Occurred() || start < 0 || end >= CM_CLUSTER_SLOTS || start > end ||
            !PyList_Check(master) || PyList_GET_SIZE(master) < 2 ||
            !PyBytes_Check(PyList_GET_ITEM(master, 0)))
            goto bad;
        const char *host = PyBytes_AS_STRING(PyList_GET_ITEM(master, 0));
        long port = PyLong_AsLong(PyList_GET_ITEM(master, 1));
        if (PyErr_Occurred() || port <= 0 || port > 65535)
            goto bad;
        if (host[0] == '\0') /* "the node that answered": the seed's host */
            host = cl->pools[0]->host;
        int idx = node_index(c, host, (int)port);
        if (idx < 0)
            return -1;
        for (long s = start; s <= end; s++)
            slots[s] = (int16_t)idx;
    }
    memcpy(cl->slots, slots, sizeof(slots));
    cl->stale = 0;
    return 0;
bad:
    PyErr_Clear();
    PyErr_SetString(c->st->redis.Error, "redis cluster: malformed CLUSTER SLOTS reply");
    return -1;
}

int cm_cluster_refresh(CmRedisClientObject *c, PyObject *loop, PyObject *fut)
{
    CmRedisCluster *cl = c->cluster;
    PyObject *args = Py_BuildValue("(yy)", "CLUSTER", "SLOTS");
    if (args == NULL)
        return -1;
    CmRedisOp *op = cm_redis_op_internal(c, args, apply_slots, fut);
    Py_DECREF(args);
    if (op == NULL)
        return -1;
    /* ask the nodes in turn, so a dead one is not asked every time */
    CmRedisPool *pool = cl->pools[cl->next++ % cl->npools]; // borrowed
    cl->refreshing = 1;
    cl->last_refresh = cm_now_ns();
    cm_redis_send_on(pool, loop, op);
    cm_redis_op_unref(op);
    return 0;
}

static void maybe_refresh(CmRedisClientObject *c)
{
    CmRedisCluster *cl = c->cluster;
    if (!cl->stale || cl->refreshing || cm_now_ns() - cl->last_refresh < REFRESH_GAP_NS)
        return;
    PyObject *loop = cm_loop_running(c->st);
    if (loop == NULL || cm_cluster_refresh(c, loop, NULL) < 0)
        PyErr_Clear();
    Py_XDECREF(loop);
}

void cm_cluster_node_failed(CmRedisClientObject *c)
{
    if (c->cluster != NULL)
        c->cluster->stale = 1;
}

CmRedisPool *cm_cluster_route(CmRedisClientObject *c, unsigned slot, uint16_t *node)
{
    CmRedisCluster *cl = c->cluster;
    if (cl == NULL) {
        PyErr_SetString(c->st->redis.Error, "redis storage is closed");
        return NULL;
    }
    maybe_refresh(c);
    int idx = cl->slots[slot & (CM_CLUSTER_SLOTS - 1)];
    if (idx < 0)
        idx = 0; /* unknown: any node redirects us */
    *node = (uint16_t)(idx + 1);
    return cl->pools[idx];
}

/* Fail an entry taken over by a redirect with the exception being raised. */
static void entry_fail_raised(CmRedisClientObject *c, CmRedisEntry *e)
{
    PyObject *exc = NULL, *t, *tb;
    PyErr_Fetch(&t, &exc, &tb);
    PyErr_NormalizeException(&t, &exc, &tb);
    cm_redis_entry_fail(c->st, e, c->st->redis.ConnectionError, exc ? exc : Py_None);
    Py_XDECREF(t);
    Py_XDECREF(exc);
    Py_XDECREF(tb);
}

static PyObject *on_retry(PyObject *self, PyObject *unused);
static PyMethodDef on_retry_def = {"_on_retry", on_retry, METH_NOARGS, NULL};

/* Send the waiting entries again (the timer of retry_later). */
static PyObject *on_retry(PyObject *self, PyObject *Py_UNUSED(unused))
{
    CmRedisClientObject *c = (CmRedisClientObject *)self;
    CmRedisCluster *cl = c->cluster;
    if (cl == NULL)
        Py_RETURN_NONE; /* closed: cm_cluster_free failed them */
    /* the list starts afresh: a re-sent entry may be answered TRYAGAIN again */
    CmRedisEntry *retry = cl->retry;
    size_t n = cl->nretry;
    cl->retry = NULL;
    cl->nretry = cl->retry_cap = 0;
    Py_CLEAR(cl->retry_loop);
    PyObject *loop = cm_loop_running(c->st);
    if (loop == NULL)
        PyErr_WriteUnraisable(self); /* not in a loop callback? */
    for (size_t i = 0; i < n; i++) {
        if (loop != NULL)
            cm_redis_resend(c, loop, &retry[i]);
        else
            cm_redis_entry_fail(c->st, &retry[i], c->st->redis.ConnectionError, NULL);
    }
    Py_XDECREF(loop);
    free(retry);
    Py_RETURN_NONE;
}

/* Keep the entry for on_retry, arming its timer if none is armed on the
 * running loop (one armed on a loop no longer run would never fire);
 * -1 with an exception (the entry is still the caller's). */
static int retry_later(CmRedisClientObject *c, CmRedisEntry *e)
{
    CmRedisCluster *cl = c->cluster;
    PyObject *loop = NULL, *cb = NULL, *handle = NULL;
    int rc = -1;
    if (cl->nretry == cl->retry_cap) {
        size_t cap = cl->retry_cap ? cl->retry_cap * 2 : 16;
        CmRedisEntry *r = realloc(cl->retry, cap * sizeof(*r));
        if (r == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        cl->retry = r;
        cl->retry_cap = cap;
    }
    if ((loop = cm_loop_running(c->st)) == NULL)
        goto done;
    if (cl->retry_loop != loop) {
        if ((cb = PyCFunction_New(&on_retry_def, (PyObject *)c)) == NULL ||
            (handle = cm_loop_call_later(c->st, loop, RETRY_DELAY, cb)) == NULL)
            goto done;
        Py_XSETREF(cl->retry_loop, Py_NewRef(loop));
    }
    cl->retry[cl->nretry++] = *e;
    rc = 0;
done:
    Py_XDECREF(loop);
    Py_XDECREF(cb);
    Py_XDECREF(handle);
    return rc;
}

const char *cm_cluster_node_label(CmRedisClientObject *c, uint16_t node)
{
    CmRedisCluster *cl = c->cluster;
    if (cl == NULL || node == 0 || node > cl->npools)
        return NULL;
    return cl->pools[node - 1]->label;
}

/* Follow the keys of a multi-key MGET entry one GET each: routed by the map
 * when conn is NULL, else ASKING + GET on conn (an ASK target). The entry
 * (its op reference and positions) is used up; every GET holds a reference
 * of its own and stays part of the entry's piece (node). */
static void follow_per_key(CmRedisClientObject *c, PyObject *loop, CmRedisEntry *e,
                           CmRedisConnObject *conn)
{
    CmRedisOp *op = e->op;
    uint32_t *positions = e->positions;
    uint32_t n = e->npos;
    /* every reference first: a GET failing at once must not finish the op
     * while the others are still to be sent */
    for (uint32_t i = 1; i < n; i++)
        cm_redis_op_ref(op);
    Py_XINCREF(conn); /* a failed write may close it and the pool let go */
    for (uint32_t i = 0; i < n; i++) {
        CmRedisEntry g = {.op = op,
                          .cmd = CM_CMD_GET,
                          .pos = positions ? positions[i] : e->pos + i,
                          .npos = 1,
                          .redirects = e->redirects,
                          .node = e->node};
        if (conn != NULL) {
            CmRedisEntry asking = {.cmd = CM_CMD_ASKING};
            cm_redis_conn_push(conn, &asking);
            cm_redis_conn_push(conn, &g);
        } else {
            cm_redis_resend(c, loop, &g);
        }
    }
    Py_XDECREF(conn);
    free(positions);
    e->positions = NULL;
    e->op = NULL;
}

int cm_cluster_redirect(CmRedisClientObject *c, CmRedisEntry *e, PyObject *err)
{
    CmRedisCluster *cl = c->cluster;
    PyObject *msg = PyObject_Str(err);
    const char *s = msg ? PyUnicode_AsUTF8(msg) : NULL;
    int handled = 0, ask;
    unsigned slot;
    char addr[300];
    if (s == NULL) {
        PyErr_Clear();
        goto done;
    }
    int multi = e->cmd == CM_CMD_MGET && e->npos > 1;
    if (!strncmp(s, "TRYAGAIN", 8) && multi) {
        if (cl == NULL || ++e->redirects > MAX_REDIRECTS)
            goto done;
        handled = 1;
        PyObject *loop = cm_loop_running(c->st);
        if (loop == NULL)
            entry_fail_raised(c, e);
        else
            follow_per_key(c, loop, e, NULL);
        Py_XDECREF(loop);
        goto done;
    }
    if (!strncmp(s, "TRYAGAIN", 8) || !strncmp(s, "CLUSTERDOWN", 11)) {
        if (cl == NULL || ++e->redirects > MAX_REDIRECTS)
            goto done;
        handled = 1;
        if (s[0] == 'C')
            cl->stale = 1;
        if (retry_later(c, e) < 0)
            entry_fail_raised(c, e);
        goto done;
    }
    if (sscanf(s, "MOVED %u %299s", &slot, addr) == 2)
        ask = 0;
    else if (sscanf(s, "ASK %u %299s", &slot, addr) == 2)
        ask = 1;
    else
        goto done;
    if (cl == NULL || slot >= CM_CLUSTER_SLOTS || ++e->redirects > MAX_REDIRECTS)
        goto done;
    char *colon = strrchr(addr, ':');
    if (colon == NULL)
        goto done;
    *colon = '\0';
    int port = atoi(colon + 1);
    const char *host = addr[0] ? addr : cl->pools[0]->host;
    handled = 1; /* from here on the entry is ours: sent on, or failed */
    PyObject *loop = cm_loop_running(c->st);
    int idx = loop ? node_index(c, host, port) : -1;
    CmRedisConnObject *conn = idx >= 0 ? cm_redis_pool_conn(cl->pools[idx], loop) : NULL;
    Py_XDECREF(loop);
    if (conn == NULL) {
        entry_fail_raised(c, e);
        goto done;
    }
    if (ask && multi) {
        follow_per_key(c, NULL, e, conn);
        goto done;
    }
    if (ask) {
        CmRedisEntry asking = {.cmd = CM_CMD_ASKING};
        cm_redis_conn_push(conn, &asking);
    } else {
        cl->slots[slot] = (int16_t)idx;
        cl->stale = 1; /* one MOVED usually means more slots moved */
    }
    cm_redis_conn_push(conn, e);
done:
    Py_XDECREF(msg);
    return handled;
}
