/* The singleflight (see flight.h for the model).
 *
 * A Get object is what get() returns on a local miss. It goes through modes:
 *   START  -> LEAD  (no flight for the key: it drives one inline)
 *          -> WAIT  (a flight exists: it waits on it as its own future)
 *          -> DONE  (the flight already has its value)
 *   LEAD   -> cancelled while others wait: its driving state moves into a
 *             new Get in mode DRIVER run by a Task (move_to_task).
 * Flights are plain C records in a chained table in the module state. */
#include "flight/flight.h"

#include "api/ready.h"
#include "base/clock.h"
#include "base/compat.h"
#include "base/exc.h"
#include "core/bloomtype.h"
#include "core/store.h"
#include "loop/loop.h"

#include <structmember.h>

enum { M_START, M_LEAD, M_DRIVER, M_WAIT, M_DONE };
enum { P_REMOTE, P_LOAD, P_RESOLVE, P_FILL, P_END };

/* A Get held by its flight's list or by a Redis op of its own (see
 * get_held, after the Get object). */
static void get_held(PyObject *g);
static void get_unheld(PyObject *g);
static void get_free_clear(CmState *st);
static void proxy_free_clear(CmState *st);

/* ---- flight table ---------------------------------------------------------- */

static int key_eq(PyObject *a, PyObject *b)
{
    if (a == b)
        return 1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(a);
    return n == PyUnicode_GET_LENGTH(b) && PyUnicode_KIND(a) == PyUnicode_KIND(b) &&
           memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * PyUnicode_KIND(a)) == 0;
}

static CmFlight *flight_find(CmState *st, PyObject *key, Py_hash_t hash)
{
    CmFlightTable *t = &st->flights;
    if (t->used == 0)
        return NULL;
    for (CmFlight *f = t->buckets[(size_t)hash & t->mask]; f != NULL; f = f->next) {
        if (f->hash == hash && key_eq(f->key, key))
            return f;
    }
    return NULL;
}

