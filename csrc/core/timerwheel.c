/* Hierarchical timer wheel for TTL expiry, advanced on access.
 *
 * The idea is Varghese and Lauck's hierarchical timing wheels ("Hashed and
 * Hierarchical Timing Wheels", SOSP 1987) as Caffeine's TimerWheel (Ben
 * Manes) applies it to cache expiry: O(1) schedule, reschedule and cancel,
 * and expiry work proportional to what expires rather than to what is
 * scheduled, with no thread: the store calls cm_wheel_advance on access.
 *
 * Layout: 5 levels of 64 buckets. A level-0 bucket spans one tick of 2^24 ns
 * (~16.8 ms) and each level's tick is 64 times the previous one, so the levels
 * reach 1.07 s, 68.7 s, 73.3 min, 3.26 days and 209 days ahead. A timer goes to
 * the lowest level whose 64 buckets cover its remaining duration, in the bucket
 * of its expiry tick; timers beyond the last level wait in an overflow bucket.
 * When a level's tick moves on, the buckets it passed over (and the one it
 * lands in) are emptied: due timers fire and the rest are rescheduled, which
 * cascades them to lower levels; the overflow bucket is re-examined each time
 * the last level ticks (every 3.26 days of clock).
 *
 * Caffeine fires at tick granularity. Here a timer never fires late: the
 * wheel keeps a lower bound of the expiry times in the current level-0 bucket
 * and rescans that bucket when an advance within the same tick reaches it.
 * So an advance is O(1) when nothing is due, which is what the hot path sees.
 *
 * Per slot: prev, next (uint32 ids) and the int64 expiry, 16 bytes. Bucket
 * heads are sentinel nodes named by ids at the top of the uint32 range, so
 * one unlink works for slots and heads alike. next == CM_WHEEL_NIL marks an
 * unscheduled slot.
 *
 * The per-slot array is allocated lazily, by the first cm_wheel_schedule:
 * until then cm_wheel_reserve only records the wanted size, so a store that
 * never uses a TTL pays nothing per entry for its wheel. Slots beyond the
 * allocated array are unscheduled by definition, which is what every query
 * (expire_at, cancel, is_scheduled) answers for them. */
#include "core/timerwheel.h"

#include <stdlib.h>
#include <string.h>

#define CM_WHEEL_NIL UINT32_MAX
#define CM_WHEEL_LEVELS 5
#define CM_WHEEL_BUCKETS 64
#define CM_WHEEL_TICK_SHIFT 24 /* level-0 tick: 2^24 ns */
#define CM_WHEEL_LEVEL_SHIFT 6 /* log2(CM_WHEEL_BUCKETS) */
#define CM_WHEEL_OVERFLOW (CM_WHEEL_LEVELS * CM_WHEEL_BUCKETS)
#define CM_WHEEL_PENDING (CM_WHEEL_OVERFLOW + 1) /* the bucket being emptied */
#define CM_WHEEL_NHEADS (CM_WHEEL_PENDING + 1)
#define CM_WHEEL_SENTINEL(b) (CM_WHEEL_MAX_SLOTS + (uint32_t)(b))

typedef struct {
    uint32_t prev;
    uint32_t next;
    int64_t expire;
} cm_wheel_node;

typedef struct {
    uint32_t prev;
    uint32_t next;
} cm_wheel_head;

/* The memory budget: 16 bytes of wheel state per slot. */
typedef char cm_wheel_node_is_16_bytes[sizeof(cm_wheel_node) == 16 ? 1 : -1];

struct cm_wheel {
    cm_wheel_node *nodes; /* NULL until the first schedule */
    uint32_t nslots;      /* allocated */
    uint32_t wanted;      /* reserved: allocated on the first schedule */
    uint32_t len;         /* scheduled */
    int64_t nanos;        /* the clock: the last advance */
    int64_t cur_min;      /* <= every expiry in the current level-0 bucket */
    cm_wheel_head heads[CM_WHEEL_NHEADS];
};

