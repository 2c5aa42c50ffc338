/* Freshness options: Meta parsing, the hit's decision, aged fills. */
#include "core/fresh.h"

#include <math.h>

#include "base/clock.h"
#include "core/ttl.h"

int64_t cm_clock_offset_ns = 0;

/* Meta.<name>: a positive timedelta or None, in ns into *out (0: off). */
static int read_duration(CmState *st, PyTypeObject *cls, PyObject *meta, const char *name,
                         int64_t *out)
{
    double secs = 0;
    if (cm_meta_duration(st, cls, meta, name, &secs) < 0)
        return -1;
    *out = secs <= 0 ? 0 : secs >= 1e9 ? INT64_MAX / 4 : cm_ttl_ns(secs);
    return 0;
}

static int read_beta(PyTypeObject *cls, PyObject *meta, double *out)
{
    PyObject *b = PyObject_GetAttrString(meta, "early_refresh");
    if (b == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    int rc = 0;
    if (b != Py_None) {
        double v =
            PyBool_Check(b) || !(PyFloat_Check(b) || PyLong_Check(b)) ? -1.0 : PyFloat_AsDouble(b);
        if (!(v > 0) || isinf(v)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "%s.Meta.early_refresh must be a positive number (beta) or None, not %R",
                         cls->tp_name, b);
            rc = -1;
        } else {
            *out = v;
        }
    }
    Py_DECREF(b);
    return rc;
}

int cm_fresh_read_meta(CmState *st, PyTypeObject *cls, PyObject *meta, CmNodeConfigObject *c)
{
    if (read_duration(st, cls, meta, "refresh_after", &c->refresh_after_ns) < 0 ||
        read_beta(cls, meta, &c->early_beta) < 0 ||
        read_duration(st, cls, meta, "stale_if_error", &c->stale_ns) < 0)
        return -1;
    c->fresh = (c->refresh_after_ns > 0 ? CM_FRESH_REFRESH_AFTER : 0) |
               (c->early_beta > 0 ? CM_FRESH_EARLY : 0) | (c->stale_ns > 0 ? CM_FRESH_STALE : 0);
    return 0;
}

int cm_fresh_due(CmState *st, const CmNodeConfigObject *cfg, const CmStoreAge *age)
{
    if (age->written == 0)
        return -1;
    int64_t now = cm_now_ns();
    if ((cfg->fresh & CM_FRESH_REFRESH_AFTER) && now - age->written >= cfg->refresh_after_ns)
        return CM_REFRESH_BACKGROUND;
    if ((cfg->fresh & CM_FRESH_EARLY) && age->expire != INT64_MAX && age->load_ns > 0) {
        /* -ln(u), u in (0, 1]: an exponential draw, 0 at u = 1 */
        double gap = cfg->early_beta * (double)age->load_ns * -log(1.0 - cm_uniform(st));
        if ((double)now + gap >= (double)age->expire)
            return CM_REFRESH_EARLY;
    }
    return -1;
}

int cm_fresh_remote_age(const CmNodeConfigObject *cfg, const CmCacheRef *r, int64_t updated_ns,
                        int64_t load_ns, CmStoreAge *age)
{
    int64_t now = cm_now_ns();
    int64_t age_ns = cm_wall_ns() - updated_ns;
    age->written = now - (age_ns > 0 ? age_ns : 0);
    age->expire = r->ttl_ns >= 0 ? age->written + r->ttl_ns : INT64_MAX;
    age->load_ns = load_ns;
    return (cfg->fresh & CM_FRESH_STALE) && now >= age->expire;
}

int cm_fresh_put(CmState *st, CmNodeConfigObject *cfg, const CmCacheRef *r, PyObject *key,
                 Py_hash_t hash, PyObject *value, const CmStoreAge *age)
{
    CmStoreObject *s = (CmStoreObject *)r->storage; // borrowed from cfg
    int64_t ttl = cm_cache_write_ttl_ns(st, r);
    if (cfg->fresh == 0)
        return cm_store_put(s, key, hash, value, ttl);
    if (age == NULL)
        return cm_store_put_aged(s, key, hash, value, ttl, cfg->stale_ns, 0, 0);
    if (age->expire != INT64_MAX)
        ttl = cm_ttl_cap_ns(ttl, age->expire - cm_now_ns());
    return cm_store_put_aged(s, key, hash, value, ttl, cfg->stale_ns, age->load_ns, age->written);
}

PyObject *cm_fresh_stale_value(CmNodeConfigObject *cfg, PyObject *key, Py_hash_t hash)
{
    for (Py_ssize_t i = 0; i < cfg->ncaches; i++) {
        const CmCacheRef *r = &cfg->caches[i];
        if (r->kind != CM_CACHE_LOCAL)
            continue;
        CmStoreAge age;
        PyObject *v = cm_store_lookup_aged((CmStoreObject *)r->storage, key, hash, 1, &age);
        if (v != NULL)
            return v;
    }
    return NULL;
}

/* _advance_clock(ns): move the core's clock forward (tests only) */
static PyObject *py_advance_clock(PyObject *mod, PyObject *arg)
{
    (void)mod;
    long long ns = PyLong_AsLongLong(arg);
    if (ns == -1 && PyErr_Occurred())
        return NULL;
    if (ns < 0 || ns > INT64_MAX / 4 - cm_clock_offset_ns) {
        PyErr_Format(PyExc_ValueError, "_advance_clock: ns must be >= 0 and sane, got %lld", ns);
        return NULL;
    }
    cm_clock_offset_ns += ns;
    Py_RETURN_NONE;
}

/* _reset_clock(): the real clock again, after a test that moved it. Local
 * stores used meanwhile keep the time they saw: their next entries may
 * expire at once. Tests use new stores. */
static PyObject *py_reset_clock(PyObject *mod, PyObject *Py_UNUSED(x))
{
    (void)mod;
    cm_clock_offset_ns = 0;
    Py_RETURN_NONE;
}

static PyMethodDef fresh_functions[] = {
    {"_advance_clock", py_advance_clock, METH_O,
     "_advance_clock(ns): move the clock of TTLs and ages forward (tests)"},
    {"_reset_clock", py_reset_clock, METH_NOARGS, "_reset_clock(): undo _advance_clock (tests)"},
    {NULL, NULL},
};

int cm_fresh_init(PyObject *mod, CmState *st)
{
    (void)st;
    return PyModule_AddFunctions(mod, fresh_functions);
}
