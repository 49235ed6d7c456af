/* The shared kernel bodies, compiled for the target the including isa_*.c
 * file has set.  It defines QE_SUFFIX (the name suffix of this build) and
 * QE_SIMD: 0 portable C (GCC vector extensions lowered to the baseline),
 * 2 AVX2 + FMA intrinsics, 3 AVX-512 BW/VBMI intrinsics (natively, or
 * emulated by SIMDe for testing on CPUs without them). */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "qe_isa.h"

/* How many tiles ahead the float lookup prefetches table rows. */
#ifndef QE_PREFETCH_TILES
#define QE_PREFETCH_TILES 2
#endif

#if QE_SIMD >= 2
#define QE_IMPL_AVX2 1
#endif

#include "qe_impl.h"
#include "qe_q8.h"
#include "qe_simd.h"
#include "qe_conv16.h"
#include "qe_i16.h"
#include "qe_pw.h"
#include "qe_wino.h"

#define QE_TABLE_NAME QE_CAT(qe_kernels, QE_SUFFIX)
const qe_kernel_table QE_TABLE_NAME = {
    QE_CAT(lut_build, QE_SUFFIX), QE_CAT(lut_lookup, QE_SUFFIX),
    QE_CAT(scatter_rows, QE_SUFFIX), QE_CAT(dense_conv, QE_SUFFIX),
    QE_CAT(depthwise_conv, QE_SUFFIX), QE_CAT(fc_table, QE_SUFFIX),
    QE_CAT(lut_fc, QE_SUFFIX), QE_CAT(dense_fc, QE_SUFFIX),
    QE_CAT(max_pool_channel, QE_SUFFIX), QE_CAT(lrn, QE_SUFFIX),
    QE_CAT(fc_q8_rows, QE_SUFFIX), QE_CAT(fc_q8_quant, QE_SUFFIX),
    QE_CAT(fc_q8_lookup, QE_SUFFIX), QE_CAT(fc_f32_lookup, QE_SUFFIX),
    QE_CAT(conv16_build, QE_SUFFIX), QE_CAT(conv16_lookup, QE_SUFFIX),
    QE_CAT(conv16_lookup4, QE_SUFFIX), QE_CAT(i16_maxabs, QE_SUFFIX),
    QE_CAT(i16_quantize, QE_SUFFIX), QE_CAT(i16_conv, QE_SUFFIX), QE_CAT(pw_conv, QE_SUFFIX),
    QE_CAT(wino_pack, QE_SUFFIX), QE_CAT(wino_input, QE_SUFFIX), QE_CAT(wino4_input, QE_SUFFIX),
    QE_CAT(wino8_input, QE_SUFFIX), QE_CAT(wino_conv, QE_SUFFIX),
    QE_CONV16_MAX_K, QE_CONV16_AUTO_K,
    QE_SIMD == 3,   /* conv16_quad */
    QE_SIMD == 3,   /* fc_q8_packs */
};
