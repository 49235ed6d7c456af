/* Fast mode, dense convolution in 16-bit integers (strategy "int16").
 * Included by qe_bodies.h once per instruction set (FN, QE_SUFFIX, QE_SIMD).
 *
 * Per layer and image the input is quantised with one scale to integers
 * |xq| <= A (A per layer, from qe_i16_weights()); the weights were quantised
 * at load with one scale per output channel to int16.  Every output is the
 * exact int32 sum over its taps of xq * wq, then y = float(sum) * scale[co]
 * + bias[co] in one fused multiply-add (fmaf, correctly rounded), so every
 * instruction set writes the same bits.
 *
 * Overflow bound (checked by qe_i16_weights when the weights are laid out):
 * for every output channel A * sum_j |wq[co][j]| <= 2^31 - 1, so no partial
 * sum, in any order, leaves int32; a pair product x0*w0 + x1*w1 (pmaddwd,
 * vpdpwssd) is at most 2 * 32767^2 < 2^31 on its own.
 *
 * Layouts.  xq holds the phase planes of qe_phase_split() as int16 (same
 * element offsets).  Taps come in pairs (J2 = J rounded up to even; the last
 * pair's second tap has weight 0).  w16 [CoutB/6][J2/2][6][2]: for block cb,
 * pair p and channel c, the weights of taps 2p and 2p+1, read as one int32.
 * Output positions are tiled by QE_I16_TW in OH x OW order; each tile's
 * panel [J2/2][TW][2] holds, for every pair and position, the two taps'
 * inputs side by side (what pmaddwd multiplies with a broadcast weight pair). */

#define FN(name) QE_CAT(name, QE_SUFFIX)

#if QE_SIMD == 3
#define QE_I16_TW 64   /* four zmm of 16 positions x 2 taps */
#else
#define QE_I16_TW 16   /* two ymm of 8 positions x 2 taps */
#endif

typedef int16_t QE_CAT(v16s, QE_SUFFIX) __attribute__((vector_size(32), aligned(2)));
#define V16S QE_CAT(v16s, QE_SUFFIX)

/* largest |x| over n floats (NaN or infinity: returns a non-finite value) */
static float FN(i16_maxabs)(const float *x, int64_t n)
{
    VN m = FN(vnsplat)(0.f), bad = m;
    const VNI absmask = (VNI)FN(vnsplat)(0.f) | 0x7fffffff;
    int64_t i = 0;
    for (; i + QE_NL <= n; i += QE_NL) {
        const VN a = (VN)((VNI)FN(vnload)(x + i) & absmask);
        bad += a - a;   /* NaN once any lane was NaN or infinite */
        m = FN(vnmax)(m, a);
    }
    float r = 0.f, b = 0.f;
    for (int l = 0; l < QE_NL; l++) {
        r = m[l] > r ? m[l] : r;
        b += bad[l];
    }
    for (; i < n; i++) {
        float a = fabsf(x[i]);
        b += a - a;
        r = a > r ? a : r;
    }
    return b == 0.f ? r : NAN;
}

/* xq[i] = round(xp[i] * inv) (half away from zero), clamped to [-A, A].  The
 * multiply and the add of +-0.5 are kept apart (no fused multiply-add), so
 * every instruction set rounds the same way.  Vectors add 0.5 with t's sign
 * (-0.0 gets -0.5 where the scalar form adds +0.5: both truncate to 0) and
 * clamp with min and max (the inputs are finite: the caller checked). */
__attribute__((optimize("fp-contract=off")))
static void FN(i16_quantize)(const float *xp, int64_t n, float inv, int A, int16_t *xq)
{
    const VN s = FN(vnsplat)(inv), hi = FN(vnsplat)((float)A), lo = FN(vnsplat)(-(float)A);
    const VN half = FN(vnsplat)(0.5f);
    const VNI sign = (VNI)FN(vnsplat)(-0.f);
    int64_t i = 0;
    for (; i + QE_NL <= n; i += QE_NL) {
        VN t = FN(vnload)(xp + i) * s;
        t += (VN)(((VNI)t & sign) | (VNI)half);
        t = FN(vnmax)(FN(vnmin)(t, hi), lo);
        const VNS q = __builtin_convertvector(__builtin_convertvector(t, VNI), VNS);
        memcpy(xq + i, &q, sizeof q);
    }
    for (; i < n; i++) {
        float t = xp[i] * inv;
        t += t < 0.f ? -0.5f : 0.5f;
        t = t > (float)A ? (float)A : t < -(float)A ? -(float)A : t;
        xq[i] = (int16_t)(int32_t)t;
    }
}

