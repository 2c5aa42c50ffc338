/* LocalStore: the embedded storage behind local://lru and local://tlfu.
 *
 * Layout (memory per entry matters, see benchmarks): per slot a key and a
 * value pointer; an open-addressing index of (slot number, low 32 bits of the
 * key's hash) pairs (linear probing, backward-shift deletion, so no
 * tombstones); the policy keeps 8 bytes per slot and the timer wheel 16. Free
 * slots are threaded through the values array. A store that a node with
 * freshness options (core/fresh.h) writes to also keeps 24 bytes a slot of
 * age (`aged`, allocated by the first such write): when the entry was
 * written, when its TTL ends (the wheel may keep it longer, for
 * stale_if_error: a hit past that end is a miss) and how long its load took. Keys are exact str,
 * whose cached hash is read back for the policy instead of being stored again.
 *
 * The hash bits in the index are what keeps a probe inside the index: a
 * mismatching entry is skipped without loading its key object (in a large
 * store, two dependent cache misses per probe), and a miss, which walks the
 * whole probe run, touches no key at all unless 32 hash bits collide. They
 * also give every entry's home position to deletion and growth.
 *
 * Reentrancy: dropping a key or value can run arbitrary Python (__del__), so
 * every reference the store lets go of is parked in `dead` and released only
 * once the table is consistent again, at the end of the public operation. */
#include "core/store.h"
#include "core/ttl.h"

#include <structmember.h>

#include "base/clock.h"
#include "core/policy.h"
#include "core/timerwheel.h"

#define EMPTY UINT32_MAX
#define CM_STORE_MAX_SIZE ((uint32_t)1 << 26)

typedef struct {
    uint32_t slot; /* EMPTY where free */
    uint32_t tag;  /* (uint32_t)hash of the key: its home is tag & index_mask */
} CmIndexEntry;

struct CmStoreObject {
    PyObject_HEAD
    /* what a hit reads, together: a hit that touches fewer cache lines does
     * not wait on as many of them (the get loop evicts them between calls) */
    CmIndexEntry *index;
    PyObject **keys;   /* NULL on a free slot */
    PyObject **values; /* on a free slot: next free slot number, cast */
    cm_policy *policy;
    uint32_t index_mask;
    int ttl_used;     /* a put had a TTL: only then may the wheel hold entries */
    CmStoreAge *aged; /* per slot, or NULL: no node with freshness options wrote here */
    size_t ndead;
    cm_wheel *wheel;
    int kind;
    uint32_t capacity;
    uint32_t len;
    uint32_t nslots; /* allocated */
    uint32_t hwm;    /* slots [0, hwm) have been handed out at least once */
    uint32_t free_head;
    PyObject **dead;
    size_t dead_cap;
    int flushing;
    uint64_t puts;      /* bumped by every put: lets a deferred get see new values */
    uint64_t evictions; /* entries the policy pushed out (not expiries, not removes) */
    PyObject *weakreflist;
};

static inline uint64_t slot_hash(CmStoreObject *s, uint32_t slot)
{
    return (uint64_t)((PyASCIIObject *)s->keys[slot])->hash;
}

/* the policy mixes hashes itself: Python's str hash goes in as is */
static uint64_t policy_hash_of(void *ud, uint32_t slot)
{
    return slot_hash((CmStoreObject *)ud, slot);
}

/* n equal bytes at a and b; up to 32 bytes as overlapping 8-byte words, no call */
static inline int bytes_eq(const unsigned char *a, const unsigned char *b, size_t n)
{
    uint64_t x, y, u, v;
    if (n < 8 || n > 32)
        return memcmp(a, b, n) == 0;
    memcpy(&x, a, 8), memcpy(&y, b, 8);
    memcpy(&u, a + n - 8, 8), memcpy(&v, b + n - 8, 8);
    uint64_t d = (x ^ y) | (u ^ v);
    if (n > 16) {
        memcpy(&x, a + 8, 8), memcpy(&y, b + 8, 8);
        memcpy(&u, a + n - 16, 8), memcpy(&v, b + n - 16, 8);
        d |= (x ^ y) | (u ^ v);
    }
    return d == 0;
}

