/* Count-min sketch of 4-bit counters: the frequency estimator of W-TinyLFU.
 * See sketch.c for the layout and the aging rule. */
#ifndef CM_SKETCH_H
#define CM_SKETCH_H

#include <stddef.h>
#include <stdint.h>

#include "core/bloom.h"

typedef struct cm_sketch {
    uint64_t *table;      /* 16 counters of 4 bits per word */
    uint32_t mask;        /* block mask: (number of words / 8) - 1 */
    uint32_t nwords;      /* power of two, >= 8 */
    uint64_t size;        /* increments since the last aging */
    uint64_t sample_size; /* age when size reaches this */
    uint64_t resets;      /* how many times the sketch aged */
    cm_doorkeeper door;   /* bits NULL unless made by cm_sketch_init_doorkeeper */
} cm_sketch;

/* Counters for capacity items, no doorkeeper. 0 ok, -1 OOM. */
int cm_sketch_init(cm_sketch *s, uint32_t capacity);
/* TinyLFU's layout for a cache of capacity entries: a doorkeeper in front of
 * half as many counters (see sketch.c). Use cm_sketch_record and
 * cm_sketch_estimate on it. 0 ok, -1 OOM. */
int cm_sketch_init_doorkeeper(cm_sketch *s, uint32_t capacity);
void cm_sketch_destroy(cm_sketch *s);
/* Count one occurrence of hash (a raw hash: the sketch mixes it). Ages when
 * the sample size is reached. */
void cm_sketch_increment(cm_sketch *s, uint64_t hash);
/* Count one event toward the sample without touching a counter (used for
 * occurrences absorbed by a doorkeeper). Ages when the sample size is reached. */
void cm_sketch_tick(cm_sketch *s);
int cm_sketch_frequency(const cm_sketch *s, uint64_t hash); /* 0..15 */
/* Count one occurrence through the doorkeeper: the first since the last
 * aging only sets its doorkeeper bits, later ones increment the counters.
 * Returns 1 when the item's counters are all saturated, so that the record
 * changed nothing (and so will every record of it until the next aging:
 * s->resets tells), else 0. */
int cm_sketch_record(cm_sketch *s, uint64_t hash);
/* Start loading the cache lines cm_sketch_record(s, hash) will touch (its
 * doorkeeper word and counter block); a hint, it changes nothing. Returns
 * the hash as mixed by the sketch, for cm_sketch_record_mixed. */
uint64_t cm_sketch_prefetch(const cm_sketch *s, uint64_t hash);
/* cm_sketch_record for what cm_sketch_prefetch returned. */
int cm_sketch_record_mixed(cm_sketch *s, uint64_t mixed);
/* Counters + doorkeeper bit (0..16): the frequency of recorded items. */
int cm_sketch_estimate(const cm_sketch *s, uint64_t hash);
/* Halve every counter and clear the doorkeeper now (normally called by
 * increment/tick/record). */
void cm_sketch_age(cm_sketch *s);
size_t cm_sketch_memory(const cm_sketch *s);

#endif /* CM_SKETCH_H */
