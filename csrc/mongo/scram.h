/* SCRAM client conversation (pure C, no Python; primitives from OpenSSL's libcrypto).
 *
 * SCRAM-SHA-1 (RFC 5802) and SCRAM-SHA-256 (RFC 7677) as MongoDB uses them
 * (mongodb/specifications, source/auth/auth.md):
 *   - no channel binding: the GS2 header is "n,," and c= is "biws";
 *   - the username is sent as given (no SASLprep), ',' and '=' escaped as =2C / =3D;
 *   - MongoDB's SCRAM-SHA-1 derives keys from hex(MD5(user ":mongo:" password)), not from
 *     the password (CM_SCRAM_SHA_1_MONGO); SCRAM-SHA-256 from the SASLprep'd password;
 *   - iteration counts below 4096 are refused (a man in the middle could otherwise
 *     downgrade them), and above CM_SCRAM_MAX_ITERATIONS too (a hostile server could
 *     otherwise keep the client hashing for minutes).
 * SASLprep is implemented for ASCII passwords only (there it maps nothing and prohibits
 * control characters); a non-ASCII password is refused with an error saying so.
 *
 * One CmScram per conversation:
 *     cm_scram_new -> cm_scram_client_first -> (server-first arrives) -> cm_scram_client_final
 *     -> (server-final arrives) -> cm_scram_verify_server_final -> cm_scram_free.
 * The messages are the SASL payloads (MongoDB's saslStart / saslContinue BinData); nothing
 * here knows about BSON or sockets.
 *
 * Errors: every function returns CM_SCRAM_OK, or CM_SCRAM_ERROR / CM_SCRAM_NOMEM with *err
 * set to a message (never printed here). *err points to a static string or into the
 * CmScram, valid until the next call on it or cm_scram_free. A conversation that failed
 * cannot go on (later calls fail with "out of order").
 *
 * The salted-password derivation (PBKDF2, thousands of HMAC rounds) is the expensive step;
 * the spec asks drivers to cache its result per (password, salt, iterations, mechanism).
 * A CmScramCache, owned by the caller (e.g. one per storage, shared by its connections,
 * used from one thread at a time), remembers the last derivation. */
#ifndef CM_MONGO_SCRAM_H
#define CM_MONGO_SCRAM_H

#include <stddef.h>

typedef enum {
    CM_SCRAM_SHA_1 = 1,       /* RFC 5802 as written: keys from the (ASCII) password itself */
    CM_SCRAM_SHA_1_MONGO = 2, /* MongoDB's "SCRAM-SHA-1": keys from hex(MD5(user:mongo:pwd)) */
    CM_SCRAM_SHA_256 = 3,     /* RFC 7677 and MongoDB's "SCRAM-SHA-256" */
} CmScramMech;

enum {
    CM_SCRAM_OK = 0,
    CM_SCRAM_ERROR = -1, /* bad argument, protocol violation, authentication failure */
    CM_SCRAM_NOMEM = -2, /* out of memory (or the CSPRNG / a digest failed) */
};

#define CM_SCRAM_MIN_ITERATIONS 4096
#define CM_SCRAM_MAX_ITERATIONS 10000000
/* Longest username, password, client nonce or server message accepted: far above any real
 * one, it keeps the message length sums clear of overflow and PBKDF2's int lengths exact. */
#define CM_SCRAM_MAX_MESSAGE 65536

typedef struct CmScram CmScram;
typedef struct CmScramCache CmScramCache;

/* The SASL mechanism name for saslStart: "SCRAM-SHA-1" or "SCRAM-SHA-256" (static). */
const char *cm_scram_mech_name(CmScramMech mech);

/* Start a conversation. user and password are bytes (UTF-8), not NUL-terminated, at
 * most 64 KiB each; user must be non-empty and hold no NUL byte. client_nonce is for tests (RFC
 * example vectors): printable ASCII without ','; NULL draws 24 random bytes (RAND_bytes), sent
 * base64-encoded. cache: borrowed, may be NULL; it must outlive the conversation.
 * The password is copied (and wiped at cm_scram_free). *out set on CM_SCRAM_OK only. */
int cm_scram_new(CmScram **out, CmScramMech mech, const char *user, size_t userlen,
                 const char *password, size_t passlen, const char *client_nonce, size_t noncelen,
                 CmScramCache *cache, const char **err);

/* The client-first-message, "n,,n=<user>,r=<client nonce>". *msg is borrowed from s,
 * valid until cm_scram_free. */
int cm_scram_client_first(CmScram *s, const char **msg, size_t *msglen, const char **err);

/* Parse the server-first-message ("r=<nonce>,s=<base64 salt>,i=<count>[,ext...]"; a
 * leading "m=" extension is refused), check that the nonce extends ours, derive the keys
 * and build the client-final-message "c=biws,r=<nonce>,p=<base64 proof>". *msg is
 * borrowed from s, valid until cm_scram_free. */
int cm_scram_client_final(CmScram *s, const char *server_first, size_t len, const char **msg,
                          size_t *msglen, const char **err);

/* Check the server-final-message: "v=<base64 signature>" must match the expected server
 * signature (compared in constant time); "e=<value>" fails with the server's error text.
 * CM_SCRAM_OK means the server proved it knows the password. */
int cm_scram_verify_server_final(CmScram *s, const char *server_final, size_t len,
                                 const char **err);

/* NULL is allowed. Wipes the secrets it held. */
void cm_scram_free(CmScram *s);

/* NULL on out of memory. */
CmScramCache *cm_scram_cache_new(void);
/* NULL is allowed. Wipes the keys it held. */
void cm_scram_cache_free(CmScramCache *c);

#endif
