/* Element-wise activations: ReLU (with negative slope) and channel softmax. */
#include <math.h>
#include "qe_kernels.h"

void qe_relu(const float *x, float *y, int64_t n, float slope)
{
    if (slope == 0.f) {
        for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.f ? x[i] : 0.f;
    } else {
        for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.f ? x[i] : slope * x[i];
    }
}

void qe_softmax(const float *x, float *y, int C, int64_t HW)
{
    for (int64_t p = 0; p < HW; p++) {
        float m = x[p];
        for (int c = 1; c < C; c++) if (x[c * HW + p] > m) m = x[c * HW + p];
        double s = 0.0;
        for (int c = 0; c < C; c++) {
            float e = expf(x[c * HW + p] - m);
            y[c * HW + p] = e;
            s += e;
        }
        float inv = (float)(1.0 / s);
        for (int c = 0; c < C; c++) y[c * HW + p] *= inv;
    }
}
