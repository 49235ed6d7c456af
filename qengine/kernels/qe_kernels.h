/* qengine compute kernels: public C interface.
 *
 * Every function here runs without the Python GIL and touches only the
 * memory passed to it, so concurrent calls from several threads are safe as
 * long as each call has its own output and scratch buffers.
 *
 * The hot kernels are compiled several times (one body per instruction set,
 * see qe_impl.h) and chosen at run time by qe_set_isa().
 */
#ifndef QE_KERNELS_H
#define QE_KERNELS_H

#include <stdint.h>
#include <stddef.h>

#define QE_TILE 64 /* output positions per register tile; scratch planes are padded to it */
#define QE_DENSE_CO 6 /* output channels per register block of the dense convolution */
/* weights of the output-channel blocks that share one input panel (L2) */
#define QE_DENSE_W_BYTES (160 * 1024)

/* Instruction sets the hot kernels are compiled for (one isa_*.c file each).
 * QE_ISA_AVX512_EMULATED is the AVX-512 code compiled against SIMDe for the
 * baseline CPU: a test-only level, never picked unless asked for. */
enum { QE_ISA_GENERIC = 0, QE_ISA_AVX2 = 1, QE_ISA_AVX512 = 2, QE_ISA_AVX512_EMULATED = 3,
       QE_ISA_COUNT = 4 };

/* Geometry of one convolution group in the "phase plane" layout.
 *
 * The padded input (Hp x Wp) is split into S*S phase planes of Hq x Wq,
 * plane (a, b) holding xpad[i*S + a][j*S + b].  Output position (oh, ow) is
 * flattened to r = oh*Wq + ow; kernel tap (kh, kw) then reads plane
 * (kh%S, kw%S) at r + (kh/S)*Wq + kw/S, a contiguous run for a tile of r.
 * Columns ow >= OW of the flattened output are computed and discarded. */
typedef struct {
    int C, H, W;          /* input channels of one group, input height, width */
    int KH, KW, S, P;     /* kernel size, stride, padding */
    int OH, OW;           /* output size */
    int Hq, Wq, SS;       /* phase plane size, SS = S*S */
    int64_t R;            /* flattened output length OH*Wq */
    int64_t PS;           /* floats per plane, >= R rounded to QE_TILE + max shift */
} qe_conv_geom;

int qe_conv_geom_init(qe_conv_geom *g, int C, int H, int W, int KH, int KW, int S, int P);

/* Scratch sizes in floats. */
int64_t qe_phase_floats(const qe_conv_geom *g);                 /* SS*C*PS */
int64_t qe_lut_floats(const qe_conv_geom *g, int M, int K);     /* SS*M*K*PS */
int64_t qe_acc_floats(const qe_conv_geom *g, int Cout);         /* Cout*R rounded to QE_TILE */

/* Split one group's input x [C][H][W] into zero-padded phase planes xp [SS][C][PS]. */
void qe_phase_split(const qe_conv_geom *g, const float *x, float *xp);

/* Lookup-table convolution of one group.
 *   xp    phase planes from qe_phase_split
 *   cb    codebook [M][K][d]; subspace m covers channels [m*d, min(C, (m+1)*d))
 *   asmt  codeword indices [Cout][KH][KW][M]
 *   T     scratch of qe_lut_floats() floats (the lookup table)
 *   acc   scratch of qe_acc_floats() floats (partial sums)
 *   y     output [Cout][OH][OW], bias added, ReLU applied when relu != 0
 * Returns 0, or -1 when a small internal allocation fails. */
int qe_lut_conv(const qe_conv_geom *g, const float *xp, const float *cb, int M, int K, int d,
                const uint8_t *asmt, int Cout, const float *bias, float *T, float *acc,
                float *y, int relu, int nthreads);

/* Dense convolution of one group.  w is blocked by QE_DENSE_CO output
 * channels: [ceil(Cout/B)][C*KH*KW][B] (zeros past Cout); acc is scratch of
 * qe_acc_floats(g, ceil(Cout/B)*B) floats. */
int qe_dense_conv(const qe_conv_geom *g, const float *xp, const float *w, int Cout,
                  const float *bias, float *acc, float *y, int relu, int nthreads);

