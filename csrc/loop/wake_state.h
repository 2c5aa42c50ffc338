/* The wakeup machinery's part of the module state (CmState.wake): the open
 * wake batch, the done Future handed to C Tasks, and the kinds of objects a
 * batch can wake (loop/wake.c). */
#ifndef CM_WAKE_STATE_H
#define CM_WAKE_STATE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Wake one object taken from a batch (borrowed: the batch still holds it). */
typedef void (*CmWakeFn)(PyObject *o);

#define CM_WAKE_KINDS_MAX 4

typedef struct {
    /* objects to wake from one callback (cb, bound to the module) on loop:
     * the batch (a list) of the last loop used, see cm_wake_batch_add */
    PyObject *batch, *loop, *cb;
    /* a done Future (result None) on done_loop, handed to a Task's wakeup
     * for an outcome the Task only needs to resume on (cm_done_future) */
    PyObject *done_future, *done_loop;
    PyObject *TaskType; /* asyncio.Task */
    /* what a batch can hold: the type (borrowed: its concept's state owns
     * it), how to wake one, and where its Task wakeup is (for prefetching;
     * -1: none) */
    struct {
        PyTypeObject *type;
        CmWakeFn fire;
        Py_ssize_t wakeup_offset;
    } kinds[CM_WAKE_KINDS_MAX];
    int nkinds;
} CmWakeState;

#endif
