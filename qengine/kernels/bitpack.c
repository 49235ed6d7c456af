/* Decoding of stored tensors: bit-packed codeword indices, qdelta2d images. */
#include <stdlib.h>
#include <string.h>
#include "qe_kernels.h"

/* A little-endian 64-bit word from 8 bytes (any alignment). */
static inline uint64_t load8_le(const uint8_t *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

/* Store a 64-bit word as 8 little-endian bytes (any alignment). */
static inline void store8_le(uint8_t *p, uint64_t w)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    memcpy(p, &w, 8);
}

/* The eight B-bit values in the low 8*B bits of w, one per byte: split the
 * bit string in halves three times (4 values per 32-bit lane, 2 per 16-bit
 * lane, 1 per byte), a few shifts and masks instead of eight. */
static inline uint64_t spread8(uint64_t w, const int B)
{
    const uint64_t m4 = (1ull << (4 * B)) - 1, m2 = (1ull << (2 * B)) - 1, m1 = (1ull << B) - 1;
    const uint64_t l2 = m2 | m2 << 32, l1 = m1 * 0x0001000100010001ull;
    uint64_t y = (w & m4) | ((w >> (4 * B)) & m4) << 32;
    y = (y & l2) | ((y >> (2 * B)) & l2) << 16;
    return (y & l1) | ((y >> B) & l1) << 8;
}

int qe_unpack_row(const uint8_t *src, int64_t nbytes, int64_t bit0, int bits, int64_t n,
                  uint8_t *dst)
{
    const unsigned mask = (1u << bits) - 1u;
    int64_t i = 0;
    if ((bit0 & 7) == 0) {
        /* Eight values fill exactly `bits` bytes: take them from one 8-byte load
         * while a whole load stays inside the stream.  The switch gives the
         * compiler a constant width to unroll each loop for. */
        const uint8_t *p0 = src + (bit0 >> 3);
        int64_t groups = n / 8;
        const int64_t room = nbytes - (bit0 >> 3) - 8;   /* last safe load offset */
        if (room < 0) groups = 0;
        else if ((groups - 1) * bits > room) groups = room / bits + 1;
#define QE_UNPACK_GROUPS(B)                                                    \
        for (int64_t gi = 0; gi < groups; gi++) {                              \
            const uint64_t w = load8_le(p0 + gi * (B));                        \
            uint8_t *o = dst + gi * 8;                                         \
            store8_le(o, spread8(w, (B)));                                     \
        }
        switch (bits) {
        case 1: QE_UNPACK_GROUPS(1) break;
        case 2: QE_UNPACK_GROUPS(2) break;
        case 3: QE_UNPACK_GROUPS(3) break;
        case 4: QE_UNPACK_GROUPS(4) break;
        case 5: QE_UNPACK_GROUPS(5) break;
        case 6: QE_UNPACK_GROUPS(6) break;
        default: QE_UNPACK_GROUPS(7) break;
        }
#undef QE_UNPACK_GROUPS
        i = groups * 8;
    }
    for (; i < n; i++) {   /* the rest, two bytes at a time */
        const int64_t t = bit0 + i * bits, byte = t >> 3;
        unsigned w = src[byte];
        if (byte + 1 < nbytes) w |= (unsigned)src[byte + 1] << 8;
        dst[i] = (uint8_t)((w >> (t & 7)) & mask);
    }
    return qe_max_u8(dst, n);
}

int qe_unpack_bits(const uint8_t *src, int64_t nbytes, int bits, int msb_first, int64_t n,
                   uint8_t *dst)
{
    if (bits == 8) {
        memcpy(dst, src, (size_t)n);
        return qe_max_u8(src, n);
    }
    if (!msb_first) return qe_unpack_row(src, nbytes, 0, bits, n, dst);
    /* the original Quantized-CNN order: most significant bit first */
    const unsigned mask = (1u << bits) - 1u;
    const int64_t groups = n / 8;
    int64_t i;
    for (int64_t gi = 0; gi < groups; gi++) {
        const uint8_t *p = src + gi * bits;
        uint64_t w = 0;
        for (int b = 0; b < bits; b++) w = (w << 8) | p[b];
        for (int k = 0; k < 8; k++) dst[gi * 8 + k] = (uint8_t)((w >> ((7 - k) * bits)) & mask);
    }
    for (i = groups * 8; i < n; i++) {
        int64_t t = i * bits, byte = t >> 3;
        unsigned w = (unsigned)src[byte] << 8;
        if (byte + 1 < nbytes) w |= src[byte + 1];
        dst[i] = (uint8_t)((w >> (16 - (t & 7) - bits)) & mask);
    }
    return qe_max_u8(dst, n);
}

int qe_qdelta_decode(const uint8_t *planes, int64_t outer, int64_t rows, int64_t cols,
                     double step, float *out)
{
    const int64_t count = outer * rows * cols;
    int64_t *colsum = (int64_t *)malloc(sizeof(int64_t) * (size_t)(cols > 0 ? cols : 1));
    if (!colsum) return -1;
    for (int64_t o = 0; o < outer; o++) {
        memset(colsum, 0, sizeof(int64_t) * (size_t)cols);
        for (int64_t i = 0; i < rows; i++) {
            int64_t q = 0;
            for (int64_t j = 0; j < cols; j++) {
                const int64_t e = (o * rows + i) * cols + j;
                const uint32_t z = (uint32_t)planes[e] | (uint32_t)planes[count + e] << 8
                                   | (uint32_t)planes[2 * count + e] << 16
                                   | (uint32_t)planes[3 * count + e] << 24;
                colsum[j] += (int64_t)(z >> 1) ^ -(int64_t)(z & 1);   /* zigzag back */
                q += colsum[j];
                out[e] = (float)((double)q * step);
            }
        }
    }
    free(colsum);
    return 0;
}
