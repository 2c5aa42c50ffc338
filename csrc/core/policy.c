/* Eviction policies over slot indices: LRU and W-TinyLFU.
 *
 * W-TinyLFU is from Einziger, Friedman, Manes, "TinyLFU: A Highly Efficient
 * Cache Admission Policy" (ACM ToS 2017, arXiv 1512.00727), following the way
 * Caffeine (Ben Manes) runs it:
 *
 *  - A small admission window (an LRU, initially 1% of capacity) takes every
 *    new entry, so bursts of recent keys get a chance to build frequency.
 *  - The main space is a segmented LRU: probation, and protected (80% of main)
 *    for entries hit again while in main.
 *  - When the window overflows, its LRU entry (the candidate) competes with the
 *    probation LRU entry (the victim); the candidate is admitted only if its
 *    estimated frequency is higher. Frequencies come from a 4-bit count-min
 *    sketch behind a doorkeeper (sketch.c, the paper's section 3.4.2): a
 *    key's first occurrence in a sample only sets its doorkeeper bits, later
 *    ones count, so the one-hit wonders of a scan do not crowd the counters;
 *    the estimate is counters + door bit. Every hit and miss is recorded.
 *    The doorkeeper ages with the sketch (cleared when the counters halve),
 *    and the sample is 24 requests per entry rather than Caffeine's 10:
 *    clearing the door drops one occurrence of every key, so the longer
 *    sample keeps the same memory of popularity. Measured (bench_policy
 *    trace) against the doorkeeper-less sketch at 10 per entry: zipf and
 *    zipf+scan +0.1..0.4 points, loops +1..2 points. Halving the sketch, as
 *    the paper allows, cost 0.3..0.5 points on zipf at 10000 entries, so
 *    the sketch keeps nextPow2(capacity) words. Counters grow by
 *    conservative update (only those at the key's minimum), which is worth
 *    about 0.1 point on zipf.
 *  - To resist hash flooding (an attacker raising a victim's frequency through
 *    collisions so nothing new is ever admitted), a warm candidate that loses
 *    is still admitted once in a while (CM_ADMIT_HASHDOS_*, below).
 *  - The window size adapts by hill climbing (Caffeine's climb()): every
 *    sample of requests the hit rate is compared with the previous sample's;
 *    the window moves a step in the same direction if it improved, else
 *    reverses. The step starts at 3% of capacity (Caffeine: 6.25%; the
 *    smaller step measured 0.1..0.5 points better on zipf and loop traces,
 *    and the window still moves from 1% to 45% on a recency-biased trace
 *    in test_policy_climber), decays by 0.98 per sample, and restarts when
 *    the hit rate changes by 5% or more (the workload changed).
 *
 * The policy knows slots (uint32 indices owned by the store) and 64-bit hashes,
 * never keys: it asks the store for a resident slot's hash through hash_of when
 * it must compare frequencies, so it stores no hash per slot. A slot costs 8
 * bytes: prev, and next with the 2-bit queue id in its top bits (so ids are 30
 * bits: CM_POLICY_MAX_SLOTS). The links array starts with the three list
 * sentinels (ids 1..3) and slot s is id s + 4, so linking and unlinking never
 * branch on "is this a head".
 *
 * A hit is the hot path of the whole library (a local cache hit), so it does
 * the least it can: one doorkeeper word, one sketch block (one cache line
 * each), one list move, and two counter updates; the climber runs only when
 * a sample completes or a window resize is still in progress. A hot key (its
 * counters saturated) skips the sketch until it ages, since recording it
 * would change nothing; a large sketch's records are deferred to the next
 * operation and prefetched meanwhile (cm_record).
 *
 * Invariant: cm_policy_len() <= capacity after every insert (each insert adds
 * one entry and evicts at least one when over capacity; the window resizing
 * only moves entries between queues). */
#include "core/policy.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "core/hash.h"
#include "core/sketch.h"

enum { CM_Q_NONE = 0, CM_Q_WINDOW = 1, CM_Q_PROBATION = 2, CM_Q_PROTECTED = 3 };

