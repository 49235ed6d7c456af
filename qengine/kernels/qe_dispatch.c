/* Run-time selection between the compiled bodies of the hot kernels, and the
 * public entry points that prepare their per-call offset tables. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "qe_kernels.h"
#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_num_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
#endif

/* Bytes of table planes one chunk of taps may touch per tile (fits in L2). */
#ifndef QE_CHUNK_BYTES
#define QE_CHUNK_BYTES (192 * 1024)
#endif
#include "qe_isa.h"

/* Instruction sets, in the order of enum qe_isa (qe_kernels.h): their names,
 * their kernel tables (NULL where not built) and what the CPU must offer. */
static const char *const qe_isa_names[QE_ISA_COUNT] = {"generic", "avx2", "avx512",
                                                       "avx512-emulated"};

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define QE_X86 1
#endif

static const qe_kernel_table *const qe_tables[QE_ISA_COUNT] = {
    &qe_kernels_generic,
#ifdef QE_X86
    &qe_kernels_avx2, &qe_kernels_avx512,
#else
    NULL, NULL,
#endif
#ifdef QE_HAVE_SIMDE
    &qe_kernels_avx512_emulated,
#else
    NULL,
#endif
};

static int qe_isa = -1; /* -1: not chosen yet, pick the best on first use */

const char *qe_isa_name(int isa)
{
    return isa >= 0 && isa < QE_ISA_COUNT ? qe_isa_names[isa] : NULL;
}

int qe_isa_built(int isa)
{
    return isa >= 0 && isa < QE_ISA_COUNT && qe_tables[isa] != NULL;
}

int qe_isa_supported(int isa)
{
    if (!qe_isa_built(isa)) return 0;
    switch (isa) {
#ifdef QE_X86
    case QE_ISA_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case QE_ISA_AVX512:
        /* libgcc also checks that the OS saves the zmm state (XCR0) */
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vnni");
    case QE_ISA_AVX512_EMULATED: /* SIMDe on AVX2 (isa_avx512_emulated.c) */
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    case QE_ISA_AVX512_EMULATED: /* SIMDe in portable C */
#endif
    case QE_ISA_GENERIC:
        return 1;
    default:
        return 0;
    }
}

int qe_set_isa(int isa)
{
    if (!qe_isa_supported(isa)) return -1;
    qe_isa = isa;
    return 0;
}

int qe_best_isa(void)
{
    /* the highest native level; the emulated one only when asked for */
    if (qe_isa_supported(QE_ISA_AVX512)) return QE_ISA_AVX512;
    if (qe_isa_supported(QE_ISA_AVX2)) return QE_ISA_AVX2;
    return QE_ISA_GENERIC;
}

int qe_get_isa(void)
{
    if (qe_isa < 0) qe_isa = qe_best_isa();
    return qe_isa;
}

static const qe_kernel_table *K_(void) { return qe_tables[qe_get_isa()]; }

/* Kernel tap (kh, kw) reads phase plane tap_phase() at tap_shift() from the
 * output position (see qe_conv_geom). */
static inline int tap_phase(const qe_conv_geom *g, int kh, int kw)
{
    return (kh % g->S) * g->S + kw % g->S;
}

static inline int64_t tap_shift(const qe_conv_geom *g, int kh, int kw)
{
    return (int64_t)(kh / g->S) * g->Wq + kw / g->S;
}

/* Offsets of dense kernel tap j = (c, kh, kw) in the phase planes. */
static int64_t *dense_tap_offsets(const qe_conv_geom *g)
{
    int J = g->KH * g->KW * g->C;
    int64_t *jb = (int64_t *)malloc(sizeof(int64_t) * (size_t)J);
    if (!jb) return NULL;
    int j = 0;
    for (int c = 0; c < g->C; c++)
        for (int kh = 0; kh < g->KH; kh++)
            for (int kw = 0; kw < g->KW; kw++) {
                jb[j++] = ((int64_t)tap_phase(g, kh, kw) * g->C + c) * g->PS +
                          tap_shift(g, kh, kw);
            }
    return jb;
}

/* Tap order for the lookup: taps grouped by table group (phase, subspace), the
 * groups cut into chunks whose planes' tile segments fit QE_CHUNK_BYTES. */
typedef struct {
    int64_t *tbase;     /* table offset of tap j without the codeword term */
    int32_t *aoff;      /* offset of tap j's index within one output's asmt row */
    int32_t *chunk_end; /* end of each chunk in the tap order */
    int32_t *chunk_g;   /* first table group of each chunk, and one past the last */
    int64_t *gbase;     /* table offset of each group's first plane */
    int32_t *grows;     /* plane rows (kh/S values) each group's taps read */
    int32_t *gblk;      /* table block (ph*M + m) of each group */
    int nchunks;
} qe_tap_plan;

static void plan_free(qe_tap_plan *p)
{
    free(p->tbase); free(p->aoff); free(p->chunk_end); free(p->chunk_g); free(p->gbase);
    free(p->grows); free(p->gblk);
}

