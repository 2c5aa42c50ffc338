/* C unit tests of csrc/redis/resp.c and csrc/redis/crc16.c (no Python): request bytes,
 * buffer growth and compaction, CRC16 and hash-tag slots. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis/crc16.h"
#include "redis/resp.h"

static int failures;
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static int buf_is(const CmBuf *b, const char *s)
{
    size_t n = strlen(s);
    return cm_buf_pending(b) == n && memcmp(b->data + b->pos, s, n) == 0;
}

static void test_encode(void)
{
    CmBuf b = {0};
    const char *argv[] = {"SET", "k", ""};
    size_t lens[] = {3, 1, 0};
    CHECK(cm_resp_command(&b, 3, argv, lens) == 0);
    CHECK(buf_is(&b, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"));
    cm_buf_consume(&b, cm_buf_pending(&b));
    CHECK(b.pos == 0 && b.len == 0);

    CHECK(cm_resp_begin(&b, 2) == 0);
    CHECK(cm_resp_arg(&b, "GET", 3) == 0);
    CHECK(cm_resp_arg_ll(&b, -1234567890123LL) == 0);
    CHECK(buf_is(&b, "*2\r\n$3\r\nGET\r\n$14\r\n-1234567890123\r\n"));
    cm_buf_free(&b);

    /* binary-safe, large arguments */
    char *big = malloc(1 << 20);
    memset(big, '\0', 1 << 20);
    CHECK(cm_resp_begin(&b, 1) == 0);
    CHECK(cm_resp_arg(&b, big, 1 << 20) == 0);
    CHECK(cm_buf_pending(&b) == 4 + 10 + (1 << 20) + 2);
    CHECK(memcmp(b.data + 4, "$1048576\r\n", 10) == 0);
    free(big);
    cm_buf_consume(&b, cm_buf_pending(&b));
    CHECK(b.cap == 0 && b.data == NULL); /* large idle buffer given back */
    cm_buf_free(&b);

    char d[24];
    CHECK(cm_resp_ll(d, 0) == 1 && d[0] == '0');
    size_t n = cm_resp_ll(d, -9223372036854775807LL - 1);
    CHECK(n == 20 && memcmp(d, "-9223372036854775808", 20) == 0);
}

static void test_partial_send(void)
{
    CmBuf b = {0};
    for (int i = 0; i < 1000; i++) {
        const char *argv[] = {"GET", "key"};
        size_t lens[] = {3, 3};
        CHECK(cm_resp_command(&b, 2, argv, lens) == 0);
        cm_buf_consume(&b, 7); /* a partial write */
    }
    size_t per = strlen("*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n");
    CHECK(cm_buf_pending(&b) == 1000 * (per - 7));
    CHECK(b.cap < 64 * 1024);
    cm_buf_free(&b);
}

/* Undoing a request after cm_buf_reserve moved the unsent bytes to the front
 * must keep exactly the bytes that were pending before it began. */
static void test_rollback_after_compaction(void)
{
    CmBuf b = {0};
    char fill[240];
    memset(fill, 'x', sizeof(fill));
    CHECK(cm_buf_append(&b, fill, sizeof(fill)) == 0);
    CHECK(cm_buf_append(&b, "tail", 4) == 0);
    CHECK(b.cap == 256);
    cm_buf_consume(&b, sizeof(fill)); /* a partial write: "tail" is unsent */
    size_t mark = cm_buf_mark(&b);
    CHECK(cm_resp_begin(&b, 3) == 0);
    CHECK(cm_resp_arg(&b, "MGET", 4) == 0);
    CHECK(b.pos == 0); /* the sent prefix was dropped to make room */
    cm_buf_rollback(&b, mark);
    CHECK(buf_is(&b, "tail"));
    cm_buf_free(&b);
}

static void test_crc16(void)
{
    CHECK(cm_crc16("123456789", 9) == 0x31c3);
    CHECK(cm_key_slot("foo", 3) == 12182);
    CHECK(cm_key_slot("bar", 3) == 5061);
    CHECK(cm_key_slot("hello", 5) == 866);
    CHECK(cm_key_slot("{user1000}.following", 20) == cm_key_slot("{user1000}.followers", 20));
    CHECK(cm_key_slot("{user1000}.following", 20) == cm_key_slot("user1000", 8));
    /* empty tag or no closing brace: the whole key */
    CHECK(cm_key_slot("foo{}{bar}", 10) == (cm_crc16("foo{}{bar}", 10) & 16383));
    CHECK(cm_key_slot("foo{{bar}}zap", 13) == cm_key_slot("{bar", 4));
    CHECK(cm_key_slot("foo{bar}{zap}", 13) == cm_key_slot("bar", 3));
    CHECK(cm_key_slot("{abc", 4) == (cm_crc16("{abc", 4) & 16383));
    CHECK(cm_key_slot("", 0) == 0);
}

/* the reply bounds conn_on_read applies (resp.h); p is what the reader still
 * holds, its type byte already taken unless it starts with '$' */
static int pending_ok(const char *p, size_t max_bulk)
{
    return cm_resp_pending_ok(p, strlen(p), max_bulk);
}

static void test_reply_bounds(void)
{
    CHECK(cm_resp_elements_ok(0, 4) && cm_resp_elements_ok(4, 4) && !cm_resp_elements_ok(5, 4));
    CHECK(!cm_resp_elements_ok(2147483647u, (size_t)1 << 20));
    /* a bulk header waiting for its body: judged by the length it announces */
    CHECK(pending_ok("", 4));
    CHECK(pending_ok("4\r\nab", 4));
    CHECK(!pending_ok("5\r\nab", 4));
    CHECK(!pending_ok("2147483647\r\n", (size_t)512 << 20));
    CHECK(!pending_ok("99999999999999999999999999999\r\n", 4)); /* no overflow */
    CHECK(pending_ok("$4", 4) && !pending_ok("$5", 4) && !pending_ok("$2147483647", 1 << 20));
    /* an integer or a header line still arriving is not a bulk header */
    CHECK(pending_ok("12345678", 4));
    CHECK(pending_ok("12345678\r", 4));
    CHECK(pending_ok("-1\r\n", 4));
    CHECK(pending_ok("OK status", 4)); /* 9 bytes <= 4 + slack */
    /* whatever it is, not more than a bulk and its header */
    {
        char big[200];
        memset(big, 'x', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        CHECK(pending_ok(big, 200 - 1 - CM_RESP_HEADER_SLACK));
        CHECK(!pending_ok(big, 200 - 2 - CM_RESP_HEADER_SLACK));
    }
}

int main(void)
{
    test_encode();
    test_reply_bounds();
    test_partial_send();
    test_rollback_after_compaction();
    test_crc16();
    if (failures) {
        fprintf(stderr, "test_resp: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_resp: all passed\n");
    return 0;
}
