/* RESP2 request encoding into a growable byte buffer (pure C, no Python).
 *
 * A request is an array of bulk strings: "*<argc>\r\n" then "$<len>\r\n<bytes>\r\n"
 * per argument, which is all a Redis server accepts from clients. Requests are
 * appended to one CmBuf per connection so that everything issued in one loop
 * iteration leaves in one write (automatic pipelining); the connection sends
 * from buf.pos and compacts when it has drained. */
#ifndef CM_RESP_H
#define CM_RESP_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *data;
    size_t pos; /* first byte not yet sent */
    size_t len; /* bytes held */
    size_t cap;
} CmBuf;

/* 0 on success, -1 when out of memory (the buffer is left as it was). */
int cm_buf_reserve(CmBuf *b, size_t extra);
int cm_buf_append(CmBuf *b, const void *p, size_t n);
/* Mark n more bytes as sent; an emptied buffer is reset to its start, and
 * one that grew large while busy is shrunk back. */
void cm_buf_consume(CmBuf *b, size_t n);
void cm_buf_free(CmBuf *b);
static inline size_t cm_buf_pending(const CmBuf *b) { return b->len - b->pos; }
/* Where to undo a half-written request to. It counts the unsent bytes, not an
 * offset, because cm_buf_reserve may move them to the front of the buffer
 * while the request is written; valid until the next cm_buf_consume. */
static inline size_t cm_buf_mark(const CmBuf *b) { return b->len - b->pos; }
static inline void cm_buf_rollback(CmBuf *b, size_t mark) { b->len = b->pos + mark; }

/* "*<argc>\r\n" */
int cm_resp_begin(CmBuf *b, size_t argc);
/* "$<n>\r\n<p>\r\n" */
int cm_resp_arg(CmBuf *b, const void *p, size_t n);
int cm_resp_arg_ll(CmBuf *b, long long v);
/* A whole request from argv/lens; all or nothing (on failure the buffer
 * holds exactly what it held before). */
int cm_resp_command(CmBuf *b, size_t argc, const char *const *argv, const size_t *lens);
/* Decimal digits of v into out (at least 21 bytes); returns the length. */
size_t cm_resp_ll(char *out, long long v);

/* Bounds on one reply (RedisClient max_reply_elements / max_bulk_bytes),
 * checked before memory is reserved for it: by the reader's createArray
 * (an aggregate of n elements reserves 8n bytes before any arrives), and on
 * the bytes the reader holds once complete replies are taken (the reply
 * still arriving: one bulk or line and its header). Shared with
 * fuzz/fuzz_resp.c, which drives hiredis's reader the same way. */
#define CM_RESP_HEADER_SLACK 64
static inline int cm_resp_elements_ok(size_t n, size_t max_elements) { return n <= max_elements; }
/* p, n: the bytes the reader holds of the reply still arriving. Refused:
 * more than a bulk and its header, or a bulk header announcing more than
 * max_bulk, at once, before the bulk's bytes are buffered. The reader has
 * taken the item's type byte by then, so a bulk header waiting for its body
 * reads "<digits>\r\n" (a complete line of any other type would have been
 * taken); "$<digits>" is one not parsed yet. */
static inline int cm_resp_pending_ok(const char *p, size_t n, size_t max_bulk)
{
    size_t len = 0, i, dollar;
    if (n > max_bulk + CM_RESP_HEADER_SLACK)
        return 0;
    dollar = n > 0 && p[0] == '$';
    for (i = dollar; i < n && p[i] >= '0' && p[i] <= '9'; i++)
        if (len <= max_bulk)
            len = len * 10 + (size_t)(p[i] - '0');
    if (len <= max_bulk)
        return 1;
    return !(dollar || (i + 1 < n && p[i] == '\r' && p[i + 1] == '\n'));
}
#endif
