#!/usr/bin/env python3
"""Dense baseline for the speed claim: qengine against the same network run
densely (dequantized weights), measured interleaved in one process.

    python tools/bench_dense.py model.qcnn [--runs 15] [--threads 1]

The dense baseline is ONNX Runtime fp32 when it is installed and can build the
network, otherwise a numpy im2col + GEMM forward (numpy's BLAS, one thread).
Prints medians and the ratio.
"""
import argparse
import os
import sys
import time


def numpy_dense(model):
    import numpy as np
    from qengine import reference
    weights = reference.model_weights(model)
    graph = model.graph

    def conv(x, w, b, s, p, g):
        n, c, h, wd = x.shape
        cout, cg, kh, kw = w.shape
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        oh, ow = (h + 2 * p - kh) // s + 1, (wd + 2 * p - kw) // s + 1
        og = cout // g
        out = np.empty((n, cout, oh * ow), np.float32)
        for gi in range(g):
            xs = xp[:, gi * cg:(gi + 1) * cg]
            cols = np.lib.stride_tricks.sliding_window_view(xs, (kh, kw), axis=(2, 3))
            cols = cols[:, :, ::s, ::s][:, :, :oh, :ow]                # n c oh ow kh kw
            cols = np.ascontiguousarray(cols.transpose(0, 1, 4, 5, 2, 3)).reshape(n, cg * kh * kw, -1)
            wm = w[gi * og:(gi + 1) * og].reshape(og, -1)
            out[:, gi * og:(gi + 1) * og] = np.matmul(wm, cols)
        out += b[None, :, None]
        return out.reshape(n, cout, oh, ow)

    def maxpool(x, kernel, stride):
        from qengine.graph import pool_output
        (kh, kw), (sh, sw) = kernel, stride
        n, c, h, w = x.shape
        oh, ow = pool_output(h, kh, sh, 0), pool_output(w, kw, sw, 0)
        ph, pw = (oh - 1) * sh + kh - h, (ow - 1) * sw + kw - w
        xp = np.pad(x, ((0, 0), (0, 0), (0, max(ph, 0)), (0, max(pw, 0))),
                    constant_values=-np.inf)
        win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
        return win[:, :, ::sh, ::sw][:, :, :oh, :ow].max(axis=(4, 5))

    def fwd(x):
        blobs = {graph["input"]["name"]: x}
        out = x
        for L in graph["layers"]:
            xs = [blobs[b] for b in L["bottom"]]
            p, t = L["params"], L["type"]
            if t == "Convolution":
                w, b = weights[L["name"]]
                out = conv(xs[0], w, b, p["stride"], p["pad"], p["group"])
            elif t == "InnerProduct":
                w, b = weights[L["name"]]
                out = xs[0].reshape(xs[0].shape[0], -1) @ w.T + b
            elif t == "ReLU":
                out = np.maximum(xs[0], 0) if p["negative_slope"] == 0 else \
                    np.where(xs[0] > 0, xs[0], xs[0] * p["negative_slope"])
            elif t == "LRN":
                out = reference.lrn(xs[0], p["local_size"], p["alpha"], p["beta"], p["k"])
            elif t == "Pooling" and p["pool"] == "MAX" and not p["global"] and p["pad"] == [0, 0]:
                out = maxpool(xs[0], p["kernel"], p["stride"])
            elif t == "Pooling":
                out = reference.pool(xs[0], p["kernel"], p["stride"], p["pad"], p["pool"],
                                     p["global"])
            elif t == "Concat":
                out = np.concatenate(xs, axis=1)
            elif t == "Softmax":
                out = reference.softmax(xs[0])
            else:
                out = xs[0]
            for top in L["top"]:
                blobs[top] = out
        return out
    return fwd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    import numpy as np
    import qengine
    m = qengine.load(args.model, threads=args.threads)
    x = np.random.default_rng(0).standard_normal((1,) + m.input_shape).astype(np.float32) * 50
    name, dense = "numpy im2col+GEMM fp32", numpy_dense(m)
    ref = dense(x)
    got = m.forward(x)
    err = float(np.abs(got.reshape(ref.shape) - ref).max() / max(np.abs(ref).max(), 1e-30))
    tq, td = [], []
    for _ in range(3):
        m.forward(x), dense(x)
    for _ in range(args.runs):
        t0 = time.perf_counter(); m.forward(x); tq.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); dense(x); td.append(time.perf_counter() - t0)
    q, d = np.median(tq) * 1e3, np.median(td) * 1e3
    print(f"model            {args.model}")
    print(f"threads          {args.threads}")
    print(f"qengine exact    {q:8.2f} ms/image (median of {args.runs})")
    print(f"{name:<16} {d:8.2f} ms/image (median of {args.runs})")
    print(f"ratio            {d / q:8.2f}x  (dense / qengine)")
    print(f"max rel. diff    {err:.2e}  (qengine vs the dense baseline's output)")


if __name__ == "__main__":
    sys.exit(main())
