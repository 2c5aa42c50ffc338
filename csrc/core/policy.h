/* Eviction policies over slot indices: LRU and W-TinyLFU. See policy.c. */
#ifndef CM_POLICY_H
#define CM_POLICY_H

#include <stddef.h>
#include <stdint.h>

#define CM_NIL UINT32_MAX
/* Slots are 30-bit ids (the queue id takes the top 2 bits of a link), less
 * the three list heads: at most 1073741820 slots per policy. */
#define CM_POLICY_MAX_SLOTS ((UINT32_C(1) << 30) - 4)

enum { CM_POLICY_LRU = 0, CM_POLICY_TLFU = 1 };

typedef struct cm_policy cm_policy;
typedef uint64_t (*cm_hash_fn)(void *ud, uint32_t slot); /* hash of the key resident at slot */

/* NULL on OOM or an unknown kind. capacity may be 0 (every insert is rejected)
 * and is clamped to CM_POLICY_MAX_SLOTS. */
cm_policy *cm_policy_new(int kind, uint32_t capacity, cm_hash_fn hash_of, void *ud);
void cm_policy_free(cm_policy *p);
/* Grow the per-slot arrays to >= nslots: 0 ok, -1 OOM or nslots > CM_POLICY_MAX_SLOTS. */
int cm_policy_reserve(cm_policy *p, uint32_t nslots);
/* Hit on a resident slot: counts the frequency and the hit, moves the slot. */
void cm_policy_access(cm_policy *p, uint32_t slot, uint64_t hash);
/* Miss of a non-resident key: counts the frequency and the miss. */
void cm_policy_record_miss(cm_policy *p, uint64_t hash);
/* slot is new (not resident, and reserved). Does not count the frequency (the
 * preceding miss did). Writes the slots the caller must now drop to victims[]
 * (room for CM_POLICY_MAX_VICTIMS) and returns how many: one when the policy
 * was full, else none; a victim may be the inserted slot itself (rejected by
 * admission). Victims are already unlinked. Afterwards len <= capacity. */
#define CM_POLICY_MAX_VICTIMS 4
uint32_t cm_policy_insert(cm_policy *p, uint32_t slot, uint64_t hash, uint32_t *victims);
/* Explicit delete or expiry of a resident slot; no-op if not resident. */
void cm_policy_remove(cm_policy *p, uint32_t slot);
uint32_t cm_policy_len(const cm_policy *p);
uint32_t cm_policy_capacity(const cm_policy *p);
int cm_policy_contains(const cm_policy *p, uint32_t slot); /* resident? */
/* TinyLFU frequency estimate of hash (0..16); 0 for LRU. */
int cm_policy_frequency(cm_policy *p, uint64_t hash);
/* Current window size limit (W-TinyLFU); capacity for LRU. */
uint32_t cm_policy_window_max(const cm_policy *p);
/* Reseed the admission PRNG (tests; by default it is seeded from a constant
 * mixed with the capacity, so runs are reproducible). */
void cm_policy_seed(cm_policy *p, uint64_t seed);
/* Bytes of C memory the policy holds (incl. the sketch). */
size_t cm_policy_memory(const cm_policy *p);
/* Walk every list and check links, queue ids and sizes: 0 if consistent.
 * O(slots); for tests and debug builds. */
int cm_policy_check(const cm_policy *p);

#endif /* CM_POLICY_H */
