/* SipHash-1-3 (Aumasson & Bernstein, "SipHash: a fast short-input PRF",
 * 2012), the variant CPython uses for str hashes since 3.11.
 *
 * Why our own: the full key {prefix}:{key}:{version} is assembled from its
 * three parts in a stack buffer and hashed here, and the result is exactly
 * hash(full_key) when fed CPython's secret, so a local hit never allocates
 * the key. One pass over a contiguous buffer with the state in locals (the
 * keys are short: the finalization rounds are most of the cost). Pure C, no
 * Python.h. */
#ifndef CM_SIPHASH_H
#define CM_SIPHASH_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define CM_SIP_INLINE static inline __attribute__((always_inline))
#else
#define CM_SIP_INLINE static inline
#endif

#define CM_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define CM_SIPROUND(v0, v1, v2, v3)                                                                \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v2 += v3;                                                                                  \
        v1 = CM_ROTL(v1, 13) ^ v0;                                                                 \
        v3 = CM_ROTL(v3, 16) ^ v2;                                                                 \
        v0 = CM_ROTL(v0, 32);                                                                      \
        v2 += v1;                                                                                  \
        v0 += v3;                                                                                  \
        v1 = CM_ROTL(v1, 17) ^ v2;                                                                 \
        v3 = CM_ROTL(v3, 21) ^ v0;                                                                 \
        v2 = CM_ROTL(v2, 32);                                                                      \
    } while (0)

/* x read as little-endian: a no-op on little-endian machines. CPython's
 * _le64toh, which pysiphash() also applies to the two keys. */
static inline uint64_t cm_le64(uint64_t x)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    x = __builtin_bswap64(x);
#endif
    return x;
}

static inline uint64_t cm_load_le64(const unsigned char *p)
{
    uint64_t m;
    memcpy(&m, p, 8);
    return cm_le64(m);
}

/* The state after no input. */
static inline void cm_siphash13_init(uint64_t v[4], uint64_t k0, uint64_t k1)
{
    v[0] = k0 ^ 0x736f6d6570736575ULL;
    v[1] = k1 ^ 0x646f72616e646f6dULL;
    v[2] = k0 ^ 0x6c7967656e657261ULL;
    v[3] = k1 ^ 0x7465646279746573ULL;
}

/* Absorb nblocks whole 8-byte blocks into v. */
static inline void cm_siphash13_blocks(uint64_t v[4], const unsigned char *p, size_t nblocks)
{
    uint64_t v0 = v[0], v1 = v[1], v2 = v[2], v3 = v[3];
    for (; nblocks > 0; nblocks--, p += 8) {
        uint64_t m = cm_load_le64(p);
        v3 ^= m;
        CM_SIPROUND(v0, v1, v2, v3);
        v0 ^= m;
    }
    v[0] = v0, v[1] = v1, v[2] = v2, v[3] = v3;
}

/* Finish a message of n bytes in all whose first `done` bytes (a multiple of
 * 8) are already in v: p points at byte `done`. Reading before p is allowed
 * when done > 0 (the last word is loaded whole and shifted when it can). */
CM_SIP_INLINE uint64_t cm_siphash13_finish(const uint64_t v[4], const unsigned char *p, size_t done,
                                           size_t n)
{
    uint64_t v0 = v[0], v1 = v[1], v2 = v[2], v3 = v[3];
    uint64_t b = (uint64_t)n << 56, m;
    size_t left = n - done;

    for (; left >= 8; left -= 8, p += 8) {
        m = cm_load_le64(p);
        v3 ^= m;
        CM_SIPROUND(v0, v1, v2, v3);
        v0 ^= m;
    }
    m = 0;
    if (left > 0 && n >= 8) { /* the last 8 bytes, shifted past the ones done */
        m = cm_load_le64(p + left - 8) >> (64 - 8 * left);
    } else {
        for (size_t i = 0; i < left; i++)
            m |= (uint64_t)p[i] << (8 * i);
    }
    b |= m;
    v3 ^= b;
    CM_SIPROUND(v0, v1, v2, v3);
    v0 ^= b;
    v2 ^= 0xff;
    CM_SIPROUND(v0, v1, v2, v3);
    CM_SIPROUND(v0, v1, v2, v3);
    CM_SIPROUND(v0, v1, v2, v3);
    return (v0 ^ v1) ^ (v2 ^ v3);
}

static inline uint64_t cm_siphash13(uint64_t k0, uint64_t k1, const void *data, size_t n)
{
    uint64_t v[4];
    cm_siphash13_init(v, k0, k1);
    return cm_siphash13_finish(v, (const unsigned char *)data, 0, n);
}
#endif