static inline int str_eq(PyObject *a, PyObject *b)
{
    if (a == b)
        return 1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(a);
    if (n != PyUnicode_GET_LENGTH(b) || PyUnicode_KIND(a) != PyUnicode_KIND(b))
        return 0;
    return bytes_eq(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * PyUnicode_KIND(a));
}

/* Park a reference until the store is consistent; the reference is stolen.
 * Never fails: if the parking lot cannot grow, fall back to releasing now
 * (only reachable on OOM). */
static void defer_decref(CmStoreObject *s, PyObject *o)
{
    if (o == NULL)
        return;
    if (s->ndead == s->dead_cap) {
        size_t cap = s->dead_cap ? s->dead_cap * 2 : 16;
        PyObject **grown = PyMem_Realloc(s->dead, cap * sizeof(PyObject *));
        if (grown == NULL) {
            Py_DECREF(o);
            return;
        }
        s->dead = grown;
        s->dead_cap = cap;
    }
    s->dead[s->ndead++] = o;
}

static void flush_dead_now(CmStoreObject *s)
{
    s->flushing = 1;
    /* a __del__ may park more while we release: loop until empty */
    while (s->ndead > 0) {
        PyObject *o = s->dead[--s->ndead];
        Py_DECREF(o);
    }
    s->flushing = 0;
}

static inline void flush_dead(CmStoreObject *s)
{
    if (s->ndead != 0 && !s->flushing)
        flush_dead_now(s);
}

/* Position in the index holding key, or the EMPTY position where it would go. */
static inline uint32_t find_pos(CmStoreObject *s, PyObject *key, Py_hash_t hash, int *found)
{
    uint32_t mask = s->index_mask;
    uint32_t tag = (uint32_t)hash;
    uint32_t pos = tag & mask;
    for (;;) {
        CmIndexEntry e = s->index[pos];
        if (e.slot == EMPTY) {
            *found = 0;
            return pos;
        }
        if (e.tag == tag) {
            PyObject *k = s->keys[e.slot]; // borrowed
            if (k == key || (((PyASCIIObject *)k)->hash == hash && str_eq(k, key))) {
                *found = 1;
                return pos;
            }
        }
        pos = (pos + 1) & mask;
    }
}

static uint32_t pos_of_slot(CmStoreObject *s, uint32_t slot)
{
    uint32_t mask = s->index_mask;
    uint32_t pos = (uint32_t)slot_hash(s, slot) & mask;
    while (s->index[pos].slot != slot)
        pos = (pos + 1) & mask;
    return pos;
}

static void index_remove_at(CmStoreObject *s, uint32_t i)
{
    uint32_t mask = s->index_mask;
    uint32_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        CmIndexEntry e = s->index[j];
        if (e.slot == EMPTY)
            break;
        uint32_t k = e.tag & mask;
        /* leave the entry at j if its home k lies cyclically in (i, j] */
        if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
            continue;
        s->index[i] = e;
        i = j;
    }
    s->index[i].slot = EMPTY;
}

