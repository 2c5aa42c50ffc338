/* base64 in the layout of Python's base64.encodebytes (RFC 2045 MIME):
 * 76 output characters per line, every line (the last too) ends in '\n'.
 * cacheme 0.3.0 stored pickles this way, so we must produce the same bytes.
 * Plain C, no Python. Decoding has a fast path for exactly that layout;
 * anything else (other line lengths, stray bytes, inner padding) goes to
 * binascii.a2b_base64, whose lenient rules (skip non-alphabet bytes, stop
 * at padding) are the ones 0.3.0 used, so results never differ. */
#ifndef CM_SER_BASE64_H
#define CM_SER_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* Output size for n input bytes; 0 for n == 0. SIZE_MAX on overflow. */
size_t cm_b64_encodebytes_len(size_t n);

/* Writes exactly cm_b64_encodebytes_len(n) bytes to out. */
void cm_b64_encodebytes(const uint8_t *in, size_t n, char *out);

/* Decode in, if it is exactly in encodebytes' layout (lines of 76
 * characters but the last, which is a multiple of 4 long, each ending in
 * '\n'; '=' only to pad the last group). out needs n / 4 * 3 bytes (every
 * group writes 3). 0 and
 * *outlen set; -1 if in is in any other form (nothing is reported: the
 * caller decodes it the lenient way). */
int cm_b64_decodebytes(const uint8_t *in, size_t n, uint8_t *out, size_t *outlen);

/* Plain RFC 4648 base64 on one line (no newlines), as SASL mechanisms such as
 * SCRAM carry it. cm_b64_encode writes exactly cm_b64_encode_len(n) bytes (no NUL);
 * the length is SIZE_MAX on overflow. */
size_t cm_b64_encode_len(size_t n);
void cm_b64_encode(const uint8_t *in, size_t n, char *out);

/* Strict decoding of that form: a multiple of 4 characters of the alphabet, '='
 * only to pad the last group, the bits padding leaves unused zero. out needs n / 4 * 3 bytes. 0 and
 * *outlen set; -1 on any other input. */
int cm_b64_decode(const uint8_t *in, size_t n, uint8_t *out, size_t *outlen);

#endif
