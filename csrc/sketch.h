/* Count-min sketch of 4-bit counters: the frequency estimator of W-TinyLFU.
 * See sketch.c for the layout and the aging rule. */
#ifndef CM_SKETCH_H
#define CM_SKETCH_H

#include <stddef.h>
#include <stdint.h>

typedef struct cm_sketch {
    uint64_t *table;      /* 16 counters of 4 bits per word */
    uint32_t mask;        /* block mask: (number of words / 8) - 1 */
    uint32_t nwords;      /* power of two, >= 8 */
    uint64_t size;        /* increments since the last aging */
    uint64_t sample_size; /* age when size reaches this: 10 * capacity */
    uint64_t resets;      /* how many times the sketch aged; lets owners reset companions */
} cm_sketch;

int cm_sketch_init(cm_sketch *s, uint32_t capacity); /* 0 ok, -1 OOM */
void cm_sketch_destroy(cm_sketch *s);
/* Count one occurrence of hash (a raw hash: the sketch mixes it). Ages when
 * the sample size is reached. */
void cm_sketch_increment(cm_sketch *s, uint64_t hash);
/* Count one event toward the sample without touching a counter (used for
 * occurrences absorbed by a doorkeeper). Ages when the sample size is reached. */
void cm_sketch_tick(cm_sketch *s);
int cm_sketch_frequency(const cm_sketch *s, uint64_t hash); /* 0..15 */
/* Halve every counter now (normally called by increment/tick). */
void cm_sketch_age(cm_sketch *s);
size_t cm_sketch_memory(const cm_sketch *s);

#endif /* CM_SKETCH_H */
