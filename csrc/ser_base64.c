/* base64.encodebytes in C: see ser_base64.h. */
#include "ser_base64.h"

#define CM_B64_LINE_IN 57 /* 57 input bytes -> 76 characters per line */

static const char cm_b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t cm_b64_encodebytes_len(size_t n)
{
    size_t lines, chars;
    if (n == 0)
        return 0;
    if (n > (SIZE_MAX / 4) * 3 - 3)
        return SIZE_MAX;
    chars = (n + 2) / 3 * 4;
    lines = (n + CM_B64_LINE_IN - 1) / CM_B64_LINE_IN;
    return chars + lines;
}

static char *cm_b64_chunk(const uint8_t *in, size_t n, char *out)
{
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8) | in[i + 2];
        *out++ = cm_b64_alphabet[(v >> 18) & 63];
        *out++ = cm_b64_alphabet[(v >> 12) & 63];
        *out++ = cm_b64_alphabet[(v >> 6) & 63];
        *out++ = cm_b64_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        *out++ = cm_b64_alphabet[(v >> 18) & 63];
        *out++ = cm_b64_alphabet[(v >> 12) & 63];
        *out++ = '=';
        *out++ = '=';
    } else if (n - i == 2) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8);
        *out++ = cm_b64_alphabet[(v >> 18) & 63];
        *out++ = cm_b64_alphabet[(v >> 12) & 63];
        *out++ = cm_b64_alphabet[(v >> 6) & 63];
        *out++ = '=';
    }
    return out;
}

void cm_b64_encodebytes(const uint8_t *in, size_t n, char *out)
{
    while (n > 0) {
        size_t take = n < CM_B64_LINE_IN ? n : CM_B64_LINE_IN;
        out = cm_b64_chunk(in, take, out);
        *out++ = '\n';
        in += take;
        n -= take;
    }
}
