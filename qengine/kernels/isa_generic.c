/* Portable build of the hot kernels: plain C, the reference every other
 * instruction set is tested against. */
/* The 8-float vector type is passed between static inline helpers only: the
 * ABI note GCC gives for vector returns without AVX does not apply. */
#pragma GCC diagnostic ignored "-Wpsabi"
#define QE_SUFFIX _generic
#define QE_SIMD 0
#include "qe_bodies.h"
