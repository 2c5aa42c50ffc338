/* Bloom filter (Bloom, "Space/Time Trade-offs in Hash Coding with Allowable
 * Errors", CACM 1970) over 64-bit hashes.
 *
 * Sizing is the textbook optimum for n = capacity items at false-positive
 * rate p: m = -n ln p / (ln 2)^2 bits, rounded up to whole 64-bit words, and
 * k = (m / n) ln 2 probes. The k probe positions come from one 64-bit hash by
 * double hashing, g_i = h1 + i * h2 (Kirsch, Mitzenmacher, "Less Hashing,
 * Same Performance", ESA 2006), with h1 and h2 two splitmix rounds of the
 * caller's hash, so weak hashes (Python ints) still spread over the table.
 *
 * The 0.3.0 README promises that the filter "is cleared automatically when
 * requests count == size": put counts every call, and the put that finds the
 * count at capacity clears the bits before inserting. So after exactly
 * `capacity` puts they are all still present, and the measured false-positive
 * rate at that point is the configured one. */
#include "core/bloom.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/hash.h"

#define CM_BLOOM_SEED UINT64_C(0x2545f4914f6cdd1d)
#define CM_BLOOM_MAX_K 64

/* Map a uniform 64-bit x onto [0, n) without a division where possible
 * (Lemire's multiply-shift reduction). */
static inline uint64_t cm_bloom_reduce(uint64_t x, uint64_t n)
{
#if defined(__SIZEOF_INT128__)
    __extension__ typedef unsigned __int128 cm_u128;
    return (uint64_t)(((cm_u128)x * n) >> 64);
#else
    return x % n;
#endif
}

int cm_bloom_init(cm_bloom *b, uint64_t capacity, double fp_rate)
{
    const double ln2 = 0.69314718055994530942;
    double m = ceil(-(double)capacity * log(fp_rate) / (ln2 * ln2));
    double k;
    uint64_t nwords;

    memset(b, 0, sizeof(*b));
    if (!(m >= 1.0))
        m = 1.0;
    /* Refuse sizes whose byte count would not fit a size_t. */
    if (m > (double)(SIZE_MAX / 2))
        return -1;
    nwords = ((uint64_t)m + 63) / 64;
    b->bits = calloc((size_t)nwords, sizeof(uint64_t));
    if (b->bits == NULL)
        return -1;
    b->nbits = nwords * 64;
    k = round((double)b->nbits / (double)capacity * ln2);
    if (k < 1.0)
        k = 1.0;
    if (k > CM_BLOOM_MAX_K)
        k = CM_BLOOM_MAX_K;
    b->k = (uint32_t)k;
    b->capacity = capacity;
    b->count = 0;
    return 0;
}

void cm_bloom_destroy(cm_bloom *b)
{
    free(b->bits);
    b->bits = NULL;
    b->nbits = 0;
    b->count = 0;
}

void cm_bloom_clear(cm_bloom *b)
{
    memset(b->bits, 0, (size_t)(b->nbits / 8));
    b->count = 0;
}

void cm_bloom_put(cm_bloom *b, uint64_t hash)
{
    uint64_t h1 = cm_mix64(hash ^ CM_BLOOM_SEED);
    uint64_t h2 = cm_mix64(h1) | 1;

    if (b->count >= b->capacity)
        cm_bloom_clear(b);
    b->count++;
    for (uint32_t i = 0; i < b->k; i++) {
        uint64_t bit = cm_bloom_reduce(h1 + i * h2, b->nbits);
        b->bits[bit >> 6] |= UINT64_C(1) << (bit & 63);
    }
}

int cm_bloom_contains(const cm_bloom *b, uint64_t hash)
{
    uint64_t h1 = cm_mix64(hash ^ CM_BLOOM_SEED);
    uint64_t h2 = cm_mix64(h1) | 1;

    for (uint32_t i = 0; i < b->k; i++) {
        uint64_t bit = cm_bloom_reduce(h1 + i * h2, b->nbits);
        if (!(b->bits[bit >> 6] & (UINT64_C(1) << (bit & 63))))
            return 0;
    }
    return 1;
}

size_t cm_bloom_memory(const cm_bloom *b) { return (size_t)(b->nbits / 8); }

int cm_doorkeeper_init(cm_doorkeeper *d, uint64_t nbits)
{
    uint64_t n = 1;

    while (n * 64 < nbits && n < (UINT64_C(1) << 31))
        n <<= 1;
    d->bits = calloc((size_t)n, sizeof(uint64_t));
    if (d->bits == NULL) {
        d->mask = 0;
        return -1;
    }
    d->mask = (uint32_t)(n - 1);
    return 0;
}

void cm_doorkeeper_destroy(cm_doorkeeper *d)
{
    free(d->bits);
    d->bits = NULL;
    d->mask = 0;
}

void cm_doorkeeper_clear(cm_doorkeeper *d)
{
    if (d->bits != NULL)
        memset(d->bits, 0, cm_doorkeeper_memory(d));
}

size_t cm_doorkeeper_memory(const cm_doorkeeper *d)
{
    return d->bits == NULL ? 0 : ((size_t)d->mask + 1) * sizeof(uint64_t);
}
