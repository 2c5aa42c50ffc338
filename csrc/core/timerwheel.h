/* Hierarchical timer wheel over slot indices: TTL expiry of the local store,
 * advanced on access. See timerwheel.c. */
#ifndef CM_TIMERWHEEL_H
#define CM_TIMERWHEEL_H

#include <stddef.h>
#include <stdint.h>

/* Slot indices must be below this (the ids above it name bucket sentinels). */
#define CM_WHEEL_MAX_SLOTS (UINT32_MAX - 1023u)

typedef struct cm_wheel cm_wheel;
typedef void (*cm_expire_fn)(void *ud, uint32_t slot);

cm_wheel *cm_wheel_new(int64_t now_ns); /* NULL on OOM; times are >= 0 (monotonic ns) */
void cm_wheel_free(cm_wheel *w);
/* Make room for slots < nslots; 0 ok, -1 OOM or nslots > CM_WHEEL_MAX_SLOTS.
 * Before the first schedule this only records the size: the per-slot array
 * (16 bytes a slot, exactly nslots) is allocated by the first schedule. */
int cm_wheel_reserve(cm_wheel *w, uint32_t nslots);
/* (Re)schedule slot to expire at expire_ns; the slot may already be scheduled.
 * A time at or before the wheel's clock fires on the next advance. The first
 * schedule allocates the array for the reserved size (or slot + 1): if that
 * fails the slot stays unscheduled; cm_wheel_schedule_checked says so (-1). */
void cm_wheel_schedule(cm_wheel *w, uint32_t slot, int64_t expire_ns);
int cm_wheel_schedule_checked(cm_wheel *w, uint32_t slot, int64_t expire_ns);
void cm_wheel_cancel(cm_wheel *w, uint32_t slot); /* no-op if not scheduled */
/* 0 if not scheduled (so do not schedule at time 0 if you need to tell). */
int64_t cm_wheel_expire_at(const cm_wheel *w, uint32_t slot);
int cm_wheel_is_scheduled(const cm_wheel *w, uint32_t slot);
/* Call fn(ud, slot) for every slot with expire <= now_ns. The slot is unlinked
 * and unscheduled before fn runs; fn may cancel or schedule OTHER slots (a
 * slot fn schedules at or before now_ns fires on the next advance) but must
 * not call cm_wheel_advance. O(1) when now_ns is in the same 16.8 ms tick as
 * the last advance and nothing in that tick is due. A now_ns earlier than the
 * wheel's clock does not move the clock back. */
void cm_wheel_advance(cm_wheel *w, int64_t now_ns, cm_expire_fn fn, void *ud);
uint32_t cm_wheel_len(const cm_wheel *w);
size_t cm_wheel_memory(const cm_wheel *w);
/* Walk every list and check links, levels and the count: 0 if consistent.
 * O(slots); for tests and debug builds. */
int cm_wheel_check(const cm_wheel *w);

#endif /* CM_TIMERWHEEL_H */
