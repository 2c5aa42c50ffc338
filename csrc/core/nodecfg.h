/* NodeConfig: a node class's Meta resolved once into C (storages looked up,
 * TTLs in ns, metrics), kept in the class's own __dict__ as __cacheme__ and
 * rebuilt when a storage is (re)registered or the prefix changes. */
#ifndef CM_NODECFG_H
#define CM_NODECFG_H
#include "core/key.h"
#include "core/metrics.h"
#include "state.h"

enum {
    CM_CACHE_LOCAL = 0,    /* our LocalStore: C calls */
    CM_CACHE_LOCAL_PY = 1, /* a user storage that says is_local(): get_sync/await set */
    CM_CACHE_REMOTE = 2,   /* awaited get/set/get_all/set_all/remove */
};

typedef struct {
    int kind;
    PyObject *storage; /* CmStoreObject for LOCAL, else the registered storage */
    Py_ssize_t stat;   /* index into metrics->storages */
    PyObject *name;    /* storage name */
    PyObject *ttl;     /* as given (timedelta or None), for Python storages */
    int64_t ttl_ns;    /* -1: none */
    double jitter;     /* Cache.ttl_jitter: each write's TTL is drawn in ttl * (1 +- jitter) */
} CmCacheRef;

/* The TTL of one write to r: its TTL, or one drawn uniformly within +-jitter
 * of it, so that keys written together do not expire together. In ns (-1:
 * none), and as the object storages take (r->ttl's type; new reference). */
int64_t cm_cache_write_ttl_ns(CmState *st, const CmCacheRef *r);
PyObject *cm_cache_write_ttl(CmState *st, const CmCacheRef *r);

typedef struct CmNodeConfigObject_ {
    PyObject_VAR_HEAD
    /* what a local hit reads comes first, the first cache last (get.c): the
     * fewer cache lines a hit touches, the fewer it waits on */
    uint64_t generation;
    /* CM_FRESH_* bits of the Meta freshness options (core/fresh.h); 0 for
     * most nodes, whose hits test only this */
    unsigned int fresh;
    PyTypeObject *cls; /* borrowed: the config lives in cls.__dict__ */
    /* cls.key and cls.load when they are plain functions, called without
     * the method lookup while cls keeps the version tag it had then
     * (cm_nodecfg_methods) */
    PyObject *key_func;
    unsigned int meth_tag;
    int key_slot; /* cls has the full key slot (cacheme.models._FullKeySlot) */
    CmMetricsObject *metrics;
    PyObject *version;    /* str */
    CmKeyAffix affix;     /* of the prefix at build time and version */
    PyObject *serializer; /* or None */
    PyObject *doorkeeper; /* or None */
    int doorkeeper_c;     /* doorkeeper is our BloomFilter */
    int nlocal_prefix;    /* how many leading caches are local */
    PyObject *load_func;
    double load_timeout;      /* Meta.load_timeout in seconds; 0: none */
    int64_t refresh_after_ns; /* Meta.refresh_after */
    double early_beta;        /* Meta.early_refresh */
    int64_t stale_ns;         /* Meta.stale_if_error */
    Py_ssize_t ncaches;
    CmCacheRef caches[1];
} CmNodeConfigObject;

/* Meta.<name> (absent, as on 0.3.0's Meta, or None: *out untouched), a
 * positive timedelta, in seconds into *out. 0, or -1 with a TypeError
 * naming the option. */
int cm_meta_duration(CmState *st, PyTypeObject *cls, PyObject *meta, const char *name, double *out);

/* A uniform draw in [0, 1) from the process's generator (splitmix64,
 * reseeded after fork), shared by TTL jitter and early refresh. */
double cm_uniform(CmState *st);

/* Config of a node class; borrowed reference, NULL with an exception. */
CmNodeConfigObject *cm_nodecfg_lookup(CmState *st, PyTypeObject *cls);

/* The same, inline when cls is the class of the last call. */
static inline CmNodeConfigObject *cm_nodecfg_get(CmState *st, PyTypeObject *cls)
{
    CmNodeConfigObject *last = (CmNodeConfigObject *)st->last_cfg; // borrowed
    if ((PyObject *)cls == st->last_cls && last->generation == st->generation)
        return last;
    return cm_nodecfg_lookup(st, cls);
}

/* Resolve cfg->key_func/load_func for cfg->cls if its methods may have
 * changed: 1 when they are valid (either may be NULL: not a plain function),
 * 0 when the class cannot be cached (custom __getattribute__, no version
 * tag). Instance attributes named key/load do not shadow these: node classes
 * define them as methods, as 0.3.0's did. Never raises. */
int cm_nodecfg_resolve_methods(CmState *st, CmNodeConfigObject *cfg);

static inline int cm_nodecfg_methods(CmState *st, CmNodeConfigObject *cfg)
{
    if (cfg->meth_tag != 0 && cfg->cls->tp_version_tag == cfg->meth_tag)
        return 1;
    return cm_nodecfg_resolve_methods(st, cfg);
}

/* node.key(), checked to be a str; new reference. With cfg (node's class's
 * config, or NULL) a plain-function key() of an instance of cfg's own class
 * is called without its lookup (inline: the local hit's case). */
static inline PyObject *cm_key_call(CmState *st, PyObject *node, CmNodeConfigObject *cfg)
{
    if (cfg == NULL || Py_TYPE(node) != cfg->cls || !cm_nodecfg_methods(st, cfg) ||
        cfg->key_func == NULL)
        return cm_key_call_method(st, node);
    /* key_func is a PyFunction (cm_nodecfg_resolve_methods): its own
     * vectorcall, without PyObject_Vectorcall's dispatch and result check */
    PyObject *key = ((PyFunctionObject *)cfg->key_func)->vectorcall(cfg->key_func, &node, 1, NULL);
    return key == NULL || PyUnicode_Check(key) ? key : cm_key_not_str(node, key);
}

/* Where node keeps its full key when it is an instance of cfg's own class
 * and that class has the key slot: known without a walk of the MRO
 * (borrowed address); NULL otherwise (see cm_key_cached). */
static inline PyObject **cm_nodecfg_key_slot(CmState *st, CmNodeConfigObject *cfg, PyObject *node)
{
    return cfg->key_slot && Py_TYPE(node) == cfg->cls
               ? (PyObject **)((char *)node + st->key_slot_offset)
               : NULL;
}

/* The full key {prefix}:{key()}:{version}, cached on the node as _full_key.
 * New reference; its hash is computed. */
PyObject *cm_full_key(CmState *st, PyObject *node, CmNodeConfigObject *cfg);
#endif