/* Fast mode: dense convolution of one group in 16-bit integers (qe_i16.h).
 *   w16, scale, A  from qe_i16_weights() (this group's block of w16 and scale)
 *   xp    phase planes from qe_phase_split; xq scratch of qe_phase_floats()
 *         int16 values (the planes quantised)
 *   y     output [Cout][OH][OW], bias added, ReLU applied when relu != 0
 * A non-finite input gives NaN outputs.  Returns 0, or -1 when a small
 * internal allocation fails. */
int qe_i16_conv(const qe_conv_geom *g, const float *xp, int16_t *xq, const int16_t *w16,
                const float *scale, int A, int Cout, const float *bias, float *y, int relu,
                int nthreads);
/* Lays dense weights w [groups*Cg][J] out for qe_i16_conv: out has
 * groups*ceil(Cg/QE_DENSE_CO)*J2*QE_DENSE_CO int16 (J2 = J rounded up to
 * even), scale groups*Cg floats.  Returns the layer's input bound A (>= 1),
 * or -1 if a channel cannot be laid out within the overflow bound. */
int qe_i16_weights(const float *w, int groups, int Cg, int64_t J, int16_t *out, float *scale);

/* Nanoseconds per round trip of one cache line between two threads of the
 * OpenMP team, bounced for about `seconds` (topology.c); -1 if two threads
 * could not run at once. */
double qe_core_round_trip_ns(double seconds);

/* Winograd forms, named by their "tile" code: 2 = F(2x2, 3x3), 4 = F(4x4,
 * 3x3), QE_WINO_F45 = F(4x4, 5x5).  m x m outputs per tile, r x r kernel
 * pieces, n = m + r - 1 (an n x n input patch, NXI = n^2 products per tile
 * and channel). */
#define QE_WINO_F45 45
static inline int qe_wino_m(int tile) { return tile == QE_WINO_F45 ? 4 : tile; }
static inline int qe_wino_r(int tile) { return tile == QE_WINO_F45 ? 5 : 3; }
static inline int qe_wino_n(int tile) { return qe_wino_m(tile) + qe_wino_r(tile) - 1; }

/* Fast mode: convolution of one group by Winograd's F(2x2, 3x3) (tile 2),
 * F(4x4, 3x3) (tile 4) or F(4x4, 5x5) (tile QE_WINO_F45) in 16-bit integers
 * (qe_wino.h); strides by space to depth, kernels larger than r x r in r x r
 * pieces (see qe_wino_weights).
 * x [C][H][W] (this group's channels), u, scale and A from qe_wino_weights()
 * of the same tile (this group's blocks), y [Cout][OH][OW] with
 * OH = (H + 2P - KH) / S + 1, bias added, ReLU'd when relu != 0; ws scratch
 * of qe_wino_ws_bytes() bytes, 64-byte aligned.  A non-finite input gives
 * NaN outputs. */
int64_t qe_wino_ws_bytes(int C, int H, int W, int KH, int KW, int S, int P, int Cout, int tile);
void qe_wino_conv(const float *x, int C, int H, int W, int KH, int KW, int S, int P,
                  const int16_t *u, const float *scale, int A, int Cout, const float *bias,
                  float *y, int relu, int nthreads, void *ws, int tile);
/* The bound on the rescaled transformed inputs of F(4x4, 3x3) and F(4x4,
 * 5x5), |Vq| <= VB. */
#define QE_WINO4_VB 8191
/* Lays w [groups*Cg][C][KH][KW] out for qe_wino_conv with stride S and tile
 * 2, 4 or QE_WINO_F45: out groups*ceil(Cg/32)*NXI*ceil(CV/2)*64 int16
 * (CV = C * S*S * ceil(KH'/r) * ceil(KW'/r), KH' = ceil(KH/S)), scale
 * groups*ceil(Cg/32)*NXI*32 floats.  Returns the input bound A (>= 1), -1 if
 * a row cannot be laid out within the overflow bound, -2 if out of memory. */
int qe_wino_weights(const float *w, int groups, int Cg, int C, int KH, int KW, int S, int tile,
                    int16_t *out, float *scale);
