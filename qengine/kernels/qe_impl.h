/* Bodies of the hot kernels, written once and compiled once per instruction
 * set: qe_dispatch.c includes this file with QE_SUFFIX set to _generic and
 * again to _avx2 under `#pragma GCC target("avx2,fma")`.  GCC vector
 * extensions give 8-float vectors; the generic build lowers them to SSE2. */

#define QE_CAT2(a, b) a##b
#define QE_CAT(a, b) QE_CAT2(a, b)
#define FN(name) QE_CAT(name, QE_SUFFIX)

/* Unaligned 8-float vector, loaded and stored through memcpy-free casts. */
typedef float QE_CAT(v8f, QE_SUFFIX) __attribute__((vector_size(32), aligned(4)));
#define V8 QE_CAT(v8f, QE_SUFFIX)

static inline V8 FN(vload)(const float *p) { return *(const V8 *)p; }
static inline void FN(vstore)(float *p, V8 v) { *(V8 *)p = v; }
static inline V8 FN(vsplat)(float f) { V8 v = {f, f, f, f, f, f, f, f}; return v; }
typedef int32_t QE_CAT(v8m, QE_SUFFIX) __attribute__((vector_size(32), aligned(4)));

/* 16-lane float and int32 vectors (one zmm on AVX-512, two ymm on AVX2). */
typedef float QE_CAT(v16f, QE_SUFFIX) __attribute__((vector_size(64), aligned(4)));
typedef int32_t QE_CAT(v16i, QE_SUFFIX) __attribute__((vector_size(64), aligned(4)));
#define V16F QE_CAT(v16f, QE_SUFFIX)
#define V16I QE_CAT(v16i, QE_SUFFIX)
#define V16SPLAT(f) ((V16F){f, f, f, f, f, f, f, f, f, f, f, f, f, f, f, f})

/* The native width for lane-wise loops with comparisons: GCC splits a
 * compare-and-select wider than the registers into scalar code, so AVX-512
 * takes 16 lanes, AVX2 8 and the portable (SSE2) build 4.  VN floats, VNI
 * int32 masks, VNS int16, QE_NL lanes. */
typedef int16_t QE_CAT(v16s_n, QE_SUFFIX) __attribute__((vector_size(32), aligned(2)));
typedef int16_t QE_CAT(v8s_n, QE_SUFFIX) __attribute__((vector_size(16), aligned(2)));
#if QE_SIMD == 3
#define QE_NL 16
#define VN QE_CAT(v16f, QE_SUFFIX)
#define VNI QE_CAT(v16i, QE_SUFFIX)
#define VNS QE_CAT(v16s_n, QE_SUFFIX)
#define QE_EVEN_LANES {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}
#elif QE_SIMD == 2
#define QE_NL 8
#define VN QE_CAT(v8f, QE_SUFFIX)
#define VNI QE_CAT(v8m, QE_SUFFIX)
#define VNS QE_CAT(v8s_n, QE_SUFFIX)
#define QE_EVEN_LANES {0, 2, 4, 6, 8, 10, 12, 14}
#else   /* SSE2: one xmm */
typedef float QE_CAT(v4f_n, QE_SUFFIX) __attribute__((vector_size(16), aligned(4)));
typedef int32_t QE_CAT(v4i_n, QE_SUFFIX) __attribute__((vector_size(16), aligned(4)));
typedef int16_t QE_CAT(v4s_n, QE_SUFFIX) __attribute__((vector_size(8), aligned(2)));
#define QE_NL 4
#define VN QE_CAT(v4f_n, QE_SUFFIX)
#define VNI QE_CAT(v4i_n, QE_SUFFIX)
#define VNS QE_CAT(v4s_n, QE_SUFFIX)
#define QE_EVEN_LANES {0, 2, 4, 6}
#endif
#if QE_NL == 16
static inline VN FN(vnsplat)(float f) { return V16SPLAT(f); }
#elif QE_NL == 8
static inline VN FN(vnsplat)(float f) { return (VN){f, f, f, f, f, f, f, f}; }
#else
static inline VN FN(vnsplat)(float f) { return (VN){f, f, f, f}; }
#endif
/* (through the types' 4-byte alignment, not memcpy: GCC's AVX2 tuning turns a
 * memcpy'd 32-byte load into two halves through the stack) */
static inline VN FN(vnload)(const float *p) { return *(const VN *)p; }
static inline void FN(vnstore)(float *p, VN v) { *(VN *)p = v; }
/* Square roots, lane by lane (correctly rounded, as sqrtf). */
static inline VN FN(vnsqrt)(VN v)
{
#if QE_SIMD == 3
    __m512 m;
    memcpy(&m, &v, sizeof m);
    m = _mm512_sqrt_ps(m);
    memcpy(&v, &m, sizeof v);
#elif QE_SIMD == 2
    __m256 m;
    memcpy(&m, &v, sizeof m);
    m = _mm256_sqrt_ps(m);
    memcpy(&v, &m, sizeof v);
#else
    for (int l = 0; l < QE_NL; l++) v[l] = sqrtf(v[l]);
#endif
    return v;
}
/* Lanes rounded to the nearest integer, ties to even (rintf; x86's cvtps2dq
 * in the default rounding mode), for |v| < 2^31. */