static int plan_lut(const qe_conv_geom *g, int M, int K, qe_tap_plan *p)
{
    int J = g->KH * g->KW * M, G = g->SS * M;
    p->tbase = (int64_t *)malloc(sizeof(int64_t) * (size_t)J);
    p->aoff = (int32_t *)malloc(sizeof(int32_t) * (size_t)J);
    p->chunk_end = (int32_t *)malloc(sizeof(int32_t) * (size_t)(G + 1));
    p->chunk_g = (int32_t *)malloc(sizeof(int32_t) * (size_t)(G + 2));
    p->gbase = (int64_t *)malloc(sizeof(int64_t) * (size_t)G);
    p->grows = (int32_t *)malloc(sizeof(int32_t) * (size_t)G);
    p->gblk = (int32_t *)malloc(sizeof(int32_t) * (size_t)G);
    p->nchunks = 0;
    if (!p->tbase || !p->aoff || !p->chunk_end || !p->chunk_g || !p->gbase || !p->grows ||
        !p->gblk) {
        plan_free(p);
        return -1;
    }
    int ng = 0;
    p->chunk_g[0] = 0;
    int64_t seg = QE_TILE + (int64_t)((g->KH - 1) / g->S) * g->Wq + (g->KW - 1) / g->S;
    int64_t group_bytes = (int64_t)K * seg * (int64_t)sizeof(float);
    int64_t per_chunk = QE_CHUNK_BYTES / group_bytes;
    if (per_chunk < 1) per_chunk = 1;
    int j = 0, in_chunk = 0;
    for (int ph = 0; ph < g->SS; ph++) {
        int a = ph / g->S, b = ph % g->S;
        for (int m = 0; m < M; m++) {
            int before = j;
            for (int kh = a; kh < g->KH; kh += g->S)
                for (int kw = b; kw < g->KW; kw += g->S) {
                    p->tbase[j] = ((int64_t)ph * M + m) * K * g->PS + tap_shift(g, kh, kw);
                    p->aoff[j] = (kh * g->KW + kw) * M + m;
                    j++;
                }
            if (j == before) continue; /* a phase no tap uses */
            p->gbase[ng] = ((int64_t)ph * M + m) * K * g->PS;
            p->grows[ng] = (g->KH - 1 - a) / g->S + 1;
            p->gblk[ng] = ph * M + m;
            ng++;
            if (++in_chunk == per_chunk) {
                p->chunk_end[p->nchunks++] = j;
                p->chunk_g[p->nchunks] = ng;
                in_chunk = 0;
            }
        }
    }
    if (in_chunk > 0 || p->nchunks == 0) {
        p->chunk_end[p->nchunks++] = j;
        p->chunk_g[p->nchunks] = ng;
    }
    return 0;
}

int qe_lut_conv(const qe_conv_geom *g, const float *xp, const float *cb, int M, int K, int d,
                const uint8_t *asmt, int Cout, const float *bias, float *T, float *accbuf,
                float *y, int relu, int nthreads)
{
    qe_tap_plan plan;
    if (nthreads < 1) nthreads = 1;
    if (plan_lut(g, M, K, &plan) != 0) return -1;
    /* chunk by chunk: build the chunk's table planes, then look them up while
     * they are still in cache.  Each output's row offsets for the chunk's taps
     * are computed once, not once per tile. */
    const int J = g->KH * g->KW * M;
    int jmax = 0, jstart = 0;
    for (int c = 0; c < plan.nchunks; c++) {
        const int jn = plan.chunk_end[c] - jstart;
        jmax = jn > jmax ? jn : jmax;
        jstart = plan.chunk_end[c];
    }
    int64_t *off = (int64_t *)malloc(sizeof(int64_t) * (size_t)Cout * (size_t)(jmax > 0 ? jmax : 1));
    if (!off) { plan_free(&plan); return -1; }
    jstart = 0;
    for (int c = 0; c < plan.nchunks; c++) {
        const int g0 = plan.chunk_g[c], g1 = plan.chunk_g[c + 1];
        const int jn = plan.chunk_end[c] - jstart;
        for (int co = 0; co < Cout; co++) {
            const uint8_t *a = asmt + (int64_t)co * J;
            int64_t *o = off + (int64_t)co * jn;
            for (int j = 0; j < jn; j++)
                o[j] = plan.tbase[jstart + j] + (int64_t)a[plan.aoff[jstart + j]] * g->PS;
        }
        K_()->lut_build(g, xp, cb, M, K, d, T, plan.gblk + g0, g1 - g0, nthreads);
        K_()->lut_lookup(g, T, off, jn, c == 0, plan.gbase, plan.grows, g0, g1, K, Cout, accbuf,
                         nthreads);
        jstart = plan.chunk_end[c];
    }
    free(off);
    K_()->scatter_rows(g, accbuf, Cout, bias, relu, y, nthreads);
    plan_free(&plan);
    return 0;
}

int qe_dense_conv(const qe_conv_geom *g, const float *xp, const float *w, int Cout,
                  const float *bias, float *accbuf, float *y, int relu, int nthreads)
{
    if (nthreads < 1) nthreads = 1;
    int64_t *jb = dense_tap_offsets(g);
    if (!jb) return -1;
    int coutb = (Cout + QE_DENSE_CO - 1) / QE_DENSE_CO * QE_DENSE_CO;
    /* the kernel computes the output positions only and writes them itself;
     * without memory for its panel, it computes every plane position (the
     * padding columns too) into accbuf, scattered into y after */
    const int J = g->C * g->KH * g->KW;
    /* Gathering each tile's panel from up to four row runs costs a few loads
     * per tap, repaid over the output-channel blocks that share the panel:
     * measured on Zen 3 (interleaved A/B), 1.04-1.19x faster where at least
     * four blocks share it or rows hold 32+ outputs (a tile then spans one or
     * two runs), 0.96-0.98x on 13x13 maps with 2-3 blocks per panel. */
    const int shared = (int)(QE_DENSE_W_BYTES / ((int64_t)J * QE_DENSE_CO * (int64_t)sizeof(float)));
    const int gather = g->Wq != g->OW && (shared >= 4 || g->OW >= 32);
    if (!gather ||
            K_()->dense_conv(g, xp, jb, J, w, coutb, accbuf, y, Cout, bias, relu, nthreads, 1)) {
        const int direct = g->Wq == g->OW;
        K_()->dense_conv(g, xp, jb, J, w, coutb, accbuf, direct ? y : NULL, Cout, bias, relu,
                         nthreads, 0);
        if (!direct) K_()->scatter_rows(g, accbuf, Cout, bias, relu, y, nthreads);
    }
    free(jb);
    return 0;
}