#define CM_Q_SHIFT 30
#define CM_ID_MASK ((UINT32_C(1) << CM_Q_SHIFT) - 1)
/* links[q] is the sentinel of queue q; slot s is id s + CM_ID_BASE. */
#define CM_ID_BASE 4
#define CM_SENTINEL(q) ((uint32_t)(q))

#define CM_PERCENT_MAIN 0.99
#define CM_PERCENT_MAIN_PROTECTED 0.80
#define CM_HILL_CLIMBER_RESTART_THRESHOLD 0.05
#define CM_HILL_CLIMBER_STEP_PERCENT 0.03
#define CM_HILL_CLIMBER_STEP_DECAY_RATE 0.98
/* Hash flooding: a losing candidate of estimated frequency >= THRESHOLD is
 * admitted when the admission PRNG's low bits are all zero, one time in
 * (MASK + 1). Caffeine uses 6 and 1/128. On a loop over 1.2x the capacity
 * every key is equally warm, and each random admission evicts the probation
 * LRU entry, the one the loop needs next: measured (tests/c/bench_policy
 * trace, loop traces at capacity 1000 and 10000) 71.5% / 71.9% at 1/128,
 * 81.1% / 81.0% with no random admission, 80.2% / 79.5% at 1/4096; zipf and
 * zipf+scan do not move. A hot key held out by flooding still gets in after
 * some thousands of its own misses. */
#define CM_ADMIT_HASHDOS_THRESHOLD 6
#define CM_ADMIT_HASHDOS_MASK 4095
/* The admission PRNG starts from a constant (mixed with the capacity), not
 * from an address, so a trace replayed on a new policy gives the same hit
 * ratio on every run. */
#define CM_POLICY_SEED UINT64_C(0x6a09e667f3bcc909)
/* Entries moved between queues per call; a larger window change continues on
 * the next calls, so no single access pays for a whole resize. */
#define CM_QUEUE_TRANSFER_THRESHOLD 1000

typedef struct {
    uint32_t prev;
    uint32_t next_q; /* next id | queue id << CM_Q_SHIFT */
} cm_plink;

/* The memory budget: 8 bytes of policy state per slot. */
typedef char cm_plink_is_8_bytes[sizeof(cm_plink) == 8 ? 1 : -1];

struct cm_policy {
    /* What a hit reads and writes comes first, the sketch's aging count
     * (sketch.resets) right after it: two cache lines instead of four, which
     * the caller's own code evicts between hits. */
    int kind;
    uint32_t protected_max;
    cm_plink *links; /* CM_ID_BASE sentinels (links[0] unused), then nslots slots */
    uint32_t qlen[4];
    /* One bit per slot: its key's counters are all saturated, so its records
     * change nothing until the sketch ages (valid while hot_resets equals
     * sketch.resets; cleared for a slot when a key is inserted there). A hot
     * key's hit then skips the sketch: the same counts, fewer instructions. */
    uint64_t *hot;
    uint64_t hot_resets;
    /* Hill climber. sampling is 1 once the policy is half full (0 before):
     * requests add it to the counters, so the hot path does not branch. */
    uint32_t sampling;
    int defer_records; /* 0 or 1: see record_pending */
    uint64_t hits_in_sample;
    uint64_t requests_in_sample;
    uint64_t sample_size;
    int64_t adjustment; /* > 0 grow the window, < 0 shrink it; left to move */

    /* W-TinyLFU only, from here to rng */
    cm_sketch sketch;
    /* The sketch record of the last access or miss, not applied yet (see
     * cm_record); record_pending is 0 or 1. */
    int record_pending;
    uint32_t pending_slot; /* whose access it is, or CM_NIL (a miss) */
    uint64_t pending_mixed;
    uint32_t window_max;
    double prev_hit_rate;
    double step;
    uint64_t rng; /* xorshift64* state */

    uint32_t capacity;
    uint32_t nslots;
    cm_hash_fn hash_of;
    void *ud; // borrowed
};

/* ---- links ---------------------------------------------------------------- */

static inline uint32_t cm_next(const cm_plink *l) { return l->next_q & CM_ID_MASK; }