static inline V16S FN(i16_load)(const int16_t *p)
{
    V16S v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* The panel of the tile at output position r0 (positions past NR repeat the last). */
static void FN(i16_panel)(const qe_conv_geom *g, const int16_t *xq, const int64_t *jb, int J2,
                          int64_t NR, int64_t r0, int16_t *panel)
{
    const V16S ilo = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23};
    const V16S ihi = {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    for (int h = 0; h < QE_I16_TW / 16; h++) {
        const int64_t rb = r0 + 16 * h;
        int64_t q[16], base[4];
        int start[4];
        V16S msk[4];
        const int nrun = FN(tile_runs)(g, NR, rb, q, base, start);
        for (int k = 0; k < nrun && k < 4; k++)
            for (int l = 0; l < 16; l++) msk[k][l] = l >= start[k] ? -1 : 0;
        int16_t *out = panel + 32 * h;
        if (nrun <= 4 && rb + 16 <= NR) {
            for (int p = 0; p < J2 / 2; p++) {
                V16S v[2];
                for (int t = 0; t < 2; t++) {
                    const int16_t *s = xq + jb[2 * p + t];
                    V16S a = FN(i16_load)(s + base[0]);
                    for (int k = 1; k < nrun; k++)
                        a = (a & ~msk[k]) | (FN(i16_load)(s + base[k]) & msk[k]);
                    v[t] = a;
                }
                V16S lo = __builtin_shuffle(v[0], v[1], ilo), hi = __builtin_shuffle(v[0], v[1], ihi);
                memcpy(out + (int64_t)p * 2 * QE_I16_TW, &lo, sizeof lo);
                memcpy(out + (int64_t)p * 2 * QE_I16_TW + 16, &hi, sizeof hi);
            }
        } else {   /* narrow rows, or the last tile: one value at a time */
            for (int p = 0; p < J2 / 2; p++) {
                const int16_t *s0 = xq + jb[2 * p], *s1 = xq + jb[2 * p + 1];
                int16_t *o = out + (int64_t)p * 2 * QE_I16_TW;
                for (int i = 0; i < 16; i++) {
                    o[2 * i] = s0[q[i]];
                    o[2 * i + 1] = s1[q[i]];
                }
            }
        }
    }
}

/* y[co][r0 + i] = fmaf(acc[c][i], scale, bias) (ReLU'd) for the n real positions. */
static inline void FN(i16_store)(const int32_t *acc, int n, float scale, float bias, int relu,
                                 float *dst)
{
#if QE_SIMD >= 2
    const __m256 s = _mm256_set1_ps(scale), b = _mm256_set1_ps(bias), z = _mm256_setzero_ps();
    for (int i = 0; i < QE_I16_TW; i += 8) {
        __m256 v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(acc + i))),
                                   s, b);
        if (relu) v = _mm256_max_ps(v, z);
        if (i + 8 <= n) {
            _mm256_storeu_ps(dst + i, v);
        } else {
            float t[8];
            _mm256_storeu_ps(t, v);
            for (int k = i; k < n; k++) dst[k] = t[k - i];
            break;
        }
    }
#else
    for (int i = 0; i < n; i++) {
        float v = fmaf((float)acc[i], scale, bias);
        dst[i] = relu && !(v > 0.f) ? 0.f : v;
    }
#endif
}

/* The convolution's outputs y [Cout][NR] (NR = OH*OW), given the quantised
 * planes; scale[co] = input scale * weight scale.  The output-channel blocks
 * whose weights fit in wbytes share each tile's panel (both stay in L2).
 * Returns nonzero when a thread could not allocate its panel (then nothing
 * is complete). */
