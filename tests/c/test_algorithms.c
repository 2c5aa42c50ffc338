/* Unit tests of the pure-C cache algorithms: sketch, bloom filter, timer
 * wheel and eviction policies. Plain C, no Python: run under valgrind and the
 * sanitizers (see the Makefile). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bloom.h"
#include "core/hash.h"
#include "core/policy.h"
#include "core/sketch.h"
#include "core/timerwheel.h"

static unsigned long tests_passed, checks_passed;

/* A failed check ends the run: the state after it is not worth testing. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            printf("%lu passed, 1 failed\n", tests_passed);                                        \
            exit(1);                                                                               \
        }                                                                                          \
        checks_passed++;                                                                           \
    } while (0)

#define RUN(test)                                                                                  \
    do {                                                                                           \
        test();                                                                                    \
        tests_passed++;                                                                            \
    } while (0)

#define MS INT64_C(1000000)
#define SEC (1000 * MS)
#define DAY (86400 * SEC)
#define YEAR (365 * DAY)

/* ---- deterministic randomness -------------------------------------------- */

typedef struct {
    uint64_t s;
} rng_t;

static uint64_t rng_next(rng_t *r)
{
    r->s += UINT64_C(0x9e3779b97f4a7c15);
    return cm_mix64(r->s);
}

static uint64_t rng_below(rng_t *r, uint64_t n) { return n ? rng_next(r) % n : 0; }

