/* NodeConfig: a node class's Meta resolved once into C (storages looked up,
 * TTLs in ns, metrics), kept in the class's own __dict__ as __cacheme__ and
 * rebuilt when a storage is (re)registered. */
#ifndef CM_NODECFG_H
#define CM_NODECFG_H
#include "key.h"
#include "metrics.h"
#include "state.h"

enum {
    CM_CACHE_LOCAL = 0,    /* our LocalStore: C calls */
    CM_CACHE_LOCAL_PY = 1, /* a user storage that says is_local(): get_sync/await set */
    CM_CACHE_REMOTE = 2,   /* awaited get/set/get_all/set_all/remove */
};

typedef struct {
    int kind;
    PyObject *storage; /* CmStoreObject for LOCAL, else the registered storage */
    PyObject *name;    /* storage name */
    PyObject *ttl;     /* as given (timedelta or None), for Python storages */
    int64_t ttl_ns;    /* -1: none */
    Py_ssize_t stat;   /* index into metrics->storages */
} CmCacheRef;

typedef struct {
    PyObject_VAR_HEAD uint64_t generation;
    PyTypeObject *cls;    /* borrowed: the config lives in cls.__dict__ */
    PyObject *version;    /* str */
    PyObject *serializer; /* or None */
    PyObject *doorkeeper; /* or None */
    int doorkeeper_c;     /* doorkeeper is our BloomFilter */
    int nlocal_prefix;    /* how many leading caches are local */
    CmMetricsObject *metrics;
    Py_ssize_t ncaches;
    CmCacheRef caches[1];
} CmNodeConfigObject;

/* Config of a node class; borrowed reference, NULL with an exception. */
CmNodeConfigObject *cm_nodecfg_get(CmState *st, PyTypeObject *cls);

/* The full key {prefix}:{key()}:{version}, cached on the node as _full_key.
 * New reference; its hash is computed. */
PyObject *cm_full_key(CmState *st, PyObject *node, CmNodeConfigObject *cfg);
#endif
