/* Phase-plane geometry of a convolution and the split of its input into planes. */
#include <string.h>
#include "qe_kernels.h"

int qe_conv_geom_init(qe_conv_geom *g, int C, int H, int W, int KH, int KW, int S, int P)
{
    if (C <= 0 || H <= 0 || W <= 0 || KH <= 0 || KW <= 0 || S <= 0 || P < 0) return -1;
    int Hp = H + 2 * P, Wp = W + 2 * P;
    if (Hp < KH || Wp < KW) return -1;
    g->C = C; g->H = H; g->W = W; g->KH = KH; g->KW = KW; g->S = S; g->P = P;
    g->OH = (Hp - KH) / S + 1;
    g->OW = (Wp - KW) / S + 1;
    g->Hq = (Hp + S - 1) / S;
    g->Wq = (Wp + S - 1) / S;
    g->SS = S * S;
    g->R = (int64_t)g->OH * g->Wq;
    int64_t rpad = (g->R + QE_TILE - 1) / QE_TILE * QE_TILE;
    int64_t shift = (int64_t)((KH - 1) / S) * g->Wq + (KW - 1) / S;
    int64_t need = rpad + shift;
    int64_t plane = (int64_t)g->Hq * g->Wq;
    if (plane > need) need = plane;
    g->PS = (need + 15) / 16 * 16; /* 64-byte multiple, and the table build works in 16s */
    return 0;
}

int64_t qe_phase_floats(const qe_conv_geom *g) { return (int64_t)g->SS * g->C * g->PS; }

int64_t qe_lut_floats(const qe_conv_geom *g, int M, int K) { return (int64_t)g->SS * M * K * g->PS; }

void qe_phase_split(const qe_conv_geom *g, const float *x, float *xp)
{
    const int S = g->S, P = g->P;
    memset(xp, 0, sizeof(float) * (size_t)qe_phase_floats(g));
    for (int a = 0; a < S; a++)
        for (int b = 0; b < S; b++) {
            float *plane0 = xp + (int64_t)(a * S + b) * g->C * g->PS;
            for (int c = 0; c < g->C; c++) {
                const float *xc = x + (int64_t)c * g->H * g->W;
                float *pc = plane0 + (int64_t)c * g->PS;
                for (int i = 0; i < g->Hq; i++) {
                    int h = i * S + a - P;
                    if (h < 0 || h >= g->H) continue;
                    const float *row = xc + (int64_t)h * g->W;
                    float *out = pc + (int64_t)i * g->Wq;
                    if (S == 1) {
                        memcpy(out + P, row, sizeof(float) * (size_t)g->W);
                        continue;
                    }
                    /* the columns j with 0 <= j*S + b - P < W, without a test each */
                    const int j0 = P - b > 0 ? (P - b + S - 1) / S : 0;
                    const int span = g->W - 1 - b + P;   /* < 0: phase b lies past the row */
                    int j1 = span < 0 ? 0 : span / S + 1;
                    j1 = j1 > g->Wq ? g->Wq : j1;
                    const float *src = row + (int64_t)j0 * S + b - P;
                    for (int j = j0; j < j1; j++) out[j] = src[(int64_t)(j - j0) * S];
                }
            }
        }
}

int64_t qe_acc_floats(const qe_conv_geom *g, int Cout)
{
    return (int64_t)Cout * ((g->R + QE_TILE - 1) / QE_TILE * QE_TILE);
}

int qe_fc_block(int K)
{
    int mb = (16 * 1024) / ((K > 0 ? K : 1) * (int)sizeof(float));
    if (mb < 4) mb = 4;
    return mb & ~3;
}
