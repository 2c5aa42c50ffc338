/* BloomFilter: the Python type over bloom.c, also used as a node's
 * Meta.doorkeeper. */
#ifndef CM_BLOOMTYPE_H
#define CM_BLOOMTYPE_H
#include "state.h"

/* Doorkeeper step on a hash: 1 if probably seen before, else records it and
 * returns 0. */
int cm_bloomtype_seen_or_put(PyObject *bf, Py_hash_t hash);
#endif
