/* Fast mode: pointwise convolution (1x1, stride 1, no padding) in float,
 * strategy "pointwise".  Included by qe_bodies.h once per instruction set
 * (FN, QE_SUFFIX, QE_SIMD).
 *
 *   y[co][p] = relu(sum_c w[co][c] * x[c][p] + bias[co])   p < P, co < Cout
 *
 * read straight from x [C][P] (no phase planes, no panel copy, no integer
 * conversion of the input: the squeeze layers of SqueezeNet-like networks
 * do 16-64 multiply-adds per input value, too few to pay for the int16
 * kernel's pass over their input).  Weights laid out by qe_pw_weights() as
 * [ceil(Cout/QE_PW_LB)][C][QE_PW_LB] (zeros past Cout).
 *
 * Every output is one fused multiply-add per input channel in channel order
 * from 0, then + bias (rounded), then ReLU as v < 0 ? 0 : v (NaN passes):
 * the same bits on every instruction set (the portable build calls fmaf per
 * lane, the others the FMA instructions).
 *
 * Register block: QE_PW_CO output channels x QE_PW_NV vectors of positions
 * (AVX-512: 8 x 3 of 16 = 24 zmm accumulators; AVX2: 4 x 3 of 8, half a
 * layout block at a time).  The positions go in blocks of QE_PW_PB shared
 * among the threads; each block's inputs are read from memory once and stay
 * in L1/L2 while every channel block uses them.  A last partial block is
 * computed overlapping the one before (the same values again). */

#define FN(name) QE_CAT(name, QE_SUFFIX)

#if QE_SIMD == 3
#define QE_PW_CO 8
#define QE_PW_NV 3
#elif QE_SIMD == 2
#define QE_PW_CO 4
#define QE_PW_NV 3
#else
#define QE_PW_CO 4
#define QE_PW_NV 2
#endif
#define QE_PW_PB (QE_PW_NV * QE_NL)

/* a * b + c rounded once, by the instruction (not left to the compiler's
 * contraction of a * b + c, which -O1 builds such as CI's sanitizer one skip) */
#if QE_SIMD == 3
#define QE_PW_NATIVE __m512   /* the intrinsic type of a VN */
#define QE_PW_FMADD _mm512_fmadd_ps
#elif QE_SIMD == 2
#define QE_PW_NATIVE __m256
#define QE_PW_FMADD _mm256_fmadd_ps
#endif
static inline VN FN(pw_fma)(VN a, VN b, VN c)
{
    VN r;
#ifdef QE_PW_FMADD
    QE_PW_NATIVE x, y, z;
    memcpy(&x, &a, sizeof x);
    memcpy(&y, &b, sizeof y);
    memcpy(&z, &c, sizeof z);
    x = QE_PW_FMADD(x, y, z);
    memcpy(&r, &x, sizeof r);
#else
    for (int l = 0; l < QE_NL; l++) r[l] = fmaf(a[l], b[l], c[l]);
#endif
    return r;
}
#undef QE_PW_NATIVE
#undef QE_PW_FMADD

/* QE_PW_PB positions from xs (channel c's at xs + c * xstride) for the
 * channels co0 .. co0 + QE_PW_CO - 1 (weights wb: [C][QE_PW_LB], lane l0 on),
 * written at y + co * ystride (only n positions, channels below Cout). */