static inline VNI FN(vnrint)(VN v)
{
    VNI o;
#if QE_SIMD == 3 && !defined(QE_SIMD_EMULATED)
    __m512 m;
    memcpy(&m, &v, sizeof m);
    const __m512i r = _mm512_cvtps_epi32(m);
    memcpy(&o, &r, sizeof o);
#elif QE_SIMD >= 2   /* AVX2, and the emulated AVX-512 build (SIMDe has no 512-bit one) */
    for (int h = 0; h < QE_NL / 8; h++) {
        __m256 m;
        memcpy(&m, (const float *)&v + 8 * h, sizeof m);
        const __m256i r = _mm256_cvtps_epi32(m);
        memcpy((int32_t *)&o + 8 * h, &r, sizeof r);
    }
#else
    for (int l = 0; l < QE_NL; l++) o[l] = (int32_t)lrintf(v[l]);
#endif
    return o;
}
/* max: a > m ? a : m, else a < m ? a : m, lane by lane: x86's maxps(a, m)
 * or minps(a, m), which give m where either is NaN (one instruction; the
 * compare-and-select form, 2, sits on the critical path of pooling's short
 * reductions).  max is a constant at every call. */
static inline __attribute__((always_inline)) VN FN(vnpick)(VN m, VN a, const int max)
{
#if QE_SIMD == 3
    __m512 x, y;
    memcpy(&x, &a, sizeof x);
    memcpy(&y, &m, sizeof y);
    x = max ? _mm512_max_ps(x, y) : _mm512_min_ps(x, y);
    memcpy(&m, &x, sizeof m);
    return m;
#elif QE_SIMD == 2
    __m256 x, y;
    memcpy(&x, &a, sizeof x);
    memcpy(&y, &m, sizeof y);
    x = max ? _mm256_max_ps(x, y) : _mm256_min_ps(x, y);
    memcpy(&m, &x, sizeof m);
    return m;
#else
    const VNI k = max ? a > m : a < m;
    return (VN)(((VNI)a & k) | ((VNI)m & ~k));
#endif
}
static inline VN FN(vnmax)(VN m, VN a) { return FN(vnpick)(m, a, 1); }
static inline VN FN(vnmin)(VN m, VN a) { return FN(vnpick)(m, a, 0); }
/* the same as vnmax on 8 lanes */
static inline V8 FN(v8max)(V8 m, V8 a)
{
#if QE_SIMD >= 2
    __m256 x, y;
    memcpy(&x, &a, sizeof x);
    memcpy(&y, &m, sizeof y);
    x = _mm256_max_ps(x, y);
    memcpy(&m, &x, sizeof m);
    return m;
#else
    const QE_CAT(v8m, QE_SUFFIX) k = a > m;
    return (V8)(((QE_CAT(v8m, QE_SUFFIX))a & k) | ((QE_CAT(v8m, QE_SUFFIX))m & ~k));
#endif
}

/* Move a flattened accumulator row acc [ntiles*QE_TILE] into y [OH][OW]. */
static void FN(scatter_rows)(const qe_conv_geom *g, const float *accbuf, int Cout,
                             const float *bias, int relu, float *y, int nthreads)
{
    const int64_t RP = (g->R + QE_TILE - 1) / QE_TILE * QE_TILE;
    const int64_t OHW = (int64_t)g->OH * g->OW;
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int co = 0; co < Cout; co++) {
        const float b = bias ? bias[co] : 0.f;
        for (int oh = 0; oh < g->OH; oh++) {
            const float *src = accbuf + (int64_t)co * RP + (int64_t)oh * g->Wq;
            float *dst = y + co * OHW + (int64_t)oh * g->OW;
            if (relu) {
                for (int ow = 0; ow < g->OW; ow++) { float v = src[ow] + b; dst[ow] = v > 0.f ? v : 0.f; }
            } else {
                for (int ow = 0; ow < g->OW; ow++) dst[ow] = src[ow] + b;
            }
        }
    }
}

static void FN(lut_build)(const qe_conv_geom *g, const float *xp, const float *cb, int M, int K,
                          int d, float *T, const int32_t *blks, int nblk, int nthreads)
{
    const int64_t PS = g->PS;
    const int C = g->C;
    #pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nthreads > 1)
    for (int bi = 0; bi < nblk; bi++) {
        const int blk = blks[bi];
        int ph = blk / M, m = blk - ph * M;
        int c0 = m * d, dm = C - c0 < d ? C - c0 : d;
        const float *X = xp + ((int64_t)ph * C + c0) * PS;
        float *Tm = T + ((int64_t)ph * M + m) * K * PS;
        const float *cbm = cb + (int64_t)m * K * d;
        int k = 0;
        for (; k + 1 < K; k += 2) {
            const float *wa = cbm + (int64_t)k * d, *wb = wa + d;
            float *ta = Tm + k * PS, *tb = ta + PS;
            for (int64_t p0 = 0; p0 < PS; p0 += 16) {
                V8 a0 = FN(vsplat)(0.f), a1 = a0, b0 = a0, b1 = a0;
                for (int c = 0; c < dm; c++) {
                    V8 x0 = FN(vload)(X + c * PS + p0), x1 = FN(vload)(X + c * PS + p0 + 8);
                    V8 sa = FN(vsplat)(wa[c]), sb = FN(vsplat)(wb[c]);
                    a0 += sa * x0; a1 += sa * x1; b0 += sb * x0; b1 += sb * x1;
                }
                FN(vstore)(ta + p0, a0); FN(vstore)(ta + p0 + 8, a1);
                FN(vstore)(tb + p0, b0); FN(vstore)(tb + p0 + 8, b1);
            }
        }
        for (; k < K; k++) {
            const float *wa = cbm + (int64_t)k * d;
            float *ta = Tm + k * PS;
            for (int64_t p0 = 0; p0 < PS; p0 += 16) {
                V8 a0 = FN(vsplat)(0.f), a1 = a0;
                for (int c = 0; c < dm; c++) {
                    V8 sa = FN(vsplat)(wa[c]);
                    a0 += sa * FN(vload)(X + c * PS + p0); a1 += sa * FN(vload)(X + c * PS + p0 + 8);
                }
                FN(vstore)(ta + p0, a0); FN(vstore)(ta + p0 + 8, a1);
            }
        }
    }
}

