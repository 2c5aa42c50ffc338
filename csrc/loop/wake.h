/* Waking asyncio Tasks the way a Future would, for the core's own
 * future-like objects (a waiting GetCall, a FlightProxy).
 *
 * A Task awaiting a future-like object hands it its wakeup through
 * add_done_callback; the object calls it when its outcome is in. Instead of
 * one loop.call_soon per wakeup (a Handle and its Python frames, as
 * set_result makes for a done-callback), the objects woken while the loop
 * runs one callback are woken together by the next one: the wake batch.
 * This is the one place that knows asyncio's C Task: a Task resumed on an
 * outcome it only needs to resume on is handed a done Future, which its
 * wakeup reads without a call. */
#ifndef CM_LOOP_WAKE_H
#define CM_LOOP_WAKE_H
#include "base/compat.h"
#include "state.h"

/* Module init: asyncio.Task and the batch callback. 0, or -1 with an
 * exception. */
int cm_wake_init(PyObject *mod, CmState *st);
int cm_wake_traverse(CmState *st, visitproc visit, void *arg);
void cm_wake_clear(CmState *st);
/* The module's GC clear: drop the batch callback (a builtin bound to the
 * module, which has no tp_clear of its own to break that cycle); a wake
 * asked for afterwards fails with RuntimeError. */
void cm_wake_gc_clear(CmState *st);
/* After fork() in the child: a batch open on a parent's loop stays with its
 * callback, and the parent's done Future goes. */
void cm_wake_after_fork_child(CmState *st);

/* Objects of type can be put in a batch; fire wakes one. wakeup_offset: the
 * offset of the Task wakeup (a PyObject *) in the object, read ahead of the
 * batch for prefetching, or -1. 0, or -1 with an exception. */
int cm_wake_register_kind(CmState *st, PyTypeObject *type, CmWakeFn fire, Py_ssize_t wakeup_offset);
/* Queue o (borrowed) for the next batch on loop, a loop of this thread: 0,
 * or -1 when it cannot go in one (no exception set). */
int cm_wake_batch_add(CmState *st, PyObject *o, PyObject *loop);

/* Run the wakeup *cbp(arg) in the context *ctxp, both taken out first (the
 * call may reenter their owner). */
void cm_wakeup_run(PyObject **cbp, PyObject **ctxp, PyObject *arg);
/* Schedule the wakeup *cbp(arg) on loop in its context *ctxp, as a done
 * Future schedules its callbacks; both are taken out once scheduled. 0 (also
 * when none is set), or -1 with an exception (they stay). */
int cm_wakeup_schedule(CmState *st, PyObject *loop, PyObject **cbp, PyObject **ctxp, PyObject *arg);
/* The checks of add_done_callback(fn, *, context=None) on an object whose
 * wakeup is cb: fn (borrowed), with *ctx its context (borrowed, or NULL);
 * NULL with an exception for a malformed call or a second wakeup (a get()
 * is awaited by one task). */
PyObject *cm_wakeup_add_args(CmState *st, PyObject *cb, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames, PyObject **ctx);
/* remove_done_callback(fn) on a wakeup *cbp in context *ctxp: 1 or 0 */
PyObject *cm_wakeup_remove(PyObject **cbp, PyObject **ctxp, PyObject *fn);
/* Setter of _asyncio_future_blocking: an int at offset `off` of self. */
int cm_set_blocking(PyObject *self, PyObject *v, void *off);

/* cb is an asyncio Task's wakeup (asyncio's C Task): given an asyncio
 * Future, it reads its outcome directly instead of calling result() through
 * a bound method made for the call. That is _asyncio's internal behaviour,
 * so the shortcut is taken only on the versions it was checked on
 * (compat.h: CM_PRIVATE_OK); elsewhere every wakeup gets the object
 * itself. */
static inline int cm_is_task_wakeup(CmState *st, PyObject *cb)
{
#if CM_PRIVATE_OK
    return cb != NULL && PyCFunction_Check(cb) && PyCFunction_GET_SELF(cb) != NULL &&
           Py_IS_TYPE(PyCFunction_GET_SELF(cb), (PyTypeObject *)st->wake.TaskType);
#else
    (void)st;
    (void)cb;
    return 0;
#endif
}
/* A done Future with the result None on loop, for a Task to resume on
 * (borrowed), or NULL (no exception) where there is none to be had. */
PyObject *cm_done_future(CmState *st, PyObject *loop);
#endif
