/* The hot kernels one instruction set provides.
 *
 * Each isa_*.c file sets its compilation target, then includes
 * qe_bodies.h, which compiles the shared kernel bodies (qe_impl.h, qe_q8.h,
 * qe_conv16.h) for that target and defines one qe_kernel_table named
 * qe_kernels<QE_SUFFIX>.  qe_dispatch.c picks a table at run time. */
#ifndef QE_ISA_H
#define QE_ISA_H

#include <stdint.h>
#include "qe_kernels.h"

typedef struct {
    void (*lut_build)(const qe_conv_geom *, const float *, const float *, int, int, int, float *,
                      const int32_t *, int, int);
    void (*lut_lookup)(const qe_conv_geom *, const float *, const int64_t *, int, int,
                       const int64_t *, const int32_t *, int, int, int, int, float *, int);
    void (*scatter_rows)(const qe_conv_geom *, const float *, int, const float *, int, float *, int);
    int (*dense_conv)(const qe_conv_geom *, const float *, const int64_t *, int, const float *,
                      int, float *, float *, int, const float *, int, int, int);
    void (*depthwise_conv)(const float *, int, int, int, const float *, int, int, int, int, int,
                           const float *, int, float *, int, int, int);
    void (*fc_table)(const float *, int, const float *, int, int, int, float *, int);
    void (*lut_fc)(const float *, int, const float *, int, int, int, const uint8_t *, int,
                   const float *, float *, float *, int, int);
    void (*dense_fc)(const float *, int, const float *, int, const float *, float *, int, int);
    void (*max_pool_channel)(const float *, float *, float *, int, int, int, int, int, int, int,
                             int, int, int);
    void (*lrn)(const float *, float *, int, int64_t, int, float, float, float, int64_t,
                int64_t);
    void (*fc_q8_rows)(const float *, int, const float *, int, int, int, int, float *, float *,
                       float *);
    void (*fc_q8_quant)(const float *, int, int, int, const float *, float, uint8_t *);
    void (*fc_q8_lookup)(const uint8_t *, int64_t, int, int, const uint8_t *, int, int, int32_t *,
                         int);
    void (*fc_f32_lookup)(const float *, int, int, const uint8_t *, int, float *, int);
    /* the fast convolution's quantised tables and register lookups (qe_conv16.h) */
    float (*conv16_build)(const qe_conv_geom *, const float *, const float *, int, int, int,
                          float *, float, uint8_t *, int, int);
    void (*conv16_lookup)(const uint8_t *, int, const int64_t *, int, const uint8_t *, int, int,
                          int64_t, int32_t *, int);
    void (*conv16_lookup4)(const uint8_t *, const int64_t *, int, const uint8_t *, int, int64_t,
                           int32_t *, int);
    /* fast mode's int16 dense convolution (qe_i16.h) */
    float (*i16_maxabs)(const float *, int64_t);
    void (*i16_quantize)(const float *, int64_t, float, int, int16_t *);
    int (*i16_conv)(const qe_conv_geom *, const int16_t *, const int64_t *, int, const int16_t *,
                    int, const float *, const float *, float *, int, int, int, int64_t);
    /* fast mode's pointwise convolution in float (qe_pw.h) */
    void (*pw_conv)(const float *, int64_t, int, const float *, int, const float *, float *, int,
                    int);
    /* fast mode's Winograd convolutions in int16 (qe_wino.h) */
    void (*wino_pack)(const int16_t *, int, int, int, int, int, int16_t *, int, int, int,
                      int64_t, int, int);
    void (*wino_input)(const int16_t *, int, int, int, int, int64_t, int64_t, int16_t *);
    void (*wino4_input)(const int16_t *, int, int, int, int, int64_t, int64_t, const float *,
                        int32_t *, int16_t *);
    void (*wino8_input)(const int16_t *, int, int, int, int, int64_t, int64_t, const float *,
                        int32_t *, int16_t *);
    void (*wino_conv)(const int16_t *, int, int, int, int, const int16_t *, int, const float *,
                      const float *, float *, int, int, int, int, int, int);
    int conv16_max_k; /* largest K its conv16_lookup looks up inside registers (0: none) */
    int conv16_auto_k; /* largest K for which fast mode picks it over float rows by default */
    int conv16_quad;   /* 1: K <= 16 runs four taps per register (conv16_lookup4) */
    int fc_q8_packs;   /* 1: fast mode keeps FC indices bit-packed (unpacked in registers) */
} qe_kernel_table;

extern const qe_kernel_table qe_kernels_generic;
extern const qe_kernel_table qe_kernels_avx2;
extern const qe_kernel_table qe_kernels_avx512;
extern const qe_kernel_table qe_kernels_avx512_emulated;

#endif