static int index_grow(CmStoreObject *s)
{
    uint32_t size = (s->index_mask + 1) * 2;
    CmIndexEntry *idx = PyMem_Malloc(sizeof(CmIndexEntry) * size);
    if (idx == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset(idx, 0xff, sizeof(CmIndexEntry) * size);
    CmIndexEntry *old = s->index;
    uint32_t oldsize = s->index_mask + 1;
    s->index = idx;
    s->index_mask = size - 1;
    for (uint32_t p = 0; p < oldsize; p++) {
        if (old[p].slot == EMPTY)
            continue;
        uint32_t pos = old[p].tag & s->index_mask;
        while (idx[pos].slot != EMPTY)
            pos = (pos + 1) & s->index_mask;
        idx[pos] = old[p];
    }
    PyMem_Free(old);
    return 0;
}

/* Detach a resident slot from index, wheel and free it; the policy has
 * already let go of it (victim) or must be told (explicit). */
static void drop_slot(CmStoreObject *s, uint32_t slot, int tell_policy)
{
    index_remove_at(s, pos_of_slot(s, slot));
    if (tell_policy)
        cm_policy_remove(s->policy, slot);
    cm_wheel_cancel(s->wheel, slot);
    defer_decref(s, s->keys[slot]);
    defer_decref(s, s->values[slot]);
    s->keys[slot] = NULL;
    s->values[slot] = (PyObject *)(uintptr_t)s->free_head;
    s->free_head = slot;
    s->len--;
}

static void expire_cb(void *ud, uint32_t slot) { drop_slot((CmStoreObject *)ud, slot, 1); }

/* Expire what is due; *now stays 0 when nothing is scheduled (no entry has
 * a TTL), else it is the clock read for it. */
static inline void advance_wheel(CmStoreObject *s, int64_t *now)
{
    if (!s->ttl_used || cm_wheel_len(s->wheel) == 0)
        return;
    *now = cm_now_ns();
    cm_wheel_advance(s->wheel, *now, expire_cb, s);
}

static int reserve_slot(CmStoreObject *s, uint32_t *out)
{
    if (s->free_head != EMPTY) {
        *out = s->free_head;
        s->free_head = (uint32_t)(uintptr_t)s->values[*out];
        return 0;
    }
    if (s->hwm == s->nslots) {
        uint32_t limit = s->capacity + 1; /* one extra: insert before evict */
        uint32_t n = s->nslots ? s->nslots * 2 : 16;
        if (n > limit)
            n = limit;
        if (n <= s->nslots) {
            PyErr_SetString(PyExc_RuntimeError, "cacheme local store: no free slot");
            return -1;
        }
        PyObject **k = PyMem_Realloc(s->keys, n * sizeof(PyObject *));
        if (k == NULL)
            goto oom;
        s->keys = k;
        PyObject **v = PyMem_Realloc(s->values, n * sizeof(PyObject *));
        if (v == NULL)
            goto oom;
        s->values = v;
        if (cm_policy_reserve(s->policy, n) < 0 || cm_wheel_reserve(s->wheel, n) < 0)
            goto oom;
        if (s->aged != NULL) {
            CmStoreAge *a = PyMem_Realloc(s->aged, n * sizeof(CmStoreAge));
            if (a == NULL)
                goto oom;
            s->aged = a;
        }
        s->nslots = n;
    }
    *out = s->hwm++;
    return 0;
oom:
    PyErr_NoMemory();
    return -1;
}

static inline int parts_eq(PyObject *k, const CmKeyParts *kp)
{
    return PyUnicode_KIND(k) == PyUnicode_1BYTE_KIND && PyUnicode_GET_LENGTH(k) == kp->len &&
           bytes_eq(PyUnicode_1BYTE_DATA(k), kp->data, (size_t)kp->len);
}

/* slot, or EMPTY when its entry has expired (it is dropped) or, unless
 * stale_ok, is past its TTL but kept for stale_if_error; now is what
 * advance_wheel left (0: no entry has a TTL). */
static inline uint32_t unexpired(CmStoreObject *s, uint32_t slot, int64_t now, int stale_ok)
{
    int64_t exp = now != 0 ? cm_wheel_expire_at(s->wheel, slot) : 0;
    if (exp != 0 && exp <= now) {
        drop_slot(s, slot, 1);
        return EMPTY;
    }
    if (!stale_ok && now != 0 && s->aged != NULL && s->aged[slot].expire <= now)
        return EMPTY;
    return slot;
}

/* A resident, unexpired slot for hash/parts, or EMPTY (now: unexpired). */
static uint32_t find_live_parts(CmStoreObject *s, const CmKeyParts *kp, Py_hash_t hash, int64_t now)
{
    uint32_t mask = s->index_mask;
    uint32_t tag = (uint32_t)hash;
    for (uint32_t pos = tag & mask;; pos = (pos + 1) & mask) {
        CmIndexEntry e = s->index[pos];
        if (e.slot == EMPTY)
            return EMPTY;
        if (e.tag != tag)
            continue;
        uint32_t slot = e.slot;
        PyObject *k = s->keys[slot]; // borrowed
        if (((PyASCIIObject *)k)->hash == hash && parts_eq(k, kp))
            return unexpired(s, slot, now, 0);
    }
}

/* A resident, unexpired slot for key, or EMPTY. */
static inline uint32_t find_live(CmStoreObject *s, PyObject *key, Py_hash_t hash, int64_t now,
                                 int stale_ok)
{
    int found;
    uint32_t pos = find_pos(s, key, hash, &found);
    return found ? unexpired(s, s->index[pos].slot, now, stale_ok) : EMPTY;
}

/* Record the hit or miss; new reference to the value on a hit. */
static inline PyObject *finish_lookup(CmStoreObject *s, uint32_t slot, Py_hash_t hash)
{
    PyObject *v = NULL;
    if (slot != EMPTY) {
        cm_policy_access(s->policy, slot, (uint64_t)hash);
        v = Py_NewRef(s->values[slot]);
    } else {
        cm_policy_record_miss(s->policy, (uint64_t)hash);
    }
    flush_dead(s);
    return v;
}

PyObject *cm_store_lookup_parts(CmStoreObject *s, const CmKeyParts *parts, Py_hash_t hash)
{
    int64_t now = 0;
    advance_wheel(s, &now);
    return finish_lookup(s, find_live_parts(s, parts, hash, now), hash);
}

PyObject *cm_store_lookup(CmStoreObject *s, PyObject *key, Py_hash_t hash)
{
    int64_t now = 0;
    advance_wheel(s, &now);
    return finish_lookup(s, find_live(s, key, hash, now, 0), hash);
}

PyObject *cm_store_lookup_aged(CmStoreObject *s, PyObject *key, Py_hash_t hash, int stale_ok,
                               CmStoreAge *age)
{
    int64_t now = 0;
    advance_wheel(s, &now);
    uint32_t slot = find_live(s, key, hash, now, stale_ok);
    if (slot != EMPTY && stale_ok && (s->aged == NULL || now == 0 || s->aged[slot].expire > now))
        slot = EMPTY; /* not stale: what is asked for is a value kept past its TTL */
    if (slot != EMPTY) {
        if (s->aged != NULL)
            *age = s->aged[slot];
        else
            age->written = age->load_ns = 0, age->expire = INT64_MAX;
    }
    return finish_lookup(s, slot, hash);
}

uint64_t cm_store_puts(CmStoreObject *s) { return s->puts; }

/* Start keeping ages: every resident slot gets one, as if written now. */
static int aged_start(CmStoreObject *s, int64_t now)
{
    CmStoreAge *a = PyMem_Malloc((s->nslots ? s->nslots : 1) * sizeof(CmStoreAge));
    if (a == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (uint32_t slot = 0; slot < s->hwm; slot++) {
        int64_t exp = cm_wheel_expire_at(s->wheel, slot);
        a[slot].written = now;
        a[slot].expire = exp != 0 ? exp : INT64_MAX;
        a[slot].load_ns = 0;
    }
    s->aged = a;
    return 0;
}

/* cm_store_put; with aged, the entry also records its age, and its TTL
 * (ttl_ns) ends hits while the wheel keeps it grace_ns longer. */
static int store_put(CmStoreObject *s, PyObject *key, Py_hash_t hash, PyObject *value,
                     int64_t ttl_ns, int aged, int64_t grace_ns, int64_t load_ns, int64_t written)
{
    s->puts++;
    int64_t now = 0;
    int found;
    advance_wheel(s, &now);
    uint32_t pos = find_pos(s, key, hash, &found);
    uint32_t slot;
    int resident = 1;
    if (found) {
        slot = s->index[pos].slot;
        defer_decref(s, s->values[slot]);
        s->values[slot] = Py_NewRef(value);
        cm_policy_access(s->policy, slot, (uint64_t)hash);
    } else {
        if ((s->len + 1) * 4 > (s->index_mask + 1) * 3) {
            if (index_grow(s) < 0)
                return -1;
            pos = find_pos(s, key, hash, &found);
        }
        if (reserve_slot(s, &slot) < 0)
            return -1;
        s->keys[slot] = Py_NewRef(key);
        s->values[slot] = Py_NewRef(value);
        s->index[pos].slot = slot;
        s->index[pos].tag = (uint32_t)hash;
        s->len++;
        uint32_t victims[4];
        uint32_t n = cm_policy_insert(s->policy, slot, (uint64_t)hash, victims);
        for (uint32_t i = 0; i < n; i++)
            drop_slot(s, victims[i], 0);
        s->evictions += n;
        /* admission may have rejected the new entry itself */
        resident = s->keys[slot] != NULL;
    }
    if (resident) {
        if ((ttl_ns >= 0 || aged || s->aged != NULL) && now == 0)
            now = cm_now_ns();
        if (aged && s->aged == NULL && aged_start(s, now) < 0) {
            drop_slot(s, slot, 1);
            flush_dead(s);
            return -1;
        }
        /* a TTL near the cap (cm_ttl_to_ns) on a clock that has
         * run for months would overflow now + ttl_ns (expired at once): it
         * never expires instead */
        int timed = ttl_ns >= 0 && ttl_ns <= INT64_MAX - now;
        if (s->aged != NULL) {
            s->aged[slot].written = written != 0 && written < now ? written : now;
            s->aged[slot].expire = timed ? now + ttl_ns : INT64_MAX;
            s->aged[slot].load_ns = load_ns;
        }
        if (timed && grace_ns > 0)
            ttl_ns = grace_ns <= INT64_MAX - now - ttl_ns ? ttl_ns + grace_ns : INT64_MAX - now;
        if (timed) {
            s->ttl_used = 1;
            if (cm_wheel_schedule_checked(s->wheel, slot, now + ttl_ns) < 0) {
                /* an entry that cannot expire must not stay */
                drop_slot(s, slot, 1);
                flush_dead(s);
                PyErr_NoMemory();
                return -1;
            }
        } else {
            cm_wheel_cancel(s->wheel, slot);
        }
    }
    flush_dead(s);
    return 0;
}

int cm_store_put(CmStoreObject *s, PyObject *key, Py_hash_t hash, PyObject *value, int64_t ttl_ns)
{
    return store_put(s, key, hash, value, ttl_ns, 0, 0, 0, 0);
}

int cm_store_put_aged(CmStoreObject *s, PyObject *key, Py_hash_t hash, PyObject *value,
                      int64_t ttl_ns, int64_t grace_ns, int64_t load_ns, int64_t written)
{
    return store_put(s, key, hash, value, ttl_ns, 1, grace_ns, load_ns, written);
}

int cm_store_delete(CmStoreObject *s, PyObject *key, Py_hash_t hash)
{
    int found;
    uint32_t pos = find_pos(s, key, hash, &found);
    if (found)
        drop_slot(s, s->index[pos].slot, 1);
    flush_dead(s);
    return found;
}

static void store_clear_all(CmStoreObject *s)
{
    for (uint32_t slot = 0; slot < s->hwm; slot++) {
        if (s->keys[slot] != NULL)
            drop_slot(s, slot, 1);
    }
}

/* ---- Python interface ---------------------------------------------------- */

static CmState *store_state(PyObject *self) { return cm_state_from_type(Py_TYPE(self)); }

/* exact str key with its hash computed; new reference */
static PyObject *as_key(PyObject *key, Py_hash_t *hash)
{
    if (!PyUnicode_Check(key)) {
        PyErr_Format(PyExc_TypeError, "cache key must be str, not %.100s", Py_TYPE(key)->tp_name);
        return NULL;
    }
    PyObject *k = PyUnicode_CheckExact(key) ? Py_NewRef(key) : PyUnicode_FromObject(key);
    if (k == NULL)
        return NULL;
    if ((*hash = PyObject_Hash(k)) == -1) {
        Py_DECREF(k);
        return NULL;
    }
    return k;
}

static PyObject *store_new(PyTypeObject *tp, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"policy", "size", NULL};
    const char *policy;
    long long size;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "sL:LocalStore", kwlist, &policy, &size))
        return NULL;
    int kind;
    if (strcmp(policy, "lru") == 0)
        kind = CM_POLICY_LRU;
    else if (strcmp(policy, "tlfu") == 0)
        kind = CM_POLICY_TLFU;
    else {
        PyErr_Format(PyExc_ValueError,
                     "unknown local storage policy '%s' (expected 'lru' or 'tlfu')", policy);
        return NULL;
    }
    if (size <= 0) {
        PyErr_Format(PyExc_ValueError, "local storage size must be > 0, got %lld", size);
        return NULL;
    }
    if (size >= (long long)CM_STORE_MAX_SIZE) {
        PyErr_Format(PyExc_ValueError, "local storage size must be < %u, got %lld",
                     CM_STORE_MAX_SIZE, size);
        return NULL;
    }
    CmStoreObject *s = (CmStoreObject *)tp->tp_alloc(tp, 0);
    if (s == NULL)
        return NULL;
    s->kind = kind;
    s->capacity = (uint32_t)size;
    s->free_head = EMPTY;
    s->index_mask = 7;
    s->index = PyMem_Malloc(sizeof(CmIndexEntry) * 8);
    s->policy = cm_policy_new(kind, s->capacity, policy_hash_of, s);
    s->wheel = cm_wheel_new(cm_now_ns());
    if (s->index == NULL || s->policy == NULL || s->wheel == NULL) {
        Py_DECREF(s);
        return PyErr_NoMemory();
    }
    memset(s->index, 0xff, sizeof(CmIndexEntry) * 8);
    return (PyObject *)s;
}