/* One tile of NV vectors (8 positions each) at r0, for every output channel.
 * off [Cout][jn]: where each output's table row for each tap of the chunk
 * starts.  Always inlined with a constant NV, so that the accumulators stay in
 * registers. */
static inline __attribute__((always_inline)) void FN(lut_tile)(
    const float *T, const int64_t *off, int jn, int first, int Cout, float *accbuf, int64_t RP,
    int64_t r0, const int NV)
{
    for (int co = 0; co < Cout; co++) {
        const int64_t *o = off + (int64_t)co * jn;
        float *yb = accbuf + (int64_t)co * RP + r0;
        const float *Tr = T + r0;
        V8 acc[QE_TILE / 8];
        for (int v = 0; v < NV; v++) acc[v] = first ? FN(vsplat)(0.f) : FN(vload)(yb + 8 * v);
        for (int j = 0; j < jn; j++) {
            const float *src = Tr + o[j];
            for (int v = 0; v < NV; v++) acc[v] += FN(vload)(src + 8 * v);
        }
        for (int v = 0; v < NV; v++) FN(vstore)(yb + 8 * v, acc[v]);
    }
}

/* acc[co][r] (+)= sum over the chunk's taps j of T[off[co][j] + r]: every output
 * is a sum of table entries picked by its indices, QE_TILE positions (eight
 * vector accumulators) at a time.  The taps come in chunks whose table planes
 * fit in L2; chunks are the outer loop so that neighbouring tiles reuse the
 * planes already in cache, and the partial sums wait in acc [Cout][RP]. */
static void FN(lut_lookup)(const qe_conv_geom *g, const float *T, const int64_t *off, int jn,
                           int first, const int64_t *gbase, const int32_t *grows, int g0, int g1,
                           int K, int Cout, float *accbuf, int nthreads)
{
    const int64_t PS = g->PS;
    const int64_t ntiles = (g->R + QE_TILE - 1) / QE_TILE;
    const int64_t RP = ntiles * QE_TILE;
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t t = 0; t < ntiles; t++) {
        const int64_t r0 = t * QE_TILE;
        /* The planes of a chunk are too many for the hardware prefetchers
         * to follow: fetch the rows the tile after next will read. */
        if (t + QE_PREFETCH_TILES < ntiles) {
            const int64_t rp = r0 + QE_PREFETCH_TILES * QE_TILE;
            for (int gi = g0; gi < g1; gi++)
                for (int k = 0; k < K; k++) {
                    const float *base = T + gbase[gi] + (int64_t)k * PS + rp;
                    for (int dh = 0; dh < grows[gi]; dh++) {
                        const float *q = base + (int64_t)dh * g->Wq;
                        for (int o = 0; o < QE_TILE + 16; o += 16) __builtin_prefetch(q + o);
                    }
                }
        }
        /* the last tile sums only the vectors that hold real positions (on
         * small layers it is mostly padding: 3 of 64 positions on a 13x13 map) */
        const int64_t left = g->R - r0;
        const int nv = left >= QE_TILE ? QE_TILE / 8 : (int)((left + 7) / 8);
#define QE_TILE_CALL(NV) FN(lut_tile)(T, off, jn, first, Cout, accbuf, RP, r0, NV)
        switch (nv) {
        case 1: QE_TILE_CALL(1); break;
        case 2: QE_TILE_CALL(2); break;
        case 3: QE_TILE_CALL(3); break;
        case 4: QE_TILE_CALL(4); break;
        case 5: QE_TILE_CALL(5); break;
        case 6: QE_TILE_CALL(6); break;
        case 7: QE_TILE_CALL(7); break;
        default: QE_TILE_CALL(QE_TILE / 8); break;
        }
#undef QE_TILE_CALL
    }
}

/* Dense convolution in the same phase-plane layout, register-blocked: six
 * output channels times QE_DT positions in twelve accumulators.  w is blocked as
 * [Cout/6][J][6] (J = C*KH*KW taps in jbase order); acc [Cout][RP].
 *
 * Cache blocking: output-channel blocks are taken in groups whose weights fit
 * in L2 (QE_DENSE_W_BYTES); for each group, every tile of QE_DT positions
 * first copies its J input rows into one contiguous [J][QE_DT] panel, which the
 * group's blocks then read in order (the rows themselves lie in J planes
 * far apart: the panel turns J scattered reads per block into one stream). */

/* The dense kernel's tile: QE_DT output positions, two VD vectors per
 * channel (16-lane on AVX-512, 8-lane on AVX2 and SSE2), so six channels make
 * twelve accumulators on every instruction set.  Each output's sum runs over
 * the taps in the same order whatever the width: the same bits. */
#if QE_NL >= 8   /* the native vectors */
#define QE_DT (2 * QE_NL)
#define VD VN
#define VDI VNI
static inline VD FN(vdload)(const float *p) { return FN(vnload)(p); }
static inline void FN(vdstore)(float *p, VD v) { FN(vnstore)(p, v); }
static inline VD FN(vdsplat)(float f) { return FN(vnsplat)(f); }
#else            /* SSE2: the 8-lane pair GCC lowers to two xmm each */
#define QE_DT 16
#define VD V8
#define VDI QE_CAT(v8m, QE_SUFFIX)
static inline VD FN(vdload)(const float *p) { return FN(vload)(p); }
static inline void FN(vdstore)(float *p, VD v) { FN(vstore)(p, v); }
static inline VD FN(vdsplat)(float f) { return FN(vsplat)(f); }
#endif

/* Output channel co's QE_DT positions from r0, plus bias, ReLU'd when asked,
 * straight into y [Cout][R] (only the positions below R). */
