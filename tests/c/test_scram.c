/* C unit tests of csrc/mongo/scram.c and the one-line base64 of csrc/ser/base64.c (no
 * Python): the RFC 5802 / RFC 7677 example conversations, MongoDB's SCRAM-SHA-1 example
 * (mongodb/specifications source/auth/auth.md), and hostile server messages. Server
 * messages are passed in buffers of exactly their length (no NUL after them) so that the
 * sanitizer build catches any read past them. scram.c is included rather than linked so
 * that the cache tests can see the cache entry. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mongo/scram.c"

static int failures, checks;
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/* A copy of s in a buffer of exactly its length. */
static char *exact(const char *s)
{
    size_t n = strlen(s);
    char *p = malloc(n ? n : 1);
    memcpy(p, s, n);
    return p;
}

static int is(const char *got, size_t len, const char *want)
{
    return len == strlen(want) && memcmp(got, want, len) == 0;
}

static int err_is(const char *err, const char *want)
{
    if (err != NULL && strstr(err, want) != NULL)
        return 1;
    fprintf(stderr, "  error was: %s\n  expected:  %s\n", err ? err : "(null)", want);
    return 0;
}

/* --- base64 ------------------------------------------------------------------------ */

static void test_base64(void)
{
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const coded[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                        "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    static const char *const bad[] = {"Zm9",  "Zm9v\n", "Zg=A",     "Z===", "Zm9v====", "Zm 9",
                                      "Zm9!", "=Zm9",   "Zg==Zm9v", "Zm=v", "Zh==",     "Zm9="};
    char out[16];
    uint8_t dec[16];
    size_t i, n;
    for (i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
        size_t len = strlen(plain[i]);
        CHECK(cm_b64_encode_len(len) == strlen(coded[i]));
        cm_b64_encode((const uint8_t *)plain[i], len, out);
        CHECK(memcmp(out, coded[i], strlen(coded[i])) == 0);
        char *in = exact(coded[i]);
        CHECK(cm_b64_decode((const uint8_t *)in, strlen(coded[i]), dec, &n) == 0);
        CHECK(n == len && memcmp(dec, plain[i], len) == 0);
        free(in);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *in = exact(bad[i]);
        CHECK(cm_b64_decode((const uint8_t *)in, strlen(bad[i]), dec, &n) == -1);
        free(in);
    }
    CHECK(cm_b64_encode_len(SIZE_MAX) == SIZE_MAX);
}

/* --- example conversations ------------------------------------------------------------ */

typedef struct {
    CmScramMech mech;
    const char *user, *password, *nonce;
    const char *client_first, *server_first, *client_final, *server_final;
} Vector;

/* RFC 5802 section 5 (SCRAM-SHA-1, the password used as is). */
static const Vector RFC5802 = {
    CM_SCRAM_SHA_1,
    "user",
    "pencil",
    "fyko+d2lbbFgONRv9qkxdawL",
    "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
    "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
    "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
    "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
};

/* RFC 7677 section 3 (SCRAM-SHA-256); also MongoDB's SCRAM-SHA-256 example. */
static const Vector RFC7677 = {
    CM_SCRAM_SHA_256,
    "user",
    "pencil",
    "rOprNGfwEbeRWgbNEkqO",
    "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
};

/* MongoDB's SCRAM-SHA-1 example: keys from hex(MD5("user:mongo:pencil")). */
static const Vector MONGO_SHA1 = {
    CM_SCRAM_SHA_1_MONGO,
    "user",
    "pencil",
    "fyko+d2lbbFgONRv9qkxdawL",
    "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
    "r=fyko+d2lbbFgONRv9qkxdawLHo+Vgk7qvUOKUwuWLIWg4l/9SraGMHEE,s=rQ9ZY3MntBeuP3E1TDVC4w==,"
    "i=10000",
    "c=biws,r=fyko+d2lbbFgONRv9qkxdawLHo+Vgk7qvUOKUwuWLIWg4l/9SraGMHEE,"
    "p=MC2T8BvbmWRckDw8oWl5IVghwCY=",
    "v=UMWeI25JD1yNYZRMpZ4VHvhZ9e0=",
};

