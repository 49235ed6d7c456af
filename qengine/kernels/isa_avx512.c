/* AVX-512 build of the hot kernels: F, BW, VL, VBMI (vpermb, vpermi2b) and
 * VNNI (Zen 4, Ice Lake and later). */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vnni,avx2,fma")
#include <immintrin.h>
#define QE_SUFFIX _avx512
#define QE_SIMD 3
#include "qe_bodies.h"
#endif
