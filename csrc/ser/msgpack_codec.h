/* MessagePack <-> Python objects, byte-compatible with the msgpack package
 * as cacheme 0.3.0 used it (use_bin_type=True, strict_map_key=False,
 * default and object_hook = the 0.3.0 object encoding). Encoder in
 * msgpack_encode.c, decoder in msgpack_decode.c. */
#ifndef CM_MSGPACK_CODEC_H
#define CM_MSGPACK_CODEC_H

#include "state.h"

/* New bytes, or NULL with an exception (TypeError/ValueError/OverflowError). */
PyObject *cm_msgpack_dumps(CmState *st, PyObject *obj);

/* The object encoded in buf[0:len], which must hold exactly one object.
 * Never reads outside buf; NULL with an exception (usually ValueError naming
 * the offset) on malformed input. */
PyObject *cm_msgpack_loads(CmState *st, const char *buf, Py_ssize_t len);

/* Module functions of the codec (_msgpack_templates, for tests). */
int cm_msgpack_init(PyObject *mod);

#endif