static CmScram *start(const Vector *v, CmScramCache *cache)
{
    CmScram *s = NULL;
    const char *err = NULL, *msg = NULL;
    size_t len = 0;
    char *nonce = exact(v->nonce);
    int rc = cm_scram_new(&s, v->mech, v->user, strlen(v->user), v->password, strlen(v->password),
                          nonce, strlen(v->nonce), cache, &err);
    free(nonce);
    CHECK(rc == CM_SCRAM_OK && s != NULL);
    if (s == NULL)
        return NULL;
    CHECK(cm_scram_client_first(s, &msg, &len, &err) == CM_SCRAM_OK);
    CHECK(is(msg, len, v->client_first));
    return s;
}

/* client-final for server_first; its result, NULL on failure (error in *err). */
static const char *final_for(CmScram *s, const char *server_first, size_t *len, const char **err)
{
    char *in = exact(server_first);
    const char *msg = NULL;
    int rc = cm_scram_client_final(s, in, strlen(server_first), &msg, len, err);
    free(in);
    return rc == CM_SCRAM_OK ? msg : NULL;
}

static int verify(CmScram *s, const char *server_final, const char **err)
{
    char *in = exact(server_final);
    int rc = cm_scram_verify_server_final(s, in, strlen(server_final), err);
    free(in);
    return rc;
}

static void run_vector(const Vector *v, CmScramCache *cache)
{
    const char *err = NULL, *msg = NULL;
    size_t len = 0;
    CmScram *s = start(v, cache);
    if (s == NULL)
        return;
    msg = final_for(s, v->server_first, &len, &err);
    CHECK(msg != NULL && is(msg, len, v->client_final));
    CHECK(verify(s, v->server_final, &err) == CM_SCRAM_OK);
    cm_scram_free(s);
}

static void test_vectors(void)
{
    run_vector(&RFC5802, NULL);
    run_vector(&RFC7677, NULL);
    run_vector(&MONGO_SHA1, NULL);
    CHECK(strcmp(cm_scram_mech_name(CM_SCRAM_SHA_1_MONGO), "SCRAM-SHA-1") == 0);
    CHECK(strcmp(cm_scram_mech_name(CM_SCRAM_SHA_256), "SCRAM-SHA-256") == 0);
}

/* Extensions after i= and after v= are ignored, but i='s extension is part of the
 * AuthMessage, so the proof changes with it. */
static void test_extensions(void)
{
    const char *err = NULL, *msg = NULL;
    size_t len = 0;
    CmScram *s = start(&RFC5802, NULL);
    msg = final_for(s, "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096,x=1",
                    &len, &err);
    CHECK(msg != NULL && len == strlen(RFC5802.client_final));
    CHECK(msg != NULL && memcmp(msg, RFC5802.client_final, len) != 0);
    cm_scram_free(s);

    s = start(&RFC5802, NULL);
    CHECK(final_for(s, RFC5802.server_first, &len, &err) != NULL);
    CHECK(verify(s, "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=,x=y", &err) == CM_SCRAM_OK);
    cm_scram_free(s);
}

static void test_username_and_nonce(void)
{
    CmScram *s = NULL, *t = NULL;
    const char *err = NULL, *msg = NULL, *msg2 = NULL;
    size_t len = 0, len2 = 0;
    CHECK(cm_scram_new(&s, CM_SCRAM_SHA_256, "a,b=c", 5, "p", 1, "abc", 3, NULL, &err) == 0);
    CHECK(cm_scram_client_first(s, &msg, &len, &err) == 0);
    CHECK(is(msg, len, "n,,n=a=2Cb=3Dc,r=abc"));
    cm_scram_free(s);

    /* drawn nonces: 24 random bytes in base64, different each time */
    CHECK(cm_scram_new(&s, CM_SCRAM_SHA_256, "u", 1, "p", 1, NULL, 0, NULL, &err) == 0);
    CHECK(cm_scram_new(&t, CM_SCRAM_SHA_256, "u", 1, "p", 1, NULL, 0, NULL, &err) == 0);
    CHECK(cm_scram_client_first(s, &msg, &len, &err) == 0);
    CHECK(cm_scram_client_first(t, &msg2, &len2, &err) == 0);
    CHECK(len == 9 + 32 && len2 == len && memcmp(msg, "n,,n=u,r=", 9) == 0);
    CHECK(memcmp(msg + 9, msg2 + 9, 32) != 0 && nonce_ok(msg + 9, 32));
    cm_scram_free(s);
    cm_scram_free(t);
}

