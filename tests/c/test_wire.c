/* C unit tests of csrc/mongo/wire.c (no Python, no BSON library): messages
 * written and read back, and replies that must be refused however they are
 * cut: lengths below the header or above the maximum, sections that do not
 * fit, flag bits we do not understand. Each message is parsed from a buffer
 * of its exact size (valgrind and ASan see any read past it). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mongo/wire.h"

static int failures;
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/* {"ok": 1.0} */
static const unsigned char DOC_OK[] = {0x11, 0, 0, 0, 0x01, 'o',  'k',  0, 0,
                                       0,    0, 0, 0, 0,    0xf0, 0x3f, 0};

/* Parse a copy of p[0..n) in a heap buffer of exactly n bytes. */
static long parse_exact(const unsigned char *p, size_t n, size_t max, CmMongoReply *out,
                        const char **err)
{
    unsigned char *copy = malloc(n ? n : 1);
    memcpy(copy, p, n);
    long rc = cm_mongo_reply_parse(copy, n, max, out, err);
    /* the reply points into the copy: checked before it goes */
    if (rc > 0)
        CHECK(out->body >= copy && out->body + out->body_len <= copy + n);
    free(copy);
    return rc;
}

static void test_roundtrip(void)
{
    CmMongoBuf b = {0};
    size_t start, mark;
    CHECK(cm_mongo_msg_begin(&b, &start) == 0 && start == 0);
    CHECK(cm_mongo_msg_body(&b, DOC_OK, sizeof(DOC_OK)) == 0);
    CHECK(cm_mongo_msg_seq_begin(&b, "updates", &mark) == 0);
    CHECK(cm_mongo_buf_put(&b, DOC_OK, sizeof(DOC_OK)) == 0);
    CHECK(cm_mongo_buf_put(&b, DOC_OK, sizeof(DOC_OK)) == 0);
    cm_mongo_msg_seq_end(&b, mark);
    CHECK(cm_mongo_msg_end(&b, start, 42, CM_MONGO_MAX_MESSAGE) == 0);
    size_t n = cm_mongo_buf_pending(&b);
    CHECK(n == 16 + 4 + 1 + sizeof(DOC_OK) + 1 + 4 + 8 + 2 * sizeof(DOC_OK));
    CHECK(cm_mongo_get_i32(b.data) == (int32_t)n);
    CHECK(cm_mongo_get_i32(b.data + 4) == 42);
    CHECK(cm_mongo_get_i32(b.data + 12) == CM_MONGO_OP_MSG);

    CmMongoReply r;
    const char *err = NULL;
    /* every prefix is incomplete, never an error */
    for (size_t cut = 0; cut < n; cut++)
        CHECK(parse_exact(b.data, cut, CM_MONGO_MAX_MESSAGE, &r, &err) == 0);
    CHECK(parse_exact(b.data, n, CM_MONGO_MAX_MESSAGE, &r, &err) == (long)n);
    CHECK(r.request_id == 42 && r.response_to == 0 && r.sequences == 1);
    CHECK(r.body_len == sizeof(DOC_OK));
    CHECK(cm_mongo_doc_framed(DOC_OK, sizeof(DOC_OK)));
    /* a message longer than the maximum is dropped when written */
    size_t before = b.len;
    CHECK(cm_mongo_msg_begin(&b, &start) == 0);
    CHECK(cm_mongo_msg_body(&b, DOC_OK, sizeof(DOC_OK)) == 0);
    CHECK(cm_mongo_msg_end(&b, start, 43, 20) == -1 && b.len == before);
    cm_mongo_buf_consume(&b, n);
    CHECK(b.len == 0 && b.pos == 0);
    cm_mongo_buf_free(&b);
}

