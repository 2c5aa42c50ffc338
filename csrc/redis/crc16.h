/* Redis Cluster key slots (pure C): CRC16-CCITT (XMODEM: polynomial 0x1021,
 * initial value 0) of the key, or of its hash tag -- the bytes between the
 * first '{' and the next '}' when that is not empty -- modulo 16384.
 * See the Redis Cluster specification, "Keys distribution model". */
#ifndef CM_CRC16_H
#define CM_CRC16_H
#include <stddef.h>
#include <stdint.h>

#define CM_CLUSTER_SLOTS 16384

uint16_t cm_crc16(const char *buf, size_t len);
/* The slot of a key, honouring hash tags. */
unsigned cm_key_slot(const char *key, size_t len);
#endif