static void test_bad_arguments(void)
{
    CmScram *s = NULL;
    const char *err = NULL;
    CHECK(cm_scram_new(&s, CM_SCRAM_SHA_256, "", 0, "p", 1, NULL, 0, NULL, &err) == CM_SCRAM_ERROR);
    CHECK(err_is(err, "username must be non-empty"));
    CHECK(cm_scram_new(&s, CM_SCRAM_SHA_256, "a\0b", 3, "p", 1, NULL, 0, NULL, &err) ==
          CM_SCRAM_ERROR);
    CHECK(err_is(err, "no NUL"));
    CHECK(cm_scram_new(&s, (CmScramMech)7, "u", 1, "p", 1, NULL, 0, NULL, &err) == CM_SCRAM_ERROR);
    CHECK(err_is(err, "unknown mechanism"));
    CHECK(cm_scram_new(&s, CM_SCRAM_SHA_256, "u", 1, "p\xc3\xa9", 3, NULL, 0, NULL, &err) ==
          CM_SCRAM_ERROR);
    CHECK(err_is(err, "password is not ASCII"));
    CHECK(cm_scram_new(&s, CM_SCRAM_SHA_1, "u", 1, "p\xc2\xad", 3, NULL, 0, NULL, &err) ==
          CM_SCRAM_ERROR);
    CHECK(err_is(err, "password is not ASCII"));
    CHECK(cm_scram_new(&s, CM_SCRAM_SHA_256, "u", 1, "p\tq", 3, NULL, 0, NULL, &err) ==
          CM_SCRAM_ERROR);
    CHECK(err_is(err, "control character"));
    CHECK(cm_scram_new(&s, CM_SCRAM_SHA_256, "u", 1, "p\x7f", 2, NULL, 0, NULL, &err) ==
          CM_SCRAM_ERROR);
    CHECK(err_is(err, "control character"));
    CHECK(cm_scram_new(&s, CM_SCRAM_SHA_256, "u", 1, "p", 1, "a,b", 3, NULL, &err) ==
          CM_SCRAM_ERROR);
    CHECK(err_is(err, "client nonce"));
    CHECK(cm_scram_new(&s, CM_SCRAM_SHA_256, "u", 1, "p", 1, "", 0, NULL, &err) == CM_SCRAM_ERROR);
    CHECK(err_is(err, "client nonce"));
    {
        size_t n = CM_SCRAM_MAX_MESSAGE + 1;
        char *big = malloc(n);
        memset(big, 'a', n);
        CHECK(cm_scram_new(&s, CM_SCRAM_SHA_256, big, n, "p", 1, NULL, 0, NULL, &err) ==
              CM_SCRAM_ERROR);
        CHECK(err_is(err, "longer than 65536 bytes"));
        CHECK(cm_scram_new(&s, CM_SCRAM_SHA_256, "u", 1, big, n, NULL, 0, NULL, &err) ==
              CM_SCRAM_ERROR);
        CHECK(err_is(err, "longer than 65536 bytes"));
        CHECK(cm_scram_new(&s, CM_SCRAM_SHA_256, "u", 1, "p", 1, big, n, NULL, &err) ==
              CM_SCRAM_ERROR);
        CHECK(err_is(err, "longer than 65536 bytes"));
        free(big);
    }
    CHECK(s == NULL);

    /* MongoDB's SCRAM-SHA-1 hashes the password bytes as given: no SASLprep, so any bytes */
    CHECK(cm_scram_new(&s, CM_SCRAM_SHA_1_MONGO, "u", 1, "p\xc3\xa9\t", 4, NULL, 0, NULL, &err) ==
          CM_SCRAM_OK);
    cm_scram_free(s);
    /* an empty password is the server's to refuse */
    s = NULL;
    CHECK(cm_scram_new(&s, CM_SCRAM_SHA_256, "u", 1, NULL, 0, NULL, 0, NULL, &err) == CM_SCRAM_OK);
    cm_scram_free(s);
    cm_scram_free(NULL);
    cm_scram_cache_free(NULL);
}