/* CV, the virtual channels of that form for C real ones. */
int qe_wino_virtual(int C, int KH, int KW, int S, int tile);

/* Floats of scratch qe_max_pool_channel needs: two padded rows, each long
 * enough for the last window (ceil rounding may run past the padding) and
 * for the vector column pass's reads (16 outputs at stride <= 2), plus slack. */
static inline int64_t qe_max_pool_scratch(int W, int OW, int KW, int SW, int PW)
{
    int64_t need = (int64_t)(OW - 1) * SW + KW, row = (int64_t)PW + W;
    return 2 * ((need > row ? need : row) + 32);   /* two rows, used in turn */
}

/* Max pooling of one channel xc [H][W] -> yc [OH][OW] (v: qe_max_pool_scratch
 * floats), by the chosen instruction set. */
void qe_max_pool_channel(const float *xc, float *yc, float *v, int H, int W, int OH, int OW,
                         int KH, int KW, int SH, int SW, int PH, int PW);

/* Subspaces per block in the fully-connected lookup (table rows of one block
 * fit in L1).  The kernel takes its indices blocked: for each block of
 * subspaces [m0, m1), the [Cout][m1 - m0] indices, blocks one after another. */
int qe_fc_block(int K);

/* The fully-connected kernels take their codebook transposed, cbt [M][d][K]
 * (cbt[m][c][k] = cb[m][k][c]), so that a table row is built in vectors. */
void qe_fc_codebook_t(const float *cb, int M, int K, int d, float *cbt);

/* Lookup-table fully-connected layer for one input vector x [Cin].
 *   cbt [M][d][K], asmt blocked as above, T scratch of M*K floats, y [Cout]. */
void qe_lut_fc(const float *x, int Cin, const float *cbt, int M, int K, int d,
               const uint8_t *asmt, int Cout, const float *bias, float *T, float *y,
               int relu, int nthreads);

/* Fast path: fully-connected lookup with 8-bit tables (K <= 32), see qe_q8.h,
 * for N inputs x [N][Cin] -> y [N][Cout], QE_Q8_NB of them per pass over the
 * indices.  Indices are re-laid by qe_fc_q8_layout() into
 * qe_fc_q8_pad_cout(Cout) * qe_fc_q8_pad_m(M) bytes.  Scratch: T (M*K floats),
 * q (QE_Q8_NB * Mp*32 bytes), acc (QE_Q8_NB * Cout_pad int32). */
#define QE_Q8_MBLOCK 128
#define QE_Q8_NB 4
int qe_fc_q8_pad_cout(int Cout);
int qe_fc_q8_pad_m(int M);
/* Lays out indices [Cout][M], given as a stream of `bits`-bit values (LSB
 * first; 8 = plain bytes) of nbytes bytes, for the register FC kernels.
 * Returns the largest index, or -1 if out of memory. */
int qe_fc_q8_layout(const uint8_t *src, int64_t nbytes, int bits, int Cout, int M,
                    uint8_t *out);
/* The layout packed to `bits` (1..7) bits per index, for qe_fc_q8: each unit
 * of 64 indices (n a multiple of 64) becomes 8*bits bytes, index 8j + k in
 * bits [k*bits, (k+1)*bits) of its j-th group of `bits` bytes (little-endian),
 * then QE_Q8_PACK_PAD zero bytes (the kernels load whole 64-byte vectors).
 * Returns 0, or -1 if an index needs more bits. */
#define QE_Q8_PACK_PAD 64
int qe_fc_q8_pack(const uint8_t *in, int64_t n, int bits, uint8_t *out);
/* 1 where the chosen instruction set unpacks such indices in registers (fast
 * mode then keeps them packed), 0 where fast mode keeps bytes. */
int qe_fc_q8_packs(void);
/* idxq: the layout (bits = 8) or its packed form (bits < 8). */
void qe_fc_q8(const float *x, int N, int Cin, const float *cbt, int M, int K, int d,
              const uint8_t *idxq, int bits, int Cout, const float *bias, float *T, uint8_t *q,
              int32_t *acc, float *lohi, float *y, int relu, int nthreads);

