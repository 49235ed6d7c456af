/* Portable build of the hot kernels: plain C, the reference every other
 * instruction set is tested against. */
#define QE_SUFFIX _generic
#define QE_SIMD 0
#include "qe_bodies.h"
