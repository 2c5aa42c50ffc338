/* libFuzzer target for the Redis reply bounds: hiredis's reader, driven the
 * way conn_on_read (csrc/redis) drives it, with object functions that
 * reserve what the Python builders reserve (8 bytes per aggregate element,
 * the bulk's bytes) and refuse what cm_resp_elements_ok refuses.
 *
 * Input: byte 0 picks max_reply_elements (1 << (b % 21)), byte 1
 * max_bulk_bytes (1 << (b % 21)), byte 2 the feed chunk (1..256 bytes); the
 * rest is what the server sends. Findings are crashes, sanitizer reports,
 * and broken bounds:
 *   - no aggregate is built larger than max_reply_elements;
 *   - the reader never holds more than max_bulk_bytes + header + one chunk
 *     of a reply still arriving, and a connection whose pending reply is
 *     above the bound is failed (no more bytes are fed);
 *   - after a refused aggregate the reader reports an error (so the
 *     connection fails at once) and frees what it built (ASan sees leaks).
 * Plain C: csrc/redis/resp.h's inline bounds and hiredis only. */
#include "redis/resp.h"

#include <hiredis/read.h>
#include <stdlib.h>
#include <string.h>

typedef struct FzObj {
    int type;
    size_t n; /* elements (arrays) or bytes (strings) */
    struct FzObj **items;
    char *bytes;
} FzObj;

static size_t fz_max_elements;
static size_t fz_live; /* objects alive: must come back to 0 */

static void fz_free(void *p)
{
    FzObj *o = p;
    if (o == NULL)
        return;
    if (o->items != NULL)
        for (size_t i = 0; i < o->n; i++)
            fz_free(o->items[i]);
    free(o->items);
    free(o->bytes);
    free(o);
    fz_live--;
}

static void *fz_attach(const redisReadTask *task, FzObj *o)
{
    if (o != NULL && task->parent != NULL) {
        FzObj *parent = task->parent->obj;
        if ((size_t)task->idx >= parent->n)
            abort(); /* hiredis wrote past the aggregate it announced */
        parent->items[task->idx] = o;
    }
    return o;
}

static FzObj *fz_new(int type)
{
    FzObj *o = calloc(1, sizeof(*o));
    if (o != NULL) {
        o->type = type;
        fz_live++;
    }
    return o;
}

static void *fz_string(const redisReadTask *task, char *s, size_t len)
{
    FzObj *o = fz_new(task->type);
    if (o == NULL || (o->bytes = malloc(len ? len : 1)) == NULL) {
        fz_free(o);
        return NULL;
    }
    memcpy(o->bytes, s, len);
    o->n = len;
    return fz_attach(task, o);
}

static void *fz_array(const redisReadTask *task, int n)
{
    FzObj *o;
    size_t count = n < 0 ? 0 : (size_t)n;
    if (!cm_resp_elements_ok(count, fz_max_elements))
        return NULL; /* as reply_array: the reader fails */
    if ((o = fz_new(task->type)) == NULL)
        return NULL;
    /* PyList_New(n): every slot reserved up front */
    if (count > 0 && (o->items = calloc(count, sizeof(FzObj *))) == NULL) {
        fz_free(o);
        return NULL;
    }
    o->n = count;
    return fz_attach(task, o);
}

static void *fz_integer(const redisReadTask *task, long long v)
{
    (void)v;
    return fz_attach(task, fz_new(task->type));
}

static void *fz_nil(const redisReadTask *task) { return fz_attach(task, fz_new(task->type)); }

static redisReplyObjectFunctions fz_fns = {
    fz_string, fz_array, fz_integer, fz_nil, fz_free,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    redisReader *r;
    size_t max_bulk, chunk, off;

    if (size < 3)
        return 0;
    fz_max_elements = (size_t)1 << (data[0] % 21);
    max_bulk = (size_t)1 << (data[1] % 21);
    chunk = 1 + data[2];
    data += 3;
    size -= 3;
    if ((r = redisReaderCreateWithFunctions(&fz_fns)) == NULL)
        return 0;
    for (off = 0; off < size;) {
        size_t n = size - off < chunk ? size - off : chunk;
        if (redisReaderFeed(r, (const char *)data + off, n) != REDIS_OK)
            break;
        off += n;
        /* conn_on_read parses before the reader holds more than the bound
         * (and always once the socket has nothing more) */
        if (off < size && cm_resp_pending_ok(r->buf + r->pos, r->len - r->pos, max_bulk))
            continue;
        for (;;) {
            void *reply = NULL;
            if (redisReaderGetReply(r, &reply) != REDIS_OK)
                goto done; /* the connection fails */
            if (reply == NULL)
                break;
            fz_free(reply);
        }
        if (r->len - r->pos > max_bulk + CM_RESP_HEADER_SLACK + chunk)
            abort(); /* held more than the bound allows */
        if (!cm_resp_pending_ok(r->buf + r->pos, r->len - r->pos, max_bulk))
            goto done; /* the connection fails */
    }
done:
    redisReaderFree(r);
    if (fz_live != 0)
        abort(); /* the reader lost an object it was handed */
    return 0;
}
