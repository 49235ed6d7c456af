# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Thin Cython wrappers over the C kernels in qengine/kernels/.

Each wrapper checks shapes, then calls the C kernel with the GIL released.
Scratch memory (`ws`) is passed in by the caller so that a Model can keep one
workspace per thread and reuse it across calls.
"""
from cpython.buffer cimport (PyBUF_ANY_CONTIGUOUS, PyBUF_C_CONTIGUOUS, PyBUF_FORMAT,
                              PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer)
from libc.stdint cimport uint8_t, int16_t, int32_t, int64_t, uintptr_t
from libc.math cimport fmaf, isnan
from libc.stdlib cimport free
from libc.string cimport memcpy
from cython.parallel cimport prange

cdef extern from "kernels/qe_kernels.h" nogil:
    int QE_TILE
    int QE_DENSE_CO
    int QE_ISA_COUNT
    int QE_C16_MAX_TAPS
    ctypedef struct qe_conv_geom:
        int C, H, W, KH, KW, S, P, OH, OW, Hq, Wq, SS
        int64_t R, PS
    int qe_conv_geom_init(qe_conv_geom *g, int C, int H, int W, int KH, int KW, int S, int P)
    int64_t qe_phase_floats(const qe_conv_geom *g)
    int64_t qe_lut_floats(const qe_conv_geom *g, int M, int K)
    int64_t qe_acc_floats(const qe_conv_geom *g, int Cout)
    void qe_phase_split(const qe_conv_geom *g, const float *x, float *xp)
    int qe_lut_conv(const qe_conv_geom *g, const float *xp, const float *cb, int M, int K, int d,
                    const uint8_t *asmt, int Cout, const float *bias, float *T, float *acc,
                    float *y, int relu, int nthreads)
    int qe_dense_conv(const qe_conv_geom *g, const float *xp, const float *w, int Cout,
                      const float *bias, float *acc, float *y, int relu, int nthreads)
    int qe_fc_block(int K)
    int qe_i16_conv(const qe_conv_geom *g, const float *xp, int16_t *xq, const int16_t *w16,
                    const float *scale, int A, int Cout, const float *bias, float *y, int relu,
                    int nthreads)
    int qe_i16_weights(const float *w, int groups, int Cg, int64_t J, int16_t *out, float *scale)
    int QE_PW_LB
    void qe_pw_conv(const float *x, int64_t P, int C, const float *w, int Cout, const float *bias,
                    float *y, int relu, int nthreads)
    void qe_pw_weights(const float *w, int Cout, int C, float *out)
    int64_t qe_wino_ws_bytes(int C, int H, int W, int KH, int KW, int S, int P, int Cout,
                             int tile)
    void qe_wino_conv(const float *x, int C, int H, int W, int KH, int KW, int S, int P,
                      const int16_t *u, const float *scale, int A, int Cout, const float *bias,
                      float *y, int relu, int nthreads, void *ws, int tile)
    int qe_wino_weights(const float *w, int groups, int Cg, int C, int KH, int KW, int S, int tile,
                        int16_t *out, float *scale)
    int qe_wino_virtual(int C, int KH, int KW, int S, int tile)
    int qe_wino_m(int tile)
    int qe_wino_r(int tile)
    int qe_wino_n(int tile)
    int QE_WINO_F45
    int qe_fc_q8_pad_cout(int Cout)
    double qe_core_round_trip_ns(double seconds) nogil
    int qe_fc_q8_pad_m(int M)
    int qe_fc_q8_layout(const uint8_t *src, int64_t nbytes, int bits, int Cout, int M,
                        uint8_t *out)
    int qe_fc_k_pad(int K)
    void qe_fc_codebook_t(const float *cb, int M, int K, int d, float *cbt)
    void qe_fc_f32(const float *x, int Cin, const float *cbt, int M, int K, int d,
                   const uint8_t *idxq, int Cout, const float *bias, float *T, float *acc,
                   float *y, int relu, int nthreads)
    int qe_fc_q8_pack(const uint8_t *inp, int64_t n, int bits, uint8_t *out)
    int qe_fc_q8_packs()
    void qe_fc_q8(const float *x, int N, int Cin, const float *cbt, int M, int K, int d,
                  const uint8_t *idxq, int bits, int Cout, const float *bias, float *T, uint8_t *q,
                  int32_t *acc, float *lohi, float *y, int relu, int nthreads)
    enum: QE_Q8_NB
    enum: QE_Q8_PACK_PAD
    void qe_lut_fc(const float *x, int Cin, const float *cbt, int M, int K, int d,
                   const uint8_t *asmt, int Cout, const float *bias, float *T, float *y,
                   int relu, int nthreads)
    void qe_dense_fc(const float *x, int Cin, const float *w, int Cout, const float *bias,
                     float *y, int relu, int nthreads)
    int QE_LRN_MAX_IN_PLACE
    void qe_lrn(const float *x, float *y, int C, int64_t HW, int size, float alpha, float beta,
                float k, int nthreads)
    void qe_pool(const float *x, float *y, int C, int H, int W, int OH, int OW, int KH, int KW,
                 int SH, int SW, int PH, int PW, int kind, int nthreads)
    void qe_relu(const float *x, float *y, int64_t n, float slope)
    void qe_softmax(const float *x, float *y, int C, int64_t HW)
    void qe_eltwise_sum(const float *const *xs, const float *coeff, int n_in, float *y,
                        int64_t n, int relu)
    void qe_affine(const float *x, float *y, int C, int64_t HW, const float *scale,
                   const float *shift, int relu)
    void qe_clip(const float *x, float *y, int64_t n, float lo, float hi)
    void qe_sigmoid(const float *x, float *y, int64_t n)
    void qe_strided_slice(const float *x, int C, int H, int W, const int *start, const int *step,
                          float *y, int OC, int OH, int OW)
    void qe_pad(const float *x, int C, int H, int W, const int *pads, float value, float *y)
    void qe_depthwise_conv(const float *x, int C, int H, int W, const float *w, int mult, int KH,
                           int KW, int S, int P, const float *bias, int relu, float *y, int OH,
                           int OW, int nthreads)
    int qe_unpack_bits(const uint8_t *src, int64_t nbytes, int bits, int msb_first, int64_t n,
                       uint8_t *dst)
    int qe_resize_bilinear_ac(const float *x, int C, int H, int W, float *y, int OH, int OW)
    int qe_qdelta_decode(const uint8_t *planes, int64_t outer, int64_t rows, int64_t cols,
                         double step, float *out)
    int qe_dequantize(const float *cb, int M, int K, int d, const uint8_t *idx, int64_t R, int T,
                      int cin, float *out)
    void qe_block_conv_weights(const float *w, int G, int og, int64_t J, int B, float *out)
    void qe_block_fc_indices(const uint8_t *a, int Cout, int M, int mb, uint8_t *out)
    int qe_max_u8(const uint8_t *p, int64_t n)
    void *qe_alloc(int64_t nbytes)
    void qe_free(void *p, int64_t nbytes)
    int qe_all_finite(const float *p, int64_t n)
    void qe_pixels_to_planar(const uint8_t *px, int H, int W, int ch, int order, float *out)
    int qe_resize_pixels_ac(const uint8_t *px, int H, int W, int ch, int order, float *y, int C,
                            int OH, int OW)
    void qe_crop_mean_scale(const float *x, int C, int H, int W, int y0, int x0,
                            const float *mean, int MH, int MW, int my0, int mx0, float scale,
                            int apply_scale, int h, int w, float *out)
    int qe_conv16_kp(int K)
    int qe_conv16_cop(int Cout)
    int qe_conv16_max_k()
    int qe_conv16_auto_k()
    int64_t qe_conv16_bytes(const qe_conv_geom *g, int M, int K, int d, int Cout)
    void qe_conv16_layout(const uint8_t *asmt, int Cout, int J, uint8_t *out)
    int qe_conv16(const qe_conv_geom *g, const float *xp, const float *cb, int M, int K, int d,
                  const uint8_t *aT, int quad, int Cout, const float *bias, void *ws, float *y,
                  int relu, int nthreads)
    int qe_conv16_quad()
    void qe_conv16_layout4(const uint8_t *asmt, int Cout, int J, uint8_t *out)
    void qe_conv16_lookup4(const uint8_t *Q, const int64_t *tb, int J4, const uint8_t *aQ,
                           int Cop, int64_t R, int32_t *acc, int nthreads)
    void qe_conv16_lookup(const uint8_t *Q, int Kp, const int64_t *tb, int J, const uint8_t *aT,
                          int Cop, int64_t R, int32_t *acc, int nthreads)
    int qe_conv16_slot(int c)
    const char *qe_isa_name(int isa)
    int qe_isa_built(int isa)
    int qe_isa_supported(int isa)
    int qe_set_isa(int isa)
    int qe_best_isa()
    int qe_get_isa()

C16_MAX_TAPS = QE_C16_MAX_TAPS

# Every instruction set qe_dispatch.c knows, in its order (some may not be built here).
ISA_NAMES = tuple(qe_isa_name(i).decode() for i in range(QE_ISA_COUNT))


cdef class _Buffer:
    """A block of memory from qe_alloc with a shape: the runtime's activations
    and scratch (memoryview(_Buffer) is C-contiguous).  Lighter than
    cython.view.array: a layer's output costs one malloc and no format parsing."""
    cdef void *data
    cdef Py_ssize_t shape[8]
    cdef Py_ssize_t strides[8]
    cdef int ndim
    cdef Py_ssize_t itemsize, nbytes
    cdef bytes fmt

    def __dealloc__(self):
        qe_free(self.data, self.nbytes)

    def __getbuffer__(self, Py_buffer *view, int flags):
        view.buf = self.data
        view.obj = self
        view.len = self.nbytes
        view.readonly = 0
        view.itemsize = self.itemsize
        view.format = self.fmt
        view.ndim = self.ndim
        view.shape = self.shape
        view.strides = self.strides
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer *view):
        pass


