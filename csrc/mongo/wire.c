/* OP_MSG framing (wire.h). */
#include "mongo/wire.h"

#include <stdlib.h>
#include <string.h>

int cm_mongo_buf_reserve(CmMongoBuf *b, size_t more)
{
    if (b->cap - b->len >= more)
        return 0;
    if (more > SIZE_MAX / 2 - b->len)
        return -1;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < more)
        cap *= 2;
    uint8_t *d = realloc(b->data, cap);
    if (d == NULL)
        return -1;
    b->data = d;
    b->cap = cap;
    return 0;
}

int cm_mongo_buf_put(CmMongoBuf *b, const void *p, size_t n)
{
    if (cm_mongo_buf_reserve(b, n) < 0)
        return -1;
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void cm_mongo_buf_consume(CmMongoBuf *b, size_t n)
{
    b->pos += n;
    if (b->pos >= b->len)
        b->pos = b->len = 0;
}

void cm_mongo_buf_compact(CmMongoBuf *b)
{
    if (b->pos == 0)
        return;
    memmove(b->data, b->data + b->pos, b->len - b->pos);
    b->len -= b->pos;
    b->pos = 0;
}

void cm_mongo_buf_free(CmMongoBuf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = b->pos = 0;
}

int cm_mongo_msg_begin(CmMongoBuf *b, size_t *start)
{
    uint8_t head[CM_MONGO_HEADER_LEN + 4] = {0};
    *start = b->len;
    cm_mongo_put_i32(head + 12, CM_MONGO_OP_MSG);
    return cm_mongo_buf_put(b, head, sizeof(head)); /* length and id filled by end */
}

int cm_mongo_msg_body(CmMongoBuf *b, const uint8_t *doc, size_t n)
{
    uint8_t kind = 0;
    if (cm_mongo_buf_reserve(b, n + 1) < 0)
        return -1;
    cm_mongo_buf_put(b, &kind, 1);
    cm_mongo_buf_put(b, doc, n);
    return 0;
}

int cm_mongo_msg_seq_begin(CmMongoBuf *b, const char *id, size_t *mark)
{
    uint8_t head[5] = {1, 0, 0, 0, 0};
    size_t idlen = strlen(id) + 1;
    if (cm_mongo_buf_reserve(b, sizeof(head) + idlen) < 0)
        return -1;
    *mark = b->len + 1; /* where the section's size goes */
    cm_mongo_buf_put(b, head, sizeof(head));
    cm_mongo_buf_put(b, id, idlen);
    return 0;
}

void cm_mongo_msg_seq_end(CmMongoBuf *b, size_t mark)
{
    cm_mongo_put_i32(b->data + mark, (int32_t)(b->len - mark));
}

int cm_mongo_msg_end(CmMongoBuf *b, size_t start, int32_t request_id, size_t max)
{
    size_t n = b->len - start;
    if (n > max || n > INT32_MAX) {
        b->len = start;
        return -1;
    }
    cm_mongo_put_i32(b->data + start, (int32_t)n);
    cm_mongo_put_i32(b->data + start + 4, request_id);
    return 0;
}

int cm_mongo_doc_framed(const uint8_t *doc, size_t n)
{
    if (n < 5)
        return 0;
    int32_t len = cm_mongo_get_i32(doc);
    return len >= 5 && (size_t)len == n && doc[n - 1] == 0;
}

/* The BSON document starting at p, with at most n bytes for it: its length,
 * or 0 when it does not fit or is not framed. */
static size_t doc_at(const uint8_t *p, size_t n)
{
    if (n < 5)
        return 0;
    int32_t len = cm_mongo_get_i32(p);
    if (len < 5 || (size_t)len > n || p[len - 1] != 0)
        return 0;
    return (size_t)len;
}

long cm_mongo_reply_parse(const uint8_t *p, size_t n, size_t max, CmMongoReply *out,
                          const char **err)
{
    if (n < 4)
        return 0;
    int32_t length = cm_mongo_get_i32(p);
    if (length < CM_MONGO_HEADER_LEN + 4 + 1 + 5) {
        *err = "messageLength below the smallest OP_MSG";
        return -1;
    }
    if ((size_t)length > max) {
        *err = "messageLength above maxMessageSizeBytes";
        return -1;
    }
    if (n < (size_t)length)
        return 0;
    memset(out, 0, sizeof(*out));
    out->length = length;
    out->request_id = cm_mongo_get_i32(p + 4);
    out->response_to = cm_mongo_get_i32(p + 8);
    if (cm_mongo_get_i32(p + 12) != CM_MONGO_OP_MSG) {
        *err = "opCode is not OP_MSG";
        return -1;
    }
    out->flags = (uint32_t)cm_mongo_get_i32(p + 16);
    /* bits 0-15 are required to be understood: only the checksum is */
    if ((out->flags & 0xffffu) & ~CM_MONGO_FLAG_CHECKSUM) {
        *err = "flagBits not understood (moreToCome or unknown)";
        return -1;
    }
    size_t end = (size_t)length;
    if (out->flags & CM_MONGO_FLAG_CHECKSUM) {
        if (end < CM_MONGO_HEADER_LEN + 4 + 4) {
            *err = "no room for the checksum";
            return -1;
        }
        end -= 4;
    }
    size_t at = CM_MONGO_HEADER_LEN + 4;
    while (at < end) {
        uint8_t kind = p[at++];
        if (kind == 0) {
            size_t dl = doc_at(p + at, end - at);
            if (dl == 0 || out->body != NULL) {
                *err = dl == 0 ? "body document does not fit the message" : "two body sections";
                return -1;
            }
            out->body = p + at;
            out->body_len = dl;
            at += dl;
        } else if (kind == 1) {
            if (end - at < 4) {
                *err = "document sequence size does not fit the message";
                return -1;
            }
            int32_t size = cm_mongo_get_i32(p + at);
            if (size < 5 || (size_t)size > end - at) {
                *err = "document sequence size does not fit the message";
                return -1;
            }
            size_t sec_end = at + (size_t)size, q = at + 4;
            const uint8_t *nul = memchr(p + q, 0, sec_end - q);
            if (nul == NULL) {
                *err = "document sequence identifier not terminated";
                return -1;
            }
            q = (size_t)(nul - p) + 1;
            while (q < sec_end) {
                size_t dl = doc_at(p + q, sec_end - q);
                if (dl == 0) {
                    *err = "document in a sequence does not fit it";
                    return -1;
                }
                q += dl;
            }
            out->sequences++;
            at = sec_end;
        } else {
            *err = "unknown section kind";
            return -1;
        }
    }
    if (out->body == NULL) {
        *err = "no body section";
        return -1;
    }
    return (long)length;
}
