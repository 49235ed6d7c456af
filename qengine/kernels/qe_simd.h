/* The few vector operations the shared register-lookup bodies need, for the
 * instruction set being compiled (QE_SIMD 2: AVX2, 3: AVX-512 BW + VBMI).
 * A qv is one vector of QV_BYTES bytes, read as bytes or 16/32-bit lanes.
 *
 * qv_look<Kp>(t, idx): byte i of the result is t[idx[i]] for a table t of Kp
 * bytes held in registers (every idx[i] < Kp). */
#ifndef QE_SIMD_H_ONCE
#define QE_SIMD_H_ONCE

#if QE_SIMD == 3
typedef __m512i qv;
#define QV_BYTES 64
#define QE_CONV16_MAX_K 128
/* chosen by default: 64-byte vpermb/vpermi2b lookups, 32 registers (see README) */
#define QE_CONV16_AUTO_K 128
static inline qv qv_load(const void *p) { return _mm512_loadu_si512(p); }
static inline void qv_store(void *p, qv v) { _mm512_storeu_si512(p, v); }
static inline qv qv_zero(void) { return _mm512_setzero_si512(); }
static inline qv qv_add16(qv a, qv b) { return _mm512_add_epi16(a, b); }
static inline qv qv_sub16(qv a, qv b) { return _mm512_sub_epi16(a, b); }
static inline qv qv_srl16_8(qv a) { return _mm512_srli_epi16(a, 8); }
static inline qv qv_sll16_8(qv a) { return _mm512_slli_epi16(a, 8); }
static inline qv qv_sll32_8(qv a) { return _mm512_slli_epi32(a, 8); }
static inline qv qv_add32(qv a, qv b) { return _mm512_add_epi32(a, b); }
static inline qv qv_unpacklo16(qv a, qv b) { return _mm512_unpacklo_epi16(a, b); }
static inline qv qv_unpackhi16(qv a, qv b) { return _mm512_unpackhi_epi16(a, b); }
/* K <= 16: vpshufb on a table broadcast to the four 128-bit lanes */
static inline qv qv_look16(const uint8_t *t, qv idx)
{
    return _mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)t)), idx);
}
/* K <= 32: vpermb (6-bit indices) on a 32-byte table broadcast to both halves */
static inline qv qv_look32(const uint8_t *t, qv idx)
{
    return _mm512_permutexvar_epi8(idx,
                                   _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)t)));
}
/* K <= 64: vpermb */
static inline qv qv_look64(const uint8_t *t, qv idx)
{
    return _mm512_permutexvar_epi8(idx, _mm512_loadu_si512(t));
}
/* K <= 128: vpermi2b/vpermt2b selects from two registers by 7-bit indices */
static inline qv qv_look128(const uint8_t *t, qv idx)
{
    return _mm512_permutex2var_epi8(_mm512_loadu_si512(t), idx, _mm512_loadu_si512(t + 64));
}

#elif QE_SIMD == 2
typedef __m256i qv;
#define QV_BYTES 32
#define QE_CONV16_MAX_K 32
/* not chosen by default: on Zen 3 these layers measured 0.7-1.05x the float
 * rows (README, "Fast mode"); QENGINE_CONV16=1 selects them */
#define QE_CONV16_AUTO_K 0
static inline qv qv_load(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline void qv_store(void *p, qv v) { _mm256_storeu_si256((__m256i *)p, v); }
static inline qv qv_zero(void) { return _mm256_setzero_si256(); }
static inline qv qv_add16(qv a, qv b) { return _mm256_add_epi16(a, b); }
static inline qv qv_sub16(qv a, qv b) { return _mm256_sub_epi16(a, b); }
static inline qv qv_srl16_8(qv a) { return _mm256_srli_epi16(a, 8); }
static inline qv qv_sll16_8(qv a) { return _mm256_slli_epi16(a, 8); }
static inline qv qv_sll32_8(qv a) { return _mm256_slli_epi32(a, 8); }
static inline qv qv_add32(qv a, qv b) { return _mm256_add_epi32(a, b); }
static inline qv qv_unpacklo16(qv a, qv b) { return _mm256_unpacklo_epi16(a, b); }
static inline qv qv_unpackhi16(qv a, qv b) { return _mm256_unpackhi_epi16(a, b); }
/* K <= 16: vpshufb on a table broadcast to both 128-bit lanes */
static inline qv qv_look16(const uint8_t *t, qv idx)
{
    return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t)),
                               idx);
}
/* K <= 32: two vpshufb, index bit 4 (moved to the byte's top bit) picks one */
static inline qv qv_look32(const uint8_t *t, qv idx)
{
    return _mm256_blendv_epi8(qv_look16(t, idx), qv_look16(t + 16, idx), _mm256_slli_epi16(idx, 3));
}

#else
#define QE_CONV16_MAX_K 0 /* the portable body looks tables up in memory */
#define QE_CONV16_AUTO_K 0
#endif

#endif /* QE_SIMD_H_ONCE */
