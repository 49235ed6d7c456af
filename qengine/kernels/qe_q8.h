/* Fast path, fully-connected: 8-bit lookup tables looked up inside SIMD
 * registers.  Included by qe_dispatch.c once per instruction set, like
 * qe_impl.h (FN, QE_SUFFIX); QE_IMPL_AVX2 selects the AVX2 body.
 *
 * Table quantisation (per layer and image): T[m][k] float; row offset
 * o[m] = min_k T[m][k]; one scale s = max_m (max_k T[m][k] - o[m]) / 255;
 * q[m][k] = round((T[m][k] - o[m]) / s) in 0..255.  Then
 *     y[co] = s * sum_m q[m][a[co][m]] + sum_m o[m] + bias[co]
 * where sum_m o[m] is the same for every output, added once in float.
 *
 * Accumulation bound: the AVX2 body adds two looked-up bytes per int16 lane
 * and step (<= 2*255 = 510) for at most QE_Q8_MBLOCK/2 = 64 steps, so a lane
 * holds at most 64*510 = 32640 < 32767 before it is widened to int32; an
 * int32 total is at most 255*M, which fits for M < 8.4 million. */

#define QE_CAT2(a, b) a##b
#define QE_CAT(a, b) QE_CAT2(a, b)
#define FN(name) QE_CAT(name, QE_SUFFIX)

/* 8 bytes (qe_impl.h has the 8-float and 8 x int32 vectors) */
typedef uint8_t QE_CAT(v8b, QE_SUFFIX) __attribute__((vector_size(8), aligned(1)));

/* The smallest and largest entry of a table row t[0..K): eight running minima
 * and maxima in one vector (compare and select), folded at the end.  Exact, so
 * the same on every instruction set. */
static inline void FN(q8_row_range)(const float *t, int K, float *lo, float *hi)
{
    typedef QE_CAT(v8f, QE_SUFFIX) vf;
    float l = t[0], h = t[0];
    int k = 0;
    if (K >= 8) {
        vf vl = *(const vf *)t, vh = vl;
        for (k = 8; k + 8 <= K; k += 8) {
            const vf v = *(const vf *)(t + k);
            vl = FN(vsel)(vl, v, v < vl);
            vh = FN(vsel)(vh, v, v > vh);
        }
        for (int j = 0; j < 8; j++) {
            l = vl[j] < l ? vl[j] : l;
            h = vh[j] > h ? vh[j] : h;
        }
    }
    for (; k < K; k++) {
        l = t[k] < l ? t[k] : l;
        h = t[k] > h ? t[k] : h;
    }
    *lo = l;
    *hi = h;
}

/* The 8-bit tables of one input (see the top of this file), in two steps
 * that each take a range of rows [m0, m1) (the caller may split them across
 * threads): fc_q8_rows computes the float table rows T [m][K] (fc_table) and
 * each row's lowest entry lo[m] and range rg[m]; the caller then takes s =
 * max rg / 255 (exact in any order) and sum_m lo[m] (in row order), and
 * fc_q8_quant writes the rows of q [Mp][32] (padded with zeros).  Every step
 * is one IEEE operation with the same operands on every instruction set
 * (QE_NO_FMA: no fused multiply-add), so q is bit-identical across them. */
QE_NO_FMA static void FN(fc_q8_rows)(const float *x, int Cin, const float *cbt, int m0, int m1,
                                     int K, int d, float *T, float *lo, float *rg)
{
    FN(fc_table)(x + (int64_t)m0 * d, Cin - m0 * d, cbt + (int64_t)m0 * d * K, m1 - m0, K, d,
                 T + (int64_t)m0 * K, K);
    for (int m = m0; m < m1; m++) {
        float l, h;
        FN(q8_row_range)(T + (int64_t)m * K, K, &l, &h);
        lo[m] = l;
        rg[m] = h - l;
    }
}