/* Bytes of int16 weights whose output-channel blocks share one panel of
 * qe_i16_conv: 5/8 of the L2 cache the OS reports, which leaves room for the
 * panel (J2 * 64 bytes on AVX-512).  Interleaved A/B on a Zen 5 (1 MB L2,
 * AlexNet conv3-5): 1.3-1.4x faster than the float kernel's fixed 160 KB
 * (QE_DENSE_W_BYTES, tuned on a Zen 3, 512 KB L2), flat between 1/2 and 3/4
 * of L2.  Unknown L2 size: QE_DENSE_W_BYTES. */
static int64_t i16_weight_budget(void)
{
    static int64_t budget = 0;
    if (!budget) {
        long l2 = -1;
#ifdef _SC_LEVEL2_CACHE_SIZE
        l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
        int64_t b = l2 > 0 ? (int64_t)l2 / 8 * 5 : QE_DENSE_W_BYTES;
        b = b < QE_DENSE_W_BYTES ? QE_DENSE_W_BYTES : b > (8 << 20) ? (8 << 20) : b;
        budget = b;   /* racing threads store the same value */
    }
    return budget;
}

/* Thread t of nt's share [*a, *b) of n values, in whole runs of 64 (whole
 * vectors on every instruction set). */
static void share64(int64_t n, int t, int nt, int64_t *a, int64_t *b)
{
    const int64_t runs = (n + 63) / 64, e = runs * (t + 1) / nt * 64;
    *a = runs * t / nt * 64;
    *b = e < n ? e : n;
}

/* The int16 kernels' input, one scale per image and group: xq = round(x * A /
 * max|x|) for the n floats at x (a zero input quantises to zeros: outputs =
 * bias); returns the input scale max|x| / A.  NaN or infinity in the input:
 * no integer stands for it, so the ny outputs are NaN, and returns -1.
 * On nthreads, each takes a run of values (a multiple of 64) for both steps:
 * the maximum is exact in any order and the rest goes value by value, so the
 * bits do not depend on the threads. */
#define QE_QUANT_MT_MIN 65536   /* fewer values: one thread */
static float i16_quantize_input(const float *x, int64_t n, int A, int16_t *xq, float *y,
                                int64_t ny, int nthreads)
{
    float mx = 0.f;
    int bad = 0;
    if (nthreads <= 1 || n < QE_QUANT_MT_MIN) {
        mx = K_()->i16_maxabs(x, n);
        bad = !(mx <= 3.4e38f);
    } else {
        #pragma omp parallel num_threads(nthreads)
        {
            int64_t a, b;
            share64(n, omp_get_thread_num(), omp_get_num_threads(), &a, &b);
            const float m = a < b ? K_()->i16_maxabs(x + a, b - a) : 0.f;
            #pragma omp critical(qe_quant_max)
            {
                if (!(m <= 3.4e38f)) bad = 1;
                else if (m > mx) mx = m;
            }
        }
    }
    if (bad) {
        for (int64_t i = 0; i < ny; i++) y[i] = NAN;
        return -1.f;
    }
    const float s = mx > 0.f ? (float)A / mx : 0.f;
    if (nthreads <= 1 || n < QE_QUANT_MT_MIN) {
        K_()->i16_quantize(x, n, s, A, xq);
    } else {
        #pragma omp parallel num_threads(nthreads)
        {
            int64_t a, b;
            share64(n, omp_get_thread_num(), omp_get_num_threads(), &a, &b);
            if (a < b) K_()->i16_quantize(x + a, b - a, s, A, xq + a);
        }
    }
    return mx > 0.f ? mx / (float)A : 0.f;
}

int qe_i16_conv(const qe_conv_geom *g, const float *xp, int16_t *xq, const int16_t *w16,
                const float *scale, int A, int Cout, const float *bias, float *y, int relu,
                int nthreads)
{
    if (nthreads < 1) nthreads = 1;
    const int64_t n = qe_phase_floats(g), NR = (int64_t)g->OH * g->OW;
    const float sa = i16_quantize_input(xp, n, A, xq, y, (int64_t)Cout * NR, nthreads);
    if (sa < 0.f) return 0;
    const int J = g->C * g->KH * g->KW, J2 = (J + 1) / 2 * 2;
    int64_t *jb = dense_tap_offsets(g);
    float *sc = (float *)malloc(sizeof(float) * (size_t)(Cout > 0 ? Cout : 1));
    int64_t *jb2 = (int64_t *)malloc(sizeof(int64_t) * (size_t)J2);
    int rc = -1;
    if (jb && sc && jb2) {
        memcpy(jb2, jb, sizeof(int64_t) * (size_t)J);
        if (J2 > J) jb2[J] = jb[0];   /* the padding tap: weight 0 */
        for (int co = 0; co < Cout; co++) sc[co] = sa * scale[co];
        const int coutb = (Cout + QE_DENSE_CO - 1) / QE_DENSE_CO * QE_DENSE_CO;
        rc = K_()->i16_conv(g, xq, jb2, J2, w16, coutb, sc, bias, y, Cout, relu, nthreads,
                             i16_weight_budget()) ? -1 : 0;
    }
    free(jb);
    free(jb2);
    free(sc);
    return rc;
}

/* Winograd scratch: XP [HH][WW][CS] (int16; CS = the virtual channels
 * rounded up to a multiple of 16), sc [CoB][NXI][32] and the bias padded to
 * CoB*32 (float), then xq [C][H][W] and V [NXI][T][CS] (int16, NXI = (tile +
 * 2)^2) in the same place: xq is read only by the packing, which ends before
 * the input transform writes V (a smaller cold footprint).  Each region
 * 64-byte aligned. */