/* Exact fully-connected lookup for K <= 32 in the qe_fc_q8_layout() index
 * layout, looked up in registers.  Scratch: T (Mp * qe_fc_k_pad(K) floats),
 * acc (Cout_pad floats). */
int qe_fc_k_pad(int K);
void qe_fc_f32(const float *x, int Cin, const float *cbt, int M, int K, int d, const uint8_t *idxq,
               int Cout, const float *bias, float *T, float *acc, float *y, int relu, int nthreads);

/* Dense fully-connected layer: w [Cout][Cin]. */
/* Fast mode's pointwise convolution (1x1, stride 1, no padding) in float
 * (qe_pw.h): x [C][P] -> y [Cout][P], bias added, ReLU applied when relu
 * != 0; w laid out by qe_pw_weights.  Same bits on every instruction set. */
#define QE_PW_LB 8
void qe_pw_conv(const float *x, int64_t P, int C, const float *w, int Cout, const float *bias,
                float *y, int relu, int nthreads);
/* w [Cout][C] -> out [ceil(Cout/QE_PW_LB)][C][QE_PW_LB] (zeros past Cout). */
void qe_pw_weights(const float *w, int Cout, int C, float *out);

void qe_dense_fc(const float *x, int Cin, const float *w, int Cout, const float *bias,
                 float *y, int relu, int nthreads);

/* Local response normalisation across channels (Caffe ACROSS_CHANNELS):
 * y = x * (k + alpha/size * sum of x^2 over `size` neighbouring channels)^-beta.
 * x, y: [C][HW]; y may be x itself (in place) when size <= QE_LRN_MAX_IN_PLACE. */
#define QE_LRN_MAX_IN_PLACE 16
void qe_lrn(const float *x, float *y, int C, int64_t HW, int size, float alpha, float beta,
            float k, int nthreads);

/* Max (kind 0) or average pooling of x [C][H][W] into y [C][OH][OW] (OH, OW
 * computed by the caller, with ceil or floor rounding).  Average: kind 1 divides
 * by the window clipped to the padded input (Caffe, ONNX count_include_pad=1),
 * kind 2 by the window clipped to the input (ONNX's default, padding excluded). */
void qe_pool(const float *x, float *y, int C, int H, int W, int OH, int OW, int KH, int KW,
             int SH, int SW, int PH, int PW, int kind, int nthreads);

/* y = x > 0 ? x : slope * x over n floats (y may equal x). */
void qe_relu(const float *x, float *y, int64_t n, float slope);

/* Layers of residual and modern CNNs (tensor_ops.c).
 * qe_eltwise_sum: y = sum_i coeff[i] * xs[i] over n floats (coeff NULL: 1),
 *   then max(y, 0) when relu; y may be one of the inputs.
 * qe_affine: y[c] = scale[c] * x[c] + shift[c] (shift NULL: 0) on x [C][HW].
 * qe_clip: y = min(max(x, lo), hi).  qe_sigmoid: y = 1 / (1 + exp(-x)).
 * qe_strided_slice: y [OC][OH][OW] = x [C][H][W] at start + i * step per axis
 *   (indices checked by the caller).
 * qe_pad: x [C][H][W] padded by pads (before, after for C, H, W) with value. */
void qe_eltwise_sum(const float *const *xs, const float *coeff, int n_in, float *y, int64_t n,
                    int relu);
void qe_affine(const float *x, float *y, int C, int64_t HW, const float *scale,
               const float *shift, int relu);
void qe_clip(const float *x, float *y, int64_t n, float lo, float hi);
void qe_sigmoid(const float *x, float *y, int64_t n);
void qe_strided_slice(const float *x, int C, int H, int W, const int *start, const int *step,
                      float *y, int OC, int OH, int OW);
void qe_pad(const float *x, int C, int H, int W, const int *pads, float value, float *y);
/* Depthwise convolution (groups = C, `mult` outputs per input channel): x [C][H][W],
 * w [C*mult][KH][KW], y [C*mult][OH][OW] (OH, OW from stride S and pad P checked
 * by the caller), bias added, ReLU applied when relu != 0. */
