/* Unpacking of bit-packed codeword indices. */
#include "qe_kernels.h"

void qe_unpack_bits(const uint8_t *src, int64_t nbytes, int bits, int msb_first, int64_t n,
                    uint8_t *dst)
{
    const unsigned mask = (1u << bits) - 1u;
    if (bits == 8) {
        for (int64_t i = 0; i < n; i++) dst[i] = src[i];
        return;
    }
    if (!msb_first) {
        /* LSB-first: a 16-bit window always holds a value of <= 8 bits. */
        for (int64_t i = 0; i < n; i++) {
            int64_t t = i * bits, byte = t >> 3;
            unsigned w = src[byte];
            if (byte + 1 < nbytes) w |= (unsigned)src[byte + 1] << 8;
            dst[i] = (uint8_t)((w >> (t & 7)) & mask);
        }
    } else {
        for (int64_t i = 0; i < n; i++) {
            int64_t t = i * bits, byte = t >> 3;
            unsigned w = (unsigned)src[byte] << 8;
            if (byte + 1 < nbytes) w |= src[byte + 1];
            dst[i] = (uint8_t)((w >> (16 - (t & 7) - bits)) & mask);
        }
    }
}
