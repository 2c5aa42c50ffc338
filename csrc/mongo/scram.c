/* SCRAM client conversation: see scram.h. RFC 5802 section 3 names the values:
 *     SaltedPassword  := Hi(Normalize(password), salt, i)        (PBKDF2 with HMAC)
 *     ClientKey       := HMAC(SaltedPassword, "Client Key")
 *     StoredKey       := H(ClientKey)
 *     AuthMessage     := client-first-message-bare + "," + server-first-message + "," +
 *                        client-final-message-without-proof
 *     ClientSignature := HMAC(StoredKey, AuthMessage)
 *     ClientProof     := ClientKey XOR ClientSignature
 *     ServerKey       := HMAC(SaltedPassword, "Server Key")
 *     ServerSignature := HMAC(ServerKey, AuthMessage)
 * The cache keeps ClientKey and ServerKey, the spec's allowed cache value. */
#include "mongo/scram.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "ser/base64.h"

#define CM_SCRAM_NONCE_BYTES 24
/* How much of a server's e= value is quoted in the error text. */
#define CM_SCRAM_MAX_QUOTE 128

enum { STATE_NEW, STATE_FIRST_SENT, STATE_FINAL_SENT, STATE_DONE, STATE_FAILED };

struct CmScramCache {
    int valid;
    CmScramMech mech;
    uint8_t *secret; /* the normalized (or MongoDB-hashed) password */
    size_t secretlen;
    uint8_t *salt;
    size_t saltlen;
    unsigned long iterations;
    uint8_t client_key[EVP_MAX_MD_SIZE];
    uint8_t server_key[EVP_MAX_MD_SIZE];
};

struct CmScram {
    CmScramMech mech;
    int state;
    const EVP_MD *md; // borrowed: OpenSSL's static digest tables
    size_t dlen;
    uint8_t *secret; /* what Hi() hashes: see scram.h; wiped at free */
    size_t secretlen;
    char *first; /* client-first-message; its bare part starts at first + 3 */
    size_t firstlen;
    size_t noncelen; /* the client nonce ends the client-first-message */
    char *final;     /* client-final-message */
    size_t finallen;
    uint8_t server_signature[EVP_MAX_MD_SIZE];
    CmScramCache *cache; // borrowed
    char errbuf[64 + CM_SCRAM_MAX_QUOTE];
};

static const char GS2_HEADER[] = "n,,";         /* no channel binding, no authzid */
static const char CHANNEL_BINDING[] = "c=biws"; /* base64 of the GS2 header */

const char *cm_scram_mech_name(CmScramMech mech)
{
    return mech == CM_SCRAM_SHA_256 ? "SCRAM-SHA-256" : "SCRAM-SHA-1";
}

static void wipe_free(void *p, size_t n)
{
    if (p != NULL) {
        OPENSSL_cleanse(p, n);
        free(p);
    }
}

/* SASLprep (RFC 4013) of an ASCII string maps nothing and changes nothing under NFKC;
 * it only prohibits the control characters (RFC 3454 C.2.1). */
static int saslprep_ascii(const char *p, size_t n, const char **err)
{
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 0x80) {
            *err = "SCRAM: the password is not ASCII, and SASLprep is implemented for ASCII "
                   "passwords only";
            return CM_SCRAM_ERROR;
        }
        if (c < 0x20 || c == 0x7f) {
            *err = "SCRAM: the password holds a control character, which SASLprep prohibits";
            return CM_SCRAM_ERROR;
        }
    }
    return CM_SCRAM_OK;
}

/* MongoDB's SCRAM-SHA-1 password: the 32 lowercase hex digits of
 * MD5(user ":mongo:" password), on the bytes as given. */
static int mongo_digest(const char *user, size_t userlen, const char *pw, size_t pwlen,
                        uint8_t *hex, const char **err)
{
    static const char digits[] = "0123456789abcdef";
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0, i;
    int status = CM_SCRAM_NOMEM;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    *err = "SCRAM: the MD5 digest of the password failed";
    if (ctx == NULL || !EVP_DigestInit_ex(ctx, EVP_md5(), NULL) ||
        !EVP_DigestUpdate(ctx, user, userlen) || !EVP_DigestUpdate(ctx, ":mongo:", 7) ||
        !EVP_DigestUpdate(ctx, pw, pwlen) || !EVP_DigestFinal_ex(ctx, md, &mdlen) || mdlen != 16)
        goto done;
    for (i = 0; i < mdlen; i++) {
        hex[2 * i] = (uint8_t)digits[md[i] >> 4];
        hex[2 * i + 1] = (uint8_t)digits[md[i] & 15];
    }
    status = CM_SCRAM_OK;
done:
    OPENSSL_cleanse(md, sizeof(md));
    EVP_MD_CTX_free(ctx);
    return status;
}

