/* get_all(nodes): the values of many nodes of one class, in order, on the
 * same flights, fills, doorkeeper and metrics as get(). */
#ifndef CM_GET_ALL_H
#define CM_GET_ALL_H
#include "state.h"

int cm_get_all_init(PyObject *mod, CmState *st);
int cm_get_all_traverse(CmState *st, visitproc visit, void *arg);
void cm_get_all_clear(CmState *st);
#endif
