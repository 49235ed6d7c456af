/* Element-wise and data-movement layers of residual and modern CNNs:
 * summation of branches (fused with the ReLU after it), per-channel affine,
 * clip, sigmoid, strided slicing and constant padding.  All are bound by
 * memory traffic; the loops are plain so that the compiler vectorises them. */
#include <math.h>
#include <string.h>
#include "qe_kernels.h"

static void sum2(const float *a, const float *b, float *y, int64_t n, float ca, float cb,
                 int relu)
{
    /* y may be a or b: each element is read before it is written */
    if (relu) {
        for (int64_t i = 0; i < n; i++) {
            const float v = ca * a[i] + cb * b[i];
            y[i] = v > 0.f ? v : 0.f;
        }
    } else {
        for (int64_t i = 0; i < n; i++) y[i] = ca * a[i] + cb * b[i];
    }
}

void qe_eltwise_sum(const float *const *xs, const float *coeff, int n_in, float *y, int64_t n,
                    int relu)
{
    /* y = sum_i coeff[i] * xs[i] (coeff NULL: all 1), then max(y, 0) with relu.
     * y may be any xs[i]: blocks of B elements are summed in acc, every input
     * read before y is written. */
    if (n_in == 2) {
        sum2(xs[0], xs[1], y, n, coeff ? coeff[0] : 1.f, coeff ? coeff[1] : 1.f, relu);
        return;
    }
    enum { B = 2048 };
    float acc[B];
    for (int64_t i0 = 0; i0 < n; i0 += B) {
        const int64_t m = n - i0 < B ? n - i0 : B;
        const float c0 = coeff ? coeff[0] : 1.f;
        const float *x0 = xs[0] + i0;
        for (int64_t i = 0; i < m; i++) acc[i] = c0 * x0[i];
        for (int k = 1; k < n_in; k++) {
            const float *x = xs[k] + i0;
            const float c = coeff ? coeff[k] : 1.f;
            for (int64_t i = 0; i < m; i++) acc[i] += c * x[i];
        }
        float *yb = y + i0;
        if (relu) {
            for (int64_t i = 0; i < m; i++) yb[i] = acc[i] > 0.f ? acc[i] : 0.f;
        } else {
            memcpy(yb, acc, sizeof(float) * (size_t)m);
        }
    }
}

void qe_affine(const float *x, float *y, int C, int64_t HW, const float *scale,
               const float *shift, int relu)
{
    for (int c = 0; c < C; c++) {
        const float a = scale[c], b = shift ? shift[c] : 0.f;
        const float *xc = x + (int64_t)c * HW;
        float *yc = y + (int64_t)c * HW;
        if (relu) {
            for (int64_t i = 0; i < HW; i++) {
                const float v = a * xc[i] + b;
                yc[i] = v > 0.f ? v : 0.f;
            }
        } else {
            for (int64_t i = 0; i < HW; i++) yc[i] = a * xc[i] + b;
        }
    }
}

void qe_clip(const float *x, float *y, int64_t n, float lo, float hi)
{
    /* NaN stays NaN (as in ONNX Runtime's Clip). */
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i];
        y[i] = v < lo ? lo : (v > hi ? hi : v);
    }
}

void qe_sigmoid(const float *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i];
        /* two forms so that exp never overflows */
        if (v >= 0.f) {
            y[i] = 1.f / (1.f + expf(-v));
        } else {
            const float e = expf(v);
            y[i] = e / (1.f + e);
        }
    }
}

void qe_strided_slice(const float *x, int C, int H, int W, const int *start, const int *step,
                      float *y, int OC, int OH, int OW)
{
    /* y[c][h][w] = x[start0 + c*step0][start1 + h*step1][start2 + w*step2]; the
     * caller checked that every index lies inside x. */
    (void)C;
    for (int c = 0; c < OC; c++) {
        const float *xc = x + (int64_t)(start[0] + (int64_t)c * step[0]) * H * W;
        float *yc = y + (int64_t)c * OH * OW;
        for (int h = 0; h < OH; h++) {
            const float *xr = xc + (int64_t)(start[1] + (int64_t)h * step[1]) * W + start[2];
            float *yr = yc + (int64_t)h * OW;
            if (step[2] == 1) {
                memcpy(yr, xr, sizeof(float) * (size_t)OW);
            } else {
                for (int w = 0; w < OW; w++) yr[w] = xr[(int64_t)w * step[2]];
            }
        }
    }
}

void qe_pad(const float *x, int C, int H, int W, const int *pads, float value, float *y)
{
    /* pads: before and after on C, H, W (all >= 0); y [C+p0+p1][H+p2+p3][W+p4+p5] */
    const int OC = C + pads[0] + pads[1], OH = H + pads[2] + pads[3], OW = W + pads[4] + pads[5];
    for (int c = 0; c < OC; c++) {
        float *yc = y + (int64_t)c * OH * OW;
        const int ci = c - pads[0];
        if (ci < 0 || ci >= C) {
            for (int64_t i = 0; i < (int64_t)OH * OW; i++) yc[i] = value;
            continue;
        }
        const float *xc = x + (int64_t)ci * H * W;
        for (int h = 0; h < OH; h++) {
            float *yr = yc + (int64_t)h * OW;
            const int hi = h - pads[2];
            if (hi < 0 || hi >= H) {
                for (int w = 0; w < OW; w++) yr[w] = value;
                continue;
            }
            for (int w = 0; w < pads[4]; w++) yr[w] = value;
            memcpy(yr + pads[4], xc + (int64_t)hi * W, sizeof(float) * (size_t)W);
            for (int w = pads[4] + W; w < OW; w++) yr[w] = value;
        }
    }
}