static inline int cm_queue(const cm_plink *l) { return (int)(l->next_q >> CM_Q_SHIFT); }

static inline void cm_set_next(cm_plink *l, uint32_t id)
{
    l->next_q = (l->next_q & ~CM_ID_MASK) | id;
}

static inline void cm_q_push_tail(cm_policy *p, int q, uint32_t id)
{
    cm_plink *s = &p->links[CM_SENTINEL(q)];
    cm_plink *l = &p->links[id];

    l->prev = s->prev;
    l->next_q = ((uint32_t)q << CM_Q_SHIFT) | CM_SENTINEL(q);
    cm_set_next(&p->links[s->prev], id);
    s->prev = id;
    p->qlen[q]++;
}

static inline void cm_q_unlink(cm_policy *p, uint32_t id)
{
    cm_plink *l = &p->links[id];

    cm_set_next(&p->links[l->prev], cm_next(l));
    p->links[cm_next(l)].prev = l->prev;
    p->qlen[cm_queue(l)]--;
    l->prev = 0;
    l->next_q = 0; /* CM_Q_NONE */
}

static inline uint32_t cm_q_head(const cm_policy *p, int q)
{
    uint32_t h = cm_next(&p->links[CM_SENTINEL(q)]);
    return h < CM_ID_BASE ? CM_NIL : h;
}

static inline uint32_t cm_q_prev(cm_policy *p, uint32_t id)
{
    uint32_t prev = p->links[id].prev;
    return prev < CM_ID_BASE ? CM_NIL : prev;
}

static inline void cm_q_move(cm_policy *p, uint32_t id, int q)
{
    cm_q_unlink(p, id);
    cm_q_push_tail(p, q, id);
}

/* ---- frequency ------------------------------------------------------------ */

static uint64_t cm_rand(cm_policy *p)
{
    uint64_t x = p->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    p->rng = x;
    return x * UINT64_C(0x2545f4914f6cdd1d);
}

/* A request's sketch record touches two cache lines (a doorkeeper word and
 * a counter block) that a large cache's sketch rarely has in the CPU caches:
 * a record done at once waits for memory on every request. So when the
 * sketch is larger than CM_DEFER_MIN_BYTES (about what stays in a core's L2),
 * the record of each access or miss is deferred to the policy's next
 * operation and its lines are prefetched meanwhile: by then they have
 * arrived (a miss spends its load in between, a hit the caller's own code).
 * Every operation that reads or writes the sketch applies the pending record
 * first, so the sketch sees the same updates in the same order, only later.
 * A smaller sketch is recorded at once: there the prefetch is pure cost. */
#define CM_DEFER_MIN_BYTES ((size_t)1 << 20)

static inline void cm_hot_sync(cm_policy *p)
{
    if (p->hot_resets != p->sketch.resets) {
        memset(p->hot, 0, (((size_t)p->nslots + 63) >> 6) * sizeof(uint64_t));
        p->hot_resets = p->sketch.resets;
    }
}

static inline int cm_hot(cm_policy *p, uint32_t slot)
{
    cm_hot_sync(p);
    return (int)((p->hot[slot >> 6] >> (slot & 63)) & 1);
}

static inline void cm_hot_set(cm_policy *p, uint32_t slot, int saturated)
{
    if (saturated && slot != CM_NIL) {
        cm_hot_sync(p);
        p->hot[slot >> 6] |= UINT64_C(1) << (slot & 63);
    }
}

static inline void cm_flush_record(cm_policy *p)
{
    if (p->record_pending) {
        p->record_pending = 0;
        cm_hot_set(p, p->pending_slot, cm_sketch_record_mixed(&p->sketch, p->pending_mixed));
    }
}

/* Record an access of slot (CM_NIL: a miss). */
static inline void cm_record(cm_policy *p, uint32_t slot, uint64_t hash)
{
    if (!p->defer_records) {
        cm_hot_set(p, slot, cm_sketch_record(&p->sketch, hash));
        return;
    }
    cm_flush_record(p);
    p->pending_mixed = cm_sketch_prefetch(&p->sketch, hash);
    p->pending_slot = slot;
    p->record_pending = 1;
}

