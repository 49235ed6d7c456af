/* Fast mode, 3x3 stride-1 convolution by Winograd's F(2x2, 3x3) in 16-bit
 * integers (strategy "winograd").  Included by qe_bodies.h once per
 * instruction set (FN, QE_SUFFIX, QE_SIMD).  Strided convolutions and larger
 * kernels reach it as 3x3 stride-1 ones over more ("virtual") channels: see
 * qe_wino_weights (layout.c) and qe_wino_conv (qe_dispatch.c).
 *
 * Each 2x2 block of outputs ("tile" t) is Y = A' [sum_c U[c] . V[c]] A with
 * V[c] = B' d[c] B the transform of the 4x4 input patch d of channel c and
 * U[c] = G g[c] G' the transform of the 3x3 kernel g: 16 products per channel
 * and tile instead of 36 multiply-adds, 2.25x fewer (Lavin & Gray 2016).
 *
 * Integers: the input is quantised per image to |xq| <= A (as qe_i16.h), and
 * B' has entries 0, +-1 with two non-zeros per row, so V is exact in int16
 * with |V| <= 4A <= 32764.  U is quantised at load (qe_wino_weights) with
 * one scale per transformed position xi (16) and output channel:
 * 4A * sum_c |Uq[xi][co][c]| <= 2^31 - 1, so each of the 16 products
 * M[xi][co][t] = sum_c Uq V is an exact int32 in any order, the same on every
 * instruction set.  The output transform then runs in float, one rounding
 * per step in a fixed order (no fused multiply-adds): m = float(M) * scale,
 * Y = A' m A, + bias, ReLU.
 *
 * Layouts (C2 = channels rounded up to even, CS to a multiple of 16, T =
 * tiles, 32 output channels per block cb, pairs of input channels p):
 *   V  [16][T][CS]            int16, per image (wino_input)
 *   U  [CoB][16][C2/2][32][2] int16: for block cb, xi and pair p, the two
 *                             channels' weights of the 32 output channels
 *   sc [CoB][16][32]          float, input scale x weight scale
 * M for a block of NT tiles goes through a small buffer [16][NT][32]. */

#define FN(name) QE_CAT(name, QE_SUFFIX)

#if QE_SIMD == 3
#define QE_WINO_NT 12  /* tiles per register block: 12 x 2 zmm of 16 channels */
#elif QE_SIMD == 2
#define QE_WINO_NT 3   /* 3 x 4 ymm of 8 channels */
#else
#define QE_WINO_NT 4
#endif

/* Rows [hlo, hhi) of one stride-1 piece of XP [HH][WW][CS] from the
 * quantised planes xq [C][H][W]: XP[h][w][v0 + c] = xq[c][h + dy][w + dx]
 * where that lies inside the input (the rest of XP stays as it was: zeros).  Blocks of 16 channels
 * x 16 positions are transposed in registers (four rounds of two-vector
 * shuffles, each swapping the off-diagonal b x b blocks of every 2b x 2b
 * block); edges one value at a time. */
