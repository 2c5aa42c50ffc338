/* How a storage call reaches the pool and what its caller awaits: the
 * instance serving the running loop (netloop.h), the loop the connections
 * follow, and busy polling (busypoll.h) for replies while the loop has
 * nothing else to do, inline in the call when it can (the caller then gets
 * a ready awaitable and does not yield). */
#include "sql/sqlstore.h"

#include "base/exc.h"
#include "loop/loop.h"
#include "loop/ready.h"

static PyObject *storage_on_spin(PyObject *self, PyObject *unused);
static PyMethodDef on_spin_def = {"_on_spin", storage_on_spin, METH_NOARGS, NULL};

/* For net/pool.h's spins: the pool of the storage (owner, held by the
 * caller for the spin) */
static CmNetPool *pool_of(void *owner) { return &((CmSqlStorageObject *)owner)->pool; }

static int any_busy(CmSqlStorageObject *s) { return cm_net_pool_awaiting(&s->pool); }

/* loop.call_soon(def bound to s); -1 (no exception) when it fails */
static int call_soon_self(CmSqlStorageObject *s, PyMethodDef *def)
{
    PyObject *cb = PyCFunction_New(def, (PyObject *)s);
    PyObject *h = cb ? cm_loop_call_soon(s->st, s->pool.loop, cb) : NULL;
    Py_XDECREF(cb);
    if (h == NULL) {
        PyErr_Clear();
        return -1;
    }
    Py_DECREF(h);
    return 0;
}

static void schedule_spin(CmSqlStorageObject *s)
{
    /* when it cannot be scheduled, the reply comes through the loop as usual */
    if (any_busy(s) && cm_busypoll_wanted(&s->spin) && call_soon_self(s, &on_spin_def) == 0)
        cm_busypoll_scheduled(&s->spin);
}

static PyObject *storage_on_spin(PyObject *self, PyObject *Py_UNUSED(unused))
{
    Py_INCREF(self);
    cm_net_pool_spin(pool_of, self, &((CmSqlStorageObject *)self)->spin);
    Py_DECREF(self);
    Py_RETURN_NONE;
}

/* Inline waits (busypoll.h): the marker tells that the loop ran again. */
static PyObject *storage_on_marker(PyObject *self, PyObject *Py_UNUSED(unused))
{
    cm_busypoll_iterated(&((CmSqlStorageObject *)self)->spin);
    Py_RETURN_NONE;
}
static PyMethodDef on_marker_def = {"_on_marker", storage_on_marker, METH_NOARGS, NULL};

static int spin_req_done(void *req) { return ((CmSqlReq *)req)->finished; }

/* The request r (held: see CmSqlReq) was just sent, or queued: if the loop
 * has nothing else to run, wait here until it is finished or the limit
 * passes (r->finished tells which). */
static void wait_inline(CmSqlStorageObject *s, CmSqlReq *r)
{
    int64_t now = cm_sql_now();
    if (s->queued != 0 || !any_busy(s) || !cm_busypoll_inline_ok(&s->spin, now))
        return;
    if (s->spin.inline_since == 0) {
        if (call_soon_self(s, &on_marker_def) < 0)
            return;
        s->spin.marker = 1;
        s->spin.inline_since = now;
    }
    cm_net_pool_wait(pool_of, s, &s->spin, spin_req_done, r);
}

/* The awaitable of a held request that finished during submit: ready with
 * its value, or a done future with its error (awaiting it raises without
 * yielding, as for a reply that came later). Frees r. */
static PyObject *finished_result(CmSqlStorageObject *s, CmSqlReq *r, PyObject *loop)
{
    CmState *st = s->st;
    PyObject *out = NULL;
    PyObject *v = r->error ? NULL : cm_sql_req_value(s, r);
    if (v != NULL) {
        out = cm_ready_new(st, v);
        Py_DECREF(v);
    } else {
        PyObject *err = r->error ? Py_NewRef(r->error) : cm_exc_take();
        out = cm_loop_create_future(st, loop);
        if (out != NULL && cm_future_set_exception(st, out, err ? err : st->sql.SQLError) < 0)
            Py_CLEAR(out);
        Py_XDECREF(err);
    }
    cm_sql_req_free(r);
    return out;
}