int cm_policy_frequency(cm_policy *p, uint64_t hash)
{
    if (p->kind != CM_POLICY_TLFU)
        return 0;
    cm_flush_record(p);
    return cm_sketch_estimate(&p->sketch, hash);
}

static int cm_admit(cm_policy *p, uint64_t candidate_hash, uint64_t victim_hash)
{
    cm_flush_record(p);
    int victim_freq = cm_sketch_estimate(&p->sketch, victim_hash);
    int candidate_freq = cm_sketch_estimate(&p->sketch, candidate_hash);

    if (candidate_freq > victim_freq)
        return 1;
    if (candidate_freq >= CM_ADMIT_HASHDOS_THRESHOLD)
        return (cm_rand(p) & CM_ADMIT_HASHDOS_MASK) == 0;
    return 0;
}

/* ---- window / main sizing ------------------------------------------------- */

static void cm_demote_protected(cm_policy *p)
{
    for (int i = 0; i < CM_QUEUE_TRANSFER_THRESHOLD; i++) {
        uint32_t id;
        if (p->qlen[CM_Q_PROTECTED] <= p->protected_max)
            break;
        id = cm_q_head(p, CM_Q_PROTECTED);
        cm_q_move(p, id, CM_Q_PROBATION);
    }
}

static void cm_increase_window(cm_policy *p)
{
    int64_t quota;
    int stalled = 0;

    if (p->protected_max == 0) {
        p->adjustment = 0;
        return;
    }
    quota = p->adjustment < (int64_t)p->protected_max ? p->adjustment : p->protected_max;
    p->protected_max -= (uint32_t)quota;
    p->window_max += (uint32_t)quota;
    cm_demote_protected(p);
    for (int i = 0; i < CM_QUEUE_TRANSFER_THRESHOLD && quota > 0; i++) {
        uint32_t id = cm_q_head(p, CM_Q_PROBATION);
        if (id == CM_NIL)
            id = cm_q_head(p, CM_Q_PROTECTED);
        if (id == CM_NIL) {
            stalled = 1;
            break;
        }
        quota--;
        cm_q_move(p, id, CM_Q_WINDOW);
    }
    /* Return the unused quota. The next request retries it if only the
     * transfer limit stopped us; an empty main drops it, so requests do not
     * keep calling the climber. */
    p->protected_max += (uint32_t)quota;
    p->window_max -= (uint32_t)quota;
    p->adjustment = stalled ? 0 : quota;
}

static void cm_decrease_window(cm_policy *p)
{
    int64_t quota;
    int stalled = 0;

    if (p->window_max <= 1) {
        p->adjustment = 0;
        return;
    }
    quota = -p->adjustment;
    if (quota > (int64_t)p->window_max - 1)
        quota = (int64_t)p->window_max - 1;
    p->protected_max += (uint32_t)quota;
    p->window_max -= (uint32_t)quota;
    for (int i = 0; i < CM_QUEUE_TRANSFER_THRESHOLD && quota > 0; i++) {
        uint32_t id = cm_q_head(p, CM_Q_WINDOW);
        if (id == CM_NIL) {
            stalled = 1;
            break;
        }
        quota--;
        cm_q_move(p, id, CM_Q_PROBATION);
    }
    p->protected_max -= (uint32_t)quota;
    p->window_max += (uint32_t)quota;
    p->adjustment = stalled ? 0 : -quota;
}

/* A sample is complete: pick the next window change. */
static void cm_determine_adjustment(cm_policy *p)
{
    double hit_rate, change, amount, restart;

    hit_rate = (double)p->hits_in_sample / (double)p->requests_in_sample;
    change = hit_rate - p->prev_hit_rate;
    amount = change >= 0 ? p->step : -p->step;
    restart = CM_HILL_CLIMBER_STEP_PERCENT * p->capacity;
    if (change >= CM_HILL_CLIMBER_RESTART_THRESHOLD || -change >= CM_HILL_CLIMBER_RESTART_THRESHOLD)
        p->step = amount >= 0 ? restart : -restart;
    else
        p->step = CM_HILL_CLIMBER_STEP_DECAY_RATE * amount;
    p->prev_hit_rate = hit_rate;
    p->adjustment = (int64_t)amount;
    p->hits_in_sample = 0;
    p->requests_in_sample = 0;
}