static void test_out_of_order(void)
{
    const char *err = NULL, *msg = NULL;
    size_t len = 0;
    CmScram *s = NULL;
    CHECK(cm_scram_new(&s, CM_SCRAM_SHA_1, "user", 4, "pencil", 6, RFC5802.nonce,
                       strlen(RFC5802.nonce), NULL, &err) == 0);
    CHECK(final_for(s, RFC5802.server_first, &len, &err) == NULL);
    CHECK(err_is(err, "out of order"));
    CHECK(cm_scram_client_first(s, &msg, &len, &err) == CM_SCRAM_ERROR); /* failed for good */
    cm_scram_free(s);

    s = start(&RFC5802, NULL);
    CHECK(verify(s, RFC5802.server_final, &err) == CM_SCRAM_ERROR);
    CHECK(err_is(err, "out of order"));
    cm_scram_free(s);

    s = start(&RFC5802, NULL);
    CHECK(final_for(s, RFC5802.server_first, &len, &err) != NULL);
    CHECK(verify(s, RFC5802.server_final, &err) == CM_SCRAM_OK);
    CHECK(verify(s, RFC5802.server_final, &err) == CM_SCRAM_ERROR); /* no second verify */
    CHECK(err_is(err, "out of order"));
    cm_scram_free(s);
}

/* --- hostile server-first messages ------------------------------------------------------- */

static void bad_first(const char *server_first, const char *want)
{
    const char *err = NULL, *msg = NULL;
    size_t len = 0;
    CmScram *s = start(&RFC5802, NULL);
    if (s == NULL)
        return;
    CHECK(final_for(s, server_first, &len, &err) == NULL);
    if (!err_is(err, want)) {
        fprintf(stderr, "  for server-first %s\n", server_first);
        failures++;
    }
    CHECK(cm_scram_client_final(s, RFC5802.server_first, strlen(RFC5802.server_first), &msg, &len,
                                &err) == CM_SCRAM_ERROR); /* no retry after a failure */
    cm_scram_free(s);
}

#define N "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j"
#define SALT "s=QSXCR+Q6sek8bf92"

static void test_hostile_first(void)
{
    static const char missing[] = "lacks r=, s= or i=";
    static const char nonce[] = "does not extend the client nonce";
    static const char salt[] = "salt (s=) is not valid base64";
    static const char iter[] = "iteration count (i=)";

    bad_first("", missing);
    bad_first("r", missing);
    bad_first("r=", missing);
    bad_first(N, missing);
    bad_first(N ",", missing);
    bad_first(N "," SALT, missing);
    bad_first(N "," SALT ",", missing);
    bad_first(N "," SALT ",i", missing);
    bad_first(SALT "," N ",i=4096", missing);
    bad_first(N ",i=4096," SALT, missing);
    bad_first(N ",x=1," SALT ",i=4096", missing);
    bad_first("m=ext," N "," SALT ",i=4096", "extension (m=)");

    bad_first("r=," SALT ",i=4096", nonce);
    bad_first("r=fyko+d2lbbFgONRv9qkxdawL," SALT ",i=4096", nonce); /* no server part */
    bad_first("r=Xyko+d2lbbFgONRv9qkxdawL3rfc," SALT ",i=4096", nonce);
    bad_first("r=fyko+d2lbbFgONRv9qkxdaw," SALT ",i=4096", nonce); /* shorter */
    bad_first("r=fyko+d2lbbFgONRv9qkxdawL3r\x01," SALT ",i=4096", nonce);
    bad_first("r=fyko+d2lbbFgONRv9qkxdawL3r c," SALT ",i=4096", nonce);

    bad_first(N ",s=,i=4096", salt);
    bad_first(N ",s=QSXCR+Q6sek8bf9,i=4096", salt);
    bad_first(N ",s=QSXC!+Q6sek8bf92,i=4096", salt);
    bad_first(N ",s=QSXCR+Q6sek8bf92=,i=4096", salt);
    bad_first(N ",s=QSXC=+Q6sek8bf92,i=4096", salt);

    bad_first(N "," SALT ",i=0", iter);
    bad_first(N "," SALT ",i=1", iter);
    bad_first(N "," SALT ",i=4095", iter);
    bad_first(N "," SALT ",i=", iter);
    bad_first(N "," SALT ",i=-4096", iter);
    bad_first(N "," SALT ",i=+4096", iter);
    bad_first(N "," SALT ",i=04096", iter);
    bad_first(N "," SALT ",i=4096x", iter);
    bad_first(N "," SALT ",i= 4096", iter);
    bad_first(N "," SALT ",i=10000001", iter);
    bad_first(N "," SALT ",i=4294967296", iter);
    bad_first(N "," SALT ",i=99999999999999999999999999", iter);

    /* a message above the bound is refused before anything is parsed */
    {
        size_t n = CM_SCRAM_MAX_MESSAGE + 1;
        char *big = malloc(n + 1);
        memset(big, 'a', n);
        memcpy(big, N "," SALT ",i=4096,x=", strlen(N "," SALT ",i=4096,x="));
        big[n] = '\0';
        bad_first(big, "too long");
        free(big);
    }
}