static inline int cm_wheel_shift(int level)
{
    return CM_WHEEL_TICK_SHIFT + CM_WHEEL_LEVEL_SHIFT * level;
}

static inline uint32_t cm_wheel_cur_bucket(const cm_wheel *w)
{
    return (uint32_t)(((uint64_t)w->nanos >> CM_WHEEL_TICK_SHIFT) & (CM_WHEEL_BUCKETS - 1));
}

static inline uint32_t *cm_wheel_prevp(cm_wheel *w, uint32_t id)
{
    return id >= CM_WHEEL_MAX_SLOTS ? &w->heads[id - CM_WHEEL_MAX_SLOTS].prev : &w->nodes[id].prev;
}

static inline uint32_t *cm_wheel_nextp(cm_wheel *w, uint32_t id)
{
    return id >= CM_WHEEL_MAX_SLOTS ? &w->heads[id - CM_WHEEL_MAX_SLOTS].next : &w->nodes[id].next;
}

static inline void cm_wheel_unlink(cm_wheel *w, uint32_t slot)
{
    cm_wheel_node *n = &w->nodes[slot];

    *cm_wheel_nextp(w, n->prev) = n->next;
    *cm_wheel_prevp(w, n->next) = n->prev;
    n->prev = CM_WHEEL_NIL;
    n->next = CM_WHEEL_NIL;
}

static inline void cm_wheel_link_tail(cm_wheel *w, uint32_t bucket, uint32_t slot)
{
    uint32_t sent = CM_WHEEL_SENTINEL(bucket);
    cm_wheel_head *h = &w->heads[bucket];
    cm_wheel_node *n = &w->nodes[slot];

    n->prev = h->prev;
    n->next = sent;
    *cm_wheel_nextp(w, h->prev) = slot;
    h->prev = slot;
}

static void cm_wheel_reset_head(cm_wheel *w, uint32_t bucket)
{
    w->heads[bucket].prev = CM_WHEEL_SENTINEL(bucket);
    w->heads[bucket].next = CM_WHEEL_SENTINEL(bucket);
}

/* The bucket for expire relative to the current clock. */
static uint32_t cm_wheel_find_bucket(cm_wheel *w, int64_t expire)
{
    uint64_t d;
    uint32_t bucket;

    if (expire <= w->nanos) {
        bucket = cm_wheel_cur_bucket(w);
        goto current;
    }
    d = (uint64_t)expire - (uint64_t)w->nanos; /* no signed overflow */
    for (int i = 0; i < CM_WHEEL_LEVELS; i++) {
        int shift = cm_wheel_shift(i);
        if (d < (UINT64_C(1) << (shift + CM_WHEEL_LEVEL_SHIFT))) {
            bucket = (uint32_t)(((uint64_t)expire >> shift) & (CM_WHEEL_BUCKETS - 1));
            if (i == 0 && bucket == cm_wheel_cur_bucket(w))
                goto current;
            return (uint32_t)i * CM_WHEEL_BUCKETS + bucket;
        }
    }
    return CM_WHEEL_OVERFLOW;

current:
    if (expire < w->cur_min)
        w->cur_min = expire;
    return bucket;
}

cm_wheel *cm_wheel_new(int64_t now_ns)
{
    cm_wheel *w = calloc(1, sizeof(*w));

    if (w == NULL)
        return NULL;
    for (uint32_t b = 0; b < CM_WHEEL_NHEADS; b++)
        cm_wheel_reset_head(w, b);
    w->nanos = now_ns < 0 ? 0 : now_ns;
    w->cur_min = INT64_MAX;
    return w;
}

void cm_wheel_free(cm_wheel *w)
{
    if (w == NULL)
        return;
    free(w->nodes);
    free(w);
}

/* Grow the array to exactly n slots (the store grows by doubling up to its
 * capacity + 1; rounding up here would waste up to half of it). */