/* Called when a sample completes or a resize is unfinished (the hot paths
 * test both with one branch). */
static void cm_climb(cm_policy *p)
{
    if (p->requests_in_sample >= p->sample_size)
        cm_determine_adjustment(p);
    cm_demote_protected(p);
    if (p->adjustment > 0)
        cm_increase_window(p);
    else if (p->adjustment < 0)
        cm_decrease_window(p);
}

static inline void cm_count_request(cm_policy *p, uint32_t hit)
{
    p->hits_in_sample += hit & p->sampling;
    p->requests_in_sample += p->sampling;
    if (p->requests_in_sample >= p->sample_size || p->adjustment != 0)
        cm_climb(p);
}

/* Hill climbing samples only once the cache is half full, as Caffeine (whose
 * sketch starts then): a cold cache's hit rate says nothing about the window.
 * Updated where the length changes, so requests need not compute it. */
static inline void cm_update_sampling(cm_policy *p)
{
    p->sampling = (uint64_t)cm_policy_len(p) * 2 >= p->capacity;
}

/* ---- public --------------------------------------------------------------- */

cm_policy *cm_policy_new(int kind, uint32_t capacity, cm_hash_fn hash_of, void *ud)
{
    cm_policy *p;

    if (kind != CM_POLICY_LRU && kind != CM_POLICY_TLFU)
        return NULL;
    /* on a cache line of its own: the hit's fields then take two lines */
    p = aligned_alloc(64, (sizeof(*p) + 63) & ~(size_t)63);
    if (p == NULL)
        return NULL;
    memset(p, 0, sizeof(*p));
    if (capacity > CM_POLICY_MAX_SLOTS)
        capacity = CM_POLICY_MAX_SLOTS;
    p->kind = kind;
    p->capacity = capacity;
    p->hash_of = hash_of;
    p->ud = ud;
    p->links = calloc(CM_ID_BASE, sizeof(cm_plink));
    if (p->links == NULL)
        goto fail;
    for (int q = 1; q < 4; q++) {
        p->links[CM_SENTINEL(q)].prev = CM_SENTINEL(q);
        p->links[CM_SENTINEL(q)].next_q = ((uint32_t)q << CM_Q_SHIFT) | CM_SENTINEL(q);
    }
    if (kind == CM_POLICY_LRU) {
        p->window_max = capacity;
        return p;
    }
    p->window_max = capacity - (uint32_t)(CM_PERCENT_MAIN * capacity);
    p->protected_max = (uint32_t)(CM_PERCENT_MAIN_PROTECTED * (capacity - p->window_max));
    p->sample_size = capacity == 0 ? 10 : (uint64_t)capacity * 10;
    p->step = -CM_HILL_CLIMBER_STEP_PERCENT * capacity;
    cm_policy_seed(p, CM_POLICY_SEED ^ capacity);
    if (cm_sketch_init_doorkeeper(&p->sketch, capacity) < 0)
        goto fail;
    p->defer_records = cm_sketch_memory(&p->sketch) > CM_DEFER_MIN_BYTES;
    p->pending_slot = CM_NIL;
    return p;

fail:
    cm_policy_free(p);
    return NULL;
}

void cm_policy_free(cm_policy *p)
{
    if (p == NULL)
        return;
    cm_sketch_destroy(&p->sketch);
    free(p->hot);
    free(p->links);
    free(p);
}

void cm_policy_seed(cm_policy *p, uint64_t seed) { p->rng = cm_mix64(seed) | 1; }

/* Exactly nslots: the store grows by doubling up to capacity + 1, so rounding
 * up here would leave up to half the array unused at capacity. */