typedef int16_t QE_CAT(v16w, QE_SUFFIX) __attribute__((vector_size(32), aligned(2)));
#define V16W QE_CAT(v16w, QE_SUFFIX)
static void FN(wino_pack)(const int16_t *xq, int C, int H, int W, int dy, int dx, int16_t *XP,
                          int HH, int WW, int CS, int64_t v0, int hlo, int hhi)
{
    int h0 = -dy > 0 ? -dy : 0, h1 = H - dy < HH ? H - dy : HH;
    const int w0 = -dx > 0 ? -dx : 0, w1 = W - dx < WW ? W - dx : WW;
    h0 = h0 > hlo ? h0 : hlo;
    h1 = h1 < hhi ? h1 : hhi;
    const V16W lo8 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
               hi8 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31},
               lo4 = {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
               hi4 = {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31},
               lo2 = {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
               hi2 = {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31},
               lo1 = {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30},
               hi1 = {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31};
    for (int h = h0; h < h1; h++) {
        int16_t *dst = XP + (int64_t)h * WW * CS + v0;
        const int16_t *src = xq + (int64_t)(h + dy) * W + dx;
        int c0 = 0;
        for (; c0 + 16 <= C; c0 += 16) {
            int w = w0;
            for (; w + 16 <= w1; w += 16) {
                V16W r[16];
                for (int i = 0; i < 16; i++)
                    memcpy(&r[i], src + (int64_t)(c0 + i) * H * W + w, 32);
#define QE_WINO_ROUND(b, lo, hi)                                                \
                for (int i = 0; i < 16; i++)                                    \
                    if (!(i & b)) {                                             \
                        const V16W a = r[i], z = r[i | b];                      \
                        r[i] = __builtin_shuffle(a, z, lo);                     \
                        r[i | b] = __builtin_shuffle(a, z, hi);                 \
                    }
                QE_WINO_ROUND(8, lo8, hi8)
                QE_WINO_ROUND(4, lo4, hi4)
                QE_WINO_ROUND(2, lo2, hi2)
                QE_WINO_ROUND(1, lo1, hi1)
#undef QE_WINO_ROUND
                for (int i = 0; i < 16; i++)
                    memcpy(dst + (int64_t)(w + i) * CS + c0, &r[i], 32);
            }
            for (; w < w1; w++)
                for (int c = c0; c < c0 + 16; c++)
                    dst[(int64_t)w * CS + c] = src[(int64_t)c * H * W + w];
        }
        for (int w = w0; w < w1; w++)
            for (int c = c0; c < C; c++) dst[(int64_t)w * CS + c] = src[(int64_t)c * H * W + w];
    }
}

/* Tiles [t0, t1) of V [16][T][CS] from the quantised input XP [HH][WW][CS]
 * (channels last, zero padded; HH >= 2*TH + 2, WW >= 2*TW + 2; CS a multiple
 * of 16), in vectors of 16 channels. */
static void FN(wino_input)(const int16_t *XP, int WW, int CS, int TH, int TW, int64_t t0,
                           int64_t t1, int16_t *V)
{
    const int64_t T = (int64_t)TH * TW, plane = T * CS;
    for (int64_t t = t0; t < t1; t++) {
        const int ty = (int)(t / TW), tx = (int)(t % TW);
        const int16_t *d0 = XP + ((int64_t)(2 * ty) * WW + 2 * tx) * CS;
        const int64_t rs = (int64_t)WW * CS;   /* next row */
        int16_t *v = V + t * CS;
        for (int c = 0; c < CS; c += 16) {
            V16W e[4][4];   /* d B, row by row */
            for (int r = 0; r < 4; r++) {
                V16W a[4];
                for (int k = 0; k < 4; k++) memcpy(&a[k], d0 + r * rs + k * CS + c, 32);
                e[r][0] = a[0] - a[2];
                e[r][1] = a[1] + a[2];
                e[r][2] = a[2] - a[1];
                e[r][3] = a[1] - a[3];
            }
            for (int k = 0; k < 4; k++) {   /* B' (d B) */
                const V16W o0 = e[0][k] - e[2][k], o1 = e[1][k] + e[2][k],
                           o2 = e[2][k] - e[1][k], o3 = e[1][k] - e[3][k];
                memcpy(v + (int64_t)(0 * 4 + k) * plane + c, &o0, 32);
                memcpy(v + (int64_t)(1 * 4 + k) * plane + c, &o1, 32);
                memcpy(v + (int64_t)(2 * 4 + k) * plane + c, &o2, 32);
                memcpy(v + (int64_t)(3 * 4 + k) * plane + c, &o3, 32);
            }
        }
    }
}

/* F(4x4, 3x3): each 4x4 block of outputs from a 6x6 input patch d, V = B' d B
 * with B' = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0;
 * 0 2 -1 -2 1 0; 0 4 0 -5 0 1] (points 0, +-1, +-2): 36 products per channel
 * and tile instead of 144 multiply-adds, 4x fewer.  B' has row sums of |.| up
 * to 10, so V (exact in int32: |V| <= 100 A) is rescaled per transformed
 * position xi to int16 |Vq| <= QE_WINO4_VB with one scale per image,
 * sv[xi] = QE_WINO4_VB / max |V[xi]|: Vq = float(V) * sv[xi] (one float
 * rounding) rounded to the nearest integer, ties to even, so every
 * instruction set gets the same bits.  QE_WINO4_VB balances Vq's rounding
 * against the weights' levels: QE_WINO4_VB * sum_c |Uq| <= 2^31 - 1. */

/* 6 outputs of B' applied to a[0..5] (int32 lanes). */
#define QE_W4_BT(a, o)                                                          \
    do {                                                                        \
        const VNI s12 = a[1] + a[2], d13 = a[1] - a[3];                         \
        o[0] = (a[0] - a[2]) * 4 - a[2] + a[4];                                 \
        o[1] = a[3] + a[4] - s12 * 4;                                           \
        o[2] = (a[1] - a[2]) * 4 - a[3] + a[4];                                 \
        o[3] = a[4] - a[2] - d13 * 2;                                           \
        o[4] = a[4] - a[2] + d13 * 2;                                           \
        o[5] = d13 * 4 - a[3] + a[5];                                           \
    } while (0)

/* F(4x4, 5x5): each 4x4 block of outputs from an 8x8 input patch, V = B' d B
 * with points 0, +-1, +-2, +-1/2 (and infinity), B' with its rows scaled to
 * integers (G's rows in layout.c carry the inverse scales):
 *   [4 0 -21 0 21 0 -4 0; 0 4 4 -17 -17 4 4 0; 0 -4 4 17 -17 -4 4 0;
 *    0 2 1 -10 -5 8 4 0; 0 -2 1 10 -5 -8 4 0; 0 4 8 -5 -10 1 2 0;
 *    0 -4 8 5 -10 -1 2 0; 0 -4 0 21 0 -21 0 4]
 * 64 products per channel and tile instead of 400 multiply-adds (6.25x fewer;
 * a 5x5 kernel in four 3x3 pieces takes 144 by F(4x4, 3x3)).  Row sums of
 * |B'| are at most 50, so |V| <= 2500 A < 2^31 with A = 32767 (every
 * intermediate below is a partial row sum, also within it), and V is
 * rescaled per position to int16 exactly as F(4x4, 3x3)'s. */

/* 8 outputs of B' applied to a[0..7] (int32 lanes). */
#define QE_W8_BT(a, o)                                                          \
    do {                                                                        \
        const VNI t1 = (a[1] + a[5]) * 4 - a[3] * 17;                           \
        const VNI t2 = (a[2] + a[6]) * 4 - a[4] * 17;                           \
        const VNI t3 = (a[1] - a[3] * 5 + a[5] * 4) * 2;                        \
        const VNI t4 = a[2] - a[4] * 5 + a[6] * 4;                              \
        const VNI t5 = a[1] * 4 - a[3] * 5 + a[5];                              \
        const VNI t6 = (a[2] * 4 - a[4] * 5 + a[6]) * 2;                        \
        o[0] = (a[0] - a[6]) * 4 + (a[4] - a[2]) * 21;                          \
        o[1] = t1 + t2;                                                         \
        o[2] = t2 - t1;                                                         \
        o[3] = t3 + t4;                                                         \
        o[4] = t4 - t3;                                                         \
        o[5] = t5 + t6;                                                         \
        o[6] = t6 - t5;                                                         \
        o[7] = (a[7] - a[1]) * 4 + (a[3] - a[5]) * 21;                          \
    } while (0)

/* Tiles [t0, t1) of F(4x4, 3x3) (n = 6, a 6x6 patch per tile) or F(4x4, 5x5)
 * (n = 8).  Pass sv == NULL: vmax[xi] = the larger of vmax[xi] and max over
 * those tiles and channels of |V[xi]| (zeroed by the caller before the
 * first).  Otherwise V [n^2][T][CS] int16 = the rescaled Vq.  XP [HH][WW][CS]
 * as wino_input's, HH >= 4 TH + n - 4.  n is a constant at every call. */
static inline __attribute__((always_inline)) void
FN(wino_rescaled_input)(const int n, const int16_t *XP, int WW, int CS, int TH, int TW,
                        int64_t t0, int64_t t1, const float *sv, int32_t *vmax, int16_t *V)
{
    const int64_t T = (int64_t)TH * TW, plane = T * CS, rs = (int64_t)WW * CS;
    VNI hi[64], lo[64];   /* pass 1: the largest and smallest values per xi */
    VN svv[64];
    for (int xi = 0; xi < n * n; xi++) {
        hi[xi] = lo[xi] = (VNI){0};
        if (sv) svv[xi] = FN(vnsplat)(sv[xi]);
    }
    for (int64_t t = t0; t < t1; t++) {
        const int ty = (int)(t / TW), tx = (int)(t % TW);
        const int16_t *d0 = XP + ((int64_t)(4 * ty) * WW + 4 * tx) * CS;
        for (int c = 0; c < CS; c += QE_NL) {
            VNI e[8][8];   /* d B, row by row */
            for (int r = 0; r < n; r++) {
                VNI a[8];
                for (int k = 0; k < n; k++) {
                    VNS h;
                    memcpy(&h, d0 + r * rs + k * CS + c, sizeof h);
                    a[k] = __builtin_convertvector(h, VNI);
                }
                if (n == 6)
                    QE_W4_BT(a, e[r]);
                else
                    QE_W8_BT(a, e[r]);
            }
            for (int k = 0; k < n; k++) {   /* B' (d B), column k */
                VNI a[8], o[8];
                for (int r = 0; r < n; r++) a[r] = e[r][k];
                if (n == 6)
                    QE_W4_BT(a, o);
                else
                    QE_W8_BT(a, o);
                for (int r = 0; r < n; r++) {
                    const int xi = r * n + k;
                    if (!sv) {
                        const VNI gt = o[r] > hi[xi], lt = o[r] < lo[xi];
                        hi[xi] = (o[r] & gt) | (hi[xi] & ~gt);
                        lo[xi] = (o[r] & lt) | (lo[xi] & ~lt);
                        continue;
                    }
                    /* |V| <= vmax and sv <= (VB / vmax)(1 + 2^-24): the rounded
                     * value stays within VB */
                    const VN f = __builtin_convertvector(o[r], VN) * svv[xi];
                    const VNS q = __builtin_convertvector(FN(vnrint)(f), VNS);
                    memcpy(V + (int64_t)xi * plane + t * CS + c, &q, sizeof q);
                }
            }
        }
    }
    if (!sv)
        for (int xi = 0; xi < n * n; xi++) {
            int32_t h[QE_NL], l[QE_NL];
            memcpy(h, &hi[xi], sizeof h);
            memcpy(l, &lo[xi], sizeof l);
            for (int i = 0; i < QE_NL; i++) {
                vmax[xi] = h[i] > vmax[xi] ? h[i] : vmax[xi];
                vmax[xi] = -l[i] > vmax[xi] ? -l[i] : vmax[xi];
            }
        }
}

static void FN(wino4_input)(const int16_t *XP, int WW, int CS, int TH, int TW, int64_t t0,
                            int64_t t1, const float *sv, int32_t *vmax, int16_t *V)
{
    FN(wino_rescaled_input)(6, XP, WW, CS, TH, TW, t0, t1, sv, vmax, V);
}

static void FN(wino8_input)(const int16_t *XP, int WW, int CS, int TH, int TW, int64_t t0,
                            int64_t t1, const float *sv, int32_t *vmax, int16_t *V)
{
    FN(wino_rescaled_input)(8, XP, WW, CS, TH, TW, t0, t1, sv, vmax, V);
}
#undef QE_W4_BT
#undef QE_W8_BT

#ifndef QE_WINO_PREFETCH
#define QE_WINO_PREFETCH 8192   /* bytes ahead in a block's weights */
#endif
/* mb[t][32] = sum over pairs p of U[p][co][0..1] . V[t][2p..2p+1], for the NT
 * tiles at v (tile stride CS) and the 32 channels of one block at u. */
static inline __attribute__((always_inline)) void
FN(wino_gemm)(const int16_t *u, const int16_t *v, int CP, int CS, const int NT, int32_t *mb)
{
#if QE_SIMD == 3
    __m512i a[QE_WINO_NT][2];
    for (int t = 0; t < NT; t++) a[t][0] = a[t][1] = _mm512_setzero_si512();
    for (int p = 0; p < CP; p++) {
        /* the weights stream once per tile block: from L2, or L3 for the first */
        _mm_prefetch((const char *)(u + 64 * (int64_t)p) + QE_WINO_PREFETCH, _MM_HINT_T0);
        _mm_prefetch((const char *)(u + 64 * (int64_t)p) + QE_WINO_PREFETCH + 64, _MM_HINT_T0);
        const __m512i w0 = _mm512_loadu_si512(u + 64 * (int64_t)p);
        const __m512i w1 = _mm512_loadu_si512(u + 64 * (int64_t)p + 32);
        for (int t = 0; t < NT; t++) {
            int32_t xv;
            memcpy(&xv, v + (int64_t)t * CS + 2 * p, 4);
            const __m512i x = _mm512_set1_epi32(xv);
            a[t][0] = _mm512_dpwssd_epi32(a[t][0], w0, x);
            a[t][1] = _mm512_dpwssd_epi32(a[t][1], w1, x);
        }
    }
    for (int t = 0; t < NT; t++) {
        _mm512_storeu_si512(mb + 32 * t, a[t][0]);
        _mm512_storeu_si512(mb + 32 * t + 16, a[t][1]);
    }
#elif QE_SIMD == 2
    __m256i a[QE_WINO_NT][4];
    for (int t = 0; t < NT; t++) a[t][0] = a[t][1] = a[t][2] = a[t][3] = _mm256_setzero_si256();
    for (int p = 0; p < CP; p++) {
        const int16_t *up = u + 64 * (int64_t)p;
        _mm_prefetch((const char *)up + QE_WINO_PREFETCH, _MM_HINT_T0);
        _mm_prefetch((const char *)up + QE_WINO_PREFETCH + 64, _MM_HINT_T0);
        for (int t = 0; t < NT; t++) {
            int32_t xv;
            memcpy(&xv, v + (int64_t)t * CS + 2 * p, 4);
            const __m256i x = _mm256_set1_epi32(xv);
            for (int h = 0; h < 4; h++) {
                const __m256i w = _mm256_loadu_si256((const __m256i *)(up + 16 * h));
                a[t][h] = _mm256_add_epi32(a[t][h], _mm256_madd_epi16(w, x));
            }
        }
    }
    for (int t = 0; t < NT; t++)
        for (int h = 0; h < 4; h++) _mm256_storeu_si256((__m256i *)(mb + 32 * t + 8 * h), a[t][h]);
#else
    for (int t = 0; t < NT; t++)
        for (int c = 0; c < 32; c++) mb[32 * t + c] = 0;
    for (int p = 0; p < CP; p++) {
        const int16_t *up = u + 64 * (int64_t)p;
        for (int t = 0; t < NT; t++) {
            const int32_t x0 = v[(int64_t)t * CS + 2 * p], x1 = v[(int64_t)t * CS + 2 * p + 1];
            for (int c = 0; c < 32; c++) mb[32 * t + c] += up[2 * c] * x0 + up[2 * c + 1] * x1;
        }
    }
#endif
}

/* The output transform of NT tiles from t0, 32 channels of block cb:
 * y[co][2ty + i][2tx + j] for the real channels and positions (bias has
 * the block's 32 entries, zeros past Cout).  Vectors of QE_NL channels (the
 * native width: wider ones would be split into scalar code); each output
 * row's two values go out as one 8-byte pair. */
#if QE_NL == 16
#define QE_PAIR_LO {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23}
#define QE_PAIR_HI {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31}
#elif QE_NL == 8
#define QE_PAIR_LO {0, 8, 1, 9, 2, 10, 3, 11}
#define QE_PAIR_HI {4, 12, 5, 13, 6, 14, 7, 15}
#else
#define QE_PAIR_LO {0, 4, 1, 5}
#define QE_PAIR_HI {2, 6, 3, 7}
#endif
QE_NO_FMA static inline __attribute__((always_inline)) void
FN(wino_output_order)(const int cmajor, const int32_t *mb, int NT, const float *sc,
                      const float *bias, int co0, int Cout, int64_t t0, int TW, int OH, int OW,
                      int relu, float *y)
{
    const int64_t NR = (int64_t)OH * OW;
    const VNI lo = QE_PAIR_LO, hi = QE_PAIR_HI;
    const int half = QE_NL / 2;
    int oys[QE_WINO_NT], oxs[QE_WINO_NT];   /* the tiles' first output row and column */
    for (int t = 0; t < NT; t++) {
        oys[t] = (int)((t0 + t) / TW) * 2;
        oxs[t] = (int)((t0 + t) % TW) * 2;
    }
    for (int cv = 0; cv < 32; cv += QE_NL) {
        const int nl = Cout - (co0 + cv) < QE_NL ? Cout - (co0 + cv) : QE_NL;
        if (nl <= 0) break;
        VN s[16];
        for (int xi = 0; xi < 16; xi++) s[xi] = FN(vnload)(sc + xi * 32 + cv);
        const VN b = FN(vnload)(bias + co0 + cv);
        float prs[cmajor ? QE_WINO_NT : 1][2][2][QE_NL];   /* kept for channel by channel */
        for (int t = 0; t < NT; t++) {
            VN m[16];
            for (int xi = 0; xi < 16; xi++) {
                const VNI iv = *(const VNI *)(mb + ((int64_t)xi * NT + t) * 32 + cv);
                m[xi] = __builtin_convertvector(iv, VN) * s[xi];
            }
            VN r0[4], r1[4];   /* m A, row by row */
            for (int a = 0; a < 4; a++) {
                r0[a] = (m[4 * a] + m[4 * a + 1]) + m[4 * a + 2];
                r1[a] = (m[4 * a + 1] - m[4 * a + 2]) - m[4 * a + 3];
            }
            VN out[4];   /* A' (m A): y00, y01, y10, y11, plus bias, ReLU'd */
            out[0] = ((r0[0] + r0[1]) + r0[2]) + b;
            out[1] = ((r1[0] + r1[1]) + r1[2]) + b;
            out[2] = ((r0[1] - r0[2]) - r0[3]) + b;
            out[3] = ((r1[1] - r1[2]) - r1[3]) + b;
            if (relu)   /* NaN -> 0, as the scalar kernels' !(v > 0) */
                for (int q = 0; q < 4; q++) {
                    const VN z = FN(vnsplat)(0.f);
                    out[q] = (VN)((VNI)out[q] & (VNI)(out[q] > z));
                }
            /* [row][channel half][channel pairs]; one buffer unless kept for
             * the channel-by-channel stores */
            float (*pr)[2][QE_NL] = prs[cmajor ? t : 0];
            const VN p00 = __builtin_shuffle(out[0], out[1], lo),
                     p01 = __builtin_shuffle(out[0], out[1], hi),
                     p10 = __builtin_shuffle(out[2], out[3], lo),
                     p11 = __builtin_shuffle(out[2], out[3], hi);
            memcpy(pr[0][0], &p00, sizeof p00);
            memcpy(pr[0][1], &p01, sizeof p01);
            memcpy(pr[1][0], &p10, sizeof p10);
            memcpy(pr[1][1], &p11, sizeof p11);
            if (cmajor) continue;
            const int oy = oys[t], ox = oxs[t];
            float *yc = y + (int64_t)(co0 + cv) * NR + (int64_t)oy * OW + ox;
            if (oy + 1 < OH && ox + 1 < OW) {
                for (int l = 0; l < nl; l++, yc += NR) {
                    memcpy(yc, &pr[0][l / half][2 * (l % half)], 8);
                    memcpy(yc + OW, &pr[1][l / half][2 * (l % half)], 8);
                }
            } else {
                for (int l = 0; l < nl; l++, yc += NR) {
                    yc[0] = pr[0][l / half][2 * (l % half)];
                    if (ox + 1 < OW) yc[1] = pr[0][l / half][2 * (l % half) + 1];
                    if (oy + 1 < OH) yc[OW] = pr[1][l / half][2 * (l % half)];
                }
            }
        }
        /* planes of a multiple of 4 KB (32x32, 64x64 outputs): channel by
         * channel, every tile, so that a channel's rows are filled before the
         * next channel's.  Tile by tile, the 16 channels' rows would all fall
         * in one cache set (L1 sets repeat every 4 KB on Zen 3-5) and evict
         * each other before the next tile completed them (session 16: F(2x2)
         * 1.7-1.8x the direct kernel's time there, 0.7-0.85x at 30x30-34x34;
         * this order 1.14x at 32x32, but 1.0-1.1x at 31x31 and 33x33, where
         * it stays tile by tile). */
        for (int l = 0; l < nl && cmajor; l++) {
            float *yl = y + (int64_t)(co0 + cv + l) * NR;
            const int lh = l / half, lp = 2 * (l % half);
            for (int t = 0; t < NT; t++) {
                const int oy = oys[t], ox = oxs[t];
                float *yc = yl + (int64_t)oy * OW + ox;
                if (oy + 1 < OH && ox + 1 < OW) {
                    memcpy(yc, &prs[t][0][lh][lp], 8);
                    memcpy(yc + OW, &prs[t][1][lh][lp], 8);
                } else {
                    yc[0] = prs[t][0][lh][lp];
                    if (ox + 1 < OW) yc[1] = prs[t][0][lh][lp + 1];
                    if (oy + 1 < OH) yc[OW] = prs[t][1][lh][lp];
                }
            }
        }
    }
}
/* output planes of a multiple of 4 KB stored channel by channel (see above) */
QE_NO_FMA static void FN(wino_output)(const int32_t *mb, int NT, const float *sc, const float *bias,
                                      int co0, int Cout, int64_t t0, int TW, int OH, int OW,
                                      int relu, float *y)
{
    if ((int64_t)OH * OW % 1024 == 0)
        FN(wino_output_order)(1, mb, NT, sc, bias, co0, Cout, t0, TW, OH, OW, relu, y);
    else
        FN(wino_output_order)(0, mb, NT, sc, bias, co0, Cout, t0, TW, OH, OW, relu, y);
}
#undef QE_PAIR_LO
#undef QE_PAIR_HI

/* The output transform of F(4x4, 3x3) (n = 6) and F(4x4, 5x5) (n = 8), as
 * wino_output's: m = float(M) * sc, Y = A' m A, one rounding per step in a
 * fixed order, + bias, ReLU, with
 *   F(4x4, 3x3): A' = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1],
 *   F(4x4, 5x5): A' = [1 1 1 1 1 1 1 0; 0 1 -1 2 -2 1/2 -1/2 0;
 *                      0 1 1 4 4 1/4 1/4 0; 0 1 -1 8 -8 1/8 -1/8 1]
 * (products by powers of two are exact).  Each output row's four values of a
 * channel go out as one 16-byte store.  n is a constant at every call. */
#if QE_NL == 16
#define QE_PAIR_LO {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23}
#define QE_PAIR_HI {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31}
#define QE_QUAD_LO {0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23}
#define QE_QUAD_HI {8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31}
#elif QE_NL == 8
#define QE_PAIR_LO {0, 8, 1, 9, 2, 10, 3, 11}
#define QE_PAIR_HI {4, 12, 5, 13, 6, 14, 7, 15}
#define QE_QUAD_LO {0, 1, 8, 9, 2, 3, 10, 11}
#define QE_QUAD_HI {4, 5, 12, 13, 6, 7, 14, 15}
#else
#define QE_PAIR_LO {0, 4, 1, 5}
#define QE_PAIR_HI {2, 6, 3, 7}
#define QE_QUAD_LO {0, 1, 4, 5}
#define QE_QUAD_HI {2, 3, 6, 7}
#endif
/* 4 outputs of A' applied to m[0..5] (floats). */
#define QE_W4_AT(m, o)                                                          \
    do {                                                                        \
        const VN s12 = m[1] + m[2], d12 = m[1] - m[2];                          \
        const VN s34 = m[3] + m[4], d34 = m[3] - m[4];                          \
        o[0] = (m[0] + s12) + s34;                                              \
        o[1] = d12 + d34 * FN(vnsplat)(2.f);                                    \
        o[2] = s12 + s34 * FN(vnsplat)(4.f);                                    \
        o[3] = (d12 + d34 * FN(vnsplat)(8.f)) + m[5];                           \
    } while (0)
/* 4 outputs of A' applied to m[0..7] (floats). */
#define QE_W45_AT(m, o)                                                         \
    do {                                                                        \
        const VN s12 = m[1] + m[2], d12 = m[1] - m[2];                          \
        const VN s34 = m[3] + m[4], d34 = m[3] - m[4];                          \
        const VN s56 = m[5] + m[6], d56 = m[5] - m[6];                          \
        o[0] = ((m[0] + s12) + s34) + s56;                                      \
        o[1] = (d12 + d34 * FN(vnsplat)(2.f)) + d56 * FN(vnsplat)(0.5f);        \
        o[2] = (s12 + s34 * FN(vnsplat)(4.f)) + s56 * FN(vnsplat)(0.25f);       \
        o[3] = ((d12 + d34 * FN(vnsplat)(8.f)) + d56 * FN(vnsplat)(0.125f)) + m[7]; \
    } while (0)
QE_NO_FMA static inline __attribute__((always_inline)) void
FN(wino_rescaled_output)(const int n, const int cmajor, const int32_t *mb, int NT,
                         const float *sc, const float *bias, int co0, int Cout, int64_t t0,
                         int TW, int OH, int OW, int relu, float *y)
{
    const int64_t NR = (int64_t)OH * OW;
    const VNI plo = QE_PAIR_LO, phi = QE_PAIR_HI, qlo = QE_QUAD_LO, qhi = QE_QUAD_HI;
    const int quarter = QE_NL / 4;
    int oys[QE_WINO_NT], oxs[QE_WINO_NT];
    for (int t = 0; t < NT; t++) {
        oys[t] = (int)((t0 + t) / TW) * 4;
        oxs[t] = (int)((t0 + t) % TW) * 4;
    }
    for (int cv = 0; cv < 32; cv += QE_NL) {
        const int nl = Cout - (co0 + cv) < QE_NL ? Cout - (co0 + cv) : QE_NL;
        if (nl <= 0) break;
        const VN b = FN(vnload)(bias + co0 + cv);
        float prs[cmajor ? QE_WINO_NT : 1][4][4][QE_NL];   /* kept for channel by channel */
        for (int t = 0; t < NT; t++) {
            VN r[8][4];   /* m A, row by row */
            for (int a = 0; a < n; a++) {
                VN m[8];
                for (int k = 0; k < n; k++) {
                    const int xi = a * n + k;
                    /* (vector loads, not memcpy: GCC's AVX2 tuning splits those
                     * into halves through the stack) */
                    const VNI iv = *(const VNI *)(mb + ((int64_t)xi * NT + t) * 32 + cv);
                    m[k] = __builtin_convertvector(iv, VN) * FN(vnload)(sc + xi * 32 + cv);
                }
                if (n == 6)
                    QE_W4_AT(m, r[a]);
                else
                    QE_W45_AT(m, r[a]);
            }
            /* [row][quarter of the channels][channel quads]; one buffer
             * unless kept for the channel-by-channel stores */
            float (*pr)[4][QE_NL] = prs[cmajor ? t : 0];
            for (int j = 0; j < 4; j++) {   /* A' (m A), column j */
                VN col[8], o[4];
                for (int a = 0; a < n; a++) col[a] = r[a][j];
                if (n == 6)
                    QE_W4_AT(col, o);
                else
                    QE_W45_AT(col, o);
                for (int i = 0; i < 4; i++) r[i][j] = o[i] + b;   /* (r[i][j] no longer read) */
            }
            for (int i = 0; i < 4; i++) {
                VN c[4];
                for (int j = 0; j < 4; j++) {
                    c[j] = r[i][j];
                    if (relu) {   /* NaN -> 0, as the scalar kernels' !(v > 0) */
                        const VN z = FN(vnsplat)(0.f);
                        c[j] = (VN)((VNI)c[j] & (VNI)(c[j] > z));
                    }
                }
                const VN p01l = __builtin_shuffle(c[0], c[1], plo),
                         p01h = __builtin_shuffle(c[0], c[1], phi),
                         p23l = __builtin_shuffle(c[2], c[3], plo),
                         p23h = __builtin_shuffle(c[2], c[3], phi);
                const VN q0 = __builtin_shuffle(p01l, p23l, qlo),
                         q1 = __builtin_shuffle(p01l, p23l, qhi),
                         q2 = __builtin_shuffle(p01h, p23h, qlo),
                         q3 = __builtin_shuffle(p01h, p23h, qhi);
                memcpy(pr[i][0], &q0, sizeof q0);
                memcpy(pr[i][1], &q1, sizeof q1);
                memcpy(pr[i][2], &q2, sizeof q2);
                memcpy(pr[i][3], &q3, sizeof q3);
            }
            if (cmajor) continue;
            const int oy = oys[t], ox = oxs[t];
            float *yc = y + (int64_t)(co0 + cv) * NR + (int64_t)oy * OW + ox;
            if (oy + 3 < OH && ox + 3 < OW) {
                for (int l = 0; l < nl; l++, yc += NR)
                    for (int i = 0; i < 4; i++)
                        memcpy(yc + (int64_t)i * OW, &pr[i][l / quarter][4 * (l % quarter)], 16);
            } else {
                for (int l = 0; l < nl; l++, yc += NR)
                    for (int i = 0; i < 4 && oy + i < OH; i++)
                        for (int j = 0; j < 4 && ox + j < OW; j++)
                            yc[(int64_t)i * OW + j] = pr[i][l / quarter][4 * (l % quarter) + j];
            }
        }
        /* planes of a multiple of 4 KB: channel by channel, every tile (as
         * wino_output, for the same reason) */
        for (int l = 0; l < nl && cmajor; l++) {
            float *yl = y + (int64_t)(co0 + cv + l) * NR;
            const int lq = l / quarter, lo4 = 4 * (l % quarter);
            for (int t = 0; t < NT; t++) {
                const int oy = oys[t], ox = oxs[t];
                float *yc = yl + (int64_t)oy * OW + ox;
                if (oy + 3 < OH && ox + 3 < OW) {
                    for (int i = 0; i < 4; i++)
                        memcpy(yc + (int64_t)i * OW, &prs[t][i][lq][lo4], 16);
                } else {
                    for (int i = 0; i < 4 && oy + i < OH; i++)
                        for (int j = 0; j < 4 && ox + j < OW; j++)
                            yc[(int64_t)i * OW + j] = prs[t][i][lq][lo4 + j];
                }
            }
        }
    }
}
QE_NO_FMA static void FN(wino4_output)(const int32_t *mb, int NT, const float *sc,
                                       const float *bias, int co0, int Cout, int64_t t0, int TW,
                                       int OH, int OW, int relu, float *y)
{
    if ((int64_t)OH * OW % 1024 == 0)   /* planes of a multiple of 4 KB (wino_output) */
        FN(wino_rescaled_output)(6, 1, mb, NT, sc, bias, co0, Cout, t0, TW, OH, OW, relu, y);
    else
        FN(wino_rescaled_output)(6, 0, mb, NT, sc, bias, co0, Cout, t0, TW, OH, OW, relu, y);
}

QE_NO_FMA static void FN(wino45_output)(const int32_t *mb, int NT, const float *sc,
                                        const float *bias, int co0, int Cout, int64_t t0, int TW,
                                        int OH, int OW, int relu, float *y)
{
    if ((int64_t)OH * OW % 1024 == 0)
        FN(wino_rescaled_output)(8, 1, mb, NT, sc, bias, co0, Cout, t0, TW, OH, OW, relu, y);
    else
        FN(wino_rescaled_output)(8, 0, mb, NT, sc, bias, co0, Cout, t0, TW, OH, OW, relu, y);
}
#undef QE_W4_AT
#undef QE_W45_AT
#undef QE_PAIR_LO
#undef QE_PAIR_HI
#undef QE_QUAD_LO
#undef QE_QUAD_HI

/* y [Cout][OH][OW] from V (wino_input; CP pairs of channels) and U, sc as
 * laid out above.
 * Blocks of 32 channels x QE_WINO_NT tiles are shared among the threads, tile
 * blocks outermost. */
static void FN(wino_conv)(const int16_t *V, int TH, int TW, int CS, int CP, const int16_t *U,
                          int CoB, const float *sc, const float *bias, float *y, int Cout, int OH,
                          int OW, int relu, int nthreads, int tile)
{
    const int64_t T = (int64_t)TH * TW;
    const int nxi = qe_wino_n(tile) * qe_wino_n(tile);   /* 16, 36 or 64 */
    /* tiles split evenly into blocks of at most QE_WINO_NT (16 tiles: 8 + 8,
     * not 12 + 4: a short block loads as many weights for fewer products) */
    const int64_t ntb = (T + QE_WINO_NT - 1) / QE_WINO_NT, bt = (T + ntb - 1) / ntb;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        int32_t mb[64 * QE_WINO_NT * 32] __attribute__((aligned(64)));
        /* On threads, tile blocks outermost: a thread's share is a run of
         * tiles (all their channels), so it reads the V it transformed itself
         * (the input transform splits tiles the same way) rather than every
         * tile's V from the other core's cache.  On one thread, channel blocks
         * outermost: a block's weights stay in L2 across the tile blocks. */
        #pragma omp for schedule(static)
        for (int64_t job = 0; job < (int64_t)CoB * ntb; job++) {
            const int cb = (int)(nthreads > 1 ? job % CoB : job / ntb);
            const int64_t t0 = (nthreads > 1 ? job / CoB : job % ntb) * bt;
            const int nt = T - t0 < bt ? (int)(T - t0) : (int)bt;
            for (int xi = 0; xi < nxi; xi++) {
                const int16_t *u = U + ((int64_t)cb * nxi + xi) * CP * 64;
                const int16_t *v = V + ((int64_t)xi * T + t0) * CS;
                int32_t *m = mb + (int64_t)xi * nt * 32;
                switch (nt) {   /* a register block for each count, unrolled */
#define QE_WINO_CASE(n) case n: FN(wino_gemm)(u, v, CP, CS, n, m); break;
                QE_WINO_CASE(1) QE_WINO_CASE(2) QE_WINO_CASE(3)
#if QE_WINO_NT > 3
                QE_WINO_CASE(4)
#endif
#if QE_WINO_NT > 4
                QE_WINO_CASE(5) QE_WINO_CASE(6) QE_WINO_CASE(7) QE_WINO_CASE(8)
                QE_WINO_CASE(9) QE_WINO_CASE(10) QE_WINO_CASE(11) QE_WINO_CASE(12)
#endif
#undef QE_WINO_CASE
                default: break;
                }
            }
            if (tile == QE_WINO_F45)
                FN(wino45_output)(mb, nt, sc + (int64_t)cb * 64 * 32, bias, cb * 32, Cout, t0,
                                  TW, OH, OW, relu, y);
            else if (tile == 4)
                FN(wino4_output)(mb, nt, sc + (int64_t)cb * 36 * 32, bias, cb * 32, Cout, t0, TW,
                                 OH, OW, relu, y);
            else
                FN(wino_output)(mb, nt, sc + (int64_t)cb * 16 * 32, bias, cb * 32, Cout, t0, TW,
                                OH, OW, relu, y);
        }
    }
}

#undef V16W
#undef V16F
#undef V16I
#undef V16SPLAT
#undef FN