static inline __attribute__((always_inline)) void FN(pw_tile)(
    const float *xs, int64_t xstride, int C, const float *wb, int l0, float *y, int64_t ystride,
    int n, int co0, int Cout, const float *bias, int relu)
{
    VN acc[QE_PW_CO][QE_PW_NV];
    for (int i = 0; i < QE_PW_CO; i++)
        for (int v = 0; v < QE_PW_NV; v++) acc[i][v] = FN(vnsplat)(0.f);
    for (int c = 0; c < C; c++) {
        const float *xc = xs + (int64_t)c * xstride;
        const float *wc = wb + (int64_t)c * QE_PW_LB + l0;
        VN xv[QE_PW_NV];
        for (int v = 0; v < QE_PW_NV; v++) xv[v] = FN(vnload)(xc + v * QE_NL);
        for (int i = 0; i < QE_PW_CO; i++) {
            const VN wv = FN(vnsplat)(wc[i]);
            for (int v = 0; v < QE_PW_NV; v++) acc[i][v] = FN(pw_fma)(wv, xv[v], acc[i][v]);
        }
    }
    const VN z = FN(vnsplat)(0.f);
    for (int i = 0; i < QE_PW_CO && co0 + i < Cout; i++) {
        const VN b = FN(vnsplat)(bias ? bias[co0 + i] : 0.f);
        float *dst = y + (int64_t)(co0 + i) * ystride;
        for (int v = 0; v < QE_PW_NV; v++) {
            VN r = acc[i][v] + b;
            if (relu) r = (VN)(((VNI)z & (VNI)(r < z)) | ((VNI)r & ~(VNI)(r < z)));
            if ((v + 1) * QE_NL <= n) {
                FN(vnstore)(dst + v * QE_NL, r);
            } else {
                for (int l = 0; v * QE_NL + l < n; l++) dst[v * QE_NL + l] = r[l];
                break;
            }
        }
    }
}

static void FN(pw_conv)(const float *x, int64_t P, int C, const float *w, int Cout,
                        const float *bias, float *y, int relu, int nthreads)
{
    const int nlb = (Cout + QE_PW_LB - 1) / QE_PW_LB;
    const int64_t nb = (P + QE_PW_PB - 1) / QE_PW_PB;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1 && nb > 1)
    {
        float *pad = NULL;   /* fewer than QE_PW_PB positions: a zero-padded copy */
        if (P < QE_PW_PB)
            pad = (float *)calloc((size_t)C * QE_PW_PB, sizeof(float));
        #pragma omp for schedule(static)
        for (int64_t b = 0; b < nb; b++) {
            int64_t p0 = b * QE_PW_PB;
            const float *xs = x;
            int64_t xstride = P;
            int n = QE_PW_PB;
            if (P < QE_PW_PB) {
                n = (int)P;
                if (pad) {
                    for (int c = 0; c < C; c++)
                        memcpy(pad + (int64_t)c * QE_PW_PB, x + (int64_t)c * P,
                               sizeof(float) * (size_t)P);
                    xs = pad;
                    xstride = QE_PW_PB;
                }
            } else if (p0 + QE_PW_PB > P) {
                p0 = P - QE_PW_PB;   /* overlapping the block before */
            }
            if (P < QE_PW_PB && !pad) {   /* no memory for the copy: one value at a time */
                for (int co = 0; co < Cout; co++)
                    for (int64_t p = 0; p < P; p++) {
                        float s = 0.f;
                        for (int c = 0; c < C; c++)
                            s = fmaf(w[((int64_t)(co / QE_PW_LB) * C + c) * QE_PW_LB +
                                       co % QE_PW_LB], x[(int64_t)c * P + p], s);
                        s += bias ? bias[co] : 0.f;
                        y[(int64_t)co * P + p] = relu && s < 0.f ? 0.f : s;
                    }
                continue;
            }
            if (xs == x) xs = x + p0;
            for (int lb = 0; lb < nlb; lb++) {
                const float *wb = w + (int64_t)lb * C * QE_PW_LB;
                for (int l0 = 0; l0 < QE_PW_LB && lb * QE_PW_LB + l0 < Cout; l0 += QE_PW_CO)
                    FN(pw_tile)(xs, xstride, C, wb, l0, y + p0, P, n, lb * QE_PW_LB + l0, Cout,
                                bias, relu);
            }
        }
        free(pad);
    }
}

#undef QE_PW_CO
#undef QE_PW_NV
#undef QE_PW_PB
#undef FN