static inline void FN(dense_store_y)(float *y, int64_t R, int64_t r0, int co, const float *bias,
                                     int relu, VD a, VD b)
{
    const VD bb = FN(vdsplat)(bias ? bias[co] : 0.f);
    a += bb;
    b += bb;
    if (relu) {
        const VD z = FN(vdsplat)(0.f);
        a = (VD)((VDI)a & (VDI)(a > z));
        b = (VD)((VDI)b & (VDI)(b > z));
    }
    float *dst = y + (int64_t)co * R + r0;
    if (r0 + QE_DT <= R) {
        FN(vdstore)(dst, a);
        FN(vdstore)(dst + QE_DT / 2, b);
    } else {
        float t[QE_DT];
        FN(vdstore)(t, a);
        FN(vdstore)(t + QE_DT / 2, b);
        for (int64_t k = 0; k < R - r0; k++) dst[k] = t[k];
    }
}

/* Where the 16 output positions from r0 (in OH x OW order; those past NR
 * repeat the last) lie in the phase planes: q[i] = oh * Wq + ow.  Runs of
 * consecutive ones: run k starts at lane start[k] and is read at base[k] +
 * lane, so that every read lies between the tile's first and last position.
 * Returns the number of runs; only the first four are recorded. */
static inline int FN(tile_runs)(const qe_conv_geom *g, int64_t NR, int64_t r0, int64_t q[16],
                                int64_t base[4], int start[4])
{
    int nrun = 0;
    for (int i = 0; i < 16; i++) {
        const int64_t p = r0 + i < NR ? r0 + i : NR - 1;
        q[i] = p / g->OW * g->Wq + p % g->OW;
        if (i == 0 || q[i] != q[i - 1] + 1) {
            if (nrun < 4) {
                base[nrun] = q[i] - i;
                start[nrun] = i;
            }
            nrun++;
        }
    }
    return nrun;
}

/* Lanes i >= i0 of a 16-lane pair taken from b, the others from a. */
static inline V8 FN(vsel)(V8 a, V8 b, QE_CAT(v8m, QE_SUFFIX) m)
{
    return (V8)(((QE_CAT(v8m, QE_SUFFIX))a & ~m) | ((QE_CAT(v8m, QE_SUFFIX))b & m));
}

/* y != NULL: bias, ReLU and the output written here, no accumulator pass.
 * gather != 0 (needs y): tiles of QE_DT *output* positions (OH x OW, no padding
 * columns computed), each tile's panel gathered from the plane rows it spans
 * (at most four runs, merged with vector blends); else tiles of QE_DT plane
 * positions (OH x Wq), written to y only when Wq == OW, to accbuf otherwise.
 * Returns nonzero when gather mode could not allocate its panel (nothing
 * was written: the caller runs the plain mode). */
