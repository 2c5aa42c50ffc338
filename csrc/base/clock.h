/* Monotonic nanoseconds for TTLs and load timing. */
#ifndef CM_CLOCK_H
#define CM_CLOCK_H
#include <stdint.h>
#include <time.h>

/* Added to every reading: 0 in production; tests move time forward with
 * _core._advance_clock(ns) (core/fresh.c) to check expiry and freshness
 * without sleeping, and put it back with _core._reset_clock() when done
 * (stores used meanwhile are then left behind by it). A plain integer of
 * the process, like the clock itself. */
extern int64_t cm_clock_offset_ns;

static inline int64_t cm_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + cm_clock_offset_ns;
}

/* Wall-clock (UTC) nanoseconds since the epoch, with the same offset: the
 * age of a value a remote storage stamped with its updated_at. */
static inline int64_t cm_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + cm_clock_offset_ns;
}
#endif
