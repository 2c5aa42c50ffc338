/* Freshness options of a node (Meta.refresh_after, early_refresh,
 * stale_if_error): what a hit on a local cache decides from the entry's
 * age, how fills record that age, and the value a failed load may fall
 * back on. The background load itself runs in the singleflight
 * (flight/refresh.c). */
#ifndef CM_FRESH_H
#define CM_FRESH_H
#include "core/nodecfg.h"
#include "core/store.h"

/* CmNodeConfigObject.fresh bits */
enum {
    CM_FRESH_REFRESH_AFTER = 1,
    CM_FRESH_EARLY = 2,
    CM_FRESH_STALE = 4,
};

/* Read the options from meta into c (absent, as on 0.3.0's Meta, or None:
 * off). 0, or -1 with a TypeError/ValueError naming the option. */
int cm_fresh_read_meta(CmState *st, PyTypeObject *cls, PyObject *meta, CmNodeConfigObject *c);

/* The refresh (CM_REFRESH_*) a hit on an entry of this age calls for, or -1:
 *   refresh_after: the entry is at least that old;
 *   early_refresh (XFetch, Vattani et al., PVLDB 8(8) 2015): with delta the
 *   entry's load time and u uniform in (0, 1],
 *   now - delta * beta * ln(u) >= its expiry. */
int cm_fresh_due(CmState *st, const CmNodeConfigObject *cfg, const CmStoreAge *age);

/* The age of a value that remote cache r of cfg gave, written at
 * updated_ns (UTC ns since the epoch, not 0) with load time load_ns, into
 * *age (cm_now_ns time; expire: its TTL's end by r's TTL). 1 when cfg has
 * stale_if_error and the value is past that TTL (the storage keeps it for
 * that window only: not a hit), else 0. */
int cm_fresh_remote_age(const CmNodeConfigObject *cfg, const CmCacheRef *r, int64_t updated_ns,
                        int64_t load_ns, CmStoreAge *age);

/* The soonest a value written at `written` (cm_now_ns time) may expire in
 * remote cache r: its TTL at the low end of its jitter (INT64_MAX: none).
 * A local copy of it ends then (cm_fresh_put). */
static inline int64_t cm_fresh_remote_end(const CmCacheRef *r, int64_t written)
{
    return r->ttl_ns >= 0 ? written + (int64_t)((double)r->ttl_ns * (1.0 - r->jitter)) : INT64_MAX;
}

/* Fill local cache r (a CM_CACHE_LOCAL of cfg) with value. age: NULL for
 * a value just loaded; else what is known of a value copied from another
 * cache (written: when it was written at its source, cm_now_ns time, 0:
 * now; load_ns: its load's time; expire: when it expires there, INT64_MAX:
 * never). For a node with freshness options the entry records that age, is
 * kept stale_if_error past its TTL, and its TTL ends no later than expire
 * (a copy does not outlive its source). 0, or -1 with an exception. */
int cm_fresh_put(CmState *st, CmNodeConfigObject *cfg, const CmCacheRef *r, PyObject *key,
                 Py_hash_t hash, PyObject *value, const CmStoreAge *age);

/* stale_if_error: a value of key past its TTL by at most Meta.stale_if_error
 * in one of cfg's local caches (new reference), or NULL (no exception). */
PyObject *cm_fresh_stale_value(CmNodeConfigObject *cfg, PyObject *key, Py_hash_t hash);

#endif