static int64_t wino_al(int64_t b) { return (b + 63) / 64 * 64; }

int64_t qe_wino_ws_bytes(int C, int H, int W, int KH, int KW, int S, int P, int Cout, int tile)
{
    const int OH = (H + 2 * P - KH) / S + 1, OW = (W + 2 * P - KW) / S + 1;
    const int m = qe_wino_m(tile), halo = qe_wino_r(tile) - 1;
    const int64_t TH = (OH + m - 1) / m, TW = (OW + m - 1) / m;
    const int64_t NXI = (int64_t)qe_wino_n(tile) * qe_wino_n(tile);
    const int64_t CS = ((int64_t)qe_wino_virtual(C, KH, KW, S, tile) + 15) / 16 * 16;
    const int64_t CoB = (Cout + 31) / 32;
    const int64_t xq = wino_al(2 * (int64_t)C * H * W), V = wino_al(2 * NXI * TH * TW * CS);
    return wino_al(2 * (m * TH + halo) * (m * TW + halo) * CS) + wino_al(4 * CoB * NXI * 32) +
           wino_al(4 * CoB * 32) + (xq > V ? xq : V);
}

/* Rows [hlo, hhi) of one piece of a strided convolution's XP, packed one
 * input row (channel c, phase row a) at a time: its S neighbours for every w;
 * the columns [r0, r1) whose S values all lie inside go in one run, the
 * others value by value (XP zeroed before). */
static void wino_pack_strided(const int16_t *xq, int C, int H, int W, int S, int dy, int dx,
                              int16_t *XP, int WW, int CS, int64_t v0, int hlo, int hhi)
{
    const int wa = dx >= 0 ? 0 : (-dx + S - 1) / S;        /* first w with X0 >= 0 */
    int wb = W - dx >= S ? (W - dx - S) / S + 1 : 0;       /* past the last with X0 + S <= W */
    wb = wb > WW ? WW : wb;
    const int r0 = wa < wb ? wa : WW, r1 = wa < wb ? wb : WW;
    for (int c = 0; c < C; c++)
        for (int a = 0; a < S; a++)
            for (int h = hlo; h < hhi; h++) {
                const int64_t Y = (int64_t)h * S + dy + a;
                if (Y < 0 || Y >= H) continue;
                int16_t *d = XP + (int64_t)h * WW * CS + v0 + ((int64_t)c * S + a) * S;
                const int16_t *src = xq + ((int64_t)c * H + Y) * W + dx;
                for (int w = 0; w < WW; w++) {
                    if (w == r0) {   /* constant sizes: inlined */
                        if (S == 4)
                            for (; w < r1; w++) memcpy(d + (int64_t)w * CS, src + 4 * w, 8);
                        else if (S == 2)
                            for (; w < r1; w++) memcpy(d + (int64_t)w * CS, src + 2 * w, 4);
                        else
                            for (; w < r1; w++)
                                memcpy(d + (int64_t)w * CS, src + (int64_t)S * w,
                                       sizeof(int16_t) * (size_t)S);
                        if (w == WW) break;
                    }
                    const int64_t X0 = (int64_t)w * S + dx;
                    for (int b = 0; b < S; b++)
                        if (X0 + b >= 0 && X0 + b < W)
                            d[(int64_t)w * CS + b] = src[(int64_t)S * w + b];
                }
            }
}