/* ------------------------------------------------------------------ */
/* submitting                                                         */

/* A connection that may serve the next loop: idle, nothing in flight. */
static int conn_keep(CmNetConn *nc)
{
    CmSqlConnObject *c = (CmSqlConnObject *)nc;
    return nc->state == CM_SQL_IDLE && c->batch == NULL && c->lookup == NULL;
}

/* The storage follows the running loop. When the old loop is closed
 * (asyncio.run called again) and nothing waits in the queue, the idle
 * connections move to the new loop: a sync app running a coroutine per
 * request does not pay a connect (PostgreSQL: a server process, PREPARE,
 * a cold first query) per request. Else what the old loop had is closed (a
 * test's loop that is still open). Not when the old loop is still running,
 * in another thread: its connections and futures cannot be touched from
 * this one. */
static int bind_loop(CmSqlStorageObject *s, PyObject **loop_out)
{
    int rc = -1;
    PyObject *loop = cm_loop_running(s->st);
    if (loop == NULL)
        goto done;
    if (s->pool.loop != loop) {
        /* net/pool.h's rule, with the queue and the tick counted too: they
         * are the old loop's as much as the connections are */
        int live = s->pool.nconns > 0 || s->head != NULL || s->tick != NULL;
        int running = s->pool.loop != NULL && live ? cm_loop_is_running(s->st, s->pool.loop) : 0;
        if (running < 0)
            goto done;
        if (running) {
            PyErr_Format(PyExc_RuntimeError,
                         "cacheme %s storage: in use by an event loop running in another "
                         "thread; use one storage per thread",
                         s->drv->name);
            goto done;
        }
        int closed =
            s->pool.loop != NULL && s->head == NULL ? cm_loop_is_closed(s->pool.loop, -1) : 0;
        if (closed < 0)
            goto done;
        if (closed) {
            /* its timer handle is of the closed loop: dropped, not cancelled */
            Py_CLEAR(s->tick);
            PyObject *msg = PyUnicode_FromString("the event loop was closed");
            if (msg == NULL)
                goto done;
            cm_net_pool_adopt(&s->pool, loop, conn_keep, s->st->sql.SQLConnectionError, msg);
            Py_DECREF(msg);
        } else if (s->pool.loop != NULL) {
            cm_sql_close_all(s, "the event loop changed");
        }
        /* adopted: bound already; closed: no connection is left, this only
         * moves the pool and starts the backoff over */
        if (cm_net_pool_bind(&s->pool, loop, s->st->sql.SQLConnectionError, NULL) < 0)
            goto done;
        cm_busypoll_follow(&s->spin, loop);
    }
    *loop_out = Py_NewRef(loop);
    rc = 0;
done:
    Py_XDECREF(loop);
    return rc;
}

/* The instance serving the running loop (netloop.h), a new reference: s, or
 * one made for that loop. Outside a loop (a sync driver called directly), s. */
static CmSqlStorageObject *storage_for(CmSqlStorageObject *s)
{
    PyObject *loop = cm_loop_running(s->st);
    if (loop == NULL) {
        if (!s->drv->sync)
            return NULL;
        PyErr_Clear();
        return (CmSqlStorageObject *)Py_NewRef(s);
    }
    PyObject *inst = cm_netloops_for(&s->loops, loop); // borrowed
    Py_DECREF(loop);
    return (CmSqlStorageObject *)Py_XNewRef(inst);
}

