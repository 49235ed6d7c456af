"""Normalisation layers: LRN across channels, and Scale, a per-channel affine
y = scale[c] * x + shift[c] (a batch normalisation that follows no convolution,
Caffe's Scale, a multiplication by a constant)."""
from .. import _kernels, buffers
from ..errors import ModelError
from .base import LayerType, Op, check_tensor, is_int, is_num, need_chw, np, register


class LRNOp(Op):
    def can_overwrite(self, k):
        # each channel's output is stored once the window's inputs are read
        return self.params["local_size"] <= _kernels.LRN_MAX_IN_PLACE

    def run(self, xs, ws, nthreads, relu, reuse=None):
        """reuse: the input, when no later layer reads it: normalised in place
        (no cold output buffer to fill)."""
        x = xs[0]
        out = reuse if reuse is not None else buffers.empty(x.shape)
        p = self.params
        _kernels.lrn(x, out, p["local_size"], p["alpha"], p["beta"], p["k"], nthreads)
        return out


@register
class LRN(LayerType):
    """local_size (odd int), alpha, beta, k (floats): Caffe's across-channel LRN."""

    type = "LRN"
    Op = LRNOp

    def check(self, p, need):
        need(is_int(p.get("local_size"), 1, 1023) and p["local_size"] % 2 == 1, "local_size")
        need(all(is_num(p.get(k)) for k in ("alpha", "beta", "k")), "alpha, beta or k")
        need(p["k"] > 0 or p["alpha"] > 0, "k")

    def shape(self, p, ins, where):
        return need_chw(ins[0], where)

    def work(self, p, ins, out):
        return buffers.count(out) * (p["local_size"] + 4)

    def reference(self, p, xs, wb):
        n_ = np()
        x = xs[0]
        size, alpha, beta, k = p["local_size"], p["alpha"], p["beta"], p["k"]
        sq = x.astype(n_.float64) ** 2
        c = x.shape[1]
        pre = (size - 1) // 2
        s = n_.zeros_like(sq)
        for i in range(c):
            s[:, i] = sq[:, max(0, i - pre):min(c, i - pre + size)].sum(axis=1)
        return (x / (k + alpha / size * s) ** beta).astype(n_.float32)


class ScaleOp(Op):
    """Reads its two [C] tensors named by the layer's weights {"scale", "shift"}."""

    def __init__(self, L, in_shapes, out_shape, qf, opts):
        super().__init__(L, in_shapes, out_shape)
        self._qf = qf
        w = L.get("weights")
        where = f"layer {self.name!r}"
        if not isinstance(w, dict) or not isinstance(w.get("scale"), str) \
                or not isinstance(w.get("shift"), str):
            raise ModelError(f"{qf.path}: {where}: needs weights {{'scale', 'shift'}}")
        self._names = (w["scale"], w["shift"])
        C = in_shapes[0][0]
        for n in self._names:
            check_tensor(qf, n, "f32", (C,), where)
            self.sources[n] = qf.decoded_nbytes(n)

    def materialize(self):
        self.scale, self.shift = (self._qf.view(n) for n in self._names)
        for what, buf in (("scale", self.scale), ("shift", self.shift)):
            if not buffers.all_finite(buf):
                raise ModelError(f"{self._qf.path}: layer {self.name!r}: {what} holds NaN or "
                                 f"infinity")

    def dense_weights(self):
        import numpy
        return numpy.asarray(self.scale), numpy.asarray(self.shift)

    def run(self, xs, ws, nthreads, relu):
        x = xs[0]
        out = buffers.empty(x.shape)
        _kernels.affine(x, self.scale, self.shift, out, relu)
        return out


@register
class Scale(LayerType):
    """No params; weights {"scale": tensor [C], "shift": tensor [C]}."""

    type = "Scale"
    in_place = True
    fuses_relu = True
    Op = ScaleOp

    def weight_shapes(self, p, ins):
        return {"scale": (ins[0][0],), "shift": (ins[0][0],)}

    def reference(self, p, xs, wb):
        n_ = np()
        x = xs[0]
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x * n_.asarray(wb[0], n_.float32).reshape(shape)
                + n_.asarray(wb[1], n_.float32).reshape(shape)).astype(n_.float32)
