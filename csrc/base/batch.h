/* What a remote storage's get_all and set_all collect before they make a
 * request, written once for the storages that send a batch as one command
 * (SQL, MongoDB): the storage passes its own key_of (the full key of a
 * node, checked for what it can hold) and encode (a value as the bytes it
 * stores) as callbacks, with itself as their first argument.
 *
 * The input is first copied into a tuple: a node's full_key() may change a
 * list passed in while we walk it, and the tuple holds the nodes and the
 * (node, value) pairs alive meanwhile. */
#ifndef CM_BASE_BATCH_H
#define CM_BASE_BATCH_H
#include <Python.h>

/* A new reference, or NULL with an exception. */
typedef PyObject *(*CmBatchKeyOf)(void *storage, PyObject *node);
typedef PyObject *(*CmBatchEncode)(void *storage, PyObject *ser, PyObject *value);

/* get_all: the full key of each of nodes (any sequence) in *keys and the
 * nodes in *nodes_out, two new lists in the same order. 0, or -1 with an
 * exception and both NULL. */
int cm_batch_keys(void *storage, CmBatchKeyOf key_of, PyObject *nodes, PyObject **keys,
                  PyObject **nodes_out);

/* set_all: data, a sequence of (node, value), as the keys in *keys and the
 * encoded values in *values, two new lists: one entry per distinct key, in
 * the order keys first come, the last value of a key winning (one upsert
 * per key). 0, or -1 with an exception (a TypeError for an item that is
 * not a pair) and both NULL. */
int cm_batch_pairs(void *storage, CmBatchKeyOf key_of, CmBatchEncode encode, PyObject *data,
                   PyObject *ser, PyObject **keys, PyObject **values);

#endif
