"""Whole-network A/B of two builds (or two thread counts) of qengine, interleaved
in one process.

    python tools/build_ab.py MODEL.qcnn --b-src ../before [--mode fast]
        [--batch 1] [--rounds 40] [--a-threads 1] [--b-threads 1] [--images DIR]
        [--layers]

Side A is the qengine this Python imports; side B is the package under
--b-src (a checkout whose extension is built in place, for example a `git
worktree` of the commit before a change), imported under another name, or the
same package again.  Rounds alternate A and B on the same input; the medians
in ms per image, their ratio (> 1: A faster) and the largest difference of
the outputs are printed; --layers adds each layer's medians.  On shared
machines that drift, only such same-run ratios mean anything."""
import argparse
import glob
import importlib.util
import os
import statistics as st
import sys
import time


def fail(msg):
    print(f"build_ab: {msg}", file=sys.stderr)
    sys.exit(2)


def import_package(src):
    """The qengine package under src/qengine, imported as a package of its own."""
    root = os.path.join(os.path.abspath(src), "qengine")
    if not os.path.isfile(os.path.join(root, "__init__.py")):
        fail(f"{src}: no qengine package there")
    name = "qengine_b"
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "__init__.py"),
                                                  submodule_search_locations=[root])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--b-src", help="checkout holding side B's build (default: side A's)")
    ap.add_argument("--mode", default="fast", choices=("fast", "exact"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--a-threads", type=int, default=1)
    ap.add_argument("--b-threads", type=int, default=1)
    ap.add_argument("--images", help="folder of images for the input (default: random)")
    ap.add_argument("--layers", action="store_true", help="per-layer medians too")
    args = ap.parse_args(argv)
    if not os.path.isfile(args.model):
        fail(f"{args.model}: no such file")
    import numpy as np
    import qengine
    from qengine import runtime
    other = import_package(args.b_src) if args.b_src else qengine
    brt = importlib.import_module(other.__name__ + ".runtime")
    a = runtime.Model(args.model, mode=args.mode, threads=args.a_threads)
    b = brt.Model(args.model, mode=args.mode, threads=args.b_threads)
    if args.images:
        files = sorted(glob.glob(os.path.join(args.images, "*")))[:args.batch]
        if len(files) < args.batch:
            fail(f"{args.images}: fewer than {args.batch} images")
        x = a.preprocess(files)
    else:
        rng = np.random.default_rng(0)
        x = np.maximum(rng.standard_normal((args.batch,) + tuple(a.input_shape)), 0)
        x = (x * 50).astype(np.float32)
    ya, yb = np.asarray(a.forward(x)), np.asarray(b.forward(x))
    ta, tb, la, lb = [], [], {}, {}
    for _ in range(args.rounds):
        for m, times, layers in ((a, ta, la), (b, tb, lb)):
            prof = {} if args.layers else None
            t = time.perf_counter()
            m.forward(x, profile=prof)
            times.append(time.perf_counter() - t)
            for k, v in (prof or {}).items():
                layers.setdefault(k, []).append(v)
    ma, mb = st.median(ta) * 1e3 / args.batch, st.median(tb) * 1e3 / args.batch
    print(f"{args.model}  mode={args.mode}  batch={args.batch}  rounds={args.rounds}")
    print(f"A {qengine.__file__} ({args.a_threads} thread(s)): {ma:.3f} ms/image")
    print(f"B {other.__file__} ({args.b_threads} thread(s)): {mb:.3f} ms/image")
    print(f"B/A {mb / ma:.3f}x   max|A - B| {float(np.abs(ya - yb).max()):.3g}")
    if args.layers:
        print(f"{'layer':24s} {'A ms':>8s} {'B ms':>8s}   B/A")
        for k in la:
            ka, kb = (st.median(la[k]) * 1e3 / args.batch, st.median(lb.get(k, [0])) * 1e3
                      / args.batch)
            print(f"{k:24s} {ka:8.3f} {kb:8.3f}   {kb / ka if ka > 0 else float('nan'):.2f}")


if __name__ == "__main__":
    main()
