/* The AVX-512 bodies once more, compiled for the baseline CPU against SIMDe
 * (Debian libsimde-dev), which implements every intrinsic they use with
 * AVX2 ones (x86) or portable code.  A test-only instruction set ("avx512-emulated"): it lets
 * machines without AVX-512 build and check the AVX-512 code bit for bit
 * against the portable path.  Built only when setup.py finds SIMDe. */
#ifdef QE_HAVE_SIMDE
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
/* SIMDe then builds each 512-bit operation from AVX2 ones: tests run ~5x faster */
#pragma GCC target("avx2,fma")
#endif
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#define QE_SUFFIX _avx512_emulated
#define QE_SIMD_EMULATED 1
#define QE_SIMD 3
#include "qe_bodies.h"
#endif