QE_NO_FMA static void FN(fc_q8_quant)(const float *T, int K, int m0, int m1, const float *lo,
                                      float inv, uint8_t *q)
{
    typedef QE_CAT(v8f, QE_SUFFIX) vf;
    typedef QE_CAT(v8m, QE_SUFFIX) vi;
    typedef QE_CAT(v8b, QE_SUFFIX) vb;
    const vf vinv = {inv, inv, inv, inv, inv, inv, inv, inv};
    const vf half = {.5f, .5f, .5f, .5f, .5f, .5f, .5f, .5f};
    const vi top = {255, 255, 255, 255, 255, 255, 255, 255};
    for (int m = m0; m < m1; m++) {
        const float *t = T + (int64_t)m * K;
        uint8_t *qr = q + (int64_t)m * 32;
        memset(qr, 0, 32);
        const vf vlo = {lo[m], lo[m], lo[m], lo[m], lo[m], lo[m], lo[m], lo[m]};
        int k = 0;
        for (; k + 8 <= K; k += 8) {
            vf v = (*(const vf *)(t + k) - vlo) * vinv;
            v = v + half;                         /* >= 0.5: truncation rounds */
            vi n = __builtin_convertvector(v, vi);
            n = (vi)(((vi)(n > top) & top) | (n & ~(vi)(n > top)));
            *(vb *)(qr + k) = __builtin_convertvector(n, vb);
        }
        for (; k < K; k++) {
            float v = (t[k] - lo[m]) * inv;
            v = v + 0.5f;
            qr[k] = (uint8_t)(v >= 255.f ? 255 : (int)v);
        }
    }
}

/* Packed indices (bits < 8, see qe_fc_q8_pack): the 64 indices of two rows
 * (a "unit", rows mm and mm+1 of 32 outputs) are 8*bits bytes, index 8j + k
 * in bits [k*bits, (k+1)*bits) of the j-th group of `bits` bytes.  Unpacked
 * back into the byte layout, one unit at a time. */
static inline void FN(q8_unpack_unit)(const uint8_t *p, int bits, uint8_t *out)
{
    const uint64_t mask = (1u << bits) - 1;
    for (int j = 0; j < 8; j++) {
        uint64_t v = 0;
        for (int i = 0; i < bits; i++) v |= (uint64_t)p[j * bits + i] << (8 * i);
        for (int k = 0; k < 8; k++) out[8 * j + k] = (uint8_t)((v >> (k * bits)) & mask);
    }
}

#ifndef QE_Q8_PREFETCH
#define QE_Q8_PREFETCH 8192   /* bytes ahead in the index stream */
#endif
#if QE_SIMD == 3
/* The same in registers: the unit's 8*bits bytes (a whole 64-byte load: the
 * packed layout ends in QE_Q8_PACK_PAD spare bytes), spread so that qword j
 * holds bytes j*bits .. from its second byte on (vpermb), each index moved to
 * the low bits of its byte (vpmultishiftqb: byte k of a qword takes its bits
 * from 8 + k*bits), masked to `bits` bits and +32 on the upper half (the row
 * mm+1 of vpermb's 64-byte table) in one vpternlogd. */
typedef struct {
    __m512i spread, shifts, low, up;
} QE_CAT(q8_unpacker, QE_SUFFIX);

static inline QE_CAT(q8_unpacker, QE_SUFFIX) FN(q8_unpacker_for)(int bits)
{
    QE_CAT(q8_unpacker, QE_SUFFIX) u;
    uint8_t spread[64], shifts[64];
    /* qword j = one spare byte, then bytes j*bits ..: index k starts at bit
     * 8 + k*bits (<= 57, and 8 + 8*bits <= 64 for bits <= 7).  No shift is 0:
     * SIMDe's emulation of vpmultishiftqb shifts by 64 - shift. */
    for (int j = 0; j < 8; j++)
        for (int k = 0; k < 8; k++) {
            spread[8 * j + k] = (uint8_t)(k ? j * bits + k - 1 : 0);
            shifts[8 * j + k] = (uint8_t)(8 + k * bits);
        }
    u.spread = _mm512_loadu_si512(spread);
    u.shifts = _mm512_loadu_si512(shifts);
    u.low = _mm512_set1_epi8((char)((1 << bits) - 1));
    u.up = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi8(32), 1);
    return u;
}

