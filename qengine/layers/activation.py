"""Element-wise activations and the layers that pass their input through:
ReLU (leaky), Clip (ReLU6), Sigmoid, Softmax over channels, Dropout."""
from .. import _kernels, buffers
from .base import LayerType, Op, is_num, np, register


class ReLUOp(Op):
    def run(self, xs, ws, nthreads, relu):
        x = xs[0]
        out = buffers.empty(x.shape)
        _kernels.relu(x, out, self.params["negative_slope"])
        return out


@register
class ReLU(LayerType):
    """negative_slope (float; 0: plain ReLU, else leaky)."""

    type = "ReLU"
    in_place = True
    Op = ReLUOp

    def check(self, p, need):
        need(is_num(p.get("negative_slope")), "negative_slope")

    def reference(self, p, xs, wb):
        n_ = np()
        x = xs[0]
        return n_.where(x > 0, x, x * n_.float32(p["negative_slope"])).astype(n_.float32)


class ClipOp(Op):
    def run(self, xs, ws, nthreads, relu):
        x = xs[0]
        out = buffers.empty(x.shape)
        _kernels.clip(x, out, self.params["min"], self.params["max"])
        return out


@register
class Clip(LayerType):
    """min, max (floats, min <= max): ReLU6 is min 0, max 6."""

    type = "Clip"
    in_place = True
    Op = ClipOp

    def check(self, p, need):
        need(is_num(p.get("min")) and is_num(p.get("max")) and p["min"] <= p["max"],
             "min or max")

    def reference(self, p, xs, wb):
        n_ = np()
        return n_.clip(xs[0], n_.float32(p["min"]), n_.float32(p["max"])).astype(n_.float32)


class SigmoidOp(Op):
    def run(self, xs, ws, nthreads, relu):
        x = xs[0]
        out = buffers.empty(x.shape)
        _kernels.sigmoid(x, out)
        return out


@register
class Sigmoid(LayerType):
    """No params: 1 / (1 + exp(-x))."""

    type = "Sigmoid"
    in_place = True
    Op = SigmoidOp

    def work(self, p, ins, out):
        return 4 * buffers.count(out)

    def reference(self, p, xs, wb):
        n_ = np()
        return (1.0 / (1.0 + n_.exp(-xs[0].astype(n_.float64)))).astype(n_.float32)


class SoftmaxOp(Op):
    def run(self, xs, ws, nthreads, relu):
        x = xs[0]
        out = buffers.empty(x.shape)
        n, c = x.shape[:2]
        _kernels.softmax(buffers.reshape(x, (n, c, -1)), buffers.reshape(out, (n, c, -1)))
        return out


@register
class Softmax(LayerType):
    """No params: softmax over channels (axis 1) at every position."""

    type = "Softmax"
    Op = SoftmaxOp

    def reference(self, p, xs, wb):
        n_ = np()
        x64 = xs[0].astype(n_.float64)
        e = n_.exp(x64 - x64.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(n_.float32)


class PassOp(Op):
    strategy = "none"
    aliases_input = True

    def run(self, xs, ws, nthreads, relu):
        return xs[0]


@register
class Dropout(LayerType):
    """No params: the identity at inference."""

    type = "Dropout"
    in_place = True
    Op = PassOp

    def work(self, p, ins, out):
        return 0

    def reference(self, p, xs, wb):
        return xs[0]