/* A nonce is printable ASCII but ',' (RFC 5802 "printable"). */
static int nonce_ok(const char *p, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if ((unsigned char)p[i] < 0x21 || (unsigned char)p[i] > 0x7e || p[i] == ',')
            return 0;
    return n > 0;
}

/* "n,,n=<escaped user>,r=<nonce>" into s->first. The nonce is drawn here when none is
 * given. */
static int build_first(CmScram *s, const char *user, size_t userlen, const char *nonce,
                       size_t noncelen, const char **err)
{
    uint8_t raw[CM_SCRAM_NONCE_BYTES];
    char drawn[(CM_SCRAM_NONCE_BYTES + 2) / 3 * 4];
    size_t i, extra = 0;
    char *o;
    if (nonce == NULL) {
        if (RAND_bytes(raw, sizeof(raw)) != 1) {
            *err = "SCRAM: the random generator failed to draw a nonce";
            return CM_SCRAM_NOMEM;
        }
        cm_b64_encode(raw, sizeof(raw), drawn);
        nonce = drawn;
        noncelen = sizeof(drawn);
    } else if (!nonce_ok(nonce, noncelen)) {
        *err = "SCRAM: the client nonce must be printable ASCII without ','";
        return CM_SCRAM_ERROR;
    }
    for (i = 0; i < userlen; i++)
        if (user[i] == ',' || user[i] == '=')
            extra += 2;
    s->firstlen = 3 + 2 + userlen + extra + 3 + noncelen;
    if ((s->first = malloc(s->firstlen + 1)) == NULL) {
        *err = "SCRAM: out of memory";
        return CM_SCRAM_NOMEM;
    }
    o = s->first;
    memcpy(o, GS2_HEADER, sizeof(GS2_HEADER) - 1);
    memcpy(o + 3, "n=", 2);
    o += 5;
    for (i = 0; i < userlen; i++) {
        if (user[i] == ',' || user[i] == '=') {
            memcpy(o, user[i] == ',' ? "=2C" : "=3D", 3);
            o += 3;
        } else {
            *o++ = user[i];
        }
    }
    memcpy(o, ",r=", 3);
    memcpy(o + 3, nonce, noncelen);
    o[3 + noncelen] = '\0';
    s->noncelen = noncelen;
    return CM_SCRAM_OK;
}

int cm_scram_new(CmScram **out, CmScramMech mech, const char *user, size_t userlen,
                 const char *password, size_t passlen, const char *client_nonce, size_t noncelen,
                 CmScramCache *cache, const char **err)
{
    CmScram *s;
    int status;
    if (mech != CM_SCRAM_SHA_1 && mech != CM_SCRAM_SHA_1_MONGO && mech != CM_SCRAM_SHA_256) {
        *err = "SCRAM: unknown mechanism";
        return CM_SCRAM_ERROR;
    }
    if (userlen > CM_SCRAM_MAX_MESSAGE || passlen > CM_SCRAM_MAX_MESSAGE ||
        noncelen > CM_SCRAM_MAX_MESSAGE) {
        *err = "SCRAM: the username, password or nonce is longer than 65536 bytes";
        return CM_SCRAM_ERROR;
    }
    if (userlen == 0 || memchr(user, '\0', userlen) != NULL) {
        *err = "SCRAM: the username must be non-empty and hold no NUL character";
        return CM_SCRAM_ERROR;
    }
    if (mech != CM_SCRAM_SHA_1_MONGO &&
        (status = saslprep_ascii(password, passlen, err)) != CM_SCRAM_OK)
        return status;
    if ((s = calloc(1, sizeof(*s))) == NULL) {
        *err = "SCRAM: out of memory";
        return CM_SCRAM_NOMEM;
    }
    s->mech = mech;
    s->state = STATE_NEW;
    s->md = mech == CM_SCRAM_SHA_256 ? EVP_sha256() : EVP_sha1();
    s->dlen = (size_t)EVP_MD_size(s->md);
    s->cache = cache;
    s->secretlen = mech == CM_SCRAM_SHA_1_MONGO ? 32 : passlen;
    /* one byte more so that an empty password is no malloc(0) */
    if ((s->secret = malloc(s->secretlen + 1)) == NULL) {
        *err = "SCRAM: out of memory";
        status = CM_SCRAM_NOMEM;
        goto fail;
    }
    if (mech == CM_SCRAM_SHA_1_MONGO) {
        if ((status = mongo_digest(user, userlen, password, passlen, s->secret, err)) != 0)
            goto fail;
    } else if (passlen > 0) {
        memcpy(s->secret, password, passlen);
    }
    if ((status = build_first(s, user, userlen, client_nonce, noncelen, err)) != CM_SCRAM_OK)
        goto fail;
    *out = s;
    return CM_SCRAM_OK;
fail:
    cm_scram_free(s);
    return status;
}