/* --- hostile server-final messages ------------------------------------------------------- */

static void bad_final(const Vector *v, const char *server_final, const char *want)
{
    const char *err = NULL;
    size_t len = 0;
    CmScram *s = start(v, NULL);
    if (s == NULL)
        return;
    CHECK(final_for(s, v->server_first, &len, &err) != NULL);
    CHECK(verify(s, server_final, &err) == CM_SCRAM_ERROR);
    if (!err_is(err, want)) {
        fprintf(stderr, "  for server-final %s\n", server_final);
        failures++;
    }
    /* a refused signature is not accepted on a second try either */
    CHECK(verify(s, v->server_final, &err) == CM_SCRAM_ERROR);
    cm_scram_free(s);
}

static void test_hostile_final(void)
{
    static const char wrong[] = "server signature is wrong";
    static const char bad64[] = "server signature (v=) is not valid base64";
    /* signatures with a character changed, of another conversation, of the other hash */
    bad_final(&RFC5802, "v=smF9pqV8S7suAoZWja4dJRkFsKQ=", wrong);
    bad_final(&RFC5802, MONGO_SHA1.server_final, wrong);
    bad_final(&RFC7677, "v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", wrong);
    bad_final(&RFC7677, "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=", bad64);
    bad_final(&RFC5802, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", bad64);
    bad_final(&RFC5802, "v=", bad64);
    bad_final(&RFC5802, "v=rmF9pqV8S7suAoZWja4dJRkFsKQ", bad64);
    bad_final(&RFC5802, "v=rmF9pqV8S7suAoZWja4dJRkFsK!=", bad64);
    bad_final(&RFC5802, "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=rmF9pqV8S7suAoZWja4dJRkFsKQ=", bad64);
    bad_final(&RFC5802, "", "neither v= nor e=");
    bad_final(&RFC5802, "v", "neither v= nor e=");
    bad_final(&RFC5802, "x=rmF9pqV8S7suAoZWja4dJRkFsKQ=", "neither v= nor e=");
    bad_final(&RFC5802, "e=invalid-proof", "refused authentication: invalid-proof");
    bad_final(&RFC5802, "e=other-error,v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
              "refused authentication: other-error");
    bad_final(&RFC5802, "e=a\x01\x7f\xff", "refused authentication: a???");
    bad_final(&RFC5802, "e=", "refused authentication: ");
}

static void test_long_server_error(void)
{
    const char *err = NULL;
    size_t len = 0, n = 10000;
    char *msg = malloc(n + 1);
    CmScram *s = start(&RFC5802, NULL);
    memset(msg, 'x', n);
    memcpy(msg, "e=", 2);
    msg[n] = '\0';
    CHECK(final_for(s, RFC5802.server_first, &len, &err) != NULL);
    CHECK(verify(s, msg, &err) == CM_SCRAM_ERROR);
    CHECK(err_is(err, "refused authentication: xxx"));
    CHECK(strlen(err) == strlen("SCRAM: the server refused authentication: ") + CM_SCRAM_MAX_QUOTE);
    free(msg);
    cm_scram_free(s);
}

/* Every proper prefix of a valid server message is refused; so is every message with one
 * byte replaced by a separator, a NUL or a non-ASCII byte, but for '=' in the server's part
 * of the nonce (printable, so a valid nonce). None is read past its end. */
static void test_truncated_and_damaged(const Vector *v)
{
    static const char subst[] = {',', '=', '\0', '\xff'};
    const char *err = NULL;
    size_t n, i, k, len = 0, first = strlen(v->server_first), last = strlen(v->server_final);
    size_t server_nonce = 2 + strlen(v->nonce);
    size_t nonce_end = (size_t)(strchr(v->server_first, ',') - v->server_first);
    CmScram *s;
    CmScramCache *cache = cm_scram_cache_new(); /* one PBKDF2, not hundreds */
    for (n = 0; n < first; n++) {
        char *in = malloc(n ? n : 1);
        const char *msg = NULL;
        memcpy(in, v->server_first, n);
        s = start(v, cache);
        CHECK(cm_scram_client_final(s, in, n, &msg, &len, &err) == CM_SCRAM_ERROR);
        cm_scram_free(s);
        free(in);
    }
    for (n = 0; n < last; n++) {
        char *in = malloc(n ? n : 1);
        memcpy(in, v->server_final, n);
        s = start(v, cache);
        CHECK(final_for(s, v->server_first, &len, &err) != NULL);
        CHECK(cm_scram_verify_server_final(s, in, n, &err) == CM_SCRAM_ERROR);
        cm_scram_free(s);
        free(in);
    }
    for (i = 0; i < last; i++) {
        for (k = 0; k < sizeof(subst); k++) {
            char *in;
            if (v->server_final[i] == subst[k])
                continue;
            in = exact(v->server_final);
            in[i] = subst[k];
            s = start(v, cache);
            CHECK(final_for(s, v->server_first, &len, &err) != NULL);
            CHECK(cm_scram_verify_server_final(s, in, last, &err) == CM_SCRAM_ERROR);
            cm_scram_free(s);
            free(in);
        }
    }
    for (i = 0; i < first; i++) {
        for (k = 0; k < sizeof(subst); k++) {
            const char *msg = NULL;
            int ok = subst[k] == '=' && i >= server_nonce && i < nonce_end;
            char *in;
            if (v->server_first[i] == subst[k])
                continue;
            in = exact(v->server_first);
            in[i] = subst[k];
            s = start(v, cache);
            CHECK(cm_scram_client_final(s, in, first, &msg, &len, &err) ==
                  (ok ? CM_SCRAM_OK : CM_SCRAM_ERROR));
            cm_scram_free(s);
            free(in);
        }
    }
    cm_scram_cache_free(cache);
}

/* --- the cache ------------------------------------------------------------------------ */

static void test_cache(void)
{
    CmScramCache *c = cm_scram_cache_new();
    const char *err = NULL, *msg = NULL;
    size_t len = 0;
    CmScram *s;
    CHECK(c != NULL && !c->valid);
    run_vector(&RFC5802, c);
    CHECK(c->valid && c->iterations == 4096 && c->mech == CM_SCRAM_SHA_1);
    run_vector(&RFC5802, c); /* served from the cache, same messages */

    /* the cache is what the second conversation used: a damaged entry changes its proof */
    c->client_key[0] ^= 1;
    s = start(&RFC5802, c);
    msg = final_for(s, RFC5802.server_first, &len, &err);
    CHECK(msg != NULL && len == strlen(RFC5802.client_final) &&
          memcmp(msg, RFC5802.client_final, len) != 0);
    cm_scram_free(s);

    /* another mechanism, salt or count is a miss and replaces the entry */
    run_vector(&MONGO_SHA1, c);
    CHECK(c->valid && c->iterations == 10000 && c->mech == CM_SCRAM_SHA_1_MONGO);
    run_vector(&RFC7677, c);
    CHECK(c->mech == CM_SCRAM_SHA_256);
    run_vector(&RFC5802, c);
    CHECK(c->mech == CM_SCRAM_SHA_1);

    /* another password with the same salt and count is a miss too */
    s = NULL;
    CHECK(cm_scram_new(&s, CM_SCRAM_SHA_1, "user", 4, "pencil2", 7, RFC5802.nonce,
                       strlen(RFC5802.nonce), c, &err) == 0);
    CHECK(cm_scram_client_first(s, &msg, &len, &err) == 0);
    msg = final_for(s, RFC5802.server_first, &len, &err);
    CHECK(msg != NULL && memcmp(msg, RFC5802.client_final, len) != 0);
    CHECK(verify(s, RFC5802.server_final, &err) == CM_SCRAM_ERROR);
    CHECK(err_is(err, "server signature is wrong"));
    cm_scram_free(s);
    CHECK(c->secretlen == 7);
    run_vector(&RFC5802, c);
    cm_scram_cache_free(c);
}

int main(void)
{
    test_base64();
    test_vectors();
    test_extensions();
    test_username_and_nonce();
    test_bad_arguments();
    test_out_of_order();
    test_hostile_first();
    test_hostile_final();
    test_long_server_error();
    test_truncated_and_damaged(&RFC5802);
    test_truncated_and_damaged(&RFC7677);
    test_cache();
    printf("test_scram: %d checks, %d failed\n", checks, failures);
    return failures != 0;
}
