/* 64-bit hash finalizer shared by the sketch, the bloom filter and the tables.
 *
 * Python's str hash is already well mixed, but int hashes are the integer
 * itself (hash(5) == 5), so sequential keys would land in sequential sketch
 * blocks and bloom bits. Every consumer of a caller's hash runs it through
 * cm_mix64 first. This is the splitmix64 finalizer (Steele, Lea, Flood,
 * "Fast splittable pseudorandom number generators", OOPSLA 2014), a
 * bijection with full avalanche, like murmur3's fmix64. */
#ifndef CM_HASH_H
#define CM_HASH_H

#include <stdint.h>

static inline uint64_t cm_mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= UINT64_C(0xbf58476d1ce4e5b9);
    x ^= x >> 27;
    x *= UINT64_C(0x94d049bb133111eb);
    x ^= x >> 31;
    return x;
}

#endif /* CM_HASH_H */