static int out_of_order(CmScram *s, const char **err)
{
    s->state = STATE_FAILED;
    *err = "SCRAM: conversation step called out of order (or after a failure)";
    return CM_SCRAM_ERROR;
}

int cm_scram_client_first(CmScram *s, const char **msg, size_t *msglen, const char **err)
{
    if (s->state != STATE_NEW)
        return out_of_order(s, err);
    s->state = STATE_FIRST_SENT;
    *msg = s->first;
    *msglen = s->firstlen;
    return CM_SCRAM_OK;
}

/* The attribute "<name>=<value>" at *p: the value up to the next ',' or the end; *p moves
 * past the ','. 0, or -1 when *p holds no such attribute. */
static int take_attr(const char **p, const char *end, char name, const char **val, size_t *vlen)
{
    const char *v, *comma;
    if (end - *p < 2 || (*p)[0] != name || (*p)[1] != '=')
        return -1;
    v = *p + 2;
    comma = memchr(v, ',', (size_t)(end - v));
    *val = v;
    *vlen = (size_t)((comma != NULL ? comma : end) - v);
    *p = comma != NULL ? comma + 1 : end;
    return 0;
}

/* RFC 5802 posit-number: no sign, no leading zero; bounded to the accepted range. */
static int parse_iterations(const char *p, size_t n, unsigned long *out)
{
    unsigned long v = 0;
    size_t i;
    if (n == 0 || p[0] == '0')
        return -1;
    for (i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (unsigned long)(p[i] - '0');
        if (v > CM_SCRAM_MAX_ITERATIONS)
            return -1;
    }
    *out = v;
    return 0;
}

/* 0, or -1 with *err set. */
static int hmac(const CmScram *s, const uint8_t *key, size_t keylen, const void *data, size_t n,
                uint8_t *out, const char **err)
{
    unsigned int len = 0;
    if (HMAC(s->md, key, (int)keylen, data, n, out, &len) == NULL || len != s->dlen) {
        *err = "SCRAM: HMAC failed";
        return -1;
    }
    return 0;
}

static int cache_hit(const CmScram *s, const uint8_t *salt, size_t saltlen, unsigned long iter)
{
    const CmScramCache *c = s->cache;
    return c != NULL && c->valid && c->mech == s->mech && c->iterations == iter &&
           c->saltlen == saltlen && c->secretlen == s->secretlen &&
           memcmp(c->salt, salt, saltlen) == 0 &&
           CRYPTO_memcmp(c->secret, s->secret, s->secretlen) == 0;
}

/* Remembering is best effort: out of memory only means no cache entry. */
static void cache_store(CmScram *s, const uint8_t *salt, size_t saltlen, unsigned long iter,
                        const uint8_t *client_key, const uint8_t *server_key)
{
    CmScramCache *c = s->cache;
    uint8_t *secret, *salt_copy;
    if (c == NULL)
        return;
    secret = malloc(s->secretlen + 1);
    salt_copy = malloc(saltlen);
    if (secret == NULL || salt_copy == NULL) {
        free(secret);
        free(salt_copy);
        return;
    }
    wipe_free(c->secret, c->secretlen);
    free(c->salt);
    memcpy(secret, s->secret, s->secretlen);
    memcpy(salt_copy, salt, saltlen);
    c->secret = secret;
    c->secretlen = s->secretlen;
    c->salt = salt_copy;
    c->saltlen = saltlen;
    c->mech = s->mech;
    c->iterations = iter;
    memcpy(c->client_key, client_key, s->dlen);
    memcpy(c->server_key, server_key, s->dlen);
    c->valid = 1;
}