static int FN(i16_conv)(const qe_conv_geom *g, const int16_t *xq, const int64_t *jb, int J2,
                        const int16_t *w, int CoutB, const float *scale, const float *bias,
                        float *y, int Cout, int relu, int nthreads, int64_t wbytes)
{
    const int64_t NR = (int64_t)g->OH * g->OW;
    const int64_t ntiles = (NR + QE_I16_TW - 1) / QE_I16_TW;
    const int nblk = CoutB / QE_DENSE_CO;
    const int JP = J2 / 2;
    int per_group = (int)(wbytes / ((int64_t)J2 * QE_DENSE_CO * 2));
    per_group = per_group < 1 ? 1 : per_group;
    int failed = 0;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1) reduction(| : failed)
    {
        int16_t *panel = (int16_t *)malloc(sizeof(int16_t) * 2 * QE_I16_TW * (size_t)JP + 64);
        failed = !panel;
        for (int b0 = 0; b0 < nblk && panel; b0 += per_group) {
            const int b1 = b0 + per_group < nblk ? b0 + per_group : nblk;
            #pragma omp for schedule(static)
            for (int64_t t = 0; t < ntiles; t++) {
                const int64_t r0 = t * QE_I16_TW;
                const int n = NR - r0 < QE_I16_TW ? (int)(NR - r0) : QE_I16_TW;
                FN(i16_panel)(g, xq, jb, J2, NR, r0, panel);
                for (int cb = b0; cb < b1; cb++) {
                    const int16_t *wb = w + (int64_t)cb * J2 * QE_DENSE_CO;
                    int32_t acc[QE_DENSE_CO][QE_I16_TW] __attribute__((aligned(64)));
#if QE_SIMD == 3
                    __m512i a[QE_DENSE_CO][4];
                    for (int c = 0; c < QE_DENSE_CO; c++)
                        a[c][0] = a[c][1] = a[c][2] = a[c][3] = _mm512_setzero_si512();
                    for (int p = 0; p < JP; p++) {
                        const int16_t *xs = panel + 2 * QE_I16_TW * p;
                        const __m512i x0 = _mm512_loadu_si512(xs), x1 = _mm512_loadu_si512(xs + 32);
                        const __m512i x2 = _mm512_loadu_si512(xs + 64), x3 = _mm512_loadu_si512(xs + 96);
                        for (int c = 0; c < QE_DENSE_CO; c++) {
                            int32_t wv;
                            memcpy(&wv, wb + 12 * p + 2 * c, 4);
                            const __m512i ww = _mm512_set1_epi32(wv);
                            a[c][0] = _mm512_dpwssd_epi32(a[c][0], x0, ww);
                            a[c][1] = _mm512_dpwssd_epi32(a[c][1], x1, ww);
                            a[c][2] = _mm512_dpwssd_epi32(a[c][2], x2, ww);
                            a[c][3] = _mm512_dpwssd_epi32(a[c][3], x3, ww);
                        }
                    }
                    for (int c = 0; c < QE_DENSE_CO; c++)
                        for (int q = 0; q < 4; q++) _mm512_storeu_si512(acc[c] + 16 * q, a[c][q]);
#elif QE_SIMD == 2
                    __m256i a[QE_DENSE_CO][2];
                    for (int c = 0; c < QE_DENSE_CO; c++) a[c][0] = a[c][1] = _mm256_setzero_si256();
                    for (int p = 0; p < JP; p++) {
                        const __m256i x0 = _mm256_loadu_si256((const __m256i *)(panel + 32 * p));
                        const __m256i x1 = _mm256_loadu_si256((const __m256i *)(panel + 32 * p + 16));
                        for (int c = 0; c < QE_DENSE_CO; c++) {
                            int32_t wv;
                            memcpy(&wv, wb + 12 * p + 2 * c, 4);
                            const __m256i ww = _mm256_set1_epi32(wv);
                            a[c][0] = _mm256_add_epi32(a[c][0], _mm256_madd_epi16(x0, ww));
                            a[c][1] = _mm256_add_epi32(a[c][1], _mm256_madd_epi16(x1, ww));
                        }
                    }
                    for (int c = 0; c < QE_DENSE_CO; c++) {
                        _mm256_storeu_si256((__m256i *)acc[c], a[c][0]);
                        _mm256_storeu_si256((__m256i *)(acc[c] + 8), a[c][1]);
                    }
#else
                    memset(acc, 0, sizeof acc);
                    for (int p = 0; p < JP; p++) {
                        const int16_t *xs = panel + 2 * QE_I16_TW * p;
                        for (int c = 0; c < QE_DENSE_CO; c++) {
                            const int32_t w0 = wb[12 * p + 2 * c], w1 = wb[12 * p + 2 * c + 1];
                            for (int i = 0; i < QE_I16_TW; i++)
                                acc[c][i] += xs[2 * i] * w0 + xs[2 * i + 1] * w1;
                        }
                    }
#endif
                    for (int c = 0; c < QE_DENSE_CO; c++) {
                        const int co = cb * QE_DENSE_CO + c;
                        if (co >= Cout) break;
                        FN(i16_store)(acc[c], n, scale[co], bias ? bias[co] : 0.f, relu,
                                      y + (int64_t)co * NR + r0);
                    }
                }
            }
        }
        free(panel);
    }
    return failed;
}

#undef V16S
#undef FN
