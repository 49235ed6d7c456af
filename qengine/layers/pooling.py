"""Pooling: max or average over windows, or over the whole map (global)."""
from .. import _kernels, buffers
from ..errors import ModelError
from .base import LayerType, Op, is_int, need_chw, np, pool_output, register


def _rules(p):
    """(ceil rounding, padding excluded from averages): Caffe's (True, False)
    unless the graph says otherwise (files written before these keys existed)."""
    return p.get("ceil", True), p.get("exclude_pad", False)


def kind(p):
    """The C kernel's pooling kind: 0 max, 1 average over the window clipped to
    the padded input, 2 average over the window clipped to the input."""
    if p["pool"] == "MAX":
        return 0
    return 2 if _rules(p)[1] and not p["global"] else 1


def pool_into(p, x, out, nthreads=1):
    """Pool x [N, C, H, W] into out (its shape from the record's rule) by the C kernel."""
    if p["global"]:
        _kernels.pool(x, out, x.shape[2], x.shape[3], 1, 1, 0, 0, kind(p), nthreads)
    else:
        (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride"], p["pad"]
        _kernels.pool(x, out, kh, kw, sh, sw, ph, pw, kind(p), nthreads)
    return out


class PoolOp(Op):
    def run(self, xs, ws, nthreads, relu):
        return pool_into(self.params, xs[0], self.new_out(xs[0].shape[0]), nthreads)


@register
class Pooling(LayerType):
    """pool ("MAX" | "AVE"), kernel [kh, kw], stride [sh, sw], pad [ph, pw],
    global (bool); optional ceil (bool, default true: ceil rounding of the
    output size) and exclude_pad (bool, default false: averages divide by the
    window clipped to the padded input, as Caffe and ONNX count_include_pad=1;
    true: by the window's part inside the input, ONNX's default)."""

    type = "Pooling"
    Op = PoolOp

    def check(self, p, need):
        need(p.get("pool") in ("MAX", "AVE") and isinstance(p.get("global"), bool), "pool")
        glob = p.get("global") is True
        for key, lo in (("kernel", 0 if glob else 1), ("stride", 1), ("pad", 0)):
            v = p.get(key)
            need(isinstance(v, list) and len(v) == 2 and all(is_int(x, lo, 4096) for x in v),
                 key)
        for key in ("ceil", "exclude_pad"):
            need(isinstance(p.get(key, False), bool), key)
        if not p["global"]:
            need(p["pad"][0] < p["kernel"][0] and p["pad"][1] < p["kernel"][1], "pad")

    def shape(self, p, ins, where):
        c, h, w = need_chw(ins[0], where)
        if p["global"]:
            return (c, 1, 1)
        (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride"], p["pad"]
        if h + 2 * ph < kh or w + 2 * pw < kw or ph >= kh or pw >= kw:
            raise ModelError(f"{where}: pooling window does not fit input {h}x{w}")
        if sh > h + 2 * ph or sw > w + 2 * pw:
            raise ModelError(f"{where}: pooling stride {[sh, sw]} beyond input {h}x{w}")
        ceil = _rules(p)[0]
        return (c, pool_output(h, kh, sh, ph, ceil), pool_output(w, kw, sw, pw, ceil))

    def work(self, p, ins, out):
        if p["global"]:
            return buffers.count(ins[0])
        return buffers.count(out) * p["kernel"][0] * p["kernel"][1]

    def reference(self, p, xs, wb):
        n_ = np()
        x = xs[0]
        n, c, h, w = x.shape
        if p["global"]:
            kernel, stride, pad = (h, w), (1, 1), (0, 0)
        else:
            kernel, stride, pad = p["kernel"], p["stride"], p["pad"]
        (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
        ceil, exclude = _rules(p)
        oh, ow = pool_output(h, kh, sh, ph, ceil), pool_output(w, kw, sw, pw, ceil)
        out = n_.empty((n, c, oh, ow), n_.float32)
        for i in range(oh):
            for j in range(ow):
                hs, ws = i * sh - ph, j * sw - pw
                he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
                win = x[:, :, max(hs, 0):min(he, h), max(ws, 0):min(we, w)]
                if p["pool"] == "MAX":
                    out[:, :, i, j] = win.max(axis=(2, 3)) if win.size else -3.4028235e38
                else:
                    area = win.shape[2] * win.shape[3] if exclude and not p["global"] \
                        else (he - hs) * (we - ws)
                    out[:, :, i, j] = (win.astype(n_.float64).sum(axis=(2, 3)) / area
                                       if area > 0 else 0.0)
        return out
