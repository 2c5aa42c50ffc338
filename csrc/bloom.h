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

#endif /* CM_BLOOM_H */
