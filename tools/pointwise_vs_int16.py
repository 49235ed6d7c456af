"""Fast mode's two kernels for a 1x1 convolution, timed on the same layer
shapes, interleaved in one process: the float pointwise kernel (qe_pw.h) and
the int16 kernel (qe_i16.h, which first makes an int16 copy of its input).
Prints multiply-adds per ns and the ratio int16/pointwise per shape (above 1:
pointwise is faster); weighted.KERNEL_COSTS.pointwise_max_macs comes from it.

    python tools/pointwise_vs_int16.py [--isa avx2] [--rounds 25] [C,H,W,Cout ...]
"""
import argparse
import time

import numpy as np

from qengine import _kernels

# SqueezeNet v1.0's 1x1 layers (squeeze: 16-64 outputs; expand: 64-256) and conv10
DEFAULT = ["96,55,55,16", "128,55,55,16", "128,55,55,32", "256,27,27,32", "256,27,27,48",
           "384,27,27,48", "384,27,27,64", "512,27,27,64", "512,13,13,64", "16,55,55,64",
           "32,55,55,128", "48,27,27,192", "64,27,27,256", "64,13,13,256", "512,13,13,1000"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="*", default=DEFAULT, help="C,H,W,Cout")
    ap.add_argument("--isa", default=None, help="instruction set (default: the best here)")
    ap.add_argument("--rounds", type=int, default=25)
    args = ap.parse_args(argv)
    if args.isa:
        _kernels.set_isa(args.isa)
    rng = np.random.default_rng(1)
    print(f"isa {_kernels.get_isa()}, 1 thread, median of {args.rounds} interleaved rounds")
    print(f"{'C x H x W -> Cout':>22} {'pointwise ms':>13} {'MAC/ns':>7} {'int16 ms':>9} "
          f"{'MAC/ns':>7} {'int16/pw':>9}")
    for spec in args.shapes:
        c, h, w, co = map(int, spec.split(","))
        x = np.maximum(rng.standard_normal((1, c, h, w)), 0).astype(np.float32)   # post-ReLU
        wt = rng.standard_normal((co, c)).astype(np.float32)
        b = rng.standard_normal(co).astype(np.float32)
        wp = np.empty(_kernels.pw_weights_shape(co, c), np.float32)
        _kernels.pw_conv_weights(wt, wp)
        w16 = np.empty(_kernels.i16_weights_shape(co, 1, c), np.int16)
        sc = np.empty(co, np.float32)
        a = _kernels.i16_conv_weights(wt, 1, w16, sc)
        ws = np.zeros(_kernels.i16_workspace_floats(c, h, w, 1, 1, 1, 0), np.float32)
        y = np.empty((1, co, h, w), np.float32)
        runs = {"pw": lambda: _kernels.conv_pw(x, wp, b, True, y, 1),
                "i16": lambda: _kernels.conv_i16(x, w16, sc, a, b, 1, 1, 1, 0, True, y, ws, 1)}
        times = {k: [] for k in runs}
        for _ in range(args.rounds):
            for k, f in runs.items():
                t0 = time.perf_counter()
                f()
                f()
                times[k].append((time.perf_counter() - t0) / 2)
        med = {k: float(np.median(v)) for k, v in times.items()}
        macs = c * h * w * co
        print(f"{f'{c} x {h} x {w} -> {co}':>22} {med['pw'] * 1e3:13.3f} "
              f"{macs / med['pw'] / 1e9:7.0f} {med['i16'] * 1e3:9.3f} "
              f"{macs / med['i16'] / 1e9:7.0f} {med['i16'] / med['pw']:8.2f}x")


if __name__ == "__main__":
    main()
