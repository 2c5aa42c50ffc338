/* MongoDB's OP_MSG framing, in plain C (no Python, no BSON library): the
 * 16-byte header, flagBits, a kind 0 section (the command or reply body)
 * and kind 1 sections (document sequences). A message and every document
 * in it are checked against the bytes at hand and a maximum length before
 * anything is read from them: a hostile or broken server gets its reply
 * refused, never read past its end.
 *
 * All integers are little-endian on the wire. */
#ifndef CM_MONGO_WIRE_H
#define CM_MONGO_WIRE_H
#include <stddef.h>
#include <stdint.h>

#define CM_MONGO_OP_MSG 2013
#define CM_MONGO_HEADER_LEN 16
/* maxMessageSizeBytes until a server's hello says otherwise */
#define CM_MONGO_MAX_MESSAGE 48000000
/* flagBits: a CRC-32C follows the sections; more replies follow (exhaust,
 * never asked for by us) */
#define CM_MONGO_FLAG_CHECKSUM 0x1u
#define CM_MONGO_FLAG_MORE_TO_COME 0x2u

/* A byte buffer: data[pos..len) is what is still to be sent or parsed. */
typedef struct {
    uint8_t *data;
    size_t len, cap, pos;
} CmMongoBuf;

/* Room for more bytes after len; -1 when out of memory. */
int cm_mongo_buf_reserve(CmMongoBuf *b, size_t more);
int cm_mongo_buf_put(CmMongoBuf *b, const void *p, size_t n);
/* n bytes at pos are done with; an emptied buffer starts over at 0. */
void cm_mongo_buf_consume(CmMongoBuf *b, size_t n);
/* Move the bytes still pending to the front (before reading more). */
void cm_mongo_buf_compact(CmMongoBuf *b);
void cm_mongo_buf_free(CmMongoBuf *b);
static inline size_t cm_mongo_buf_pending(const CmMongoBuf *b) { return b->len - b->pos; }

/* Writing one message: begin (the header and flagBits, *start set to
 * where the message starts), then sections, then end. A failed call leaves
 * the buffer as it was before begin once cm_mongo_msg_abort is called. */
int cm_mongo_msg_begin(CmMongoBuf *b, size_t *start);
/* A kind 0 section: the BSON document doc[0..n). */
int cm_mongo_msg_body(CmMongoBuf *b, const uint8_t *doc, size_t n);
/* A kind 1 section: begin with its identifier (*mark set), append whole
 * BSON documents with cm_mongo_buf_put, then end. */
int cm_mongo_msg_seq_begin(CmMongoBuf *b, const char *id, size_t *mark);
void cm_mongo_msg_seq_end(CmMongoBuf *b, size_t mark);
/* Write the message's length and request id; -1 when it is longer than
 * max (the message is then dropped from the buffer). */
int cm_mongo_msg_end(CmMongoBuf *b, size_t start, int32_t request_id, size_t max);
static inline void cm_mongo_msg_abort(CmMongoBuf *b, size_t start) { b->len = start; }

/* A reply, pointing into the bytes it was parsed from. */
typedef struct {
    int32_t length, request_id, response_to;
    uint32_t flags;
    const uint8_t *body; /* the kind 0 document */
    size_t body_len;
    int sequences; /* kind 1 sections seen (checked, not kept) */
} CmMongoReply;

/* Parse the message at p[0..n). 0: incomplete (more bytes are needed);
 * > 0: the length of the message read into *out; -1: invalid, *err saying
 * why (a static string). A messageLength below the header, above max, or
 * a message whose sections do not fit it exactly is invalid as soon as its
 * first 4 bytes are there. */
long cm_mongo_reply_parse(const uint8_t *p, size_t n, size_t max, CmMongoReply *out,
                          const char **err);

/* 1 when doc[0..n) is framed as one BSON document: its int32 length equals
 * n, is at least 5, and it ends with NUL. The elements are not walked. */
int cm_mongo_doc_framed(const uint8_t *doc, size_t n);

static inline int32_t cm_mongo_get_i32(const uint8_t *p)
{
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                     (uint32_t)p[3] << 24);
}
static inline void cm_mongo_put_i32(uint8_t *p, int32_t v)
{
    uint32_t u = (uint32_t)v;
    p[0] = (uint8_t)u;
    p[1] = (uint8_t)(u >> 8);
    p[2] = (uint8_t)(u >> 16);
    p[3] = (uint8_t)(u >> 24);
}
#endif
