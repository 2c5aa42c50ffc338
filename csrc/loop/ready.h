/* A ready awaitable: what get() returns on a local hit. Awaiting it yields
 * nothing and returns the value at once through am_send, so the hit path
 * makes no coroutine frame and no Future. */
#ifndef CM_READY_H
#define CM_READY_H
#include "state.h"

/* New reference to an awaitable that returns value (a new reference is
 * taken on value). Reuses the module's cached object when no one else holds
 * it. */
PyObject *cm_ready_new(CmState *st, PyObject *value);
#endif