static int FN(dense_conv)(const qe_conv_geom *g, const float *xp, const int64_t *jbase, int J,
                          const float *w, int CoutB, float *accbuf, float *y, int Cout,
                          const float *bias, int relu, int nthreads, int gather)
{
    const int64_t RP = (g->R + QE_TILE - 1) / QE_TILE * QE_TILE;
    const int64_t NR = gather ? (int64_t)g->OH * g->OW : g->R;
    const int64_t ntiles = (NR + QE_DT - 1) / QE_DT;   /* only tiles holding real positions */
    const int nblk = CoutB / QE_DENSE_CO;
    int per_group = (int)(QE_DENSE_W_BYTES / ((int64_t)J * QE_DENSE_CO * (int64_t)sizeof(float)));
    per_group = per_group < 1 ? 1 : per_group;
    int failed = 0;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1) reduction(| : failed)
    {
        float *panel = (float *)malloc(sizeof(float) * QE_DT * (size_t)J);
        failed = gather && !panel;
        for (int b0 = 0; b0 < nblk && !(gather && !panel); b0 += per_group) {
            const int b1 = b0 + per_group < nblk ? b0 + per_group : nblk;
            #pragma omp for schedule(static)
            for (int64_t t = 0; t < ntiles; t++) {
                const int64_t r0 = t * QE_DT;
                const float *xs = panel;
                int64_t step = QE_DT;
                if (panel && gather) {
                    /* each 16 of the tile's plane positions; in a full one,
                     * its runs merged by vector blends */
                    for (int h = 0; h < QE_DT / 16; h++) {
                        const int64_t rb = r0 + 16 * h;
                        int64_t q[16], base[4];
                        int start[4];
                        QE_CAT(v8m, QE_SUFFIX) mlo[4], mhi[4];
                        const int nrun = FN(tile_runs)(g, NR, rb, q, base, start);
                        for (int k = 0; k < nrun && k < 4; k++)
                            for (int l = 0; l < 8; l++) {
                                mlo[k][l] = l >= start[k] ? -1 : 0;
                                mhi[k][l] = l + 8 >= start[k] ? -1 : 0;
                            }
                        float *out = panel + 16 * h;
                        if (nrun <= 4 && rb + 16 <= NR) {
                            for (int j = 0; j < J; j++) {
                                const float *s = xp + jbase[j];
                                V8 lo = FN(vload)(s + base[0]), hi = FN(vload)(s + base[0] + 8);
                                for (int k = 1; k < nrun; k++) {
                                    lo = FN(vsel)(lo, FN(vload)(s + base[k]), mlo[k]);
                                    hi = FN(vsel)(hi, FN(vload)(s + base[k] + 8), mhi[k]);
                                }
                                FN(vstore)(out + QE_DT * j, lo);
                                FN(vstore)(out + QE_DT * j + 8, hi);
                            }
                        } else {    /* narrow rows, or the last tile: one value at a time */
                            for (int j = 0; j < J; j++) {
                                const float *s = xp + jbase[j];
                                for (int i = 0; i < 16; i++) out[QE_DT * j + i] = s[q[i]];
                            }
                        }
                    }
                } else if (panel) {
                    for (int j = 0; j < J; j++) {
                        const float *s = xp + jbase[j] + r0;
                        FN(vdstore)(panel + QE_DT * j, FN(vdload)(s));
                        FN(vdstore)(panel + QE_DT * j + QE_DT / 2, FN(vdload)(s + QE_DT / 2));
                    }
                } else {
                    step = 0;   /* no panel memory: read the rows in place */
                }
                for (int cb = b0; cb < b1; cb++) {
                    const float *wb = w + (int64_t)cb * J * QE_DENSE_CO;
                    VD c00 = FN(vdsplat)(0.f), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
                    VD c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
                    for (int j = 0; j < J; j++) {
                        const float *s = panel ? xs + step * j : xp + jbase[j] + r0;
                        VD x0 = FN(vdload)(s), x1 = FN(vdload)(s + QE_DT / 2);
                        const float *wj = wb + QE_DENSE_CO * j;
                        VD w0 = FN(vdsplat)(wj[0]);
                        c00 += w0 * x0; c01 += w0 * x1;
                        w0 = FN(vdsplat)(wj[1]); c10 += w0 * x0; c11 += w0 * x1;
                        w0 = FN(vdsplat)(wj[2]); c20 += w0 * x0; c21 += w0 * x1;
                        w0 = FN(vdsplat)(wj[3]); c30 += w0 * x0; c31 += w0 * x1;
                        w0 = FN(vdsplat)(wj[4]); c40 += w0 * x0; c41 += w0 * x1;
                        w0 = FN(vdsplat)(wj[5]); c50 += w0 * x0; c51 += w0 * x1;
                    }
                    if (y) {
                        const int co = cb * QE_DENSE_CO;
                        FN(dense_store_y)(y, NR, r0, co, bias, relu, c00, c01);
                        if (co + 1 < Cout) FN(dense_store_y)(y, NR, r0, co + 1, bias, relu, c10, c11);
                        if (co + 2 < Cout) FN(dense_store_y)(y, NR, r0, co + 2, bias, relu, c20, c21);
                        if (co + 3 < Cout) FN(dense_store_y)(y, NR, r0, co + 3, bias, relu, c30, c31);
                        if (co + 4 < Cout) FN(dense_store_y)(y, NR, r0, co + 4, bias, relu, c40, c41);
                        if (co + 5 < Cout) FN(dense_store_y)(y, NR, r0, co + 5, bias, relu, c50, c51);
                        continue;
                    }
                    float *o = accbuf + (int64_t)cb * QE_DENSE_CO * RP + r0;
                    const int hd = QE_DT / 2;
                    FN(vdstore)(o, c00); FN(vdstore)(o + hd, c01);
                    FN(vdstore)(o + RP, c10); FN(vdstore)(o + RP + hd, c11);
                    FN(vdstore)(o + 2 * RP, c20); FN(vdstore)(o + 2 * RP + hd, c21);
                    FN(vdstore)(o + 3 * RP, c30); FN(vdstore)(o + 3 * RP + hd, c31);
                    FN(vdstore)(o + 4 * RP, c40); FN(vdstore)(o + 4 * RP + hd, c41);
                    FN(vdstore)(o + 5 * RP, c50); FN(vdstore)(o + 5 * RP + hd, c51);
                }
            }
        }
        free(panel);
    }
    return failed;
}
#undef VD
#undef VDI

/* Depthwise convolution (qe_depthwise_conv): output channel o reads input
 * channel o / mult through its own KH x KW filter.  Per output row, each tap
 * adds its input row times the filter weight along the row (contiguous and
 * vectorised for stride 1), skipping the columns it would read in the padding;
 * eight output rows at a time stay in L1 while the taps run over them. */
static void FN(depthwise_conv)(const float *x, int C, int H, int W, const float *w, int mult,
                               int KH, int KW, int S, int P, const float *bias, int relu,
                               float *y, int OH, int OW, int nthreads)
{
    const int Cout = C * mult;
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int o = 0; o < Cout; o++) {
        const float *xc = x + (int64_t)(o / mult) * H * W;
        const float *wo = w + (int64_t)o * KH * KW;
        const float b = bias ? bias[o] : 0.f;
        float *yo = y + (int64_t)o * OH * OW;
        for (int oh = 0; oh < OH; oh++) {
            float *__restrict yr = yo + (int64_t)oh * OW;
            for (int ow = 0; ow < OW; ow++) yr[ow] = b;
            for (int i = 0; i < KH; i++) {
                const int h = oh * S - P + i;
                if (h < 0 || h >= H) continue;
                const float *xr = xc + (int64_t)h * W;
                for (int j = 0; j < KW; j++) {
                    const float wv = wo[i * KW + j];
                    const int off = j - P;          /* input column = ow * S + off */
                    int lo = off < 0 ? (-off + S - 1) / S : 0;
                    int hi = W - 1 - off >= 0 ? (W - 1 - off) / S + 1 : 0;
                    hi = hi > OW ? OW : hi;
                    if (S == 1) {
                        const float *__restrict xs = xr + off;
                        for (int ow = lo; ow < hi; ow++) yr[ow] += wv * xs[ow];
                    } else {
                        for (int ow = lo; ow < hi; ow++) yr[ow] += wv * xr[(int64_t)ow * S + off];
                    }
                }
            }
            if (relu)
                for (int ow = 0; ow < OW; ow++) yr[ow] = yr[ow] > 0.f ? yr[ow] : 0.f;
        }
    }
}

