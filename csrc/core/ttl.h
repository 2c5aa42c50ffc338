/* The one TTL rule of every storage (the local store, Redis, SQL, and the
 * next ones): a TTL is None (no expiry), a datetime.timedelta or a number of
 * seconds (int or float, not bool), positive and not NaN. A TTL beyond
 * CM_TTL_MAX_SECONDS is held for that long: every storage can represent it
 * without overflow (nanoseconds on the monotonic clock, milliseconds for
 * Redis PX, datetime columns up to year 9999), and nobody means a cached
 * value to outlive the century. */
#ifndef CM_TTL_H
#define CM_TTL_H
#include "state.h"

#include <math.h>
#include <stdint.h>

#define CM_TTL_MAX_SECONDS (100.0 * 366 * 86400)

/* ttl as seconds in (0, CM_TTL_MAX_SECONDS], or -1.0 for None; -2.0 with
 * TypeError or ValueError naming the problem. */
double cm_ttl_seconds(CmState *st, PyObject *ttl);

/* seconds from cm_ttl_seconds (> 0) in ns / ms, at least 1 */
static inline int64_t cm_ttl_ns(double seconds)
{
    int64_t ns = (int64_t)(seconds * 1e9);
    return ns > 0 ? ns : 1;
}
static inline long long cm_ttl_ms(double seconds)
{
    long long ms = llround(seconds * 1000.0);
    return ms > 0 ? ms : 1;
}

/* ttl_ns (-1: none) no longer than cap_ns (< 0: no cap), at least 1: a
 * local copy's TTL held within what is left of the value it copies, so it
 * never outlives it (Redis tracking's covered locals, fills from a hit whose
 * age is known). */
static inline int64_t cm_ttl_cap_ns(int64_t ttl_ns, int64_t cap_ns)
{
    if (cap_ns < 0 || (ttl_ns >= 0 && ttl_ns <= cap_ns))
        return ttl_ns;
    return cap_ns > 0 ? cap_ns : 1;
}

/* cm_ttl_seconds in nanoseconds: -1 for None, -2 with an exception. */
int64_t cm_ttl_to_ns(CmState *st, PyObject *ttl);
#endif