void qe_depthwise_conv(const float *x, int C, int H, int W, const float *w, int mult, int KH,
                       int KW, int S, int P, const float *bias, int relu, float *y, int OH,
                       int OW, int nthreads);

/* Softmax over C channels for each of HW positions: x, y [C][HW]. */
void qe_softmax(const float *x, float *y, int C, int64_t HW);

/* Unpack n values of `bits` bits (1..8) from a bit stream.  msb_first = 0:
 * value i is bits [i*bits, (i+1)*bits) of the stream, bit t being bit t%8 of
 * byte t/8 (LSB first).  msb_first = 1: the original Quantized-CNN order,
 * most significant bit first.  The caller guarantees nbytes*8 >= n*bits.
 * Returns the largest value unpacked. */
int qe_unpack_bits(const uint8_t *src, int64_t nbytes, int bits, int msb_first, int64_t n,
                    uint8_t *dst);

/* Unpack n LSB-first values of `bits` bits (1..7) starting at bit bit0 of a
 * stream of nbytes bytes (the caller guarantees it holds them); returns the
 * largest value. */
int qe_unpack_row(const uint8_t *src, int64_t nbytes, int64_t bit0, int bits, int64_t n,
                  uint8_t *dst);

/* Bilinear resize with align-corners sampling of x [C][H][W] to y [C][OH][OW]:
 * output (i, j) samples input (i*(H-1)/(OH-1), j*(W-1)/(OW-1)).  Returns -1 if out
 * of memory. */
int qe_resize_bilinear_ac(const float *x, int C, int H, int W, float *y, int OH, int OW);

/* Decode a qdelta2d tensor (see docs/FORMAT.md): `planes` holds 4 planes of
 * outer*rows*cols bytes (byte b of every zigzag-coded value in plane b); the
 * values are second differences over the last two axes.  out = (float)(q * step).
 * Returns -1 if out of memory. */
int qe_qdelta_decode(const uint8_t *planes, int64_t outer, int64_t rows, int64_t cols,
                     double step, float *out);

/* Dense weights of a quantized layer: out[r][c][t] = cb[c/d][idx[r][t][c/d]][c%d]
 * for c < cin, with cb [M][K][d], idx [R][T][M], out [R][cin][T] (T = kernel
 * taps of a convolution, 1 for a fully-connected layer).  Returns -1 if an
 * index is >= K. */
int qe_dequantize(const float *cb, int M, int K, int d, const uint8_t *idx, int64_t R, int T,
                  int cin, float *out);

/* Dense convolution weights w [G*og][J] -> the dense kernel's layout
 * [G][ceil(og/B)][J][B], zero-padded to whole blocks of B outputs. */
void qe_block_conv_weights(const float *w, int G, int og, int64_t J, int B, float *out);

/* Indices a [Cout][M] -> the float FC kernel's layout: for each block of mb
 * subspaces, that block's [Cout][mb] indices (the last block may be narrower). */
void qe_block_fc_indices(const uint8_t *a, int Cout, int M, int mb, uint8_t *out);

/* nbytes of memory for a buffer (64-byte aligned or better), released with
 * qe_free(); large ones go on huge pages where the OS offers them.  NULL if
 * out of memory. */
void *qe_alloc(int64_t nbytes);
/* Frees a block of qe_alloc(nbytes); large ones may be kept for reuse. */
void qe_free(void *p, int64_t nbytes);

/* The largest of n bytes (0 when n = 0); 1 if all n floats are finite, else 0. */
int qe_max_u8(const uint8_t *p, int64_t n);
int qe_all_finite(const float *p, int64_t n);

/* Interleaved 8-bit pixels px [H][W][ch] (ch = 1 grey or 3 RGB) -> planar
 * floats out [C][H][W].  order 0: BGR, 1: RGB (C = 3; grey input repeated),
 * 2: grey (C = 1; RGB converted with round-half-even(0.299 R + 0.587 G + 0.114 B)). */
void qe_pixels_to_planar(const uint8_t *px, int H, int W, int ch, int order, float *out);

