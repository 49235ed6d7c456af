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

int qe_resize_pixels_ac(const uint8_t *px, int H, int W, int ch, int order, float *y, int C,
                        int OH, int OW)
{
    /* The same sampling and arithmetic as qe_resize_bilinear_ac, reading only
     * the two input rows each output row needs, converted to floats on the way:
     * the full-size float planes never exist. */
    int *x0 = (int *)malloc(sizeof(int) * (size_t)OW * 2);
    float *wx = (float *)malloc(sizeof(float) * (size_t)OW);
    float *rows = (float *)malloc(sizeof(float) * (size_t)C * (size_t)W * 2);
    if (!x0 || !wx || !rows) { free(x0); free(wx); free(rows); return -1; }
    int *x1 = x0 + OW;
    float *ra = rows, *rb = rows + (int64_t)C * W;
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
    int have_a = -1, have_b = -1;
    for (int i = 0; i < OH; i++) {
        double pos = i * sy;
        int r0 = (int)pos;
        if (r0 > H - 1) r0 = H - 1;
        int r1 = r0 + 1 < H ? r0 + 1 : H - 1;
        float wy = (float)(pos - r0);
        if (have_a != r0) {
            if (have_b == r0) { float *t = ra; ra = rb; rb = t; have_b = have_a; }
            else qe_pixels_to_planar(px + (int64_t)r0 * W * ch, 1, W, ch, order, ra);
            have_a = r0;
        }
        if (have_b != r1) {
            qe_pixels_to_planar(px + (int64_t)r1 * W * ch, 1, W, ch, order, rb);
            have_b = r1;
        }
        for (int c = 0; c < C; c++) {
            const float *a = ra + (int64_t)c * W, *b = rb + (int64_t)c * W;
            float *o = y + ((int64_t)c * OH + i) * OW;
            for (int j = 0; j < OW; j++) {
                float top = a[x0[j]] * (1.f - wx[j]) + a[x1[j]] * wx[j];
                float bot = b[x0[j]] * (1.f - wx[j]) + b[x1[j]] * wx[j];
                o[j] = top * (1.f - wy) + bot * wy;
            }
        }
    }
    free(x0);
    free(wx);
    free(rows);
    return 0;
}