/* The fully-connected lookup table: T[m][k] = x_m . cb[m][k], rows ldT floats
 * apart, from the codewords transposed at load, cbt[m][c][k] = cb[m][k][c]
 * (qe_fc_codebook_t).  Each entry adds its d products in order, as a plain dot
 * product would; the K entries of a row are independent sums and run in
 * vectors (not one chain of d dependent adds per entry).  Products and sums
 * are rounded apart (QE_NO_FMA), so every instruction set gets the same bits. */
#ifndef QE_NO_FMA
#if defined(__GNUC__) && !defined(__clang__)
#define QE_NO_FMA __attribute__((optimize("fp-contract=off")))
#else
#define QE_NO_FMA /* clang contracts only within one expression (-ffp-contract=on) */
#endif
#endif
#ifndef QE_FC_TABLE_PREFETCH
#define QE_FC_TABLE_PREFETCH 8192   /* bytes ahead in the codebook */
#endif
QE_NO_FMA static void FN(fc_table)(const float *x, int Cin, const float *cbt, int M, int K, int d,
                                   float *T, int ldT)
{
    for (int m = 0; m < M; m++) {
        const int c0 = m * d, dm = Cin - c0 < d ? Cin - c0 : d;
        const float *xm = x + c0;
        const float *cbm = cbt + (int64_t)m * d * K;
        float *restrict t = T + (int64_t)m * ldT;
        /* the codebook streams once per image (1.2 MB for AlexNet's fc6) */
        for (int64_t b = 0; b < (int64_t)d * K * 4; b += 64)
            __builtin_prefetch((const char *)cbm + QE_FC_TABLE_PREFETCH + b);
        int k = 0;
        for (; k + 8 <= K; k += 8) {
            V8 a = FN(vsplat)(0.f);
            for (int c = 0; c < dm; c++) {
                V8 p = FN(vload)(cbm + (int64_t)c * K + k) * FN(vsplat)(xm[c]);
                a = a + p;
            }
            FN(vstore)(t + k, a);
        }
        for (; k < K; k++) {
            float a = 0.f;
            for (int c = 0; c < dm; c++) {
                float p = cbm[(int64_t)c * K + k] * xm[c];
                a = a + p;
            }
            t[k] = a;
        }
    }
}

static void FN(lut_fc)(const float *x, int Cin, const float *cbt, int M, int K, int d,
                       const uint8_t *asmt, int Cout, const float *bias, float *T, float *y,
                       int relu, int nthreads)
{
    FN(fc_table)(x, Cin, cbt, M, K, d, T, K);
    const int mblock = qe_fc_block(K);
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        #pragma omp for schedule(static)
        for (int co = 0; co < Cout; co++) y[co] = bias ? bias[co] : 0.f;
        for (int m0 = 0; m0 < M; m0 += mblock) {
            const int m1 = m0 + mblock < M ? m0 + mblock : M;
            const float *Tb = T + (int64_t)m0 * K;
            const uint8_t *ablk = asmt + (int64_t)Cout * m0;
            const int mb = m1 - m0;
            #pragma omp for schedule(static)
            for (int co = 0; co < Cout; co++) {
                const uint8_t *a = ablk + (int64_t)co * mb - m0;
                float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f, s4 = 0.f, s5 = 0.f, s6 = 0.f, s7 = 0.f;
                const float *Tm = Tb;
                int m = m0;
                for (; m + 7 < m1; m += 8, Tm += 8 * K) {
                    s0 += Tm[a[m]];
                    s1 += Tm[K + a[m + 1]];
                    s2 += Tm[2 * K + a[m + 2]];
                    s3 += Tm[3 * K + a[m + 3]];
                    s4 += Tm[4 * K + a[m + 4]];
                    s5 += Tm[5 * K + a[m + 5]];
                    s6 += Tm[6 * K + a[m + 6]];
                    s7 += Tm[7 * K + a[m + 7]];
                }
                for (; m < m1; m++, Tm += K) s0 += Tm[a[m]];
                y[co] += ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
            }
        }
        if (relu) {
            #pragma omp for schedule(static)
            for (int co = 0; co < Cout; co++) y[co] = y[co] > 0.f ? y[co] : 0.f;
        }
    }
}

static void FN(dense_fc)(const float *x, int Cin, const float *w, int Cout, const float *bias,
                         float *y, int relu, int nthreads)
{
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int co = 0; co < Cout; co++) {
        const float *wc = w + (int64_t)co * Cin;
        V8 a0 = FN(vsplat)(0.f), a1 = a0;
        int i = 0;
        for (; i + 15 < Cin; i += 16) {
            a0 += FN(vload)(wc + i) * FN(vload)(x + i);
            a1 += FN(vload)(wc + i + 8) * FN(vload)(x + i + 8);
        }
        a0 += a1;
        float s = 0.f;
        for (int l = 0; l < 8; l++) s += a0[l];
        for (; i < Cin; i++) s += wc[i] * x[i];
        s += bias ? bias[co] : 0.f;
        y[co] = (relu && s < 0.f) ? 0.f : s;
    }
}

/* Positions [q0, q1) of the LRN of x [C][HW] into y.  Direct window sums (no
 * running sum, so no drift across channels): the squares of channels lo..hi
 * added in channel order.  QE_NL positions at a time while the channels go by
 * (the last few positions as a partial vector: lanes past them are computed
 * on zeros and not stored).  For size <= QE_LRN_RING each channel's vector is
 * loaded once, into a window of registers (channels c - pre .. c + post,
 * zeros outside [0, C): adding 0 to a sum that starts at 0 changes no bit),
 * so y may be x itself (written in place): a channel's output is stored once
 * every input its window needs is held.  Larger windows read x directly and
 * need y != x.  beta = 0.75: s^-0.75 = 1 / (sqrt(s) * sqrt(sqrt(s))); any
 * other beta, powf per value.  Every lane does the same operations, unfused
 * (QE_NO_FMA), so the bits depend neither on the instruction set nor on how
 * the positions are split. */