/* ClientKey and ServerKey for this salt and count, from the cache or by PBKDF2. */
static int derive_keys(CmScram *s, const uint8_t *salt, size_t saltlen, unsigned long iter,
                       uint8_t *client_key, uint8_t *server_key, const char **err)
{
    uint8_t salted[EVP_MAX_MD_SIZE];
    int status = CM_SCRAM_NOMEM;
    if (cache_hit(s, salt, saltlen, iter)) {
        memcpy(client_key, s->cache->client_key, s->dlen);
        memcpy(server_key, s->cache->server_key, s->dlen);
        return CM_SCRAM_OK;
    }
    if (PKCS5_PBKDF2_HMAC((const char *)s->secret, (int)s->secretlen, salt, (int)saltlen, (int)iter,
                          s->md, (int)s->dlen, salted) != 1) {
        *err = "SCRAM: PBKDF2 failed";
        goto done;
    }
    if (hmac(s, salted, s->dlen, "Client Key", 10, client_key, err) ||
        hmac(s, salted, s->dlen, "Server Key", 10, server_key, err))
        goto done;
    cache_store(s, salt, saltlen, iter, client_key, server_key);
    status = CM_SCRAM_OK;
done:
    OPENSSL_cleanse(salted, sizeof(salted));
    return status;
}

/* Everything but parsing: keys, proof, server signature, the client-final-message. */
static int compute_final(CmScram *s, const char *server_first, size_t len, const char *nonce,
                         size_t noncelen, const uint8_t *salt, size_t saltlen, unsigned long iter,
                         const char **err)
{
    uint8_t client_key[EVP_MAX_MD_SIZE], server_key[EVP_MAX_MD_SIZE];
    uint8_t stored_key[EVP_MAX_MD_SIZE], proof[EVP_MAX_MD_SIZE];
    unsigned int stored_len = 0;
    const char *bare = s->first + sizeof(GS2_HEADER) - 1;
    size_t barelen = s->firstlen - (sizeof(GS2_HEADER) - 1), i;
    size_t without_proof = sizeof(CHANNEL_BINDING) - 1 + 3 + noncelen;
    size_t authlen = barelen + 1 + len + 1 + without_proof;
    size_t prooflen = cm_b64_encode_len(s->dlen);
    char *auth = NULL, *o;
    int status = CM_SCRAM_NOMEM;

    if ((s->final = malloc(without_proof + 3 + prooflen + 1)) == NULL ||
        (auth = malloc(authlen)) == NULL) {
        *err = "SCRAM: out of memory";
        goto done;
    }
    o = s->final;
    memcpy(o, CHANNEL_BINDING, sizeof(CHANNEL_BINDING) - 1);
    o += sizeof(CHANNEL_BINDING) - 1;
    memcpy(o, ",r=", 3);
    memcpy(o + 3, nonce, noncelen);

    o = auth;
    memcpy(o, bare, barelen);
    o[barelen] = ',';
    o += barelen + 1;
    memcpy(o, server_first, len);
    o[len] = ',';
    memcpy(o + len + 1, s->final, without_proof);

    if ((status = derive_keys(s, salt, saltlen, iter, client_key, server_key, err)) != 0)
        goto done;
    status = CM_SCRAM_NOMEM;
    if (!EVP_Digest(client_key, s->dlen, stored_key, &stored_len, s->md, NULL) ||
        stored_len != s->dlen) {
        *err = "SCRAM: digest failed";
        goto done;
    }
    if (hmac(s, stored_key, s->dlen, auth, authlen, proof, err) ||
        hmac(s, server_key, s->dlen, auth, authlen, s->server_signature, err))
        goto done;
    for (i = 0; i < s->dlen; i++)
        proof[i] ^= client_key[i];
    o = s->final + without_proof;
    memcpy(o, ",p=", 3);
    cm_b64_encode(proof, s->dlen, o + 3);
    s->finallen = without_proof + 3 + prooflen;
    s->final[s->finallen] = '\0';
    status = CM_SCRAM_OK;
done:
    OPENSSL_cleanse(client_key, sizeof(client_key));
    OPENSSL_cleanse(server_key, sizeof(server_key));
    OPENSSL_cleanse(stored_key, sizeof(stored_key));
    free(auth);
    return status;
}

