/* Count-min sketch with 4-bit counters and periodic aging.
 *
 * This is the frequency estimator of TinyLFU (Einziger, Friedman, Manes,
 * "TinyLFU: A Highly Efficient Cache Admission Policy", arXiv 1512.00727)
 * laid out as in Caffeine's FrequencySketch (Ben Manes): a table of
 * nextPow2(capacity) 64-bit words, each holding sixteen 4-bit counters. An
 * item selects one 64-byte block (8 words) from the low bits of its mixed
 * hash, and its four counters (one per "row") live in that block, so an
 * increment or estimate touches a single cache line. Row i uses word
 * block + 2*i + (one hash bit), and one of the 16 counters in it. The four
 * rows' positions are cut from one mixed hash with a shift and a mask each,
 * and the increment does not branch on saturation, so an increment is about 90
 * instructions, straight-line.
 *
 * Counters saturate at 15: TinyLFU only needs to compare frequencies, and
 * popularity beyond 15 within one sample is "hot" either way. After
 * sample_size counted events (10 * capacity by default) every counter is
 * halved (the paper's "reset"), which keeps the sketch tracking recent
 * popularity. The
 * size after a reset subtracts the truncation error of odd counters, as
 * Caffeine does.
 *
 * W-TinyLFU's sketch (cm_sketch_init_doorkeeper, cm_sketch_record) adds the
 * paper's doorkeeper: a blocked bloom filter (bloom.h) of 16 bits per entry
 * that absorbs each key's first occurrence in a sample, so one-hit wonders
 * never reach the counters; the estimate is the counters' minimum plus the
 * door bit, and aging clears the door. Its counters grow by conservative
 * update (Estan, Varghese, SIGCOMM 2002): only the ones at the minimum, which
 * lowers the overestimate of keys sharing counters with hot ones. Its sample
 * is 24 events per entry, every recorded event counting (see policy.c for
 * the measurements behind both numbers). */
#include "core/sketch.h"

#include <stdlib.h>
#include <string.h>

#include "core/hash.h"

#define CM_SKETCH_SEED UINT64_C(0x9e3779b97f4a7c15)
#define CM_SKETCH_ONE_MASK UINT64_C(0x1111111111111111)
#define CM_SKETCH_RESET_MASK UINT64_C(0x7777777777777777)
#define CM_SKETCH_MAX_WORDS (UINT32_C(1) << 30)
#define CM_SKETCH_DOOR_SHRINK 0
#define CM_SKETCH_DOOR_BITS 16
#define CM_SKETCH_SAMPLE_PER_ENTRY 24

static inline int cm_popcount64(uint64_t x)
{
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_popcountll(x);
#else
    int n = 0;
    while (x) {
        x &= x - 1;
        n++;
    }
    return n;
#endif
}

static int cm_sketch_alloc(cm_sketch *s, uint32_t counters_for, uint64_t sample_size)
{
    uint32_t n = 8;

    memset(s, 0, sizeof(*s));
    while (n < counters_for && n < CM_SKETCH_MAX_WORDS)
        n <<= 1;
    s->table = calloc(n, sizeof(uint64_t));
    if (s->table == NULL)
        return -1;
    s->nwords = n;
    s->mask = (n >> 3) - 1;
    s->sample_size = sample_size;
    return 0;
}

int cm_sketch_init(cm_sketch *s, uint32_t capacity)
{
    return cm_sketch_alloc(s, capacity, capacity == 0 ? 10 : (uint64_t)capacity * 10);
}

int cm_sketch_init_doorkeeper(cm_sketch *s, uint32_t capacity)
{
    uint64_t sample_size = capacity == 0 ? 10 : (uint64_t)capacity * CM_SKETCH_SAMPLE_PER_ENTRY;

    if (cm_sketch_alloc(s, capacity >> CM_SKETCH_DOOR_SHRINK, sample_size) < 0)
        return -1;
    if (cm_doorkeeper_init(&s->door, (uint64_t)capacity * CM_SKETCH_DOOR_BITS) < 0) {
        cm_sketch_destroy(s);
        return -1;
    }
    return 0;
}

void cm_sketch_destroy(cm_sketch *s)
{
    free(s->table);
    cm_doorkeeper_destroy(&s->door);
    s->table = NULL;
    s->nwords = 0;
    s->mask = 0;
}

/* The 64-byte block of hash, and in h the 32 bits that pick its counters:
 * byte i of h serves row i, whose counter is in word 2i or 2i+1 of the block
 * (bit 0), and is counter bits 1..4 of that word. One mix of the caller's
 * hash feeds both. */
static inline uint64_t cm_sketch_spread(uint64_t hash) { return cm_mix64(hash ^ CM_SKETCH_SEED); }

static inline uint64_t *cm_sketch_block(const cm_sketch *s, uint64_t x, uint32_t *h)
{
    *h = (uint32_t)(x >> 32);
    return s->table + (((uint32_t)x & s->mask) << 3);
}

#define CM_SKETCH_WORD(block, h, i) ((block) + 2 * (i) + (((h) >> (8 * (i))) & 1))
#define CM_SKETCH_SHIFT(h, i) ((((h) >> (8 * (i) + 1)) & 15) << 2)

static inline uint32_t cm_sketch_count(const uint64_t *block, uint32_t h, int i)
{
    return (uint32_t)(*CM_SKETCH_WORD(block, h, i) >> CM_SKETCH_SHIFT(h, i)) & 15;
}

