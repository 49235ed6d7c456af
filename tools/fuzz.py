#!/usr/bin/env python3
"""Long fuzzing campaign over every reader and the whole run path.

    python tools/fuzz.py [--per-target 100000] [--targets qcnn-struct,labels,...]
                         [--cap-gib 3] [--timeout 20] [--alexnet ALEXNET.qcnn] [--out fuzz-out]

Targets (tests/fuzzkit.py): byte-level mutations of every reader's seed (qcnn,
bin, cbn, prototxt, caffemodel, png, jpeg, bmp, labels, mean-npy, calib-npy,
image kinds: 16-bit PNG, TIFF, float TIFF, GIF, CMYK JPEG, RGBA), "qcnn-header"
(JSON values of the header changed and re-signed) and "qcnn-struct" (models
changed as a writer could: values near every limit, layers and tensors added or
removed, tensor names shared, qdelta2d codebooks, preprocessing), whose run step
loads the model in fast or exact mode, forced tables, 1 or 2 threads, runs a
batch of 3 with outputs= and predict() on images given as arrays.  With
--alexnet the real AlexNet .qcnn is a seed too ("qcnn-alexnet").

Each input runs in a worker process under an address-space cap (RLIMIT_AS);
the parent kills a worker that does not answer within --timeout seconds (a
hang) and restarts one that dies (a crash), keeping the input in --out.
Counted per target: inputs, clean results, QEngineErrors, other exceptions,
over-cap inputs (MemoryError under the cap), hangs, crashes and peak RSS.
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-target", type=int, default=100000)
    ap.add_argument("--targets", default="", help="comma-separated (default: all)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cap-gib", type=float, default=3.0)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--alexnet", help="a .qcnn to use as one more seed (qcnn-alexnet)")
    ap.add_argument("--out", default="fuzz-out")
    args = ap.parse_args()
    from fuzzkit import Worker, all_seeds, input_name, make_input
    os.makedirs(args.out, exist_ok=True)
    w = Worker(seed=args.seed, cap=int(args.cap_gib * (1 << 30)), timeout=args.timeout,
               alexnet=os.path.abspath(args.alexnet) if args.alexnet else None)
    w._start()
    targets = args.targets.split(",") if args.targets else w.targets
    seeds = None
    report = {}
    for t in targets:
        tot = {"tried": 0, "ok": 0, "error": 0, "over_cap": 0, "hangs": 0, "crashes": 0,
               "other": {}}
        t0 = time.time()
        w.peak_rss = 0
        for i in range(args.per_target):
            r = w.run(t, i)
            tot["tried"] += 1
            key = {"ok": "ok", "error": "error", "over_cap": "over_cap", "hang": "hangs"}.get(r)
            if key is None and r.startswith("crash"):
                key = "crashes"
            if key:
                tot[key] += 1
            else:
                tot["other"][r] = tot["other"].get(r, 0) + 1
            if key not in ("ok", "error"):          # keep the input that did it
                if seeds is None:
                    import tempfile
                    seeds = all_seeds(tempfile.mkdtemp(prefix="qfuzz-seeds-"))
                if t in seeds:
                    b, _ = make_input(t, seeds[t][0], args.seed, i)
                    with open(os.path.join(args.out, f"{t}-{i}-{input_name(t)}"), "wb") as f:
                        f.write(b)
            if (i + 1) % 5000 == 0:
                print(f"{t}: {i + 1}/{args.per_target}, {time.time() - t0:.0f} s", file=sys.stderr)
        tot["peak_rss_bytes"] = w.peak_rss
        tot["seconds"] = round(time.time() - t0, 1)
        report[t] = tot
        print(json.dumps({t: tot}), flush=True)
    w.close()
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    bad = sum(r["crashes"] + r["hangs"] + r["over_cap"] + sum(r["other"].values())
              for r in report.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