static int cm_wheel_grow(cm_wheel *w, uint32_t n)
{
    cm_wheel_node *nodes;

    if (n <= w->nslots)
        return 0;
#if SIZE_MAX <= UINT32_MAX
    if (n > SIZE_MAX / sizeof(cm_wheel_node))
        return -1;
#endif
    nodes = realloc(w->nodes, (size_t)n * sizeof(cm_wheel_node));
    if (nodes == NULL)
        return -1;
    for (uint32_t i = w->nslots; i < n; i++) {
        nodes[i].prev = CM_WHEEL_NIL;
        nodes[i].next = CM_WHEEL_NIL;
        nodes[i].expire = 0;
    }
    w->nodes = nodes;
    w->nslots = n;
    return 0;
}

int cm_wheel_reserve(cm_wheel *w, uint32_t nslots)
{
    if (nslots > CM_WHEEL_MAX_SLOTS)
        return -1;
    if (nslots > w->wanted)
        w->wanted = nslots;
    return w->nodes == NULL ? 0 : cm_wheel_grow(w, w->wanted);
}

int cm_wheel_schedule_checked(cm_wheel *w, uint32_t slot, int64_t expire_ns)
{
    cm_wheel_node *n;

    if (slot >= w->nslots) {
        uint32_t want = w->wanted > slot ? w->wanted : slot + 1;
        if (slot >= CM_WHEEL_MAX_SLOTS || cm_wheel_grow(w, want) < 0)
            return -1;
    }
    n = &w->nodes[slot];

    if (n->next != CM_WHEEL_NIL)
        cm_wheel_unlink(w, slot);
    else
        w->len++;
    n->expire = expire_ns;
    cm_wheel_link_tail(w, cm_wheel_find_bucket(w, expire_ns), slot);
    return 0;
}

void cm_wheel_schedule(cm_wheel *w, uint32_t slot, int64_t expire_ns)
{
    /* The store reserved the slot, so only the first, lazy allocation can
     * fail; an unscheduled slot then just never expires early. */
    (void)cm_wheel_schedule_checked(w, slot, expire_ns);
}

void cm_wheel_cancel(cm_wheel *w, uint32_t slot)
{
    if (slot >= w->nslots || w->nodes[slot].next == CM_WHEEL_NIL)
        return;
    cm_wheel_unlink(w, slot);
    w->nodes[slot].expire = 0;
    w->len--;
}

int64_t cm_wheel_expire_at(const cm_wheel *w, uint32_t slot)
{
    if (slot >= w->nslots || w->nodes[slot].next == CM_WHEEL_NIL)
        return 0;
    return w->nodes[slot].expire;
}

int cm_wheel_is_scheduled(const cm_wheel *w, uint32_t slot)
{
    return slot < w->nslots && w->nodes[slot].next != CM_WHEEL_NIL;
}

/* Empty one bucket: fire what is due, reschedule the rest. The bucket is first
 * moved whole onto the pending list, so timers rescheduled into the same
 * bucket are not seen twice, and fn may cancel or reschedule any pending slot
 * (it is a proper list, unlinked like any other). */
static void cm_wheel_expire_bucket(cm_wheel *w, uint32_t bucket, int64_t now, cm_expire_fn fn,
                                   void *ud)
{
    cm_wheel_head *h = &w->heads[bucket];
    cm_wheel_head *pend = &w->heads[CM_WHEEL_PENDING];
    uint32_t pend_id = CM_WHEEL_SENTINEL(CM_WHEEL_PENDING);

    if (h->next == CM_WHEEL_SENTINEL(bucket))
        return;
    pend->next = h->next;
    pend->prev = h->prev;
    w->nodes[pend->next].prev = pend_id;
    w->nodes[pend->prev].next = pend_id;
    cm_wheel_reset_head(w, bucket);

    while (pend->next != pend_id) {
        uint32_t slot = pend->next;
        int64_t expire = w->nodes[slot].expire;

        cm_wheel_unlink(w, slot);
        if (expire <= now) {
            w->nodes[slot].expire = 0;
            w->len--;
            fn(ud, slot);
        } else {
            cm_wheel_link_tail(w, cm_wheel_find_bucket(w, expire), slot);
        }
    }
}

