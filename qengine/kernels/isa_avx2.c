/* AVX2 + FMA build of the hot kernels (Zen 2/3, Haswell and later). */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC target("avx2,fma")
#include <immintrin.h>
#define QE_SUFFIX _avx2
#define QE_SIMD 2
#include "qe_bodies.h"
#endif