def empty_buffer(tuple shape, str fmt):
    """A new uninitialised C-contiguous buffer ("f" float32, "i" int32, "h" int16,
    "B" uint8)."""
    cdef _Buffer b = _Buffer.__new__(_Buffer)
    cdef Py_ssize_t item = 1 if fmt == "B" else 2 if fmt == "h" else 4
    cdef int k, nd = len(shape)
    if nd < 1 or nd > 8 or fmt not in ("f", "i", "h", "B"):
        raise ValueError(f"cannot make a buffer of shape {shape} and format {fmt!r}")
    cdef int64_t n = item
    for k in range(nd):
        if shape[k] < 0:
            raise ValueError(f"negative dimension in {shape}")
        b.shape[k] = shape[k]
        n *= <int64_t>shape[k]
    cdef Py_ssize_t st = item
    for k in range(nd - 1, -1, -1):
        b.strides[k] = st
        st *= b.shape[k]
    b.ndim = nd
    b.itemsize = item
    b.nbytes = n
    b.fmt = fmt.encode()
    b.data = qe_alloc(n)
    if b.data == NULL:
        raise MemoryError(f"cannot allocate {n} bytes")
    return memoryview(b)


cdef class _FloatView:
    """The float32 values of any C-contiguous buffer, whatever its shape."""
    cdef Py_buffer view
    cdef bint held

    def __cinit__(self, obj, bint writable):
        cdef int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (PyBUF_WRITABLE if writable else 0)
        PyObject_GetBuffer(obj, &self.view, flags)
        self.held = True
        fmt = self.view.format
        if self.view.itemsize != 4 or fmt.lstrip(b"@=<") != b"f":
            PyBuffer_Release(&self.view)
            self.held = False
            raise ValueError("expected a float32 buffer")

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)

    cdef float *ptr(self) noexcept nogil:
        return <float *>self.view.buf

    cdef int64_t n(self) noexcept nogil:
        return self.view.len // 4

    cdef int64_t dim(self, int k) noexcept nogil:
        return self.view.shape[k] if k < self.view.ndim else 1


def isa_built(str name):
    """True when the kernels for `name` were compiled into this build."""
    return name in ISA_NAMES and bool(qe_isa_built(ISA_NAMES.index(name)))


def isa_supported(str name):
    """True when this build has the kernels for `name` and this CPU can run them."""
    if name not in ISA_NAMES:
        return False
    return bool(qe_isa_supported(ISA_NAMES.index(name)))


def best_isa():
    """The instruction set chosen when none is forced: the highest native one."""
    return ISA_NAMES[qe_best_isa()]


def set_isa(str name):
    """Force the kernels of one instruction set (see ISA_NAMES)."""
    if name not in ISA_NAMES:
        raise ValueError(f"unknown instruction set {name!r}; known: {', '.join(ISA_NAMES)}")
    i = ISA_NAMES.index(name)
    if not qe_isa_built(i):
        raise ValueError(f"instruction set {name!r} is not built into this qengine"
                         + (" (install SIMDe, Debian libsimde-dev, and rebuild)"
                            if name == "avx512-emulated" else ""))
    if qe_set_isa(i) != 0:
        raise ValueError(f"instruction set {name!r} is not supported by this CPU")


def get_isa():
    """Name of the instruction set the kernels use now."""
    return ISA_NAMES[qe_get_isa()]


INT_MAX = 2 ** 31 - 1


def check_int_range(where, **products):
    """The C kernels index within one layer with 32-bit ints: refuse any size
    (computed here in Python integers, which do not overflow) beyond that."""
    for name, v in products.items():
        if v > INT_MAX:
            raise ValueError(f"{where}: {name} = {v} exceeds the kernels' 32-bit range")