static inline int cm_sketch_min(const cm_sketch *s, uint64_t x)
{
    uint32_t h, a, b;
    const uint64_t *block = cm_sketch_block(s, x, &h);

    a = cm_sketch_count(block, h, 0);
    b = cm_sketch_count(block, h, 1);
    a = b < a ? b : a;
    b = cm_sketch_count(block, h, 2);
    a = b < a ? b : a;
    b = cm_sketch_count(block, h, 3);
    return (int)(b < a ? b : a);
}

int cm_sketch_frequency(const cm_sketch *s, uint64_t hash)
{
    return cm_sketch_min(s, cm_sketch_spread(hash));
}

int cm_sketch_estimate(const cm_sketch *s, uint64_t hash)
{
    uint64_t x = cm_sketch_spread(hash);

    return cm_sketch_min(s, x) + cm_doorkeeper_contains(&s->door, x);
}

void cm_sketch_age(cm_sketch *s)
{
    uint64_t odd = 0;

    for (uint32_t i = 0; i < s->nwords; i++) {
        odd += (uint64_t)cm_popcount64(s->table[i] & CM_SKETCH_ONE_MASK);
        s->table[i] = (s->table[i] >> 1) & CM_SKETCH_RESET_MASK;
    }
    /* Each item owns 4 counters, so odd/4 approximates the items whose
     * halving dropped half an increment. */
    odd >>= 2;
    s->size = s->size > odd ? (s->size - odd) >> 1 : 0;
    s->resets++;
    cm_doorkeeper_clear(&s->door);
}

void cm_sketch_tick(cm_sketch *s)
{
    if (++s->size >= s->sample_size)
        cm_sketch_age(s);
}

/* Add 1 to row i's counter unless it is saturated, without a branch;
 * returns 1 if it was added. */
static inline uint64_t cm_sketch_add(uint64_t *block, uint32_t h, int i)
{
    uint64_t *w = CM_SKETCH_WORD(block, h, i);
    uint32_t shift = CM_SKETCH_SHIFT(h, i);
    uint64_t v = *w;
    uint64_t room = ((v >> shift) & 15) != 15;

    *w = v + (room << shift);
    return room;
}

static inline void cm_sketch_add4(cm_sketch *s, uint64_t x)
{
    uint32_t h;
    uint64_t *block = cm_sketch_block(s, x, &h);
    uint64_t added = cm_sketch_add(block, h, 0);

    added |= cm_sketch_add(block, h, 1);
    added |= cm_sketch_add(block, h, 2);
    added |= cm_sketch_add(block, h, 3);
    /* A fully saturated item adds no information, so it does not advance
     * the sample either (as in Caffeine). */
    s->size += added;
    if (s->size >= s->sample_size)
        cm_sketch_age(s);
}

void cm_sketch_increment(cm_sketch *s, uint64_t hash) { cm_sketch_add4(s, cm_sketch_spread(hash)); }

/* Conservative update (Estan, Varghese, "New Directions in Traffic
 * Measurement and Accounting", SIGCOMM 2002): only the counters at the
 * item's minimum grow, the others already overestimate it. */
static inline int cm_sketch_add_min(cm_sketch *s, uint64_t x)
{
    uint32_t h;
    uint64_t *block = cm_sketch_block(s, x, &h);
    /* The four counters' bit offsets at once, one per byte (CM_SKETCH_SHIFT). */
    uint32_t sh = ((h >> 1) & UINT32_C(0x0f0f0f0f)) << 2;
    uint64_t *w0 = CM_SKETCH_WORD(block, h, 0), *w1 = CM_SKETCH_WORD(block, h, 1);
    uint64_t *w2 = CM_SKETCH_WORD(block, h, 2), *w3 = CM_SKETCH_WORD(block, h, 3);
    uint32_t s0 = sh & 0xff, s1 = (sh >> 8) & 0xff, s2 = (sh >> 16) & 0xff, s3 = sh >> 24;
    uint32_t c0 = (uint32_t)(*w0 >> s0) & 15, c1 = (uint32_t)(*w1 >> s1) & 15;
    uint32_t c2 = (uint32_t)(*w2 >> s2) & 15, c3 = (uint32_t)(*w3 >> s3) & 15;
    uint32_t m = c0 < c1 ? c0 : c1, m2 = c2 < c3 ? c2 : c3;

    m = m < m2 ? m : m2;
    if (m == 15)
        return 1;
    *w0 += (uint64_t)(c0 == m) << s0;
    *w1 += (uint64_t)(c1 == m) << s1;
    *w2 += (uint64_t)(c2 == m) << s2;
    *w3 += (uint64_t)(c3 == m) << s3;
    if (++s->size >= s->sample_size)
        cm_sketch_age(s);
    return 0;
}

int cm_sketch_record_mixed(cm_sketch *s, uint64_t x)
{
    if (cm_doorkeeper_put(&s->door, x))
        return cm_sketch_add_min(s, x);
    cm_sketch_tick(s);
    return 0;
}

int cm_sketch_record(cm_sketch *s, uint64_t hash)
{
    return cm_sketch_record_mixed(s, cm_sketch_spread(hash));
}

uint64_t cm_sketch_prefetch(const cm_sketch *s, uint64_t hash)
{
    uint64_t x = cm_sketch_spread(hash);
#if defined(__GNUC__) || defined(__clang__)
    uint64_t m;
    uint32_t h;

    __builtin_prefetch(cm_doorkeeper_word(&s->door, x, &m), 1);
    __builtin_prefetch(cm_sketch_block(s, x, &h), 1);
#else
    (void)s;
#endif
    return x;
}

size_t cm_sketch_memory(const cm_sketch *s)
{
    return (size_t)s->nwords * sizeof(uint64_t) + cm_doorkeeper_memory(&s->door);
}