int cm_policy_reserve(cm_policy *p, uint32_t nslots)
{
    cm_plink *links;

    if (nslots <= p->nslots)
        return 0;
    if (nslots > CM_POLICY_MAX_SLOTS)
        return -1;
    links = realloc(p->links, ((size_t)nslots + CM_ID_BASE) * sizeof(cm_plink));
    if (links == NULL)
        return -1;
    memset(links + CM_ID_BASE + p->nslots, 0,
           (size_t)(nslots - p->nslots) * sizeof(cm_plink)); /* CM_Q_NONE */
    p->links = links;
    if (p->kind == CM_POLICY_TLFU) {
        size_t had = ((size_t)p->nslots + 63) >> 6, words = ((size_t)nslots + 63) >> 6;
        uint64_t *hot = realloc(p->hot, words * sizeof(uint64_t));
        if (hot == NULL)
            return -1;
        memset(hot + had, 0, (words - had) * sizeof(uint64_t));
        p->hot = hot;
    }
    p->nslots = nslots;
    return 0;
}

void cm_policy_access(cm_policy *p, uint32_t slot, uint64_t hash)
{
    uint32_t id = slot + CM_ID_BASE, q;

    assert(slot < p->nslots && cm_queue(&p->links[id]) != CM_Q_NONE);
    q = p->links[id].next_q >> CM_Q_SHIFT;
    if (p->kind == CM_POLICY_LRU) {
        if (p->links[CM_SENTINEL(CM_Q_WINDOW)].prev != id)
            cm_q_move(p, id, CM_Q_WINDOW);
        return;
    }
    if (!cm_hot(p, slot))
        cm_record(p, slot, hash);
    if (q == CM_Q_PROBATION) {
        cm_q_move(p, id, CM_Q_PROTECTED);
        if (p->qlen[CM_Q_PROTECTED] > p->protected_max)
            cm_q_move(p, cm_q_head(p, CM_Q_PROTECTED), CM_Q_PROBATION);
    } else if (p->links[CM_SENTINEL(q)].prev != id) {
        cm_q_move(p, id, (int)q);
    }
    cm_count_request(p, 1);
}

void cm_policy_record_miss(cm_policy *p, uint64_t hash)
{
    if (p->kind == CM_POLICY_LRU)
        return;
    cm_record(p, CM_NIL, hash);
    cm_count_request(p, 0);
}

/* Evict until len <= capacity. `candidates` entries were just moved from the
 * window to the probation tail. The newest candidate duels the probation LRU
 * entry; with no candidate the window LRU entry does; with probation empty the
 * victim comes from protected, then from the window (Caffeine's
 * evictFromMain, for one entry per duel). */
static uint32_t cm_evict(cm_policy *p, uint32_t candidates, uint32_t inserted, uint64_t hash,
                         uint32_t *victims)
{
    uint32_t n = 0;
    uint32_t next_candidate = candidates > 0 ? p->links[CM_SENTINEL(CM_Q_PROBATION)].prev : CM_NIL;

    while (cm_policy_len(p) > p->capacity && n < CM_POLICY_MAX_VICTIMS) {
        uint32_t candidate, victim, evict;

        if (candidates > 0) {
            candidate = next_candidate;
            next_candidate = candidate == CM_NIL ? CM_NIL : cm_q_prev(p, candidate);
            candidates--;
        } else {
            candidate = cm_q_head(p, CM_Q_WINDOW);
        }
        victim = cm_q_head(p, CM_Q_PROBATION);
        if (victim == CM_NIL)
            victim = cm_q_head(p, CM_Q_PROTECTED);
        if (victim == CM_NIL)
            victim = cm_q_head(p, CM_Q_WINDOW);

        if (candidate == CM_NIL) {
            evict = victim;
        } else if (victim == candidate) {
            evict = candidate;
        } else {
            uint64_t ch = candidate == inserted ? hash : p->hash_of(p->ud, candidate - CM_ID_BASE);
            uint64_t vh = p->hash_of(p->ud, victim - CM_ID_BASE);
            evict = cm_admit(p, ch, vh) ? victim : candidate;
        }
        if (evict == next_candidate)
            next_candidate = cm_q_prev(p, evict);
        cm_q_unlink(p, evict);
        victims[n++] = evict - CM_ID_BASE;
    }
    return n;
}