def geometry_py(H, W, KH, KW, S, P):
    """(OH, OW, R, PS) of qe_conv_geom_init, computed in Python integers: output
    size, positions of the flattened phase-plane rows, floats per phase plane."""
    Hp, Wp = H + 2 * P, W + 2 * P
    OH, OW = (Hp - KH) // S + 1, (Wp - KW) // S + 1
    Hq, Wq = -(-Hp // S), -(-Wp // S)
    R = OH * Wq
    need = max(-(-R // QE_TILE) * QE_TILE + (KH - 1) // S * Wq + (KW - 1) // S, Hq * Wq)
    return OH, OW, R, -(-need // 16) * 16


cdef int _geom(qe_conv_geom *g, int C, int H, int W, int KH, int KW, int S, int P) except -1:
    cdef object c = C, h = H, w = W, kh = KH, kw = KW, s = S, p = P   # Python integers
    check_int_range("convolution", C_KH_KW=c * kh * kw, S_S_C=s * s * c,
                    padded_plane=(h + 2 * p) * (w + 2 * p))
    if qe_conv_geom_init(g, C, H, W, KH, KW, S, P) == 0:
        # the C geometry checked against the same rule in Python integers
        if (g.OH, g.OW, g.R, g.PS) != geometry_py(H, W, KH, KW, S, P):
            raise ValueError(f"convolution geometry mismatch for H={H} W={W} "
                             f"kernel={KH}x{KW} stride={S} pad={P}")
    if qe_conv_geom_init(g, C, H, W, KH, KW, S, P) != 0:
        raise ValueError(f"invalid convolution geometry C={C} H={H} W={W} kernel={KH}x{KW} "
                         f"stride={S} pad={P}")
    return 0


cdef int _group_geom(qe_conv_geom *g, int C, int Cout, int groups, int H, int W, int KH, int KW,
                     int S, int P) except -1:
    """The geometry of one group of a grouped convolution, once `groups` divides
    both channel counts."""
    if groups <= 0 or C % groups or Cout % groups:
        raise ValueError(f"groups={groups} does not divide C={C} and Cout={Cout}")
    _geom(g, C // groups, H, W, KH, KW, S, P)
    return 0


cdef int _check_out(const qe_conv_geom *g, int N, int Cout, int c0,
                    float[:, :, :, ::1] out) except -1:
    """out holds N images' channels c0 .. c0+Cout of the convolution's output."""
    if out.shape[0] != N or c0 < 0 or out.shape[1] < c0 + Cout or out.shape[2] != g.OH \
            or out.shape[3] != g.OW:
        raise ValueError("bias or output shape does not match the convolution")
    return 0


cdef int64_t _i16_ws(int64_t nxp):
    """Scratch floats of the int16 convolution: the float phase planes, their int16
    copy, and room to align it to 64 bytes."""
    return nxp + (nxp + 1) // 2 + 16


def conv_workspace_floats(int C, int H, int W, int KH, int KW, int S, int P, int M, int K,
                          int Cout):
    """Scratch floats a convolution of one group (C inputs, Cout outputs) needs;
    M = 0 for a dense one."""
    cdef qe_conv_geom g
    _geom(&g, C, H, W, KH, KW, S, P)
    if M <= 0:
        return qe_phase_floats(&g) + qe_acc_floats(&g, (Cout + QE_DENSE_CO - 1) // QE_DENSE_CO
                                                   * QE_DENSE_CO)
    return qe_phase_floats(&g) + qe_lut_floats(&g, M, K) + qe_acc_floats(&g, Cout)


def conv_output_size(int H, int W, int KH, int KW, int S, int P):
    cdef qe_conv_geom g
    _geom(&g, 1, H, W, KH, KW, S, P)
    return g.OH, g.OW


def conv_lut(const float[:, :, :, ::1] x, const float[:, :, ::1] cb,
             const uint8_t[:, :, :, ::1] asmt, const float[::1] bias,
             int stride, int pad, int groups, bint relu,
             float[:, :, :, ::1] out, float[::1] ws, int nthreads=1, int c0=0):
    """Lookup-table convolution. x [N,C,H,W], cb [M,K,d] (shared by all groups),
    asmt [Cout,KH,KW,M], bias [Cout], out [N,Cout,OH,OW] (or channels c0 .. c0+Cout
    of a wider out: the slice a concatenation reads)."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int M = cb.shape[0], K = cb.shape[1], d = cb.shape[2]
    cdef int Cout = asmt.shape[0], KH = asmt.shape[1], KW = asmt.shape[2]
    cdef qe_conv_geom g
    _group_geom(&g, C, Cout, groups, H, W, KH, KW, stride, pad)
    cdef int Cg = C // groups, Og = Cout // groups
    if asmt.shape[3] != M or M != (Cg + d - 1) // d:
        raise ValueError(f"codebook has {M} subspaces of d={d}, assignments {asmt.shape[3]}, "
                         f"input channels per group {Cg}")
    if K > 256:
        raise ValueError(f"K={K} codewords do not fit 8-bit indices")
    if bias.shape[0] != Cout or out.shape[0] != N or c0 < 0 or out.shape[1] < c0 + Cout \
            or out.shape[2] != g.OH or out.shape[3] != g.OW:
        raise ValueError("bias or output shape does not match the convolution")
    cdef int64_t nxp = qe_phase_floats(&g), nT = qe_lut_floats(&g, M, K)
    cdef int64_t nacc = qe_acc_floats(&g, Og)
    if ws.shape[0] < nxp + nT + nacc:
        raise ValueError(f"workspace too small: {ws.shape[0]} < {nxp + nT + nacc} floats")
    cdef int n, gi, rc = 0
    with nogil:
        for n in range(N):
            for gi in range(groups):
                qe_phase_split(&g, &x[n, gi * Cg, 0, 0], &ws[0])
                rc = qe_lut_conv(&g, &ws[0], &cb[0, 0, 0], M, K, d, &asmt[gi * Og, 0, 0, 0], Og,
                                 &bias[gi * Og], &ws[nxp], &ws[nxp + nT], &out[n, c0 + gi * Og, 0, 0],
                                 relu, nthreads)
                if rc != 0:
                    break
            if rc != 0:
                break
    if rc != 0:
        raise MemoryError("out of memory in the convolution kernel")


def conv16_max_k():
    """Largest K whose 16-bit tables the current instruction set looks up in
    registers (0: none; the fast convolution then keeps float tables)."""
    return qe_conv16_max_k()


def conv16_auto_k():
    """Largest K for which fast mode uses the register tables by default on the
    current instruction set (where they measure or are predicted faster than
    float table rows)."""
    return qe_conv16_auto_k()


def conv16_quad(int K):
    """True when the current instruction set runs K-codeword tables four taps
    per register (AVX-512, K <= 16): the layout conv16_layout(quad=True) wants."""
    return bool(qe_conv16_quad()) and K <= 16


def conv16_layout_shape(int cout, int groups, int J, bint quad=False):
    """Shape of conv16_layout()'s output for `cout` outputs and J = KH*KW*M taps."""
    return (groups, (J + 3) // 4 * 4 if quad else J, qe_conv16_cop(cout // groups))


def conv16_layout(const uint8_t[:, ::1] asmt, int groups, uint8_t[:, :, ::1] out,
                  bint quad=False):
    """Indices asmt [Cout, KH*KW*M] -> the fast convolution's layout
    out [groups, KH*KW*M (rounded up to 4 taps if quad), Cout/groups rounded up
    to 64] (zero-padded); quad: four taps per channel, as conv16_quad() wants."""
    cdef int cout = asmt.shape[0], J = asmt.shape[1]
    if groups < 1 or cout % groups or (out.shape[0], out.shape[1], out.shape[2]) \
            != conv16_layout_shape(cout, groups, J, quad):
        raise ValueError("fast convolution index layout shape does not match the indices")
    cdef int og = cout // groups, gi
    with nogil:
        for gi in range(groups):
            if quad:
                qe_conv16_layout4(&asmt[gi * og, 0], og, J, &out[gi, 0, 0])
            else:
                qe_conv16_layout(&asmt[gi * og, 0], og, J, &out[gi, 0, 0])


def conv16_workspace_floats(int C, int H, int W, int KH, int KW, int S, int P, int M, int K,
                            int d, int Cout):
    """Scratch floats the fast convolution of one group needs (phase planes included)."""
    cdef qe_conv_geom g
    _geom(&g, C, H, W, KH, KW, S, P)
    cdef int64_t nb = qe_conv16_bytes(&g, M, K, d, Cout)
    if nb < 0:
        raise ValueError(f"K={K} has no 16-bit table layout")
    return qe_phase_floats(&g) + (nb + 3) // 4 + 16


def conv16(const float[:, :, :, ::1] x, const float[:, :, ::1] cb,
           const uint8_t[:, :, ::1] aT, int KH, int KW, const float[::1] bias,
           int stride, int pad, bint relu, float[:, :, :, ::1] out, float[::1] ws,
           int nthreads=1, bint quad=False, int c0=0):
    """Fast lookup-table convolution with 16-bit register tables. x [N,C,H,W],
    cb [M,K,d], aT from conv16_layout(quad=quad) [groups, taps, Cop],
    out [N,Cout,OH,OW]."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int M = cb.shape[0], K = cb.shape[1], d = cb.shape[2]
    cdef int groups = aT.shape[0], Cout = bias.shape[0]
    cdef qe_conv_geom g
    _group_geom(&g, C, Cout, groups, H, W, KH, KW, stride, pad)
    cdef int Cg = C // groups, Og = Cout // groups
    if quad and K > 16:
        raise ValueError(f"the four-taps layout needs K <= 16, not {K}")
    if M != (Cg + d - 1) // d or aT.shape[2] != qe_conv16_cop(Og) or \
            aT.shape[1] != ((KH * KW * M + 3) // 4 * 4 if quad else KH * KW * M):
        raise ValueError(f"codebook has {M} subspaces of d={d}, index layout "
                         f"{list(aT.shape)}, input channels per group {Cg}")
    _check_out(&g, N, Cout, c0, out)
    cdef int64_t nxp = qe_phase_floats(&g), nb = qe_conv16_bytes(&g, M, K, d, Og)
    if nb < 0 or ws.shape[0] < nxp + (nb + 3) // 4 + 16:
        raise ValueError(f"workspace too small for the fast convolution")
    # the byte scratch starts 64-byte aligned
    cdef char *wb = <char *>&ws[nxp]
    wb = wb + ((64 - (<size_t>wb) % 64) % 64)
    cdef int n, gi, rc = 0
    with nogil:
        for n in range(N):
            for gi in range(groups):
                qe_phase_split(&g, &x[n, gi * Cg, 0, 0], &ws[0])
                rc = qe_conv16(&g, &ws[0], &cb[0, 0, 0], M, K, d, &aT[gi, 0, 0], quad, Og,
                               &bias[gi * Og], wb, &out[n, c0 + gi * Og, 0, 0], relu, nthreads)
                if rc != 0:
                    break
            if rc != 0:
                break
    if rc == -2:
        raise ValueError(f"layer too large for 16-bit tables ({KH * KW * M} taps, K={K})")
    if rc != 0:
        raise MemoryError("out of memory in the fast convolution kernel")


def conv16_lookup(const uint8_t[::1] Q, int Kp, const int64_t[::1] tb,
                  const uint8_t[:, ::1] aT, int64_t R, int32_t[:, ::1] acc, int nthreads=1):
    """The fast convolution's lookup stage alone (for tests): acc [R, Cop] int32,
    acc[r, slot] = sum over taps j of the 16-bit entry aT[j, c] of the table at
    Q[tb[j] + r*2*Kp:] (low bytes, then high bytes), slot = conv16_slot(c)."""
    cdef int J = aT.shape[0], Cop = aT.shape[1], j, c
    if Kp not in (16, 32, 64, 128) or Cop % 64 or R % 4 or tb.shape[0] != J \
            or acc.shape[0] != R or acc.shape[1] != Cop:
        raise ValueError("conv16_lookup: inconsistent shapes")
    for j in range(J):
        if tb[j] < 0 or tb[j] + R * 2 * Kp > Q.shape[0]:
            raise ValueError("conv16_lookup: a table lies outside Q")
    for j in range(aT.shape[0]):
        for c in range(Cop):
            if aT[j, c] >= Kp:
                raise ValueError("conv16_lookup: an index is >= Kp")
    if J == 0 or R == 0:
        return
    with nogil:
        qe_conv16_lookup(&Q[0], Kp, &tb[0], J, &aT[0, 0], Cop, R, &acc[0, 0], nthreads)


def conv16_lookup4(const uint8_t[::1] Q, const int64_t[::1] tb, const uint8_t[:, ::1] aQ,
                   int64_t R, int32_t[:, ::1] acc, int nthreads=1):
    """The four-taps lookup stage alone (for tests): 16-entry tables (low bytes,
    then high bytes, 32 bytes a table) at Q[tb[j] + r*32:], aQ [J4, Cop*4] from
    conv16_layout(quad=True); acc [R, Cop] in channel order."""
    cdef int J4 = aQ.shape[0], Cop = aQ.shape[1] // 4, j, c
    if aQ.shape[1] % 256 or R % 4 or tb.shape[0] != 4 * J4 or acc.shape[0] != R \
            or acc.shape[1] != Cop:
        raise ValueError("conv16_lookup4: inconsistent shapes")
    for j in range(4 * J4):
        if tb[j] < 0 or tb[j] + R * 32 > Q.shape[0]:
            raise ValueError("conv16_lookup4: a table lies outside Q")
    for j in range(J4):
        for c in range(Cop * 4):
            if not 16 * (c % 4) <= aQ[j, c] < 16 * (c % 4) + 16:
                raise ValueError("conv16_lookup4: an index is out of its tap's table")
    if J4 == 0 or R == 0:
        return
    with nogil:
        qe_conv16_lookup4(&Q[0], &tb[0], J4, &aQ[0, 0], Cop, R, &acc[0, 0], nthreads)


def conv16_slot(int c):
    """Where channel c of a 64-channel block sits in conv16_lookup's accumulators."""
    return (c // 64) * 64 + qe_conv16_slot(c % 64)


def conv_blocked_shape(int cout, int groups, int64_t J):
    """Shape of block_conv_weights()'s output for [cout, J] weights in `groups` groups."""
    return (groups, ((cout // groups) + QE_DENSE_CO - 1) // QE_DENSE_CO, J, QE_DENSE_CO)


def block_conv_weights(const float[:, ::1] w, int groups, float[:, :, :, ::1] out):
    """Dense weights w [Cout, C/groups*KH*KW] -> the kernel's layout out
    [groups, ceil(Cout/groups/B), C/groups*KH*KW, B] (B = QE_DENSE_CO), zero-padded."""
    cdef int cout = w.shape[0]
    cdef int64_t J = w.shape[1]
    if groups < 1 or cout % groups or (out.shape[0], out.shape[1], out.shape[2], out.shape[3]) \
            != conv_blocked_shape(cout, groups, J):
        raise ValueError("blocked weight shape does not match the weights")
    if cout == 0 or J == 0:
        return
    with nogil:
        qe_block_conv_weights(&w[0, 0], groups, cout // groups, J, QE_DENSE_CO, &out[0, 0, 0, 0])


def conv_dense(const float[:, :, :, ::1] x, const float[:, :, :, ::1] wblk,
               const float[::1] bias, int kh, int kw, int stride, int pad, bint relu,
               float[:, :, :, ::1] out, float[::1] ws, int nthreads=1, int c0=0):
    """Dense convolution. x [N,C,H,W], wblk from block_conv_weights() (its first axis is
    the group count), out [N,Cout,OH,OW] (or channels c0 .. c0+Cout of a wider out)."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int groups = wblk.shape[0], Cout = bias.shape[0]
    cdef qe_conv_geom g
    _group_geom(&g, C, Cout, groups, H, W, kh, kw, stride, pad)
    cdef int Cg = C // groups, Og = Cout // groups
    if wblk.shape[1] != (Og + QE_DENSE_CO - 1) // QE_DENSE_CO or wblk.shape[2] != Cg * kh * kw \
            or wblk.shape[3] != QE_DENSE_CO:
        raise ValueError("blocked weights do not match the convolution")
    _check_out(&g, N, Cout, c0, out)
    cdef int64_t nxp = qe_phase_floats(&g)
    if ws.shape[0] < nxp + qe_acc_floats(&g, (Og + QE_DENSE_CO - 1) // QE_DENSE_CO * QE_DENSE_CO):
        raise ValueError("workspace too small")
    cdef int n, gi, rc = 0
    with nogil:
        for n in range(N):
            for gi in range(groups):
                qe_phase_split(&g, &x[n, gi * Cg, 0, 0], &ws[0])
                rc = qe_dense_conv(&g, &ws[0], &wblk[gi, 0, 0, 0], Og, &bias[gi * Og], &ws[nxp],
                                   &out[n, c0 + gi * Og, 0, 0], relu, nthreads)
                if rc != 0:
                    break
            if rc != 0:
                break
    if rc != 0:
        raise MemoryError("out of memory in the convolution kernel")


def i16_weights_shape(int cout, int groups, int64_t J):
    """Shape of i16_conv_weights()'s int16 output for [cout, J] weights in `groups` groups."""
    return (groups, ((cout // groups) + QE_DENSE_CO - 1) // QE_DENSE_CO,
            (J + 1) // 2 * 2 * QE_DENSE_CO)


def i16_conv_weights(const float[:, ::1] w, int groups, int16_t[:, :, ::1] out,
                     float[::1] scale):
    """Dense weights w [Cout, C/groups*KH*KW] -> the int16 kernel's layout (out, of
    i16_weights_shape()) and one scale per output channel; returns the layer's input
    bound A (inputs are quantised to |xq| <= A; see qe_i16_weights)."""
    cdef int cout = w.shape[0]
    cdef int64_t J = w.shape[1]
    cdef int A
    if groups < 1 or cout % groups or J < 1 or scale.shape[0] != cout or \
            (out.shape[0], out.shape[1], out.shape[2]) != i16_weights_shape(cout, groups, J):
        raise ValueError("int16 weight layout does not match the weights")
    with nogil:
        A = qe_i16_weights(&w[0, 0], groups, cout // groups, J, &out[0, 0, 0], &scale[0])
    if A < 1:
        raise ValueError(f"weights of {J} taps per output cannot be summed in int32")
    return A


def i16_workspace_floats(int C, int H, int W, int KH, int KW, int S, int P, int Cout=0):
    """Scratch floats the int16 convolution of one group (Cout outputs) needs: the
    float phase planes and their int16 copy; for a padded 1x1 one of stride 1, its
    unpadded outputs and the input's int16 copy (see conv_i16)."""
    cdef qe_conv_geom g
    _geom(&g, C, H, W, KH, KW, S, P)
    cdef int64_t n = _i16_ws(qe_phase_floats(&g))
    if KH == 1 and KW == 1 and S == 1 and P > 0:
        n = max(n, _i16_ring_ws(C, H, W, Cout))
    return n


cdef int64_t _i16_ring_ws(int C, int H, int W, int Cout):
    """A padded 1x1 convolution's scratch: its Cout x H x W unpadded outputs, then the
    input's int16 copy (64-byte aligned)."""
    return <int64_t>max(Cout, 1) * H * W + 16 + (<int64_t>C * H * W + 1) // 2 + 16


def conv_i16(const float[:, :, :, ::1] x, const int16_t[:, :, ::1] w16, const float[::1] scale,
             int A, const float[::1] bias, int kh, int kw, int stride, int pad, bint relu,
             float[:, :, :, ::1] out, float[::1] ws, int nthreads=1, int c0=0):
    """Fast mode's dense convolution in 16-bit integers (qe_i16.h). x [N,C,H,W], w16 and
    scale from i16_conv_weights() (its first axis is the group count), out [N,Cout,OH,OW]
    (or channels c0 .. c0+Cout of a wider out)."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int groups = w16.shape[0], Cout = bias.shape[0]
    cdef qe_conv_geom g
    _group_geom(&g, C, Cout, groups, H, W, kh, kw, stride, pad)
    cdef int Cg = C // groups, Og = Cout // groups
    if (w16.shape[0], w16.shape[1], w16.shape[2]) != i16_weights_shape(Cout, groups,
                                                                       Cg * kh * kw) \
            or scale.shape[0] != Cout or A < 1 or A > 32767:
        raise ValueError("int16 weights do not match the convolution")
    _check_out(&g, N, Cout, c0, out)
    cdef int64_t nxp = qe_phase_floats(&g)
    # a padded 1x1 convolution of stride 1 (SqueezeNet's conv10): the padding
    # ring's outputs read only zeros, so they are the bias (ReLU'd); the
    # interior is the unpadded convolution, computed in place into ws and
    # copied in (the same bits: test_int16.py)
    cdef bint ring = kh == 1 and kw == 1 and stride == 1 and pad > 0
    cdef int64_t nring = <int64_t>Og * H * W
    if ws.shape[0] < (_i16_ring_ws(Cg, H, W, Og) if ring else _i16_ws(nxp)):
        raise ValueError("workspace too small")
    # the int16 planes start 64-byte aligned after the float ones
    cdef int16_t *xq = <int16_t *>(<uintptr_t>(&ws[(nring if ring else nxp) + 15])
                                   & ~(<uintptr_t>63))
    cdef int n, gi, rc = 0, co, h, w
    cdef float v
    # a 1x1 convolution of stride 1 without padding reads its input in place:
    # each channel is already its own plane, H*W apart (no split, no copy)
    cdef bint direct = kh == 1 and kw == 1 and stride == 1 and pad == 0
    cdef qe_conv_geom gd = g
    gd.PS = <int64_t>H * W
    if ring:
        _geom(&gd, Cg, H, W, 1, 1, 1, 0)
        gd.PS = <int64_t>H * W
    cdef float *o
    with nogil:
        for n in range(N):
            for gi in range(groups):
                if ring:
                    rc = qe_i16_conv(&gd, &x[n, gi * Cg, 0, 0], xq, &w16[gi, 0, 0],
                                     &scale[gi * Og], A, Og, &bias[gi * Og], &ws[0], relu,
                                     nthreads)
                    if rc != 0:
                        break
                    for co in range(Og):
                        o = &out[n, c0 + gi * Og + co, 0, 0]
                        # the ring: as the kernel writes an output of zero sum (and
                        # NaN everywhere when the input was not finite)
                        v = fmaf(0.0, 1.0, bias[gi * Og + co])
                        if relu and not v > 0:
                            v = 0.0
                        if isnan(ws[0]):
                            v = ws[0]
                        for h in range(g.OH):
                            if h < pad or h >= pad + H:
                                for w in range(g.OW):
                                    o[h * g.OW + w] = v
                                continue
                            for w in range(pad):
                                o[h * g.OW + w] = v
                                o[h * g.OW + pad + W + w] = v
                            memcpy(&o[h * g.OW + pad], &ws[<int64_t>co * H * W + (h - pad) * W],
                                   sizeof(float) * W)
                elif direct:
                    rc = qe_i16_conv(&gd, &x[n, gi * Cg, 0, 0], xq, &w16[gi, 0, 0],
                                     &scale[gi * Og], A, Og, &bias[gi * Og],
                                     &out[n, c0 + gi * Og, 0, 0], relu, nthreads)
                else:
                    qe_phase_split(&g, &x[n, gi * Cg, 0, 0], &ws[0])
                    rc = qe_i16_conv(&g, &ws[0], xq, &w16[gi, 0, 0], &scale[gi * Og], A, Og,
                                     &bias[gi * Og], &out[n, c0 + gi * Og, 0, 0], relu,
                                     nthreads)
                if rc != 0:
                    break
            if rc != 0:
                break
    if rc != 0:
        raise MemoryError("out of memory in the convolution kernel")


def pw_weights_shape(int cout, int cin):
    """Shape of pw_conv_weights()'s output for [cout, cin] weights."""
    return ((cout + QE_PW_LB - 1) // QE_PW_LB, cin, QE_PW_LB)


def pw_conv_weights(const float[:, ::1] w, float[:, :, ::1] out):
    """Lays 1x1 weights [Cout, C] out for pw_conv."""
    cdef int cout = w.shape[0], cin = w.shape[1]
    if (out.shape[0], out.shape[1], out.shape[2]) != pw_weights_shape(cout, cin):
        raise ValueError("pointwise weight layout has the wrong shape")
    with nogil:
        qe_pw_weights(&w[0, 0], cout, cin, &out[0, 0, 0])


def conv_pw(const float[:, :, :, ::1] x, const float[:, :, ::1] wpw, const float[::1] bias,
            bint relu, float[:, :, :, ::1] out, int nthreads=1, int c0=0):
    """Fast mode's pointwise convolution (1x1, stride 1, no padding, one group) in
    float (qe_pw.h): x [N,C,H,W], wpw from pw_conv_weights(), out [N,Cout,H,W] (or
    channels c0 .. c0+Cout of a wider out)."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int Cout = bias.shape[0], n
    if (wpw.shape[0], wpw.shape[1], wpw.shape[2]) != pw_weights_shape(Cout, C):
        raise ValueError("pointwise weights do not match the convolution")
    if out.shape[0] != N or c0 < 0 or out.shape[1] < c0 + Cout or out.shape[2] != H \
            or out.shape[3] != W:
        raise ValueError("bias or output shape does not match the convolution")
    cdef int64_t P = <int64_t>H * W
    with nogil:
        for n in range(N):
            qe_pw_conv(&x[n, 0, 0, 0], P, C, &wpw[0, 0, 0], Cout, &bias[0], &out[n, c0, 0, 0],
                       relu, nthreads)


# the kernels and strides the Winograd form takes (weights, scratch and virtual
# channels stay small enough for int sizes)
WINO_MAX_KERNEL = 15
WINO_MAX_STRIDE = 8


def wino_applies(int kh, int kw, int stride):
    """Whether the Winograd kernel takes this kernel size and stride."""
    return 1 <= kh <= WINO_MAX_KERNEL and 1 <= kw <= WINO_MAX_KERNEL and \
        1 <= stride <= WINO_MAX_STRIDE


# the Winograd forms, by their tile code (qe_kernels.h): F(2x2, 3x3), F(4x4, 3x3), F(4x4, 5x5)
WINO_TILES = (2, 4, QE_WINO_F45)
WINO_FORMS = {2: "F(2x2, 3x3)", 4: "F(4x4, 3x3)", QE_WINO_F45: "F(4x4, 5x5)"}


def _check_tile(int tile):
    if tile not in WINO_TILES:
        raise ValueError(f"Winograd tiles are {WINO_TILES} ({', '.join(WINO_FORMS.values())}), "
                         f"got {tile}")


def wino_piece_size(int tile):
    """The side r of the kernel pieces of Winograd form `tile` (3, or 5 for 45)."""
    _check_tile(tile)
    return qe_wino_r(tile)


def wino_products(int tile):
    """Products per tile and (virtual) channel of Winograd form `tile`: n^2, n = m + r - 1."""
    _check_tile(tile)
    return qe_wino_n(tile) ** 2


def wino_outputs(int tile):
    """Outputs per tile side of Winograd form `tile` (m)."""
    _check_tile(tile)
    return qe_wino_m(tile)


def wino_pieces(int kh, int kw, int stride=1, int tile=2):
    """Virtual input channels per real one in the Winograd form of a kh x kw
    convolution: stride^2 phases (space to depth) times its r x r pieces."""
    _check_tile(tile)
    return qe_wino_virtual(1, kh, kw, stride, tile)


def wino_weights_shape(int cout, int groups, int cin, int kh=3, int kw=3, int stride=1,
                       int tile=2):
    """Shapes (int16 weights, float scales) of wino_conv_weights()'s outputs for a
    kh x kw convolution of cin input and cout output channels in `groups` groups,
    by Winograd form `tile` (WINO_FORMS)."""
    _check_tile(tile)
    cdef int cg = cout // groups, cog = (cg + 31) // 32, nxi = wino_products(tile)
    cdef int64_t cv = <int64_t>wino_pieces(kh, kw, stride, tile) * (cin // groups)
    return ((groups, cog * nxi * ((cv + 1) // 2), 64), (groups, cog * nxi * 32))


def wino_conv_weights(const float[:, :, :, ::1] w, int groups, int16_t[:, :, ::1] out,
                      float[:, ::1] scale, int stride=1, int tile=2):
    """Dense weights w [Cout, C/groups, KH, KW] -> the Winograd kernel's layout for
    this stride and tile (out, scale of wino_weights_shape()); returns the input
    bound A (see qe_wino_weights)."""
    cdef int cout = w.shape[0], cg = w.shape[1], kh = w.shape[2], kw = w.shape[3]
    cdef int A
    if groups < 1 or cout % groups or cg < 1 or not wino_applies(kh, kw, stride):
        raise ValueError(f"Winograd weights need a kernel of at most {WINO_MAX_KERNEL}x"
                         f"{WINO_MAX_KERNEL} and a stride of at most {WINO_MAX_STRIDE}")
    shapes = wino_weights_shape(cout, groups, cg * groups, kh, kw, stride, tile)
    if (out.shape[0], out.shape[1], out.shape[2]) != shapes[0] or \
            (scale.shape[0], scale.shape[1]) != shapes[1]:
        raise ValueError("Winograd weight layout does not match the weights")
    with nogil:
        A = qe_wino_weights(&w[0, 0, 0, 0], groups, cout // groups, cg, kh, kw, stride, tile,
                            &out[0, 0, 0], &scale[0, 0])
    if A == -2:
        raise MemoryError("out of memory laying out Winograd weights")
    if A < 1:
        raise ValueError(f"Winograd weights of {cg} input channels cannot be summed in int32")
    return A


def wino_workspace_floats(int C, int H, int W, int P, int cout, int kh=3, int kw=3,
                          int stride=1, int tile=2):
    """Scratch floats of the Winograd convolution of one group (C input and cout
    output channels), with room to align it to 64 bytes."""
    _check_tile(tile)
    return (qe_wino_ws_bytes(C, H, W, kh, kw, stride, P, cout, tile) + 3) // 4 + 16


def conv_wino(const float[:, :, :, ::1] x, const int16_t[:, :, ::1] u, const float[:, ::1] scale,
              int A, const float[::1] bias, int kh, int kw, int stride, int pad, bint relu,
              float[:, :, :, ::1] out, float[::1] ws, int nthreads=1, int c0=0, int tile=2):
    """Fast mode's convolution by Winograd form `tile` (WINO_FORMS) in 16-bit
    integers (qe_wino.h; strides by space to depth, larger kernels in pieces). x
    [N,C,H,W], u, scale and A from wino_conv_weights() of the same tile, out
    [N,Cout,OH,OW] (or channels c0 .. c0+Cout of a wider out)."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int groups = u.shape[0], Cout = bias.shape[0]
    cdef qe_conv_geom g
    if not wino_applies(kh, kw, stride):
        raise ValueError("Winograd weights do not match the convolution")
    _check_tile(tile)
    _group_geom(&g, C, Cout, groups, H, W, kh, kw, stride, pad)
    cdef int Cg = C // groups, Og = Cout // groups
    shapes = wino_weights_shape(Cout, groups, C, kh, kw, stride, tile)
    if (u.shape[0], u.shape[1], u.shape[2]) != shapes[0] \
            or (scale.shape[0], scale.shape[1]) != shapes[1] or A < 1 \
            or A > (8191 if tile == 2 else 32767):
        raise ValueError("Winograd weights do not match the convolution")
    _check_out(&g, N, Cout, c0, out)
    if ws.shape[0] < wino_workspace_floats(Cg, H, W, pad, Og, kh, kw, stride, tile):
        raise ValueError("workspace too small")
    cdef void *w0 = <void *>((<uintptr_t>&ws[0] + 63) & ~(<uintptr_t>63))
    cdef int n, gi
    with nogil:
        for n in range(N):
            for gi in range(groups):
                qe_wino_conv(&x[n, gi * Cg, 0, 0], Cg, H, W, kh, kw, stride, pad, &u[gi, 0, 0],
                             &scale[gi, 0], A, Og, &bias[gi * Og], &out[n, c0 + gi * Og, 0, 0],
                             relu, nthreads, w0, tile)


def fc_block(int K):
    """Subspaces per block of the fully-connected kernel's index layout."""
    return qe_fc_block(K)


def fc_codebook_t(const float[:, :, ::1] cb, float[:, :, ::1] out):
    """Codebook [M,K,d] -> the fully-connected kernels' layout [M,d,K]
    (out[m, c, k] = cb[m, k, c]): a table row is then built in vectors."""
    cdef int M = cb.shape[0], K = cb.shape[1], d = cb.shape[2]
    if out.shape[0] != M or out.shape[1] != d or out.shape[2] != K:
        raise ValueError("transposed codebook shape does not match the codebook")
    if M == 0 or K == 0 or d == 0:
        return
    with nogil:
        qe_fc_codebook_t(&cb[0, 0, 0], M, K, d, &out[0, 0, 0])


def fc_lut(const float[:, ::1] x, const float[:, :, ::1] cbt, const uint8_t[:, ::1] asmt,
           const float[::1] bias, bint relu, float[:, ::1] out, float[::1] ws, int nthreads=1):
    """Lookup-table fully-connected layer. x [N,Cin], cbt [M,d,K] from fc_codebook_t(),
    asmt [Cout,M] in the blocked layout of runtime.block_fc_indices()."""
    cdef int N = x.shape[0], Cin = x.shape[1]
    cdef int M = cbt.shape[0], K = cbt.shape[2], d = cbt.shape[1]
    cdef int Cout = asmt.shape[0]
    check_int_range("fully-connected layer", M_K=cbt.shape[0] * cbt.shape[2],
                    Cout_M=asmt.shape[0] * asmt.shape[1])
    if asmt.shape[1] != M or M != (Cin + d - 1) // d:
        raise ValueError(f"codebook has {M} subspaces of d={d}, assignments {asmt.shape[1]}, "
                         f"inputs {Cin}")
    if bias.shape[0] != Cout or out.shape[0] != N or out.shape[1] != Cout:
        raise ValueError("bias or output shape does not match the layer")
    if ws.shape[0] < <int64_t>M * K:
        raise ValueError("workspace too small")
    cdef int n
    with nogil:
        for n in range(N):
            qe_lut_fc(&x[n, 0], Cin, &cbt[0, 0, 0], M, K, d, &asmt[0, 0], Cout, &bias[0],
                      &ws[0], &out[n, 0], relu, nthreads)


def fc_q8_layout_size(Cout, M):
    """Bytes of fc_q8_layout()'s output for indices [Cout, M]."""
    check_int_range("fully-connected layer", Cout_M=Cout * M)
    return (Cout + 31) // 32 * 32 * ((M + 1) // 2 * 2)


def fc_q8_layout(const uint8_t[::1] src, int bits, int Cout, int M, uint8_t[::1] out):
    """Indices [Cout, M], as a stream of `bits`-bit values (LSB first; 8 = plain bytes),
    -> the register FC kernels' layout (fc_q8_layout_size() bytes).  Returns the
    largest index."""
    if bits < 1 or bits > 8 or Cout < 1 or M < 1:
        raise ValueError(f"invalid index layout: bits={bits}, Cout={Cout}, M={M}")
    if src.shape[0] * 8 < <int64_t>Cout * M * bits or out.shape[0] != fc_q8_layout_size(Cout, M):
        raise ValueError("index stream or layout size does not match the layer")
    cdef int mx
    with nogil:
        mx = qe_fc_q8_layout(&src[0], src.shape[0], bits, Cout, M, &out[0])
    if mx < 0:
        raise MemoryError("out of memory laying out indices")
    return mx


def fc_q8_packs():
    """Whether fast mode keeps fully-connected indices bit-packed on the chosen
    instruction set (it unpacks them in registers; see fc_q8_pack)."""
    return bool(qe_fc_q8_packs())


def fc_q8_index_bits(int K):
    """Bits per packed index of a K-entry codebook (K <= 32)."""
    return max(1, (K - 1).bit_length())


def fc_q8_packed_size(int64_t layout_bytes, int bits):
    """Bytes of fc_q8_pack()'s output: `bits` per index, then 64 spare bytes."""
    return layout_bytes // 8 * bits + QE_Q8_PACK_PAD


def fc_q8_pack(const uint8_t[::1] layout, int bits, uint8_t[::1] out):
    """fc_q8_layout()'s bytes -> `bits` bits per index (1..7; fc_q8_packed_size()
    bytes), the form fc_q8(..., bits) reads: a third less memory to stream for K=32."""
    if not 1 <= bits <= 7 or layout.shape[0] % 64 or \
            out.shape[0] != fc_q8_packed_size(layout.shape[0], bits):
        raise ValueError("packed index layout does not match")
    cdef int rc
    with nogil:
        rc = qe_fc_q8_pack(&layout[0], layout.shape[0], bits, &out[0])
    if rc:
        raise ValueError(f"an index needs more than {bits} bits")


def block_fc_indices(const uint8_t[:, ::1] asmt, int K, uint8_t[:, ::1] out):
    """Indices [Cout, M] -> the float FC kernel's blocked layout (same size; see fc_lut)."""
    cdef int Cout = asmt.shape[0], M = asmt.shape[1]
    if out.shape[0] != Cout or out.shape[1] != M:
        raise ValueError("blocked index shape does not match the indices")
    if Cout == 0 or M == 0:
        return
    with nogil:
        qe_block_fc_indices(&asmt[0, 0], Cout, M, qe_fc_block(K), &out[0, 0])


def fc_q8_workspace_floats(M, K, Cout):
    """Scratch floats the 8-bit fully-connected kernel needs (Python integers:
    no overflow; sizes beyond the kernels' 32-bit range refused)."""
    check_int_range("fully-connected layer", M_K=M * K, Cout_M=Cout * M)
    return (M * K + QE_Q8_NB * (((M + 1) // 2 * 2 * 32 + 3) // 4 + (Cout + 31) // 32 * 32)
            + 2 * M)


cdef int _check_fc_layout(str kernel, const float[:, ::1] x, const float[:, :, ::1] cbt,
                          const uint8_t[::1] idxq, int Cout, const float[::1] bias,
                          float[:, ::1] out, float[::1] ws, int64_t ws_need,
                          int bits=8) except -1:
    """Checks shared by the kernels taking fc_q8_layout() indices (or, bits < 8,
    their fc_q8_pack() form)."""
    cdef int Cin = x.shape[1], M = cbt.shape[0], K = cbt.shape[2], d = cbt.shape[1]
    if K > 32 or M != (Cin + d - 1) // d:
        raise ValueError(f"{kernel} FC kernel needs K <= 32 and M = ceil(Cin/d) (K={K}, M={M})")
    if bits != 8 and not fc_q8_index_bits(K) <= bits <= 7:
        raise ValueError(f"{bits}-bit indices cannot hold a {K}-entry codebook")
    cdef int64_t nidx = <int64_t>qe_fc_q8_pad_cout(Cout) * qe_fc_q8_pad_m(M)
    if idxq.shape[0] != (nidx if bits == 8 else fc_q8_packed_size(nidx, bits)):
        raise ValueError("index layout does not match the layer")
    if bias.shape[0] != Cout or out.shape[0] != x.shape[0] or out.shape[1] != Cout:
        raise ValueError("bias or output shape does not match the layer")
    if ws.shape[0] < ws_need:
        raise ValueError("workspace too small")
    if ws_need != (fc_q8_workspace_floats(M, K, Cout) if kernel == "8-bit"
                   else fc_f32_workspace_floats(M, K, Cout)):
        raise ValueError("workspace size does not match the layer")
    return 0


def fc_q8(const float[:, ::1] x, const float[:, :, ::1] cbt, const uint8_t[::1] idxq, int Cout,
          const float[::1] bias, bint relu, float[:, ::1] out, float[::1] ws, int nthreads=1,
          int bits=8):
    """Fast-path fully-connected layer (8-bit tables, K <= 32). x [N,Cin], cbt [M,d,K]
    from fc_codebook_t(), idxq from fc_q8_layout() (bits=8) or fc_q8_pack(),
    out [N,Cout]."""
    cdef int N = x.shape[0], Cin = x.shape[1]
    cdef int M = cbt.shape[0], K = cbt.shape[2], d = cbt.shape[1]
    _check_fc_layout("8-bit", x, cbt, idxq, Cout, bias, out, ws, fc_q8_workspace_floats(M, K, Cout),
                     bits)
    cdef int64_t qoff = <int64_t>M * K
    cdef int64_t aoff = qoff + QE_Q8_NB * ((<int64_t>qe_fc_q8_pad_m(M) * 32 + 3) // 4)
    cdef int64_t loff = aoff + QE_Q8_NB * ((<int64_t>Cout + 31) // 32 * 32)
    if N == 0:
        return
    with nogil:
        qe_fc_q8(&x[0, 0], N, Cin, &cbt[0, 0, 0], M, K, d, &idxq[0], bits, Cout, &bias[0], &ws[0],
                 <uint8_t *>&ws[qoff], <int32_t *>&ws[aoff], &ws[loff], &out[0, 0], relu,
                 nthreads)


def fc_f32_workspace_floats(M, K, Cout):
    """Scratch floats the register-lookup exact fully-connected kernel needs
    (Python integers, see fc_q8_workspace_floats)."""
    check_int_range("fully-connected layer", M_K=M * K, Cout_M=Cout * M)
    return (M + 1) // 2 * 2 * (8 if K <= 8 else 16 if K <= 16 else 32) + (Cout + 31) // 32 * 32


def fc_f32(const float[:, ::1] x, const float[:, :, ::1] cbt, const uint8_t[::1] idxq, int Cout,
           const float[::1] bias, bint relu, float[:, ::1] out, float[::1] ws, int nthreads=1):
    """Exact fully-connected layer with float tables looked up in registers (K <= 32);
    cbt [M,d,K] from fc_codebook_t(), indices from fc_q8_layout()."""
    cdef int N = x.shape[0], Cin = x.shape[1]
    cdef int M = cbt.shape[0], K = cbt.shape[2], d = cbt.shape[1]
    _check_fc_layout("register", x, cbt, idxq, Cout, bias, out, ws,
                     fc_f32_workspace_floats(M, K, Cout))
    cdef int64_t aoff = <int64_t>qe_fc_q8_pad_m(M) * qe_fc_k_pad(K)
    cdef int n
    with nogil:
        for n in range(N):
            qe_fc_f32(&x[n, 0], Cin, &cbt[0, 0, 0], M, K, d, &idxq[0], Cout, &bias[0], &ws[0],
                      &ws[aoff], &out[n, 0], relu, nthreads)


def fc_dense(const float[:, ::1] x, const float[:, ::1] w, const float[::1] bias, bint relu,
             float[:, ::1] out, int nthreads=1):
    """Dense fully-connected layer. x [N,Cin], w [Cout,Cin]."""
    cdef int N = x.shape[0], Cin = x.shape[1], Cout = w.shape[0]
    if w.shape[1] != Cin or bias.shape[0] != Cout or out.shape[0] != N or out.shape[1] != Cout:
        raise ValueError("weights, bias or output shape do not match the layer")
    cdef int n
    with nogil:
        for n in range(N):
            qe_dense_fc(&x[n, 0], Cin, &w[0, 0], Cout, &bias[0], &out[n, 0], relu, nthreads)


LRN_MAX_IN_PLACE = QE_LRN_MAX_IN_PLACE


def lrn(const float[:, :, :, ::1] x, float[:, :, :, ::1] out, int size, float alpha,
        float beta, float k, int nthreads=1):
    """Cross-channel LRN of x [N,C,H,W] into out, which may be x itself (in
    place) when size <= LRN_MAX_IN_PLACE, and must not overlap it otherwise."""
    cdef int N = x.shape[0], C = x.shape[1]
    cdef int64_t HW = <int64_t>x.shape[2] * x.shape[3]
    if (out.shape[0] != x.shape[0] or out.shape[1] != x.shape[1] or out.shape[2] != x.shape[2]
            or out.shape[3] != x.shape[3] or size < 1):
        raise ValueError("LRN shapes or size are invalid")
    cdef const char *xa = <const char *>&x[0, 0, 0, 0]
    cdef const char *ya = <const char *>&out[0, 0, 0, 0]
    cdef int64_t nb = <int64_t>N * C * HW * 4
    if ya == xa:
        if size > QE_LRN_MAX_IN_PLACE:
            raise ValueError(f"LRN of size {size} cannot run in place (at most "
                             f"{QE_LRN_MAX_IN_PLACE})")
    elif ya < xa + nb and xa < ya + nb:
        raise ValueError("LRN input and output overlap")
    cdef int n
    with nogil:
        for n in range(N):
            qe_lrn(&x[n, 0, 0, 0], &out[n, 0, 0, 0], C, HW, size, alpha, beta, k, nthreads)


def pool(const float[:, :, :, ::1] x, float[:, :, :, ::1] out, int kh, int kw, int sh, int sw,
         int ph, int pw, int kind, int nthreads=1):
    """Pooling, kind 0 max, 1 average over the window clipped to the padded input
    (Caffe), 2 average over the window clipped to the input (padding excluded);
    out's shape carries the pooled size (ceil or floor rounding)."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int OH = out.shape[2], OW = out.shape[3]
    if out.shape[0] != N or out.shape[1] != C or kh < 1 or kw < 1 or sh < 1 or sw < 1 \
            or not 0 <= kind <= 2 or ph < 0 or pw < 0:
        raise ValueError("pooling shapes are invalid")
    cdef int n
    with nogil:
        for n in range(N):
            qe_pool(&x[n, 0, 0, 0], &out[n, 0, 0, 0], C, H, W, OH, OW, kh, kw, sh, sw, ph, pw,
                    kind, nthreads)


def relu(x, out, float slope=0.0):
    """out = x > 0 ? x : slope * x on float32 C-contiguous buffers of one size."""
    cdef _FloatView a = _FloatView(x, False), b = _FloatView(out, True)
    if a.n() != b.n():
        raise ValueError("ReLU shapes differ")
    with nogil:
        qe_relu(a.ptr(), b.ptr(), a.n(), slope)


def softmax(const float[:, :, ::1] x, float[:, :, ::1] out):
    """Softmax over axis 1 of x [N,C,HW]."""
    cdef int N = x.shape[0], C = x.shape[1]
    cdef int64_t HW = x.shape[2]
    if out.shape[0] != x.shape[0] or out.shape[1] != x.shape[1] or out.shape[2] != x.shape[2]:
        raise ValueError("softmax shapes differ")
    cdef int n
    with nogil:
        for n in range(N):
            qe_softmax(&x[n, 0, 0], &out[n, 0, 0], C, HW)


def eltwise_sum(list xs, out, coeff=None, bint relu=False):
    """out = sum_i coeff[i] * xs[i] (float32 C-contiguous buffers of one size,
    any shape; coeff None: all 1), then max(out, 0) with relu.  out may be one
    of the inputs."""
    cdef Py_ssize_t k, n_in = len(xs)
    if n_in < 1 or n_in > 64:
        raise ValueError("eltwise_sum takes 1 to 64 inputs")
    cdef const float *ptrs[64]
    cdef float cf[64]
    cdef _FloatView o = _FloatView(out, True), v
    cdef int64_t n = o.n()
    keep = []
    for k in range(n_in):
        v = _FloatView(xs[k], False)
        if v.n() != n:
            raise ValueError("eltwise_sum inputs differ in length")
        keep.append(v)
        ptrs[k] = v.ptr()
    if coeff is not None:
        if len(coeff) != n_in:
            raise ValueError("eltwise_sum needs one coefficient per input")
        for k in range(n_in):
            cf[k] = coeff[k]
    cdef int use_c = coeff is not None
    with nogil:
        qe_eltwise_sum(ptrs, cf if use_c else NULL, <int>n_in, o.ptr(), n, relu)


def affine(x, const float[::1] scale, const float[::1] shift, out, bint relu=False):
    """out[n, c, ...] = scale[c] * x[n, c, ...] + shift[c] on float32 C-contiguous
    buffers [N, C, ...] of one size (then max(out, 0) with relu)."""
    cdef _FloatView a = _FloatView(x, False), b = _FloatView(out, True)
    if a.view.ndim < 2 or a.n() != b.n():
        raise ValueError("affine takes [N, C, ...] buffers of one size")
    cdef int N = <int>a.dim(0), C = <int>a.dim(1), n
    cdef int64_t HW = a.n() // (<int64_t>N * C) if N * C else 0
    if scale.shape[0] != C or shift.shape[0] != C:
        raise ValueError("affine needs one scale and one shift per channel")
    cdef float *px = a.ptr()
    cdef float *py = b.ptr()
    with nogil:
        for n in range(N):
            qe_affine(px + n * C * HW, py + n * C * HW, C, HW, &scale[0], &shift[0], relu)


def clip(x, out, float lo, float hi):
    """out = min(max(x, lo), hi) on float32 C-contiguous buffers of one size."""
    cdef _FloatView a = _FloatView(x, False), b = _FloatView(out, True)
    if a.n() != b.n():
        raise ValueError("clip shapes differ")
    with nogil:
        qe_clip(a.ptr(), b.ptr(), a.n(), lo, hi)


def sigmoid(x, out):
    """out = 1 / (1 + exp(-x)) on float32 C-contiguous buffers of one size."""
    cdef _FloatView a = _FloatView(x, False), b = _FloatView(out, True)
    if a.n() != b.n():
        raise ValueError("sigmoid shapes differ")
    with nogil:
        qe_sigmoid(a.ptr(), b.ptr(), a.n())


def strided_slice(const float[:, :, :, ::1] x, start, step, float[:, :, :, ::1] out):
    """out[n, c, h, w] = x[n, s0 + c*t0, s1 + h*t1, s2 + w*t2] (start s, step t per
    axis C, H, W); every index read must lie inside x."""
    cdef int st[3]
    cdef int sp[3]
    cdef int k, n, N = x.shape[0]
    for k in range(3):
        st[k], sp[k] = start[k], step[k]
        if sp[k] < 1 or st[k] < 0 or out.shape[k + 1] < 1 or \
                st[k] + (out.shape[k + 1] - 1) * <int64_t>sp[k] >= x.shape[k + 1]:
            raise ValueError("strided slice reaches outside its input")
    if out.shape[0] != N:
        raise ValueError("strided slice batch sizes differ")
    with nogil:
        for n in range(N):
            qe_strided_slice(&x[n, 0, 0, 0], x.shape[1], x.shape[2], x.shape[3], st, sp,
                             &out[n, 0, 0, 0], out.shape[1], out.shape[2], out.shape[3])


def pad(const float[:, :, :, ::1] x, pads, float value, float[:, :, :, ::1] out):
    """x [N, C, H, W] padded by pads (before, after on C, H, W; all >= 0) with value."""
    cdef int p[6]
    cdef int k, n, N = x.shape[0]
    for k in range(6):
        p[k] = pads[k]
        if p[k] < 0:
            raise ValueError("pads must not be negative")
    for k in range(3):
        if out.shape[k + 1] != x.shape[k + 1] + <int64_t>p[2 * k] + p[2 * k + 1]:
            raise ValueError("padded shape differs")
    if out.shape[0] != N:
        raise ValueError("pad batch sizes differ")
    with nogil:
        for n in range(N):
            qe_pad(&x[n, 0, 0, 0], x.shape[1], x.shape[2], x.shape[3], p, value, &out[n, 0, 0, 0])


def conv_depthwise(const float[:, :, :, ::1] x, const float[:, :, :, ::1] w,
                   const float[::1] bias, int stride, int pad, bint relu,
                   float[:, :, :, ::1] out, int nthreads=1, int c0=0):
    """Depthwise convolution: x [N,C,H,W], w [C*mult,1,KH,KW] (output o reads input
    channel o // mult), out [N,C*mult,OH,OW] (or channels c0.. of a wider out)."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int Cout = w.shape[0], KH = w.shape[2], KW = w.shape[3], n
    if C < 1 or Cout % C or w.shape[1] != 1 or bias.shape[0] != Cout or KH < 1 or KW < 1 \
            or stride < 1 or pad < 0:
        raise ValueError("depthwise weights do not match the input")
    cdef int64_t OH = (H + 2 * <int64_t>pad - KH) // stride + 1
    cdef int64_t OW = (W + 2 * <int64_t>pad - KW) // stride + 1
    if OH < 1 or OW < 1 or out.shape[0] != N or c0 < 0 or out.shape[1] < c0 + Cout \
            or out.shape[2] != OH or out.shape[3] != OW:
        raise ValueError("output shape does not match the depthwise convolution")
    with nogil:
        for n in range(N):
            qe_depthwise_conv(&x[n, 0, 0, 0], C, H, W, &w[0, 0, 0, 0], Cout // C, KH, KW, stride,
                              pad, &bias[0], relu, &out[n, c0, 0, 0], <int>OH, <int>OW, nthreads)


def unpack_bits(const uint8_t[::1] src, int bits, int64_t n, bint msb_first, uint8_t[::1] out):
    """Unpack n values of `bits` bits into out (see qe_unpack_bits); returns the largest."""
    if bits < 1 or bits > 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    if n < 0 or out.shape[0] < n or src.shape[0] * 8 < n * bits:
        raise ValueError("bit stream too short for the values requested")
    if n == 0:
        return 0
    cdef int mx
    with nogil:
        mx = qe_unpack_bits(&src[0], src.shape[0], bits, msb_first, n, &out[0])
    return mx


def resize_bilinear_ac(const float[:, :, ::1] x, float[:, :, ::1] out):
    """Bilinear align-corners resize of x [C,H,W] into out [C,OH,OW]."""
    if out.shape[0] != x.shape[0] or x.shape[1] < 1 or x.shape[2] < 1 or out.shape[1] < 1 \
            or out.shape[2] < 1:
        raise ValueError("resize shapes are invalid")
    cdef int rc
    with nogil:
        rc = qe_resize_bilinear_ac(&x[0, 0, 0], x.shape[0], x.shape[1], x.shape[2], &out[0, 0, 0],
                                   out.shape[1], out.shape[2])
    if rc != 0:
        raise MemoryError("out of memory in resize")


def qdelta_decode(const uint8_t[::1] planes, int64_t outer, int64_t rows, int64_t cols,
                  double step, float[::1] out):
    """Decode a qdelta2d tensor of outer x rows x cols values (see docs/FORMAT.md)."""
    cdef int64_t n = outer * rows * cols
    if outer < 0 or rows < 0 or cols < 0 or planes.shape[0] != 4 * n or out.shape[0] != n:
        raise ValueError("qdelta2d sizes do not match")
    if n == 0:
        return
    cdef int rc
    with nogil:
        rc = qe_qdelta_decode(&planes[0], outer, rows, cols, step, &out[0])
    if rc != 0:
        raise MemoryError("out of memory decoding a qdelta2d tensor")


def dequantize(const float[:, :, ::1] cb, const uint8_t[:, :, ::1] idx, int cin,
               float[:, :, ::1] out):
    """Dense weights out [R, cin, T] of a quantized layer: codebook cb [M, K, d],
    indices idx [R, T, M] (T kernel taps, 1 for a fully-connected layer)."""
    cdef int M = cb.shape[0], K = cb.shape[1], d = cb.shape[2]
    cdef int64_t R = idx.shape[0]
    cdef int T = idx.shape[1]
    if idx.shape[2] != M or d < 1 or M != (cin + d - 1) // d or out.shape[0] != R \
            or out.shape[1] != cin or out.shape[2] != T:
        raise ValueError("codebook, indices and dense shape do not match")
    if R == 0 or T == 0 or cin == 0:
        return
    cdef int rc
    with nogil:
        rc = qe_dequantize(&cb[0, 0, 0], M, K, d, &idx[0, 0, 0], R, T, cin, &out[0, 0, 0])
    if rc != 0:
        raise ValueError(f"codeword index >= K={K}")


def max_u8(const uint8_t[::1] a):
    """The largest byte of a (0 if empty)."""
    if a.shape[0] == 0:
        return 0
    cdef int mx
    with nogil:
        mx = qe_max_u8(&a[0], a.shape[0])
    return mx


def all_finite(const float[::1] a):
    """True when no value of a is NaN or infinite."""
    if a.shape[0] == 0:
        return True
    cdef int ok
    with nogil:
        ok = qe_all_finite(&a[0], a.shape[0])
    return bool(ok)


ORDERS = ("bgr", "rgb", "gray")


def pixels_to_planar(const uint8_t[::1] px, int H, int W, int ch, str order,
                     float[:, :, ::1] out):
    """Interleaved 8-bit pixels [H, W, ch] (ch 1 = grey, 3 = RGB) -> planar floats
    out [C, H, W] in the channel order "bgr", "rgb" or "gray"."""
    if order not in ORDERS:
        raise ValueError(f"unknown channel order {order!r}")
    cdef int o = ORDERS.index(order)
    if ch not in (1, 3) or H < 1 or W < 1 or px.shape[0] != <int64_t>H * W * ch \
            or out.shape[0] != (1 if o == 2 else 3) or out.shape[1] != H or out.shape[2] != W:
        raise ValueError("pixel buffer and planar shape do not match")
    with nogil:
        qe_pixels_to_planar(&px[0], H, W, ch, o, &out[0, 0, 0])


def crop_mean_scale(const float[:, :, ::1] x, int y0, int x0, const float[:, :, ::1] mean,
                    int my0, int mx0, float scale, bint apply_scale, float[:, :, ::1] out):
    """out = (x[:, y0:y0+h, x0:x0+w] - mean[:, my0:my0+h, mx0:mx0+w]) * scale; mean may be
    None, the scale applies only with apply_scale."""
    cdef int C = out.shape[0], h = out.shape[1], w = out.shape[2]
    if x.shape[0] != C or y0 < 0 or x0 < 0 or y0 + h > x.shape[1] or x0 + w > x.shape[2]:
        raise ValueError("crop window lies outside the image")
    if mean is not None and (mean.shape[0] != C or my0 < 0 or mx0 < 0
                             or my0 + h > mean.shape[1] or mx0 + w > mean.shape[2]):
        raise ValueError("mean window lies outside the mean image")
    if C == 0 or h == 0 or w == 0:
        return
    cdef const float *m = NULL
    cdef int MH = 0, MW = 0
    if mean is not None:
        m = &mean[0, 0, 0]
        MH = mean.shape[1]
        MW = mean.shape[2]
    with nogil:
        qe_crop_mean_scale(&x[0, 0, 0], C, x.shape[1], x.shape[2], y0, x0, m, MH, MW, my0, mx0,
                           scale, apply_scale, h, w, &out[0, 0, 0])


def resize_pixels_ac(const uint8_t[::1] px, int H, int W, int ch, str order,
                     float[:, :, ::1] out):
    """pixels_to_planar() followed by resize_bilinear_ac() into out [C, OH, OW], the
    same numbers, holding two converted input rows instead of the whole image."""
    if order not in ORDERS:
        raise ValueError(f"unknown channel order {order!r}")
    cdef int o = ORDERS.index(order)
    if ch not in (1, 3) or H < 1 or W < 1 or px.shape[0] != <int64_t>H * W * ch \
            or out.shape[0] != (1 if o == 2 else 3) or out.shape[1] < 1 or out.shape[2] < 1:
        raise ValueError("pixel buffer and resized shape do not match")
    cdef int rc
    with nogil:
        rc = qe_resize_pixels_ac(&px[0], H, W, ch, o, &out[0, 0, 0], out.shape[0], out.shape[1],
                                 out.shape[2])
    if rc != 0:
        raise MemoryError("out of memory in resize")


# ---- running Python callables on one OpenMP team --------------------------
cdef void _team_call(list fns, list results, Py_ssize_t i) noexcept with gil:
    # (on the team's other threads, Python makes a thread state for the call
    # and drops it after: they keep nothing between calls, so a caller must
    # not rely on threading.local there)
    try:
        results[i] = (True, fns[i]())
    except BaseException as e:
        results[i] = (False, e)


def run_team(list fns, int nthreads):
    """Calls fns[i]() for every i on an OpenMP team of up to nthreads threads
    (this thread is the first; the others are the threads the kernels' own
    parallel regions use), each holding the GIL only while Python runs.
    Returns [(True, result) or (False, exception)] in order.  The other
    threads hold no Python state between calls (threading.local values set
    there are gone at the next call)."""
    cdef Py_ssize_t i, n = len(fns)
    results = [None] * n
    with nogil:
        for i in prange(n, num_threads=nthreads, schedule="static", chunksize=1):
            _team_call(fns, results, i)
    return results


def core_round_trip_ns(double seconds=0.05):
    """Nanoseconds one cache line takes from one thread of the kernels'
    OpenMP team to another and back (two threads, bounced for about
    `seconds`), or None where two threads cannot run at once: what every
    line the threads of one layer share costs (qbench prints it beside
    multi-thread figures)."""
    cdef double ns
    with nogil:
        ns = qe_core_round_trip_ns(seconds)
    return ns if ns > 0 else None
