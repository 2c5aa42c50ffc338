/* Per-loop instances of network storages and the after-fork rule; see
 * netloop.h for the why. */
#include "net/netloop.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "loop/loop.h"

static void table_link(CmState *st, CmNetLoops *t)
{
    t->prev = NULL;
    t->next = st->netloops;
    if (st->netloops != NULL)
        st->netloops->prev = t;
    st->netloops = t;
}

static void table_unlink(CmNetLoops *t)
{
    if (t->st == NULL)
        return;
    if (t->prev != NULL)
        t->prev->next = t->next;
    else if (t->st->netloops == t)
        t->st->netloops = t->next;
    if (t->next != NULL)
        t->next->prev = t->prev;
    t->prev = t->next = NULL;
}

void cm_netloops_init(CmNetLoops *t, CmState *st, const CmNetKind *kind, PyObject *owner)
{
    t->st = st;
    t->kind = kind;
    t->owner = owner;
    table_link(st, t);
}

/* The loop of a slot, a new reference, or NULL when it is gone. */
static PyObject *slot_loop(const CmNetLoopSlot *s)
{
    if (!PyWeakref_Check(s->ref))
        return Py_NewRef(s->ref);
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *o = NULL;
    if (PyWeakref_GetRef(s->ref, &o) < 0)
        PyErr_Clear();
    return o;
#else
    PyObject *o = PyWeakref_GetObject(s->ref); // borrowed
    return o == NULL || o == Py_None ? (PyErr_Clear(), NULL) : Py_NewRef(o);
#endif
}

static Py_ssize_t slot_find(CmNetLoops *t, PyObject *loop)
{
    for (Py_ssize_t i = 0; i < t->n; i++) {
        if (t->v[i].key != (void *)loop)
            continue;
        /* the same address may be a new loop where a collected one was */
        PyObject *o = slot_loop(&t->v[i]);
        Py_XDECREF(o);
        if (o == loop)
            return i;
    }
    return -1;
}

/* Take slot i out of the table; its references are the caller's. */
static CmNetLoopSlot slot_take(CmNetLoops *t, Py_ssize_t i)
{
    CmNetLoopSlot s = t->v[i];
    t->v[i] = t->v[--t->n];
    return s;
}

/* loop.is_closed(); a loop that cannot tell counts as open. */
static int loop_closed(PyObject *loop) { return cm_loop_is_closed(loop, 0); }

/* Drop the instances of loops that are closed or gone. Asking a loop runs
 * Python code (another thread may change the table meanwhile): the loops
 * are asked first, and what is dropped is looked up again by instance.
 * With a handover hook, the first such instance is handed over instead and
 * returned in *reuse (a new reference), for the loop asking to take over:
 * its idle connections then serve that loop. */
