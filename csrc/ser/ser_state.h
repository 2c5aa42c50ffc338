/* The serializers' part of the module state (CmState.ser): the types, the
 * Python functions and classes the codecs call, and the decoders' caches.
 * Owned by ser/serializer.c (init, traverse, clear). */
#ifndef CM_SER_STATE_H
#define CM_SER_STATE_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct {
#define CM_SER_OBJECTS(X)                                                                          \
    X(SerializerError)                                                                             \
    X(PickleSerializerType)                                                                        \
    X(JSONSerializerType)                                                                          \
    X(MsgPackSerializerType)                                                                       \
    X(CompressedSerializerType)                                                                    \
    X(datetime)                                                                                    \
    X(utc)                                                                                         \
    X(date)                                                                                        \
    X(time)                                                                                        \
    X(timedelta)                                                                                   \
    X(Decimal)                                                                                     \
    X(UUID)                                                                                        \
    X(Enum)                                                                                        \
    X(pickle_dumps)                                                                                \
    X(pickle_loads)                                                                                \
    X(SafeUnpicklerType)                                                                           \
    X(BytesIO)                                                                                     \
    X(a2b_base64)                                                                                  \
    X(json_encoder)                                                                                \
    X(json_scan_once)                                                                              \
    X(object_encoder)                                                                              \
    X(object_decoder)                                                                              \
    X(datetime_qualname)                                                                           \
    X(zero)                                                                                        \
    X(s_class)                                                                                     \
    X(s_data)                                                                                      \
    X(s_isoformat)                                                                                 \
    X(s_fromisoformat)                                                                             \
    X(s_serializer)                                                                                \
    X(s_dumps)                                                                                     \
    X(s_loads)                                                                                     \
    X(s_dataclass_fields)                                                                          \
    X(s_builtins)                                                                                  \
    X(s_value)                                                                                     \
    X(s_updated_at)                                                                                \
    X(now)
#define CM_SER_DECLARE(n) PyObject *n;
    CM_SER_OBJECTS(CM_SER_DECLARE)
#undef CM_SER_DECLARE
#define CM_SER_KEYCACHE_SIZE 512
    PyObject *keycache[CM_SER_KEYCACHE_SIZE]; /* short ASCII map keys (msgpack_decode.c) */
#define CM_SER_MAPTPL_SLOTS 16
#define CM_SER_MAPTPL_MAXN 32
    /* maps seen twice with the same keys (lists of records): a dict of
     * those keys to None that the decoder copies (msgpack_decode.c) */
    struct {
        PyObject *dict;                     /* NULL while the slot is empty */
        PyObject *keys[CM_SER_MAPTPL_MAXN]; /* borrowed from dict, in order */
        uint64_t pending;                   /* signature of the last miss */
        uint32_t n;
    } maptpl[CM_SER_MAPTPL_SLOTS];
    uint8_t maptpl_byn[CM_SER_MAPTPL_MAXN + 1]; /* 1 + slot last used for n keys */
    int maptpl_off;           /* a copy was not laid out as expected: templates off */
    Py_ssize_t unpickler_off; /* the serializer pointer in _SafeUnpickler (ser_pickle.c) */
} CmSerState;

/* The Python objects held, for the module's GC traverse and clear (the
 * objects are made by cm_serializer_init). */
int cm_ser_state_traverse(CmSerState *ser, visitproc visit, void *arg);
void cm_ser_state_clear(CmSerState *ser);
/* The module's GC clear: the JSON hooks (builtins bound to the module, which
 * have no tp_clear of their own to break that cycle). */
void cm_ser_state_gc_clear(CmSerState *ser);
#endif