/* out[c][i][j] = (x[c][y0+i][x0+j] - mean[c][my0+i][mx0+j]) (* scale if apply_scale)
 * for out [C][h][w], x [C][H][W], mean [C][MH][MW] or NULL.  The caller checks
 * that every window lies inside its array. */
void qe_crop_mean_scale(const float *x, int C, int H, int W, int y0, int x0, const float *mean,
                        int MH, int MW, int my0, int mx0, float scale, int apply_scale,
                        int h, int w, float *out);

/* qe_resize_bilinear_ac of the planes qe_pixels_to_planar would make from px
 * [H][W][ch] (channel order `order`), into y [C][OH][OW], without making them:
 * only two converted input rows are held at a time.  Returns -1 if out of memory. */
int qe_resize_pixels_ac(const uint8_t *px, int H, int W, int ch, int order, float *y, int C,
                        int OH, int OW);

/* Fast convolution with 16-bit tables looked up inside registers (see
 * qe_conv16.h).  Per call: the tables' inner products (as qe_lut_conv's), one
 * scale per call s = (largest table range) / 65535 and one offset per table
 * (its smallest entry) give entries q = round((T - offset) / s) in 0..65535,
 * built straight into the lookup layout (no float table in memory);
 * each output is s * (sum of its looked-up q) + (sum of its taps' offsets,
 * the same for every channel) + bias.  Integer sums are exact, so every
 * instruction set gives the same result from the same tables.
 *   aT    indices laid out by qe_conv16_layout() for the group
 *   ws    qe_conv16_bytes() bytes of scratch, 64-byte aligned
 * Returns 0, -1 when a small internal allocation fails, -2 when the layer
 * has more than QE_C16_MAX_TAPS taps or K > 128 (run the float kernel). */
#define QE_C16_MAX_TAPS 32767
int qe_conv16_kp(int K);                /* table bytes per plane: 16, 32, 64, 128; -1 */
int qe_conv16_cop(int Cout);            /* Cout rounded up to 64 */
int qe_conv16_max_k(void);              /* largest K the current ISA looks up in registers */
int qe_conv16_auto_k(void);             /* largest K fast mode uses them for by default */
int64_t qe_conv16_bytes(const qe_conv_geom *g, int M, int K, int d, int Cout);
/* asmt [Cout][KH][KW][M] -> out [KH*KW*M][qe_conv16_cop(Cout)] (zeros past Cout). */
void qe_conv16_layout(const uint8_t *asmt, int Cout, int J, uint8_t *out);
/* K <= 16 on instruction sets with qe_conv16_quad(): four taps per register,
 * indices laid out by qe_conv16_layout4() into (KH*KW*M rounded up to 4) x
 * qe_conv16_cop(Cout) bytes, and quad = 1 in qe_conv16. */
int qe_conv16_quad(void);
void qe_conv16_layout4(const uint8_t *asmt, int Cout, int J, uint8_t *out);
void qe_conv16_lookup4(const uint8_t *Q, const int64_t *tb, int J4, const uint8_t *aQ, int Cop,
                       int64_t R, int32_t *acc, int nthreads);
int qe_conv16(const qe_conv_geom *g, const float *xp, const float *cb, int M, int K, int d,
              const uint8_t *aT, int quad, int Cout, const float *bias, void *ws, float *y,
              int relu, int nthreads);
/* The lookup stage alone, for tests: acc [R][Cop] int32 (R a multiple of 4). */
void qe_conv16_lookup(const uint8_t *Q, int Kp, const int64_t *tb, int J, const uint8_t *aT,
                      int Cop, int64_t R, int32_t *acc, int nthreads);
int qe_conv16_slot(int c);              /* acc slot of channel c within its 64-block */

/* Instruction-set dispatch. */
const char *qe_isa_name(int isa); /* "generic", "avx2", "avx512", "avx512-emulated"; NULL */
int qe_isa_built(int isa);        /* compiled into this build */
int qe_isa_supported(int isa);    /* built and runnable on this CPU */
int qe_set_isa(int isa);          /* returns 0, or -1 if not supported here */
int qe_best_isa(void);            /* the highest supported native level */
int qe_get_isa(void);

#endif
