"""Convolution: a record of its rules and the op that runs it (dense, or by
lookup tables of product-quantized weights: float rows, or 16-bit tables held
in SIMD registers in fast mode)."""
import os

from .. import _kernels, buffers
from ..errors import ModelError
from .base import MAX_DIM, conv_output, is_int, need_chw, np, register
from .weighted import (int16_pays, kernel_costs, WeightedOp, WeightedType, blocked_conv_weights,
                       conv16_k_limit, dequantize, dequantize_conv, layer_cost, pointwise_applies,
                       winograd_pays, winograd_cost_ratio, winograd_tile)


class ConvOp(WeightedOp):
    def _plan(self, qf, w, where, cout):
        c, h, wd = self.in_shapes[0]
        p = self.params
        self.kh, self.kw = p["kernel"]
        self.group = p["group"]
        cg = c // self.group
        J = self.kh * self.kw
        blocked = 4 * buffers.count(_kernels.conv_blocked_shape(cout, self.group, cg * J))
        # one input channel per group (depthwise, MobileNet's 3x3 layers): a
        # direct kernel of its own, on the dense or dequantized weights
        depthwise = cg == 1 and self.dense_small
        if self.mode != "lut":
            self.strategy = "depthwise" if depthwise else "dense"
            self._use(w["weight"], "f32", (cout, cg, self.kh, self.kw))
            self.derived_bytes = 0 if depthwise else blocked
            if not depthwise and self._pointwise():
                self.strategy = "pointwise"
                self.derived_bytes = self._pointwise_bytes(cout, cg)
            elif not depthwise and self._int16_pays(cg * J):
                self.strategy = "int16"
                self.derived_bytes = self._int16_bytes(cout, cg * J)
                self._maybe_winograd(cout, cg, 0)
            return
        self._plan_lut(qf, w, where, cg, (cout, self.kh, self.kw))
        self._use_unpacked_indices()
        if depthwise:
            self.strategy = "depthwise"
            self.derived_bytes = 4 * cout * J
            return
        # A first layer with fewer input channels than the subspace dimension
        # (AlexNet's conv1: 3 of d=8) gains nothing from tables: each table
        # entry would replace under d multiply-adds while the table is K
        # times larger than the input.  Run it densely on the dequantized
        # weights, the same sums in another order.  So is any layer whose
        # tables and lookups would cost more than its dense multiply-adds,
        # each lookup priced by the kernel that would do it (small d with
        # float table rows, 1x1 convolutions with few outputs, for example).
        self.strategy = "lut"
        dense_cost, table, lookups = self.cost()
        register = (self.fast and self.K <= conv16_k_limit()
                    and J * self.M <= _kernels.C16_MAX_TAPS)
        # four taps per register (AVX-512, K <= 16); QENGINE_CONV16_QUAD=0 keeps
        # one tap per register (for A/B runs on a Zen 4, see README)
        quad = (register and _kernels.conv16_quad(self.K)
                and os.environ.get("QENGINE_CONV16_QUAD", "") != "0")
        costs = kernel_costs()
        per_lookup = (costs.lookup_register_quad if quad else
                      costs.lookup_register if register else
                      costs.lookup_rows_small_k if self.K <= 32 else costs.lookup_rows)
        # register tables are built in two passes (ranges, then entries)
        table_cost = 2 * table if register else table
        # a first layer with fewer channels than d stays dense: its lookup
        # form measured 0.83x of the dense kernel with register tables on
        # AVX2 (AlexNet K=16 conv1, README), untimed on AVX-512
        if self.dense_small and ((self.M == 1 and cg < self.d)
                                 or table_cost + per_lookup * lookups
                                 > dense_cost * self._dense_cost_ratio(cg * J)):
            self.strategy = "dequantized"
            self.derived_bytes = 4 * cout * cg * J + blocked   # dense, then blocked
            if self._pointwise():
                self.strategy = "pointwise"
                self.derived_bytes = 4 * cout * cg * J + self._pointwise_bytes(cout, cg)
            elif self._int16_pays(cg * J):
                self.strategy = "int16"
                self.derived_bytes = 4 * cout * cg * J + self._int16_bytes(cout, cg * J)
                self._maybe_winograd(cout, cg, 4 * cout * cg * J)
        elif register:
            # fast: 16-bit tables looked up inside SIMD registers, where this
            # instruction set can hold K entries (see README, "Fast mode")
            self.strategy = "lut16"
            self.quad = quad
            self.layout16 = _kernels.conv16_layout_shape(cout, self.group, J * self.M,
                                                         self.quad)
            self.derived_bytes = buffers.count(self.layout16)

    def _int16_pays(self, J):
        """Fast mode runs this dense (or dequantized) convolution in 16-bit
        integers (qe_i16.h) where that measured faster than float: see
        int16_pays() in weighted.py."""
        return self.fast and int16_pays(self.in_shapes[0], self.out_shape, J)

    def _pointwise(self):
        """Fast mode runs a 1x1 convolution with few outputs per input value by
        the float pointwise kernel (qe_pw.h): see pointwise_applies() in weighted.py."""
        return self.fast and pointwise_applies(self.params)

    def _pointwise_bytes(self, cout, cin):
        return 4 * buffers.count(_kernels.pw_weights_shape(cout, cin))

    def _dense_cost_ratio(self, J):
        """What a dense multiply-add costs in this mode, in float ones."""
        if self._pointwise():
            return kernel_costs().pointwise
        if not self._int16_pays(J):
            return 1.0
        cg = self.in_shapes[0][0] // self.group
        if winograd_pays(self.params, cg, self.out_shape):
            return kernel_costs().int16 * winograd_cost_ratio(
                self.params, cg, self.out_shape,
                winograd_tile(self.params, cg, self.out_shape))
        return kernel_costs().int16

    def _int16_bytes(self, cout, J):
        return 2 * buffers.count(_kernels.i16_weights_shape(cout, self.group, J)) + 4 * cout

    def _maybe_winograd(self, cout, cg, dense_bytes):
        """An int16 convolution runs by Winograd's F(2x2, 3x3) or F(4x4, 3x3)
        where that pays (qe_wino.h, weighted.winograd_pays and winograd_tile)."""
        if winograd_pays(self.params, cg, self.out_shape):
            self.strategy = "winograd"
            self.wino_tile = winograd_tile(self.params, cg, self.out_shape)
            u, sc = _kernels.wino_weights_shape(cout, self.group, cg * self.group, self.kh,
                                                self.kw, self.params["stride"], self.wino_tile)
            self.derived_bytes = dense_bytes + 2 * buffers.count(u) + 4 * buffers.count(sc)

    def _load(self, qf, w, cout):
        cg = self.in_shapes[0][0] // self.group
        if self.strategy in ("dense", "depthwise", "int16", "winograd", "pointwise") \
                and self.mode != "lut":
            self.weight = self._finite(qf.view(w["weight"]), "weight tensor")
            if self.strategy == "dense":
                self.weight_blocked = blocked_conv_weights(self.weight, self.group)
            elif self.strategy == "pointwise":
                self._lay_out_pointwise(self.weight)
            elif self.strategy == "int16":
                self._lay_out_int16(self.weight)
            elif self.strategy == "winograd":
                self._lay_out_winograd(self.weight)
            return
        self.indices = self._unpacked_indices()
        taps = self.kh * self.kw
        if self.strategy == "depthwise":
            self.weight = buffers.reshape(
                dequantize(self.codebook, buffers.reshape(self.indices, (cout, taps, self.M)), cg),
                (cout, 1, self.kh, self.kw))
            return
        if self.strategy == "dequantized":
            self.weight_blocked = blocked_conv_weights(
                dequantize(self.codebook, buffers.reshape(self.indices, (cout, taps, self.M)),
                            cg), self.group)
        elif self.strategy == "pointwise":
            self._lay_out_pointwise(dequantize(self.codebook,
                                               buffers.reshape(self.indices, (cout, taps, self.M)),
                                               cg))
        elif self.strategy == "int16":
            self._lay_out_int16(dequantize(self.codebook,
                                           buffers.reshape(self.indices, (cout, taps, self.M)),
                                           cg))
        elif self.strategy == "winograd":
            self._lay_out_winograd(dequantize(self.codebook,
                                              buffers.reshape(self.indices, (cout, taps, self.M)),
                                              cg))
        elif self.strategy == "lut16":
            self.indices16 = buffers.empty(self.layout16, "B")
            _kernels.conv16_layout(buffers.reshape(self.indices, (cout, taps * self.M)),
                                   self.group, self.indices16, self.quad)
            self.indices = None

    def _lay_out_pointwise(self, w):
        cout = w.shape[0]
        w2 = buffers.reshape(w, (cout, -1))
        self.weight_pw = buffers.empty(_kernels.pw_weights_shape(cout, w2.shape[1]))
        _kernels.pw_conv_weights(w2, self.weight_pw)

    def _lay_out_int16(self, w):
        cout = w.shape[0]
        w2 = buffers.reshape(w, (cout, -1))
        self.weight16 = buffers.empty(_kernels.i16_weights_shape(cout, self.group, w2.shape[1]),
                                      "h")
        self.scale16 = buffers.empty((cout,))
        self.bound16 = _kernels.i16_conv_weights(w2, self.group, self.weight16, self.scale16)

    def _lay_out_winograd(self, w):
        cout = w.shape[0]
        w4 = buffers.reshape(w, (cout, -1, self.kh, self.kw))
        stride = self.params["stride"]
        u, sc = _kernels.wino_weights_shape(cout, self.group, w4.shape[1] * self.group, self.kh,
                                            self.kw, stride, self.wino_tile)
        self.weight_wino = buffers.empty(u, "h")
        self.scale_wino = buffers.empty(sc)
        self.bound_wino = _kernels.wino_conv_weights(w4, self.group, self.weight_wino,
                                                     self.scale_wino, stride, self.wino_tile)

    def workspace(self):
        c, h, w = self.in_shapes[0]
        g = self.group
        if self.strategy in ("depthwise", "pointwise"):
            return 0
        if self.strategy == "winograd":
            return _kernels.wino_workspace_floats(c // g, h, w, self.params["pad"],
                                                  self.params["num_output"] // g, self.kh,
                                                  self.kw, self.params["stride"], self.wino_tile)
        if self.strategy == "int16":
            return _kernels.i16_workspace_floats(c // g, h, w, self.kh, self.kw,
                                                 self.params["stride"], self.params["pad"],
                                                 self.params["num_output"] // g)
        if self.strategy == "lut16":
            return _kernels.conv16_workspace_floats(c // g, h, w, self.kh, self.kw,
                                                    self.params["stride"], self.params["pad"],
                                                    self.M, self.K, self.d,
                                                    self.params["num_output"] // g)
        if self.strategy == "lut":
            return _kernels.conv_workspace_floats(c // g, h, w, self.kh, self.kw, self.params["stride"],
                                                  self.params["pad"], self.M, self.K,
                                                  self.params["num_output"] // g)
        return _kernels.conv_workspace_floats(c // g, h, w, self.kh, self.kw, self.params["stride"],
                                              self.params["pad"], 0, 0,
                                              self.params["num_output"] // g)

    def cost(self):
        lut = self.strategy in ("lut", "lut16")
        return layer_cost(self.L, self.in_shapes[0], self.out_shape,
                          self.K if lut else None, self.M if lut else None)

    def run(self, xs, ws, nthreads, relu, into=None):
        """into: (buffer, c0) to write channels c0.. of a wider buffer (a
        concatenation's output) instead of a new one."""
        x = xs[0]
        out, c0 = into if into is not None else (self.new_out(x.shape[0]), 0)
        p = self.params
        if self.strategy == "depthwise":
            _kernels.conv_depthwise(x, self.weight, self.bias, p["stride"], p["pad"], relu, out,
                                    nthreads, c0)
        elif self.strategy == "lut16":
            _kernels.conv16(x, self.codebook, self.indices16, self.kh, self.kw, self.bias,
                            p["stride"], p["pad"], relu, out, ws, nthreads, self.quad, c0)
        elif self.strategy == "winograd":
            _kernels.conv_wino(x, self.weight_wino, self.scale_wino, self.bound_wino, self.bias,
                               self.kh, self.kw, p["stride"], p["pad"], relu, out, ws, nthreads,
                               c0, self.wino_tile)
        elif self.strategy == "int16":
            _kernels.conv_i16(x, self.weight16, self.scale16, self.bound16, self.bias, self.kh,
                              self.kw, p["stride"], p["pad"], relu, out, ws, nthreads, c0)
        elif self.strategy == "pointwise":
            _kernels.conv_pw(x, self.weight_pw, self.bias, relu, out, nthreads, c0)
        elif self.strategy == "lut":
            _kernels.conv_lut(x, self.codebook, self.indices, self.bias, p["stride"], p["pad"],
                              self.group, relu, out, ws, nthreads, c0)
        else:
            _kernels.conv_dense(x, self.weight_blocked, self.bias, self.kh, self.kw, p["stride"],
                                p["pad"], relu, out, ws, nthreads, c0)
        return out



    def dense_weights(self):
        """(w [Cout, Cg, KH, KW], bias) as numpy arrays: dequantized when quantized."""
        import numpy
        cg = self.in_shapes[0][0] // self.group
        w = (dequantize_conv(self.codebook, self.stored_indices(), cg) if self.mode == "lut"
             else self.weight)
        return numpy.asarray(w), numpy.asarray(self.bias)



def conv2d(x, w, b, stride=1, pad=0, groups=1):
    """numpy: x [N,C,H,W], w [Cout,C/groups,KH,KW] -> [N,Cout,OH,OW] (im2col, float64)."""
    n_ = np()
    n, c, h, wd = x.shape
    cout, cg, kh, kw = w.shape
    xp = n_.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - kh) // stride + 1
    ow = (wd + 2 * pad - kw) // stride + 1
    og = cout // groups
    out = n_.empty((n, cout, oh, ow), n_.float64)
    for g in range(groups):
        xs = xp[:, g * cg:(g + 1) * cg]
        cols = n_.empty((n, cg, kh, kw, oh, ow), n_.float64)
        for i in range(kh):
            for j in range(kw):
                cols[:, :, i, j] = xs[:, :, i:i + stride * (oh - 1) + 1:stride,
                                      j:j + stride * (ow - 1) + 1:stride]
        wg = w[g * og:(g + 1) * og].reshape(og, -1).astype(n_.float64)
        out[:, g * og:(g + 1) * og] = n_.einsum("ok,nkp->nop", wg,
                                                cols.reshape(n, cg * kh * kw, oh * ow)
                                                ).reshape(n, og, oh, ow)
    if b is not None:
        out += n_.asarray(b, n_.float64)[None, :, None, None]
    return out.astype(n_.float32)


@register
class Convolution(WeightedType):
    """num_output, kernel [kh, kw], stride, pad, group, bias_term (bool)."""

    type = "Convolution"
    Op = ConvOp

    def check(self, p, need):
        need(is_int(p.get("num_output"), 1, MAX_DIM), "num_output")
        k = p.get("kernel")
        need(isinstance(k, list) and len(k) == 2 and all(is_int(v, 1, 4096) for v in k),
             "kernel")
        need(is_int(p.get("stride"), 1, 4096), "stride")
        need(is_int(p.get("pad"), 0, 4096), "pad")
        need(is_int(p.get("group"), 1, MAX_DIM), "group")

    def shape(self, p, ins, where):
        c, h, w = need_chw(ins[0], where)
        kh, kw = p["kernel"]
        grp = p["group"]
        if c % grp or p["num_output"] % grp:
            raise ModelError(f"{where}: group {grp} does not divide {c} input and "
                             f"{p['num_output']} output channels")
        if h + 2 * p["pad"] < kh or w + 2 * p["pad"] < kw:
            raise ModelError(f"{where}: kernel {kh}x{kw} larger than the padded input {h}x{w}")
        # a pad beyond the input's size only adds outputs made of padding (real
        # models pad by up to the kernel: SqueezeNet's 1x1 conv10 by 1), a
        # stride beyond the padded input skips all but one row
        if p["pad"] > max(h, w) or p["stride"] > max(h, w) + 2 * p["pad"]:
            raise ModelError(f"{where}: pad {p['pad']} or stride {p['stride']} out of range "
                             f"for kernel {kh}x{kw} on input {h}x{w}")
        return (p["num_output"], conv_output(h, kh, p["stride"], p["pad"]),
                conv_output(w, kw, p["stride"], p["pad"]))

    def reference(self, p, xs, wb):
        return conv2d(xs[0], wb[0], wb[1], p["stride"], p["pad"], p["group"])
