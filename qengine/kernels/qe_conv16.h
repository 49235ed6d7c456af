/* Fast convolution: 16-bit lookup tables looked up inside SIMD registers.
 * Included by qe_bodies.h once per instruction set (FN, QE_SUFFIX, QE_SIMD).
 * This file builds the quantised tables (conv16_build) and sums table entries
 * (conv16_lookup, conv16_lookup4); qe_dispatch.c (qe_conv16) plans the taps,
 * picks the scale and finishes the outputs (offsets, bias, ReLU).
 *
 * Q holds, for every table group g (phase plane x subspace) and position r of
 * the phase plane, 2*Kp bytes: the low bytes of the Kp 16-bit entries, then
 * their high bytes.  tb[j] is where tap j's table for output position 0
 * starts (its group's plane plus the tap's shift); tap j's table at output
 * position r starts at Q + tb[j] + r*2*Kp.  aT [J][Cop] holds tap j's
 * codeword index for every output channel (Cop a multiple of 64).
 *
 *   acc[r][b*64 + qe_conv16_slot(c)] = sum_j entry(Q + tb[j] + r*2*Kp, aT[j][b*64 + c])
 *
 * for r < R (a multiple of 4) and 64-channel blocks b.  The slot
 * order is the order the SIMD bodies widen 16-bit sums to 32 bits in; the
 * portable body writes the same order, so all bodies fill acc identically
 * (integer sums: bit for bit).
 *
 * Overflow bounds.  The SIMD bodies look up one byte plane at a time and add
 * the looked-up bytes (<= 255) in 16-bit lanes, as faiss's fast scan does: a
 * raw accumulator adds each 16-bit lane (two channels' bytes, wrapping modulo
 * 2^16) and a second adds the lane's high byte alone (lane >> 8).  The low
 * channel's sum is recovered as raw - (high << 8) modulo 2^16, exact while
 * it is below 2^16; flushing to int32 every QE_C16_FLUSH = 256 taps keeps
 * every byte sum <= 256 * 255 = 65280.  An int32 total is at most
 * 65535 * J: the caller keeps J <= QE_C16_MAX_TAPS = 32767. */

#ifndef QE_C16_FLUSH
#define QE_C16_FLUSH 256
#endif

#define FN(name) QE_CAT(name, QE_SUFFIX)

/* ---- the tables, built and quantised in place ------------------------------
 * For every table group g = (phase ph, subspace m) and plane position r, the
 * K entries T[k] = sum_c cb[m][k][c] * x[ph][m*d + c][r], computed 8
 * codewords at a time from cbT [M][d][Kp] (codewords padded to Kp with copies
 * of codeword 0 so that padding never changes a minimum or maximum).  Pass 0
 * writes each table's smallest entry to mins [G][PS] and returns the largest
 * range; pass 1 computes the same entries again (the
 * arithmetic is cheap next to the lookups; no float table goes through
 * memory) and writes q = (T - min) * inv rounded half up, clamped to
 * 0..65535, as its low and high bytes at Q + (g*PS + r)*2*Kp. */
typedef uint8_t QE_CAT(v32b, QE_SUFFIX) __attribute__((vector_size(32), aligned(1)));
#define V8F QE_CAT(v8f, QE_SUFFIX)
#define V8I QE_CAT(v8m, QE_SUFFIX) /* qe_impl.h's 8 x int32 */

static inline V8F FN(c16_vmin)(V8F a, V8F b)
{
    V8I m = a < b;
    return (V8F)(((V8I)a & m) | ((V8I)b & ~m));
}

static inline V8F FN(c16_vmax)(V8F a, V8F b)
{
    V8I m = a > b;
    return (V8F)(((V8I)a & m) | ((V8I)b & ~m));
}

