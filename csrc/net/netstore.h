/* The life of a storage object over a connection pool (net/pool.h) with an
 * instance per event loop (net/netloop.h), apart from its requests: the
 * parts the SQL storages (sql/lifecycle.c) and MongoDB (mongo/store.c)
 * share. Each keeps its own fields (a pool, its loops, its tp_init
 * arguments) and passes them in. */
#ifndef CM_NET_NETSTORE_H
#define CM_NET_NETSTORE_H
#include "state.h"

#include "net/netloop.h"
#include "net/pool.h"

/* tp_new's part: pool and loops set up for owner (the new storage), the
 * pool backing off 50 ms doubling to 1 s after failed connects, the loops
 * making, fork-dropping and orphaning instances as kind says. The storage
 * holds the module from here (cm_state_hold) until cm_netstore_dealloc_end. */
void cm_netstore_init(CmNetPool *pool, CmNetLoops *loops, CmState *st, const CmNetKind *kind,
                      PyObject *owner);

/* How cm_netstore_close closes a pool. */
enum {
    CM_NETSTORE_CLOSE,      /* the normal way, unwatched on its loop (cm_net_pool_close_all) */
    CM_NETSTORE_CLOSE_GC,   /* the owner is garbage (cm_net_pool_close_gc) */
    CM_NETSTORE_DETACH,     /* the loop is closed or gone: not touched */
    CM_NETSTORE_DETACH_FORK /* the parent's, after fork: not touched, fds to /dev/null */
};

/* Close every connection of pool as `how` says (net/pool.h), failing what
 * they have pending with tp(why). The exception being raised, if any, is
 * kept: this runs from tp_clear and dealloc too. The caller holds the
 * storage (never a reference taken here: from its dealloc, a last
 * Py_DECREF would run the dealloc a second time). */
void cm_netstore_close(CmNetPool *pool, PyObject *tp, int how, const char *why);

/* Keep a storage's tp_init arguments in *init_args and *init_kwds (a copy
 * of kwds): an instance for another loop is made from them
 * (cm_netstore_spawn). 0, or -1 with an exception. */
int cm_netstore_keep_args(PyObject **init_args, PyObject **init_kwds, PyObject *args,
                          PyObject *kwds);

/* netloop.h's spawn: a new tp(*init_args, **init_kwds); before tp_init
 * ran (init_args NULL), err "cacheme <name> storage: not initialised". */
PyObject *cm_netstore_spawn(PyObject *tp, PyObject *init_args, PyObject *init_kwds, PyObject *err,
                            const char *name);

/* tp_traverse's part for self's type, its arguments, pool and loops. */
int cm_netstore_traverse(PyObject *self, CmNetPool *pool, CmNetLoops *loops, PyObject *init_args,
                         PyObject *init_kwds, visitproc visit, void *arg);

/* tp_clear's part: the per-loop instances and the arguments dropped, the
 * pool's connections closed the normal way (the storage closed them first
 * as it must: cm_netstore_close) and its loop and last error dropped. */
void cm_netstore_clear(CmNetPool *pool, CmNetLoops *loops, PyObject **init_args,
                       PyObject **init_kwds, PyObject *tp);

/* tp_dealloc's start: out of the after-fork walk (cm_netloops_unlink),
 * untracked, weak references cleared, clear (the storage's tp_clear) run,
 * loops finished. The storage then frees its own and calls
 * cm_netstore_dealloc_end. */
void cm_netstore_dealloc_start(PyObject *self, PyObject *weakreflist, inquiry clear,
                               CmNetLoops *loops);
/* tp_dealloc's end: freed, and its references to its type and the module
 * (through pool->st) dropped. */
void cm_netstore_dealloc_end(PyObject *self, CmNetPool *pool);

#endif
