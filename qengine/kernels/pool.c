/* Max and average pooling with Caffe's rules. */
#include <float.h>
#include <stdlib.h>
#include "qe_kernels.h"

/* Max pooling, channels shared among the threads; each channel by the
 * chosen instruction set's qe_max_pool_channel (two separable passes). */
static int max_pool_separable(const float *x, float *y, int C, int H, int W, int OH, int OW,
                              int KH, int KW, int SH, int SW, int PH, int PW, int nthreads)
{
    int failed = 0;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1) reduction(| : failed)
    {
    float *v = (float *)malloc(sizeof(float) * (size_t)qe_max_pool_scratch(W, OW, KW, SW, PW));
    failed = v == NULL;
    #pragma omp for schedule(static)
    for (int c = 0; c < C; c++) {
        if (!v) continue;
        qe_max_pool_channel(x + (int64_t)c * H * W, y + (int64_t)c * OH * OW, v, H, W, OH, OW,
                            KH, KW, SH, SW, PH, PW);
    }
    free(v);
    }
    return failed ? -1 : 0;
}

/* Average over each whole channel (global average pooling): 8 running sums
 * over the channel's values in turn (vectorised), added in a fixed order. */
static void global_average(const float *x, float *y, int C, int64_t HW, int nthreads)
{
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int c = 0; c < C; c++) {
        const float *xc = x + (int64_t)c * HW;
        float s8[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        int64_t i = 0;
        for (; i + 8 <= HW; i += 8)
            for (int l = 0; l < 8; l++) s8[l] += xc[i + l];
        float s = ((s8[0] + s8[1]) + (s8[2] + s8[3])) + ((s8[4] + s8[5]) + (s8[6] + s8[7]));
        for (; i < HW; i++) s += xc[i];
        y[c] = HW > 0 ? s / (float)HW : 0.f;
    }
}

void qe_pool(const float *x, float *y, int C, int H, int W, int OH, int OW, int KH, int KW,
             int SH, int SW, int PH, int PW, int kind, int nthreads)
{
    if (nthreads < 1) nthreads = 1;
    if (kind != 0 && KH == H && KW == W && PH == 0 && PW == 0 && OH == 1 && OW == 1) {
        global_average(x, y, C, (int64_t)H * W, nthreads);
        return;
    }
    if (kind == 0 && max_pool_separable(x, y, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW,
                                        nthreads) == 0)
        return;
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int c = 0; c < C; c++) {
        const float *xc = x + (int64_t)c * H * W;
        float *yc = y + (int64_t)c * OH * OW;
        for (int oh = 0; oh < OH; oh++) {
            int hs = oh * SH - PH, he = hs + KH;
            for (int ow = 0; ow < OW; ow++) {
                int ws = ow * SW - PW, we = ws + KW;
                if (kind == 0) {
                    int h0 = hs < 0 ? 0 : hs, h1 = he > H ? H : he;
                    int w0 = ws < 0 ? 0 : ws, w1 = we > W ? W : we;
                    float m = -FLT_MAX;
                    for (int h = h0; h < h1; h++)
                        for (int w = w0; w < w1; w++) {
                            float v = xc[(int64_t)h * W + w];
                            if (v > m) m = v;
                        }
                    yc[(int64_t)oh * OW + ow] = m;
                } else {
                    /* Caffe divides by the window clipped to the padded input. */
                    int h1p = he > H + PH ? H + PH : he, w1p = we > W + PW ? W + PW : we;
                    int count = (h1p - hs) * (w1p - ws);
                    int h0 = hs < 0 ? 0 : hs, h1 = he > H ? H : he;
                    int w0 = ws < 0 ? 0 : ws, w1 = we > W ? W : we;
                    if (kind == 2) count = (h1 - h0) * (w1 - w0);   /* padding excluded */
                    float s = 0.f;
                    for (int h = h0; h < h1; h++)
                        for (int w = w0; w < w1; w++) s += xc[(int64_t)h * W + w];
                    yc[(int64_t)oh * OW + ow] = count > 0 ? s / (float)count : 0.f;
                }
            }
        }
    }
}
