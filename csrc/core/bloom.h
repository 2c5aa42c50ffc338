/* Bloom filter on 64-bit hashes: the BloomFilter type and the W-TinyLFU
 * doorkeeper. See bloom.c. */
#ifndef CM_BLOOM_H
#define CM_BLOOM_H

#include <stddef.h>
#include <stdint.h>

typedef struct cm_bloom {
    uint64_t *bits;
    uint64_t nbits;    /* multiple of 64 */
    uint32_t k;        /* probes per item */
    uint64_t capacity; /* the filter clears itself after this many puts; UINT64_MAX: never */
    uint64_t count;    /* puts since the last clear */
} cm_bloom;

/* 0 ok, -1 OOM or a size that cannot be allocated. The caller validated the
 * arguments: capacity > 0 and 0 < fp_rate < 1. */
int cm_bloom_init(cm_bloom *b, uint64_t capacity, double fp_rate);
void cm_bloom_destroy(cm_bloom *b);
/* Insert hash (a raw hash: the filter mixes it). Every put is counted; a put
 * that finds count == capacity first clears the filter, so the filter always
 * holds the last 1..capacity puts and never more than capacity. */
void cm_bloom_put(cm_bloom *b, uint64_t hash);
int cm_bloom_contains(const cm_bloom *b, uint64_t hash);
void cm_bloom_clear(cm_bloom *b);
size_t cm_bloom_memory(const cm_bloom *b);

/* The doorkeeper of W-TinyLFU (sketch.c): a blocked bloom filter on hashes
 * the caller already mixed. An item sets CM_DOORKEEPER_K bits of one 64-bit
 * word, so a test-and-set is one load and one store. It never clears itself:
 * its owner clears it when the sketch ages. */
typedef struct cm_doorkeeper {
    uint64_t *bits;
    uint32_t mask; /* number of words - 1; the number is a power of two */
} cm_doorkeeper;

/* nbits is rounded up to a power of two, at least 64. 0 ok, -1 OOM. */
int cm_doorkeeper_init(cm_doorkeeper *d, uint64_t nbits);
void cm_doorkeeper_destroy(cm_doorkeeper *d);
void cm_doorkeeper_clear(cm_doorkeeper *d);
size_t cm_doorkeeper_memory(const cm_doorkeeper *d);

/* The word of mixed hash x and, in *m, its bits. A multiply re-spreads x, so
 * the doorkeeper's choice is unrelated to the sketch's, which reads x itself:
 * the word from product bits 32.., the three bits from bits 14..31. */
static inline uint64_t *cm_doorkeeper_word(const cm_doorkeeper *d, uint64_t x, uint64_t *m)
{
    uint64_t y = x * UINT64_C(0xd6e8feb86659fd93);

    *m = (UINT64_C(1) << ((y >> 14) & 63)) | (UINT64_C(1) << ((y >> 20) & 63)) |
         (UINT64_C(1) << ((y >> 26) & 63));
    return d->bits + ((uint32_t)(y >> 32) & d->mask);
}

/* Add x; nonzero if it was (probably) there already. */
static inline int cm_doorkeeper_put(cm_doorkeeper *d, uint64_t x)
{
    uint64_t m, *w = cm_doorkeeper_word(d, x, &m);
    uint64_t old = *w;

    *w = old | m;
    return (old & m) == m;
}

static inline int cm_doorkeeper_contains(const cm_doorkeeper *d, uint64_t x)
{
    uint64_t m, *w = cm_doorkeeper_word(d, x, &m);

    return (*w & m) == m;
}

#endif /* CM_BLOOM_H */
