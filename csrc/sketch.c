/* Count-min sketch with 4-bit counters and periodic aging.
 *
 * This is the frequency estimator of TinyLFU (Einziger, Friedman, Manes,
 * "TinyLFU: A Highly Efficient Cache Admission Policy", arXiv 1512.00727)
 * laid out as in Caffeine's FrequencySketch (Ben Manes): a table of
 * nextPow2(capacity) 64-bit words, each holding sixteen 4-bit counters. An
 * item selects one 64-byte block (8 words) from the low bits of its mixed
 * hash, and its four counters (one per "row") live in that block, so an
 * increment or estimate touches a single cache line. Row i uses word
 * block + 2*i + (one hash bit), and one of the 16 counters in it.
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

/* word[i] and counter index[i] (0..15) of row i for hash. */
static inline void cm_sketch_locate(const cm_sketch *s, uint64_t hash, uint32_t word[4],
                                    uint32_t index[4])
{
    uint64_t h = cm_mix64(hash ^ CM_SKETCH_SEED);
    uint32_t block = ((uint32_t)h & s->mask) << 3;
    uint32_t counter_hash = (uint32_t)(h >> 32);

    for (int i = 0; i < 4; i++) {
        uint32_t c = counter_hash >> (i << 3);
        index[i] = (c >> 1) & 15;
        word[i] = block + (c & 1) + ((uint32_t)i << 1);
    }
}

int cm_sketch_frequency(const cm_sketch *s, uint64_t hash)
{
    uint32_t word[4], index[4];
    int freq = 15;

    cm_sketch_locate(s, hash, word, index);
    for (int i = 0; i < 4; i++) {
        int c = (int)((s->table[word[i]] >> (index[i] << 2)) & 15);
        if (c < freq)
            freq = c;
    }
    return freq;
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

void cm_sketch_increment(cm_sketch *s, uint64_t hash)
{
    uint32_t word[4], index[4];
    int added = 0;

    cm_sketch_locate(s, hash, word, index);
    for (int i = 0; i < 4; i++) {
        uint32_t shift = index[i] << 2;
        uint64_t mask = UINT64_C(15) << shift;
        if ((s->table[word[i]] & mask) != mask) {
            s->table[word[i]] += UINT64_C(1) << shift;
            added = 1;
        }
    }
    /* A fully saturated item adds no information, so it does not advance
     * the sample either (as in Caffeine). */
    if (added)
        cm_sketch_tick(s);
}

size_t cm_sketch_memory(const cm_sketch *s) { return (size_t)s->nwords * sizeof(uint64_t); }
