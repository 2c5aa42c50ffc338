/* zlib for the Compressed* serializers: one-shot deflate at a given level
 * (cacheme 0.3.0 used zlib.compress(blob, level=3): zlib header, window 15,
 * memLevel 8, default strategy; deflateInit gives exactly those) and a
 * bounded inflate for bytes we did not write ourselves. Plain C, no Python:
 * this file is also linked into the fuzz target. */
#ifndef CM_SER_ZLIB_H
#define CM_SER_ZLIB_H

#include <stddef.h>
#include <stdint.h>

/* Inflated data larger than this is refused unless the serializer says
 * otherwise (CompressedSerializer(max_size=...)): a zip bomb in a cache
 * entry must cost at most this much memory and the time to inflate it. */
#define CM_ZLIB_DEFAULT_MAX_OUT ((size_t)64 * 1024 * 1024)

typedef struct {
    uint8_t *data; /* malloc'd; free() it */
    size_t len;
} CmZBuf;

/* 0 on success; -1 on error with *err set to a static message. */
int cm_zlib_compress(const uint8_t *in, size_t n, int level, CmZBuf *out, const char **err);
int cm_zlib_decompress(const uint8_t *in, size_t n, size_t max_out, CmZBuf *out, const char **err);

#endif