/* The 64 indices of the unit at p (64 bytes, or 8*bits packed), +32 on the
 * upper half. */
static inline __m512i FN(q8_indices64)(const uint8_t *p, int bits,
                                       const QE_CAT(q8_unpacker, QE_SUFFIX) *u)
{
    if (bits >= 8) return _mm512_or_si512(_mm512_loadu_si512(p), u->up);
    __m512i v = _mm512_loadu_si512(p);
    v = _mm512_multishift_epi64_epi8(u->shifts, _mm512_permutexvar_epi8(u->spread, v));
    return _mm512_ternarylogic_epi32(v, u->low, u->up, 0xEA);   /* (v & low) | up */
}
#endif

/* Sum of looked-up bytes for every output of nb (<= QE_Q8_NB) inputs at once:
 * acc[n][co] = sum_m q_n[m][a[co][m]], q_n = q + n * qstride, acc rows
 * Cout_pad apart; the indices in the layout of qe_fc_q8_layout() (bits = 8)
 * or packed to `bits` bits (qe_fc_q8_pack).  Each index
 * block is read once for all nb inputs: the indices (a byte per weight
 * sub-vector, 9.4 MB for AlexNet's fc6) stream from memory once per batch of
 * nb inputs, not once per input.  The sums of each input are the same as with
 * nb = 1.  NB is a constant at every call (always inlined), so the loops over
 * inputs unroll and the sums stay in registers. */