static PyObject *store_get(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get(key, default=None)");
        return NULL;
    }
    Py_hash_t hash;
    PyObject *key = as_key(args[0], &hash);
    if (key == NULL)
        return NULL;
    PyObject *v = cm_store_lookup((CmStoreObject *)self, key, hash);
    Py_DECREF(key);
    if (v == NULL)
        v = Py_NewRef(nargs == 2 ? args[1] : Py_None);
    return v;
}

static PyObject *store_set(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "set(key, value, ttl=None)");
        return NULL;
    }
    int64_t ttl = nargs == 3 ? cm_ttl_to_ns(store_state(self), args[2]) : -1;
    if (ttl == -2)
        return NULL;
    Py_hash_t hash;
    PyObject *key = as_key(args[0], &hash);
    if (key == NULL)
        return NULL;
    int rc = cm_store_put((CmStoreObject *)self, key, hash, args[1], ttl);
    Py_DECREF(key);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *store_remove(PyObject *self, PyObject *arg)
{
    Py_hash_t hash;
    PyObject *key = as_key(arg, &hash);
    if (key == NULL)
        return NULL;
    int rc = cm_store_delete((CmStoreObject *)self, key, hash);
    Py_DECREF(key);
    return PyBool_FromLong(rc);
}

static int store_contains(PyObject *self, PyObject *arg)
{
    CmStoreObject *s = (CmStoreObject *)self;
    Py_hash_t hash;
    PyObject *key = as_key(arg, &hash);
    if (key == NULL)
        return -1;
    int64_t now = 0;
    advance_wheel(s, &now);
    int found = find_live(s, key, hash, now, 0) != EMPTY;
    Py_DECREF(key);
    flush_dead(s);
    return found;
}