int cm_scram_client_final(CmScram *s, const char *server_first, size_t len, const char **msg,
                          size_t *msglen, const char **err)
{
    const char *p = server_first, *end = server_first + len;
    const char *nonce, *salt64, *iter_text;
    size_t noncelen, salt64len, iterlen, saltlen = 0;
    const char *client_nonce = s->first + s->firstlen - s->noncelen;
    uint8_t *salt = NULL;
    unsigned long iter = 0;
    int status = CM_SCRAM_ERROR;

    if (s->state != STATE_FIRST_SENT)
        return out_of_order(s, err);
    s->state = STATE_FAILED;
    if (len > CM_SCRAM_MAX_MESSAGE) {
        *err = "SCRAM: server-first-message too long";
        goto done;
    }
    if (len >= 2 && p[0] == 'm' && p[1] == '=') {
        *err = "SCRAM: the server requires an extension (m=) this client does not support";
        goto done;
    }
    if (take_attr(&p, end, 'r', &nonce, &noncelen) ||
        take_attr(&p, end, 's', &salt64, &salt64len) ||
        take_attr(&p, end, 'i', &iter_text, &iterlen)) {
        *err = "SCRAM: server-first-message lacks r=, s= or i= (in that order)";
        goto done;
    }
    /* what follows i= (p) is extensions, which a client ignores */
    if (noncelen <= s->noncelen || memcmp(nonce, client_nonce, s->noncelen) != 0 ||
        !nonce_ok(nonce, noncelen)) {
        *err = "SCRAM: the server nonce does not extend the client nonce";
        goto done;
    }
    if ((salt = malloc(salt64len / 4 * 3 + 1)) == NULL) {
        *err = "SCRAM: out of memory";
        status = CM_SCRAM_NOMEM;
        goto done;
    }
    if (cm_b64_decode((const uint8_t *)salt64, salt64len, salt, &saltlen) || saltlen == 0) {
        *err = "SCRAM: the server's salt (s=) is not valid base64";
        goto done;
    }
    if (parse_iterations(iter_text, iterlen, &iter) || iter < CM_SCRAM_MIN_ITERATIONS) {
        *err = "SCRAM: the server's iteration count (i=) is not a number from 4096 to 10000000";
        goto done;
    }
    status = compute_final(s, server_first, len, nonce, noncelen, salt, saltlen, iter, err);
    if (status == CM_SCRAM_OK) {
        s->state = STATE_FINAL_SENT;
        *msg = s->final;
        *msglen = s->finallen;
    }
done:
    free(salt);
    return status;
}

/* The server's e= value, quoted with anything unprintable shown as '?'. */
static const char *server_error(CmScram *s, const char *v, size_t n)
{
    static const char prefix[] = "SCRAM: the server refused authentication: ";
    size_t i, at = sizeof(prefix) - 1;
    memcpy(s->errbuf, prefix, at);
    if (n > CM_SCRAM_MAX_QUOTE)
        n = CM_SCRAM_MAX_QUOTE;
    for (i = 0; i < n; i++)
        s->errbuf[at++] = ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] > 0x7e) ? '?' : v[i];
    s->errbuf[at] = '\0';
    return s->errbuf;
}

int cm_scram_verify_server_final(CmScram *s, const char *server_final, size_t len, const char **err)
{
    const char *p = server_final, *end = server_final + len, *v;
    uint8_t sig[2 * EVP_MAX_MD_SIZE];
    size_t vlen, siglen = 0;

    if (s->state != STATE_FINAL_SENT)
        return out_of_order(s, err);
    s->state = STATE_FAILED;
    if (take_attr(&p, end, 'e', &v, &vlen) == 0) {
        *err = server_error(s, v, vlen);
        return CM_SCRAM_ERROR;
    }
    if (take_attr(&p, end, 'v', &v, &vlen) != 0) {
        *err = "SCRAM: server-final-message has neither v= nor e=";
        return CM_SCRAM_ERROR;
    }
    if (vlen / 4 * 3 > sizeof(sig) || cm_b64_decode((const uint8_t *)v, vlen, sig, &siglen) ||
        siglen != s->dlen) {
        *err = "SCRAM: the server signature (v=) is not valid base64 of the right length";
        return CM_SCRAM_ERROR;
    }
    if (CRYPTO_memcmp(sig, s->server_signature, s->dlen) != 0) {
        *err = "SCRAM: the server signature is wrong (the server does not know the password)";
        return CM_SCRAM_ERROR;
    }
    s->state = STATE_DONE;
    return CM_SCRAM_OK;
}

void cm_scram_free(CmScram *s)
{
    if (s == NULL)
        return;
    wipe_free(s->secret, s->secretlen);
    free(s->first);
    free(s->final);
    OPENSSL_cleanse(s->server_signature, sizeof(s->server_signature));
    free(s);
}

CmScramCache *cm_scram_cache_new(void) { return calloc(1, sizeof(CmScramCache)); }

void cm_scram_cache_free(CmScramCache *c)
{
    if (c == NULL)
        return;
    wipe_free(c->secret, c->secretlen);
    free(c->salt);
    OPENSSL_cleanse(c, sizeof(*c));
    free(c);
}