void cm_wheel_advance(cm_wheel *w, int64_t now_ns, cm_expire_fn fn, void *ud)
{
    int64_t prev = w->nanos;

    if (now_ns > prev) {
        w->nanos = now_ns;
        if (((uint64_t)now_ns >> CM_WHEEL_TICK_SHIFT) != ((uint64_t)prev >> CM_WHEEL_TICK_SHIFT)) {
            /* Every bucket the clock passed over or lands in is emptied below,
             * so the bound restarts from what gets rescheduled into it. */
            w->cur_min = INT64_MAX;
            for (int i = 0; i < CM_WHEEL_LEVELS; i++) {
                int shift = cm_wheel_shift(i);
                uint64_t pt = (uint64_t)prev >> shift;
                uint64_t ct = (uint64_t)now_ns >> shift;
                uint64_t steps;

                if (ct == pt)
                    break;
                steps = ct - pt + 1;
                if (steps > CM_WHEEL_BUCKETS)
                    steps = CM_WHEEL_BUCKETS;
                for (uint64_t j = 0; j < steps; j++) {
                    uint32_t b = (uint32_t)((pt + j) & (CM_WHEEL_BUCKETS - 1));
                    cm_wheel_expire_bucket(w, (uint32_t)i * CM_WHEEL_BUCKETS + b, now_ns, fn, ud);
                }
                if (i == CM_WHEEL_LEVELS - 1)
                    cm_wheel_expire_bucket(w, CM_WHEEL_OVERFLOW, now_ns, fn, ud);
            }
        }
    }
    /* Timers due within the current tick (short TTLs, or scheduled at or
     * before the clock). */
    if (w->cur_min <= now_ns) {
        w->cur_min = INT64_MAX;
        cm_wheel_expire_bucket(w, cm_wheel_cur_bucket(w), now_ns, fn, ud);
    }
}

uint32_t cm_wheel_len(const cm_wheel *w) { return w->len; }

size_t cm_wheel_memory(const cm_wheel *w)
{
    return sizeof(*w) + (size_t)w->nslots * sizeof(cm_wheel_node);
}

int cm_wheel_check(const cm_wheel *w)
{
    cm_wheel *mw = (cm_wheel *)w; /* the link helpers are not const; nothing is written */
    uint64_t seen = 0, scheduled = 0;

    if (w->heads[CM_WHEEL_PENDING].next != CM_WHEEL_SENTINEL(CM_WHEEL_PENDING))
        return -1;
    for (uint32_t b = 0; b < CM_WHEEL_NHEADS; b++) {
        uint32_t sent = CM_WHEEL_SENTINEL(b);
        uint32_t prev = sent;
        uint32_t id = w->heads[b].next;

        while (id != sent) {
            if (id >= w->nslots || *cm_wheel_prevp(mw, id) != prev)
                return -1;
            if (++seen > w->nslots)
                return -1; /* a cycle */
            if (b < CM_WHEEL_OVERFLOW) {
                int level = (int)(b / CM_WHEEL_BUCKETS);
                uint32_t idx = b % CM_WHEEL_BUCKETS;
                int64_t e = w->nodes[id].expire;
                /* Level-0 current bucket also holds overdue timers. */
                if (!(level == 0 && idx == cm_wheel_cur_bucket(w))) {
                    if ((((uint64_t)e >> cm_wheel_shift(level)) & (CM_WHEEL_BUCKETS - 1)) != idx)
                        return -1;
                }
                if (level == 0 && idx == cm_wheel_cur_bucket(w) && e < w->cur_min)
                    return -1;
            }
            prev = id;
            id = *cm_wheel_nextp(mw, id);
        }
        if (w->heads[b].prev != prev)
            return -1;
    }
    for (uint32_t i = 0; i < w->nslots; i++)
        scheduled += w->nodes[i].next != CM_WHEEL_NIL;
    if (seen != w->len || scheduled != w->len)
        return -1;
    return 0;
}
