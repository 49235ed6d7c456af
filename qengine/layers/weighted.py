"""The weighted layers' shared machinery: product-quantized weights (codebooks
and indices) or dense ones, the one rule for weight shapes and subspaces, the
theoretical cost of either form, and the layouts the kernels read."""
import os
from typing import NamedTuple

from .. import _kernels, buffers
from ..errors import ModelError
from .base import LayerType, Op, check_tensor

# A quantized layer runs densely on its dequantized weights when its tables and
# lookups would cost this many times its dense multiply-adds (same sums either way).
DEQUANTIZE_RATIO = 1.25


class KernelCosts(NamedTuple):
    """What fast mode's kernel choice prices a convolution's work at, in one
    instruction set's float dense multiply-adds (the same sums either way)."""
    lookup_rows_small_k: float  # a lookup from float table rows, K <= 32
    lookup_rows: float          # ... K > 32 (the tables outgrow L1)
    lookup_register: float      # a lookup from 16-bit tables held in registers
    lookup_register_quad: float # ... four taps per register (AVX-512, K <= 16)
    int16: float                # a multiply-add of the int16 dense kernel (qe_i16.h)
    int16_min_macs: int         # ... chosen only with this many multiply-adds per input value
    wino4_overhead: float       # F(4x4, 3x3)'s transforms per 4x4 tile and output channel
    wino45_overhead: float      # F(4x4, 5x5)'s
    wino_weight_stream: float   # reading a transformed weight, per output (see winograd_tile)
    pointwise: float            # a multiply-add of the float pointwise kernel (qe_pw.h)
    pointwise_max_macs: int     # ... chosen for 1x1 layers with fewer multiply-adds per input value


# Measured per layer in interleaved A/B runs, 1 thread (README "Choosing a
# kernel").  AVX2 on a Zen 3: float rows 12 lookups/ns for K <= 32, 7-8 beyond,
# against ~30 dense multiply-adds/ns; int16 (pmaddwd) 0.55-0.75 of a float
# multiply-add from 100 multiply-adds per input value (squeeze layers forced to
# it: 0.87-0.92x).  AVX-512 on a Zen 5 (512-bit units, AlexNet conv1-5 and
# dense SqueezeNet): int16 (vpdpwssd) 0.27-0.37, squeeze layers (16 per input
# value) 1.26-1.45x since session 12's 16-lane input passes (8 per input value:
# 1.03-1.56x, so 16 is the floor) and 1x1 expands (64) 1.4x; register lookups 2.1-2.9 (K = 128,
# one tap per register), 0.7-1.05 (K = 16, four taps per register: AlexNet
# re-quantized with d = 4) and float rows 1.9-2.6 (K = 128), the float dense
# kernel reaching ~45 of the FMA units' ~110 multiply-adds/ns.  Session 12 made
# that kernel 16 lanes wide (~80/ns, AlexNet conv1 1.56x), so every AVX-512
# price is 1.5x the one measured against the 8-lane kernel; float rows with
# K > 32 twice (4.6): exact SqueezeNet's K = 128 layers (d = 2-4, large tables)
# measured 6-9 dense multiply-adds per lookup and run 1.8-3x faster dense,
# while AlexNet's K = 128 layers stay faster as lookups at that price (the
# first, conv5, turns slower-dense at 6.9).  The portable build keeps the
# AVX2 prices.
#
# The float pointwise kernel (1x1, stride 1, unpadded; session 16, Zen 5,
# tools/pointwise_vs_int16.py): 103-118 multiply-adds/ns with 512-bit FMAs,
# 45-54 with AVX2 ones.  Against the int16 kernel (which first makes an int16
# copy of the input) on AVX-512: 1.72x faster at 16 multiply-adds per input
# value, 1.17-1.19x at 32, 0.95x at 48, 0.9x at 64: chosen below 40.  AVX2
# (on the same CPU), against the float dense kernel it replaces: SqueezeNet's
# squeeze layers 1.71x at 16, 1.17-1.24x at 32, 0.95-1.0x at 48-64, its
# 16 -> 64 expands 0.87-0.92x: below 40 as well.
KERNEL_COSTS = {
    "avx2": KernelCosts(2.5, 4.0, 1.5, 1.5, 0.7, 100, 1520, 1700, 7.4, 0.8, 40),
    "avx512": KernelCosts(3.75, 4.6, 3.75, 1.35, 0.45, 16, 1385, 1900, 14.7, 0.7, 40),
}
KERNEL_COSTS["generic"] = KERNEL_COSTS["avx2"]
KERNEL_COSTS["avx512-emulated"] = KERNEL_COSTS["avx512"]   # same plans as the real one