/* One group's tables, NV vectors of 8 codewords, pass PASS; returns its largest range. */
static inline __attribute__((always_inline)) float FN(c16_build_group)(
    const qe_conv_geom *g, const float *xp, const float *cbT, int M, int d, int Kp,
    float *mins, float inv, uint8_t *Q, int gi, const int NV, const int PASS)
{
    const int64_t PS = g->PS;
    const int C = g->C;
    const int ph = gi / M, m = gi - ph * M;
    const int c0 = m * d, dm = C - c0 < d ? C - c0 : d;
    const float *X = xp + ((int64_t)ph * C + c0) * PS;
    const float *cbm = cbT + (int64_t)m * d * 8 * NV;
    float *mn = mins + (int64_t)gi * PS;
    uint8_t *Qg = Q + (int64_t)gi * PS * 2 * Kp;
    /* byte i of the low half: low byte of int32 lane i; high half: its second byte */
    const QE_CAT(v32b, QE_SUFFIX) pick = {0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29,
                                          0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    float range = 0.f;
    for (int64_t r = 0; r < PS; r++) {
        V8F acc[16];
        for (int v = 0; v < NV; v++) acc[v] = FN(vsplat)(0.f);
        for (int c = 0; c < dm; c++) {
            const V8F xs = FN(vsplat)(X[c * PS + r]);
            const float *w = cbm + (int64_t)c * 8 * NV;
            for (int v = 0; v < NV; v++) acc[v] += xs * FN(vload)(w + 8 * v);
        }
        if (PASS == 0) {
            V8F lo = acc[0], hi = acc[0];
            for (int v = 1; v < NV; v++) {
                lo = FN(c16_vmin)(lo, acc[v]);
                hi = FN(c16_vmax)(hi, acc[v]);
            }
            float l = lo[0], h = hi[0];
            for (int i = 1; i < 8; i++) {
                l = lo[i] < l ? lo[i] : l;
                h = hi[i] > h ? hi[i] : h;
            }
            mn[r] = l;
            range = h - l > range ? h - l : range;
        } else {
            const V8F l = FN(vsplat)(mn[r]), sc = FN(vsplat)(inv), half = FN(vsplat)(0.5f);
            const V8F zero = FN(vsplat)(0.f), top = FN(vsplat)(65535.f);
            uint8_t *q = Qg + r * 2 * Kp;
            for (int v = 0; v < NV; v++) {
                V8F t = (acc[v] - l) * sc + half;
                t = FN(c16_vmin)(FN(c16_vmax)(t, zero), top);
                const V8I iv = __builtin_convertvector(t, V8I);
                const QE_CAT(v32b, QE_SUFFIX) b =
                    __builtin_shuffle((QE_CAT(v32b, QE_SUFFIX))iv, pick);
                memcpy(q + 8 * v, &b, 8);
                memcpy(q + Kp + 8 * v, (const uint8_t *)&b + 8, 8);
            }
        }
    }
    return range;
}

static float FN(conv16_build)(const qe_conv_geom *g, const float *xp, const float *cbT, int M,
                              int d, int Kp, float *mins, float inv, uint8_t *Q, int pass,
                              int nthreads)
{
    const int G = g->SS * M;
    float range = 0.f;
    #pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nthreads > 1) \
        reduction(max : range)
    for (int gi = 0; gi < G; gi++) {
        float rg = 0.f;
#define QE_C16_BUILD(NV) \
        (pass == 0 ? FN(c16_build_group)(g, xp, cbT, M, d, Kp, mins, inv, Q, gi, NV, 0) \
                   : FN(c16_build_group)(g, xp, cbT, M, d, Kp, mins, inv, Q, gi, NV, 1))
        switch (Kp) {
        case 16: rg = QE_C16_BUILD(2); break;
        case 32: rg = QE_C16_BUILD(4); break;
        case 64: rg = QE_C16_BUILD(8); break;
        default: rg = QE_C16_BUILD(16); break;
        }
#undef QE_C16_BUILD
        range = rg > range ? rg : range;
    }
    return range;
}
#undef V8F
#undef V8I

#if QE_SIMD >= 2

#if QE_SIMD == 3
#define QE_C16_P 4  /* positions per register block: 4 x 4 accumulators of 32 */
#else
#define QE_C16_P 2  /* 2 x 4 accumulators of 16 ymm registers */
#endif

/* Widen the 16-bit sums of one position (raw and high-byte accumulators of
 * the low-byte and high-byte lookups) to int32 channel totals lo + 256*hi and
 * add (or store, when first) them at dst in slot order. */
static inline __attribute__((always_inline)) void FN(c16_flush)(qv wl, qv ol, qv wh, qv oh,
                                                                int32_t *dst, int first)
{
    const qv z = qv_zero();
    const qv el = qv_sub16(wl, qv_sll16_8(ol)), eh = qv_sub16(wh, qv_sll16_8(oh));
    /* words in channel order within each 128-bit lane: channels 16l+0..7, 16l+8..15 */
    const qv al = qv_unpacklo16(el, ol), ah = qv_unpacklo16(eh, oh);
    const qv bl = qv_unpackhi16(el, ol), bh = qv_unpackhi16(eh, oh);
    qv v[4];
    v[0] = qv_add32(qv_unpacklo16(al, z), qv_sll32_8(qv_unpacklo16(ah, z)));
    v[1] = qv_add32(qv_unpackhi16(al, z), qv_sll32_8(qv_unpackhi16(ah, z)));
    v[2] = qv_add32(qv_unpacklo16(bl, z), qv_sll32_8(qv_unpacklo16(bh, z)));
    v[3] = qv_add32(qv_unpackhi16(bl, z), qv_sll32_8(qv_unpackhi16(bh, z)));
    for (int i = 0; i < 4; i++) {
        int32_t *p = dst + 16 * i;
        qv_store(p, first ? v[i] : qv_add32(qv_load(p), v[i]));
    }
}

#define QE_C16_LOOK(KP, t, idx) \
    ((KP) == 16 ? qv_look16(t, idx) : (KP) == 32 ? qv_look32(t, idx) : QE_C16_LOOK_WIDE(KP, t, idx))
#if QE_SIMD == 3
#define QE_C16_LOOK_WIDE(KP, t, idx) ((KP) == 64 ? qv_look64(t, idx) : qv_look128(t, idx))
#else
#define QE_C16_LOOK_WIDE(KP, t, idx) qv_look32(t, idx) /* never reached: max K 32 */
#endif

/* QE_C16_P positions from r0, one QV_BYTES-wide part h of 64-channel block b. */
static inline __attribute__((always_inline)) void FN(c16_block)(
    const uint8_t *Q, const int KP, const int64_t *tb, int J, const uint8_t *aT, int Cop,
    int64_t r0, int b, int h, int32_t *acc)
{
    qv wl[QE_C16_P], ol[QE_C16_P], wh[QE_C16_P], oh[QE_C16_P];
    for (int p = 0; p < QE_C16_P; p++) wl[p] = ol[p] = wh[p] = oh[p] = qv_zero();
    const uint8_t *ai = aT + (int64_t)b * 64 + h * QV_BYTES;
    const int64_t stride = 2 * (int64_t)KP;
    int32_t *dst = acc + r0 * Cop + (int64_t)b * 64 + (QV_BYTES / 4) * h;
    /* taps in runs of at most QE_C16_FLUSH, each run summed in 16 bits and
     * then widened into acc (a flat loop per run keeps the sums in registers) */
    for (int j0 = 0; j0 < J; j0 += QE_C16_FLUSH) {
        const int j1 = J - j0 < QE_C16_FLUSH ? J : j0 + QE_C16_FLUSH;
        for (int j = j0; j < j1; j++) {
            const qv idx = qv_load(ai + (int64_t)j * Cop);
            const uint8_t *t = Q + tb[j] + r0 * stride;
            for (int p = 0; p < QE_C16_P; p++) {
                const qv L = QE_C16_LOOK(KP, t + p * stride, idx);
                const qv H = QE_C16_LOOK(KP, t + p * stride + KP, idx);
                wl[p] = qv_add16(wl[p], L);
                ol[p] = qv_add16(ol[p], qv_srl16_8(L));
                wh[p] = qv_add16(wh[p], H);
                oh[p] = qv_add16(oh[p], qv_srl16_8(H));
#if defined(__GNUC__) && QE_SIMD == 2
                /* keeps each sum in one register across iterations: without
                 * it GCC 12 copies all of them once per tap (vmovdqa) */
                __asm__("" : "+v"(wl[p]), "+v"(ol[p]), "+v"(wh[p]), "+v"(oh[p]));
#endif
            }
        }
        for (int p = 0; p < QE_C16_P; p++) {
            FN(c16_flush)(wl[p], ol[p], wh[p], oh[p], dst + p * Cop, j0 == 0);
            wl[p] = ol[p] = wh[p] = oh[p] = qv_zero();
        }
    }
}

/* One register block; the switch hands c16_block a constant table size so
 * that each size gets its own loop (the OpenMP body below is outlined, which
 * would otherwise turn a constant parameter into a run-time one). */
static void FN(c16_block_any)(const uint8_t *Q, int Kp, const int64_t *tb, int J,
                              const uint8_t *aT, int Cop, int64_t r0, int b, int h, int32_t *acc)
{
    switch (Kp) {
    case 16: FN(c16_block)(Q, 16, tb, J, aT, Cop, r0, b, h, acc); break;
    case 32: FN(c16_block)(Q, 32, tb, J, aT, Cop, r0, b, h, acc); break;
#if QE_SIMD == 3
    case 64: FN(c16_block)(Q, 64, tb, J, aT, Cop, r0, b, h, acc); break;
    default: FN(c16_block)(Q, 128, tb, J, aT, Cop, r0, b, h, acc); break;
#endif
    }
}

static void FN(conv16_lookup)(const uint8_t *Q, int Kp, const int64_t *tb, int J,
                              const uint8_t *aT, int Cop, int Cuse, int64_t R, int32_t *acc,
                              int nthreads)
{
    if (Kp > QE_CONV16_MAX_K) {
        qe_kernels_generic.conv16_lookup(Q, Kp, tb, J, aT, Cop, Cuse, R, acc, nthreads);
        return;
    }
    const int64_t nrb = R / QE_C16_P;
    const int nb = Cop / 64;
    /* position blocks outer: their tables (QE_C16_P x J x 2Kp bytes) stay in
     * L2 while every channel block looks them up.  A register's worth of
     * channels all at or beyond Cuse (the padding of a narrow layer: 16 or 32
     * outputs in a 64-channel block) is skipped; its slots stay unwritten. */
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t rb = 0; rb < nrb; rb++)
        for (int b = 0; b < nb; b++)
            for (int h = 0; h < 64 / QV_BYTES; h++)
                if (b * 64 + h * QV_BYTES < Cuse)
                    FN(c16_block_any)(Q, Kp, tb, J, aT, Cop, rb * QE_C16_P, b, h, acc);
}
#undef QE_C16_P
#undef QE_C16_LOOK
#undef QE_C16_LOOK_WIDE

