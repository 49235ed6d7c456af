/* Load-time layouts: dense weights from codebooks, the kernels' blocked
 * weight and index layouts, the checks a loaded tensor must pass, and the
 * allocation of the buffers they fill. */
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include "qe_kernels.h"

void *qe_alloc(int64_t nbytes)
{
#if defined(__linux__)
    /* Large buffers (index layouts, scratch) on 2 MB pages where the kernel
     * offers them: a fresh 4 KB page costs a fault of several microseconds in
     * a VM, and loading AlexNet touches some 8,000 of them. */
    const size_t huge = (size_t)2 << 20;
    if (nbytes >= (int64_t)huge) {
        const size_t n = ((size_t)nbytes + huge - 1) / huge * huge;
        void *p = NULL;
        if (posix_memalign(&p, huge, n) != 0) return NULL;
#if defined(MADV_HUGEPAGE)
        madvise(p, n, MADV_HUGEPAGE);
#endif
        return p;
    }
#endif
    return malloc(nbytes > 0 ? (size_t)nbytes : 1);
}

int qe_dequantize(const float *cb, int M, int K, int d, const uint8_t *idx, int64_t R, int T,
                  int cin, float *out)
{
    for (int64_t r = 0; r < R; r++) {
        const uint8_t *ir = idx + r * T * M;
        float *o = out + r * (int64_t)cin * T;
        for (int t = 0; t < T; t++)
            for (int m = 0; m < M; m++) {
                const int k = ir[(int64_t)t * M + m];
                if (k >= K) return -1;
                const float *w = cb + ((int64_t)m * K + k) * d;
                for (int c = 0; c < d && m * d + c < cin; c++)
                    o[(int64_t)(m * d + c) * T + t] = w[c];
            }
    }
    return 0;
}

void qe_block_conv_weights(const float *w, int G, int og, int64_t J, int B, float *out)
{
    const int nb = (og + B - 1) / B;
    for (int g = 0; g < G; g++)
        for (int b = 0; b < nb; b++) {
            float *o = out + ((int64_t)g * nb + b) * J * B;
            for (int k = 0; k < B; k++) {
                const int co = b * B + k;
                const float *src = co < og ? w + ((int64_t)g * og + co) * J : NULL;
                for (int64_t j = 0; j < J; j++) o[j * B + k] = src ? src[j] : 0.f;
            }
        }
}

void qe_block_fc_indices(const uint8_t *a, int Cout, int M, int mb, uint8_t *out)
{
    for (int m0 = 0; m0 < M; m0 += mb) {
        const int w = M - m0 < mb ? M - m0 : mb;
        uint8_t *o = out + (int64_t)Cout * m0;
        for (int co = 0; co < Cout; co++)
            memcpy(o + (int64_t)co * w, a + (int64_t)co * M + m0, (size_t)w);
    }
}

int qe_max_u8(const uint8_t *p, int64_t n)
{
    uint8_t mx = 0;
    for (int64_t i = 0; i < n; i++) mx = p[i] > mx ? p[i] : mx;
    return mx;
}

int qe_all_finite(const float *p, int64_t n)
{
    int ok = 1;
    for (int64_t i = 0; i < n; i++) ok &= isfinite(p[i]) ? 1 : 0;
    return ok;
}
