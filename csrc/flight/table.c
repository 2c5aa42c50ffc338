/* The flight table: key -> CmFlight, plain C records chained in buckets, and
 * the record's own operations (waiters in and out, settling). A record is
 * referenced by the table (in_table) and by the calls that lead or wait on
 * it (refs); it is freed, or kept for reuse, when both have let it go. */
#include "flight/call.h"

#include "loop/loop.h"

/* ---- flight table ---------------------------------------------------------- */

CmFlight *cm_flight_find(CmState *st, PyObject *key, Py_hash_t hash)
{
    CmFlightTable *t = &st->flight.table;
    if (t->used == 0)
        return NULL;
    for (CmFlight *f = t->buckets[(size_t)hash & t->mask]; f != NULL; f = f->next) {
        if (f->hash == hash && cm_key_eq(f->key, key))
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

CmFlight *cm_flight_joinable(CmState *st, CmFlight *fl)
{
    if (fl == NULL || fl->done || fl->loop == NULL)
        return fl;
    /* asking runs Python code (a collection, finalizers that end fl) */
    fl->refs++;
    PyObject *exc = cm_exc_take();
    int dead;
    if (fl->tstate == (void *)PyThreadState_Get()) {
        PyObject *running = cm_loop_running(st);
        dead = running != NULL && running != fl->loop;
        Py_XDECREF(running);
        PyErr_Clear(); /* no loop running: a coroutine driven by hand, as before */
    } else {
        dead = cm_loop_is_closed(fl->loop, 0) == 1;
    }
    cm_exc_restore(exc);
    if (dead && !fl->done)
        cm_flight_unlink(st, fl);
    int in = fl->in_table;
    cm_flight_release(st, fl);
    return in ? fl : NULL;
}

void cm_flight_unlink(CmState *st, CmFlight *fl)
{
    if (!fl->in_table)
        return;
    CmFlightTable *t = &st->flight.table;
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
        cm_call_unheld(fl->waiters[i]);
        Py_CLEAR(fl->waiters[i]);
    }
    fl->nwaiters = 0;
    if (st->flight.flight_free_len < CM_FLIGHT_FREE_MAX) {
        /* keep the waiters array with the record for reuse */
        fl->next = st->flight.flight_free;
        st->flight.flight_free = fl;
        st->flight.flight_free_len++;
        return;
    }
    PyMem_Free(fl->waiters);
    PyMem_Free(fl);
}

void cm_flight_release(CmState *st, CmFlight *fl)
{
    if (--fl->refs == 0 && !fl->in_table)
        flight_free(st, fl);
}

void cm_flight_remove(CmState *st, CmFlight *fl)
{
    if (fl->in_table) {
        cm_flight_unlink(st, fl);
        if (fl->refs == 0)
            flight_free(st, fl);
    }
}

/* A new flight in the table with one reference (the caller's). */
CmFlight *cm_flight_start(CmState *st, PyObject *key, Py_hash_t hash)
{
    CmFlightTable *t = &st->flight.table;
    if ((t->buckets == NULL || t->used > t->mask) && table_grow(t) < 0)
        return NULL;
    CmFlight *fl = st->flight.flight_free;
    if (fl != NULL) {
        st->flight.flight_free = fl->next;
        st->flight.flight_free_len--;
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
    fl->serial = ++st->flight.flight_serial;
    fl->refs = 1;
    size_t i = (size_t)hash & t->mask;
    fl->next = t->buckets[i];
    t->buckets[i] = fl;
    fl->in_table = 1;
    t->used++;
    return fl;
}

static void flight_stale(CmState *st, CmFlight *fl)
{
    fl->stale = 1;
    if (fl->done) /* only fills remain: new callers must not get the old value */
        cm_flight_remove(st, fl);
}

void cm_flight_invalidate(CmState *st, PyObject *key, Py_hash_t hash)
{
    CmFlight *fl = cm_flight_find(st, key, hash);
    if (fl != NULL)
        flight_stale(st, fl);
}

int cm_flight_past_fills(CmState *st, PyObject *key, Py_hash_t hash, uint64_t serial)
{
    CmFlight *fl = cm_flight_find(st, key, hash);
    return fl != NULL && fl->serial == serial && !fl->done && !fl->stale && !fl->unsure;
}

void cm_flight_unsure(CmState *st, PyObject *key, Py_hash_t hash)
{
    CmFlight *fl = cm_flight_find(st, key, hash);
    if (fl != NULL)
        fl->unsure = 1;
}

void cm_flight_unsure_all(CmState *st)
{
    CmFlightTable *t = &st->flight.table;
    for (size_t i = 0; t->buckets != NULL && i <= t->mask; i++)
        for (CmFlight *f = t->buckets[i]; f != NULL; f = f->next)
            f->unsure = 1;
}

/* Take every flight out of the table (those no call holds are freed); the
 * buckets stay. */
void cm_flight_table_empty(CmState *st)
{
    CmFlightTable *t = &st->flight.table;
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

void cm_flight_table_free(CmState *st)
{
    CmFlightTable *t = &st->flight.table;
    if (t->buckets != NULL) {
        cm_flight_table_empty(st);
        PyMem_Free(t->buckets);
        t->buckets = NULL;
        t->used = 0;
        t->mask = 0;
    }
    while (st->flight.flight_free != NULL) {
        CmFlight *f = st->flight.flight_free;
        st->flight.flight_free = f->next;
        PyMem_Free(f->waiters);
        PyMem_Free(f);
    }
    st->flight.flight_free_len = 0;
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

int cm_flight_add_waiter(CmFlight *fl, PyObject *g)
{
    return refs_push(&fl->waiters, &fl->nwaiters, &fl->capwaiters, g);
}

/* A waiter leaving before the flight settles takes itself out. */
void cm_flight_drop_waiter(CmFlight *fl, PyObject *g)
{
    for (Py_ssize_t i = 0; i < fl->nwaiters; i++) {
        if (fl->waiters[i] == g) {
            memmove(&fl->waiters[i], &fl->waiters[i + 1],
                    (size_t)(fl->nwaiters - i - 1) * sizeof(PyObject *));
            fl->nwaiters--;
            cm_call_unheld(g);
            Py_DECREF(g);
            return;
        }
    }
}

/* Give every waiter the outcome (value, or exc) and wake their Tasks. The
 * caller holds a reference to fl, so releasing a waiter here never frees it. */
void cm_flight_settle(CmState *st, CmFlight *fl, PyObject *value, PyObject *exc)
{
    if (fl->done)
        return;
    fl->done = 1;
    if (exc != NULL) {
        fl->exc = Py_NewRef(exc);
        fl->exc_tb = PyException_GetTraceback(exc);
        /* a failed flight is over: nobody may join it, not even a Task
         * woken inline below (it would find a done flight with no value) */
        cm_flight_unlink(st, fl);
    } else {
        fl->value = Py_NewRef(value);
    }
    int cancelled = exc != NULL && cm_is_cancelled_error(st, exc);
    for (Py_ssize_t i = 0; i < fl->nwaiters; i++) {
        PyObject *g = fl->waiters[i];
        fl->waiters[i] = NULL;
        cm_waiter_settled(st, g, cancelled);
    }
    fl->nwaiters = 0;
    if (exc != NULL && fl->refs == 0) /* unlinked above */
        flight_free(st, fl);
}

/* Raise the failure of fl into one more caller, with the traceback it had
 * when the flight settled (as asyncio.Future.result() does): each raise
 * would otherwise add the caller's frames to the one shared object. */
void cm_flight_raise(CmFlight *fl)
{
    if (PyException_SetTraceback(fl->exc, fl->exc_tb != NULL ? fl->exc_tb : Py_None) < 0)
        return;
    cm_raise_exc(fl->exc);
}

/* The objects the records in the table hold, for the module's traverse:
 * each record is visited once, through the table (those out of it are held
 * by calls only, and stay alive with them). */
int cm_flight_table_traverse(CmState *st, visitproc visit, void *arg)
{
    CmFlightTable *t = &st->flight.table;
    if (t->buckets == NULL)
        return 0;
    for (size_t i = 0; i <= t->mask; i++) {
        for (CmFlight *f = t->buckets[i]; f != NULL; f = f->next) {
            Py_VISIT(f->key);
            Py_VISIT(f->value);
            Py_VISIT(f->exc);
            Py_VISIT(f->exc_tb);
            Py_VISIT(f->task);
            Py_VISIT(f->loop);
            for (Py_ssize_t j = 0; j < f->nwaiters; j++)
                Py_VISIT(f->waiters[j]);
        }
    }
    return 0;
}
