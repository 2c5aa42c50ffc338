/* Microbenchmark of the policy hot paths, for callgrind (not part of the
 * test run):
 *
 *   make -C tests/c bench          instructions per call, via callgrind
 *   ./bench_policy access|miss|sketch [capacity] [ops]
 *   ./bench_policy trace FILE.u32 capacity [lru]
 *
 * access: a full tlfu policy, ops hits on resident slots (zipf-like skew);
 * miss: ops cm_policy_record_miss on fresh hashes; sketch: ops
 * cm_sketch_increment. Divide the inclusive Ir of the function by its calls
 * (callgrind_annotate --inclusive=yes).
 *
 * trace: hit ratio of the policy alone on a benchmarks/ trace file (uint32
 * key ids; get, and put on a miss), so a policy change can be measured
 * without rebuilding the extension. Key hashes are cm_mix64(id), not the
 * Python str hashes the real benchmark sees, so the ratios differ slightly. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/hash.h"
#include "core/policy.h"
#include "core/sketch.h"

/* Operations cycle through this many precomputed inputs, made in the setup
 * so that a run of 0 operations pays for them too. */
#define CM_BENCH_SEQ (UINT32_C(1) << 20)

static uint64_t *slot_hash;

static uint64_t hash_of(void *ud, uint32_t slot)
{
    (void)ud;
    return slot_hash[slot];
}

static int bench_access(uint32_t capacity, uint32_t ops)
{
    cm_policy *p = cm_policy_new(CM_POLICY_TLFU, capacity, hash_of, NULL);
    uint32_t victims[CM_POLICY_MAX_VICTIMS];
    uint32_t *seq = malloc(sizeof(uint32_t) * CM_BENCH_SEQ);
    uint64_t sum = 0, x = 1;

    slot_hash = malloc(sizeof(uint64_t) * (capacity + 1));
    if (p == NULL || seq == NULL || slot_hash == NULL || cm_policy_reserve(p, capacity + 1) < 0)
        return 1;
    for (uint32_t i = 0; i < capacity; i++) {
        slot_hash[i] = cm_mix64(i + 1);
        cm_policy_record_miss(p, slot_hash[i]);
        cm_policy_insert(p, i, slot_hash[i], victims);
    }
    /* Skewed slots: the min of two uniform draws favours low ids. */
    for (uint32_t i = 0; i < CM_BENCH_SEQ; i++) {
        uint32_t a, b;
        x = cm_mix64(x + i);
        a = (uint32_t)(x % capacity);
        b = (uint32_t)((x >> 32) % capacity);
        seq[i] = a < b ? a : b;
    }
    for (uint32_t i = 0; i < ops; i++) {
        uint32_t s = seq[i & (CM_BENCH_SEQ - 1)];
        if (cm_policy_contains(p, s))
            cm_policy_access(p, s, slot_hash[s]);
        else
            sum++;
    }
    printf("access: %u ops, %llu non-resident, len %u\n", ops, (unsigned long long)sum,
           cm_policy_len(p));
    cm_policy_free(p);
    free(seq);
    free(slot_hash);
    return 0;
}

static int bench_miss(uint32_t capacity, uint32_t ops)
{
    cm_policy *p = cm_policy_new(CM_POLICY_TLFU, capacity, hash_of, NULL);
    uint64_t *h = malloc(sizeof(uint64_t) * CM_BENCH_SEQ);

    if (p == NULL || h == NULL)
        return 1;
    for (uint32_t i = 0; i < CM_BENCH_SEQ; i++)
        h[i] = cm_mix64(i);
    for (uint32_t i = 0; i < ops; i++)
        cm_policy_record_miss(p, h[i & (CM_BENCH_SEQ - 1)]);
    printf("miss: %u ops\n", ops);
    cm_policy_free(p);
    free(h);
    return 0;
}

