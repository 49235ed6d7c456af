"""Layers that join, split or reshape feature maps: Concat (channels), Eltwise
(sum of branches, the residual connection; fused with the ReLU after it),
Flatten, StridedSlice and Pad."""
from .. import _kernels, buffers
from ..errors import ModelError
from .base import MAX_DIM, LayerType, Op, is_int_list, is_num, need_chw, np, register


class ConcatOp(Op):
    def run(self, xs, ws, nthreads, relu):
        return buffers.concat(xs, 1)


@register
class Concat(LayerType):
    """axis (1 only): inputs joined along channels."""

    type = "Concat"
    inputs = (1, 64)
    Op = ConcatOp

    def check(self, p, need):
        need(p.get("axis") == 1, "axis")

    def shape(self, p, ins, where):
        if any(len(s) != len(ins[0]) or s[1:] != ins[0][1:] for s in ins):
            raise ModelError(f"{where}: inputs {[list(s) for s in ins]} differ in spatial size")
        return (sum(s[0] for s in ins),) + tuple(ins[0][1:])

    def reference(self, p, xs, wb):
        return np().concatenate(xs, axis=1)


class EltwiseOp(Op):
    def can_overwrite(self, k):
        return True

    def run(self, xs, ws, nthreads, relu, reuse=None):
        """reuse: an input buffer no later layer reads, to write the sum into."""
        out = reuse if reuse is not None else buffers.empty(xs[0].shape)
        _kernels.eltwise_sum(xs, out, self.params.get("coeff"), relu)
        return out


@register
class Eltwise(LayerType):
    """operation ("SUM"), optional coeff (one float per input, default 1):
    the inputs, all of one shape, summed."""

    type = "Eltwise"
    inputs = (2, 64)
    fuses_relu = True
    Op = EltwiseOp

    def check(self, p, need):
        need(p.get("operation") == "SUM", "operation")
        c = p.get("coeff")
        need(c is None or (isinstance(c, list) and all(is_num(v) for v in c)), "coeff")

    def shape(self, p, ins, where):
        if any(s != ins[0] for s in ins):
            raise ModelError(f"{where}: inputs {[list(s) for s in ins]} differ in shape")
        if p.get("coeff") is not None and len(p["coeff"]) != len(ins):
            raise ModelError(f"{where}: {len(p['coeff'])} coefficients for {len(ins)} inputs")
        return ins[0]

    def work(self, p, ins, out):
        return buffers.count(out) * len(ins)

    def reference(self, p, xs, wb):
        n_ = np()
        coeff = p.get("coeff") or [1.0] * len(xs)
        acc = n_.zeros(xs[0].shape, n_.float64)
        for c, x in zip(coeff, xs):
            acc += n_.float32(c) * x
        return acc.astype(n_.float32)


class FlattenOp(Op):
    strategy = "none"
    aliases_input = True

    def run(self, xs, ws, nthreads, relu):
        return buffers.reshape(xs[0], (xs[0].shape[0], -1))


@register
class Flatten(LayerType):
    """No params: [C, H, W] -> [C*H*W] (no copy)."""

    type = "Flatten"
    Op = FlattenOp

    def shape(self, p, ins, where):
        return (buffers.count(ins[0]),)

    def work(self, p, ins, out):
        return 0

    def reference(self, p, xs, wb):
        return xs[0].reshape(xs[0].shape[0], -1)


def slice_shape(p, x):
    return tuple(-(-(e - s) // t) for s, e, t in zip(p["start"], p["stop"], p["step"]))


class StridedSliceOp(Op):
    def run(self, xs, ws, nthreads, relu):
        x = xs[0]
        out = self.new_out(x.shape[0])
        _kernels.strided_slice(x, self.params["start"], self.params["step"], out)
        return out


@register
class StridedSlice(LayerType):
    """start, stop, step: three integers each, for C, H, W; 0 <= start < stop <=
    size and step >= 1: x[start:stop:step] on every axis (ResNet's "option A"
    shortcut takes every second row and column)."""

    type = "StridedSlice"
    Op = StridedSliceOp

    def check(self, p, need):
        for key, lo in (("start", 0), ("stop", 1), ("step", 1)):
            need(is_int_list(p.get(key), 3, lo, MAX_DIM), key)
        need(all(s < e for s, e in zip(p["start"], p["stop"])), "start or stop")

    def shape(self, p, ins, where):
        x = need_chw(ins[0], where)
        if any(e > n for e, n in zip(p["stop"], x)):
            raise ModelError(f"{where}: stop {p['stop']} beyond the input {list(x)}")
        return slice_shape(p, x)

    def reference(self, p, xs, wb):
        (c0, h0, w0), (c1, h1, w1), (cs, hs, ws) = p["start"], p["stop"], p["step"]
        return np().ascontiguousarray(xs[0][:, c0:c1:cs, h0:h1:hs, w0:w1:ws])


class PadOp(Op):
    def run(self, xs, ws, nthreads, relu):
        x = xs[0]
        out = self.new_out(x.shape[0])
        _kernels.pad(x, self.params["pads"], self.params["value"], out)
        return out


@register
class Pad(LayerType):
    """pads: six integers >= 0 (before and after on C, H, W), value (float):
    constant padding, also of the channel axis (ResNet's "option A" shortcut
    pads channels with zeros)."""

    type = "Pad"
    Op = PadOp

    def check(self, p, need):
        need(is_int_list(p.get("pads"), 6, 0, MAX_DIM), "pads")
        need(is_num(p.get("value")), "value")

    def shape(self, p, ins, where):
        c, h, w = need_chw(ins[0], where)
        q = p["pads"]
        return (c + q[0] + q[1], h + q[2] + q[3], w + q[4] + q[5])

    def reference(self, p, xs, wb):
        q = p["pads"]
        return np().pad(xs[0], ((0, 0), (q[0], q[1]), (q[2], q[3]), (q[4], q[5])),
                        constant_values=p["value"]).astype(np().float32)