void cm_store_clear(CmStoreObject *s)
{
    store_clear_all(s);
    flush_dead(s);
}

static PyObject *store_clear_method(PyObject *self, PyObject *Py_UNUSED(x))
{
    cm_store_clear((CmStoreObject *)self);
    Py_RETURN_NONE;
}

static PyObject *store_expire(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmStoreObject *s = (CmStoreObject *)self;
    int64_t now = 0;
    advance_wheel(s, &now);
    flush_dead(s);
    Py_RETURN_NONE;
}

static size_t store_memory_bytes(CmStoreObject *s)
{
    return sizeof(*s) + (size_t)(s->index_mask + 1) * sizeof(CmIndexEntry) +
           (size_t)s->nslots * 2 * sizeof(PyObject *) + cm_policy_memory(s->policy) +
           cm_wheel_memory(s->wheel) + s->dead_cap * sizeof(PyObject *) +
           (s->aged != NULL ? (size_t)s->nslots * sizeof(CmStoreAge) : 0);
}

static PyObject *store_memory(PyObject *self, PyObject *Py_UNUSED(x))
{
    return PyLong_FromSize_t(store_memory_bytes((CmStoreObject *)self));
}

static Py_ssize_t store_len(PyObject *self) { return ((CmStoreObject *)self)->len; }