def kernel_costs():
    """The prices of the instruction set the kernels run on now."""
    return KERNEL_COSTS[_kernels.get_isa()]


def pointwise_applies(params):
    """Whether fast mode runs this convolution by the float pointwise kernel
    (qe_pw.h): 1x1, stride 1, no padding, one group, and fewer multiply-adds per
    input value (its output channels) than KernelCosts.pointwise_max_macs;
    always / never with QENGINE_POINTWISE=1 / 0 (where it applies); never when
    QENGINE_INT16=1 asks for int16 alone."""
    p = params
    if list(p["kernel"]) != [1, 1] or p["stride"] != 1 or p["pad"] != 0 or p["group"] != 1:
        return False
    force = os.environ.get("QENGINE_POINTWISE", "")
    if force in ("0", "1"):
        return force == "1"
    if os.environ.get("QENGINE_INT16", "") == "1":
        return False
    return p["num_output"] < kernel_costs().pointwise_max_macs


def int16_pays(in_shape, out_shape, J):
    """Whether fast mode runs a dense convolution (J taps per output) in 16-bit
    integers: where it has enough multiply-adds per input value for this
    instruction set, or always / never with QENGINE_INT16=1 / 0."""
    force = os.environ.get("QENGINE_INT16", "")
    if force in ("0", "1"):
        return force == "1"
    macs = buffers.count(out_shape) * J
    return macs >= kernel_costs().int16_min_macs * buffers.count(in_shape)

# Winograd F(2x2, 3x3) in int16 (qe_wino.h) against the direct int16 kernel:
# per 2x2 outputs and output channel 16 products per virtual input channel
# (stride^2 phases x 3x3 pieces of the kernel per real one) instead of
# 4*KH*KW, plus transforms worth about WINO_OVERHEAD multiply-adds, fitted to
# interleaved runs on a Zen 5 (AVX-512 and AVX2 code alike; README): 3x3 with
# 16 input channels 0.8x, 32 1.2x, 64 1.6x, 256-384 1.9x.  Chosen where the
# model prices it at most WINO_MAX_RATIO of the direct kernel.
WINO_OVERHEAD = 300
WINO_MAX_RATIO = 0.9


