/* RESP2 request encoding (see resp.h). */
#include "redis/resp.h"

#include <stdlib.h>
#include <string.h>

/* Above this, an idle buffer gives its memory back. */
#define CM_BUF_KEEP (64 * 1024)

int cm_buf_reserve(CmBuf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return 0;
    if (b->pos > 0 && b->cap - (b->len - b->pos) >= extra) {
        /* room enough once the sent prefix is dropped */
        memmove(b->data, b->data + b->pos, b->len - b->pos);
        b->len -= b->pos;
        b->pos = 0;
        return 0;
    }
    size_t need = b->len + extra;
    if (need < extra)
        return -1;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (cap > SIZE_MAX / 2)
            return -1;
        cap *= 2;
    }
    char *p = realloc(b->data, cap);
    if (p == NULL)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

int cm_buf_append(CmBuf *b, const void *p, size_t n)
{
    if (cm_buf_reserve(b, n) < 0)
        return -1;
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void cm_buf_consume(CmBuf *b, size_t n)
{
    b->pos += n;
    if (b->pos < b->len)
        return;
    b->pos = b->len = 0;
    if (b->cap > CM_BUF_KEEP) {
        free(b->data);
        b->data = NULL;
        b->cap = 0;
    }
}

void cm_buf_free(CmBuf *b)
{
    free(b->data);
    b->data = NULL;
    b->pos = b->len = b->cap = 0;
}

size_t cm_resp_ll(char *out, long long v)
{
    char tmp[24];
    size_t n = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    size_t len = 0;
    if (v < 0)
        out[len++] = '-';
    while (n)
        out[len++] = tmp[--n];
    return len;
}

static inline void put_header(CmBuf *b, char kind, unsigned long long n)
{
    char *p = b->data + b->len;
    *p++ = kind;
    p += cm_resp_ll(p, (long long)n);
    *p++ = '\r';
    *p++ = '\n';
    b->len = (size_t)(p - b->data);
}

int cm_resp_begin(CmBuf *b, size_t argc)
{
    if (cm_buf_reserve(b, 24) < 0)
        return -1;
    put_header(b, '*', argc);
    return 0;
}

int cm_resp_arg(CmBuf *b, const void *p, size_t n)
{
    if (n > SIZE_MAX - 32 || cm_buf_reserve(b, n + 32) < 0)
        return -1;
    put_header(b, '$', n);
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len++] = '\r';
    b->data[b->len++] = '\n';
    return 0;
}

int cm_resp_arg_ll(CmBuf *b, long long v)
{
    char digits[24];
    size_t n = cm_resp_ll(digits, v);
    return cm_resp_arg(b, digits, n);
}

int cm_resp_command(CmBuf *b, size_t argc, const char *const *argv, const size_t *lens)
{
    size_t total = 24;
    for (size_t i = 0; i < argc; i++) {
        if (lens[i] > SIZE_MAX - total - 32)
            return -1;
        total += lens[i] + 32;
    }
    if (cm_buf_reserve(b, total) < 0)
        return -1;
    size_t mark = cm_buf_mark(b);
    if (cm_resp_begin(b, argc) < 0)
        goto fail;
    for (size_t i = 0; i < argc; i++)
        if (cm_resp_arg(b, argv[i], lens[i]) < 0)
            goto fail;
    return 0;
fail:
    cm_buf_rollback(b, mark);
    return -1;
}
