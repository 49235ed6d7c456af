/* Image resizing for preprocessing: bilinear with align-corners sampling. */
#include <stdlib.h>
#include "qe_kernels.h"

/* Column sample positions, the same for every row: x0/x1 the two source
 * columns, wx the weight of x1. */
static void ac_columns(int W, int OW, int *x0, int *x1, float *wx)
{
    const double sx = OW > 1 ? (double)(W - 1) / (OW - 1) : 0.0;
    for (int j = 0; j < OW; j++) {
        double pos = j * sx;
        int i0 = (int)pos;
        if (i0 > W - 1) i0 = W - 1;
        x0[j] = i0;
        x1[j] = i0 + 1 < W ? i0 + 1 : W - 1;
        wx[j] = (float)(pos - i0);
    }
}

/* The two source rows of output row i, and the weight of the second. */
static float ac_rows(int i, int H, int OH, int *r0, int *r1)
{
    const double sy = OH > 1 ? (double)(H - 1) / (OH - 1) : 0.0;
    double pos = i * sy;
    int a = (int)pos;
    if (a > H - 1) a = H - 1;
    *r0 = a;
    *r1 = a + 1 < H ? a + 1 : H - 1;
    return (float)(pos - a);
}

/* One output row from source rows a and b. */
static void ac_blend(const float *a, const float *b, const int *x0, const int *x1,
                     const float *wx, float wy, float *o, int OW)
{
    for (int j = 0; j < OW; j++) {
        float top = a[x0[j]] * (1.f - wx[j]) + a[x1[j]] * wx[j];
        float bot = b[x0[j]] * (1.f - wx[j]) + b[x1[j]] * wx[j];
        o[j] = top * (1.f - wy) + bot * wy;
    }
}

int qe_resize_bilinear_ac(const float *x, int C, int H, int W, float *y, int OH, int OW)
{
    int *x0 = (int *)malloc(sizeof(int) * (size_t)OW * 2);
    float *wx = (float *)malloc(sizeof(float) * (size_t)OW);
    if (!x0 || !wx) { free(x0); free(wx); return -1; }
    int *x1 = x0 + OW;
    ac_columns(W, OW, x0, x1, wx);
    for (int c = 0; c < C; c++) {
        const float *xc = x + (int64_t)c * H * W;
        float *yc = y + (int64_t)c * OH * OW;
        for (int i = 0; i < OH; i++) {
            int r0, r1;
            const float wy = ac_rows(i, H, OH, &r0, &r1);
            ac_blend(xc + (int64_t)r0 * W, xc + (int64_t)r1 * W, x0, x1, wx, wy,
                     yc + (int64_t)i * OW, OW);
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
    ac_columns(W, OW, x0, x1, wx);
    int have_a = -1, have_b = -1;
    for (int i = 0; i < OH; i++) {
        int r0, r1;
        const float wy = ac_rows(i, H, OH, &r0, &r1);
        if (have_a != r0) {
            if (have_b == r0) { float *t = ra; ra = rb; rb = t; have_b = have_a; }
            else qe_pixels_to_planar(px + (int64_t)r0 * W * ch, 1, W, ch, order, ra);
            have_a = r0;
        }
        if (have_b != r1) {
            qe_pixels_to_planar(px + (int64_t)r1 * W * ch, 1, W, ch, order, rb);
            have_b = r1;
        }
        for (int c = 0; c < C; c++)
            ac_blend(ra + (int64_t)c * W, rb + (int64_t)c * W, x0, x1, wx, wy,
                     y + ((int64_t)c * OH + i) * OW, OW);
    }
    free(x0);
    free(wx);
    free(rows);
    return 0;
}