static inline __attribute__((always_inline)) void
FN(fc_q8_lookup_nb)(const uint8_t *q, int64_t qstride, const int NB, int Mp, const uint8_t *idx,
                    int bits, int Cout_pad, int32_t *acc, int nthreads)
{
    const int ncb = Cout_pad / 32;
    for (int n = 0; n < NB; n++)
        for (int co = 0; co < Cout_pad; co++) acc[(int64_t)n * Cout_pad + co] = 0;
#if QE_SIMD == 3
    /* built once per call (not per block: its tables are 128 bytes written one
     * at a time), and the units' byte stride */
    const QE_CAT(q8_unpacker, QE_SUFFIX) un = FN(q8_unpacker_for)(bits);
    const int64_t ustep = bits >= 8 ? 64 : 8 * bits;
#endif
    /* One parallel region for all row blocks: each block's output blocks are
     * shared out by the same static schedule, so a thread adds to the same
     * outputs in every row block and needs no barrier between blocks (the
     * sums keep the row-block order: the same bits on any thread count). */
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    for (int m0 = 0; m0 < Mp; m0 += QE_Q8_MBLOCK) {
        const int mb = Mp - m0 < QE_Q8_MBLOCK ? Mp - m0 : QE_Q8_MBLOCK;
        const uint8_t *qb = q + (int64_t)m0 * 32;
        #pragma omp for schedule(static) nowait
        for (int c = 0; c < ncb; c++) {
            /* the block's first index, in bytes of the (packed) layout */
            const uint8_t *ib = idx + ((int64_t)Cout_pad * m0 + (int64_t)c * 32 * mb) * bits / 8;
#if QE_SIMD == 3
            /* 64 index bytes = rows mm, mm+1 of 32 outputs; the table rows
             * mm, mm+1 are the 64 bytes q[mm..mm+1][32] (vpermb: 6-bit index,
             * +32 on the upper half picks row mm+1).  Two such lookups (rows
             * mm..mm+3) interleaved bytewise pair rows mm and mm+2 (mm+1 and
             * mm+3) of one output; vpmaddubsw against ones adds each pair into
             * a 16-bit lane.  128-bit lane L of s0 holds outputs 0-7 (L = 0, 2)
             * or 16-23 (L = 1, 3) from the even (L < 2) or odd rows; s1 the
             * same for outputs 8-15 and 24-31.  Bound: <= 510 per step and
             * <= QE_Q8_MBLOCK/4 = 32 steps, 16320 < 32767. */
            const __m512i ones = _mm512_set1_epi8(1);
            const QE_CAT(q8_unpacker, QE_SUFFIX) u = un;   /* (a local copy: registers) */
            __m512i s0[QE_Q8_NB], s1[QE_Q8_NB];
            for (int n = 0; n < NB; n++) s0[n] = s1[n] = _mm512_setzero_si512();
            int mm = 0;
            for (; mm + 4 <= mb; mm += 4, ib += 2 * ustep) {
                /* the index stream (read once per batch: from L3 or memory) */
                _mm_prefetch((const char *)ib + QE_Q8_PREFETCH, _MM_HINT_T0);
                _mm_prefetch((const char *)ib + QE_Q8_PREFETCH + 64, _MM_HINT_T0);
                const __m512i ia = FN(q8_indices64)(ib, bits, &u);
                const __m512i ic = FN(q8_indices64)(ib + ustep, bits, &u);
                for (int n = 0; n < NB; n++) {
                    const uint8_t *r = qb + n * qstride + mm * 32;
                    const __m512i la = _mm512_permutexvar_epi8(ia, _mm512_loadu_si512(r));
                    const __m512i lc = _mm512_permutexvar_epi8(ic, _mm512_loadu_si512(r + 64));
                    s0[n] = _mm512_add_epi16(s0[n], _mm512_maddubs_epi16(_mm512_unpacklo_epi8(la, lc), ones));
                    s1[n] = _mm512_add_epi16(s1[n], _mm512_maddubs_epi16(_mm512_unpackhi_epi8(la, lc), ones));
                }
            }
            if (mm < mb) {   /* two rows left (Mp is even): pair them with zeros */
                const __m512i ia = FN(q8_indices64)(ib, bits, &u);
                for (int n = 0; n < NB; n++) {
                    const __m512i la = _mm512_permutexvar_epi8(
                        ia, _mm512_loadu_si512(qb + n * qstride + mm * 32));
                    const __m512i z = _mm512_setzero_si512();
                    s0[n] = _mm512_add_epi16(s0[n], _mm512_maddubs_epi16(_mm512_unpacklo_epi8(la, z), ones));
                    s1[n] = _mm512_add_epi16(s1[n], _mm512_maddubs_epi16(_mm512_unpackhi_epi8(la, z), ones));
                }
            }
            /* even rows' lanes + odd rows' lanes: 16 sums of two 16-bit lanes
             * (<= 2 x 16320 = 32640, still int16), outputs 0-7 and 16-23 from
             * s0, 8-15 and 24-31 from s1; widened and added to acc */
            for (int n = 0; n < NB; n++) {
                const __m256i t0 = _mm256_add_epi16(_mm512_castsi512_si256(s0[n]),
                                                    _mm512_extracti64x4_epi64(s0[n], 1));
                const __m256i t1 = _mm256_add_epi16(_mm512_castsi512_si256(s1[n]),
                                                    _mm512_extracti64x4_epi64(s1[n], 1));
                __m256i *out = (__m256i *)(acc + (int64_t)n * Cout_pad + c * 32);
                const __m256i w[4] = {_mm256_cvtepi16_epi32(_mm256_castsi256_si128(t0)),
                                      _mm256_cvtepi16_epi32(_mm256_castsi256_si128(t1)),
                                      _mm256_cvtepi16_epi32(_mm256_extracti128_si256(t0, 1)),
                                      _mm256_cvtepi16_epi32(_mm256_extracti128_si256(t1, 1))};
                for (int k = 0; k < 4; k++)
                    _mm256_storeu_si256(out + k, _mm256_add_epi32(_mm256_loadu_si256(out + k), w[k]));
            }
#else
            /* packed indices: unpacked into the byte layout first (these
             * bodies read them for tests and portability; fast mode packs
             * only where the instruction set unpacks in registers) */
            uint8_t unpacked[QE_Q8_MBLOCK * 32] __attribute__((aligned(64)));
            if (bits < 8) {
                for (int u = 0; u < mb / 2; u++)
                    FN(q8_unpack_unit)(ib + (int64_t)u * 8 * bits, bits, unpacked + 64 * u);
                ib = unpacked;
            }
#if defined(QE_IMPL_AVX2)
            const __m256i ones = _mm256_set1_epi8(1);
            __m256i s0[QE_Q8_NB], s1[QE_Q8_NB];
            for (int n = 0; n < NB; n++) s0[n] = s1[n] = _mm256_setzero_si256();
            for (int mm = 0; mm < mb; mm += 2) {
                _mm_prefetch((const char *)ib + mm * 32 + QE_Q8_PREFETCH, _MM_HINT_T0);
                const __m256i i0 = _mm256_loadu_si256((const __m256i *)(ib + mm * 32));
                const __m256i i1 = _mm256_loadu_si256((const __m256i *)(ib + mm * 32 + 32));
                /* index bit 4 picks the upper 16 entries (blend on each byte's top bit) */
                const __m256i b0 = _mm256_slli_epi16(i0, 3), b1 = _mm256_slli_epi16(i1, 3);
                for (int n = 0; n < NB; n++) {
                    const uint8_t *r0 = qb + n * qstride + mm * 32, *r1 = r0 + 32;
                    __m256i lo0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)r0));
                    __m256i hi0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(r0 + 16)));
                    __m256i lo1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)r1));
                    __m256i hi1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(r1 + 16)));
                    __m256i l0 = _mm256_blendv_epi8(_mm256_shuffle_epi8(lo0, i0),
                                                    _mm256_shuffle_epi8(hi0, i0), b0);
                    __m256i l1 = _mm256_blendv_epi8(_mm256_shuffle_epi8(lo1, i1),
                                                    _mm256_shuffle_epi8(hi1, i1), b1);
                    s0[n] = _mm256_add_epi16(s0[n], _mm256_maddubs_epi16(_mm256_unpacklo_epi8(l0, l1), ones));
                    s1[n] = _mm256_add_epi16(s1[n], _mm256_maddubs_epi16(_mm256_unpackhi_epi8(l0, l1), ones));
                }
            }
            for (int n = 0; n < NB; n++) {
                /* s0 holds outputs 0-7 (low lane) and 16-23; s1 holds 8-15 and 24-31 */
                __m256i a0 = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(s0[n]));
                __m256i a2 = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s0[n], 1));
                __m256i a1 = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(s1[n]));
                __m256i a3 = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s1[n], 1));
                __m256i *out = (__m256i *)(acc + (int64_t)n * Cout_pad + c * 32);
                _mm256_storeu_si256(out, _mm256_add_epi32(_mm256_loadu_si256(out), a0));
                _mm256_storeu_si256(out + 1, _mm256_add_epi32(_mm256_loadu_si256(out + 1), a1));
                _mm256_storeu_si256(out + 2, _mm256_add_epi32(_mm256_loadu_si256(out + 2), a2));
                _mm256_storeu_si256(out + 3, _mm256_add_epi32(_mm256_loadu_si256(out + 3), a3));
            }