static PyObject *store_get_policy(PyObject *self, void *Py_UNUSED(c))
{
    return PyUnicode_FromString(((CmStoreObject *)self)->kind == CM_POLICY_LRU ? "lru" : "tlfu");
}

static PyObject *store_get_capacity(PyObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLong(((CmStoreObject *)self)->capacity);
}

static int store_traverse(PyObject *self, visitproc visit, void *arg)
{
    CmStoreObject *s = (CmStoreObject *)self;
    Py_VISIT(Py_TYPE(self));
    for (uint32_t slot = 0; slot < s->hwm; slot++) {
        if (s->keys[slot] != NULL)
            Py_VISIT(s->values[slot]);
    }
    return 0;
}

static int store_tp_clear(PyObject *self)
{
    CmStoreObject *s = (CmStoreObject *)self;
    if (s->policy != NULL && s->wheel != NULL)
        store_clear_all(s);
    flush_dead(s);
    return 0;
}

static void store_dealloc(PyObject *self)
{
    CmStoreObject *s = (CmStoreObject *)self;
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (s->weakreflist != NULL)
        PyObject_ClearWeakRefs(self);
    store_tp_clear(self);
    cm_policy_free(s->policy);
    cm_wheel_free(s->wheel);
    PyMem_Free(s->index);
    PyMem_Free(s->keys);
    PyMem_Free(s->values);
    PyMem_Free(s->aged);
    PyMem_Free(s->dead);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef store_methods[] = {
    {"get", (PyCFunction)(void (*)(void))store_get, METH_FASTCALL,
     "get(key, default=None): the value, or default on a miss or when expired"},
    {"set", (PyCFunction)(void (*)(void))store_set, METH_FASTCALL,
     "set(key, value, ttl=None): ttl as timedelta or seconds; may evict"},
    {"remove", store_remove, METH_O, "remove(key) -> bool"},
    {"clear", store_clear_method, METH_NOARGS, "drop every entry"},
    {"expire", store_expire, METH_NOARGS, "advance the timer wheel now"},
    {"memory", store_memory, METH_NOARGS, "bytes of C memory held by the store"},
    {NULL, NULL},
};

static PyGetSetDef store_getset[] = {
    {"policy", store_get_policy, NULL, "eviction policy name", NULL},
    {"capacity", store_get_capacity, NULL, "maximum number of entries", NULL},
    {NULL},
};

static PyMemberDef store_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(CmStoreObject, weakreflist), READONLY},
    {"evictions", T_ULONGLONG, offsetof(CmStoreObject, evictions), READONLY,
     "entries evicted by the policy since the store was made"},
    {NULL},
};

static PyType_Slot store_slots[] = {
    {Py_tp_new, store_new},
    {Py_tp_methods, store_methods},
    {Py_tp_getset, store_getset},
    {Py_tp_members, store_members},
    {Py_sq_length, store_len},
    {Py_sq_contains, store_contains},
    {Py_tp_traverse, store_traverse},
    {Py_tp_clear, store_tp_clear},
    {Py_tp_dealloc, store_dealloc},
    {Py_tp_doc, "LocalStore(policy, size): bounded in-process store ('lru' or 'tlfu')."},
    {0, NULL},
};

static PyType_Spec store_spec = {
    .name = "cacheme._core.LocalStore",
    .basicsize = sizeof(CmStoreObject),
    .flags =
        Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = store_slots,
};

int cm_store_init(PyObject *mod, CmState *st)
{
    st->LocalStoreType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &store_spec, NULL);
    if (st->LocalStoreType == NULL)
        return -1;
    return PyModule_AddType(mod, st->LocalStoreType);
}
