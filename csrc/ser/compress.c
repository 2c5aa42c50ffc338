/* One-shot zlib deflate/inflate: see compress.h. */
#include "ser/compress.h"

#include <limits.h>
#include <stdlib.h>
#include <zlib.h>

int cm_zlib_compress(const uint8_t *in, size_t n, int level, CmZBuf *out, const char **err)
{
    z_stream zs = {0};
    uint8_t *buf = NULL;
    uLong bound;
    int rc = -1, inited = 0;

    out->data = NULL;
    out->len = 0;
    if (n > UINT_MAX) {
        *err = "input too large for zlib";
        goto done;
    }
    if (deflateInit(&zs, level) != Z_OK) {
        *err = zs.msg ? zs.msg : "deflateInit failed";
        goto done;
    }
    inited = 1;
    bound = deflateBound(&zs, (uLong)n);
    if ((buf = malloc(bound ? bound : 1)) == NULL) {
        *err = "out of memory";
        goto done;
    }
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)n;
    zs.next_out = buf;
    zs.avail_out = (uInt)bound;
    if (deflate(&zs, Z_FINISH) != Z_STREAM_END) {
        *err = zs.msg ? zs.msg : "deflate did not finish";
        goto done;
    }
    out->data = buf;
    out->len = (size_t)zs.total_out;
    buf = NULL;
    rc = 0;
done:
    if (inited)
        deflateEnd(&zs);
    free(buf);
    return rc;
}

int cm_zlib_decompress(const uint8_t *in, size_t n, size_t max_out, CmZBuf *out, const char **err)
{
    z_stream zs = {0};
    uint8_t *buf = NULL;
    size_t cap, used = 0;
    int rc = -1, inited = 0, zrc;

    out->data = NULL;
    out->len = 0;
    if (n > UINT_MAX) {
        *err = "input too large for zlib";
        goto done;
    }
    if (inflateInit(&zs) != Z_OK) {
        *err = zs.msg ? zs.msg : "inflateInit failed";
        goto done;
    }
    inited = 1;
    cap = n < 256 ? 1024 : (n < max_out / 4 ? n * 4 : max_out);
    if (cap > max_out)
        cap = max_out;
    if ((buf = malloc(cap ? cap : 1)) == NULL) {
        *err = "out of memory";
        goto done;
    }
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)n;
    for (;;) {
        size_t room = cap - used;
        if (room == 0) {
            uint8_t *grown;
            size_t ncap;
            if (cap >= max_out) {
                /* full: only the end of the stream (adler32) may follow */
                uint8_t probe;
                zs.next_out = &probe;
                zs.avail_out = 1;
                zrc = inflate(&zs, Z_NO_FLUSH);
                if (zrc == Z_STREAM_END && zs.avail_out == 1)
                    break;
                *err = zrc == Z_OK || zrc == Z_STREAM_END || zrc == Z_BUF_ERROR
                           ? "inflated data exceeds the size limit"
                           : (zs.msg ? zs.msg : "invalid compressed data");
                goto done;
            }
            ncap = cap > max_out / 2 ? max_out : cap * 2;
            if ((grown = realloc(buf, ncap)) == NULL) {
                *err = "out of memory";
                goto done;
            }
            buf = grown;
            cap = ncap;
            room = cap - used;
        }
        if (room > UINT_MAX)
            room = UINT_MAX;
        zs.next_out = buf + used;
        zs.avail_out = (uInt)room;
        zrc = inflate(&zs, Z_NO_FLUSH);
        used += room - zs.avail_out;
        if (zrc == Z_STREAM_END)
            break;
        if (zrc == Z_BUF_ERROR && zs.avail_in == 0 && zs.avail_out != 0) {
            *err = "incomplete or truncated stream";
            goto done;
        }
        if (zrc != Z_OK && zrc != Z_BUF_ERROR) {
            *err = zrc == Z_MEM_ERROR ? "out of memory"
                                      : (zs.msg ? zs.msg : "invalid compressed data");
            goto done;
        }
    }
    out->data = buf;
    out->len = used;
    buf = NULL;
    rc = 0;
done:
    if (inited)
        inflateEnd(&zs);
    free(buf);
    return rc;
}
