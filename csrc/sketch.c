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
 * sample_size = 10 * capacity counted events every counter is halved (the
 * paper's "reset"), which keeps the sketch tracking recent popularity. The
 * size after a reset subtracts the truncation error of odd counters, as
 * Caffeine does. */
#include "sketch.h"

#include <stdlib.h>

#include "hash.h"

#define CM_SKETCH_SEED UINT64_C(0x9e3779b97f4a7c15)
#define CM_SKETCH_ONE_MASK UINT64_C(0x1111111111111111)
#define CM_SKETCH_RESET_MASK UINT64_C(0x7777777777777777)
#define CM_SKETCH_MAX_WORDS (UINT32_C(1) << 30)

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

int cm_sketch_init(cm_sketch *s, uint32_t capacity)
{
    uint32_t n = 8;

    while (n < capacity && n < CM_SKETCH_MAX_WORDS)
        n <<= 1;
    s->table = calloc(n, sizeof(uint64_t));
    if (s->table == NULL)
        return -1;
    s->nwords = n;
    s->mask = (n >> 3) - 1;
    s->size = 0;
    s->sample_size = capacity == 0 ? 10 : (uint64_t)capacity * 10;
    s->resets = 0;
    return 0;
}

void cm_sketch_destroy(cm_sketch *s)
{
    free(s->table);
    s->table = NULL;
    s->nwords = 0;
    s->mask = 0;
}

/* The 64-byte block of hash, and in h the 32 bits that pick its counters:
 * byte i of h serves row i, whose counter is in word 2i or 2i+1 of the block
 * (bit 0), and is counter bits 1..4 of that word. One mix of the caller's
 * hash feeds both. */
static inline uint64_t *cm_sketch_block(const cm_sketch *s, uint64_t hash, uint32_t *h)
{
    uint64_t x = cm_mix64(hash ^ CM_SKETCH_SEED);

    *h = (uint32_t)(x >> 32);
    return s->table + (((uint32_t)x & s->mask) << 3);
}

#define CM_SKETCH_WORD(block, h, i) ((block) + 2 * (i) + (((h) >> (8 * (i))) & 1))
#define CM_SKETCH_SHIFT(h, i) ((((h) >> (8 * (i) + 1)) & 15) << 2)

static inline uint32_t cm_sketch_count(const uint64_t *block, uint32_t h, int i)
{
    return (uint32_t)(*CM_SKETCH_WORD(block, h, i) >> CM_SKETCH_SHIFT(h, i)) & 15;
}

int cm_sketch_frequency(const cm_sketch *s, uint64_t hash)
{
    uint32_t h, a, b;
    const uint64_t *block = cm_sketch_block(s, hash, &h);

    a = cm_sketch_count(block, h, 0);
    b = cm_sketch_count(block, h, 1);
    a = b < a ? b : a;
    b = cm_sketch_count(block, h, 2);
    a = b < a ? b : a;
    b = cm_sketch_count(block, h, 3);
    return (int)(b < a ? b : a);
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

void cm_sketch_increment(cm_sketch *s, uint64_t hash)
{
    uint32_t h;
    uint64_t *block = cm_sketch_block(s, hash, &h);
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

size_t cm_sketch_memory(const cm_sketch *s) { return (size_t)s->nwords * sizeof(uint64_t); }