void qe_wino_conv(const float *x, int C, int H, int W, int KH, int KW, int S, int P,
                  const int16_t *u, const float *scale, int A, int Cout, const float *bias,
                  float *y, int relu, int nthreads, void *ws, int tile)
{
    if (nthreads < 1) nthreads = 1;
    const int OH = (H + 2 * P - KH) / S + 1, OW = (W + 2 * P - KW) / S + 1;
    const int m = qe_wino_m(tile), r = qe_wino_r(tile), NXI = qe_wino_n(tile) * qe_wino_n(tile);
    const int TH = (OH + m - 1) / m, TW = (OW + m - 1) / m;
    const int HH = m * TH + r - 1, WW = m * TW + r - 1;
    const int KWs = (KW + S - 1) / S, SX = (KWs + r - 1) / r;
    const int CV = qe_wino_virtual(C, KH, KW, S, tile);
    const int NP = CV / (S * S * C);
    const int CS = (CV + 15) / 16 * 16, CoB = (Cout + 31) / 32;
    const int64_t n = (int64_t)C * H * W, T = (int64_t)TH * TW;
    char *p = (char *)ws;   /* laid out as qe_wino_ws_bytes says */
    int16_t *XP = (int16_t *)p;
    p += wino_al(2 * (int64_t)HH * WW * CS);
    float *sc = (float *)p;
    p += wino_al(4 * (int64_t)CoB * NXI * 32);
    float *bp = (float *)p;   /* bias padded to CoB*32 */
    p += wino_al(4 * (int64_t)CoB * 32);
    int16_t *xq = (int16_t *)p, *V = (int16_t *)p;   /* xq dead before V is written */
    const float sa = i16_quantize_input(x, n, A, xq, y, (int64_t)Cout * OH * OW, nthreads);
    if (sa < 0.f) return;
    /* packing and the input transform split across threads: rows of XP, then
     * (after a barrier) tiles of V; F(4x4)'s largest |V[xi]| combined between
     * its two passes.  Every value is computed as on one thread. */
    int32_t vmax[64] = {0};
    float f[64];
    const int mt = nthreads > 1 && T >= 8 ? nthreads : 1;
    #pragma omp parallel num_threads(mt) if (mt > 1)
    {
        const int nt = omp_get_num_threads(), th = omp_get_thread_num();
        const int hlo = (int)((int64_t)HH * th / nt), hhi = (int)((int64_t)HH * (th + 1) / nt);
        memset(XP + (int64_t)hlo * WW * CS, 0, sizeof(int16_t) * (size_t)(hhi - hlo) * WW * CS);
        /* channels last, zero padded: virtual channel ((piece*C + c)*S + a)*S + b
         * at (h, w) holds the input at ((h + r sy) S + a - P, (w + r sx) S + b - P) */
        for (int piece = 0; piece < NP; piece++) {
            const int dy = r * (piece / SX) * S - P, dx = r * (piece % SX) * S - P;
            const int64_t v0 = (int64_t)piece * C * S * S;
            if (S == 1)   /* a transpose */
                K_()->wino_pack(xq, C, H, W, dy, dx, XP, HH, WW, CS, v0, hlo, hhi);
            else
                wino_pack_strided(xq, C, H, W, S, dy, dx, XP, WW, CS, v0, hlo, hhi);
        }
        #pragma omp barrier
        const int64_t ta = T * th / nt, tb = T * (th + 1) / nt;
        if (tile != 2) {
            /* V rescaled per transformed position xi (qe_wino.h): sv = VB /
             * max|V[xi]|, and the output scales carry 1 / sv */
            int32_t vm[64] = {0};
            float sv[64];
            void (*const input)(const int16_t *, int, int, int, int, int64_t, int64_t,
                                const float *, int32_t *, int16_t *) =
                tile == 4 ? K_()->wino4_input : K_()->wino8_input;
            input(XP, WW, CS, TH, TW, ta, tb, NULL, vm, V);
            #pragma omp critical(qe_wino4_vmax)
            for (int xi = 0; xi < NXI; xi++) vmax[xi] = vm[xi] > vmax[xi] ? vm[xi] : vmax[xi];
            #pragma omp barrier
            for (int xi = 0; xi < NXI; xi++)
                sv[xi] = vmax[xi] > 0 ? (float)QE_WINO4_VB / (float)vmax[xi] : 1.f;
            input(XP, WW, CS, TH, TW, ta, tb, sv, vm, V);
            if (th == 0)
                for (int xi = 0; xi < NXI; xi++) f[xi] = sa / sv[xi];
        } else {
            K_()->wino_input(XP, WW, CS, TH, TW, ta, tb, V);
        }
    }
    if (tile != 2) {
        for (int cb = 0; cb < CoB; cb++)
            for (int xi = 0; xi < NXI; xi++)
                for (int c = 0; c < 32; c++) {
                    const int64_t i = ((int64_t)cb * NXI + xi) * 32 + c;
                    sc[i] = f[xi] * scale[i];
                }
    } else {
        for (int64_t i = 0; i < (int64_t)CoB * 16 * 32; i++) sc[i] = sa * scale[i];
    }
    for (int co = 0; co < CoB * 32; co++) bp[co] = bias && co < Cout ? bias[co] : 0.f;
    K_()->wino_conv(V, TH, TW, CS, (CV + 1) / 2, u, CoB, sc, bp, y, Cout, OH, OW, relu, nthreads,
                    tile);
}

void qe_depthwise_conv(const float *x, int C, int H, int W, const float *w, int mult, int KH,
                       int KW, int S, int P, const float *bias, int relu, float *y, int OH,
                       int OW, int nthreads)
{
    K_()->depthwise_conv(x, C, H, W, w, mult, KH, KW, S, P, bias, relu, y, OH, OW,
                         nthreads < 1 ? 1 : nthreads);
}

void qe_lut_fc(const float *x, int Cin, const float *cbt, int M, int K, int d,
               const uint8_t *asmt, int Cout, const float *bias, float *T, float *y,
               int relu, int nthreads)
{
    K_()->lut_fc(x, Cin, cbt, M, K, d, asmt, Cout, bias, T, y, relu, nthreads);
}

void qe_pw_conv(const float *x, int64_t P, int C, const float *w, int Cout, const float *bias,
                float *y, int relu, int nthreads)
{
    K_()->pw_conv(x, P, C, w, Cout, bias, y, relu, nthreads < 1 ? 1 : nthreads);
}

void qe_dense_fc(const float *x, int Cin, const float *w, int Cout, const float *bias,
                 float *y, int relu, int nthreads)
{
    K_()->dense_fc(x, Cin, w, Cout, bias, y, relu, nthreads);
}

void qe_max_pool_channel(const float *xc, float *yc, float *v, int H, int W, int OH, int OW,
                         int KH, int KW, int SH, int SW, int PH, int PW)
{
    K_()->max_pool_channel(xc, yc, v, H, W, OH, OW, KH, KW, SH, SW, PH, PW);
}

void qe_lrn(const float *x, float *y, int C, int64_t HW, int size, float alpha, float beta,
            float k, int nthreads)
{
    const qe_kernel_table *kt = K_();
    /* positions split across threads (share64), so that a thread's windows
     * never read a channel another thread writes in place; on one thread no
     * parallel region at all (an inactive one measured AlexNet 0.99x) */
    if (nthreads <= 1 || HW <= 64) {
        kt->lrn(x, y, C, HW, size, alpha, beta, k, 0, HW);
        return;
    }
    #pragma omp parallel num_threads(nthreads)
    {
        int64_t q0, q1;
        share64(HW, omp_get_thread_num(), omp_get_num_threads(), &q0, &q1);
        if (q0 < q1) kt->lrn(x, y, C, HW, size, alpha, beta, k, q0, q1);
    }
}

/* ---- fast path: 8-bit tables ---------------------------------------------- */

int qe_fc_q8_pad_cout(int Cout) { return (Cout + 31) / 32 * 32; }
int qe_fc_q8_pad_m(int M) { return (M + 1) / 2 * 2; }

