/* Load-time layouts: dense weights from codebooks, the kernels' blocked
 * weight and index layouts, and the checks a loaded tensor must pass. */
#include <math.h>
#include <string.h>
#include "qe_kernels.h"

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
