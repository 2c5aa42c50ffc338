/* Streaming SipHash-1-3 (Aumasson & Bernstein, "SipHash: a fast short-input
 * PRF", 2012), the variant CPython uses for str hashes since 3.11.
 *
 * Why streaming: the full key {prefix}:{key}:{version} can then be hashed
 * from its three parts without building the string, and the result is
 * exactly hash(full_key) when fed CPython's secret, so a local hit never
 * allocates the key. Pure C, no Python.h. */
#ifndef CM_SIPHASH_H
#define CM_SIPHASH_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    uint64_t v0, v1, v2, v3;
    uint64_t tail; /* pending bytes, little-endian */
    unsigned ntail;
    uint64_t total;
} cm_siphash;

#define CM_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define CM_SIPROUND(s)                                                                             \
    do {                                                                                           \
        (s)->v0 += (s)->v1;                                                                        \
        (s)->v2 += (s)->v3;                                                                        \
        (s)->v1 = CM_ROTL((s)->v1, 13) ^ (s)->v0;                                                  \
        (s)->v3 = CM_ROTL((s)->v3, 16) ^ (s)->v2;                                                  \
        (s)->v0 = CM_ROTL((s)->v0, 32);                                                            \
        (s)->v2 += (s)->v1;                                                                        \
        (s)->v0 += (s)->v3;                                                                        \
        (s)->v1 = CM_ROTL((s)->v1, 17) ^ (s)->v2;                                                  \
        (s)->v3 = CM_ROTL((s)->v3, 21) ^ (s)->v0;                                                  \
        (s)->v2 = CM_ROTL((s)->v2, 32);                                                            \
    } while (0)

static inline void
cm_siphash_init(cm_siphash *s, uint64_t k0, uint64_t k1)
{
    s->v0 = k0 ^ 0x736f6d6570736575ULL;
    s->v1 = k1 ^ 0x646f72616e646f6dULL;
    s->v2 = k0 ^ 0x6c7967656e657261ULL;
    s->v3 = k1 ^ 0x7465646279746573ULL;
    s->tail = 0;
    s->ntail = 0;
    s->total = 0;
}

static inline void
cm_siphash_block(cm_siphash *s, uint64_t m)
{
    s->v3 ^= m;
    CM_SIPROUND(s);
    s->v0 ^= m;
}

static inline uint64_t
cm_load_le64(const unsigned char *p)
{
    uint64_t m;
    memcpy(&m, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    m = __builtin_bswap64(m);
#endif
    return m;
}

static inline void
cm_siphash_update(cm_siphash *s, const void *data, size_t n)
{
    const unsigned char *p = (const unsigned char *)data;
    s->total += n;
    while (n > 0 && s->ntail != 0) {
        s->tail |= (uint64_t)*p++ << (8 * s->ntail);
        n--;
        if (++s->ntail == 8) {
            cm_siphash_block(s, s->tail);
            s->tail = 0;
            s->ntail = 0;
        }
    }
    for (; n >= 8; n -= 8, p += 8)
        cm_siphash_block(s, cm_load_le64(p));
    for (unsigned i = 0; i < n; i++)
        s->tail |= (uint64_t)p[i] << (8 * (s->ntail + i));
    s->ntail += (unsigned)n;
}

static inline uint64_t
cm_siphash_final(cm_siphash *s)
{
    uint64_t b = (s->total << 56) | s->tail;
    cm_siphash_block(s, b);
    s->v2 ^= 0xff;
    CM_SIPROUND(s);
    CM_SIPROUND(s);
    CM_SIPROUND(s);
    return (s->v0 ^ s->v1) ^ (s->v2 ^ s->v3);
}
#endif
