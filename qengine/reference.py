"""A plain numpy implementation of every layer: the independent reference the
tests check the C kernels against, and part of the dense baselines (baselines.py).
Written for clarity (im2col + matrix products), not speed."""
import numpy as np

from .graph import pool_output


def conv2d(x, w, b, stride=1, pad=0, groups=1):
    """x [N,C,H,W], w [Cout,C/groups,KH,KW] -> [N,Cout,OH,OW]."""
    n, c, h, wd = x.shape
    cout, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - kh) // stride + 1
    ow = (wd + 2 * pad - kw) // stride + 1
    og = cout // groups
    out = np.empty((n, cout, oh, ow), np.float64)
    for g in range(groups):
        xs = xp[:, g * cg:(g + 1) * cg]
        cols = np.empty((n, cg, kh, kw, oh, ow), np.float64)
        for i in range(kh):
            for j in range(kw):
                cols[:, :, i, j] = xs[:, :, i:i + stride * (oh - 1) + 1:stride,
                                      j:j + stride * (ow - 1) + 1:stride]
        wg = w[g * og:(g + 1) * og].reshape(og, -1).astype(np.float64)
        out[:, g * og:(g + 1) * og] = np.einsum("ok,nkp->nop", wg,
                                                cols.reshape(n, cg * kh * kw, oh * ow)
                                                ).reshape(n, og, oh, ow)
    if b is not None:
        out += np.asarray(b, np.float64)[None, :, None, None]
    return out.astype(np.float32)


def fc(x, w, b):
    y = x.reshape(x.shape[0], -1).astype(np.float64) @ w.T.astype(np.float64)
    if b is not None:
        y += b
    return y.astype(np.float32)


def relu(x, slope=0.0):
    return np.where(x > 0, x, x * np.float32(slope)).astype(np.float32)


def lrn(x, size, alpha, beta, k):
    sq = x.astype(np.float64) ** 2
    c = x.shape[1]
    pre = (size - 1) // 2
    s = np.zeros_like(sq)
    for i in range(c):
        s[:, i] = sq[:, max(0, i - pre):min(c, i - pre + size)].sum(axis=1)
    return (x / (k + alpha / size * s) ** beta).astype(np.float32)


def pool(x, kernel, stride, pad, method="MAX", global_pool=False):
    n, c, h, w = x.shape
    if global_pool:
        kernel, stride, pad = (h, w), (1, 1), (0, 0)
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    oh, ow = pool_output(h, kh, sh, ph), pool_output(w, kw, sw, pw)
    out = np.empty((n, c, oh, ow), np.float32)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh - ph, j * sw - pw
            he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
            area = (he - hs) * (we - ws)
            win = x[:, :, max(hs, 0):min(he, h), max(ws, 0):min(we, w)]
            if method == "MAX":
                out[:, :, i, j] = win.max(axis=(2, 3))
            else:
                out[:, :, i, j] = win.astype(np.float64).sum(axis=(2, 3)) / area
    return out


def softmax(x):
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


# one function per layer type: f(params, inputs, (w, b) or None) -> output
LAYERS = {
    "Convolution": lambda p, xs, wb: conv2d(xs[0], wb[0], wb[1], p["stride"], p["pad"],
                                           p["group"]),
    "InnerProduct": lambda p, xs, wb: fc(xs[0], wb[0], wb[1]),
    "ReLU": lambda p, xs, wb: relu(xs[0], p["negative_slope"]),
    "LRN": lambda p, xs, wb: lrn(xs[0], p["local_size"], p["alpha"], p["beta"], p["k"]),
    "Pooling": lambda p, xs, wb: pool(xs[0], p["kernel"], p["stride"], p["pad"], p["pool"],
                                      p["global"]),
    "Concat": lambda p, xs, wb: np.concatenate(xs, axis=1),
    "Dropout": lambda p, xs, wb: xs[0],
    "Softmax": lambda p, xs, wb: softmax(xs[0]),
}


def forward(graph, weights, x, outputs=None, layers=None):
    """Run a graph densely. weights: {layer: (w, b)} with conv w [Cout,Cg,KH,KW]
    and fc w [Cout,Cin]; layers: functions replacing some of LAYERS. Returns the
    last output or a dict of named outputs."""
    impl = dict(LAYERS, **(layers or {}))
    blobs = {graph["input"]["name"]: np.asarray(x, np.float32)}
    res = {}
    out = None
    for L in graph["layers"]:
        out = impl[L["type"]](L["params"], [blobs[b] for b in L["bottom"]],
                              weights.get(L["name"]))
        res[L["name"]] = out
        for top in L["top"]:
            blobs[top] = out
    if outputs is not None:
        return {n: res[n] for n in outputs}
    return out


def model_weights(model):
    """Dense (dequantized) weights of a loaded qengine Model: {layer: (w, b)}."""
    from .runtime import dequantize_conv, dequantize_fc
    ws = {}
    for op in model._ops:
        if not op.weighted:
            continue
        if op.type == "Convolution":
            cg = op.in_shapes[0][0] // op.group
            w = (dequantize_conv(op.codebook, op.stored_indices(), cg) if op.mode == "lut"
                 else op.weight)
        else:
            w = (dequantize_fc(op.codebook, op.stored_indices(), op.cin) if op.mode == "lut"
                 else op.weight)
        ws[op.name] = (np.asarray(w), np.asarray(op.bias))
    return ws