static int table_grow(CmFlightTable *t)
{
    size_t size = t->buckets ? (t->mask + 1) * 2 : 64;
    CmFlight **b = PyMem_Calloc(size, sizeof(CmFlight *));
    if (b == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (t->buckets != NULL) {
        for (size_t i = 0; i <= t->mask; i++) {
            CmFlight *f = t->buckets[i];
            while (f != NULL) {
                CmFlight *next = f->next;
                size_t j = (size_t)f->hash & (size - 1);
                f->next = b[j];
                b[j] = f;
                f = next;
            }
        }
        PyMem_Free(t->buckets);
    }
    t->buckets = b;
    t->mask = size - 1;
    return 0;
}

static void table_unlink(CmState *st, CmFlight *fl)
{
    if (!fl->in_table)
        return;
    CmFlightTable *t = &st->flights;
    CmFlight **pp = &t->buckets[(size_t)fl->hash & t->mask];
    while (*pp != fl)
        pp = &(*pp)->next;
    *pp = fl->next;
    fl->next = NULL;
    fl->in_table = 0;
    t->used--;
}

static void flight_free(CmState *st, CmFlight *fl)
{
    Py_CLEAR(fl->key);
    Py_CLEAR(fl->value);
    Py_CLEAR(fl->exc);
    Py_CLEAR(fl->exc_tb);
    Py_CLEAR(fl->task);
    Py_CLEAR(fl->loop);
    for (Py_ssize_t i = 0; i < fl->nwaiters; i++) {
        get_unheld(fl->waiters[i]);
        Py_CLEAR(fl->waiters[i]);
    }
    fl->nwaiters = 0;
    if (st->flight_free_len < 256) {
        /* keep the waiters array with the record for reuse */
        fl->next = st->flight_free;
        st->flight_free = fl;
        st->flight_free_len++;
        return;
    }
    PyMem_Free(fl->waiters);
    PyMem_Free(fl);
}

static void flight_release(CmState *st, CmFlight *fl)
{
    if (--fl->refs == 0 && !fl->in_table)
        flight_free(st, fl);
}

static void flight_remove(CmState *st, CmFlight *fl)
{
    if (fl->in_table) {
        table_unlink(st, fl);
        if (fl->refs == 0)
            flight_free(st, fl);
    }
}

/* A new flight in the table with one reference (the caller's). */
static CmFlight *flight_start(CmState *st, PyObject *key, Py_hash_t hash)
{
    CmFlightTable *t = &st->flights;
    if ((t->buckets == NULL || t->used > t->mask) && table_grow(t) < 0)
        return NULL;
    CmFlight *fl = st->flight_free;
    if (fl != NULL) {
        st->flight_free = fl->next;
        st->flight_free_len--;
        PyObject **w = fl->waiters;
        Py_ssize_t cap = fl->capwaiters;
        memset(fl, 0, sizeof(*fl));
        fl->waiters = w;
        fl->capwaiters = cap;
    } else {
        fl = PyMem_Calloc(1, sizeof(CmFlight));
        if (fl == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
    }
    fl->key = Py_NewRef(key);
    fl->hash = hash;
    fl->refs = 1;
    size_t i = (size_t)hash & t->mask;
    fl->next = t->buckets[i];
    t->buckets[i] = fl;
    fl->in_table = 1;
    t->used++;
    return fl;
}

/* Take every flight out of the table (those no Get holds are freed); the
 * buckets stay. */
static void flight_table_empty(CmState *st)
{
    CmFlightTable *t = &st->flights;
    if (t->buckets == NULL)
        return;
    for (size_t i = 0; i <= t->mask; i++) {
        CmFlight *f = t->buckets[i];
        t->buckets[i] = NULL;
        while (f != NULL) {
            CmFlight *next = f->next;
            f->in_table = 0;
            f->next = NULL;
            if (f->refs == 0)
                flight_free(st, f);
            f = next;
        }
    }
    t->used = 0;
}

void cm_flight_table_clear(CmState *st)
{
    CmFlightTable *t = &st->flights;
    if (t->buckets != NULL) {
        flight_table_empty(st);
        PyMem_Free(t->buckets);
        t->buckets = NULL;
        t->used = 0;
        t->mask = 0;
    }
    while (st->flight_free != NULL) {
        CmFlight *f = st->flight_free;
        st->flight_free = f->next;
        PyMem_Free(f->waiters);
        PyMem_Free(f);
    }
    st->flight_free_len = 0;
    get_free_clear(st);
}

/* Append a new reference to o to the growable array *items (n used, cap). */
static int refs_push(PyObject ***items, Py_ssize_t *n, Py_ssize_t *cap, PyObject *o)
{
    if (*n == *cap) {
        Py_ssize_t c = *cap ? *cap * 2 : 4;
        PyObject **w = PyMem_Realloc(*items, (size_t)c * sizeof(PyObject *));
        if (w == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        *items = w;
        *cap = c;
    }
    (*items)[(*n)++] = Py_NewRef(o);
    return 0;
}

static int flight_add_waiter(CmFlight *fl, PyObject *g)
{
    return refs_push(&fl->waiters, &fl->nwaiters, &fl->capwaiters, g);
}

/* A waiter leaving before the flight settles takes itself out. */
static void flight_drop_waiter(CmFlight *fl, PyObject *g)
{
    for (Py_ssize_t i = 0; i < fl->nwaiters; i++) {
        if (fl->waiters[i] == g) {
            memmove(&fl->waiters[i], &fl->waiters[i + 1],
                    (size_t)(fl->nwaiters - i - 1) * sizeof(PyObject *));
            fl->nwaiters--;
            get_unheld(g);
            Py_DECREF(g);
            return;
        }
    }
}

static void waiter_settled(CmState *st, PyObject *g, int cancelled);

/* Give every waiter the outcome (value, or exc) and wake their Tasks. The
 * caller holds a reference to fl, so releasing a waiter here never frees it. */
static void flight_settle(CmState *st, CmFlight *fl, PyObject *value, PyObject *exc)
{
    if (fl->done)
        return;
    fl->done = 1;
    if (exc != NULL) {
        fl->exc = Py_NewRef(exc);
        fl->exc_tb = PyException_GetTraceback(exc);
        /* a failed flight is over: nobody may join it, not even a Task
         * woken inline below (it would find a done flight with no value) */
        table_unlink(st, fl);
    } else {
        fl->value = Py_NewRef(value);
    }
    int cancelled = exc != NULL && cm_is_cancelled_error(st, exc);
    for (Py_ssize_t i = 0; i < fl->nwaiters; i++) {
        PyObject *g = fl->waiters[i];
        fl->waiters[i] = NULL;
        waiter_settled(st, g, cancelled);
    }
    fl->nwaiters = 0;
    if (exc != NULL && fl->refs == 0) /* unlinked above */
        flight_free(st, fl);
}

/* ---- exceptions -------------------------------------------------------------- */

static void raise_exc(PyObject *exc) { PyErr_SetObject((PyObject *)Py_TYPE(exc), exc); }

/* Raise the failure of fl into one more caller, with the traceback it had
 * when the flight settled (as asyncio.Future.result() does): each raise
 * would otherwise add the caller's frames to the one shared object. */
static void raise_flight_exc(CmFlight *fl)
{
    if (PyException_SetTraceback(fl->exc, fl->exc_tb != NULL ? fl->exc_tb : Py_None) < 0)
        return;
    raise_exc(fl->exc);
}

/* Exception passed to throw(typ[, val[, tb]]) as one object; new ref. */
static PyObject *throw_args_exc(PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
        return NULL;
    }
    PyObject *typ = args[0];
    if (PyExceptionInstance_Check(typ))
        return Py_NewRef(typ);
    if (PyExceptionClass_Check(typ)) {
        PyObject *val = nargs > 1 ? args[1] : Py_None;
        if (PyExceptionInstance_Check(val))
            return Py_NewRef(val);
        return val == Py_None ? PyObject_CallNoArgs(typ) : PyObject_CallOneArg(typ, val);
    }
    PyErr_SetString(PyExc_TypeError, "exceptions must derive from BaseException");
    return NULL;
}

/* ---- the Get object -------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    CmState *st;
    int mode;
    int phase;
    Py_ssize_t idx;
    PyObject *node;
    CmNodeConfigObject *cfg;
    PyObject *key;
    Py_hash_t hash;
    PyObject *load_fn;
    PyObject *memo_fn;
    PyObject *memo_argv; /* tuple: positional then keyword values */
    Py_ssize_t memo_nargs;
    PyObject *memo_kwnames;
    uint32_t missed;
    uint64_t local_puts;
    CmFlight *fl;
    PyObject *sub;     /* awaitable iterator being delegated to */
    PyObject *pending; /* yielded value the Task must see first (handoff) */
    PyObject *lead_px; /* the proxy the leader's Task awaits, until resumed */
    int has_pending;
    int64_t load_start;
    PyObject *value;
    /* the Get as the future its Task waits on, while it waits on its flight
     * (WAIT) or on a Redis call of its own (see "a Get is its own future") */
    int wstate;
    int blocking;    /* _asyncio_future_blocking */
    PyObject *wloop; /* the loop it waits on */
    void *wtstate;   /* the thread state that runs wloop (PyThreadState_Get) */
    PyObject *wcb;   /* the Task's wakeup, and its context */
    PyObject *wctx;  /* (or NULL) */
    PyObject *wmsg;  /* cancel(msg) */
    /* a Redis call made for it with no future (start_call) */
    int dwait;
    struct CmRedisOp *dop; /* borrowed: the op holds us until it finishes */
    PyObject *dres, *derr; /* its outcome */
    int untracked;         /* get_held took it out of the collector's lists */
    int wcb_untracked;     /* ... and the Task's wakeup with it (wcb_track) */
    void *free_next;       /* in the free list (st->get_free) */
} CmGetObject;

/* While its flight's list or a Redis op of its own holds a Get, it cannot be
 * garbage, and neither can what it refers to: it is then kept out of the
 * cyclic collector's lists, which a request waiting for 0.1 s would
 * otherwise make it cross, generation after generation, with everything
 * else alive (at 10k concurrent requests, thousands of them at each young
 * collection). It is tracked again when the holder lets it go. */
static void get_held(PyObject *o)
{
    CmGetObject *g = (CmGetObject *)o;
    if (PyObject_GC_IsTracked(o)) {
        PyObject_GC_UnTrack(o);
        g->untracked = 1;
    }
}

/* The Task's wakeup (wcb) held by a held Get is untracked with it: the Task
 * drops its own reference once it has handed it to add_done_callback, so
 * ours is the only one, and nothing the collector could free hangs on it
 * while the Get is held (each waiting request would otherwise take one more
 * object through every young collection of its wait). It is tracked again
 * before the Get lets it go, or, when the Get's wake batch runs it, after
 * the call if anything but us still holds it (waiter_fire). */
static void wcb_track(CmGetObject *g)
{
    if (g->wcb_untracked) {
        g->wcb_untracked = 0;
        if (g->wcb != NULL && !PyObject_GC_IsTracked(g->wcb))
            PyObject_GC_Track(g->wcb);
    }
}

static void get_unheld(PyObject *o)
{
    CmGetObject *g = (CmGetObject *)o;
    wcb_track(g);
    if (g->untracked) {
        g->untracked = 0;
        PyObject_GC_Track(o);
    }
}

static void get_free_clear(CmState *st)
{
    while (st->get_free != NULL) {
        CmGetObject *g = st->get_free;
        st->get_free = g->free_next;
        PyObject_GC_Del(g);
    }
    st->get_free_len = 0;
    proxy_free_clear(st);
}

/* wstate: a waiter in its flight's list not yet awaited (JOINED); awaited
 * (PENDING); the outcome is in (SETTLED) or it was cancelled */
enum { W_NONE, W_JOINED, W_PENDING, W_SETTLED, W_CANCELLED };
/* dwait: no call; the call is out (PENDING) or has finished (DONE) */
enum { DW_NONE, DW_PENDING, DW_DONE };

static void waiter_wake(CmState *st, CmGetObject *g);
static PyObject *waiter_cancelled_error(CmGetObject *g);

/* The Redis op made for g lets it go: the op goes on, its outcome to nobody. */
static void direct_release_op(CmGetObject *g)
{
    if (g->dop == NULL)
        return;
    PyObject *me = cm_redis_op_handoff(g->dop, NULL);
    g->dop = NULL;
    get_unheld((PyObject *)g);
    Py_XDECREF(me); /* never the last: our caller has a reference */
}

/* The Redis call made for g is no longer awaited. */
static void direct_detach(CmGetObject *g)
{
    direct_release_op(g);
    g->dwait = DW_NONE;
    Py_CLEAR(g->dres);
    Py_CLEAR(g->derr);
}

/* The Redis call made for g finished (redis.c, op_finish). */
void cm_get_op_done(CmState *st, PyObject *o, PyObject *res, PyObject *err)
{
    CmGetObject *g = (CmGetObject *)o;
    g->dop = NULL;
    g->dwait = DW_DONE;
    Py_XSETREF(g->dres, Py_XNewRef(res));
    Py_XSETREF(g->derr, Py_XNewRef(err));
    if (g->wstate == W_PENDING) {
        g->wstate = W_SETTLED;
        if (g->wcb != NULL) {
            waiter_wake(st, g);
            return;
        }
    }
    get_unheld(o);
    Py_DECREF(g);
}

/* Resume the Redis call made for g: NEXT (yield g, the call is still out),
 * RETURN with its value, or ERROR (its failure, or exc thrown in). */
static PySendResult direct_resume(CmGetObject *g, PyObject *exc, PyObject **res)
{
    *res = NULL;
    if (exc == NULL && g->wstate == W_CANCELLED) {
        /* cancelled and sent to rather than thrown into: as a Future does */
        direct_detach(g);
        g->wstate = W_NONE;
        waiter_cancelled_error(g);
        return PYGEN_ERROR;
    }
    g->wstate = W_NONE;
    if (exc != NULL) {
        direct_detach(g);
        raise_exc(exc);
        return PYGEN_ERROR;
    }
    if (g->dwait == DW_PENDING) {
        g->wstate = W_PENDING;
        g->blocking = 1;
        *res = Py_NewRef(g);
        return PYGEN_NEXT;
    }
    g->dwait = DW_NONE;
    PyObject *e = g->derr;
    g->derr = NULL;
    *res = g->dres;
    g->dres = NULL;
    if (e != NULL) {
        Py_CLEAR(*res);
        raise_exc(e);
        Py_DECREF(e);
        return PYGEN_ERROR;
    }
    return PYGEN_RETURN;
}

static PyObject *get_alloc(CmState *st)
{
    CmGetObject *g = st->get_free;
    if (g != NULL) {
        st->get_free = g->free_next;
        st->get_free_len--;
        PyObject_Init((PyObject *)g, st->GetType);
    } else if ((g = PyObject_GC_New(CmGetObject, st->GetType)) == NULL) {
        return NULL;
    }
    memset((char *)g + offsetof(CmGetObject, st), 0,
           sizeof(CmGetObject) - offsetof(CmGetObject, st));
    g->st = st;
    PyObject_GC_Track(g);
    return (PyObject *)g;
}

PyObject *cm_get_begin(CmState *st, CmRequest *req)
{
    CmGetObject *g = (CmGetObject *)get_alloc(st);
    if (g == NULL)
        return NULL;
    g->mode = M_START;
    g->node = Py_NewRef(req->node);
    g->cfg = (CmNodeConfigObject *)Py_NewRef(req->cfg);
    g->key = Py_NewRef(req->key);
    g->hash = req->hash;
    g->load_fn = Py_XNewRef(req->load_fn);
    g->missed = req->missed;
    g->local_puts = req->local_puts;
    if (req->memo_fn != NULL) {
        Py_ssize_t total =
            req->memo_nargs + (req->memo_kwnames ? PyTuple_GET_SIZE(req->memo_kwnames) : 0);
        PyObject *argv = PyTuple_New(total);
        if (argv == NULL) {
            Py_DECREF(g);
            return NULL;
        }
        for (Py_ssize_t i = 0; i < total; i++)
            PyTuple_SET_ITEM(argv, i, Py_NewRef(req->memo_args[i]));
        g->memo_fn = Py_NewRef(req->memo_fn);
        g->memo_argv = argv;
        g->memo_nargs = req->memo_nargs;
        g->memo_kwnames = Py_XNewRef(req->memo_kwnames);
    }
    return (PyObject *)g;
}

static inline CmStorageCounters *counters(CmGetObject *g, Py_ssize_t i)
{
    return &g->cfg->metrics->storages[g->cfg->caches[i].stat];
}

void cm_fill_locals(CmState *st, CmNodeConfigObject *cfg, PyObject *key, Py_hash_t hash,
                    PyObject *value, uint32_t missed)
{
    (void)st;
    for (Py_ssize_t i = 0; i < cfg->ncaches && i < 32; i++) {
        CmCacheRef *r = &cfg->caches[i];
        if (r->kind != CM_CACHE_LOCAL || !(missed & (1u << i)))
            continue;
        if (cm_store_put((CmStoreObject *)r->storage, key, hash, value, r->ttl_ns) < 0) {
            cfg->metrics->storages[r->stat].errors++;
            PyErr_WriteUnraisable(r->name);
        }
    }
}

/* Start the next awaitable of the flight in g->sub. 1 started, 0 nothing to
 * start in this phase (advance), -1 error (exception set). */
static int start_sub(CmGetObject *g, PyObject *aw)
{
    if (aw == NULL)
        return -1;
    g->sub = cm_await_iter(aw);
    Py_DECREF(aw);
    return g->sub ? 1 : -1;
}

static PyObject *call_storage(CmGetObject *g, PyObject *name, CmCacheRef *r, int set)
{
    PyObject *args[5] = {r->storage, g->node, NULL, NULL, NULL};
    if (!set) {
        args[2] = g->cfg->serializer;
        return PyObject_VectorcallMethod(name, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    args[2] = g->value;
    args[3] = r->ttl;
    args[4] = g->cfg->serializer;
    return PyObject_VectorcallMethod(name, args, 5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* storage.get(node) / storage.set(...) of cache r as the current call: a
 * Redis call of our own when r is a Redis storage that keeps RedisClient's
 * methods, else the awaitable the method returns. 0, or -1 with an
 * exception. */
static int start_call(CmGetObject *g, CmCacheRef *r, int set)
{
    CmState *st = g->st;
    PyObject *name = set ? st->s_set : st->s_get;
    if (!cm_redis_direct(st, r->storage, name))
        return start_sub(g, call_storage(g, name, r, set));
    if (g->wloop == NULL) {
        if ((g->wloop = cm_loop_running(st)) == NULL)
            return -1;
        g->wtstate = PyThreadState_Get();
    }
    struct CmRedisOp *op =
        set ? cm_redis_set_for(r->storage, g->node, g->value, r->ttl, g->cfg->serializer, g->wloop,
                               (PyObject *)g)
            : cm_redis_get_for(r->storage, g->node, g->cfg->serializer, g->wloop, (PyObject *)g);
    if (op == NULL)
        return -1;
    g->dwait = DW_PENDING;
    g->dop = op;
    get_held((PyObject *)g);
    cm_redis_op_unref(op); /* may finish it at once (cm_get_op_done) */
    return 0;
}

static PyObject *call_loader_raw(CmGetObject *g)
{
    CmState *st = g->st;
    if (g->memo_fn != NULL)
        return PyObject_Vectorcall(g->memo_fn, &PyTuple_GET_ITEM(g->memo_argv, 0), g->memo_nargs,
                                   g->memo_kwnames);
    if (g->load_fn != NULL)
        return PyObject_CallOneArg(g->load_fn, g->node);
    CmNodeConfigObject *cfg = g->cfg;
    if (Py_TYPE(g->node) == cfg->cls && cm_nodecfg_methods(st, cfg) && cfg->load_func != NULL)
        return PyObject_Vectorcall(cfg->load_func, &g->node, 1, NULL);
    return PyObject_VectorcallMethod(st->s_load, &g->node, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     NULL);
}

/* The load's awaitable; under Meta.load_timeout, wrapped so that past it
 * the load is cancelled and the flight fails with TimeoutError. */
static PyObject *call_loader(CmGetObject *g)
{
    PyObject *aw = call_loader_raw(g);
    double t = g->cfg->load_timeout;
    if (aw == NULL || t <= 0 || g->st->load_timeout_wrap == NULL)
        return aw;
    PyObject *secs = PyFloat_FromDouble(t);
    PyObject *args[2] = {aw, secs};
    PyObject *w = secs ? PyObject_Vectorcall(g->st->load_timeout_wrap, args, 2, NULL) : NULL;
    Py_XDECREF(secs);
    if (w == NULL && PyCoro_CheckExact(aw)) { /* never awaited: no warning for it */
        PyObject *typ, *val, *tb;
        PyErr_Fetch(&typ, &val, &tb);
        PyObject *r = PyObject_CallMethodNoArgs(aw, g->st->s_close);
        Py_XDECREF(r);
        PyErr_Clear();
        PyErr_Restore(typ, val, tb);
    }
    Py_DECREF(aw);
    return w;
}

/* Resume the current sub-awaitable with a value or an exception. */
static PySendResult sub_resume(CmGetObject *g, PyObject *arg, PyObject *exc, PyObject **res)
{
    if (exc == NULL)
        return PyIter_Send(g->sub, arg, res);
    PyObject *meth = PyObject_GetAttr(g->sub, g->st->s_throw);
    if (meth == NULL) {
        /* an iterator without throw: the exception surfaces at its yield */
        PyErr_Clear();
        raise_exc(exc);
        *res = NULL;
        return PYGEN_ERROR;
    }
    PyObject *r = PyObject_CallOneArg(meth, exc);
    Py_DECREF(meth);
    if (r != NULL) {
        *res = r;
        return PYGEN_NEXT;
    }
    if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyObject *e = cm_exc_take();
        *res = PyObject_GetAttrString(e, "value");
        Py_DECREF(e);
        return *res ? PYGEN_RETURN : PYGEN_ERROR;
    }
    *res = NULL;
    return PYGEN_ERROR;
}

/* Doorkeeper: store only on the key's second request. 1 = fill. */
static int doorkeeper_admits(CmGetObject *g)
{
    CmNodeConfigObject *cfg = g->cfg;
    if (cfg->doorkeeper == Py_None)
        return 1;
    if (cfg->doorkeeper_c)
        return cm_bloomtype_seen_or_put(cfg->doorkeeper, g->hash);
    PyObject *r = PyObject_CallMethodOneArg(cfg->doorkeeper, g->st->s_contains, g->key);
    int seen = r ? PyObject_IsTrue(r) : -1;
    Py_XDECREF(r);
    if (seen == 0) {
        r = PyObject_CallMethodOneArg(cfg->doorkeeper, g->st->s_put, g->key);
        if (r == NULL)
            seen = -1;
        Py_XDECREF(r);
    }
    if (seen < 0) {
        PyErr_WriteUnraisable(cfg->doorkeeper);
        return 1;
    }
    return seen;
}

static void metrics_load_done(CmGetObject *g, int ok)
{
    CmMetricsObject *m = g->cfg->metrics;
    if (ok)
        m->load_success_count++;
    else
        m->load_failure_count++;
    m->total_load_time += (uint64_t)(cm_now_ns() - g->load_start);
}

/* The flight's state machine. arg/exc resume the current sub-awaitable (exc
 * borrowed). Returns NEXT with *out yielded, RETURN with *out the value, or
 * ERROR with the exception set. On RETURN/ERROR the flight is settled. */
static PySendResult drive(CmGetObject *g, PyObject *arg, PyObject *exc, PyObject **out)
{
    CmState *st = g->st;
    CmNodeConfigObject *cfg = g->cfg;
    PyObject *res = NULL;
    PyObject *err = NULL; /* owned: the failure of the flight */

    if (g->has_pending) {
        /* handed to a Task: it must first see what the flight yielded */
        g->has_pending = 0;
        if (exc == NULL) {
            *out = g->pending;
            g->pending = NULL;
            return PYGEN_NEXT;
        }
        Py_CLEAR(g->pending);
    }

    for (;;) {
        if (g->sub != NULL || g->dwait != DW_NONE) {
            PySendResult r =
                g->dwait != DW_NONE ? direct_resume(g, exc, &res) : sub_resume(g, arg, exc, &res);
            arg = Py_None;
            exc = NULL;
            if (r == PYGEN_NEXT) {
                *out = res;
                return PYGEN_NEXT;
            }
            Py_CLEAR(g->sub);
            PyObject *e = r == PYGEN_ERROR ? cm_exc_take() : NULL;
            if (r == PYGEN_ERROR && e == NULL)
                e = PyObject_CallFunction(PyExc_SystemError, "s", "lost exception");
            switch (g->phase) {
            case P_REMOTE: {
                CmStorageCounters *c = counters(g, g->idx);
                if (e != NULL && (!PyObject_TypeCheck(e, (PyTypeObject *)PyExc_Exception) ||
                                  PyObject_TypeCheck(e, (PyTypeObject *)st->StorageKeyError))) {
                    /* cancellation and friends are not a miss; nor is a key
                     * the storage cannot hold: it would miss every time */
                    err = e;
                    goto fail;
                }
                if (e != NULL) {
                    c->errors++;
                    c->misses++;
                    g->missed |= 1u << g->idx;
                    cm_log_warning(st, "cacheme: get from storage '%U' failed: %R",
                                   cfg->caches[g->idx].name, e);
                    Py_DECREF(e);
                } else if (res == st->sentinel) {
                    c->misses++;
                    g->missed |= 1u << g->idx;
                    Py_DECREF(res);
                } else {
                    c->hits++;
                    g->value = res;
                    g->phase = P_RESOLVE;
                    break;
                }
                g->idx++;
                break;
            }
            case P_LOAD:
                metrics_load_done(g, e == NULL);
                if (e != NULL) {
                    err = e;
                    goto fail;
                }
                g->value = res;
                g->phase = P_RESOLVE;
                break;
            case P_FILL:
                if (e != NULL) {
                    if (!PyObject_TypeCheck(e, (PyTypeObject *)PyExc_Exception)) {
                        /* cancelled while filling: the value is already out */
                        if (g->fl != NULL)
                            flight_remove(st, g->fl);
                        raise_exc(e);
                        Py_DECREF(e);
                        return PYGEN_ERROR;
                    }
                    counters(g, g->idx)->errors++;
                    cm_log_warning(st, "cacheme: fill of storage '%U' failed: %R",
                                   cfg->caches[g->idx].name, e);
                    Py_DECREF(e);
                } else {
                    Py_DECREF(res);
                }
                g->idx++;
                break;
            }
            continue;
        }

        switch (g->phase) {
        case P_REMOTE:
            while (g->idx < cfg->ncaches && cfg->caches[g->idx].kind != CM_CACHE_REMOTE)
                g->idx++;
            if (g->idx >= cfg->ncaches || g->idx >= 32) {
                g->phase = P_LOAD;
                continue;
            }
            if (start_call(g, &cfg->caches[g->idx], 0) < 0) {
                PyObject *e = cm_exc_take();
                if (e != NULL && (!PyObject_TypeCheck(e, (PyTypeObject *)PyExc_Exception) ||
                                  PyObject_TypeCheck(e, (PyTypeObject *)st->StorageKeyError))) {
                    err = e;
                    goto fail;
                }
                counters(g, g->idx)->errors++;
                counters(g, g->idx)->misses++;
                g->missed |= 1u << g->idx;
                cm_log_warning(st, "cacheme: get from storage '%U' failed: %R",
                               cfg->caches[g->idx].name, e);
                Py_XDECREF(e);
                g->idx++;
            }
            continue;
        case P_LOAD:
            g->load_start = cm_now_ns();
            if (start_sub(g, call_loader(g)) < 0) {
                metrics_load_done(g, 0);
                err = cm_exc_take();
                goto fail;
            }
            continue;
        case P_RESOLVE:
            if ((g->fl != NULL && g->fl->stale) || !doorkeeper_admits(g))
                g->missed = 0;
            cm_fill_locals(st, cfg, g->key, g->hash, g->value, g->missed);
            if (g->fl != NULL)
                flight_settle(st, g->fl, g->value, NULL);
            g->phase = P_FILL;
            g->idx = 0;
            continue;
        case P_FILL:
            while (g->idx < cfg->ncaches && g->idx < 32 &&
                   (cfg->caches[g->idx].kind == CM_CACHE_LOCAL || !(g->missed & (1u << g->idx))))
                g->idx++;
            if (g->idx >= cfg->ncaches || g->idx >= 32) {
                g->phase = P_END;
                continue;
            }
            if (start_call(g, &cfg->caches[g->idx], 1) < 0) {
                PyObject *e = cm_exc_take();
                counters(g, g->idx)->errors++;
                cm_log_warning(st, "cacheme: fill of storage '%U' failed: %R",
                               cfg->caches[g->idx].name, e);
                Py_XDECREF(e);
                g->idx++;
            }
            continue;
        case P_END:
            if (g->fl != NULL)
                flight_remove(st, g->fl);
            *out = Py_NewRef(g->value);
            return PYGEN_RETURN;
        }
    }
fail:
    if (g->fl != NULL)
        flight_settle(st, g->fl, NULL, err);
    g->phase = P_END;
    raise_exc(err);
    Py_DECREF(err);
    *out = NULL;
    return PYGEN_ERROR;
}

/* Become a waiter of fl: in its list, on the running loop. */
static int become_waiter(CmGetObject *g, CmFlight *fl)
{
    CmState *st = g->st;
    /* the running loop: the leader's, if it runs in this thread (its flight
     * is out, so its loop runs; asking asyncio costs a getpid() call) */
    PyObject *loop = fl->loop != NULL && fl->tstate == (void *)PyThreadState_Get()
                         ? Py_NewRef(fl->loop)
                         : cm_loop_running(st);
    if (loop == NULL)
        return -1;
    if (flight_add_waiter(fl, (PyObject *)g) < 0) {
        Py_DECREF(loop);
        return -1;
    }
    get_held((PyObject *)g);
    Py_XSETREF(g->wloop, loop);
    g->wtstate = PyThreadState_Get();
    if (g->fl != fl) {
        fl->refs++;
        g->fl = fl;
    }
    g->mode = M_WAIT;
    g->wstate = W_JOINED;
    /* a waiter needs only its flight's outcome: the node and the loader
     * (what a leader would load with) go now, young, rather than live as
     * long as the wait and cross the collector's generations with it */
    Py_CLEAR(g->node);
    Py_CLEAR(g->load_fn);
    Py_CLEAR(g->memo_fn);
    Py_CLEAR(g->memo_argv);
    Py_CLEAR(g->memo_kwnames);
    return 0;
}

/* Cancel the Task driving fl: on its loop's thread, as Task.cancel() is not
 * thread-safe (a waiter on another loop may be the last to leave). */
static int flight_cancel_task(CmState *st, CmFlight *fl)
{
    if (fl->loop == NULL || fl->tstate == (void *)PyThreadState_Get())
        return cm_future_cancel(st, fl->task);
    PyObject *cancel = PyObject_GetAttr(fl->task, st->s_cancel);
    if (cancel == NULL)
        return -1;
    PyObject *args[2] = {fl->loop, cancel};
    PyObject *r = PyObject_VectorcallMethod(st->s_call_soon_threadsafe, args,
                                            2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(cancel);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* This waiter goes (cancelled, closed, dropped): if nobody else waits, the
 * flight is abandoned (removed, its Task cancelled). */
static void leave_flight(CmGetObject *g)
{
    CmState *st = g->st;
    CmFlight *fl = g->fl;
    wcb_track(g);
    Py_CLEAR(g->wcb);
    Py_CLEAR(g->wctx);
    if (g->wstate == W_JOINED || g->wstate == W_PENDING)
        g->wstate = W_CANCELLED;
    if (fl != NULL && !fl->done) {
        flight_drop_waiter(fl, (PyObject *)g);
        /* with no Task, an inline leader still drives it and waits */
        if (fl->nwaiters == 0 && !fl->abandoned && fl->task != NULL) {
            fl->abandoned = 1;
            table_unlink(st, fl);
            if (flight_cancel_task(st, fl) < 0)
                PyErr_WriteUnraisable(fl->task);
        }
    }
    g->mode = M_DONE;
}

/* Move the leader's driving state into a new Get run by a Task; the Task's
 * first step yields `pending` (stolen), what the flight is waiting on. */
static int move_to_task(CmGetObject *g, PyObject *pending)
{
    CmState *st = g->st;
    CmFlight *fl = g->fl;
    CmGetObject *d = (CmGetObject *)get_alloc(st);
    PyObject *loop = NULL, *task = NULL;
    if (d == NULL) {
        Py_XDECREF(pending);
        return -1;
    }
    get_unheld((PyObject *)g);
    d->mode = M_DRIVER;
    d->phase = g->phase;
    d->idx = g->idx;
    d->node = g->node;
    g->node = NULL;
    d->cfg = g->cfg;
    g->cfg = NULL;
    d->key = Py_NewRef(g->key);
    d->hash = g->hash;
    d->load_fn = g->load_fn;
    g->load_fn = NULL;
    d->memo_fn = g->memo_fn;
    g->memo_fn = NULL;
    d->memo_argv = g->memo_argv;
    g->memo_argv = NULL;
    d->memo_nargs = g->memo_nargs;
    d->memo_kwnames = g->memo_kwnames;
    g->memo_kwnames = NULL;
    d->missed = g->missed;
    d->sub = g->sub;
    g->sub = NULL;
    d->dwait = g->dwait;
    d->dres = g->dres;
    d->derr = g->derr;
    g->dwait = DW_NONE;
    g->dres = g->derr = NULL;
    if (g->dop != NULL) {
        d->dop = g->dop;
        g->dop = NULL;
        get_held((PyObject *)d);
        Py_XDECREF(cm_redis_op_handoff(d->dop, (PyObject *)d)); /* not our last */
    }
    d->load_start = g->load_start;
    d->value = g->value;
    g->value = NULL;
    d->fl = fl;
    fl->refs++;
    d->pending = pending; /* steals; NULL: resume the sub-awaitable with None */
    d->has_pending = pending != NULL;
    g->mode = M_DONE;
    Py_CLEAR(g->lead_px);

    /* the flight's own loop, not the running one: a Task is cancelled also
     * while its loop is stopped (asyncio.run() at teardown does it) */
    loop = fl->loop != NULL   ? Py_NewRef(fl->loop)
           : g->wloop != NULL ? Py_NewRef(g->wloop)
                              : cm_loop_running(st);
    if (loop != NULL) {
        Py_XSETREF(d->wloop, Py_NewRef(loop));
        d->wtstate = fl->loop != NULL ? fl->tstate : PyThreadState_Get();
        task = cm_loop_create_task(st, loop, (PyObject *)d);
        Py_DECREF(loop);
    }
    if (task == NULL) {
        /* nobody will drive it: fail the flight, close its awaitable */
        PyObject *e = cm_exc_take();
        flight_settle(st, fl, NULL, e);
        Py_DECREF(d); /* its finalizer closes the sub-awaitable */
        raise_exc(e);
        Py_DECREF(e);
        return -1;
    }
    Py_XSETREF(fl->task, task);
    Py_DECREF(d);
    return 0;
}

/* ---- the leader's stand-in future -------------------------------------------
 *
 * While the leader drives its flight inline (the way an `await` chain does),
 * what its Task awaits is not the future X its load or storage yielded but
 * this proxy of it. X completing runs the proxy, which runs the Task's
 * wakeup at once: no extra loop iteration and no Task of our own. The proxy
 * also intercepts the Task's cancel(): with other callers waiting, the
 * flight moves to a Task of its own (move_to_task) and only the leader is
 * cancelled; with nobody else, X itself is cancelled, i.e. the load.
 *
 * Like a Future, the proxy never runs a callback from inside a method call
 * (cancel, add_done_callback): those are scheduled on the loop. Only X's
 * own done-callback, which the loop runs, calls the wakeup directly; or,
 * when X is the future a Redis call just returned, the op itself: the proxy
 * is then not a done-callback of X but the op's waiter (`direct`), woken
 * with the other waiters of its batch of replies by one loop callback
 * (cm_redis_attach_waiter, cm_proxy_wake_later). Waiters need no proxy:
 * each is its own future (below). */

enum { PX_PENDING, PX_FIRED, PX_DETACHED };

typedef struct {
    PyObject_HEAD
    CmGetObject *owner; /* the leader */
    PyObject *target;   /* X */
    PyObject *loop;
    PyObject *cb, *ctx; /* the Task's wakeup and its context */
    int blocking;       /* _asyncio_future_blocking */
    int state;
    int direct; /* woken by X's Redis op (cm_redis_attach_waiter), not by a
                 * done-callback of X */
} CmProxyObject;

/* Run the Task wakeup *cbp(arg) in the context *ctxp, both taken out first
 * (the call may reenter their owner). */
static void run_wakeup(PyObject **cbp, PyObject **ctxp, PyObject *arg)
{
    PyObject *cb = *cbp, *ctx = *ctxp;
    *cbp = *ctxp = NULL;
    if (cb == NULL) {
        Py_XDECREF(ctx);
        return;
    }
    Py_INCREF(arg); /* the call may drop what held it */
    if (ctx != NULL && ctx != Py_None && PyContext_Enter(ctx) < 0) {
        PyErr_WriteUnraisable(cb);
        Py_CLEAR(ctx);
    }
    PyObject *r = PyObject_CallOneArg(cb, arg);
    if (r == NULL)
        PyErr_WriteUnraisable(cb);
    Py_XDECREF(r);
    if (ctx != NULL && ctx != Py_None && PyContext_Exit(ctx) < 0)
        PyErr_WriteUnraisable(cb);
    Py_DECREF(cb);
    Py_XDECREF(ctx);
    Py_DECREF(arg);
}

/* Schedule the wakeup *cbp(arg) on loop in its context *ctxp, as a done
 * Future schedules its callbacks; both are taken out once scheduled. 0 (also
 * when none is set), or -1 with an exception (they stay). */
static int schedule_wakeup(CmState *st, PyObject *loop, PyObject **cbp, PyObject **ctxp,
                           PyObject *arg)
{
    if (*cbp == NULL)
        return 0;
    if (cm_loop_call_soon_arg(st, loop, *cbp, arg, *ctxp) < 0)
        return -1;
    Py_CLEAR(*cbp);
    Py_CLEAR(*ctxp);
    return 0;
}

/* The checks of add_done_callback(fn, *, context=None) on a future-like
 * object of ours whose wakeup is *cb: fn (borrowed), with *ctx its context
 * (borrowed, or NULL); NULL with an exception for a malformed call or a
 * second wakeup (a get() is awaited by one task). */
static PyObject *done_callback_args(CmState *st, PyObject *cb, PyObject *const *args,
                                    Py_ssize_t nargs, PyObject *kwnames, PyObject **ctx)
{
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs != 1 || nkw > 1 ||
        (nkw == 1 && PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, 0), st->s_context))) {
        PyErr_SetString(PyExc_TypeError, "add_done_callback(fn, *, context=None)");
        return NULL;
    }
    if (cb != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cacheme: a get() is awaited by one task only");
        return NULL;
    }
    *ctx = nkw == 1 ? args[1] : NULL;
    return args[0];
}

/* remove_done_callback(fn) on a wakeup *cbp in context *ctxp: 1 or 0 */
static PyObject *remove_wakeup(PyObject **cbp, PyObject **ctxp, PyObject *fn)
{
    if (*cbp == NULL || *cbp != fn)
        return PyLong_FromLong(0);
    Py_CLEAR(*cbp);
    Py_CLEAR(*ctxp);
    return PyLong_FromLong(1);
}

/* _asyncio_future_blocking = v, of an int at offset `off` of self */
static int set_blocking(PyObject *self, PyObject *v, void *off)
{
    int b = v ? PyObject_IsTrue(v) : 0;
    if (b < 0)
        return -1;
    *(int *)((char *)self + (size_t)off) = b;
    return 0;
}

/* cb is an asyncio Task's wakeup (asyncio's C Task): given an asyncio
 * Future, it reads its outcome directly instead of calling result() through
 * a bound method made for the call. That is _asyncio's internal behaviour,
 * so the shortcut is taken only on the versions it was checked on
 * (compat.h: CM_PRIVATE_OK); elsewhere every wakeup gets the Get itself. */
static int is_task_wakeup(CmState *st, PyObject *cb)
{
#if CM_PRIVATE_OK
    return cb != NULL && PyCFunction_Check(cb) && PyCFunction_GET_SELF(cb) != NULL &&
           Py_IS_TYPE(PyCFunction_GET_SELF(cb), (PyTypeObject *)st->TaskType);
#else
    (void)st;
    (void)cb;
    return 0;
#endif
}

/* A done Future with the result None on loop, for a Task to resume on
 * (borrowed), or NULL (no exception) where there is none to be had. */
static PyObject *done_future(CmState *st, PyObject *loop)
{
    if (st->done_loop != loop) {
        PyObject *f = cm_loop_create_future(st, loop);
        if (f == NULL || !Py_IS_TYPE(f, (PyTypeObject *)st->FutureType) ||
            cm_future_set_result(st, f, Py_None) < 0) {
            PyErr_Clear();
            Py_XDECREF(f);
            return NULL;
        }
        Py_XSETREF(st->done_future, f);
        Py_XSETREF(st->done_loop, Py_NewRef(loop));
    }
    return st->done_future;
}

/* The Task sees X's outcome as the proxy's (proxy_result): it may read X. */
static void proxy_run_cb(CmProxyObject *p)
{
    PyObject *arg = (PyObject *)p;
    if (p->state != PX_DETACHED && p->target != NULL && p->owner != NULL &&
        Py_IS_TYPE(p->target, (PyTypeObject *)p->owner->st->FutureType) &&
        is_task_wakeup(p->owner->st, p->cb))
        arg = p->target;
    run_wakeup(&p->cb, &p->ctx, arg);
}

static int proxy_schedule_cb(CmProxyObject *p)
{
    return schedule_wakeup(p->owner->st, p->loop, &p->cb, &p->ctx, (PyObject *)p);
}

static void proxy_fire(PyObject *self)
{
    CmProxyObject *p = (CmProxyObject *)self;
    if (p->state == PX_PENDING) {
        p->state = PX_FIRED;
        proxy_run_cb(p);
    }
}

/* ---- waking in batches ---------------------------------------------------------
 *
 * A proxy that is not a done-callback of its future (`direct`) is woken by
 * whoever settles that future, a Redis op; a waiting Get by its flight.
 * Instead of one loop.call_soon per wakeup (a Handle and its Python frames,
 * as set_result would make for a done-callback), those woken while the loop
 * runs one callback are woken together by the next one. */

static void waiter_fire(CmGetObject *g);

/* A batch wakes thousands of Tasks at high concurrency, each of them (its
 * Get, the wakeup, the Task) long out of the cache: the memory of the ones a
 * few places ahead is asked for while this one runs, in the order each is
 * read from the one before, rather than waited for one miss at a time. */
static void prefetch_wake(CmState *st, PyObject *batch, Py_ssize_t n, Py_ssize_t i)
{
    if (i + 6 < n)
        __builtin_prefetch(PyList_GET_ITEM(batch, i + 6));
    if (i + 3 < n) {
        PyObject *o = PyList_GET_ITEM(batch, i + 3);
        if (Py_IS_TYPE(o, st->GetType) && ((CmGetObject *)o)->wcb != NULL)
            __builtin_prefetch(((CmGetObject *)o)->wcb);
    }
    if (i + 1 < n) {
        PyObject *o = PyList_GET_ITEM(batch, i + 1);
        PyObject *cb = Py_IS_TYPE(o, st->GetType) ? ((CmGetObject *)o)->wcb : NULL;
        if (cb != NULL && PyCFunction_Check(cb) && PyCFunction_GET_SELF(cb) != NULL) {
            char *t = (char *)PyCFunction_GET_SELF(cb);
            __builtin_prefetch(t);
            __builtin_prefetch(t + 64);
            __builtin_prefetch(t + 128);
        }
    }
}

/* The batch (a list) of one loop, passed to its callback: a batch of
 * another loop (thread) may open while this one waits to run. */
static PyObject *wake_batch_run(PyObject *mod, PyObject *batch)
{
    CmState *st = cm_state_from_module(mod);
    if (batch == st->wake_batch) { /* the callback's argument keeps it */
        Py_CLEAR(st->wake_batch);
        Py_CLEAR(st->wake_loop);
    }
    if (PyList_CheckExact(batch)) {
        /* each released as soon as its Task has run: what the step ended
         * is freed before the next one allocates (a batch holds thousands
         * at high concurrency, and frees that come after the collector has
         * reset its count are lost to it: it would collect more often) */
        Py_ssize_t n = PyList_GET_SIZE(batch);
        for (Py_ssize_t i = 0; i < n; i++) {
            prefetch_wake(st, batch, n, i);
            PyObject *o = PyList_GET_ITEM(batch, i);
            PyList_SET_ITEM(batch, i, Py_NewRef(Py_None));
            if (Py_IS_TYPE(o, st->GetType)) {
                CmGetObject *g = (CmGetObject *)o;
                waiter_fire(g);
                /* held out of the collector until now: back in if anything
                 * but the batch still holds it, or its Task may come back
                 * to it; a Get that is done and only ours just goes */
                if (g->untracked && (Py_REFCNT(o) > 1 || g->mode != M_DONE))
                    get_unheld(o);
            } else {
                proxy_fire(o);
            }
            Py_DECREF(o);
        }
    }
    Py_RETURN_NONE;
}
static PyMethodDef wake_batch_def = {"_wake_batch", wake_batch_run, METH_O, NULL};

/* Queue o (borrowed) for the next batch on loop, a loop of this thread: 0,
 * or -1 when it cannot go in one (no exception set). The open batch is that
 * of the last loop used; another loop opens its own. */
static int wake_batch_add(CmState *st, PyObject *o, PyObject *loop)
{
    if (st->wake_cb == NULL)
        return -1;
    if (st->wake_loop != loop) {
        PyObject *ctx = cm_loop_context(st); // borrowed
        PyObject *b = ctx != NULL ? PyList_New(0) : NULL;
        if (b == NULL)
            goto fail;
        if (cm_loop_call_soon_arg(st, loop, st->wake_cb, b, ctx) < 0) {
            Py_DECREF(b);
            goto fail;
        }
        Py_XSETREF(st->wake_batch, b);
        Py_XSETREF(st->wake_loop, Py_NewRef(loop));
    }
    if (PyList_Append(st->wake_batch, o) < 0)
        goto fail;
    return 0;
fail:
    PyErr_Clear();
    return -1;
}

void cm_proxy_wake_later(CmState *st, PyObject *proxy, PyObject *fut, PyObject *loop)
{
    /* else what a done-callback would have been: proxy(fut) on its loop */
    PyObject *ctx = NULL; // borrowed
    if (wake_batch_add(st, proxy, loop) < 0 &&
        ((ctx = cm_loop_context(st)) == NULL ||
         cm_loop_call_soon_arg(st, loop, proxy, fut, ctx) < 0)) {
        PyErr_Clear();
        proxy_fire(proxy); /* the loop is gone: wake it now rather than never */
    }
    Py_DECREF(proxy);
    Py_DECREF(loop);
}

/* X's done-callback: proxy(X), run by the loop */
static PyObject *proxy_tp_call(PyObject *self, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kw))
{
    proxy_fire(self);
    Py_RETURN_NONE;
}

static PyObject *proxy_add_done_callback(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                         PyObject *kwnames)
{
    CmProxyObject *p = (CmProxyObject *)self;
    PyObject *ctx, *fn = done_callback_args(p->owner->st, p->cb, args, nargs, kwnames, &ctx);
    if (fn == NULL)
        return NULL;
    p->cb = Py_NewRef(fn);
    p->ctx = Py_XNewRef(ctx);
    if (p->state != PX_PENDING) {
        if (proxy_schedule_cb(p) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (cm_redis_attach_waiter(p->owner->st, p->target, self, p->loop)) {
        p->direct = 1;
        Py_RETURN_NONE;
    }
    /* with the Task's context to enter, proxy(X) needs none of its own */
    int rc = p->ctx != NULL && p->ctx != Py_None
                 ? cm_future_add_done_callback_own_context(p->owner->st, p->target, self)
                 : cm_future_add_done_callback(p->owner->st, p->target, self);
    if (rc < 0) {
        Py_CLEAR(p->cb);
        Py_CLEAR(p->ctx);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *proxy_remove_done_callback(PyObject *self, PyObject *fn)
{
    CmProxyObject *p = (CmProxyObject *)self;
    return remove_wakeup(&p->cb, &p->ctx, fn);
}

/* With others waiting on an unsettled flight, move it to a Task of its own
 * so that only the leader goes: 1 moved, 0 not needed, -1 error. `pending`
 * (borrowed, may be NULL) is what the flight waits on now. */
static int leader_leaves(CmGetObject *g, PyObject *pending)
{
    CmFlight *fl = g->fl;
    if (g->mode != M_LEAD || fl == NULL || fl->done || fl->nwaiters == 0)
        return 0;
    if (move_to_task(g, Py_XNewRef(pending)) < 0)
        return -1;
    return 1;
}

/* The leader g is cancelled while its flight waits on `pending` (borrowed,
 * may be NULL). With others waiting the flight moves to a Task of its own:
 * 1. Else (0) it may no longer be joined, or a newcomer would share the
 * cancellation. */
static int leader_cancelled(CmGetObject *g, PyObject *pending)
{
    int moved = leader_leaves(g, pending);
    if (moved < 0) /* the flight failed its waiters; cancel the leader anyway */
        PyErr_WriteUnraisable((PyObject *)g);
    if (moved == 0 && g->fl != NULL && !g->fl->done && g->mode == M_LEAD) {
        g->fl->abandoned = 1;
        table_unlink(g->st, g->fl);
    }
    return moved;
}

static PyObject *proxy_cancel(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    CmProxyObject *p = (CmProxyObject *)self;
    CmGetObject *g = p->owner;
    CmState *st = g->st;
    if (p->state != PX_PENDING)
        Py_RETURN_FALSE;
    if (leader_cancelled(g, p->target) != 0) {
        p->state = PX_DETACHED;
        if (proxy_schedule_cb(p) < 0) /* the Task sees result() raise CancelledError */
            return NULL;
        Py_RETURN_TRUE;
    }
    /* nobody else: cancel what the load waits on, with the arguments as
     * given (cancel(msg=...) included) */
    PyObject *targs[4] = {p->target};
    Py_ssize_t nall = nargs + (kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0);
    if (nall > 3) {
        PyErr_SetString(PyExc_TypeError, "cancel(msg=None)");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nall; i++)
        targs[1 + i] = args[i];
    PyObject *r = PyObject_VectorcallMethod(st->s_cancel, targs,
                                            (1 + nargs) | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
    /* X has no done-callback of ours to run: wake the Task as it would */
    if (r == Py_True && p->direct && proxy_schedule_cb(p) < 0)
        Py_CLEAR(r);
    return r;
}

static PyObject *proxy_forward(CmProxyObject *p, PyObject *name)
{
    return PyObject_VectorcallMethod(name, &p->target, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static PyObject *proxy_result(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmProxyObject *p = (CmProxyObject *)self;
    if (p->state == PX_DETACHED) {
        PyErr_SetNone(p->owner->st->CancelledError);
        return NULL;
    }
    return proxy_forward(p, p->owner->st->s_result);
}

static PyObject *proxy_exception(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmProxyObject *p = (CmProxyObject *)self;
    if (p->state == PX_DETACHED) {
        PyErr_SetNone(p->owner->st->CancelledError);
        return NULL;
    }
    return proxy_forward(p, p->owner->st->s_exception);
}

static PyObject *proxy_done(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmProxyObject *p = (CmProxyObject *)self;
    if (p->state != PX_PENDING)
        Py_RETURN_TRUE;
    return proxy_forward(p, p->owner->st->s_done);
}

static PyObject *proxy_cancelled(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmProxyObject *p = (CmProxyObject *)self;
    if (p->state == PX_DETACHED)
        Py_RETURN_TRUE;
    return proxy_forward(p, p->owner->st->s_cancelled);
}

static PyObject *proxy_get_blocking(PyObject *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(((CmProxyObject *)self)->blocking);
}

/* `await proxy` (a Task never does it; code that receives one may) */
static PyObject *proxy_await(PyObject *self)
{
    return cm_await_iter(((CmProxyObject *)self)->target);
}

static int proxy_traverse(PyObject *self, visitproc visit, void *arg)
{
    CmProxyObject *p = (CmProxyObject *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(p->owner);
    Py_VISIT(p->target);
    Py_VISIT(p->loop);
    Py_VISIT(p->cb);
    Py_VISIT(p->ctx);
    return 0;
}

static int proxy_clear(PyObject *self)
{
    CmProxyObject *p = (CmProxyObject *)self;
    Py_CLEAR(p->owner);
    Py_CLEAR(p->target);
    Py_CLEAR(p->loop);
    Py_CLEAR(p->cb);
    Py_CLEAR(p->ctx);
    return 0;
}

static void proxy_free_clear(CmState *st)
{
    while (st->proxy_free != NULL) {
        CmProxyObject *p = st->proxy_free;
        st->proxy_free = p->owner;
        PyObject_GC_Del(p);
    }
    st->proxy_free_len = 0;
}

static void proxy_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    CmProxyObject *p = (CmProxyObject *)self;
    CmState *st = p->owner != NULL ? p->owner->st : NULL;
    PyObject_GC_UnTrack(self);
    proxy_clear(self);
    if (st != NULL && st->proxy_free_len < CM_PROXY_FREE_MAX) {
        /* kept for reuse (chained through `owner`): no allocation for the
         * collector to count per load that suspends (see get_dealloc) */
        p->owner = st->proxy_free;
        st->proxy_free = p;
        st->proxy_free_len++;
    } else {
        tp->tp_free(self);
    }
    Py_DECREF(tp);
}

static PyMethodDef proxy_methods[] = {
    {"add_done_callback", (PyCFunction)(void (*)(void))proxy_add_done_callback,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"remove_done_callback", proxy_remove_done_callback, METH_O, NULL},
    {"cancel", (PyCFunction)(void (*)(void))proxy_cancel, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"result", proxy_result, METH_NOARGS, NULL},
    {"exception", proxy_exception, METH_NOARGS, NULL},
    {"done", proxy_done, METH_NOARGS, NULL},
    {"cancelled", proxy_cancelled, METH_NOARGS, NULL},
    {NULL, NULL},
};

/* the loop as `_loop`, not get_loop(): a Task reads it without a bound
 * method made and called per suspension (asyncio.futures._get_loop) */
static PyMemberDef proxy_members[] = {
    {"_loop", T_OBJECT, offsetof(CmProxyObject, loop), READONLY, NULL},
    {NULL},
};

static PyGetSetDef proxy_getset[] = {
    {"_asyncio_future_blocking", proxy_get_blocking, set_blocking, NULL,
     (void *)offsetof(CmProxyObject, blocking)},
    {NULL},
};

static PyType_Slot proxy_slots[] = {
    {Py_tp_call, proxy_tp_call},  {Py_am_await, proxy_await},     {Py_tp_methods, proxy_methods},
    {Py_tp_getset, proxy_getset}, {Py_tp_members, proxy_members}, {Py_tp_traverse, proxy_traverse},
    {Py_tp_clear, proxy_clear},   {Py_tp_dealloc, proxy_dealloc}, {0, NULL},
};

static PyType_Spec proxy_spec = {
    .name = "cacheme._core.FlightProxy",
    .basicsize = sizeof(CmProxyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = proxy_slots,
};

static void get_abort(CmGetObject *g);

/* A proxy of g for `target` (a new reference), on the running loop. NULL
 * with an exception. */
static CmProxyObject *proxy_new(CmGetObject *g, PyObject *target)
{
    CmState *st = g->st;
    PyObject *loop = g->wloop != NULL ? Py_NewRef(g->wloop) : cm_loop_running(st);
    if (loop == NULL)
        return NULL;
    CmProxyObject *p = st->proxy_free;
    if (p != NULL) { /* see get_dealloc */
        st->proxy_free = p->owner;
        st->proxy_free_len--;
        PyObject_Init((PyObject *)p, st->ProxyType);
    } else if ((p = PyObject_GC_New(CmProxyObject, st->ProxyType)) == NULL) {
        Py_DECREF(loop);
        return NULL;
    }
    p->owner = (CmGetObject *)Py_NewRef(g);
    p->target = Py_NewRef(target);
    p->loop = loop;
    p->cb = p->ctx = NULL;
    p->blocking = 1;
    p->state = PX_PENDING;
    p->direct = 0;
    PyObject_GC_Track(p);
    return p;
}

/* The leader's flight yielded `yielded` (stolen): register the flight so
 * others can join, and give the Task a proxy of what it waits on. */
static PySendResult leader_suspend(CmGetObject *g, PyObject *yielded, PyObject **out)
{
    CmState *st = g->st;
    PyObject *blocking = NULL, *e;
    if (g->fl == NULL) {
        /* the flight becomes visible only now: until its first suspension
         * nobody else could have run to look for it */
        if (g->wloop == NULL) {
            if ((g->wloop = cm_loop_running(st)) == NULL)
                goto fail;
            g->wtstate = PyThreadState_Get();
        }
        if ((g->fl = flight_start(st, g->key, g->hash)) == NULL)
            goto fail;
        g->fl->loop = Py_NewRef(g->wloop);
        g->fl->tstate = PyThreadState_Get();
        if (g->phase >= P_FILL)
            flight_settle(st, g->fl, g->value, NULL);
    }
    if (yielded == (PyObject *)g) { /* its own Redis call: it is the future */
        *out = yielded;
        return PYGEN_NEXT;
    }
    if (yielded != Py_None) {
        blocking = PyObject_GetAttr(yielded, st->s__asyncio_future_blocking);
        if (blocking == NULL)
            PyErr_Clear();
    }
    if (blocking == NULL || blocking != Py_True) {
        /* a bare yield (sleep(0)) or not a future: nothing to stand in for */
        Py_XDECREF(blocking);
        *out = yielded;
        return PYGEN_NEXT;
    }
    Py_DECREF(blocking);
    CmProxyObject *p = proxy_new(g, yielded);
    if (p == NULL)
        goto fail;
    Py_DECREF(yielded);
    Py_XSETREF(g->lead_px, Py_NewRef(p));
    *out = (PyObject *)p;
    return PYGEN_NEXT;
fail:
    e = cm_exc_take();
    Py_XDECREF(yielded);
    get_abort(g);
    raise_exc(e);
    Py_DECREF(e);
    *out = NULL;
    return PYGEN_ERROR;
}

uint64_t cm_local_puts(CmNodeConfigObject *cfg)
{
    uint64_t n = 0;
    for (Py_ssize_t i = 0; i < cfg->ncaches; i++) {
        if (cfg->caches[i].kind == CM_CACHE_LOCAL)
            n += cm_store_puts((CmStoreObject *)cfg->caches[i].storage);
    }
    return n;
}

/* A get awaited later than it was made (e.g. queued): a local store may have
 * been filled since get() looked. A new reference on a hit, else NULL. */
static PyObject *recheck_locals(CmGetObject *g)
{
    CmNodeConfigObject *cfg = g->cfg;
    if (cm_local_puts(cfg) == g->local_puts)
        return NULL;
    for (Py_ssize_t i = 0; i < cfg->ncaches && i < 32; i++) {
        CmCacheRef *r = &cfg->caches[i];
        if (r->kind != CM_CACHE_LOCAL || !(g->missed & (1u << i)))
            continue;
        PyObject *v = cm_store_lookup((CmStoreObject *)r->storage, g->key, g->hash);
        if (v == NULL)
            continue;
        CmStorageCounters *c = counters(g, i);
        c->hits++;
        c->misses--; /* get() counted this one as a miss */
        cfg->metrics->hit_count++;
        cm_fill_locals(g->st, cfg, g->key, g->hash, v, g->missed & ((1u << i) - 1));
        return v;
    }
    return NULL;
}

/* ---- a Get is its own future ------------------------------------------------
 *
 * A Get waiting on a flight (M_WAIT), or a flight's Get waiting on a Redis
 * call it made (start_call), is what its Task waits on: it yields itself and
 * answers the calls asyncio's Task makes of a future-like object
 * (_asyncio_future_blocking, _loop, add_done_callback, result, cancel).
 * The flight, or the Redis op, marks it settled and wakes its Task in a
 * batch with the others woken in the same loop callback, so waiting costs
 * no Future, no iterator of one and no proxy. result() of a waiter is the
 * flight's outcome; of a Redis call, None (the Get reads the outcome itself
 * when resumed). Cancelling a waiter cancels this caller only; a leader
 * hands the flight to a Task of its own if others wait (as its proxy does).
 * Before it is awaited _asyncio_future_blocking is None: asyncio.isfuture()
 * says no, and ensure_future() or gather() wrap it in a Task like any other
 * awaitable. */

static PyObject *waiter_cancelled_error(CmGetObject *g)
{
    if (g->wmsg == NULL || g->wmsg == Py_None)
        PyErr_SetNone(g->st->CancelledError);
    else
        PyErr_SetObject(g->st->CancelledError, g->wmsg);
    return NULL;
}

/* A Task resumed on success needs no more than a done Future: its result()
 * would be None (a Redis call) or only checked for an exception. */
static void waiter_fire(CmGetObject *g)
{
    PyObject *arg = (PyObject *)g;
    if (g->wstate == W_SETTLED && (g->mode != M_WAIT || g->fl->exc == NULL) &&
        is_task_wakeup(g->st, g->wcb)) {
        PyObject *f = done_future(g->st, g->wloop);
        if (f != NULL)
            arg = f;
    }
    /* an untracked wakeup (wcb_track) is tracked again only if something
     * else still holds it after the call; else it just goes */
    PyObject *cb = g->wcb_untracked ? Py_XNewRef(g->wcb) : NULL;
    g->wcb_untracked = 0;
    run_wakeup(&g->wcb, &g->wctx, arg);
    if (cb != NULL) {
        if (Py_REFCNT(cb) > 1 && !PyObject_GC_IsTracked(cb))
            PyObject_GC_Track(cb);
        Py_DECREF(cb);
    }
}

/* Wake g's Task (g stolen) from the next batch; else, as a Future would,
 * cb(g) on the loop in the Task's context. */
static void waiter_wake(CmState *st, CmGetObject *g)
{
    if (g->wtstate != NULL && g->wtstate != (void *)PyThreadState_Get()) {
        /* a waiter on the loop of another thread: woken through
         * call_soon_threadsafe, in its Task's context */
        get_unheld((PyObject *)g);
        if (g->wcb != NULL) {
            if (cm_loop_call_soon_threadsafe_arg(st, g->wloop, g->wcb, (PyObject *)g, g->wctx) < 0)
                PyErr_WriteUnraisable((PyObject *)g); /* its loop is closed */
            Py_CLEAR(g->wcb);
            Py_CLEAR(g->wctx);
        }
        Py_DECREF(g);
        return;
    }
    /* A Get its flight or op held out of the collector stays out while the
     * batch holds it (wake_batch_run) */
    if (wake_batch_add(st, (PyObject *)g, g->wloop) < 0) {
        get_unheld((PyObject *)g);
        if (schedule_wakeup(st, g->wloop, &g->wcb, &g->wctx, (PyObject *)g) < 0) {
            PyErr_Clear();
            waiter_fire(g); /* the loop is gone: wake it now rather than never */
        }
    }
    Py_DECREF(g);
}

/* The flight's outcome is in (g stolen, taken out of its list). */
static void waiter_settled(CmState *st, PyObject *o, int cancelled)
{
    CmGetObject *g = (CmGetObject *)o;
    if (g->wstate == W_JOINED || g->wstate == W_PENDING) {
        g->wstate = cancelled ? W_CANCELLED : W_SETTLED;
        if (g->wcb != NULL) {
            waiter_wake(st, g);
            return;
        }
    }
    get_unheld(o);
    Py_DECREF(g);
}

static int waiting(CmGetObject *g) { return g->wstate == W_JOINED || g->wstate == W_PENDING; }

static PyObject *get_add_done_callback(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                       PyObject *kwnames)
{
    CmGetObject *g = (CmGetObject *)self;
    PyObject *ctx, *fn = done_callback_args(g->st, g->wcb, args, nargs, kwnames, &ctx);
    if (fn == NULL)
        return NULL;
    if (g->wstate == W_NONE) {
        PyErr_SetString(PyExc_RuntimeError, "cacheme: this get() is not waiting on a flight");
        return NULL;
    }
    if (!waiting(g)) { /* done: call it soon, as a done Future does */
        if (cm_loop_call_soon_arg(g->st, g->wloop, fn, self, ctx) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    g->wcb = Py_NewRef(fn);
    g->wctx = Py_XNewRef(ctx);
    if (g->untracked && is_task_wakeup(g->st, fn) && PyObject_GC_IsTracked(fn)) {
        PyObject_GC_UnTrack(fn);
        g->wcb_untracked = 1;
    }
    Py_RETURN_NONE;
}

static PyObject *get_remove_done_callback(PyObject *self, PyObject *fn)
{
    CmGetObject *g = (CmGetObject *)self;
    wcb_track(g);
    return remove_wakeup(&g->wcb, &g->wctx, fn);
}

/* cancel(msg=None): this caller stops waiting; its Task is woken and sees
 * CancelledError. The flight goes on for the others. */
static PyObject *get_cancel(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    CmGetObject *g = (CmGetObject *)self;
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nkw > 1 ||
        (nkw == 1 && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "msg"))) {
        PyErr_SetString(PyExc_TypeError, "cancel(msg=None)");
        return NULL;
    }
    if (!waiting(g))
        Py_RETURN_FALSE;
    if (g->mode == M_LEAD)
        leader_cancelled(g, NULL);
    /* (a settled flight is waking its list: this one is skipped there) */
    if (g->mode == M_WAIT && g->fl != NULL && !g->fl->done)
        flight_drop_waiter(g->fl, self); /* the caller has a reference */
    /* a Redis call goes on without us; the CancelledError thrown in next
     * (or raised by the next send) ends what the Get was doing */
    direct_release_op(g);
    g->wstate = W_CANCELLED;
    Py_XSETREF(g->wmsg, nargs + nkw ? Py_NewRef(args[0]) : NULL);
    if (g->wcb != NULL)
        waiter_wake(g->st, (CmGetObject *)Py_NewRef(self));
    Py_RETURN_TRUE;
}

static PyObject *get_result(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmGetObject *g = (CmGetObject *)self;
    if (g->wstate == W_CANCELLED)
        return waiter_cancelled_error(g);
    if (g->wstate != W_SETTLED) {
        PyErr_SetString(g->st->InvalidStateError, "Result is not ready.");
        return NULL;
    }
    if (g->mode != M_WAIT && g->mode != M_DONE) /* a Redis call: read when resumed */
        Py_RETURN_NONE;
    if (g->fl->exc != NULL) {
        raise_flight_exc(g->fl);
        return NULL;
    }
    return Py_NewRef(g->fl->value);
}

static PyObject *get_exception(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmGetObject *g = (CmGetObject *)self;
    if (g->wstate == W_CANCELLED)
        return waiter_cancelled_error(g);
    if (g->wstate != W_SETTLED) {
        PyErr_SetString(g->st->InvalidStateError, "Exception is not set.");
        return NULL;
    }
    if (g->mode != M_WAIT && g->mode != M_DONE)
        Py_RETURN_NONE;
    return Py_NewRef(g->fl->exc != NULL ? g->fl->exc : Py_None);
}

static PyObject *get_done(PyObject *self, PyObject *Py_UNUSED(x))
{
    int w = ((CmGetObject *)self)->wstate;
    return PyBool_FromLong(w == W_SETTLED || w == W_CANCELLED);
}

static PyObject *get_cancelled(PyObject *self, PyObject *Py_UNUSED(x))
{
    return PyBool_FromLong(((CmGetObject *)self)->wstate == W_CANCELLED);
}

/* None until it is awaited as a waiter (see above) */
static PyObject *get_get_blocking(PyObject *self, void *Py_UNUSED(c))
{
    CmGetObject *g = (CmGetObject *)self;
    if (g->wstate == W_NONE || g->wstate == W_JOINED)
        Py_RETURN_NONE;
    return PyBool_FromLong(g->blocking);
}

/* Sent to (or thrown into) while waiting. */
static PySendResult waiter_step(CmGetObject *g, PyObject *exc, PyObject **out)
{
    *out = NULL;
    if (exc != NULL) {
        leave_flight(g);
        raise_exc(exc);
        return PYGEN_ERROR;
    }
    switch (g->wstate) {
    case W_JOINED:
        g->wstate = W_PENDING;
        g->blocking = 1;
        *out = Py_NewRef(g);
        return PYGEN_NEXT;
    case W_SETTLED:
        g->mode = M_DONE;
        if (g->fl->exc != NULL) {
            raise_flight_exc(g->fl);
            return PYGEN_ERROR;
        }
        *out = Py_NewRef(g->fl->value);
        return PYGEN_RETURN;
    case W_CANCELLED:
        leave_flight(g);
        waiter_cancelled_error(g);
        return PYGEN_ERROR;
    default: /* resumed while the flight is still out */
        leave_flight(g);
        PyErr_SetString(PyExc_RuntimeError, "await wasn't used with future");
        return PYGEN_ERROR;
    }
}

/* A CancelledError thrown into the leader once the proxy px (or NULL) it
 * awaited has fired, and what that proxy stands in for was cancelled: it is
 * that future's outcome (cancelled by someone else, e.g. Meta.load_timeout),
 * which goes to the load as `await` would take it, not the leader's own
 * cancellation (1). */
static int thrown_by_target(CmState *st, PyObject *px, PyObject *exc)
{
    CmProxyObject *p = (CmProxyObject *)px;
    if (p == NULL || p->state != PX_FIRED || p->target == NULL || !cm_is_cancelled_error(st, exc))
        return 0;
    PyObject *c = PyObject_CallMethodNoArgs(p->target, st->s_cancelled);
    if (c == NULL)
        PyErr_Clear();
    int r = c == Py_True;
    Py_XDECREF(c);
    return r;
}

static PySendResult get_step(CmGetObject *g, PyObject *arg, PyObject *exc, PyObject **out)
{
    CmState *st = g->st;
    PySendResult r;
    switch (g->mode) {
    case M_START: {
        PyObject *v = exc == NULL ? recheck_locals(g) : NULL;
        if (v != NULL) {
            g->mode = M_DONE;
            *out = v;
            return PYGEN_RETURN;
        }
        CmFlight *fl = flight_find(st, g->key, g->hash);
        if (fl != NULL) {
            g->cfg->metrics->hit_count++;
            if (fl->done) {
                g->mode = M_DONE;
                *out = Py_NewRef(fl->value);
                return PYGEN_RETURN;
            }
            if (become_waiter(g, fl) < 0) {
                g->mode = M_DONE;
                *out = NULL;
                return PYGEN_ERROR;
            }
            return get_step(g, arg, exc, out);
        }
        if (exc != NULL) {
            g->mode = M_DONE;
            raise_exc(exc);
            *out = NULL;
            return PYGEN_ERROR;
        }
        /* the flight is registered at its first suspension (handoff) */
        g->cfg->metrics->miss_count++;
        g->mode = M_LEAD;
        g->phase = P_REMOTE;
        g->idx = 0;
        arg = Py_None;
    }
        /* fall through */
    case M_LEAD: {
        PyObject *px = g->lead_px;
        g->lead_px = NULL;
        if (exc != NULL && !PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_Exception) &&
            !thrown_by_target(st, px, exc)) {
            /* cancelled or closed while not awaiting a proxy (after a bare
             * yield): the others keep the flight */
            int moved = leader_leaves(g, NULL);
            if (moved != 0) {
                if (moved < 0)
                    PyErr_WriteUnraisable(g->key);
                g->mode = M_DONE;
                raise_exc(exc);
                Py_XDECREF(px);
                *out = NULL;
                return PYGEN_ERROR;
            }
        }
        Py_XDECREF(px);
        r = drive(g, arg, exc, out);
        if (r == PYGEN_NEXT)
            return leader_suspend(g, *out, out);
        g->mode = M_DONE;
        return r;
    }
    case M_DRIVER:
        r = drive(g, arg, exc, out);
        if (r != PYGEN_NEXT) /* the flight's Task is ending: break the cycle */
            Py_CLEAR(g->fl->task);
        if (r == PYGEN_ERROR) {
            g->mode = M_DONE;
            /* the waiters have the failure; the Task need not report it,
             * except a cancellation, which it must see to end cancelled */
            PyObject *e = cm_exc_take();
            if (e != NULL && cm_is_cancelled_error(st, e)) {
                raise_exc(e);
                Py_DECREF(e);
                return PYGEN_ERROR;
            }
            Py_XDECREF(e);
            *out = Py_NewRef(Py_None);
            return PYGEN_RETURN;
        }
        if (r == PYGEN_RETURN)
            g->mode = M_DONE;
        return r;
    case M_WAIT:
        return waiter_step(g, exc, out);
    default:
        if (exc != NULL)
            raise_exc(exc);
        else
            PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited cacheme get()");
        *out = NULL;
        return PYGEN_ERROR;
    }
}

static PySendResult get_am_send(PyObject *self, PyObject *arg, PyObject **out)
{
    return get_step((CmGetObject *)self, arg, NULL, out);
}

/* send/throw as methods: StopIteration carries the final value. */
static PyObject *finish_method(PySendResult r, PyObject *res)
{
    if (r == PYGEN_NEXT)
        return res;
    if (r == PYGEN_RETURN) {
        if (res == Py_None)
            PyErr_SetNone(PyExc_StopIteration);
        else {
            PyObject *e = PyObject_CallOneArg(PyExc_StopIteration, res);
            if (e != NULL) {
                PyErr_SetObject(PyExc_StopIteration, e);
                Py_DECREF(e);
            }
        }
        Py_DECREF(res);
    }
    return NULL;
}

static PyObject *get_iternext(PyObject *self)
{
    PyObject *res = NULL;
    PySendResult r = get_am_send(self, Py_None, &res);
    return finish_method(r, res);
}

static PyObject *get_send(PyObject *self, PyObject *arg)
{
    PyObject *res = NULL;
    PySendResult r = get_am_send(self, arg, &res);
    return finish_method(r, res);
}

static PyObject *get_throw(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *exc = throw_args_exc(args, nargs);
    if (exc == NULL)
        return NULL;
    PyObject *res;
    PySendResult r = get_step((CmGetObject *)self, NULL, exc, &res);
    Py_DECREF(exc);
    return finish_method(r, res);
}

/* Stop whatever this object was doing; safe to call more than once. */
static void get_abort(CmGetObject *g)
{
    CmState *st = g->st;
    switch (g->mode) {
    case M_WAIT:
        leave_flight(g);
        break;
    case M_LEAD:
    case M_DRIVER:
        direct_detach(g);
        if (g->sub != NULL) {
            PyObject *r = PyObject_CallMethodNoArgs(g->sub, st->s_close);
            if (r == NULL)
                PyErr_WriteUnraisable(g->sub);
            Py_XDECREF(r);
            Py_CLEAR(g->sub);
        }
        if (g->fl != NULL && !g->fl->done) {
            PyObject *e = PyObject_CallFunction(PyExc_RuntimeError, "s",
                                                "cacheme: the load of this key was abandoned");
            if (e != NULL) {
                flight_settle(st, g->fl, NULL, e);
                Py_DECREF(e);
            } else {
                PyErr_WriteUnraisable(g->key);
            }
        }
        if (g->fl != NULL) {
            if (g->mode == M_DRIVER)
                Py_CLEAR(g->fl->task);
            flight_remove(st, g->fl);
        }
        g->mode = M_DONE;
        break;
    default:
        break;
    }
}

static PyObject *get_close(PyObject *self, PyObject *Py_UNUSED(x))
{
    get_abort((CmGetObject *)self);
    Py_RETURN_NONE;
}

static PyObject *get_await(PyObject *self) { return Py_NewRef(self); }

static void get_finalize(PyObject *self)
{
    CmGetObject *g = (CmGetObject *)self;
    if (g->mode == M_DONE || g->mode == M_START)
        return;
    PyObject *typ, *val, *tb;
    PyErr_Fetch(&typ, &val, &tb);
    get_abort(g);
    PyErr_Restore(typ, val, tb);
}

static int get_traverse(PyObject *self, visitproc visit, void *arg)
{
    CmGetObject *g = (CmGetObject *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(g->node);
    Py_VISIT(g->cfg);
    Py_VISIT(g->load_fn);
    Py_VISIT(g->memo_fn);
    Py_VISIT(g->memo_argv);
    Py_VISIT(g->sub);
    Py_VISIT(g->pending);
    Py_VISIT(g->lead_px);
    Py_VISIT(g->value);
    Py_VISIT(g->wloop);
    Py_VISIT(g->wcb);
    Py_VISIT(g->wctx);
    Py_VISIT(g->wmsg);
    Py_VISIT(g->dres);
    Py_VISIT(g->derr);
    return 0;
}

static int get_clear(PyObject *self)
{
    CmGetObject *g = (CmGetObject *)self;
    Py_CLEAR(g->node);
    Py_CLEAR(g->cfg);
    Py_CLEAR(g->key);
    Py_CLEAR(g->load_fn);
    Py_CLEAR(g->memo_fn);
    Py_CLEAR(g->memo_argv);
    Py_CLEAR(g->memo_kwnames);
    Py_CLEAR(g->sub);
    Py_CLEAR(g->pending);
    Py_CLEAR(g->lead_px);
    Py_CLEAR(g->value);
    Py_CLEAR(g->wloop);
    wcb_track(g);
    Py_CLEAR(g->wcb);
    Py_CLEAR(g->wctx);
    Py_CLEAR(g->wmsg);
    Py_CLEAR(g->dres);
    Py_CLEAR(g->derr);
    return 0;
}

static void get_dealloc(PyObject *self)
{
    CmGetObject *g = (CmGetObject *)self;
    PyTypeObject *tp = Py_TYPE(self);
    if (g->mode != M_DONE && g->mode != M_START && PyObject_CallFinalizerFromDealloc(self) < 0)
        return; /* resurrected */
    PyObject_GC_UnTrack(self);
    get_clear(self);
    if (g->fl != NULL) {
        flight_release(g->st, g->fl);
        g->fl = NULL;
    }
    /* kept for reuse, unless finalized (the flag would stay with it) */
    CmState *st = g->st;
    if (st->get_free_len < CM_GET_FREE_MAX && !PyObject_GC_IsFinalized(self)) {
        g->free_next = st->get_free;
        st->get_free = g;
        st->get_free_len++;
    } else {
        tp->tp_free(self);
    }
    Py_DECREF(tp);
}

static PyMethodDef get_methods[] = {
    {"send", get_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))get_throw, METH_FASTCALL, NULL},
    {"close", get_close, METH_NOARGS, NULL},
    /* the future protocol of a waiting Get (see "a Get is its own future") */
    {"add_done_callback", (PyCFunction)(void (*)(void))get_add_done_callback,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"remove_done_callback", get_remove_done_callback, METH_O, NULL},
    {"cancel", (PyCFunction)(void (*)(void))get_cancel, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"result", get_result, METH_NOARGS, NULL},
    {"exception", get_exception, METH_NOARGS, NULL},
    {"done", get_done, METH_NOARGS, NULL},
    {"cancelled", get_cancelled, METH_NOARGS, NULL},
    {NULL, NULL},
};

static PyMemberDef get_members[] = {
    {"_loop", T_OBJECT, offsetof(CmGetObject, wloop), READONLY, NULL},
    {NULL},
};

static PyGetSetDef get_getset[] = {
    {"_asyncio_future_blocking", get_get_blocking, set_blocking, NULL,
     (void *)offsetof(CmGetObject, blocking)},
    {NULL},
};

static PyType_Slot get_slots[] = {
    {Py_am_await, get_await},       {Py_am_send, get_am_send},      {Py_tp_iter, get_await},
    {Py_tp_iternext, get_iternext}, {Py_tp_methods, get_methods},   {Py_tp_getset, get_getset},
    {Py_tp_members, get_members},   {Py_tp_finalize, get_finalize}, {Py_tp_traverse, get_traverse},
    {Py_tp_clear, get_clear},       {Py_tp_dealloc, get_dealloc},   {0, NULL},
};

static PyType_Spec get_spec = {
    .name = "cacheme._core.Get",
    .basicsize = sizeof(CmGetObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = get_slots,
};

/* ---- flights driven from Python (get_all) --------------------------------- */

/* A flight led by Python code: get_all registers one per key it loads and
 * settles it with resolve() or fail(). Dropping it unsettled fails it. */
typedef struct {
    PyObject_HEAD
    CmState *st;
    CmFlight *fl;
} CmFlightHandleObject;

static PyObject *handle_resolve(PyObject *self, PyObject *value)
{
    CmFlightHandleObject *h = (CmFlightHandleObject *)self;
    if (h->fl->done) {
        PyErr_SetString(PyExc_RuntimeError, "flight already settled");
        return NULL;
    }
    flight_settle(h->st, h->fl, value, NULL);
    Py_RETURN_NONE;
}

static PyObject *handle_fail(PyObject *self, PyObject *exc)
{
    CmFlightHandleObject *h = (CmFlightHandleObject *)self;
    if (!PyExceptionInstance_Check(exc)) {
        PyErr_SetString(PyExc_TypeError, "fail() needs an exception instance");
        return NULL;
    }
    flight_settle(h->st, h->fl, NULL, exc);
    Py_RETURN_NONE;
}

static PyObject *handle_finish(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmFlightHandleObject *h = (CmFlightHandleObject *)self;
    flight_remove(h->st, h->fl);
    Py_RETURN_NONE;
}

static PyObject *handle_stale(PyObject *self, PyObject *Py_UNUSED(x))
{
    return PyBool_FromLong(((CmFlightHandleObject *)self)->fl->stale);
}

static PyObject *handle_live_waiters(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmFlightHandleObject *h = (CmFlightHandleObject *)self;
    return PyLong_FromSsize_t(h->fl->done ? 0 : h->fl->nwaiters);
}

static void handle_dealloc(PyObject *self)
{
    CmFlightHandleObject *h = (CmFlightHandleObject *)self;
    PyTypeObject *tp = Py_TYPE(self);
    if (h->fl != NULL) {
        if (!h->fl->done) {
            PyObject *typ, *val, *tb;
            PyErr_Fetch(&typ, &val, &tb);
            PyObject *e = PyObject_CallFunction(PyExc_RuntimeError, "s",
                                                "cacheme: the load of this key was abandoned");
            if (e != NULL) {
                flight_settle(h->st, h->fl, NULL, e);
                Py_DECREF(e);
            } else {
                PyErr_Clear();
            }
            PyErr_Restore(typ, val, tb);
        }
        flight_remove(h->st, h->fl);
        flight_release(h->st, h->fl);
    }
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef handle_methods[] = {
    {"resolve", handle_resolve, METH_O, "give every waiter this value"},
    {"fail", handle_fail, METH_O, "give every waiter this exception"},
    {"finish", handle_finish, METH_NOARGS, "take the flight out of the table"},
    {"stale", handle_stale, METH_NOARGS, "invalidated while in flight"},
    {"live_waiters", handle_live_waiters, METH_NOARGS, NULL},
    {NULL, NULL},
};

static PyType_Slot handle_slots[] = {
    {Py_tp_methods, handle_methods},
    {Py_tp_dealloc, handle_dealloc},
    {0, NULL},
};

static PyType_Spec handle_spec = {
    .name = "cacheme._core.FlightHandle",
    .basicsize = sizeof(CmFlightHandleObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = handle_slots,
};

static PyObject *arg_key(PyObject *key, Py_hash_t *hash)
{
    if (!PyUnicode_CheckExact(key)) {
        PyErr_Format(PyExc_TypeError, "key must be str, not %.100s", Py_TYPE(key)->tp_name);
        return NULL;
    }
    *hash = PyObject_Hash(key);
    return *hash == -1 ? NULL : key;
}

/* _flight_join(key, metrics) -> None if no flight, else an awaitable of its value */
static PyObject *py_flight_join(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    CmState *st = cm_state_from_module(mod);
    Py_hash_t hash;
    if (nargs != 1 || arg_key(args[0], &hash) == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "_flight_join(key)");
        return NULL;
    }
    if (flight_find(st, args[0], hash) == NULL)
        Py_RETURN_NONE;
    /* allocated before the flight is looked up for good: the allocation may
     * run the collector, and finalizers that end the flight */
    CmGetObject *g = (CmGetObject *)get_alloc(st);
    if (g == NULL)
        return NULL;
    g->key = Py_NewRef(args[0]);
    g->hash = hash;
    CmFlight *fl = flight_find(st, args[0], hash);
    if (fl == NULL || fl->done) {
        PyObject *v = fl != NULL ? Py_NewRef(fl->value) : NULL;
        g->mode = M_DONE;
        Py_DECREF(g);
        if (v == NULL)
            Py_RETURN_NONE;
        PyObject *r = cm_ready_new(st, v);
        Py_DECREF(v);
        return r;
    }
    if (become_waiter(g, fl) < 0) {
        g->mode = M_DONE;
        Py_DECREF(g);
        return NULL;
    }
    return (PyObject *)g;
}

/* _flight_lead(key) -> FlightHandle, or None when a flight already exists */
static PyObject *py_flight_lead(PyObject *mod, PyObject *key)
{
    CmState *st = cm_state_from_module(mod);
    Py_hash_t hash;
    if (arg_key(key, &hash) == NULL)
        return NULL;
    if (flight_find(st, key, hash) != NULL)
        Py_RETURN_NONE;
    CmFlightHandleObject *h = PyObject_New(CmFlightHandleObject, st->FlightHandleType);
    if (h == NULL)
        return NULL;
    h->st = st;
    h->fl = flight_start(st, key, hash);
    if (h->fl == NULL) {
        Py_DECREF(h);
        return NULL;
    }
    return (PyObject *)h;
}

/* _flight_invalidate(key): a load in flight for key will not fill caches */
static PyObject *py_flight_invalidate(PyObject *mod, PyObject *key)
{
    CmState *st = cm_state_from_module(mod);
    Py_hash_t hash;
    if (arg_key(key, &hash) == NULL)
        return NULL;
    CmFlight *fl = flight_find(st, key, hash);
    if (fl != NULL) {
        fl->stale = 1;
        if (fl->done) /* only fills remain: new callers must not get the old value */
            flight_remove(st, fl);
    }
    Py_RETURN_NONE;
}

void cm_flight_after_fork_child(CmState *st)
{
    /* the parent's flights stay with the Gets that hold them (they may go
     * on if the child runs the copied loop), but nobody joins them: a get()
     * in the child loads in the child */
    flight_table_empty(st);
    /* a wake batch open on a parent's loop stays with its callback */
    Py_CLEAR(st->wake_batch);
    Py_CLEAR(st->wake_loop);
    Py_CLEAR(st->done_future);
    Py_CLEAR(st->done_loop);
}

/* _set_load_timeout_wrapper(fn): fn(awaitable, seconds) -> awaitable */
static PyObject *py_set_load_timeout_wrapper(PyObject *mod, PyObject *fn)
{
    if (!PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "_set_load_timeout_wrapper(fn): fn must be callable");
        return NULL;
    }
    CmState *st = cm_state_from_module(mod);
    Py_XSETREF(st->load_timeout_wrap, Py_NewRef(fn));
    Py_RETURN_NONE;
}

static PyObject *py_flights_in_table(PyObject *mod, PyObject *Py_UNUSED(x))
{
    return PyLong_FromSize_t(cm_state_from_module(mod)->flights.used);
}

static PyMethodDef flight_functions[] = {
    {"_flight_join", (PyCFunction)(void (*)(void))py_flight_join, METH_FASTCALL, NULL},
    {"_flight_lead", py_flight_lead, METH_O, NULL},
    {"_flight_invalidate", py_flight_invalidate, METH_O, NULL},
    {"_flights_in_table", py_flights_in_table, METH_NOARGS, "keys in flight (for tests)"},
    {"_set_load_timeout_wrapper", py_set_load_timeout_wrapper, METH_O, NULL},
    {NULL, NULL},
};

int cm_flight_init(PyObject *mod, CmState *st)
{
    st->GetType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &get_spec, NULL);
    if (st->GetType == NULL)
        return -1;
    st->ProxyType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &proxy_spec, NULL);
    if (st->ProxyType == NULL)
        return -1;
    st->FlightHandleType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &handle_spec, NULL);
    if (st->FlightHandleType == NULL)
        return -1;
    if ((st->wake_cb = PyCFunction_New(&wake_batch_def, mod)) == NULL)
        return -1;
    return PyModule_AddFunctions(mod, flight_functions);
}

/* ---- flights of get_all (api/get_all.c) ------------------------------------ */

int cm_flight_join(CmState *st, PyObject *key, Py_hash_t hash, PyObject **aw)
{
    *aw = NULL;
    if (flight_find(st, key, hash) == NULL)
        return 0;
    /* allocated before the flight is looked up for good (see py_flight_join) */
    CmGetObject *g = (CmGetObject *)get_alloc(st);
    if (g == NULL)
        return -1;
    g->key = Py_NewRef(key);
    g->hash = hash;
    CmFlight *fl = flight_find(st, key, hash);
    if (fl == NULL || fl->done) {
        PyObject *v = fl != NULL ? Py_NewRef(fl->value) : NULL;
        g->mode = M_DONE;
        Py_DECREF(g);
        if (v == NULL)
            return 0;
        *aw = cm_ready_new(st, v);
        Py_DECREF(v);
        return *aw ? 1 : -1;
    }
    if (become_waiter(g, fl) < 0) {
        g->mode = M_DONE;
        Py_DECREF(g);
        return -1;
    }
    *aw = (PyObject *)g;
    return 1;
}

PyObject *cm_flight_lead(CmState *st, PyObject *key, Py_hash_t hash)
{
    if (flight_find(st, key, hash) != NULL)
        Py_RETURN_NONE;
    CmFlightHandleObject *h = PyObject_New(CmFlightHandleObject, st->FlightHandleType);
    if (h == NULL)
        return NULL;
    h->st = st;
    h->fl = flight_start(st, key, hash);
    if (h->fl == NULL) {
        Py_DECREF(h);
        return NULL;
    }
    return (PyObject *)h;
}

void cm_flight_handle_settle(PyObject *h, PyObject *value, PyObject *exc)
{
    CmFlightHandleObject *fh = (CmFlightHandleObject *)h; // borrowed
    flight_settle(fh->st, fh->fl, value, exc);
}

int cm_flight_handle_stale(PyObject *h) { return ((CmFlightHandleObject *)h)->fl->stale; }

Py_ssize_t cm_flight_handle_live_waiters(PyObject *h)
{
    CmFlight *fl = ((CmFlightHandleObject *)h)->fl;
    return fl->done ? 0 : fl->nwaiters;
}

void cm_flight_handle_finish(PyObject *h)
{
    CmFlightHandleObject *fh = (CmFlightHandleObject *)h;
    flight_remove(fh->st, fh->fl);
}
