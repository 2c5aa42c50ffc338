/* base64.encodebytes in C, and the decoding of exactly its layout: see
 * base64.h. */
#include "ser/base64.h"

#include <string.h>

#define CM_B64_LINE_IN 57 /* 57 input bytes -> 76 characters per line */
#define CM_B64_LINE_OUT 76

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

/* Decoding. 0x80 marks a byte outside the alphabet ('=' and '\n' too). */
static const uint8_t cm_b64_value[256] = {
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x3e, 0x80, 0x80, 0x80, 0x3f,
    0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
    0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f, 0x30, 0x31, 0x32, 0x33, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
};

static inline int cm_b64_group(const uint8_t *in, uint8_t *out)
{
    uint32_t a = cm_b64_value[in[0]], b = cm_b64_value[in[1]], c = cm_b64_value[in[2]],
             d = cm_b64_value[in[3]];
    uint32_t v = a << 18 | b << 12 | c << 6 | d;
    out[0] = (uint8_t)(v >> 16);
    out[1] = (uint8_t)(v >> 8);
    out[2] = (uint8_t)v;
    return (int)((a | b | c | d) & 0x80);
}

/* The last group: "xx==", "xxx=" or "xxxx"; bytes it holds (its 3 are
 * written), -1 if invalid. */
static int cm_b64_last_group(const uint8_t *in, uint8_t *out)
{
    uint8_t g[4] = {in[0], in[1], in[2], in[3]};
    int n = 3;
    if (g[3] == '=') {
        g[3] = 'A';
        n = 2;
        if (g[2] == '=') {
            g[2] = 'A';
            n = 1;
        }
    }
    return cm_b64_group(g, out) ? -1 : n;
}

int cm_b64_decodebytes(const uint8_t *in, size_t n, uint8_t *out, size_t *outlen)
{
    uint8_t *o = out;
    while (n > 0) {
        const uint8_t *nl = memchr(in, '\n', n < CM_B64_LINE_OUT + 1 ? n : CM_B64_LINE_OUT + 1);
        size_t len, groups, g;
        int last, k;
        if (nl == NULL)
            return -1;
        len = (size_t)(nl - in);
        last = len + 1 == n;
        if (len == 0 || len % 4 != 0 || (len != CM_B64_LINE_OUT && !last))
            return -1;
        groups = len / 4 - (size_t)last;
        for (g = 0; g < groups; g++, in += 4, o += 3)
            if (cm_b64_group(in, o))
                return -1;
        if (last) {
            if ((k = cm_b64_last_group(in, o)) < 0)
                return -1;
            o += k;
            in += 4;
        }
        in++; /* the newline */
        n -= len + 1;
    }
    *outlen = (size_t)(o - out);
    return 0;
}

size_t cm_b64_encode_len(size_t n)
{
    if (n > (SIZE_MAX / 4) * 3 - 3)
        return SIZE_MAX;
    return (n + 2) / 3 * 4;
}

void cm_b64_encode(const uint8_t *in, size_t n, char *out) { cm_b64_chunk(in, n, out); }

int cm_b64_decode(const uint8_t *in, size_t n, uint8_t *out, size_t *outlen)
{
    uint8_t *o = out;
    int k;
    if (n % 4 != 0)
        return -1;
    if (n == 0) {
        *outlen = 0;
        return 0;
    }
    for (; n > 4; n -= 4, in += 4, o += 3)
        if (cm_b64_group(in, o))
            return -1;
    if ((k = cm_b64_last_group(in, o)) < 0)
        return -1;
    /* the bits padding leaves unused must be zero: one encoding per value */
    if ((k == 1 && (cm_b64_value[in[1]] & 0x0f)) || (k == 2 && (cm_b64_value[in[2]] & 0x03)))
        return -1;
    *outlen = (size_t)(o - out) + (size_t)k;
    return 0;
}
