#!/usr/bin/env python3
"""Reproduce the peer table: one network, every runtime installed here, one run.

    python tools/peer_table.py alexnet.qcnn [--runs 20] [--threads 1] [--batch 1]
        [--calib DIR] [--json]

Runs, interleaved, on the same input: qengine (fast and exact), numpy
im2col+GEMM, and where installed ONNX Runtime (fp32, dynamic int8), PyTorch
(fp32, eager) and OpenVINO (fp32 from the ONNX graph, and with --calib int8 by
NNCF post-training quantisation calibrated on those images preprocessed as the
model's).  Every dense runtime gets the network with qengine's dequantized
weights, so all compute the same function.  Each round runs every runtime
once, in a new random order (seeded; baselines.interleaved_times).
Medians of ms per image, ratios against qengine fast.
"""
import argparse
import json
import os
import sys


def torch_runner(graph, weights, threads):
    import numpy as np
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    W = {n: (torch.from_numpy(np.array(w, np.float32)), torch.from_numpy(np.array(b, np.float32)))
         for n, (w, b) in weights.items()}

    @torch.no_grad()
    def run(x):
        blobs = {graph["input"]["name"]: torch.from_numpy(np.array(x, np.float32))}
        out = None
        for L in graph["layers"]:
            xs = [blobs[b] for b in L["bottom"]]
            p, t = L["params"], L["type"]
            if t == "Convolution":
                w, b = W[L["name"]]
                out = F.conv2d(xs[0], w, b, p["stride"], p["pad"], 1, p["group"])
            elif t == "InnerProduct":
                w, b = W[L["name"]]
                out = F.linear(xs[0].flatten(1), w, b)
            elif t == "ReLU":
                out = F.leaky_relu(xs[0], p["negative_slope"])
            elif t == "LRN":
                out = F.local_response_norm(xs[0], p["local_size"], p["alpha"], p["beta"], p["k"])
            elif t == "Pooling" and p["global"]:
                out = xs[0].mean((2, 3), keepdim=True) if p["pool"] == "AVE" else \
                    xs[0].amax((2, 3), keepdim=True)
            elif t == "Pooling":
                f = F.max_pool2d if p["pool"] == "MAX" else F.avg_pool2d
                out = f(xs[0], p["kernel"], p["stride"], p["pad"], ceil_mode=True)
            elif t == "Concat":
                out = torch.cat(xs, 1)
            elif t == "Softmax":
                out = torch.softmax(xs[0], 1)
            else:
                out = xs[0]
            for top in L["top"]:
                blobs[top] = out
        return out.numpy()
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--calib", help="calibration images for OpenVINO int8")
    ap.add_argument("--calib-count", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.runs < 1 or args.threads < 1 or args.batch < 1 or args.calib_count < 1:
        ap.error("--runs, --threads, --batch and --calib-count must be at least 1")
    if args.calib and not os.path.isdir(args.calib):
        ap.error(f"--calib {args.calib}: not a directory of images")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    from qengine.errors import QEngineError
    try:
        return run(args)
    except QEngineError as e:   # a bad model or calibration image: its message, no traceback
        print(f"peer_table: error: {e}", file=sys.stderr)
        return 2


def run(args):
    import numpy as np
    import qengine
    from qengine import baselines, reference
    fast = qengine.load(args.model, mode="fast", threads=args.threads)
    exact = qengine.load(args.model, mode="exact", threads=args.threads)
    weights = reference.model_weights(exact)
    x = np.random.default_rng(0).standard_normal(
        (args.batch,) + exact.input_shape).astype(np.float32) * 50
    runners = {"qengine fast": fast.forward, "qengine exact": exact.forward}
    runners.update(baselines.onnxruntime_runners(exact.graph, weights, batch=args.batch,
                                                 threads=args.threads))
    try:
        runners["pytorch fp32"] = torch_runner(exact.graph, weights, args.threads)
    except ImportError:
        runners["pytorch fp32"] = ImportError("not installed")
    except Exception as e:  # a runtime that cannot build this graph
        runners["pytorch fp32"] = e
    calib = None
    if args.calib:
        from qengine.cli.qbench import _calibration
        calib = _calibration(exact, args.calib, args.calib_count)
    try:
        ov = baselines.openvino_runners(exact.graph, weights, batch=args.batch,
                                        threads=args.threads, calib=calib)
    except Exception as e:  # a runtime that cannot build this graph
        ov = {"openvino fp32": e}
    runners.update(ov or {"openvino": ImportError("not installed")})
    runners["numpy im2col+GEMM fp32"] = baselines.numpy_runner(exact.graph, weights)
    live = {n: f for n, f in runners.items() if not isinstance(f, Exception)}
    for f in live.values():
        for _ in range(3):
            f(x)
    times = baselines.interleaved_times(live, x, args.runs)
    base = float(np.median(times["qengine fast"])) / args.batch
    rows = []
    for n, f in runners.items():
        if isinstance(f, Exception):
            rows.append({"runtime": n, "ms": None, "note": str(f)})
        else:
            ms = float(np.median(times[n])) * 1e3 / args.batch
            rows.append({"runtime": n, "ms": ms, "vs_qengine_fast": ms / (base * 1e3)})
    if args.json:
        print(json.dumps({"model": args.model, "threads": args.threads, "batch": args.batch,
                          "runs": args.runs,
                          "rows": rows}, indent=1))
        return 0
    print(f"{args.model}, batch {args.batch}, {args.threads} thread(s), median of {args.runs} "
          f"interleaved runs")
    print(f"{'runtime':<30} {'ms/image':>9} {'vs qengine fast':>16}")
    for r in rows:
        if r["ms"] is None:
            print(f"{r['runtime']:<30} {'-':>9} {'':>16}  ({r['note']})")
        else:
            print(f"{r['runtime']:<30} {r['ms']:>9.2f} {r['vs_qengine_fast']:>15.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
