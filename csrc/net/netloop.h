/* Which instance of a network storage serves a loop, and what a forked child
 * does with the connections it inherited: the rules every network driver
 * (Redis, PostgreSQL, MySQL/MariaDB, SQLite) follows, written once.
 *
 * Per loop: a storage registered once is used by every thread of the
 * process, each with its own loop, and by one asyncio.run() after another.
 * A connection is watched on one loop and its replies settle futures of that
 * loop, so connections are never shared across loops: the storage object
 * serves its "home" loop itself, and every other loop that uses it while the
 * home loop is still open gets an instance of its own (a clone made by the
 * driver from the same settings), kept in a small table loop -> instance.
 * The table holds its loops weakly; the instances of loops that were closed
 * (or collected) are dropped the next time a new loop comes, and their
 * connections closed without touching their loop; with the driver's
 * handover hook, one of them serves the new loop instead of a new clone,
 * keeping its idle connections. When the home loop is closed, the next loop
 * becomes home: the driver closes what the old loop had, or (the handover
 * hook) keeps its idle connections for the new one.
 *
 * After fork: the child inherits the parent's sockets, and the epoll
 * instance behind the parent's loop. Unregistering a socket from that loop
 * (epoll_ctl DEL) or saying goodbye on it (libpq's Terminate, MariaDB's
 * COM_QUIT) would break the parent's connection. An os.register_at_fork
 * hook (after_in_child) has every storage of the process let go of what it
 * inherited: each socket's descriptor is pointed at /dev/null (the parent's
 * socket is untouched; whatever the driver writes on close goes nowhere),
 * nothing is unregistered from any loop, the per-loop instances are
 * dropped, and the next call connects anew on the child's own loop. */
#ifndef CM_NETLOOP_H
#define CM_NETLOOP_H
#include "state.h"

typedef struct CmNetLoops CmNetLoops;

typedef struct {
    /* a new instance with the owner's settings, for another loop (new ref) */
    PyObject *(*spawn)(PyObject *owner);
    /* in a forked child: let go of the inherited connections (each fd through
     * cm_net_fork_fd), touching no loop; the instance reconnects on next use */
    void (*forked)(PyObject *inst);
    /* the instance's loop is closed or gone: close its connections without
     * touching that loop */
    void (*orphan)(PyObject *inst);
    /* the owner's home loop is closed and another loop takes the owner over:
     * the owner may keep idle connections for that loop (its next call
     * re-watches them there); NULL: orphan */
    void (*handover)(PyObject *owner);
} CmNetKind;

typedef struct {
    void *key;     /* the loop's address, compared first */
    PyObject *ref; /* a weak reference to the loop (or the loop, if it has none) */
    PyObject *inst;
} CmNetLoopSlot;

struct CmNetLoops {
    CmNetLoops *prev, *next; /* every table of the process (CmState.netloops) */
    CmState *st;
    const CmNetKind *kind;
    PyObject *owner; /* borrowed: the storage this table is part of */
    PyObject *home;  /* the loop the owner serves itself, or NULL */
    CmNetLoopSlot *v;
    Py_ssize_t n, cap;
    Py_ssize_t spawned; /* instances made (introspection) */
};

/* Set up t (zeroed memory) as the table of owner, and register it. */
void cm_netloops_init(CmNetLoops *t, CmState *st, const CmNetKind *kind, PyObject *owner);
/* Take t out of the process's tables (the after-fork walk), first thing in
 * its owner's dealloc: the owner's refcount is 0 while the rest of the
 * dealloc runs Python code, and a fork meanwhile must not hold it again. */
void cm_netloops_unlink(CmNetLoops *t);
/* Unregister t and drop its instances (their own close runs). */
void cm_netloops_fini(CmNetLoops *t);
/* The instance serving loop (borrowed): the owner or a clone; NULL with an
 * exception when a clone could not be made. */
PyObject *cm_netloops_pick(CmNetLoops *t, PyObject *loop);
static inline PyObject *cm_netloops_for(CmNetLoops *t, PyObject *loop)
{
    return loop == t->home ? t->owner : cm_netloops_pick(t, loop);
}
/* Clones, for introspection (borrowed): n and the i-th instance. */
static inline Py_ssize_t cm_netloops_count(CmNetLoops *t) { return t->n; }
static inline PyObject *cm_netloops_inst(CmNetLoops *t, Py_ssize_t i) { return t->v[i].inst; }
int cm_netloops_traverse(CmNetLoops *t, visitproc visit, void *arg);
/* Drop every clone (closing their connections the normal way). */
void cm_netloops_clear(CmNetLoops *t);

/* In a forked child: point fd at /dev/null, so that closing it later (or a
 * driver's goodbye on it) never reaches the parent's socket. */
void cm_net_fork_fd(int fd);

/* After fork() in the child: every storage drops what it inherited without
 * touching any loop (module.c's one os.register_at_fork hook calls it). */
int cm_netloop_after_fork_child(CmState *st);
/* _forks_seen (tests). */
int cm_netloop_init(PyObject *mod, CmState *st);
#endif