/* Transpose an 8 x 8 block of bytes held as 8 words (word i = row i, byte j of a
 * word in memory order = column j): three rounds of swapping 1-, 2- and 4-byte
 * halves between rows 1, 2 and 4 apart.  The masks and shifts assume the
 * bytes were loaded in memory order, which memcpy gives on either endianness
 * as long as loads and stores use the same order. */
static inline void transpose8x8(uint64_t w[8])
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    static const uint64_t mk[3] = {0xFF00FF00FF00FF00ull, 0xFFFF0000FFFF0000ull,
                                   0xFFFFFFFF00000000ull};
#else
    static const uint64_t mk[3] = {0x00FF00FF00FF00FFull, 0x0000FFFF0000FFFFull,
                                   0x00000000FFFFFFFFull};
#endif
    for (int st = 0; st < 3; st++) {
        const int s = 1 << st, sh = 8 * s;
        for (int i = 0; i < 8; i++) {
            if (i & s) continue;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
            const uint64_t t = ((w[i] << sh) ^ w[i + s]) & mk[st];
            w[i + s] ^= t;
            w[i] ^= t >> sh;
#else
            const uint64_t t = ((w[i] >> sh) ^ w[i + s]) & mk[st];
            w[i + s] ^= t;
            w[i] ^= t << sh;
#endif
        }
    }
}

int qe_fc_q8_layout(const uint8_t *src, int64_t nbytes, int bits, int Cout, int M,
                    uint8_t *out)
{
    const int Cp = qe_fc_q8_pad_cout(Cout), Mp = qe_fc_q8_pad_m(M);
    /* 32 outputs at a time: unpack their rows into `rows` [32][Mp] (zero past M
     * and past Cout), then transpose each block of QE_Q8_MBLOCK subspaces into
     * the block's [mb][32] bytes, written in order. */
    uint8_t *rows = (uint8_t *)malloc((size_t)32 * Mp);
    if (!rows) return -1;
    int mx = 0;
    for (int c0 = 0; c0 < Cp; c0 += 32) {
        for (int r = 0; r < 32; r++) {
            uint8_t *row = rows + (int64_t)r * Mp;
            const int co = c0 + r;
            memset(row + M, 0, (size_t)(Mp - M));
            if (co >= Cout) {
                memset(row, 0, (size_t)M);
            } else if (bits < 8) {
                const int rmx = qe_unpack_row(src, nbytes, (int64_t)co * M * bits, bits, M, row);
                mx = rmx > mx ? rmx : mx;
            } else {
                memcpy(row, src + (int64_t)co * M, (size_t)M);
            }
        }
        for (int m0 = 0; m0 < Mp; m0 += QE_Q8_MBLOCK) {
            const int mb = Mp - m0 < QE_Q8_MBLOCK ? Mp - m0 : QE_Q8_MBLOCK;
            uint8_t *blk = out + (int64_t)Cp * m0 + (int64_t)c0 * mb;
            int mm = 0;
            for (; mm + 8 <= mb; mm += 8)      /* 8 x 8 byte blocks, transposed in registers */
                for (int r = 0; r < 32; r += 8) {
                    uint64_t w[8];
                    for (int i = 0; i < 8; i++)
                        memcpy(&w[i], rows + (int64_t)(r + i) * Mp + m0 + mm, 8);
                    transpose8x8(w);
                    for (int j = 0; j < 8; j++) memcpy(blk + (mm + j) * 32 + r, &w[j], 8);
                }
            for (; mm < mb; mm++)
                for (int r = 0; r < 32; r++) blk[mm * 32 + r] = rows[(int64_t)r * Mp + m0 + mm];
        }
    }
    if (bits == 8) mx = qe_max_u8(src, (int64_t)Cout * M);
    free(rows);
    return mx;
}

int qe_fc_q8_pack(const uint8_t *in, int64_t n, int bits, uint8_t *out)
{
    if (bits < 1 || bits > 7 || n % 64) return -1;
    for (int64_t u = 0; u < n / 64; u++)
        for (int j = 0; j < 8; j++) {
            uint64_t v = 0;
            for (int k = 0; k < 8; k++) {
                const uint8_t a = in[64 * u + 8 * j + k];
                if (a >> bits) return -1;
                v |= (uint64_t)a << (k * bits);
            }
            for (int i = 0; i < bits; i++)   /* little-endian on any host */
                out[(u * 8 + j) * bits + i] = (uint8_t)(v >> (8 * i));
        }
    memset(out + n / 8 * bits, 0, QE_Q8_PACK_PAD);
    return 0;
}

int qe_fc_q8_packs(void) { return K_()->fc_q8_packs; }

/* One input's 8-bit tables q [Mp][32] (qe_q8.h), rows split across threads
 * where the table is large; returns the scale s and writes sum_m lo[m], added
 * in row order.  lohi: 2 M floats of scratch. */
#define QE_Q8_TABLE_MT_MIN 16384   /* table multiply-adds below which one thread builds it */
static float fc_q8_tables(const float *x, int Cin, const float *cbt, int M, int K, int d,
                          float *T, int Mp, uint8_t *q, double *offsum, float *lohi,
                          int nthreads)
{
    const qe_kernel_table *kt = K_();
    float *lo = lohi, *rg = lohi + M;
    const int mt = nthreads > 1 && (int64_t)M * K * d >= QE_Q8_TABLE_MT_MIN ? nthreads : 1;
    float range = 0.f, s = 1.f;
    #pragma omp parallel num_threads(mt) if (mt > 1)
    {
        const int nt = omp_get_num_threads(), th = omp_get_thread_num();
        const int m0 = (int)((int64_t)M * th / nt), m1 = (int)((int64_t)M * (th + 1) / nt);
        kt->fc_q8_rows(x, Cin, cbt, m0, m1, K, d, T, lo, rg);
        #pragma omp barrier
        #pragma omp single
        {
            double osum = 0.0;
            for (int m = 0; m < M; m++) {
                if (rg[m] > range) range = rg[m];
                osum += lo[m];
            }
            *offsum = osum;
            s = range > 0.f ? range / 255.f : 1.f;
            if (Mp > M) memset(q + (int64_t)M * 32, 0, (size_t)(Mp - M) * 32);
        }   /* (a barrier) */
        kt->fc_q8_quant(T, K, m0, m1, lo, 1.f / s, q);
    }
    return s;
}