#else /* portable body: the reference the SIMD bodies are tested against */

static void FN(conv16_lookup)(const uint8_t *Q, int Kp, const int64_t *tb, int J,
                              const uint8_t *aT, int Cop, int Cuse, int64_t R, int32_t *acc,
                              int nthreads)
{
    (void)Cuse;     /* every channel is computed here: a superset of the SIMD bodies' */
    int slot[64];
    for (int c = 0; c < 64; c++) slot[c] = qe_conv16_slot(c);
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t r = 0; r < R; r++) {
        int32_t *ar = acc + r * Cop;
        for (int c = 0; c < Cop; c++) ar[c] = 0;
        for (int j = 0; j < J; j++) {
            const uint8_t *t = Q + tb[j] + r * 2 * (int64_t)Kp;
            const uint8_t *a = aT + (int64_t)j * Cop;
            for (int c = 0; c < Cop; c++) {
                const int k = a[c];
                ar[(c & ~63) + slot[c & 63]] += t[k] + (t[Kp + k] << 8);
            }
        }
    }
}

#endif

/* ---- K <= 16, four taps per register (AVX-512 VBMI + VNNI) ------------------
 * The faiss fast-scan layout: one zmm holds the 16-entry tables of four taps
 * (16 bytes each, low bytes in one register, high bytes in another) at one
 * output position; the index register holds, for 16 channels, the four taps'
 * indices in the four bytes of each channel's dword, each offset by 16 * tap
 * (layout of qe_conv16_layout4: aQ [J4][Cop/16][16][4], J4 = taps / 4 rounded
 * up; a missing tap points at an all-zero table).  vpermb looks up 64 bytes
 * (16 channels x 4 taps) and vpdpbusd against ones adds each channel's four
 * bytes straight into its int32 sum: no 16-bit stage, no flush.  Low and high
 * byte sums are combined as lo + 256 * hi; each is at most 255 * taps, so the
 * total fits int32 for the QE_C16_MAX_TAPS limit.
 *   acc[r][c] (natural channel order) = sum over taps of the 16-bit entries. */
