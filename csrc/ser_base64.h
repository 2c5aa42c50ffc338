/* base64 in the layout of Python's base64.encodebytes (RFC 2045 MIME):
 * 76 output characters per line, every line (the last too) ends in '\n'.
 * cacheme 0.3.0 stored pickles this way, so we must produce the same bytes.
 * Plain C, no Python. Decoding stays with binascii.a2b_base64, whose lenient
 * rules (skip non-alphabet bytes, stop at padding) are the ones 0.3.0 used. */
#ifndef CM_SER_BASE64_H
#define CM_SER_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* Output size for n input bytes; 0 for n == 0. SIZE_MAX on overflow. */
size_t cm_b64_encodebytes_len(size_t n);

/* Writes exactly cm_b64_encodebytes_len(n) bytes to out. */
void cm_b64_encodebytes(const uint8_t *in, size_t n, char *out);

#endif