static int bench_sketch(uint32_t capacity, uint32_t ops)
{
    cm_sketch s;
    int f = 0;
    uint64_t *h = malloc(sizeof(uint64_t) * CM_BENCH_SEQ);

    if (h == NULL || cm_sketch_init(&s, capacity) < 0)
        return 1;
    for (uint32_t i = 0; i < CM_BENCH_SEQ; i++)
        h[i] = cm_mix64(i % (capacity * 2));
    for (uint32_t i = 0; i < ops; i++)
        cm_sketch_increment(&s, h[i & (CM_BENCH_SEQ - 1)]);
    for (uint32_t i = 0; i < 16; i++)
        f += cm_sketch_frequency(&s, cm_mix64(i));
    printf("sketch: %u ops (%d)\n", ops, f);
    cm_sketch_destroy(&s);
    free(h);
    return 0;
}

static int bench_trace(const char *path, uint32_t capacity, int kind)
{
    FILE *f = fopen(path, "rb");
    uint32_t *ids, *slot_of, *id_of, n, max_id = 0, free_head = CM_NIL, hwm = 0;
    uint64_t hits = 0;
    long size;
    cm_policy *p = cm_policy_new(kind, capacity, hash_of, NULL);

    if (f == NULL || p == NULL)
        return 1;
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    fseek(f, 0, SEEK_SET);
    n = (uint32_t)(size / 4);
    ids = malloc((size_t)n * 4);
    if (ids == NULL || fread(ids, 4, n, f) != n)
        return 1;
    fclose(f);
    for (uint32_t i = 0; i < n; i++)
        max_id = ids[i] > max_id ? ids[i] : max_id;
    slot_of = malloc(((size_t)max_id + 1) * 4);
    id_of = malloc(((size_t)capacity + 1) * 4);
    slot_hash = malloc(((size_t)capacity + 1) * 8);
    if (slot_of == NULL || id_of == NULL || slot_hash == NULL ||
        cm_policy_reserve(p, capacity + 1) < 0)
        return 1;
    memset(slot_of, 0xff, ((size_t)max_id + 1) * 4);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t id = ids[i], slot = slot_of[id], victims[CM_POLICY_MAX_VICTIMS], nv;
        uint64_t h = cm_mix64(id);
        if (slot != CM_NIL) {
            cm_policy_access(p, slot, h);
            hits++;
            continue;
        }
        cm_policy_record_miss(p, h);
        if (free_head != CM_NIL) {
            slot = free_head;
            free_head = id_of[slot];
        } else {
            slot = hwm++;
        }
        slot_hash[slot] = h;
        id_of[slot] = id;
        slot_of[id] = slot;
        nv = cm_policy_insert(p, slot, h, victims);
        for (uint32_t v = 0; v < nv; v++) {
            slot_of[id_of[victims[v]]] = CM_NIL;
            id_of[victims[v]] = free_head;
            free_head = victims[v];
        }
    }
    printf("%s %u %.4f\n", path, capacity, (double)hits / n);
    cm_policy_free(p);
    free(ids);
    free(slot_of);
    free(id_of);
    free(slot_hash);
    return 0;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "access";
    uint32_t capacity = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 10000;
    uint32_t ops = argc > 3 ? (uint32_t)strtoul(argv[3], NULL, 10) : 1000000;

    if (strcmp(mode, "access") == 0)
        return bench_access(capacity, ops);
    if (strcmp(mode, "miss") == 0)
        return bench_miss(capacity, ops);
    if (strcmp(mode, "sketch") == 0)
        return bench_sketch(capacity, ops);
    if (strcmp(mode, "trace") == 0 && argc > 3)
        return bench_trace(argv[2], (uint32_t)strtoul(argv[3], NULL, 10),
                           argc > 4 ? CM_POLICY_LRU : CM_POLICY_TLFU);
    fprintf(stderr, "usage: %s access|miss|sketch [capacity] [ops] | trace FILE capacity [lru]\n",
            argv[0]);
    return 2;
}
