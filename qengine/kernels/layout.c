/* Load-time layouts: dense weights from codebooks, the kernels' blocked
 * weight and index layouts, the checks a loaded tensor must pass, and the
 * allocation of the buffers they fill. */
#define _GNU_SOURCE
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include "qe_kernels.h"

/* Large blocks freed by the runtime, kept for the next allocation of the same
 * size: a batch's activations are megabytes each, and the same sizes come back
 * every forward pass.  Without this every pass maps fresh memory and the kernel
 * zeroes it page by page (at batch 16 on AlexNet some 80 MB per pass).  At
 * most QE_KEEP_BLOCKS blocks and QE_KEEP_BYTES bytes are kept.  The lock is
 * only ever tried, never waited for: a thread that does not get it allocates
 * or frees as if there were no cache (so a child forked while another thread
 * held it cannot deadlock). */
#define QE_KEEP_BLOCKS 16
#define QE_KEEP_BYTES ((size_t)256 << 20)
static struct { void *p; size_t n; } kept[QE_KEEP_BLOCKS];
static size_t kept_bytes;
static atomic_flag kept_lock = ATOMIC_FLAG_INIT;

#define QE_HUGE_PAGE ((size_t)2 << 20)

/* nbytes rounded up to whole 2 MB pages; 0 below one page (plain malloc). */
static size_t huge_size(int64_t nbytes)
{
    return nbytes >= (int64_t)QE_HUGE_PAGE
        ? ((size_t)nbytes + QE_HUGE_PAGE - 1) / QE_HUGE_PAGE * QE_HUGE_PAGE : 0;
}

void *qe_alloc(int64_t nbytes)
{
#if defined(__linux__)
    /* Large buffers (index layouts, scratch, a batch's activations) on 2 MB
     * pages where the kernel offers them: a fresh 4 KB page costs a fault of
     * several microseconds in a VM, and loading AlexNet touches some 8,000 of
     * them. */
    const size_t n = huge_size(nbytes);
    if (n) {
        void *p = NULL;
        if (!atomic_flag_test_and_set_explicit(&kept_lock, memory_order_acquire)) {
            for (int i = 0; i < QE_KEEP_BLOCKS; i++)
                if (kept[i].p && kept[i].n == n) {
                    p = kept[i].p;
                    kept[i].p = NULL;
                    kept_bytes -= n;
                    break;
                }
            atomic_flag_clear_explicit(&kept_lock, memory_order_release);
            if (p) return p;
        }
        if (posix_memalign(&p, QE_HUGE_PAGE, n) != 0) return NULL;
#if defined(MADV_HUGEPAGE)
        madvise(p, n, MADV_HUGEPAGE);
#endif
        return p;
    }
#endif
    return malloc(nbytes > 0 ? (size_t)nbytes : 1);
}

