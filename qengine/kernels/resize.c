/* Image resizing for preprocessing. */
#include <stdlib.h>
#include "qe_kernels.h"

int qe_resize_bilinear_ac(const float *x, int C, int H, int W, float *y, int OH, int OW)
{
    /* Column sample positions are the same for every row: compute them once. */
    int *x0 = (int *)malloc(sizeof(int) * (size_t)OW * 2);
    float *wx = (float *)malloc(sizeof(float) * (size_t)OW);
    if (!x0 || !wx) { free(x0); free(wx); return -1; }
    int *x1 = x0 + OW;
    const double sx = OW > 1 ? (double)(W - 1) / (OW - 1) : 0.0;
    const double sy = OH > 1 ? (double)(H - 1) / (OH - 1) : 0.0;
    for (int j = 0; j < OW; j++) {
        double pos = j * sx;
        int i0 = (int)pos;
        if (i0 > W - 1) i0 = W - 1;
        x0[j] = i0;
        x1[j] = i0 + 1 < W ? i0 + 1 : W - 1;
        wx[j] = (float)(pos - i0);
    }
    for (int c = 0; c < C; c++) {
        const float *xc = x + (int64_t)c * H * W;
        float *yc = y + (int64_t)c * OH * OW;
        for (int i = 0; i < OH; i++) {
            double pos = i * sy;
            int r0 = (int)pos;
            if (r0 > H - 1) r0 = H - 1;
            int r1 = r0 + 1 < H ? r0 + 1 : H - 1;
            float wy = (float)(pos - r0);
            const float *a = xc + (int64_t)r0 * W, *b = xc + (int64_t)r1 * W;
            float *o = yc + (int64_t)i * OW;
            for (int j = 0; j < OW; j++) {
                float top = a[x0[j]] * (1.f - wx[j]) + a[x1[j]] * wx[j];
                float bot = b[x0[j]] * (1.f - wx[j]) + b[x1[j]] * wx[j];
                o[j] = top * (1.f - wy) + bot * wy;
            }
        }
    }
    free(x0);
    free(wx);
    return 0;
}