void qe_fc_q8(const float *x, int N, int Cin, const float *cbt, int M, int K, int d,
              const uint8_t *idxq, int bits, int Cout, const float *bias, float *T, uint8_t *q,
              int32_t *acc, float *lohi, float *y, int relu, int nthreads)
{
    const int Mp = qe_fc_q8_pad_m(M), Cp = qe_fc_q8_pad_cout(Cout);
    const int64_t qstride = (int64_t)Mp * 32;
    for (int n0 = 0; n0 < N; n0 += QE_Q8_NB) {
        const int nb = N - n0 < QE_Q8_NB ? N - n0 : QE_Q8_NB;
        float s[QE_Q8_NB];
        double offsum[QE_Q8_NB];
        for (int n = 0; n < nb; n++)
            s[n] = fc_q8_tables(x + (int64_t)(n0 + n) * Cin, Cin, cbt, M, K, d, T, Mp,
                                q + n * qstride, &offsum[n], lohi, nthreads);
        K_()->fc_q8_lookup(q, qstride, nb, Mp, idxq, bits, Cp, acc, nthreads);
        for (int n = 0; n < nb; n++) {
            const int32_t *a = acc + (int64_t)n * Cp;
            float *yn = y + (int64_t)(n0 + n) * Cout;
            for (int co = 0; co < Cout; co++) {
                float v = s[n] * (float)a[co] + (float)offsum[n] + (bias ? bias[co] : 0.f);
                yn[co] = (relu && v < 0.f) ? 0.f : v;
            }
        }
    }
}

int qe_fc_k_pad(int K) { return K <= 8 ? 8 : K <= 16 ? 16 : 32; }

void qe_fc_f32(const float *x, int Cin, const float *cbt, int M, int K, int d, const uint8_t *idxq,
               int Cout, const float *bias, float *T, float *acc, float *y, int relu, int nthreads)
{
    const int Mp = qe_fc_q8_pad_m(M), Cp = qe_fc_q8_pad_cout(Cout), Kp = qe_fc_k_pad(K);
    /* table rows padded to Kp entries; padding rows and entries are zero */
    memset(T, 0, sizeof(float) * (size_t)Mp * (size_t)Kp);
    K_()->fc_table(x, Cin, cbt, M, K, d, T, Kp);
    K_()->fc_f32_lookup(T, Mp, Kp, idxq, Cp, acc, nthreads);
    for (int co = 0; co < Cout; co++) {
        float v = acc[co] + (bias ? bias[co] : 0.f);
        y[co] = (relu && v < 0.f) ? 0.f : v;
    }
}

/* ---- fast convolution: 16-bit register tables ------------------------------ */

int qe_conv16_kp(int K)
{
    return K <= 0 ? -1 : K <= 16 ? 16 : K <= 32 ? 32 : K <= 64 ? 64 : K <= 128 ? 128 : -1;
}

int qe_conv16_cop(int Cout) { return (Cout + 63) / 64 * 64; }

int qe_conv16_max_k(void) { return K_()->conv16_max_k; }

int qe_conv16_auto_k(void) { return K_()->conv16_auto_k; }

int qe_conv16_slot(int c) { return 16 * ((c % 16) / 4) + 4 * (c / 16) + c % 4; }

static int64_t align64(int64_t n) { return (n + 63) / 64 * 64; }

/* Scratch regions of qe_conv16, in bytes from the start of ws. */
typedef struct {
    int64_t T, mins, Q, acc, off, end;
} qe_c16_ws;

static int c16_ws(const qe_conv_geom *g, int M, int K, int d, int Cout, qe_c16_ws *w)
{
    const int Kp = qe_conv16_kp(K);
    if (Kp < 0) return -1;
    const int64_t planes = (int64_t)g->SS * M * g->PS;
    const int64_t RP = (g->R + QE_TILE - 1) / QE_TILE * QE_TILE;
    w->T = 0;                                   /* the transposed codebook cbT [M][d][Kp] */
    w->mins = w->T + align64((int64_t)M * d * Kp * 4);
    w->Q = w->mins + align64(planes * 4);
    /* one more group of zero tables: taps that pad the last group of four */
    w->acc = w->Q + align64((planes + g->PS) * 2 * Kp + 64);
    w->off = w->acc + align64(RP * qe_conv16_cop(Cout) * 4);
    w->end = w->off + align64(RP * 4);
    return 0;
}

int64_t qe_conv16_bytes(const qe_conv_geom *g, int M, int K, int d, int Cout)
{
    qe_c16_ws w;
    return c16_ws(g, M, K, d, Cout, &w) == 0 ? w.end : -1;
}

void qe_conv16_layout(const uint8_t *asmt, int Cout, int J, uint8_t *out)
{
    const int Cop = qe_conv16_cop(Cout);
    for (int j = 0; j < J; j++) {
        uint8_t *o = out + (int64_t)j * Cop;
        for (int co = 0; co < Cout; co++) o[co] = asmt[(int64_t)co * J + j];
        memset(o + Cout, 0, (size_t)(Cop - Cout));
    }
}

int qe_conv16_quad(void) { return K_()->conv16_quad; }