#else
            for (int n = 0; n < NB; n++) {
                int32_t *ac = acc + (int64_t)n * Cout_pad + c * 32;
                for (int mm = 0; mm < mb; mm++) {
                    const uint8_t *row = qb + n * qstride + mm * 32, *ii = ib + mm * 32;
                    for (int l = 0; l < 32; l++) ac[l] += row[ii[l]];
                }
            }
#endif
#endif
        }
    }
}

static void FN(fc_q8_lookup)(const uint8_t *q, int64_t qstride, int nb, int Mp,
                             const uint8_t *idx, int bits, int Cout_pad, int32_t *acc,
                             int nthreads)
{
    if (nb >= 4)
        FN(fc_q8_lookup_nb)(q, qstride, 4, Mp, idx, bits, Cout_pad, acc, nthreads);
    else if (nb == 3)
        FN(fc_q8_lookup_nb)(q, qstride, 3, Mp, idx, bits, Cout_pad, acc, nthreads);
    else if (nb == 2)
        FN(fc_q8_lookup_nb)(q, qstride, 2, Mp, idx, bits, Cout_pad, acc, nthreads);
    else
        FN(fc_q8_lookup_nb)(q, qstride, 1, Mp, idx, bits, Cout_pad, acc, nthreads);
}

#undef FN