PyObject *cm_sql_submit(CmSqlStorageObject *owner, CmSqlReq *r)
{
    PyObject *loop = NULL, *out = NULL;
    CmSqlStorageObject *s = storage_for(owner);
    if (s == NULL)
        goto done;
    if (s->drv->sync) {
        if (s->drv->run(s, r) < 0)
            goto done;
        if (r->fut != NULL) { /* the driver waits (sqlite: a lock) and finishes it */
            out = Py_NewRef(r->fut);
            r = NULL;
            goto done;
        }
        PyObject *v = r->error ? NULL : cm_sql_req_value(s, r);
        if (r->error != NULL)
            PyErr_SetObject((PyObject *)Py_TYPE(r->error), r->error);
        if (v != NULL) {
            out = cm_ready_new(s->st, v);
            Py_DECREF(v);
        }
        goto done;
    }
    if (bind_loop(s, &loop) < 0)
        goto done;
    r->deadline = cm_sql_now() + (int64_t)(s->timeout * 1e9);
    /* held until we return: whatever finishes it meanwhile (a reply read
     * inline, a connection failing in dispatch) leaves it to us */
    r->held = 1;
    cm_sql_enqueue(s, r);
    cm_sql_dispatch(s);
    if (!r->finished)
        wait_inline(s, r);
    if (r->finished) {
        out = finished_result(s, r, loop);
        r = NULL;
        goto done;
    }
    /* in flight: its future, set when it finishes. Still held while the
     * future is made (Python code, which may run a callback that finishes
     * the request): a request finished unheld without a future is freed */
    CmSqlReq *mine = r;
    r = NULL;
    PyObject *fut = cm_loop_create_future(s->st, loop);
    mine->held = 0;
    mine->fut = Py_XNewRef(fut);
    if (mine->finished)
        cm_sql_req_finish(s, mine); /* sets the future (if any) and frees the request */
    else if (fut != NULL)
        schedule_spin(s);
    /* without a future, it finishes unseen, like a cancelled one */
    out = fut;
done:
    if (r != NULL)
        cm_sql_req_free(r);
    Py_XDECREF(loop);
    Py_XDECREF(s);
    return out;
}
/* ---- requests of a flight's call (sql/remote.c, flight/remote.h) ---------- */

int cm_sql_submit_held(CmSqlStorageObject *owner, CmSqlReq *r, PyObject *loop_hint,
                       PyObject *waiter, CmSqlReq **held, CmSqlStorageObject **inst)
{
    PyObject *loop = NULL;
    *held = NULL;
    *inst = NULL;
    /* the flight's loop, the running one: no second lookup */
    CmSqlStorageObject *s =
        loop_hint != NULL
            ? (CmSqlStorageObject *)Py_XNewRef(cm_netloops_for(&owner->loops, loop_hint))
            : storage_for(owner);
    if (s != NULL && s->drv->sync) {
        r->fut = Py_NewRef(waiter);
        int rc = s->drv->run(s, r);
        if (rc < 0)
            cm_sql_req_free(r);
        else if (rc == 0)
            cm_sql_req_finish(s, r); /* tells the waiter, frees the request */
        Py_DECREF(s);
        return rc < 0 ? -1 : 0;
    }
    if (s == NULL || bind_loop(s, &loop) < 0) {
        Py_XDECREF(s);
        cm_sql_req_free(r);
        return -1;
    }
    Py_DECREF(loop);
    r->deadline = cm_sql_now() + (int64_t)(s->timeout * 1e9);
    r->held = 1;
    r->fut = Py_NewRef(waiter);
    cm_sql_enqueue(s, r);
    cm_sql_dispatch(s);
    if (!r->finished)
        wait_inline(s, r);
    *held = r;
    *inst = s;
    return 0;
}

void cm_sql_req_release(CmSqlStorageObject *inst, CmSqlReq *r)
{
    r->held = 0;
    if (r->finished)
        cm_sql_req_finish(inst, r);
    else
        schedule_spin(inst);
}