def winograd_cost_ratio(params, cin_group, out_shape, tile=2):
    """Its time over the direct int16 kernel's on the same layer (model above;
    odd output sizes compute a last row or column of tiles half used), by
    Winograd form `tile` (_kernels.WINO_FORMS)."""
    kh, kw = params["kernel"]
    virtual = _kernels.wino_pieces(kh, kw, params["stride"])
    _, oh, ow = out_shape
    waste = (-(-oh // 2) * 2) * (-(-ow // 2) * 2) / (oh * ow)
    ratio = (16 * virtual * cin_group + WINO_OVERHEAD) / (4 * kh * kw * cin_group) * waste
    if tile != 2:
        ratio *= winograd_tile_ratio(params, cin_group, out_shape, tile)
    return ratio


# F(4x4, 3x3) against F(2x2, 3x3) (qe_wino.h): 36 products per 4x4 outputs
# instead of 16 per 2x2 (1.78x fewer), but heavier transforms (an overhead of
# KernelCosts.wino4_overhead products per tile and output channel, against
# WINO_OVERHEAD), 2.25x the transformed weights, streamed once per image
# (KernelCosts.wino_weight_stream per weight and output position: it decides
# small outputs), and a last row and column of tiles up to three quarters
# empty.  Fitted to both forms of every Winograd layer of AlexNet and
# SqueezeNet on a Zen 5, interleaved (README): AVX-512 F(4x4) 1.10-1.27x at
# 27x27-55x55 outputs with 48 or more virtual channels, 0.8-0.9x at 13x13;
# AVX2 1.2-1.5x at 27x27, 1.0-1.2x at 55x55, 0.95-1.0x at 13x13 (3-9% rms).
# AVX-512 refitted in session 16 (1830 -> 1385) after sessions 12-15 sped up
# the transforms: SqueezeNet's 32-48 channel 3x3 layers ran F(4x4) 1.08-1.31x
# faster than F(2x2) at 27x27-55x55 in the network (tools/layer_ab.py with
# QENGINE_WINOGRAD_TILE=4), its 16-channel ones 1.22-1.33x faster than the
# direct kernel, and 64 channels at 13x13 0.77-0.93x.  The model has no term
# for the input transform's share (per input channel, amortised over the
# output channels): ResNet-20's 16 -> 16 layers at 32x32 ran F(2x2) 1.6x
# slower than direct, though priced at 0.97 of it (they stay direct).
# F(4x4) doubles the rounding error, so it is chosen only where the model
# prices it at most WINO4_MAX_RATIO of F(2x2).
#
# F(4x4, 5x5) (tile code 45): kernels cut into 5x5 pieces instead of 3x3, 64
# products per 4x4 outputs and piece (an 8x8 patch): a 5x5 kernel takes 64
# instead of F(4x4, 3x3)'s 4 x 36, and the same for a 7x7 stride-2 kernel (4x4
# after space to depth).  Transforms priced by KernelCosts.wino45_overhead,
# fitted on a Zen 5 (interleaved, tools/layer_ab.py with
# QENGINE_WINOGRAD_TILE=45): AlexNet conv2 (5x5, 48 channels per group, 27x27)
# 0.565x F(4x4, 3x3)'s time on AVX-512, 0.58x on AVX2; SqueezeNet conv1 (7x7
# stride 2, 3 channels, 109x109) 0.64x and 0.67x (there the direct kernel is
# faster still).  Its rounding error on AlexNet conv2 (real activations) is
# 1.4x that of F(4x4, 3x3) in pieces.
WINO4_MAX_RATIO = 0.9


def winograd_tile_ratio(params, cin_group, out_shape, tile=4):
    """Winograd form `tile`'s time over F(2x2, 3x3)'s on this layer (model above)."""
    kh, kw = params["kernel"]
    _, oh, ow = out_shape
    c = kernel_costs()

    def time(form, overhead):
        v = _kernels.wino_pieces(kh, kw, params["stride"], form) * cin_group
        m, n = _kernels.wino_outputs(form), _kernels.wino_products(form)
        waste = (-(-oh // m) * m) * (-(-ow // m) * m) / (oh * ow)
        return (n * v + overhead) / m ** 2 * waste + c.wino_weight_stream * n * v / (oh * ow)

    overhead = {2: WINO_OVERHEAD, 4: c.wino4_overhead, 45: c.wino45_overhead}[tile]
    return time(tile, overhead) / time(2, WINO_OVERHEAD)


def winograd_tile(params, cin_group, out_shape):
    """The Winograd form of a layer that runs by Winograd: of F(4x4, 3x3) (4)
    and F(4x4, 5x5) (45), the one winograd_tile_ratio() prices lowest if that
    is at most WINO4_MAX_RATIO, else 2 for F(2x2, 3x3);
    QENGINE_WINOGRAD_TILE=2, 4 or 45 forces one."""
    force = os.environ.get("QENGINE_WINOGRAD_TILE", "")
    if force in ("2", "4", "45"):
        return int(force)
    ratio, tile = min((winograd_tile_ratio(params, cin_group, out_shape, t), t) for t in (4, 45))
    return tile if ratio <= WINO4_MAX_RATIO else 2


def winograd_pays(params, cin_group, out_shape):
    """Whether fast mode runs an int16 convolution (where _kernels.wino_applies:
    kernel up to 15x15, stride up to 8) by Winograd F(2x2, 3x3) instead: where
    winograd_cost_ratio() is at most WINO_MAX_RATIO, or always / never with
    QENGINE_WINOGRAD=1 / 0."""
    kh, kw = params["kernel"]
    if not _kernels.wino_applies(kh, kw, params["stride"]):
        return False
    force = os.environ.get("QENGINE_WINOGRAD", "")
    if force in ("0", "1"):
        return force == "1"
    tile = winograd_tile(params, cin_group, out_shape)
    return winograd_cost_ratio(params, cin_group, out_shape, tile) <= WINO_MAX_RATIO


def subspace_inputs(L, in_shape):
    """The inputs a subspace splits: a convolution's channels per group, or a
    fully-connected layer's flattened input."""
    if L["type"] == "Convolution":
        return in_shape[0] // L["params"]["group"]
    return buffers.count(in_shape)


def dense_shape(L, in_shape):
    """The dense weight tensor's shape: conv [Cout, Cg, KH, KW], fc [Cout, Cin]."""
    cout = L["params"]["num_output"]
    if L["type"] == "Convolution":
        kh, kw = L["params"]["kernel"]
        return (cout, subspace_inputs(L, in_shape), kh, kw)
    return (cout, subspace_inputs(L, in_shape))


def subspace_count(inputs, d):
    """M: how many subspaces of d inputs cover `inputs` (the last may be shorter)."""
    return -(-inputs // d)


def subspaces(L, in_shape, d):
    """M: how many subspaces of d inputs cover the layer's inputs."""
    return subspace_count(subspace_inputs(L, in_shape), d)


def indices_shape(L, in_shape, d):
    """The codeword indices' shape: conv [Cout, KH, KW, M], fc [Cout, M]."""
    shape = dense_shape(L, in_shape)
    M = subspaces(L, in_shape, d)
    if L["type"] == "Convolution":
        return shape[:1] + shape[2:] + (M,)
    return (shape[0], M)


class WeightedType(LayerType):
    """The record rules Convolution and InnerProduct share: their work is their
    dense multiply-adds, their tensors a dense weight and a bias (quantized:
    codebooks and indices standing for the weight)."""

    fuses_relu = True

    def work(self, p, ins, out):
        return layer_cost({"type": self.type, "params": p}, ins[0], out)[0]

    def weight_shapes(self, p, ins):
        return {"weight": dense_shape({"type": self.type, "params": p}, ins[0]),
                "bias": (p["num_output"],)}


def scale_outputs(w, b, s, t):
    """Dense weights (w [Cout, ...], b [Cout]) followed by y = s[c] * y + t[c]
    as one layer (batch norm folded into the convolution before it): w scaled
    per output channel, b -> b * s + t, in float64, returned as float32.  A
    Scale layer's own (scale, shift) fold the same way."""
    import numpy
    s, t = numpy.asarray(s, numpy.float64), numpy.asarray(t, numpy.float64)
    w = numpy.asarray(w, numpy.float64) * s.reshape((-1,) + (1,) * (numpy.ndim(w) - 1))
    return w.astype(numpy.float32), (numpy.asarray(b, numpy.float64) * s + t).astype(numpy.float32)


def layer_cost(L, in_shape, out_shape, K=None, M=None):
    """Theoretical work of a Convolution or InnerProduct layer per image:
    (dense multiply-adds, table multiply-adds, lookups).  With K and M (codebook
    size, subspaces) the lookup-table form, else the dense one (0, 0 for tables).

    A convolution's table holds K inner products per subspace at every padded
    input position the kernel can touch (K x C multiply-adds per position); each
    output then sums one entry per kernel tap and subspace.  A fully-connected
    layer's table holds K x Cin multiply-adds; each output sums M entries."""
    cout = L["params"]["num_output"]
    if L["type"] == "Convolution":
        c, h, w = in_shape
        _, oh, ow = out_shape
        p = L["params"]
        kh, kw = p["kernel"]
        g, pd = p["group"], p["pad"]
        dense = cout * oh * ow * (c // g) * kh * kw
        if K is None:
            return dense, 0, 0
        return dense, g * K * (c // g) * (h + 2 * pd) * (w + 2 * pd), cout * oh * ow * kh * kw * M
    cin = buffers.count(in_shape)
    if K is None:
        return cout * cin, 0, 0
    return cout * cin, K * cin, cout * M


class WeightedOp(Op):
    """A convolution or fully-connected layer.  Built in two steps so that the
    model's resource budget is checked before anything is decoded: the
    constructor reads only the file's tensor table (shapes, encodings) and
    decides the strategy; materialize() then decodes and lays out the weights."""

    weighted = True

    def __init__(self, L, in_shapes, out_shape, qf, opts):
        super().__init__(L, in_shapes, out_shape)
        self.dense_small = opts.get("dense_small", True)
        self.fast = opts.get("fast", False)
        w = L.get("weights")
        self.L_weights = w
        self._qf = qf
        self._where = where = f"layer {self.name!r}"
        if not isinstance(w, dict) or w.get("mode") not in ("lut", "dense"):
            raise ModelError(f"{qf.path}: {where}: missing or unknown weights mode")
        self.mode = w["mode"]
        self.strategy = w["mode"]
        cout = self.params["num_output"]
        if w.get("bias"):
            self._use(w["bias"], "f32", (cout,))
        self._plan(qf, w, where, cout)
        # the kernels index one layer's weights, tables and indices with 32-bit ints
        weights = buffers.count(dense_shape(L, self.in_shapes[0]))
        try:
            _kernels.check_int_range(where, weights=weights, **(
                {"M_K": self.M * self.K * self.d} if self.mode == "lut" else {}))
        except ValueError as e:
            raise ModelError(f"{qf.path}: {e}") from None

    def _use(self, name, dtype, shape):
        """Check a tensor's table entry; count what decoding it costs."""
        check_tensor(self._qf, name, dtype, shape, self._where)
        self.sources[name] = self._qf.decoded_nbytes(name)

    def materialize(self):
        """Decode and lay out this layer's weights (after the budget check)."""
        qf, w, cout = self._qf, self.L_weights, self.params["num_output"]
        self.bias = self._finite(qf.view(w["bias"]) if w.get("bias")
                                 else buffers.zeros((cout,)), "bias")
        if self.mode == "lut":
            self.codebook = self._finite(qf.view(w["codebook"]), "codebook")
        self._load(qf, w, cout)

    def _finite(self, buf, what):
        """buf, refused if it holds NaN or infinity."""
        if not buffers.all_finite(buf):
            raise ModelError(f"{self._qf.path}: {self._where}: {what} holds NaN or infinity")
        return buf

    def model_cost(self):
        lut = self.mode == "lut"
        return layer_cost(self.L, self.in_shapes[0], self.out_shape,
                          self.K if lut else None, self.M if lut else None)

    def _plan_lut(self, qf, w, where, cin, idx_prefix):
        """Check the codebook's and the indices' entries: the M subspaces must
        cover the cin input channels and the indices be idx_prefix + (M,)."""
        e = qf.entry(w["codebook"])
        if e["dtype"] != "f32" or len(e["shape"]) != 3:
            raise ModelError(f"{qf.path}: {where}: codebook must be float32 [M, K, d]")
        M, K, d = e["shape"]
        if not (1 <= K <= 256 and d >= 1):
            raise ModelError(f"{qf.path}: {where}: codebook K={K}, d={d} out of range")
        if M != -(-cin // d):
            raise ModelError(f"{qf.path}: {where}: {M} subspaces of d={d} do not cover {cin} "
                             f"inputs")
        self._use(w["codebook"], "f32", (M, K, d))
        check_tensor(qf, w["indices"], "u8", tuple(idx_prefix) + (M,), where)
        self.codebook, self.indices = None, None
        self.M, self.K, self.d = M, K, d
        self._idx_name = w["indices"]

    def _use_unpacked_indices(self):
        self.sources[self._idx_name] = self._qf.decoded_nbytes(self._idx_name)

    def _check_top(self, top):
        if top >= self.K:
            raise ModelError(f"{self._qf.path}: {self._where}: codeword index {top} >= "
                             f"K={self.K}")

    def _unpacked_indices(self):
        """The indices as stored, unpacked to bytes, every one checked < K."""
        idx = self._qf.view(self._idx_name)
        self._check_top(_kernels.max_u8(buffers.reshape(idx, (-1,))))
        if self._qf.entry(self._idx_name).get("bits"):
            self._qf.release(self._idx_name)     # unpacked into a buffer of its own
        return idx

    def stored_indices(self):
        """The codeword indices as stored in the file (the kernels may hold them re-laid)."""
        return self._qf.tensor(self._idx_name)


def dequantize(codebook, indices, cin):
    """Dense weights [R, cin, T] from a codebook [M, K, d] and indices [R, T, M] (buffers)."""
    R, T, _ = indices.shape
    out = buffers.empty((R, cin, T))
    _kernels.dequantize(codebook, indices, cin, out)
    return out


def dequantize_conv(codebook, indices, cin_group):
    """Dense weights [Cout, Cg, KH, KW] (numpy) of a quantized convolution:
    w[o, m*d + c, kh, kw] = codebook[m, indices[o, kh, kw, m], c]."""
    import numpy as np
    idx = np.ascontiguousarray(indices, np.uint8)
    cout, kh, kw, M = idx.shape
    w = dequantize(np.ascontiguousarray(codebook, np.float32), idx.reshape(cout, kh * kw, M),
                    cin_group)
    return buffers.to_numpy(w).reshape(cout, cin_group, kh, kw)


def dequantize_fc(codebook, indices, cin):
    """Dense weights [Cout, Cin] (numpy) of a quantized fully-connected layer."""
    import numpy as np
    idx = np.ascontiguousarray(indices, np.uint8)
    w = dequantize(np.ascontiguousarray(codebook, np.float32), idx[:, None, :], cin)
    return buffers.to_numpy(w).reshape(idx.shape[0], cin)


def blocked_conv_weights(w, groups):
    """Dense weights [Cout, Cg, KH, KW] (a buffer) -> the dense kernel's blocked layout."""
    cout = w.shape[0]
    w2 = buffers.reshape(w, (cout, -1))
    out = buffers.empty(_kernels.conv_blocked_shape(cout, groups, w2.shape[1]))
    _kernels.block_conv_weights(w2, groups, out)
    return out


def conv16_k_limit():
    """Largest K whose convolutions fast mode runs on 16-bit register tables:
    the instruction set's default, or with QENGINE_CONV16=1 every K it can
    hold in registers (=0: never)."""
    force = os.environ.get("QENGINE_CONV16", "")
    if force == "1":
        return _kernels.conv16_max_k()
    if force == "0":
        return 0
    return _kernels.conv16_auto_k()


def block_fc_indices(asmt, K):
    """Indices [Cout, M] -> the blocked layout the fully-connected kernel reads:
    for each block of fc_block(K) subspaces, that block's [Cout, mb] indices."""
    out = buffers.empty(asmt.shape, "B")
    _kernels.block_fc_indices(asmt, K, out)
    return out


def fc_codebook_t(codebook):
    """Codebook [M, K, d] -> [M, d, K], the layout the fully-connected kernels
    build their tables from."""
    M, K, d = codebook.shape
    out = buffers.empty((M, d, K))
    _kernels.fc_codebook_t(codebook, out)
    return out


def fc_register_layout(asmt, shape=None, bits=8):
    """Indices [Cout, M] -> the layout of the register-lookup FC kernels (fc_q8,
    fc_f32); `asmt` may also be the packed stream of `bits`-bit values of `shape`.
    Returns the layout and the largest index."""
    cout, M = shape or asmt.shape
    out = buffers.empty((_kernels.fc_q8_layout_size(cout, M),), "B")
    top = _kernels.fc_q8_layout(buffers.reshape(asmt, (-1,)), bits, cout, M, out)
    return out, top