#define FN(name) QE_CAT(name, QE_SUFFIX)

/* Exact fully-connected lookup for K <= 32, in the index layout of
 * qe_fc_q8_layout(): acc[co] += sum_m T[m][a[co][m]] with float tables of Kp
 * (8, 16 or 32) entries per row.  The AVX2 body looks the table rows up
 * inside registers (vpermps picks among 8 floats by the low 3 index bits,
 * blends on bits 3 and 4 pick the register), 32 outputs at a time; both bodies
 * add in the same order, so their sums are bit-identical. */
static void FN(fc_f32_lookup)(const float *T, int Mp, int Kp, const uint8_t *idx, int Cout_pad,
                              float *acc, int nthreads)
{
    const int ncb = Cout_pad / 32;
    for (int co = 0; co < Cout_pad; co++) acc[co] = 0.f;
    /* one parallel region, a thread's output blocks the same in every row
     * block (as fc_q8_lookup_nb) */
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    for (int m0 = 0; m0 < Mp; m0 += QE_Q8_MBLOCK) {
        const int mb = Mp - m0 < QE_Q8_MBLOCK ? Mp - m0 : QE_Q8_MBLOCK;
        #pragma omp for schedule(static) nowait
        for (int c = 0; c < ncb; c++) {
            const uint8_t *ib = idx + (int64_t)Cout_pad * m0 + (int64_t)c * 32 * mb;
            float *ac = acc + c * 32;
#ifdef QE_IMPL_AVX2
            __m256 s[4];
            for (int g = 0; g < 4; g++) s[g] = _mm256_loadu_ps(ac + 8 * g);
            for (int mm = 0; mm < mb; mm++) {
                const float *tr = T + (int64_t)(m0 + mm) * Kp;
                const __m256 t0 = _mm256_loadu_ps(tr);
                const __m256 t1 = Kp > 8 ? _mm256_loadu_ps(tr + 8) : t0;
                const __m256 t2 = Kp > 16 ? _mm256_loadu_ps(tr + 16) : t0;
                const __m256 t3 = Kp > 16 ? _mm256_loadu_ps(tr + 24) : t0;
                for (int g = 0; g < 4; g++) {
                    __m256i i = _mm256_cvtepu8_epi32(
                        _mm_loadl_epi64((const __m128i *)(ib + mm * 32 + 8 * g)));
                    __m256 r = _mm256_permutevar8x32_ps(t0, i);
                    if (Kp > 8) {
                        __m256 b3 = _mm256_castsi256_ps(_mm256_slli_epi32(i, 28));
                        r = _mm256_blendv_ps(r, _mm256_permutevar8x32_ps(t1, i), b3);
                        if (Kp > 16) {
                            __m256 hi = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t2, i),
                                                         _mm256_permutevar8x32_ps(t3, i), b3);
                            r = _mm256_blendv_ps(r, hi,
                                                 _mm256_castsi256_ps(_mm256_slli_epi32(i, 27)));
                        }
                    }
                    s[g] = _mm256_add_ps(s[g], r);
                }
            }
            for (int g = 0; g < 4; g++) _mm256_storeu_ps(ac + 8 * g, s[g]);
#else
            for (int mm = 0; mm < mb; mm++) {
                const float *tr = T + (int64_t)(m0 + mm) * Kp;
                const uint8_t *ii = ib + mm * 32;
                for (int l = 0; l < 32; l++) ac[l] += tr[ii[l]];
            }
#endif
        }
    }
}

#undef FN