static double rng_unit(rng_t *r)
{
    return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Log-uniform in [lo, hi]: exercises every wheel level equally. */
static int64_t rng_log(rng_t *r, int64_t lo, int64_t hi)
{
    double v = exp(log((double)lo) + rng_unit(r) * (log((double)hi) - log((double)lo)));
    int64_t x = (int64_t)v;
    return x < lo ? lo : x > hi ? hi : x;
}

/* Zipf(s) over n ranks, by inverse CDF. */
typedef struct {
    double *cdf;
    uint32_t n;
} zipf_t;

static void zipf_init(zipf_t *z, uint32_t n, double s)
{
    double sum = 0;
    z->n = n;
    z->cdf = malloc(n * sizeof(double));
    CHECK(z->cdf != NULL);
    for (uint32_t i = 0; i < n; i++) {
        sum += 1.0 / pow((double)(i + 1), s);
        z->cdf[i] = sum;
    }
    for (uint32_t i = 0; i < n; i++)
        z->cdf[i] /= sum;
}

static uint64_t zipf_next(zipf_t *z, rng_t *r)
{
    double u = rng_unit(r);
    uint32_t lo = 0, hi = z->n - 1;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (z->cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* ---- sketch --------------------------------------------------------------- */

static void test_sketch_basic(void)
{
    cm_sketch s;

    CHECK(cm_sketch_init(&s, 1000) == 0);
    CHECK(s.nwords == 1024);
    CHECK(cm_sketch_memory(&s) == 1024 * sizeof(uint64_t));
    CHECK(s.sample_size == 10000);
    CHECK(cm_sketch_frequency(&s, 42) == 0);
    for (int i = 1; i <= 15; i++) {
        cm_sketch_increment(&s, 42);
        CHECK(cm_sketch_frequency(&s, 42) == i);
    }
    /* saturation */
    for (int i = 0; i < 10; i++)
        cm_sketch_increment(&s, 42);
    CHECK(cm_sketch_frequency(&s, 42) == 15);
    /* a saturated item does not advance the sample */
    CHECK(s.size == 15);
    CHECK(cm_sketch_frequency(&s, 43) == 0);
    cm_sketch_destroy(&s);

    /* tiny capacities still get one 64-byte block */
    CHECK(cm_sketch_init(&s, 0) == 0);
    CHECK(s.nwords == 8 && s.mask == 0 && s.sample_size == 10);
    cm_sketch_destroy(&s);
    CHECK(cm_sketch_init(&s, 3) == 0);
    CHECK(s.nwords == 8 && s.sample_size == 30);
    cm_sketch_destroy(&s);
}

static void test_sketch_never_underestimates(void)
{
    cm_sketch s;
    enum { N = 2000 };
    static int truth[N];
    rng_t r = {1};

    /* a sample large enough not to age during the test */
    CHECK(cm_sketch_init(&s, 4096) == 0);
    memset(truth, 0, sizeof(truth));
    for (int i = 0; i < 20000; i++) {
        uint64_t k = rng_below(&r, N);
        truth[k]++;
        cm_sketch_increment(&s, k); /* raw, sequential ints: the sketch mixes them */
    }
    CHECK(s.resets == 0);
    {
        int exact = 0;
        for (int k = 0; k < N; k++) {
            int f = cm_sketch_frequency(&s, (uint64_t)k);
            int t = truth[k] > 15 ? 15 : truth[k];
            CHECK(f >= t);
            exact += f == t;
        }
        /* count-min overestimates only through collisions: mostly exact */
        CHECK(exact > N * 8 / 10);
    }
    cm_sketch_destroy(&s);
}

static void test_sketch_aging(void)
{
    cm_sketch s;
    uint64_t k = 1000;

    CHECK(cm_sketch_init(&s, 64) == 0); /* sample size 640 */
    for (int i = 0; i < 10; i++)
        cm_sketch_increment(&s, 7);
    for (int i = 0; i < 3; i++)
        cm_sketch_increment(&s, 8);
    CHECK(cm_sketch_frequency(&s, 7) == 10);
    CHECK(cm_sketch_frequency(&s, 8) == 3);
    while (s.resets == 0)
        cm_sketch_increment(&s, k++);
    /* halved (8 could have gained a collision or two before the halving) */
    CHECK(cm_sketch_frequency(&s, 7) >= 5 && cm_sketch_frequency(&s, 7) <= 6);
    CHECK(cm_sketch_frequency(&s, 8) >= 1 && cm_sketch_frequency(&s, 8) <= 2);
    CHECK(s.size < s.sample_size / 2 + 1);
    /* ticks alone also age */
    {
        uint64_t before = s.resets;
        for (uint64_t i = 0; i < s.sample_size; i++)
            cm_sketch_tick(&s);
        CHECK(s.resets == before + 1);
    }
    /* no counter exceeds 7 after an aging, ever */
    for (int i = 0; i < 40; i++)
        cm_sketch_increment(&s, 9);
    cm_sketch_age(&s);
    CHECK(cm_sketch_frequency(&s, 9) == 7);
    cm_sketch_age(&s);
    cm_sketch_age(&s);
    cm_sketch_age(&s);
    CHECK(cm_sketch_frequency(&s, 9) == 0);
    cm_sketch_destroy(&s);
}

/* ---- bloom ---------------------------------------------------------------- */

static double bloom_fp_rate(uint64_t capacity, double p, int sequential)
{
    cm_bloom b;
    rng_t r = {99};
    uint64_t fp = 0, queries = 200000;

    CHECK(cm_bloom_init(&b, capacity, p) == 0);
    for (uint64_t i = 0; i < capacity; i++)
        cm_bloom_put(&b, sequential ? i : rng_next(&r));
    CHECK(b.count == capacity);
    /* no false negatives */
    r.s = 99;
    for (uint64_t i = 0; i < capacity; i++)
        CHECK(cm_bloom_contains(&b, sequential ? i : rng_next(&r)));
    for (uint64_t i = 0; i < queries; i++)
        fp += cm_bloom_contains(&b, sequential ? capacity + i : rng_next(&r));
    cm_bloom_destroy(&b);
    return (double)fp / (double)queries;
}

static double measured_bloom_fp;

/* The doorkeeper: test-and-set, clear, and a false-positive rate that stays
 * small while it holds one item per 16 bits. */
static void test_doorkeeper(void)
{
    cm_doorkeeper d;
    uint32_t fp = 0;

    CHECK(cm_doorkeeper_init(&d, 1) == 0);
    CHECK(d.mask == 0 && cm_doorkeeper_memory(&d) == 8);
    cm_doorkeeper_destroy(&d);
    CHECK(cm_doorkeeper_init(&d, 16 * 4096) == 0);
    CHECK(cm_doorkeeper_memory(&d) == 16 * 4096 / 8);
    for (uint64_t k = 0; k < 4096; k++) {
        uint64_t x = cm_mix64(k);
        CHECK(cm_doorkeeper_put(&d, x) == 0 || k > 0); /* only the first is sure */
        CHECK(cm_doorkeeper_put(&d, x) == 1);
        CHECK(cm_doorkeeper_contains(&d, x));
    }
    for (uint64_t k = 1u << 20; k < (1u << 20) + 100000; k++)
        fp += (uint32_t)cm_doorkeeper_contains(&d, cm_mix64(k));
    CHECK(fp < 100000 / 50); /* under 2% (blocked, k = 3: about 0.6%) */
    cm_doorkeeper_clear(&d);
    for (uint64_t k = 0; k < 4096; k++)
        CHECK(!cm_doorkeeper_contains(&d, cm_mix64(k)));
    cm_doorkeeper_destroy(&d);
    cm_doorkeeper_destroy(&d); /* idempotent */
}

/* TinyLFU's estimate through the doorkeeper: the first occurrence only sets
 * the door bit, later ones count; aging halves the counters and clears the
 * door. */
static void test_sketch_doorkeeper(void)
{
    cm_sketch s;
    uint64_t k = 1000;

    CHECK(cm_sketch_init_doorkeeper(&s, 1000) == 0);
    CHECK(s.nwords == 1024 && s.sample_size == 24000);
    CHECK(cm_sketch_memory(&s) == 1024 * 8 + 16384 / 8);
    CHECK(cm_sketch_estimate(&s, 42) == 0);
    cm_sketch_record(&s, 42);
    CHECK(cm_sketch_estimate(&s, 42) == 1);
    CHECK(cm_sketch_frequency(&s, 42) == 0); /* only in the doorkeeper */
    CHECK(s.size == 1);                      /* but it counts toward the sample */
    for (int i = 2; i <= 16; i++) {
        cm_sketch_record(&s, 42);
        CHECK(cm_sketch_estimate(&s, 42) == i);
    }
    cm_sketch_record(&s, 42);
    CHECK(cm_sketch_estimate(&s, 42) == 16); /* 15 + the door bit */
    for (int i = 0; i < 4; i++)
        cm_sketch_record(&s, 43);
    CHECK(cm_sketch_estimate(&s, 43) == 4);
    while (s.resets == 0)
        cm_sketch_record(&s, k++);          /* one-hit keys until the sketch ages */
    CHECK(cm_sketch_estimate(&s, 42) == 7); /* 15 / 2, door cleared */
    CHECK(cm_sketch_estimate(&s, 43) >= 1 && cm_sketch_estimate(&s, 43) <= 2); /* 3 / 2 */
    cm_sketch_record(&s, 43);
    CHECK(cm_sketch_frequency(&s, 43) == 1 || cm_sketch_frequency(&s, 43) == 2);
    cm_sketch_destroy(&s);
    CHECK(cm_sketch_init(&s, 1000) == 0); /* no doorkeeper: counters only */
    CHECK(cm_sketch_memory(&s) == 1024 * 8 && s.door.bits == NULL);
    cm_sketch_destroy(&s);
}

static void test_bloom_sizing(void)
{
    cm_bloom b;

    CHECK(cm_bloom_init(&b, 100000, 0.01) == 0);
    /* m = -n ln p / ln2^2 = 958506 bits, rounded up to 64: 958528; k = 7 */
    CHECK(b.nbits == 958528);
    CHECK(b.nbits % 64 == 0);
    CHECK(b.k == 7);
    CHECK(cm_bloom_memory(&b) == 958528 / 8);
    cm_bloom_destroy(&b);

    CHECK(cm_bloom_init(&b, 1, 0.5) == 0);
    CHECK(b.nbits == 64 && b.k >= 1);
    cm_bloom_destroy(&b);

    CHECK(cm_bloom_init(&b, 1000, 1e-9) == 0);
    CHECK(b.k == 30);
    cm_bloom_destroy(&b);
}

static void test_bloom_fp(void)
{
    double random_keys = bloom_fp_rate(100000, 0.01, 0);
    double int_keys = bloom_fp_rate(100000, 0.01, 1);
    double tenth = bloom_fp_rate(20000, 0.001, 0);

    printf("bloom: fp rate at 1%%: %.4f%% (random hashes), %.4f%% (sequential int hashes); "
           "at 0.1%%: %.4f%%\n",
           random_keys * 100, int_keys * 100, tenth * 100);
    measured_bloom_fp = random_keys;
    CHECK(random_keys < 0.015);
    CHECK(random_keys > 0.005);
    CHECK(int_keys < 0.015);
    CHECK(tenth < 0.0015);
}

static void test_bloom_autoclear(void)
{
    cm_bloom b;
    int still = 0;

    CHECK(cm_bloom_init(&b, 100, 0.01) == 0);
    for (uint64_t i = 0; i < 100; i++)
        cm_bloom_put(&b, i);
    /* exactly `capacity` puts: all still present */
    CHECK(b.count == 100);
    for (uint64_t i = 0; i < 100; i++)
        CHECK(cm_bloom_contains(&b, i));
    /* the next put clears first, then inserts */
    cm_bloom_put(&b, 1000);
    CHECK(b.count == 1);
    CHECK(cm_bloom_contains(&b, 1000));
    for (uint64_t i = 0; i < 100; i++)
        still += cm_bloom_contains(&b, i);
    CHECK(still <= 2);
    /* duplicates count as puts too */
    for (int i = 0; i < 99; i++)
        cm_bloom_put(&b, 1000);
    CHECK(b.count == 100);
    cm_bloom_put(&b, 2000);
    CHECK(b.count == 1);
    /* explicit clear */
    cm_bloom_clear(&b);
    CHECK(b.count == 0 && !cm_bloom_contains(&b, 2000));
    cm_bloom_destroy(&b);
}

/* ---- timer wheel ---------------------------------------------------------- */

typedef struct {
    cm_wheel *w;
    uint32_t n;
    int64_t now;
    int64_t *expire;   /* model: 0 = not scheduled */
    int64_t *fired_at; /* 0 = not fired */
    uint64_t *fire_seq;
    uint64_t seq;
    uint64_t nfired;
    /* reentrancy test hooks */
    int cancel_next;
    int reschedule_next;
} wmodel;

static void wmodel_init(wmodel *m, uint32_t n, int64_t now)
{
    memset(m, 0, sizeof(*m));
    m->w = cm_wheel_new(now);
    CHECK(m->w != NULL);
    CHECK(cm_wheel_reserve(m->w, n) == 0);
    m->n = n;
    m->now = now;
    m->expire = calloc(n, sizeof(int64_t));
    m->fired_at = calloc(n, sizeof(int64_t));
    m->fire_seq = calloc(n, sizeof(uint64_t));
    CHECK(m->expire && m->fired_at && m->fire_seq);
}

static void wmodel_free(wmodel *m)
{
    cm_wheel_free(m->w);
    free(m->expire);
    free(m->fired_at);
    free(m->fire_seq);
}

static void wmodel_schedule(wmodel *m, uint32_t slot, int64_t expire)
{
    cm_wheel_schedule(m->w, slot, expire);
    m->expire[slot] = expire;
    m->fired_at[slot] = 0;
}

static void wmodel_cancel(wmodel *m, uint32_t slot)
{
    cm_wheel_cancel(m->w, slot);
    m->expire[slot] = 0;
}

static void wmodel_on_expire(void *ud, uint32_t slot)
{
    wmodel *m = ud;

    CHECK(slot < m->n);
    CHECK(m->expire[slot] != 0);               /* scheduled */
    CHECK(m->expire[slot] <= m->now);          /* never early */
    CHECK(!cm_wheel_is_scheduled(m->w, slot)); /* unlinked before the call */
    CHECK(cm_wheel_expire_at(m->w, slot) == 0);
    m->fired_at[slot] = m->now;
    m->fire_seq[slot] = ++m->seq;
    m->expire[slot] = 0;
    m->nfired++;
    if (m->cancel_next && slot + 1 < m->n && m->expire[slot + 1]) {
        cm_wheel_cancel(m->w, slot + 1);
        m->expire[slot + 1] = 0;
    }
    if (m->reschedule_next && slot + 2 < m->n && m->expire[slot + 2]) {
        int64_t e = m->now + 5 * SEC;
        cm_wheel_schedule(m->w, slot + 2, e);
        m->expire[slot + 2] = e;
    }
}

/* Advance to now and check the whole model: everything due fired, nothing
 * else did, the wheel agrees on every expiry time. */
static void wmodel_advance(wmodel *m, int64_t now, int full_check)
{
    uint32_t live = 0;

    m->now = now;
    cm_wheel_advance(m->w, now, wmodel_on_expire, m);
    if (!full_check)
        return;
    for (uint32_t i = 0; i < m->n; i++) {
        if (m->expire[i]) {
            CHECK(m->expire[i] > now); /* due ones fired */
            CHECK(cm_wheel_expire_at(m->w, i) == m->expire[i]);
            live++;
        } else {
            CHECK(!cm_wheel_is_scheduled(m->w, i));
        }
    }
    CHECK(cm_wheel_len(m->w) == live);
    CHECK(cm_wheel_check(m->w) == 0);
}

static void test_wheel_subsecond(void)
{
    wmodel m;
    int64_t t0 = 123456789; /* not tick aligned */
    int64_t ttls[] = {1,       MS / 2,  MS,       3 * MS,   16 * MS, 17 * MS,
                      20 * MS, 33 * MS, 100 * MS, 500 * MS, 999 * MS};
    uint32_t n = sizeof(ttls) / sizeof(ttls[0]);

    wmodel_init(&m, n, t0);
    for (uint32_t i = 0; i < n; i++)
        wmodel_schedule(&m, i, t0 + ttls[i]);
    CHECK(cm_wheel_len(m.w) == n);
    /* step by 0.25 ms: every timer fires at the first advance at or after it */
    for (int64_t t = t0; t <= t0 + SEC; t += MS / 4) {
        wmodel_advance(&m, t, 1);
        for (uint32_t i = 0; i < n; i++) {
            if (m.fired_at[i])
                CHECK(m.fired_at[i] - (t0 + ttls[i]) < MS / 4);
        }
    }
    CHECK(m.nfired == n);
    CHECK(cm_wheel_len(m.w) == 0);
    wmodel_free(&m);
}

static void test_wheel_order(void)
{
    wmodel m;
    rng_t r = {7};
    uint32_t n = 3000;
    int64_t t = 5 * SEC;

    int64_t *orig = malloc(n * sizeof(int64_t));

    CHECK(orig != NULL);
    wmodel_init(&m, n, t);
    for (uint32_t i = 0; i < n; i++) {
        orig[i] = t + rng_log(&r, 1000, 2 * 3600 * SEC);
        wmodel_schedule(&m, i, orig[i]);
    }
    while (m.nfired < n) {
        t += rng_log(&r, 1000, 30 * SEC);
        wmodel_advance(&m, t, (m.seq & 7) == 0);
    }
    /* an earlier expiry never fires in a later advance than a later one */
    for (uint32_t k = 0; k < 20000; k++) {
        uint32_t a = (uint32_t)rng_below(&r, n), b = (uint32_t)rng_below(&r, n);
        if (orig[a] < orig[b])
            CHECK(m.fired_at[a] <= m.fired_at[b]);
        CHECK(m.fired_at[a] >= orig[a]);
    }
    free(orig);
    wmodel_free(&m);

    /* exact order by advancing to each expiry in turn */
    wmodel_init(&m, 500, 0);
    {
        int64_t *times = malloc(500 * sizeof(int64_t));
        CHECK(times != NULL);
        for (uint32_t i = 0; i < 500; i++) {
            times[i] = 1 + (int64_t)(i * 7919 % 500) * 37 * MS; /* distinct, shuffled */
            wmodel_schedule(&m, i, times[i]);
        }
        for (uint32_t k = 0; k < 500; k++) {
            /* the k-th smallest is 1 + k * 37 ms */
            uint64_t before = m.nfired;
            wmodel_advance(&m, 1 + (int64_t)k * 37 * MS, 0);
            CHECK(m.nfired == before + 1);
        }
        for (uint32_t i = 0; i < 500; i++)
            for (uint32_t j = 0; j < 500; j += 17)
                if (times[i] < times[j])
                    CHECK(m.fire_seq[i] < m.fire_seq[j]);
        free(times);
    }
    wmodel_free(&m);
}

static void test_wheel_long(void)
{
    wmodel m;
    rng_t r = {11};
    int64_t t = 1000 * SEC;
    int64_t ttls[] = {DAY,       3 * DAY, 7 * DAY,  30 * DAY,  200 * DAY,
                      210 * DAY, YEAR,    5 * YEAR, 50 * YEAR, 100 * YEAR};
    uint32_t n = sizeof(ttls) / sizeof(ttls[0]);

    /* big irregular jumps */
    wmodel_init(&m, n, t);
    for (uint32_t i = 0; i < n; i++)
        wmodel_schedule(&m, i, t + ttls[i]);
    while (m.nfired < n) {
        t += rng_log(&r, SEC, 40 * DAY);
        wmodel_advance(&m, t, 1);
    }
    wmodel_free(&m);

    /* advancing to exactly expiry - 1 then expiry, across every level */
    for (uint32_t i = 0; i < n; i++) {
        t = 1000 * SEC + (int64_t)rng_below(&r, (uint64_t)SEC);
        wmodel_init(&m, 1, t);
        wmodel_schedule(&m, 0, t + ttls[i]);
        /* walk up in coarse steps so each level cascades */
        while (t + 3 * DAY < m.expire[0] - 1) {
            t += rng_log(&r, MS, 3 * DAY);
            wmodel_advance(&m, t, 1);
            CHECK(m.nfired == 0);
        }
        wmodel_advance(&m, m.expire[0] - 1, 1);
        CHECK(m.nfired == 0);
        wmodel_advance(&m, m.expire[0], 1);
        CHECK(m.nfired == 1);
        wmodel_free(&m);
    }

    /* one giant jump fires everything at once */
    t = 0;
    wmodel_init(&m, n, t);
    for (uint32_t i = 0; i < n; i++)
        wmodel_schedule(&m, i, t + ttls[i]);
    wmodel_advance(&m, 10 * YEAR, 1);
    CHECK(m.nfired == 8);
    wmodel_advance(&m, 200 * YEAR, 1);
    CHECK(m.nfired == n);
    wmodel_free(&m);
}

static void test_wheel_cancel_reschedule(void)
{
    wmodel m;
    int64_t t = 10 * SEC;

    wmodel_init(&m, 8, t);
    CHECK(cm_wheel_expire_at(m.w, 0) == 0);
    cm_wheel_cancel(m.w, 0);       /* not scheduled: no-op */
    cm_wheel_cancel(m.w, 1000000); /* out of range: no-op */
    CHECK(cm_wheel_len(m.w) == 0);
    wmodel_schedule(&m, 0, t + 100 * MS);
    wmodel_schedule(&m, 1, t + 100 * MS);
    wmodel_schedule(&m, 2, t + 2 * SEC);
    wmodel_schedule(&m, 3, t + DAY);
    CHECK(cm_wheel_len(m.w) == 4);
    CHECK(cm_wheel_expire_at(m.w, 3) == t + DAY);
    /* later */
    wmodel_schedule(&m, 0, t + 5 * SEC);
    /* earlier */
    wmodel_schedule(&m, 3, t + 50 * MS);
    /* gone */
    wmodel_cancel(&m, 2);
    CHECK(cm_wheel_len(m.w) == 3);
    wmodel_advance(&m, t + 60 * MS, 1);
    CHECK(m.fired_at[3] == t + 60 * MS && !m.fired_at[0] && !m.fired_at[1]);
    wmodel_advance(&m, t + 100 * MS, 1);
    CHECK(m.fired_at[1] && !m.fired_at[0]);
    wmodel_advance(&m, t + 3 * SEC, 1);
    CHECK(!m.fired_at[0] && !m.fired_at[2]);
    wmodel_advance(&m, t + 5 * SEC, 1);
    CHECK(m.fired_at[0] && !m.fired_at[2]);
    /* scheduling in the past fires on the next advance, even without moving */
    wmodel_schedule(&m, 4, t);
    wmodel_advance(&m, t + 5 * SEC, 1);
    CHECK(m.fired_at[4] == t + 5 * SEC);
    /* time going backwards moves nothing */
    wmodel_schedule(&m, 5, t + 6 * SEC);
    wmodel_advance(&m, t, 1);
    CHECK(!m.fired_at[5]);
    wmodel_advance(&m, t + 6 * SEC, 1);
    CHECK(m.fired_at[5]);
    CHECK(cm_wheel_len(m.w) == 0);
    wmodel_free(&m);
}

static void test_wheel_reentrant(void)
{
    wmodel m;
    int64_t t = 0;

    /* fn cancels the next slot, which sits in the same bucket being emptied */
    wmodel_init(&m, 100, t);
    m.cancel_next = 1;
    for (uint32_t i = 0; i < 100; i++)
        wmodel_schedule(&m, i, 50 * MS);
    wmodel_advance(&m, 50 * MS, 1);
    CHECK(m.nfired == 50);
    CHECK(cm_wheel_len(m.w) == 0);
    wmodel_free(&m);

    /* fn reschedules slot + 2 into the future */
    wmodel_init(&m, 90, t);
    m.reschedule_next = 1;
    for (uint32_t i = 0; i < 90; i++)
        wmodel_schedule(&m, i, 3 * SEC);
    wmodel_advance(&m, 3 * SEC, 1);
    m.reschedule_next = 0;
    CHECK(m.nfired > 0 && m.nfired < 90);
    wmodel_advance(&m, 8 * SEC, 1);
    CHECK(m.nfired == 90);
    wmodel_free(&m);
}

static void no_fire(void *ud, uint32_t slot)
{
    (void)ud;
    (void)slot;
    CHECK(0);
}

/* The per-slot array waits for the first schedule, and then has exactly the
 * reserved size; every query is safe before it and beyond it. */
static void test_wheel_lazy(void)
{
    cm_wheel *w = cm_wheel_new(SEC);
    size_t m0;

    CHECK(w != NULL);
    m0 = cm_wheel_memory(w);
    CHECK(cm_wheel_reserve(w, 1000) == 0);
    CHECK(cm_wheel_reserve(w, 16) == 0); /* never shrinks what was wanted */
    CHECK(cm_wheel_memory(w) == m0);     /* recorded only */
    CHECK(cm_wheel_reserve(w, CM_WHEEL_MAX_SLOTS + 1) == -1);
    for (uint32_t slot = 0; slot < 3000; slot += 999) {
        CHECK(cm_wheel_expire_at(w, slot) == 0);
        CHECK(!cm_wheel_is_scheduled(w, slot));
        cm_wheel_cancel(w, slot);
    }
    CHECK(cm_wheel_expire_at(w, CM_WHEEL_MAX_SLOTS - 1) == 0);
    cm_wheel_advance(w, 2 * SEC, no_fire, NULL);
    cm_wheel_advance(w, 400 * DAY, no_fire, NULL); /* every level turns over */
    CHECK(cm_wheel_len(w) == 0 && cm_wheel_check(w) == 0);
    CHECK(cm_wheel_memory(w) == m0);

    cm_wheel_schedule(w, 10, 401 * DAY);
    CHECK(cm_wheel_memory(w) == m0 + 1000 * 16); /* exactly the reserved size */
    CHECK(cm_wheel_expire_at(w, 10) == 401 * DAY && cm_wheel_len(w) == 1);
    CHECK(cm_wheel_reserve(w, 1500) == 0); /* now allocates, exactly */
    CHECK(cm_wheel_memory(w) == m0 + 1500 * 16);
    CHECK(cm_wheel_expire_at(w, 1499) == 0 && cm_wheel_expire_at(w, 1500) == 0);
    cm_wheel_cancel(w, 5000);
    /* a slot beyond the reservation grows the array to it */
    CHECK(cm_wheel_schedule_checked(w, 2000, 402 * DAY) == 0);
    CHECK(cm_wheel_memory(w) == m0 + 2001 * 16);
    CHECK(cm_wheel_len(w) == 2 && cm_wheel_check(w) == 0);
    cm_wheel_cancel(w, 10);
    cm_wheel_cancel(w, 2000);
    CHECK(cm_wheel_len(w) == 0 && cm_wheel_check(w) == 0);
    cm_wheel_free(w);

    /* first schedule without any reserve: slot + 1 */
    w = cm_wheel_new(0);
    CHECK(w != NULL);
    cm_wheel_schedule(w, 3, SEC);
    CHECK(cm_wheel_memory(w) == m0 + 4 * 16);
    CHECK(cm_wheel_is_scheduled(w, 3) && !cm_wheel_is_scheduled(w, 4));
    cm_wheel_free(w);
}

static void test_wheel_random(void)
{
    wmodel m;
    rng_t r = {2024};
    uint32_t n = 2000;
    int64_t t = 77 * SEC;

    wmodel_init(&m, 16, t);
    /* grow while timers are linked: links must survive realloc */
    for (uint32_t i = 0; i < 16; i++)
        wmodel_schedule(&m, i, t + rng_log(&r, 1, DAY));
    {
        int64_t *e = realloc(m.expire, n * sizeof(int64_t));
        int64_t *f = realloc(m.fired_at, n * sizeof(int64_t));
        uint64_t *s = realloc(m.fire_seq, n * sizeof(uint64_t));
        CHECK(e && f && s);
        memset(e + 16, 0, (n - 16) * sizeof(int64_t));
        memset(f + 16, 0, (n - 16) * sizeof(int64_t));
        memset(s + 16, 0, (n - 16) * sizeof(uint64_t));
        m.expire = e;
        m.fired_at = f;
        m.fire_seq = s;
        for (uint32_t k = 17; k <= n; k += 97)
            CHECK(cm_wheel_reserve(m.w, k) == 0);
        CHECK(cm_wheel_reserve(m.w, n) == 0);
        m.n = n;
        CHECK(cm_wheel_check(m.w) == 0);
        CHECK(cm_wheel_memory(m.w) >= n * 16);
    }
    for (int it = 0; it < 60000; it++) {
        uint64_t op = rng_below(&r, 100);
        uint32_t slot = (uint32_t)rng_below(&r, n);
        if (op < 45) {
            /* TTLs from 1 ns to 2 years, log-uniform, some in the past */
            int64_t ttl = rng_log(&r, 1, 2 * YEAR);
            if (rng_below(&r, 20) == 0)
                ttl = -(int64_t)rng_below(&r, (uint64_t)SEC);
            wmodel_schedule(&m, slot, t + ttl);
        } else if (op < 55) {
            wmodel_cancel(&m, slot);
        } else {
            /* mostly small steps (same tick), sometimes huge jumps */
            int64_t step =
                rng_below(&r, 3) == 0 ? 0 : rng_log(&r, 1, rng_below(&r, 50) ? SEC : YEAR);
            t += step;
            wmodel_advance(&m, t, (it % 64) == 0);
        }
    }
    wmodel_advance(&m, t, 1);
    wmodel_advance(&m, t + 3 * YEAR, 1);
    CHECK(cm_wheel_len(m.w) == 0);
    wmodel_free(&m);
}

/* ---- policies: a small cache simulator ------------------------------------- */

typedef struct {
    cm_policy *p;
    int kind;
    uint32_t cap;
    uint64_t *slot_key; /* key resident at slot */
    uint32_t nslots;    /* slots ever handed out */
    uint32_t slots_alloc;
    uint32_t *free_slots;
    uint32_t nfree;
    /* key -> slot: linear probing with backward-shift delete */
    uint64_t *tkey;
    uint32_t *tslot;
    uint32_t tmask;
    uint32_t used;
    uint64_t hits, misses, removes;
    int constant_hash; /* adversarial: every key collides */
    uint64_t last_victim_key;
    uint32_t nvictims;
} sim_t;

#define EMPTY_KEY UINT64_MAX

static uint64_t sim_hash(const sim_t *s, uint64_t key)
{
    return s->constant_hash ? 12345 : key; /* raw int keys, like Python's int hash */
}

static uint64_t sim_hash_of(void *ud, uint32_t slot)
{
    sim_t *s = ud;
    CHECK(slot < s->nslots);
    return sim_hash(s, s->slot_key[slot]);
}

static void sim_init(sim_t *s, int kind, uint32_t cap)
{
    uint32_t tsize = 16;

    memset(s, 0, sizeof(*s));
    s->kind = kind;
    s->cap = cap;
    s->p = cm_policy_new(kind, cap, sim_hash_of, s);
    CHECK(s->p != NULL);
    cm_policy_seed(s->p, 42);
    while (tsize < 4 * (cap + 8))
        tsize <<= 1;
    s->tmask = tsize - 1;
    s->tkey = malloc(tsize * sizeof(uint64_t));
    s->tslot = malloc(tsize * sizeof(uint32_t));
    CHECK(s->tkey && s->tslot);
    for (uint32_t i = 0; i < tsize; i++)
        s->tkey[i] = EMPTY_KEY;
}

static void sim_free(sim_t *s)
{
    cm_policy_free(s->p);
    free(s->slot_key);
    free(s->free_slots);
    free(s->tkey);
    free(s->tslot);
}

static uint32_t sim_find(const sim_t *s, uint64_t key)
{
    uint32_t i = (uint32_t)cm_mix64(key) & s->tmask;
    while (s->tkey[i] != EMPTY_KEY) {
        if (s->tkey[i] == key)
            return s->tslot[i];
        i = (i + 1) & s->tmask;
    }
    return CM_NIL;
}

static void sim_map_put(sim_t *s, uint64_t key, uint32_t slot)
{
    uint32_t i = (uint32_t)cm_mix64(key) & s->tmask;
    while (s->tkey[i] != EMPTY_KEY)
        i = (i + 1) & s->tmask;
    s->tkey[i] = key;
    s->tslot[i] = slot;
    s->used++;
    CHECK(s->used <= s->tmask / 2);
}

static void sim_map_del(sim_t *s, uint64_t key)
{
    uint32_t i = (uint32_t)cm_mix64(key) & s->tmask;
    while (s->tkey[i] != key) {
        CHECK(s->tkey[i] != EMPTY_KEY);
        i = (i + 1) & s->tmask;
    }
    for (;;) {
        uint32_t j = i, home;
        s->tkey[i] = EMPTY_KEY;
        do {
            j = (j + 1) & s->tmask;
            if (s->tkey[j] == EMPTY_KEY) {
                s->used--;
                return;
            }
            home = (uint32_t)cm_mix64(s->tkey[j]) & s->tmask;
        } while (i <= j ? (i < home && home <= j) : (i < home || home <= j));
        s->tkey[i] = s->tkey[j];
        s->tslot[i] = s->tslot[j];
        i = j;
    }
}

static uint32_t sim_alloc_slot(sim_t *s)
{
    if (s->nfree)
        return s->free_slots[--s->nfree];
    if (s->nslots == s->slots_alloc) {
        uint32_t n = s->slots_alloc ? s->slots_alloc * 2 : 4;
        uint64_t *k = realloc(s->slot_key, n * sizeof(uint64_t));
        uint32_t *f;
        CHECK(k != NULL);
        s->slot_key = k;
        f = realloc(s->free_slots, n * sizeof(uint32_t));
        CHECK(f != NULL);
        s->free_slots = f;
        s->slots_alloc = n;
    }
    /* grow the policy one slot at a time: exercises its doubling */
    CHECK(cm_policy_reserve(s->p, s->nslots + 1) == 0);
    return s->nslots++;
}

static void sim_drop(sim_t *s, uint32_t slot)
{
    sim_map_del(s, s->slot_key[slot]);
    s->slot_key[slot] = EMPTY_KEY;
    s->free_slots[s->nfree++] = slot;
}

/* One request; returns 1 on a hit. */
static int sim_get(sim_t *s, uint64_t key)
{
    uint32_t slot = sim_find(s, key), victims[CM_POLICY_MAX_VICTIMS], n;
    uint64_t h = sim_hash(s, key);

    if (slot != CM_NIL) {
        cm_policy_access(s->p, slot, h);
        s->hits++;
        return 1;
    }
    cm_policy_record_miss(s->p, h);
    s->misses++;
    slot = sim_alloc_slot(s);
    s->slot_key[slot] = key;
    sim_map_put(s, key, slot);
    n = cm_policy_insert(s->p, slot, h, victims);
    CHECK(n <= 1);
    s->nvictims = n;
    for (uint32_t i = 0; i < n; i++) {
        CHECK(!cm_policy_contains(s->p, victims[i]));
        s->last_victim_key = s->slot_key[victims[i]];
        sim_drop(s, victims[i]);
    }
    /* the size bound, after every insert */
    CHECK(cm_policy_len(s->p) <= s->cap);
    CHECK(cm_policy_len(s->p) == s->used);
    return 0;
}

/* Delete a random resident key (explicit delete / expiry). */
static void sim_remove_random(sim_t *s, rng_t *r)
{
    uint32_t slot;
    if (s->used == 0)
        return;
    do {
        slot = (uint32_t)rng_below(r, s->nslots);
    } while (s->slot_key[slot] == EMPTY_KEY);
    CHECK(cm_policy_contains(s->p, slot));
    cm_policy_remove(s->p, slot);
    CHECK(!cm_policy_contains(s->p, slot));
    cm_policy_remove(s->p, slot); /* second remove: no-op */
    sim_drop(s, slot);
    s->removes++;
    CHECK(cm_policy_len(s->p) == s->used);
}

/* Hit ratio of policy `kind` with `capacity` entries over a key trace. */
static double hit_ratio(int kind, uint32_t capacity, const uint64_t *trace, size_t n)
{
    sim_t s;
    double ratio;

    sim_init(&s, kind, capacity);
    for (size_t i = 0; i < n; i++)
        sim_get(&s, trace[i]);
    CHECK(cm_policy_check(s.p) == 0);
    ratio = (double)s.hits / (double)n;
    sim_free(&s);
    return ratio;
}

enum { TR_UNIFORM, TR_SCAN, TR_LOOP, TR_DISTINCT, TR_REPEAT, TR_ZIPF, TR_MIXED, TR_COUNT };

static uint64_t *make_trace(int kind, uint32_t cap, size_t n, uint64_t seed)
{
    uint64_t *t = malloc(n * sizeof(uint64_t));
    rng_t r = {seed};
    zipf_t z = {0};

    CHECK(t != NULL);
    if (kind == TR_ZIPF || kind == TR_MIXED)
        zipf_init(&z, 10 * (cap + 10), 0.9);
    for (size_t i = 0; i < n; i++) {
        switch (kind) {
        case TR_UNIFORM:
            t[i] = rng_below(&r, 3 * (uint64_t)cap + 3);
            break;
        case TR_SCAN: /* long sequential scans over 4x the capacity */
            t[i] = i % (4 * (uint64_t)cap + 4);
            break;
        case TR_LOOP: /* cyclic over capacity + 1: LRU's worst case */
            t[i] = i % ((uint64_t)cap + 1);
            break;
        case TR_DISTINCT:
            t[i] = i;
            break;
        case TR_REPEAT:
            t[i] = 77;
            break;
        case TR_ZIPF:
            t[i] = zipf_next(&z, &r);
            break;
        default: /* zipf interleaved with bursts of one-hit scans */
            t[i] = (i / 1000) % 3 == 2 ? (UINT64_C(1) << 40) + i : zipf_next(&z, &r);
            break;
        }
    }
    free(z.cdf);
    return t;
}

static void test_policy_size_bound(void)
{
    uint32_t caps[] = {0, 1, 2, 3, 7, 64, 300};

    for (int kind = 0; kind < 2; kind++) {
        for (size_t c = 0; c < sizeof(caps) / sizeof(caps[0]); c++) {
            for (int tr = 0; tr < TR_COUNT; tr++) {
                size_t n = 6000;
                uint64_t *t = make_trace(tr, caps[c], n, 1 + (uint64_t)tr);
                sim_t s;
                rng_t r = {5 + c};
                sim_init(&s, kind, caps[c]);
                for (size_t i = 0; i < n; i++) {
                    sim_get(&s, t[i]);
                    if (rng_below(&r, 50) == 0)
                        sim_remove_random(&s, &r);
                    if (i % 512 == 0)
                        CHECK(cm_policy_check(s.p) == 0);
                }
                CHECK(cm_policy_check(s.p) == 0);
                if (tr == TR_REPEAT && caps[c] > 0)
                    CHECK(s.misses <= 1 + s.removes);
                if (caps[c] == 0)
                    CHECK(s.hits == 0);
                sim_free(&s);
                free(t);
            }
        }
    }
}

static void test_policy_hash_flood(void)
{
    /* every key hashes alike: frequencies tie, admission mostly rejects, the
     * bound still holds and the lists stay consistent */
    uint64_t *t = make_trace(TR_ZIPF, 200, 20000, 3);
    sim_t s;

    sim_init(&s, CM_POLICY_TLFU, 200);
    s.constant_hash = 1;
    for (size_t i = 0; i < 20000; i++)
        sim_get(&s, t[i]);
    CHECK(cm_policy_check(s.p) == 0);
    CHECK(cm_policy_len(s.p) == 200);
    sim_free(&s);
    free(t);
}

/* LRU must match a reference LRU exactly, victim by victim. */
static void test_policy_lru_exact(void)
{
    enum { CAP = 37, N = 30000 };
    uint64_t order[CAP + 1];
    uint32_t olen = 0;
    rng_t r = {31};
    sim_t s;

    sim_init(&s, CM_POLICY_LRU, CAP);
    for (int i = 0; i < N; i++) {
        uint64_t key = rng_below(&r, 60);
        uint32_t pos = olen;
        int hit;
        for (uint32_t j = 0; j < olen; j++)
            if (order[j] == key)
                pos = j;
        hit = sim_get(&s, key);
        CHECK(hit == (pos < olen));
        if (pos < olen) {
            memmove(order + pos, order + pos + 1, (olen - pos - 1) * sizeof(uint64_t));
            order[olen - 1] = key;
        } else {
            order[olen++] = key;
            if (olen > CAP) {
                CHECK(s.nvictims == 1);
                CHECK(s.last_victim_key == order[0]);
                memmove(order, order + 1, (olen - 1) * sizeof(uint64_t));
                olen--;
            } else {
                CHECK(s.nvictims == 0);
            }
        }
        /* explicit removes keep the order of the rest */
        if (i % 97 == 0 && olen) {
            uint32_t j = (uint32_t)rng_below(&r, olen);
            uint32_t slot = sim_find(&s, order[j]);
            CHECK(slot != CM_NIL);
            cm_policy_remove(s.p, slot);
            sim_drop(&s, slot);
            memmove(order + j, order + j + 1, (olen - j - 1) * sizeof(uint64_t));
            olen--;
        }
        CHECK(cm_policy_len(s.p) == olen);
    }
    CHECK(cm_policy_check(s.p) == 0);
    CHECK(cm_policy_frequency(s.p, 1) == 0);
    CHECK(cm_policy_window_max(s.p) == CAP);
    sim_free(&s);
}

static void test_policy_tlfu_admission(void)
{
    sim_t s;
    uint64_t next = 1000000;

    /* hot keys built up, then a scan of one-hit wonders shorter than a
     * sample (10 * capacity), so the hot keys' counts have not aged away */
    sim_init(&s, CM_POLICY_TLFU, 100);
    for (int round = 0; round < 8; round++)
        for (uint64_t k = 0; k < 50; k++)
            sim_get(&s, k);
    CHECK(cm_policy_frequency(s.p, 7) >= 6);
    for (int i = 0; i < 500; i++)
        sim_get(&s, next++);
    for (uint64_t k = 0; k < 50; k++)
        CHECK(sim_find(&s, k) != CM_NIL);
    /* a long scan with the hot keys still in use, each once per 250
     * requests: reuse distance far beyond the capacity */
    for (int i = 0; i < 40000; i++)
        sim_get(&s, i % 5 == 0 ? (uint64_t)(i / 5) % 50 : next++);
    {
        int survivors = 0;
        for (uint64_t k = 0; k < 50; k++)
            survivors += sim_find(&s, k) != CM_NIL;
        CHECK(survivors == 50);
    }
    /* never seen: at most a doorkeeper false positive (the scan overfills it) */
    CHECK(cm_policy_frequency(s.p, next + 5) <= 1);
    CHECK(cm_policy_check(s.p) == 0);
    sim_free(&s);

    /* the same under LRU: the scan flushes everything */
    sim_init(&s, CM_POLICY_LRU, 100);
    for (int round = 0; round < 8; round++)
        for (uint64_t k = 0; k < 50; k++)
            sim_get(&s, k);
    for (int i = 0; i < 40000; i++)
        sim_get(&s, i % 5 == 0 ? (uint64_t)(i / 5) % 50 : next++);
    /* warm-up hits, and at most the first lap before the scan evicts them */
    CHECK(s.hits <= 350 + 50);
    sim_free(&s);

    /* a new key that is seen once is rejected when main is full of hot keys */
    sim_init(&s, CM_POLICY_TLFU, 10);
    for (int round = 0; round < 5; round++)
        for (uint64_t k = 0; k < 10; k++)
            sim_get(&s, k);
    sim_get(&s, 999);
    sim_get(&s, 998); /* pushes 999 out of the window: 999 loses its duel */
    CHECK(sim_find(&s, 999) == CM_NIL);
    CHECK(cm_policy_len(s.p) == 10);
    sim_free(&s);
}

static double zipf_lru, zipf_tlfu, mixed_lru, mixed_tlfu;

static void test_policy_hit_ratio(void)
{
    size_t n = 400000;
    uint32_t cap = 500;
    uint64_t *t = make_trace(TR_ZIPF, cap, n, 12345);
    uint64_t *m = make_trace(TR_MIXED, cap, n, 54321);

    zipf_lru = hit_ratio(CM_POLICY_LRU, cap, t, n);
    zipf_tlfu = hit_ratio(CM_POLICY_TLFU, cap, t, n);
    mixed_lru = hit_ratio(CM_POLICY_LRU, cap, m, n);
    mixed_tlfu = hit_ratio(CM_POLICY_TLFU, cap, m, n);
    printf("policy: zipf(0.9) over %u keys, capacity %u, %zu requests: lru %.2f%%, tlfu %.2f%%\n",
           10 * (cap + 10), cap, n, zipf_lru * 100, zipf_tlfu * 100);
    printf("policy: zipf + one-hit scans, same sizes:                 lru %.2f%%, tlfu %.2f%%\n",
           mixed_lru * 100, mixed_tlfu * 100);
    CHECK(zipf_tlfu > zipf_lru + 0.02);
    CHECK(mixed_tlfu > mixed_lru + 0.03);

    /* loop over capacity + 1: LRU gets nothing, tlfu keeps most */
    {
        uint64_t *l = make_trace(TR_LOOP, cap, 50000, 1);
        double lru = hit_ratio(CM_POLICY_LRU, cap, l, 50000);
        double tlfu = hit_ratio(CM_POLICY_TLFU, cap, l, 50000);
        printf(
            "policy: loop over capacity + 1:                           lru %.2f%%, tlfu %.2f%%\n",
            lru * 100, tlfu * 100);
        CHECK(lru == 0.0);
        CHECK(tlfu > 0.8);
        free(l);
    }
    free(t);
    free(m);
}

static void test_policy_climber(void)
{
    /* The window adapts: on a recency-friendly trace (keys reused soon after
     * first use, then never) it grows; it always stays within [0, capacity]. */
    sim_t s;
    rng_t r = {8};
    uint32_t cap = 1000, initial, max_seen = 0, min_seen = UINT32_MAX;
    uint64_t base = 0;

    sim_init(&s, CM_POLICY_TLFU, cap);
    initial = cm_policy_window_max(s.p);
    CHECK(initial == 10);
    for (int i = 0; i < 300000; i++) {
        /* a sliding working set of ~300 keys: LRU-friendly, frequency-poor */
        uint64_t key = base + rng_below(&r, 300);
        if (i % 3 == 0)
            base++;
        sim_get(&s, key);
        if (i % 1000 == 0) {
            uint32_t w = cm_policy_window_max(s.p);
            if (w > max_seen)
                max_seen = w;
            if (w < min_seen)
                min_seen = w;
            CHECK(w <= cap);
            CHECK(cm_policy_check(s.p) == 0);
        }
    }
    printf("policy: hill climber window on a sliding working set: %u -> [%u, %u] of %u, "
           "hit ratio %.2f%%\n",
           initial, min_seen, max_seen, cap, 100.0 * (double)s.hits / 300000);
    CHECK(max_seen > initial * 4);
    sim_free(&s);
}

static void test_policy_counts_every_request(void)
{
    /* capacity 10: sample size 240. The first occurrence sets the doorkeeper,
     * later ones count in the sketch; the estimate is their sum. */
    cm_policy *p = cm_policy_new(CM_POLICY_TLFU, 10, sim_hash_of, NULL);
    int before;

    CHECK(p != NULL);
    CHECK(cm_policy_frequency(p, 5) == 0);
    cm_policy_record_miss(p, 5);
    CHECK(cm_policy_frequency(p, 5) == 1);
    cm_policy_record_miss(p, 5);
    cm_policy_record_miss(p, 5);
    CHECK(cm_policy_frequency(p, 5) == 3);
    cm_policy_record_miss(p, 6);
    CHECK(cm_policy_frequency(p, 6) == 1);
    cm_policy_record_miss(p, 6);
    CHECK(cm_policy_frequency(p, 6) == 2);
    before = cm_policy_frequency(p, 5);
    /* other keys until the sketch ages: counters halve and the doorkeeper
     * clears, so 5 (counter 2, door 1) drops to 1 and 6 (counter 1, door 1)
     * to 0. Few keys, so that they hardly collide with 5 in the sketch. */
    for (uint64_t k = 1000; k < 1016; k++)
        for (int i = 0; i < 15; i++)
            cm_policy_record_miss(p, k);
    CHECK(p != NULL && before == 3);
    CHECK(cm_policy_frequency(p, 5) == 1);
    CHECK(cm_policy_frequency(p, 6) == 0);
    cm_policy_free(p);
}

/* A key whose counters are all saturated skips the sketch on its hits
 * (policy.c's hot bits). That must count exactly as recording would: after
 * the sketch ages its hits count again, and a new key in its slot counts
 * from the start, also when the slot is reused while a record is deferred.
 * Capacity 1000 records at once; 100000 (a sketch over 1 MiB) defers. */
static void test_policy_hot_keys(void)
{
    uint32_t caps[2] = {1000, 100000};
    uint32_t victims[CM_POLICY_MAX_VICTIMS];

    for (int c = 0; c < 2; c++) {
        cm_policy *p = cm_policy_new(CM_POLICY_TLFU, caps[c], sim_hash_of, NULL);
        uint64_t k = 1u << 20, limit = (uint64_t)caps[c] * 24 * 4;

        CHECK(p != NULL && cm_policy_reserve(p, 2) == 0);
        CHECK(cm_policy_insert(p, 0, 5, victims) == 0);
        for (int i = 0; i < 40; i++)
            cm_policy_access(p, 0, 5);
        CHECK(cm_policy_frequency(p, 5) == 16); /* 15 and the doorkeeper bit */
        /* fresh keys' misses until the sketch ages */
        while (cm_policy_frequency(p, 5) == 16 && k < (1u << 20) + limit)
            cm_policy_record_miss(p, k++);
        CHECK(cm_policy_frequency(p, 5) < 16);
        for (int i = 0; i < 40; i++)
            cm_policy_access(p, 0, 5);
        CHECK(cm_policy_frequency(p, 5) == 16);
        /* the saturated key in another slot: its first access there finds
         * it saturated (deferred: that record is still pending when the slot
         * gets another key, whose hits must all count) */
        cm_policy_remove(p, 0);
        CHECK(cm_policy_insert(p, 1, 5, victims) == 0);
        cm_policy_access(p, 1, 5);
        cm_policy_remove(p, 1);
        CHECK(cm_policy_insert(p, 1, 77, victims) == 0);
        for (int i = 0; i < 40; i++)
            cm_policy_access(p, 1, 77);
        CHECK(cm_policy_frequency(p, 77) == 16);
        CHECK(cm_policy_check(p) == 0);
        cm_policy_free(p);
    }
}

/* Two fresh policies (no cm_policy_seed) at different addresses replay a
 * trace identically: same hits, same victims. */
static void test_policy_deterministic(void)
{
    sim_t a, b;
    rng_t r1 = {7}, r2 = {7};
    void *spacer = malloc(4096); /* the second policy lands elsewhere */

    sim_init(&a, CM_POLICY_TLFU, 500);
    cm_policy_free(a.p);
    a.p = cm_policy_new(CM_POLICY_TLFU, 500, sim_hash_of, &a);
    sim_init(&b, CM_POLICY_TLFU, 500);
    cm_policy_free(b.p);
    b.p = cm_policy_new(CM_POLICY_TLFU, 500, sim_hash_of, &b);
    CHECK(a.p && b.p && a.p != b.p && spacer);
    for (int i = 0; i < 200000; i++) {
        /* warm keys 0..599 (a loop-like load that exercises the random
         * admission) plus a tail of one-hit keys */
        uint64_t k1 = rng_below(&r1, 4) ? rng_below(&r1, 600) : 10000 + (uint64_t)i;
        uint64_t k2 = rng_below(&r2, 4) ? rng_below(&r2, 600) : 10000 + (uint64_t)i;
        CHECK(sim_get(&a, k1) == sim_get(&b, k2));
        CHECK(a.nvictims == b.nvictims);
        if (a.nvictims)
            CHECK(a.last_victim_key == b.last_victim_key);
    }
    CHECK(a.hits == b.hits && a.hits > 0);
    CHECK(cm_policy_window_max(a.p) == cm_policy_window_max(b.p));
    CHECK(cm_policy_check(a.p) == 0 && cm_policy_check(b.p) == 0);
    sim_free(&a);
    sim_free(&b);
    free(spacer);
}

static void test_policy_reserve_memory(void)
{
    cm_policy *p = cm_policy_new(CM_POLICY_TLFU, 1000, sim_hash_of, NULL);
    cm_policy *l = cm_policy_new(CM_POLICY_LRU, 1000, sim_hash_of, NULL);
    size_t m0, m1;
    uint32_t victims[CM_POLICY_MAX_VICTIMS];

    CHECK(p && l);
    CHECK(cm_policy_new(7, 10, sim_hash_of, NULL) == NULL);
    m0 = cm_policy_memory(p);
    CHECK(cm_policy_reserve(p, 1000) == 0);
    m1 = cm_policy_memory(p);
    /* 8 bytes per slot, exactly, and a bit per slot (the hot bitmap) */
    CHECK(m1 - m0 == 1000 * 8 + (1000 + 63) / 64 * 8);
    CHECK(cm_policy_reserve(p, 10) == 0); /* never shrinks */
    CHECK(cm_policy_memory(p) == m1);
    CHECK(cm_policy_reserve(p, 1001) == 0); /* the store's capacity + 1 */
    CHECK(cm_policy_memory(p) == m1 + 8);
    CHECK(cm_policy_reserve(p, 1000) == 0);
    CHECK(cm_policy_memory(p) == m1 + 8);
    m1 += 8;
    CHECK(cm_policy_reserve(p, CM_POLICY_MAX_SLOTS + 1) == -1);
    CHECK(cm_policy_memory(p) == m1);
    /* links, hot bits, sketch (1024 words) and doorkeeper (16384 bits):
     * 8 + 0.13 + 8.2 + 2 bytes per entry */
    CHECK(m1 - m0 == 1001 * 8 + (1001 + 63) / 64 * 8);
    CHECK(m0 < 1024 * 8 + 2048 + 512); /* the struct, the sketch, the doorkeeper */
    CHECK(m1 / 1000 < 20);
    CHECK(cm_policy_reserve(l, 1000) == 0);
    CHECK(cm_policy_memory(l) < m1);
    /* capacity 0 rejects the inserted slot itself */
    {
        cm_policy *z = cm_policy_new(CM_POLICY_TLFU, 0, sim_hash_of, NULL);
        CHECK(z != NULL);
        CHECK(cm_policy_reserve(z, 1) == 0);
        CHECK(cm_policy_insert(z, 0, 5, victims) == 1 && victims[0] == 0);
        CHECK(cm_policy_len(z) == 0 && cm_policy_check(z) == 0);
        cm_policy_free(z);
    }
    cm_policy_free(p);
    cm_policy_free(l);
    cm_policy_free(NULL);
}

int main(void)
{
    RUN(test_sketch_basic);
    RUN(test_sketch_never_underestimates);
    RUN(test_sketch_aging);
    RUN(test_doorkeeper);
    RUN(test_sketch_doorkeeper);
    RUN(test_bloom_sizing);
    RUN(test_bloom_fp);
    RUN(test_bloom_autoclear);
    RUN(test_wheel_subsecond);
    RUN(test_wheel_order);
    RUN(test_wheel_long);
    RUN(test_wheel_cancel_reschedule);
    RUN(test_wheel_reentrant);
    RUN(test_wheel_random);
    RUN(test_wheel_lazy);
    RUN(test_policy_size_bound);
    RUN(test_policy_hash_flood);
    RUN(test_policy_lru_exact);
    RUN(test_policy_tlfu_admission);
    RUN(test_policy_hit_ratio);
    RUN(test_policy_climber);
    RUN(test_policy_counts_every_request);
    RUN(test_policy_hot_keys);
    RUN(test_policy_deterministic);
    RUN(test_policy_reserve_memory);
    printf("%lu passed, 0 failed (%lu checks)\n", tests_passed, checks_passed);
    return 0;
}