#if QE_SIMD == 3
#define QE_C4_P 2   /* positions per register block: 2 x 4 channel groups x (lo, hi) */
static inline __attribute__((always_inline)) __m512i FN(c4_tables)(const uint8_t *Q,
                                                                 const int64_t *tb4, int64_t off)
{
    __m512i t = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(Q + tb4[0] + off)));
    t = _mm512_inserti32x4(t, _mm_loadu_si128((const __m128i *)(Q + tb4[1] + off)), 1);
    t = _mm512_inserti32x4(t, _mm_loadu_si128((const __m128i *)(Q + tb4[2] + off)), 2);
    return _mm512_inserti32x4(t, _mm_loadu_si128((const __m128i *)(Q + tb4[3] + off)), 3);
}

static void FN(conv16_lookup4)(const uint8_t *Q, const int64_t *tb, int J4, const uint8_t *aQ,
                               int Cop, int64_t R, int32_t *acc, int nthreads)
{
    const int64_t nrb = R / QE_C4_P;
    const int nb = Cop / 64;
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t rb = 0; rb < nrb; rb++) {
        const __m512i ones = _mm512_set1_epi8(1);
        const int64_t r0 = rb * QE_C4_P;
        for (int b = 0; b < nb; b++) {
            __m512i al[QE_C4_P][4], ah[QE_C4_P][4];
            for (int p = 0; p < QE_C4_P; p++)
                for (int i = 0; i < 4; i++) al[p][i] = ah[p][i] = _mm512_setzero_si512();
            for (int q = 0; q < J4; q++) {
                __m512i tl[QE_C4_P], th[QE_C4_P];
                for (int p = 0; p < QE_C4_P; p++) {
                    tl[p] = FN(c4_tables)(Q, tb + 4 * q, (r0 + p) * 32);
                    th[p] = FN(c4_tables)(Q, tb + 4 * q, (r0 + p) * 32 + 16);
                }
                const uint8_t *ai = aQ + ((int64_t)q * Cop + (int64_t)b * 64) * 4;
                for (int i = 0; i < 4; i++) {
                    const __m512i idx = _mm512_loadu_si512(ai + 64 * i);
                    for (int p = 0; p < QE_C4_P; p++) {
                        al[p][i] = _mm512_dpbusd_epi32(al[p][i], _mm512_permutexvar_epi8(idx, tl[p]), ones);
                        ah[p][i] = _mm512_dpbusd_epi32(ah[p][i], _mm512_permutexvar_epi8(idx, th[p]), ones);
#if defined(__GNUC__) && !defined(QE_SIMD_EMULATED)
                        /* without it GCC 12 copies the sums every iteration */
                        __asm__("" : "+v"(al[p][i]), "+v"(ah[p][i]));
#endif
                    }
                }
            }
            for (int p = 0; p < QE_C4_P; p++)
                for (int i = 0; i < 4; i++)
                    _mm512_storeu_si512(acc + (r0 + p) * Cop + b * 64 + 16 * i,
                                        _mm512_add_epi32(al[p][i], _mm512_slli_epi32(ah[p][i], 8)));
        }
    }
}
#undef QE_C4_P
#elif QE_SIMD == 0
/* portable body of the four-taps layout, the reference of the AVX-512 one */
static void FN(conv16_lookup4)(const uint8_t *Q, const int64_t *tb, int J4, const uint8_t *aQ,
                               int Cop, int64_t R, int32_t *acc, int nthreads)
{
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t r = 0; r < R; r++) {
        int32_t *ar = acc + r * Cop;
        for (int c = 0; c < Cop; c++) ar[c] = 0;
        for (int q = 0; q < J4; q++)
            for (int t = 0; t < 4; t++) {
                const uint8_t *tab = Q + tb[4 * q + t] + r * 32;
                for (int c = 0; c < Cop; c++) {
                    const int k = aQ[((int64_t)q * Cop + c) * 4 + t] - 16 * t;
                    ar[c] += tab[k] + (tab[16 + k] << 8);
                }
            }
    }
}
#else
static void FN(conv16_lookup4)(const uint8_t *Q, const int64_t *tb, int J4, const uint8_t *aQ,
                               int Cop, int64_t R, int32_t *acc, int nthreads)
{
    qe_kernels_generic.conv16_lookup4(Q, tb, J4, aQ, Cop, R, acc, nthreads);
}
#endif

#undef FN