uint32_t cm_policy_insert(cm_policy *p, uint32_t slot, uint64_t hash, uint32_t *victims)
{
    uint32_t id = slot + CM_ID_BASE, n = 0, candidates = 0;

    assert(slot < p->nslots && cm_queue(&p->links[id]) == CM_Q_NONE);
    if (p->kind == CM_POLICY_TLFU) {
        /* a new key in the slot: not hot, and a pending record is not its own */
        p->hot[slot >> 6] &= ~(UINT64_C(1) << (slot & 63));
        if (p->pending_slot == slot)
            p->pending_slot = CM_NIL;
    }
    cm_q_push_tail(p, CM_Q_WINDOW, id);
    if (p->kind == CM_POLICY_LRU) {
        while (cm_policy_len(p) > p->capacity) {
            uint32_t victim = cm_q_head(p, CM_Q_WINDOW);
            cm_q_unlink(p, victim);
            victims[n++] = victim - CM_ID_BASE;
        }
        return n;
    }
    while (p->qlen[CM_Q_WINDOW] > p->window_max) {
        cm_q_move(p, cm_q_head(p, CM_Q_WINDOW), CM_Q_PROBATION);
        candidates++;
    }
    n = cm_evict(p, candidates, id, hash, victims);
    cm_update_sampling(p);
    if (p->adjustment != 0)
        cm_climb(p);
    assert(cm_policy_len(p) <= p->capacity);
    return n;
}

void cm_policy_remove(cm_policy *p, uint32_t slot)
{
    if (slot >= p->nslots || cm_queue(&p->links[slot + CM_ID_BASE]) == CM_Q_NONE)
        return;
    cm_q_unlink(p, slot + CM_ID_BASE);
    if (p->kind == CM_POLICY_TLFU)
        cm_update_sampling(p);
}

uint32_t cm_policy_len(const cm_policy *p)
{
    return p->qlen[CM_Q_WINDOW] + p->qlen[CM_Q_PROBATION] + p->qlen[CM_Q_PROTECTED];
}

uint32_t cm_policy_capacity(const cm_policy *p) { return p->capacity; }

int cm_policy_contains(const cm_policy *p, uint32_t slot)
{
    return slot < p->nslots && cm_queue(&p->links[slot + CM_ID_BASE]) != CM_Q_NONE;
}

uint32_t cm_policy_window_max(const cm_policy *p) { return p->window_max; }

size_t cm_policy_memory(const cm_policy *p)
{
    size_t m = sizeof(*p) + ((size_t)p->nslots + CM_ID_BASE) * sizeof(cm_plink);

    if (p->kind == CM_POLICY_TLFU)
        m += cm_sketch_memory(&p->sketch) + (((size_t)p->nslots + 63) >> 6) * sizeof(uint64_t);
    return m;
}

int cm_policy_check(const cm_policy *p)
{
    uint64_t total = 0, resident = 0;
    uint32_t end = p->nslots + CM_ID_BASE;

    for (int q = 1; q < 4; q++) {
        uint32_t sent = CM_SENTINEL(q);
        uint32_t prev = sent, count = 0;
        uint32_t id = cm_next(&p->links[sent]);

        while (id != sent) {
            if (id < CM_ID_BASE || id >= end || p->links[id].prev != prev ||
                cm_queue(&p->links[id]) != q)
                return -1;
            if (++count > p->nslots)
                return -1; /* a cycle */
            prev = id;
            id = cm_next(&p->links[id]);
        }
        if (p->links[sent].prev != prev || count != p->qlen[q])
            return -1;
        total += count;
    }
    for (uint32_t i = CM_ID_BASE; i < end; i++)
        resident += cm_queue(&p->links[i]) != CM_Q_NONE;
    if (resident != total || total > p->capacity)
        return -1;
    if (p->kind == CM_POLICY_LRU && (p->qlen[CM_Q_PROBATION] || p->qlen[CM_Q_PROTECTED]))
        return -1;
    if (p->kind == CM_POLICY_TLFU && (uint64_t)p->window_max + p->protected_max > p->capacity)
        return -1;
    return 0;
}
