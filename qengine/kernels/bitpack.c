/* Unpacking of bit-packed codeword indices. */
#include <string.h>
#include "qe_kernels.h"

/* Load up to 8 bytes as a little-endian (or big-endian) 64-bit word. */
static inline uint64_t load_le(const uint8_t *p, int n)
{
    uint64_t w = 0;
    for (int i = n - 1; i >= 0; i--) w = (w << 8) | p[i];
    return w;
}

static inline uint64_t load_be(const uint8_t *p, int n)
{
    uint64_t w = 0;
    for (int i = 0; i < n; i++) w = (w << 8) | p[i];
    return w;
}

int qe_unpack_bits(const uint8_t *src, int64_t nbytes, int bits, int msb_first, int64_t n,
                   uint8_t *dst)
{
    const unsigned mask = (1u << bits) - 1u;
    unsigned mx = 0;
    int64_t i;
    if (bits == 8) {
        memcpy(dst, src, (size_t)n);
        for (int64_t j = 0; j < n; j++) mx = src[j] > mx ? src[j] : mx;
        return (int)mx;
    }
    /* Eight values fill exactly `bits` bytes: unpack them from one word.  The
     * switch gives the compiler a constant width to unroll each loop for. */
    const int64_t groups = n / 8;
#define QE_UNPACK_GROUPS(B)                                                          \
    for (int64_t gi = 0; gi < groups; gi++) {                                        \
        const uint8_t *p = src + gi * (B);                                           \
        uint8_t *o = dst + gi * 8;                                                   \
        uint64_t w = msb_first ? load_be(p, (B)) : load_le(p, (B));                  \
        for (int k = 0; k < 8; k++) {                                                \
            unsigned v = (unsigned)(w >> (msb_first ? (7 - k) * (B) : k * (B))) & mask; \
            o[k] = (uint8_t)v;                                                       \
            mx = v > mx ? v : mx;                                                    \
        }                                                                            \
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
    for (i = groups * 8; i < n; i++) {
        int64_t t = i * bits, byte = t >> 3;
        unsigned w, v;
        if (!msb_first) {
            w = src[byte];
            if (byte + 1 < nbytes) w |= (unsigned)src[byte + 1] << 8;
            v = (w >> (t & 7)) & mask;
        } else {
            w = (unsigned)src[byte] << 8;
            if (byte + 1 < nbytes) w |= src[byte + 1];
            v = (w >> (16 - (t & 7) - bits)) & mask;
        }
        dst[i] = (uint8_t)v;
        mx = v > mx ? v : mx;
    }
    return (int)mx;
}