void qe_conv16_layout4(const uint8_t *asmt, int Cout, int J, uint8_t *out)
{
    const int Cop = qe_conv16_cop(Cout), J4 = (J + 3) / 4;
    for (int q = 0; q < J4; q++)
        for (int c = 0; c < Cop; c++)
            for (int t = 0; t < 4; t++) {
                const int j = 4 * q + t;
                const int k = j < J && c < Cout ? asmt[(int64_t)c * J + j] : 0;
                out[((int64_t)q * Cop + c) * 4 + t] = (uint8_t)(16 * t + k);
            }
}

void qe_conv16_lookup4(const uint8_t *Q, const int64_t *tb, int J4, const uint8_t *aQ, int Cop,
                       int64_t R, int32_t *acc, int nthreads)
{
    K_()->conv16_lookup4(Q, tb, J4, aQ, Cop, R, acc, nthreads < 1 ? 1 : nthreads);
}

void qe_conv16_lookup(const uint8_t *Q, int Kp, const int64_t *tb, int J, const uint8_t *aT,
                      int Cop, int64_t R, int32_t *acc, int nthreads)
{
    K_()->conv16_lookup(Q, Kp, tb, J, aT, Cop, Cop, R, acc, nthreads < 1 ? 1 : nthreads);
}

int qe_conv16(const qe_conv_geom *g, const float *xp, const float *cb, int M, int K, int d,
              const uint8_t *aT, int quad, int Cout, const float *bias, void *ws, float *y,
              int relu, int nthreads)
{
    const int J = g->KH * g->KW * M, G = g->SS * M, Kp = qe_conv16_kp(K);
    const int J4 = (J + 3) / 4;
    if (quad && Kp != 16) return -2;
    const int Cop = qe_conv16_cop(Cout);
    qe_c16_ws w;
    if (nthreads < 1) nthreads = 1;
    if (J > QE_C16_MAX_TAPS || c16_ws(g, M, K, d, Cout, &w) != 0) return -2;
    uint8_t *base = (uint8_t *)ws;
    float *cbT = (float *)(base + w.T), *mins = (float *)(base + w.mins);
    float *off = (float *)(base + w.off);
    uint8_t *Q = base + w.Q;
    int32_t *acc = (int32_t *)(base + w.acc);
    int64_t *tb = (int64_t *)malloc(sizeof(int64_t) * (size_t)(4 * J4));
    int64_t *tm = (int64_t *)malloc(sizeof(int64_t) * (size_t)J);
    if (!tb || !tm) { free(tb); free(tm); return -1; }
    for (int kh = 0; kh < g->KH; kh++)
        for (int kw = 0; kw < g->KW; kw++)
            for (int m = 0; m < M; m++) {
                const int j = (kh * g->KW + kw) * M + m;
                tm[j] = ((int64_t)tap_phase(g, kh, kw) * M + m) * g->PS + tap_shift(g, kh, kw);
                tb[j] = tm[j] * 2 * Kp;
            }
    for (int j = J; j < 4 * J4; j++) tb[j] = (int64_t)G * g->PS * 2 * Kp;   /* zero tables */
    memset(Q + (int64_t)G * g->PS * 2 * Kp, 0, (size_t)(g->PS * 2 * Kp));
    /* codebook [M][K][d] -> cbT [M][d][Kp], padded with copies of codeword 0 */
    for (int m = 0; m < M; m++)
        for (int c = 0; c < d; c++)
            for (int k = 0; k < Kp; k++)
                cbT[((int64_t)m * d + c) * Kp + k] = cb[((int64_t)m * K + (k < K ? k : 0)) * d + c];
    /* one scale per call from the largest table range, then the entries */
    const float range = K_()->conv16_build(g, xp, cbT, M, d, Kp, mins, 0.f, Q, 0, nthreads);
    const float s = range > 0.f ? range / 65535.f : 1.f;
    K_()->conv16_build(g, xp, cbT, M, d, Kp, mins, 1.f / s, Q, 1, nthreads);
    /* positions in whole register blocks of 4: the tables of the last ones
     * still lie inside the planes (PS >= R rounded to QE_TILE + largest shift) */
    const int64_t R4 = (g->R + 3) / 4 * 4;
    /* each output position's offsets: the same for every channel */
    memset(off, 0, sizeof(float) * (size_t)R4);
    for (int j = 0; j < J; j++) {
        const float *mj = mins + tm[j];
        for (int64_t r = 0; r < R4; r++) off[r] += mj[r];
    }
    if (quad)
        K_()->conv16_lookup4(Q, tb, J4, aT, Cop, R4, acc, nthreads);
    else
        K_()->conv16_lookup(Q, Kp, tb, J, aT, Cop, Cout, R4, acc, nthreads);
    const int64_t OHW = (int64_t)g->OH * g->OW;
    /* output rows outer: one row's accumulators (OW x Cop int32) stay in cache
     * while every channel reads its column of them (channels outer swept the
     * whole accumulator once per channel: 0.5 ms for 256 channels at 32x32) */
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int oh = 0; oh < g->OH; oh++) {
        const int64_t r0 = (int64_t)oh * g->Wq;
        for (int co = 0; co < Cout; co++) {
            const int32_t *a = acc + r0 * Cop + (quad ? co : (co & ~63) + qe_conv16_slot(co & 63));
            const float b = bias ? bias[co] : 0.f;
            float *yr = y + co * OHW + (int64_t)oh * g->OW;
            const float *o = off + r0;
            for (int ow = 0; ow < g->OW; ow++) {
                const float v = s * (float)a[(int64_t)ow * Cop] + o[ow] + b;
                yr[ow] = relu && v < 0.f ? 0.f : v;
            }
        }
    }
    free(tb); free(tm);
    return 0;
}
