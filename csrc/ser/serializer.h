/* Serializers of cacheme._core: the Python-facing types PickleSerializer,
 * JSONSerializer, MsgPackSerializer and CompressedSerializer, and the
 * SerializerError raised when cached bytes cannot be decoded.
 *
 * Byte compatibility with cacheme 0.3.0 is the contract: pickle is
 * base64.encodebytes(pickle.dumps(obj)); JSON is json.dumps(obj,
 * default=object_encoder).encode(); MsgPack is msgpack.dumps(obj,
 * default=object_encoder) with use_bin_type; Compressed* is zlib level 3 of
 * the inner bytes. object_encoder writes what JSON/MsgPack cannot hold
 * natively as {"__class__": "<module>.<qualname>", "data": ...} the way
 * pydantic's (v1) pydantic_encoder did (object.c). */
#ifndef CM_SERIALIZER_H
#define CM_SERIALIZER_H

#include "state.h"

/* Nesting limits. Encoding: msgpack-python's default nest limit (511), so
 * what we write, 0.3.0 can read. Decoding: msgpack-python's unpack stack
 * (1024). Both far below what the C stack can take. */
#define CM_SER_MAX_ENCODE_DEPTH 511
#define CM_SER_MAX_DECODE_DEPTH 1024

/* object.c, object_encode.c, object_decode.c: the 0.3.0 object encoding. */

/* object_encoder(obj): {"__class__": qualname, "data": pydantic_encoder(obj)}.
 * TypeError for objects pydantic's encoder did not know. */
PyObject *cm_ser_object_encode(CmState *st, PyObject *obj);

/* object_decoder(dict): dict itself unless it has "__class__"; then the
 * object, built only from classes already in sys.modules and only if it is a
 * known value type, a dataclass, an Enum or a pydantic model. */
PyObject *cm_ser_object_decode(CmState *st, PyObject *dict);

/* 1 if object_decoder would construct instances of cls (a value type of
 * the 0.3.0 encoding, an Enum with members, a dataclass or a pydantic
 * model), else 0; never raises. The pickle allowlist starts from this. */
int cm_ser_value_class(CmState *st, PyObject *cls);

/* "<module>.<qualname>" -> class, looked up in sys.modules only (no import,
 * no module __getattr__). New reference, or NULL with ValueError. */
PyObject *cm_ser_resolve_class(CmState *st, PyObject *name);

/* module.qualname (pickle's find_class) from sys.modules only; new reference. */
PyObject *cm_ser_lookup_global(PyObject *module, PyObject *qualname);

int cm_ser_object_init(PyObject *mod, CmState *st);

/* ser_pickle.c: PickleSerializer's state, and pickle that never imports and
 * constructs only allowed classes (or, with a secret, full pickle of signed
 * payloads only). */
typedef struct {
    PyObject_HEAD
    PyObject *allowed; /* frozenset of globals the user named, or NULL */
    PyObject *secret;  /* bytes: the HMAC-SHA256 key of signed payloads, or NULL */
    PyObject *digest;  /* hmac.digest, with a secret */
    PyObject *compare; /* hmac.compare_digest, with a secret */
} CmPickleSerObject;

/* raw pickle bytes (base64 already undone) -> object; self a PickleSerializer */
PyObject *cm_ser_pickle_loads(CmState *st, PyObject *self, PyObject *raw);
/* obj -> raw pickle bytes (signed when self has a secret), before base64 */
PyObject *cm_ser_pickle_dumps(CmState *st, PyObject *self, PyObject *obj);
int cm_pickle_ser_init(PyObject *self, PyObject *args, PyObject *kwds);
int cm_pickle_ser_traverse(PyObject *self, visitproc visit, void *arg);
int cm_pickle_ser_clear(PyObject *self);
void cm_pickle_ser_dealloc(PyObject *self);
int cm_ser_pickle_init(PyObject *mod, CmState *st);

#endif