#define QE_LRN_RING QE_LRN_MAX_IN_PLACE
QE_NO_FMA static inline __attribute__((always_inline)) VN
FN(lrn_out)(VN xc, VN s, float a, float beta, float k)
{
    if (beta == 0.75f) {
        const VN r = FN(vnsqrt)(FN(vnsplat)(k) + FN(vnsplat)(a) * s);
        return xc / (r * FN(vnsqrt)(r));
    }
    float xf[QE_NL], sf[QE_NL], of[QE_NL];
    VN o;
    memcpy(xf, &xc, sizeof xf);
    memcpy(sf, &s, sizeof sf);
    for (int l = 0; l < QE_NL; l++) of[l] = xf[l] * powf(k + a * sf[l], -beta);
    memcpy(&o, of, sizeof o);
    return o;
}

/* nl lanes (QE_NL: a whole vector) of positions p0.. of channel c */
static inline __attribute__((always_inline)) VN FN(lrn_load)(const float *x, int nl)
{
    if (nl == QE_NL) return FN(vnload)(x);
    VN v = FN(vnsplat)(0.f);
    memcpy(&v, x, sizeof(float) * (size_t)nl);
    return v;
}

static inline __attribute__((always_inline)) void FN(lrn_store)(float *y, VN v, int nl)
{
    if (nl == QE_NL) FN(vnstore)(y, v);
    else memcpy(y, &v, sizeof(float) * (size_t)nl);
}

/* The window form (S = size <= QE_LRN_RING; a constant where inlined so the
 * window stays in registers) */
QE_NO_FMA static inline __attribute__((always_inline)) void
FN(lrn_window)(const float *x, float *y, int C, int64_t HW, int64_t p0, int nl, const int S,
               float a, float beta, float k)
{
    const int pre = (S - 1) / 2, post = S - 1 - pre;
    VN w[QE_LRN_RING];
    for (int i = 0; i < S - 1; i++) {   /* channels -pre .. post - 1 */
        const int ch = i - pre;
        w[i] = ch >= 0 && ch < C ? FN(lrn_load)(x + ch * HW + p0, nl) : FN(vnsplat)(0.f);
    }
    for (int c = 0; c < C; c++) {
        w[S - 1] = c + post < C ? FN(lrn_load)(x + (c + post) * HW + p0, nl) : FN(vnsplat)(0.f);
        VN s = FN(vnsplat)(0.f);
        for (int i = 0; i < S; i++) s += w[i] * w[i];
        FN(lrn_store)(y + c * HW + p0, FN(lrn_out)(w[pre], s, a, beta, k), nl);
        for (int i = 0; i < S - 1; i++) w[i] = w[i + 1];
    }
}

QE_NO_FMA static void FN(lrn)(const float *x, float *y, int C, int64_t HW, int size,
                              float alpha, float beta, float k, int64_t q0, int64_t q1)
{
    const float a = alpha / (float)size;
    for (int64_t p0 = q0; p0 < q1; p0 += QE_NL) {
        const int nl = q1 - p0 < QE_NL ? (int)(q1 - p0) : QE_NL;
        if (size <= QE_LRN_RING) {
            if (nl == QE_NL && size == 5)   /* AlexNet's, GoogLeNet's */
                FN(lrn_window)(x, y, C, HW, p0, QE_NL, 5, a, beta, k);
            else if (nl == QE_NL && size == 3)
                FN(lrn_window)(x, y, C, HW, p0, QE_NL, 3, a, beta, k);
            else
                FN(lrn_window)(x, y, C, HW, p0, nl, size, a, beta, k);
            continue;
        }
        const int pre = (size - 1) / 2, post = size - 1 - pre;
        for (int c = 0; c < C; c++) {
            const int lo = c - pre < 0 ? 0 : c - pre, hi = c + post >= C ? C - 1 : c + post;
            VN s = FN(vnsplat)(0.f);
            for (int cc = lo; cc <= hi; cc++) {
                const VN xa = FN(lrn_load)(x + cc * HW + p0, nl);
                s += xa * xa;
            }
            FN(lrn_store)(y + c * HW + p0, FN(lrn_out)(FN(lrn_load)(x + c * HW + p0, nl), s, a,
                                                      beta, k), nl);
        }
    }
}

/* QE_NL (8) outputs of the column pass at stride SW (1 or 2) from v: the KW
 * slots of output i start at v[i * SW]. */
static inline void FN(pool_cols)(const float *v, float *y, int KW, int SW)
{
    const VNI even = QE_EVEN_LANES;
    VN m = FN(vnsplat)(-FLT_MAX);
    for (int kw = 0; kw < KW; kw++) {
        const VN a = FN(vnload)(v + kw);
        m = FN(vnmax)(m, SW == 1 ? a : __builtin_shuffle(a, FN(vnload)(v + kw + QE_NL), even));
    }
    FN(vnstore)(y, m);
}

#if QE_NL > 8
static inline void FN(pool_cols8)(const float *v, float *y, int KW, int SW)
{
    const QE_CAT(v8m, QE_SUFFIX) even = {0, 2, 4, 6, 8, 10, 12, 14};
    V8 m = FN(vsplat)(-FLT_MAX);
    for (int kw = 0; kw < KW; kw++) {
        const V8 a = SW == 1 ? FN(vload)(v + kw)
                             : __builtin_shuffle(FN(vload)(v + kw), FN(vload)(v + kw + 8), even);
        m = FN(v8max)(m, a);
    }
    FN(vstore)(y, m);
}
#endif

/* The window rows [h0, h1) of one output row (x0: row h0) reduced element
 * by element into vr[0 .. W).  (Inlined with constant row counts for the
 * common windows: a short loop of unknown count costs more than its work.) */
