/* Preprocessing: 8-bit pixels to planar floats, crop with mean and scale. */
#include <math.h>
#include "qe_kernels.h"

void qe_pixels_to_planar(const uint8_t *px, int H, int W, int ch, int order, float *out)
{
    const int64_t HW = (int64_t)H * W;
    if (order == 2) {   /* grey */
        for (int64_t i = 0; i < HW; i++) {
            if (ch == 1) { out[i] = px[i]; continue; }
            const uint8_t *p = px + 3 * i;
            out[i] = (float)nearbyint(p[0] * 0.299 + p[1] * 0.587 + p[2] * 0.114);
        }
        return;
    }
    for (int c = 0; c < 3; c++) {
        const int src = ch == 1 ? 0 : (order == 0 ? 2 - c : c);   /* BGR reverses RGB */
        float *o = out + c * HW;
        for (int64_t i = 0; i < HW; i++) o[i] = px[i * ch + src];
    }
}

void qe_crop_mean_scale(const float *x, int C, int H, int W, int y0, int x0, const float *mean,
                        int MH, int MW, int my0, int mx0, float scale, int apply_scale,
                        int h, int w, float *out)
{
    for (int c = 0; c < C; c++)
        for (int i = 0; i < h; i++) {
            const float *s = x + ((int64_t)c * H + y0 + i) * W + x0;
            const float *m = mean ? mean + ((int64_t)c * MH + my0 + i) * MW + mx0 : NULL;
            float *o = out + ((int64_t)c * h + i) * w;
            for (int j = 0; j < w; j++) {
                float v = m ? s[j] - m[j] : s[j];
                o[j] = apply_scale ? v * scale : v;
            }
        }
}