/* A reply built by hand: header, flags, then the given section bytes. */
static size_t reply(unsigned char *out, int32_t length, int32_t opcode, uint32_t flags,
                    const unsigned char *sections, size_t n)
{
    cm_mongo_put_i32(out, length);
    cm_mongo_put_i32(out + 4, 7);
    cm_mongo_put_i32(out + 8, 42);
    cm_mongo_put_i32(out + 12, opcode);
    cm_mongo_put_i32(out + 16, (int32_t)flags);
    memcpy(out + 20, sections, n);
    return 20 + n;
}

static void expect_invalid(const unsigned char *p, size_t n, size_t max, const char *why)
{
    CmMongoReply r;
    const char *err = NULL;
    long rc = parse_exact(p, n, max, &r, &err);
    if (rc != -1 || err == NULL || strstr(err, why) == NULL) {
        fprintf(stderr, "expected invalid (%s), got %ld (%s)\n", why, rc, err ? err : "-");
        failures++;
    }
}

static void test_hostile(void)
{
    unsigned char sec[64], m[128];
    size_t n;
    sec[0] = 0;
    memcpy(sec + 1, DOC_OK, sizeof(DOC_OK));
    size_t body = 1 + sizeof(DOC_OK);
    int32_t good = (int32_t)(20 + body);

    /* lengths refused from their first 4 bytes */
    n = reply(m, 12, CM_MONGO_OP_MSG, 0, sec, body);
    expect_invalid(m, 4, CM_MONGO_MAX_MESSAGE, "below");
    expect_invalid(m, n, CM_MONGO_MAX_MESSAGE, "below");
    n = reply(m, -5, CM_MONGO_OP_MSG, 0, sec, body);
    expect_invalid(m, 4, CM_MONGO_MAX_MESSAGE, "below");
    n = reply(m, 0x7ffffff0, CM_MONGO_OP_MSG, 0, sec, body);
    expect_invalid(m, 4, CM_MONGO_MAX_MESSAGE, "above");
    n = reply(m, good, CM_MONGO_OP_MSG, 0, sec, body);
    expect_invalid(m, n, (size_t)good - 1, "above");

    /* the good one parses */
    CmMongoReply r;
    const char *err = NULL;
    CHECK(parse_exact(m, n, CM_MONGO_MAX_MESSAGE, &r, &err) == good);
    CHECK(r.response_to == 42 && r.body_len == sizeof(DOC_OK));

    n = reply(m, good, 2004, 0, sec, body);
    expect_invalid(m, n, CM_MONGO_MAX_MESSAGE, "opCode");
    n = reply(m, good, CM_MONGO_OP_MSG, CM_MONGO_FLAG_MORE_TO_COME, sec, body);
    expect_invalid(m, n, CM_MONGO_MAX_MESSAGE, "flagBits");
    n = reply(m, good, CM_MONGO_OP_MSG, 0x4, sec, body);
    expect_invalid(m, n, CM_MONGO_MAX_MESSAGE, "flagBits");
    /* optional bits (16 and up) are ignored */
    n = reply(m, good, CM_MONGO_OP_MSG, 0x10000, sec, body);
    CHECK(parse_exact(m, n, CM_MONGO_MAX_MESSAGE, &r, &err) == good);

    /* a checksum takes the last 4 bytes: the body no longer fits */
    n = reply(m, good, CM_MONGO_OP_MSG, CM_MONGO_FLAG_CHECKSUM, sec, body);
    expect_invalid(m, n, CM_MONGO_MAX_MESSAGE, "body");
    /* with room for it, fine */
    memset(m + n, 0xAB, 4);
    cm_mongo_put_i32(m, good + 4);
    CHECK(parse_exact(m, n + 4, CM_MONGO_MAX_MESSAGE, &r, &err) == good + 4);

    /* a body document claiming more than the message holds */
    unsigned char bad[64];
    memcpy(bad, sec, body);
    cm_mongo_put_i32(bad + 1, 1000);
    n = reply(m, good, CM_MONGO_OP_MSG, 0, bad, body);
    expect_invalid(m, n, CM_MONGO_MAX_MESSAGE, "body");
    /* a body document not ending with NUL */
    memcpy(bad, sec, body);
    bad[body - 1] = 1;
    n = reply(m, good, CM_MONGO_OP_MSG, 0, bad, body);
    expect_invalid(m, n, CM_MONGO_MAX_MESSAGE, "body");
    /* a body document length below 5 */
    memcpy(bad, sec, body);
    cm_mongo_put_i32(bad + 1, 4);
    n = reply(m, good, CM_MONGO_OP_MSG, 0, bad, body);
    expect_invalid(m, n, CM_MONGO_MAX_MESSAGE, "body");
    /* an unknown section kind */
    memcpy(bad, sec, body);
    bad[0] = 2;
    n = reply(m, good, CM_MONGO_OP_MSG, 0, bad, body);
    expect_invalid(m, n, CM_MONGO_MAX_MESSAGE, "kind");
    /* two bodies */
    memcpy(bad, sec, body);
    memcpy(bad + body, sec, body);
    n = reply(m, (int32_t)(20 + 2 * body), CM_MONGO_OP_MSG, 0, bad, 2 * body);
    expect_invalid(m, n, CM_MONGO_MAX_MESSAGE, "two body");
    /* no body: only a sequence */
    unsigned char seq[64];
    seq[0] = 1;
    cm_mongo_put_i32(seq + 1, (int32_t)(4 + 2 + sizeof(DOC_OK)));
    memcpy(seq + 5, "d", 2);
    memcpy(seq + 7, DOC_OK, sizeof(DOC_OK));
    size_t sl = 7 + sizeof(DOC_OK);
    n = reply(m, (int32_t)(20 + sl), CM_MONGO_OP_MSG, 0, seq, sl);
    expect_invalid(m, n, CM_MONGO_MAX_MESSAGE, "no body");
    /* a sequence whose size runs past the message */
    cm_mongo_put_i32(seq + 1, 500);
    n = reply(m, (int32_t)(20 + sl), CM_MONGO_OP_MSG, 0, seq, sl);
    expect_invalid(m, n, CM_MONGO_MAX_MESSAGE, "sequence size");
    /* a sequence whose document runs past the sequence */
    cm_mongo_put_i32(seq + 1, (int32_t)(4 + 2 + sizeof(DOC_OK) - 1));
    memcpy(bad, seq, sl - 1);
    memcpy(bad + sl - 1, sec, body);
    n = reply(m, (int32_t)(20 + sl - 1 + body), CM_MONGO_OP_MSG, 0, bad, sl - 1 + body);
    expect_invalid(m, n, CM_MONGO_MAX_MESSAGE, "sequence");
    /* an identifier without its NUL */
    unsigned char noid[8] = {1, 7, 0, 0, 0, 'a', 'b', 'c'};
    memcpy(bad, sec, body);
    memcpy(bad + body, noid, sizeof(noid));
    n = reply(m, (int32_t)(20 + body + sizeof(noid)), CM_MONGO_OP_MSG, 0, bad, body + sizeof(noid));
    expect_invalid(m, n, CM_MONGO_MAX_MESSAGE, "identifier");
}

static void test_buffer(void)
{
    CmMongoBuf b = {0};
    char chunk[1000];
    memset(chunk, 'x', sizeof(chunk));
    for (int i = 0; i < 100; i++)
        CHECK(cm_mongo_buf_put(&b, chunk, sizeof(chunk)) == 0);
    CHECK(cm_mongo_buf_pending(&b) == 100000);
    cm_mongo_buf_consume(&b, 99000);
    cm_mongo_buf_compact(&b);
    CHECK(b.pos == 0 && b.len == 1000 && b.data[999] == 'x');
    CHECK(cm_mongo_buf_reserve(&b, (size_t)-1 / 2) == -1); /* refused, not wrapped */
    cm_mongo_buf_free(&b);
    CHECK(b.data == NULL && b.cap == 0);
}

int main(void)
{
    test_roundtrip();
    test_hostile();
    test_buffer();
    if (failures) {
        fprintf(stderr, "test_wire: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_wire: ok\n");
    return 0;
}