static inline __attribute__((always_inline)) void FN(pool_rows)(const float *x0, int h0, int h1,
                                                                 int W, float *vr)
{
    const VN lo = FN(vnsplat)(-FLT_MAX);
    int w = 0;
    for (; w < W && W >= QE_NL; w += QE_NL) {
        w = w + QE_NL > W ? W - QE_NL : w;
        VN m = lo;
        for (int h = h0; h < h1; h++) m = FN(vnmax)(m, FN(vnload)(x0 + (int64_t)(h - h0) * W + w));
        FN(vnstore)(vr + w, m);
    }
#if QE_NL > 8
    for (; w < W && W >= 8; w += 8) {   /* rows of 8 to 15 values */
        w = w + 8 > W ? W - 8 : w;
        V8 m = FN(vsplat)(-FLT_MAX);
        for (int h = h0; h < h1; h++) m = FN(v8max)(m, FN(vload)(x0 + (int64_t)(h - h0) * W + w));
        FN(vstore)(vr + w, m);
    }
#endif
    for (; w < W; w++) {
        float m = -FLT_MAX;
        for (int h = h0; h < h1; h++) {
            const float a = x0[(int64_t)(h - h0) * W + w];
            m = a > m ? a : m;
        }
        vr[w] = m;
    }
}

/* One output row yr [OW] from the padded row v (the column pass; inlined
 * with constant KW and SW for the common windows). */
static inline __attribute__((always_inline)) void FN(pool_row_cols)(const float *v, float *yr,
                                                                     int OW, int KW, int SW)
{
    int ow = 0;
    if (SW <= 2 && OW >= QE_NL) {
        for (; ow < OW; ow += QE_NL) {
            ow = ow + QE_NL > OW ? OW - QE_NL : ow;
            FN(pool_cols)(v + (int64_t)ow * SW, yr + ow, KW, SW);
        }
    }
#if QE_NL > 8
    else if (SW <= 2 && OW >= 8) {
        for (; ow < OW; ow += 8) {
            ow = ow + 8 > OW ? OW - 8 : ow;
            FN(pool_cols8)(v + (int64_t)ow * SW, yr + ow, KW, SW);
        }
    }
#endif
    for (; ow < OW; ow++) {
        const float *p = v + (int64_t)ow * SW;
        float m = -FLT_MAX;
        for (int kw = 0; kw < KW; kw++) m = p[kw] > m ? p[kw] : m;
        yr[ow] = m;
    }
}

/* pool_row_cols with constant arguments for 3x3 and 2x2 windows of stride 2
 * (AlexNet's, SqueezeNet's, VGG's, ResNet's) and stride 1 */
static void FN(pool_out_row)(const float *v, float *yr, int OW, int KW, int SW)
{
    if (KW == 3 && SW == 2)
        FN(pool_row_cols)(v, yr, OW, 3, 2);
    else if (KW == 2 && SW == 2)
        FN(pool_row_cols)(v, yr, OW, 2, 2);
    else if (KW == 3 && SW == 1)
        FN(pool_row_cols)(v, yr, OW, 3, 1);
    else
        FN(pool_row_cols)(v, yr, OW, KW, SW);
}

/* Max pooling of one channel, in two passes per output row.  The rows of the
 * window are reduced element by element (QE_NL lanes) into v, laid out as
 * the padded row: PW slots of -FLT_MAX, the W maxima, then -FLT_MAX up to
 * qe_max_pool_scratch() floats, so that every window, padding and ceil-rounded
 * overhang included, reads KW slots of v without clipping.  Then each output
 * is the largest of its KW slots, QE_NL (or 8) outputs per vector for strides
 * 1 and 2 (stride 2: the even lanes of two loads); a last partial vector is
 * redone overlapping the one before (max is idempotent).  Every reduction
 * starts from -FLT_MAX and keeps v > m ? v : m in row order, then column
 * order: NaNs are skipped, and max is exact, so every instruction set gives
 * the same bits. */
static void FN(max_pool_channel)(const float *xc, float *yc, float *v, int H, int W, int OH,
                                 int OW, int KH, int KW, int SH, int SW, int PH, int PW)
{
    /* two padded rows, used in turn: the column pass of a row runs after the
     * next row's vertical pass, so that its unaligned loads do not wait on
     * the stores just made (store-to-load forwarding fails on them) */
    const int64_t vlen = qe_max_pool_scratch(W, OW, KW, SW, PW) / 2;
    float *vb[2] = {v, v + vlen};
    for (int b = 0; b < 2; b++) {
        for (int64_t i = 0; i < PW; i++) vb[b][i] = -FLT_MAX;
        for (int64_t i = PW + W; i < vlen; i++) vb[b][i] = -FLT_MAX;
    }
    for (int oh = 0; oh < OH; oh++) {
        int h0 = oh * SH - PH, h1 = h0 + KH;
        h0 = h0 < 0 ? 0 : h0;
        h1 = h1 > H ? H : h1;
        const float *x0 = xc + (int64_t)h0 * W;
        float *vr = vb[oh & 1] + PW;
        if (h1 - h0 == 3)
            FN(pool_rows)(x0, 0, 3, W, vr);
        else if (h1 - h0 == 2)
            FN(pool_rows)(x0, 0, 2, W, vr);
        else
            FN(pool_rows)(x0, h0, h1, W, vr);
        if (oh > 0)
            FN(pool_out_row)(vb[(oh - 1) & 1], yc + (int64_t)(oh - 1) * OW, OW, KW, SW);
    }
    if (OH > 0)
        FN(pool_out_row)(vb[(OH - 1) & 1], yc + (int64_t)(OH - 1) * OW, OW, KW, SW);
}

#undef V8
#undef FN