static void sweep(CmNetLoops *t, PyObject **reuse)
{
    Py_ssize_t n = t->n;
    if (n == 0)
        return;
    PyObject **insts = calloc((size_t)n, sizeof(*insts));
    PyObject **loops = calloc((size_t)n, sizeof(*loops));
    if (insts == NULL || loops == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        insts[i] = Py_NewRef(t->v[i].inst);
        loops[i] = slot_loop(&t->v[i]);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (loops[i] != NULL && !loop_closed(loops[i]))
            continue;
        for (Py_ssize_t j = 0; j < t->n; j++) {
            if (t->v[j].inst != insts[i])
                continue;
            CmNetLoopSlot s = slot_take(t, j);
            if (*reuse == NULL && t->kind->handover != NULL) {
                t->kind->handover(s.inst);
                *reuse = s.inst; /* the slot's reference */
            } else {
                t->kind->orphan(s.inst);
                Py_DECREF(s.inst);
            }
            Py_DECREF(s.ref);
            break;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_XDECREF(insts[i]);
        Py_XDECREF(loops[i]);
    }
done:
    free(insts);
    free(loops);
}

PyObject *cm_netloops_pick(CmNetLoops *t, PyObject *loop)
{
    if (t->home == NULL) {
        t->home = Py_NewRef(loop);
        return t->owner;
    }
    if (loop == t->home)
        return t->owner;
    Py_ssize_t i = slot_find(t, loop);
    if (i >= 0)
        return t->v[i].inst;
    /* a loop not seen yet: it takes the owner over when the home loop is
     * closed (asyncio.run called again), else it gets an instance */
    PyObject *home = Py_NewRef(t->home);
    int closed = loop_closed(home);
    if (closed && t->home == home) {
        if (t->kind->handover != NULL)
            t->kind->handover(t->owner);
        else
            t->kind->orphan(t->owner);
        if (t->home == home)
            Py_SETREF(t->home, Py_NewRef(loop));
    }
    Py_DECREF(home);
    PyObject *reuse = NULL;
    sweep(t, &reuse);
    if (loop == t->home || (i = slot_find(t, loop)) >= 0) {
        /* read before a clone not taken over is let go: its dealloc (what
         * it had dropped) runs Python code, which may change the table */
        PyObject *found = loop == t->home ? t->owner : t->v[i].inst; // borrowed
        Py_XDECREF(reuse);
        return found;
    }
    PyObject *inst = reuse != NULL ? reuse : t->kind->spawn(t->owner);
    if (inst == NULL)
        return NULL;
    t->spawned += reuse == NULL;
    PyObject *ref = PyWeakref_NewRef(loop, NULL);
    if (ref == NULL) {
        PyErr_Clear(); /* a loop type without weak references: held */
        ref = Py_NewRef(loop);
    }
    /* spawning ran Python code: the loop may have an instance by now */
    if ((i = slot_find(t, loop)) >= 0) {
        PyObject *found = t->v[i].inst; // borrowed: read before the decrefs run code
        Py_DECREF(ref);
        Py_DECREF(inst);
        return found;
    }
    if (t->n == t->cap) {
        Py_ssize_t cap = t->cap ? t->cap * 2 : 4;
        CmNetLoopSlot *v = realloc(t->v, (size_t)cap * sizeof(*v));
        if (v == NULL) {
            Py_DECREF(ref);
            Py_DECREF(inst);
            PyErr_NoMemory();
            return NULL;
        }
        t->v = v;
        t->cap = cap;
    }
    t->v[t->n++] = (CmNetLoopSlot){.key = loop, .ref = ref, .inst = inst};
    return inst;
}

int cm_netloops_traverse(CmNetLoops *t, visitproc visit, void *arg)
{
    Py_VISIT(t->home);
    for (Py_ssize_t i = 0; i < t->n; i++) {
        Py_VISIT(t->v[i].ref);
        Py_VISIT(t->v[i].inst);
    }
    return 0;
}

void cm_netloops_clear(CmNetLoops *t)
{
    while (t->n > 0) {
        CmNetLoopSlot s = slot_take(t, t->n - 1);
        Py_DECREF(s.ref);
        Py_DECREF(s.inst);
    }
    Py_CLEAR(t->home);
}

void cm_netloops_unlink(CmNetLoops *t) { table_unlink(t); }

void cm_netloops_fini(CmNetLoops *t)
{
    table_unlink(t);
    cm_netloops_clear(t);
    free(t->v);
    t->v = NULL;
    t->cap = 0;
    t->st = NULL;
}

void cm_net_fork_fd(int fd)
{
    if (fd < 0)
        return;
    int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (nul < 0)
        return; /* left open: better a leaked descriptor than a shared socket closed */
    if (nul != fd) {
        dup3(nul, fd, O_CLOEXEC);
        close(nul);
    }
}

/* Every storage of the process lets go of what it inherited (netloop.h).
 * The owners are held while it runs: dropping a clone runs Python code. */
int cm_netloop_after_fork_child(CmState *st)
{
    st->forks++;
    Py_ssize_t n = 0;
    for (CmNetLoops *t = st->netloops; t != NULL; t = t->next)
        n++;
    PyObject **owners = n ? calloc((size_t)n, sizeof(*owners)) : NULL;
    CmNetLoops **tables = n ? calloc((size_t)n, sizeof(*tables)) : NULL;
    if (n && (owners == NULL || tables == NULL)) {
        free(owners);
        free(tables);
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t k = 0;
    for (CmNetLoops *t = st->netloops; t != NULL && k < n; t = t->next) {
        owners[k] = Py_NewRef(t->owner);
        tables[k++] = t;
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        CmNetLoops *t = tables[i]; // borrowed: its owner is held
        CmNetLoopSlot *v = t->v;
        Py_ssize_t nv = t->n;
        t->v = NULL;
        t->n = t->cap = 0;
        Py_CLEAR(t->home);
        t->kind->forked(t->owner);
        for (Py_ssize_t j = 0; j < nv; j++) {
            t->kind->forked(v[j].inst);
            Py_DECREF(v[j].ref);
            Py_DECREF(v[j].inst);
        }
        free(v);
    }
    for (Py_ssize_t i = 0; i < k; i++)
        Py_DECREF(owners[i]);
    free(owners);
    free(tables);
    PyErr_Clear();
    return 0;
}

static PyObject *fork_count(PyObject *mod, PyObject *Py_UNUSED(unused))
{
    return PyLong_FromLong(cm_state_from_module(mod)->forks);
}

static PyMethodDef fork_count_def = {"_forks_seen", fork_count, METH_NOARGS,
                                     "After-fork hooks run in this process (tests)."};

int cm_netloop_init(PyObject *mod, CmState *st)
{
    (void)st;
    PyObject *count = PyCFunction_NewEx(&fork_count_def, mod, NULL);
    int rc = count != NULL && PyModule_AddObjectRef(mod, "_forks_seen", count) == 0 ? 0 : -1;
    Py_XDECREF(count);
    return rc;
}
