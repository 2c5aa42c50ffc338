/* The request flow of get(): full key, local caches in order (a hit on the
 * first returns a ready awaitable), else the singleflight. */
#ifndef CM_GET_H
#define CM_GET_H
#include "flight/flight.h"

/* req->node, load_fn and memo_* set by the caller; the rest is filled in.
 * New reference to an awaitable. */
PyObject *cm_get(CmState *st, CmRequest *req);
int cm_get_init(PyObject *mod, CmState *st);
#endif