void qe_free(void *p, int64_t nbytes)
{
#if defined(__linux__)
    const size_t n = huge_size(nbytes);
    if (p && n && !atomic_flag_test_and_set_explicit(&kept_lock, memory_order_acquire)) {
        int slot = -1;
        if (kept_bytes + n <= QE_KEEP_BYTES)
            for (int i = 0; i < QE_KEEP_BLOCKS && slot < 0; i++)
                if (!kept[i].p) slot = i;
        if (slot >= 0) {
            kept[slot].p = p;
            kept[slot].n = n;
            kept_bytes += n;
            p = NULL;
        }
        atomic_flag_clear_explicit(&kept_lock, memory_order_release);
    }
#else
    (void)nbytes;
#endif
    free(p);
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

/* Dense convolution weights for the int16 kernel (qe_i16.h): w [Cout][J] of
 * `groups` groups (Cout/groups outputs each) -> out [groups][ceil(Cg/B)][J2/2][B][2]
 * int16 (B = QE_DENSE_CO, J2 = J rounded up to even, zeros past the real
 * channels and taps) and scale [Cout] (one per output channel).
 *
 * The input bound A (|xq| <= A) is one per layer.  Output channel co gets
 * levels W = max|w| / scale chosen so that A * sum_j |wq[j]| <= 2^31 - 1:
 * since sum |round(w/s)| <= sum|w|/s + J/2, W = (B/A - J/2) * max|w| / sum|w|
 * (less a 1e-6 margin for the scale rounded to float) keeps it; the sum is
 * checked again after rounding, and a channel whose scale would fall below
 * the normal floats counts as zero.  A balances the two
 * quantisation errors for the widest channel (the largest sum|w|/max|w|):
 * A = sqrt(2 * B / (sum|w|/max|w|)), capped at 32767, so the input gets about
 * twice the weights' levels (measured on SqueezeNet: activations, max-scaled
 * per image, need more levels than per-channel weights).  Returns A, or -1
 * when a channel cannot be laid out within the bound. */
int qe_i16_weights(const float *w, int groups, int Cg, int64_t J, int16_t *out, float *scale)
{
    const double B = 2147483647.0;
    const int Cout = groups * Cg;
    const int64_t J2 = (J + 1) / 2 * 2;
    const int nblk = (Cg + QE_DENSE_CO - 1) / QE_DENSE_CO;
    double widest = 1.0;   /* largest sum|w| / max|w| of a channel (>= 1 unless all zero) */
    for (int co = 0; co < Cout; co++) {
        double mx = 0.0, sum = 0.0;
        for (int64_t j = 0; j < J; j++) {
            const double a = fabs((double)w[(int64_t)co * J + j]);
            mx = a > mx ? a : mx;
            sum += a;
        }
        if (mx > 0.0 && sum / mx > widest) widest = sum / mx;
    }
    double Ad = floor(sqrt(2.0 * B / widest));
    const int A = Ad > 32767.0 ? 32767 : Ad < 1.0 ? 1 : (int)Ad;
    memset(out, 0, sizeof(int16_t) * (size_t)groups * nblk * J2 * QE_DENSE_CO);
    for (int co = 0; co < Cout; co++) {
        const float *wc = w + (int64_t)co * J;
        double mx = 0.0, sum = 0.0;
        for (int64_t j = 0; j < J; j++) {
            const double a = fabs((double)wc[j]);
            mx = a > mx ? a : mx;
            sum += a;
        }
        const int gi = co / Cg, cl = co % Cg;
        int16_t *ob = out + ((int64_t)gi * nblk + cl / QE_DENSE_CO) * J2 * QE_DENSE_CO;
        const int c = cl % QE_DENSE_CO;
        if (mx == 0.0) {
            scale[co] = 0.f;
            continue;
        }
        /* (1 - 1e-6): room for s rounded to float below mx / levels */
        double levels = floor((B / A - (double)J2 / 2.0) * mx / sum * (1.0 - 1e-6));
        levels = levels > 32767.0 ? 32767.0 : levels;
        if (levels < 1.0) return -1;
        const float s = (float)(mx / levels);
        if (!(s >= FLT_MIN)) {   /* weights scaled below normal floats: they add nothing */
            scale[co] = 0.f;
            continue;
        }
        int64_t total = 0;
        for (int64_t j = 0; j < J; j++) {
            double q = nearbyint((double)wc[j] / (double)s);
            q = q > 32767.0 ? 32767.0 : q < -32767.0 ? -32767.0 : q;
            ob[(j / 2) * 2 * QE_DENSE_CO + 2 * c + (j & 1)] = (int16_t)q;
            total += (int64_t)fabs(q);
        }
        if ((double)A * (double)total > B) return -1;
        scale[co] = s;
    }
    return A;
}

void qe_fc_codebook_t(const float *cb, int M, int K, int d, float *cbt)
{
    for (int m = 0; m < M; m++) {
        const float *src = cb + (int64_t)m * K * d;
        float *dst = cbt + (int64_t)m * K * d;
        for (int k = 0; k < K; k++)
            for (int c = 0; c < d; c++) dst[(int64_t)c * K + k] = src[(int64_t)k * d + c];
    }
}

int qe_wino_virtual(int C, int KH, int KW, int S, int tile)
{
    const int r = qe_wino_r(tile), KHs = (KH + S - 1) / S, KWs = (KW + S - 1) / S;
    return (KHs + r - 1) / r * ((KWs + r - 1) / r) * S * S * C;
}

/* The NXI transformed rows U[xi][c] (C virtual channels) of output channel
 * co, NXI = n*n; see qe_wino_weights for the numbering.  G (n x r) pairs with
 * qe_wino.h's B' and A' (the rows of B' there are scaled to integers, and G's
 * rows carry the inverse scale). */
static void wino_rows(const float *w, int64_t co, int C0, int KH, int KW, int S, int SX, int C,
                      int tile, double *U)
{
    static const double G2[4 * 3] = {1, 0, 0, 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0, 0, 1};
    static const double G4[6 * 3] = {0.25,       0,          0,           /* points 0, +-1, +-2 */
                                     -1.0 / 6,   -1.0 / 6,   -1.0 / 6,
                                     -1.0 / 6,   1.0 / 6,    -1.0 / 6,
                                     1.0 / 24,   1.0 / 12,   1.0 / 6,
                                     1.0 / 24,   -1.0 / 12,  1.0 / 6,
                                     0,          0,          1};
    static const double G8[8 * 5] = {   /* points 0, +-1, +-2, +-1/2 */
        0.25,      0,          0,         0,          0,
        -1.0 / 18, -1.0 / 18,  -1.0 / 18, -1.0 / 18,  -1.0 / 18,
        -1.0 / 18, 1.0 / 18,   -1.0 / 18, 1.0 / 18,   -1.0 / 18,
        1.0 / 360, 1.0 / 180,  1.0 / 90,  1.0 / 45,   2.0 / 45,
        1.0 / 360, -1.0 / 180, 1.0 / 90,  -1.0 / 45,  2.0 / 45,
        16.0 / 45, 8.0 / 45,   4.0 / 45,  2.0 / 45,   1.0 / 45,
        16.0 / 45, -8.0 / 45,  4.0 / 45,  -2.0 / 45,  1.0 / 45,
        0,         0,          0,         0,          0.25};
    const int n = qe_wino_n(tile), r = qe_wino_r(tile);
    const double *G = tile == QE_WINO_F45 ? G8 : tile == 4 ? G4 : G2;
    for (int c = 0; c < C; c++) {
        const int piece = c / (S * S * C0), pa = c / S % S, pb = c % S;
        const int sy = piece / SX, sx = piece % SX;
        const float *wc = w + (co * C0 + c / (S * S) % C0) * KH * KW;
        double g[5][5];   /* this phase and piece of the kernel, zeros past its edge */
        for (int k = 0; k < r; k++)
            for (int l = 0; l < r; l++) {
                const int kh = (r * sy + k) * S + pa, kw = (r * sx + l) * S + pb;
                g[k][l] = kh < KH && kw < KW ? (double)wc[kh * KW + kw] : 0.0;
            }
        double t[8][5];   /* G g */
        for (int a = 0; a < n; a++)
            for (int l = 0; l < r; l++) {
                double v = 0.0;
                for (int k = 0; k < r; k++) v += G[a * r + k] * g[k][l];
                t[a][l] = v;
            }
        for (int a = 0; a < n; a++)
            for (int b = 0; b < n; b++) {
                double v = 0.0;
                for (int l = 0; l < r; l++) v += t[a][l] * G[b * r + l];
                U[(int64_t)(a * n + b) * C + c] = v;
            }
    }
}

/* Winograd F(2x2, 3x3) (tile 2), F(4x4, 3x3) (tile 4) or F(4x4, 5x5) (tile
 * QE_WINO_F45) weights for qe_wino_conv.  w [groups*Cg][C0][KH][KW] (C0 input channels per group),
 * stride S.  A strided convolution is first made a stride-1 one by space to
 * depth: phase (a, b) of channel c is the input at rows = a mod S, columns =
 * b mod S, and the kernel becomes ceil(KH/S) x ceil(KW/S) over S*S*C0
 * channels.  A kernel larger than r x r (r = 3, or 5 for F(4x4, 5x5)) is then
 * split into SY x SX pieces of r x r (zeros past its edge), piece (sy, sx)
 * applied to the input shifted by (r sy, r sx).  The layer is then an r x r
 * convolution of CV = SY*SX*S*S*C0
 * virtual channels, numbered ((piece*C0 + c)*S + a)*S + b (a phase's S values
 * of one row are then S neighbours).  U = G g G' per output and virtual
 * channel, quantised with one scale per output channel and transformed
 * position xi (NXI = n^2 = 16, 36 or 64 of them): out [groups][CoB][NXI][CV2/2][32][2]
 * int16 (CoB = ceil(Cg/32), CV2 = CV rounded up to even, zeros past Cg and
 * CV), scale [groups][CoB][NXI][32].  The transformed inputs are bounded by
 * VB: tile 2, VB = 4A with the input bound A (|xq| <= A, so |V| <= 4A <=
 * 32764 in int16) balancing the levels as qe_i16_weights does; tiles 4 and
 * QE_WINO_F45, VB = QE_WINO4_VB (V rescaled per image) and A = 32767.  Each row keeps
 * VB * sum_c |Uq| <= 2^31 - 1, so the int32 sums cannot overflow in any
 * order.  Returns A, or -1 if a row cannot be laid out within the bound, -2
 * if out of memory. */
int qe_wino_weights(const float *w, int groups, int Cg, int C0, int KH, int KW, int S, int tile,
                    int16_t *out, float *scale)
{
    const double B = 2147483647.0;
    const int r = qe_wino_r(tile), SX = ((KW + S - 1) / S + r - 1) / r;
    const int C = qe_wino_virtual(C0, KH, KW, S, tile);
    const int CoB = (Cg + 31) / 32, CP = (C + 1) / 2, NXI = qe_wino_n(tile) * qe_wino_n(tile);
    const int64_t Cout = (int64_t)groups * Cg;
    /* one output channel's NXI rows at a time, computed in both passes */
    double *U = (double *)malloc(sizeof(double) * NXI * (size_t)(C > 0 ? C : 1));
    if (!U) return -2;
    int A;
    double VB;
    if (tile != 2) {
        A = 32767;
        VB = QE_WINO4_VB;
    } else {
        double widest = 1.0;
        for (int64_t co = 0; co < Cout; co++) {
            wino_rows(w, co, C0, KH, KW, S, SX, C, tile, U);
            for (int xi = 0; xi < NXI; xi++) {
                double mx = 0.0, sum = 0.0;
                for (int c = 0; c < C; c++) {
                    const double a = fabs(U[(int64_t)xi * C + c]);
                    mx = a > mx ? a : mx;
                    sum += a;
                }
                if (mx > 0.0 && sum / mx > widest) widest = sum / mx;
            }
        }
        double Ad = floor(sqrt(B / (2.0 * widest)));
        A = Ad > 8191.0 ? 8191 : Ad < 1.0 ? 1 : (int)Ad;
        VB = 4.0 * A;
    }
    memset(out, 0, sizeof(int16_t) * (size_t)groups * CoB * NXI * CP * 64);
    memset(scale, 0, sizeof(float) * (size_t)groups * CoB * NXI * 32);
    int rc = A;
    for (int64_t co = 0; co < Cout && rc > 0; co++) {
        wino_rows(w, co, C0, KH, KW, S, SX, C, tile, U);
        const int gi = (int)(co / Cg), cl = (int)(co % Cg);
        const int64_t blk = (int64_t)gi * CoB + cl / 32;
        for (int xi = 0; xi < NXI && rc > 0; xi++) {
            const double *u = U + (int64_t)xi * C;
            int16_t *ob = out + (blk * NXI + xi) * CP * 64 + 2 * (cl % 32);
            double mx = 0.0, sum = 0.0;
            for (int c = 0; c < C; c++) {
                const double a = fabs(u[c]);
                mx = a > mx ? a : mx;
                sum += a;
            }
            if (mx == 0.0) continue;
            double levels = floor((B / VB - (double)CP) * mx / sum * (1.0 - 1e-6));
            levels = levels > 32767.0 ? 32767.0 : levels;
            if (levels < 1.0) {
                rc = -1;
                break;
            }
            const float s = (float)(mx / levels);
            if (!(s >= FLT_MIN)) continue;   /* below normal floats: adds nothing */
            int64_t total = 0;
            for (int c = 0; c < C; c++) {
                double q = nearbyint(u[c] / (double)s);
                q = q > 32767.0 ? 32767.0 : q < -32767.0 ? -32767.0 : q;
                ob[(int64_t)(c / 2) * 64 + (c & 1)] = (int16_t)q;
                total += (int64_t)fabs(q);
            }
            if (VB * (double)total > B) {
                rc = -1;
                break;
            }
            scale[(blk * NXI + xi) * 32 + cl % 32] = s;
        }
    }
    free(U);
    return rc;
}

void qe_pw_weights(const float *w, int Cout, int C, float *out)
{
    const int nlb = (Cout + QE_PW_LB - 1) / QE_PW_LB;
    memset(out, 0, sizeof(float) * (size_t)nlb * C * QE_PW_LB);
    for (int co = 0; co < Cout; co++)
        for (int c = 0; c < C; c++)
            out[((int64_t)(co / QE_PW_LB) * C + c) * QE_PW_LB + co % QE_PW_LB] =
                w[(int64_t)co * C + c];
}
