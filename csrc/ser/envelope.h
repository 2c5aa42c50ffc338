/* How a value is laid out in a remote storage, exactly as cacheme 0.3.0 did,
 * so both versions share one cache. Redis holds
 * serializer.dumps({"value": v, "updated_at": now(UTC)}); SQL rows and
 * MongoDB documents hold serializer.dumps(v), updated_at being a column
 * (field) of its own (0.3.0's MongoStorage kept BaseStorage's encoding).
 * A SQL storage may also cache without a serializer: then only bytes, which
 * is what the value column gives back. */
#ifndef CM_ENVELOPE_H
#define CM_ENVELOPE_H
#include "state.h"

typedef enum {
    CM_ENVELOPE_DICT, /* {"value": v, "updated_at": ...} (Redis) */
    CM_ENVELOPE_BARE, /* v itself (SQL rows, MongoDB documents) */
} CmEnvelope;

/* The bytes to store for value; new reference, or NULL with an exception.
 * ser is the serializer, or None (CM_ENVELOPE_BARE only: value must be bytes).
 * who names the storage in errors ("redis", "PostgreSQL", ...). */
PyObject *cm_envelope_encode(CmState *st, CmEnvelope kind, PyObject *ser, PyObject *value,
                             const char *who);
/* CM_ENVELOPE_DICT with the time the value's load took as "load_time"
 * (seconds, a float) besides value and updated_at, for early_refresh: 0.3.0
 * reads only "value". load_ns < 0: no load_time (cm_envelope_encode). */
PyObject *cm_envelope_encode_timed(CmState *st, PyObject *ser, PyObject *value, int64_t load_ns,
                                   const char *who);
/* cm_envelope_decode of a CM_ENVELOPE_DICT, with its updated_at in
 * *updated_ns (UTC ns since the epoch; 0 when absent or not a datetime)
 * and its load_time in *load_ns (0 when absent). */
PyObject *cm_envelope_decode_aged(CmState *st, PyObject *ser, PyObject *raw, PyObject *err_type,
                                  const char *who, int64_t *updated_ns, int64_t *load_ns);
/* The value stored in raw; new reference, or NULL with an exception (the
 * serializer's, or err_type when a dict envelope has no "value"). */
PyObject *cm_envelope_decode(CmState *st, CmEnvelope kind, PyObject *ser, PyObject *raw,
                             PyObject *err_type, const char *who);
/* What serializer.dumps() returned, as bytes (str as UTF-8); new reference. */
PyObject *cm_envelope_as_bytes(PyObject *payload, const char *who);
#endif
