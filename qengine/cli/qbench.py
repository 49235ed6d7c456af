"""qbench: time a .qcnn model layer by layer.

    qbench [model.qcnn] [--runs 20] [--warmup 3] [--threads 1,2] [--batch 1,16]
           [--json | --csv | --markdown]
        without a model: the built-in SqueezeNet; lists of threads and batch
        sizes are swept in one run (a summary row per combination)
    qbench --synthetic alexnet      (a built-in random model; nothing to download)
    qbench model.qcnn --accuracy LABELLED_SET [--against dense.qcnn] [--limit N]
        top-1/top-5 of the model (exact and fast paths) and of a dense reference,
        their top-1 agreement, the theoretical speed-up and the compression.
"""
import argparse
import json
import os
import resource
import sys
import tempfile
import time

from . import entry, fail, parser


WARMUP_SECONDS = 0.5


def _fmt_int(n):
    return f"{n / 1e6:.1f}"


def bench(model, runs, warmup, batch):
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + model.input_shape).astype(np.float32) * 50
    # warm up for the runs asked, and (if any were asked) for at least half a second:
    # caches, page mappings and the CPU's clock settle before anything is timed
    t_end = time.perf_counter() + (WARMUP_SECONDS if warmup > 0 else 0.0)
    done = 0
    while done < warmup or time.perf_counter() < t_end:
        model.forward(x)
        done += 1
    totals, per_layer = [], []
    for _ in range(runs):
        prof = {}
        t0 = time.perf_counter()
        model.forward(x, profile=prof)
        totals.append(time.perf_counter() - t0)
        per_layer.append(prof)
    return totals, per_layer


def report(model, totals, per_layer, args, size):
    import numpy as np
    from .. import __version__, _kernels
    batch = args.batch
    ms_img = np.array(totals) * 1e3 / batch
    costs = {c[0]: c[2:] for c in model.layer_costs()}
    strategies = model.layer_strategies()
    for op in model.layers:   # Winograd's form: 2, 4 or 45 (_kernels.WINO_FORMS)
        if strategies.get(op.name) == "winograd":
            strategies[op.name] = f"winograd{op.wino_tile}"
    layer_ms = {n: float(np.median([p.get(n, 0.0) for p in per_layer])) * 1e3 / batch
                for n in model.layer_names}
    total_layer_ms = sum(layer_ms.values()) or 1.0
    # the theoretical figure describes the quantization, not the strategies chosen here
    dense, qcost = model.theoretical_ops()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # what qconvert predicted for this model (timed on the machine that converted it)
    pred = ((model.metadata.get("provenance") or {}).get("quantization") or {}).get("predicted")
    pred = pred if isinstance(pred, dict) and isinstance(pred.get("layers"), dict) else None
    layers = []
    types = {op.name: op.type for op in model.layers}
    for n in model.layer_names:
        dmac, tmac, lk = costs[n]
        layers.append({"name": n, "type": types[n],
                       "strategy": strategies.get(n, ""), "ms": round(layer_ms[n], 4),
                       "share": round(layer_ms[n] / total_layer_ms, 4), "dense_macs": dmac,
                       "table_macs": tmac, "lookups": lk})
        if pred is not None and isinstance(pred["layers"].get(n), (int, float)):
            layers[-1]["predicted_ms"] = float(pred["layers"][n])
    res = {
        "qengine": __version__, "model": args.model_name, "mode": model.mode,
        "isa": _kernels.get_isa(), "threads": model.threads, "batch": batch, "runs": len(totals),
        "ms_per_image": {"median": float(np.median(ms_img)), "mean": float(ms_img.mean()),
                         "min": float(ms_img.min()), "max": float(ms_img.max()),
                         "p90": float(np.percentile(ms_img, 90)),
                         "p99": float(np.percentile(ms_img, 99)),
                         "std": float(ms_img.std(ddof=1)) if len(ms_img) > 1 else 0.0},
        "images_per_s": float(1e3 / np.median(ms_img)),
        "size_bytes": size, "peak_rss_bytes": rss,
        "dense_macs": dense, "quantized_ops": qcost,
        "theoretical_speedup": dense / qcost if qcost else 1.0,
        "layers": layers,
    }
    if pred is not None:
        res["predicted"] = {k: pred.get(k) for k in ("ms", "dense_ms", "speedup", "isa", "mode",
                                                      "batch", "threads")}
    return res


def print_table(r):
    print(f"qengine {r['qengine']}  {r['model']}  mode={r['mode']}  isa={r['isa']}  "
          f"threads={r['threads']}  batch={r['batch']}  runs={r['runs']}")
    print()
    w = max([10] + [len(L["name"]) for L in r["layers"]])
    pred = any("predicted_ms" in L for L in r["layers"])
    hdr = (f"{'layer':<{w}} {'type':<13} {'strategy':<12} {'ms':>8} "
           + (f"{'predicted':>9} " if pred else "")
           + f"{'share':>6} {'dense MMAC':>11} {'table MMAC':>11} {'lookups M':>10}")
    print(hdr)
    print("-" * len(hdr))
    for L in r["layers"]:
        if L["ms"] < 0.005 and not L["dense_macs"]:
            continue
        p = ""
        if pred:
            p = f"{L['predicted_ms']:>9.3f} " if "predicted_ms" in L else f"{'':>9} "
        print(f"{L['name']:<{w}} {L['type']:<13} {L['strategy']:<12} {L['ms']:>8.3f} {p}"
              f"{L['share'] * 100:>5.1f}% {_fmt_int(L['dense_macs']):>11} "
              f"{_fmt_int(L['table_macs']):>11} {_fmt_int(L['lookups']):>10}")
    print("-" * len(hdr))
    m = r["ms_per_image"]
    print(f"ms per image   median {m['median']:.2f}   p90 {m['p90']:.2f}   p99 {m['p99']:.2f}   "
          f"std {m['std']:.2f}   mean {m['mean']:.2f}   min {m['min']:.2f}   max {m['max']:.2f}")
    print(f"images/s       {r['images_per_s']:.1f}")
    print(f"theoretical    {r['theoretical_speedup']:.2f}x fewer operations than the dense network "
          f"({r['dense_macs'] / 1e6:.0f}M multiply-adds vs {r['quantized_ops'] / 1e6:.0f}M "
          f"table multiply-adds + lookups)")
    if r.get("predicted"):
        p = r["predicted"]
        print(f"predicted      {p['ms']:.2f} ms per image, {p['speedup']:.2f}x faster than the dense "
              f"network ({p['dense_ms']:.2f} ms): qconvert's timing of each layer on the "
              f"converting machine ({p['isa']}, {p['mode']} mode, batch 1, 1 thread)")
    print(f"file size      {r['size_bytes']:,} bytes ({r['size_bytes'] / 2**20:.2f} MiB)")
    print(f"peak memory    {r['peak_rss_bytes'] / 2**20:.1f} MiB RSS")
    if r.get("core_round_trip_ns"):
        print(f"threads        {_fmt_trip(r['core_round_trip_ns'])}: a cache line's round trip "
              f"between two of the threads, before and after the runs (see README, Threads)")
    if r.get("compare"):
        print()
        print(f"{'runtime (same run, interleaved)':<34} {'ms/image':>9} {'vs qengine':>11}  max|diff|")
        for c in r["compare"]:
            if c["ms_per_image"] is None:
                print(f"{c['runtime']:<34} {'-':>9} {'-':>11}  {c['max_abs_diff']}")
                continue
            print(f"{c['runtime']:<34} {c['ms_per_image']:>9.2f} {c['ratio']:>10.2f}x  "
                  f"{c['max_abs_diff']:.3g}")


def accuracy(args):
    import math
    from ..datasets import evaluate, open_set
    from ..errors import QEngineError
    from ..runtime import load
    items, labels = open_set(args.accuracy, limit=args.limit)
    rows = []
    models = []
    if args.against:
        models.append(("dense", args.against, "exact"))
    models += [("model", args.model, "exact"), ("model", args.model, "fast")]
    ref_pred = None
    first = None
    for role, path, mode in models:
        m = load(path, mode=mode, threads=args.threads)
        # the reference must be the same task: input shape and class count
        outs = m.blob_shapes[m.graph["layers"][-1]["top"][0]]
        task = (tuple(m.input_shape), int(math.prod(outs)))
        if first is None:
            first = (path, task)
        elif task != first[1]:
            raise QEngineError(f"{path}: input {list(task[0])} and {task[1]} classes, but "
                               f"{first[0]} has input {list(first[1][0])} and {first[1][1]} "
                               f"classes: --against needs a model of the same task")
        r = evaluate(m, items, labels, batch=max(args.batch, 32))
        row = {"model": path, "role": role, "mode": mode, "top1": r["top1"], "top5": r["top5"]}
        if role == "dense":
            ref_pred = r["pred"]
        elif ref_pred is not None:
            row["top1_agreement"] = float((r["pred"] == ref_pred).mean())
        if role == "model" and mode == "exact":
            exact_pred = r["pred"]
        if role == "model" and mode == "fast":
            row["fast_vs_exact_agreement"] = float((r["pred"] == exact_pred).mean())
        rows.append(row)
        if role == "model" and mode == "exact":
            dmacs, q = m.theoretical_ops()
            dense_b, stored_b = m.weight_bytes()
    return {"set": args.accuracy, "images": len(labels), "rows": rows,
            "theoretical_speedup": dmacs / q if q else 1.0,
            "dense_weight_bytes": dense_b, "stored_weight_bytes": stored_b,
            "compression": dense_b / stored_b if stored_b else 1.0}


def print_accuracy(r):
    print(f"{r['set']}: {r['images']} labelled images")
    print(f"{'model':<40} {'mode':<6} {'top-1':>7} {'top-5':>7} {'agree':>7}")
    for row in r["rows"]:
        agree = f"{row['top1_agreement'] * 100:6.2f}%" if "top1_agreement" in row else "      -"
        name = row["model"] if len(row["model"]) <= 40 else "..." + row["model"][-37:]
        print(f"{name:<40} {row['mode']:<6} {row['top1'] * 100:6.2f}% {row['top5'] * 100:6.2f}% "
              f"{agree}")
    for row in r["rows"]:
        if "fast_vs_exact_agreement" in row:
            print(f"fast path agrees with the exact path on "
                  f"{row['fast_vs_exact_agreement'] * 100:.2f}% of top-1 predictions")
    print(f"theoretical speed-up {r['theoretical_speedup']:.2f}x   compression "
          f"{r['compression']:.1f}x (weights {r['dense_weight_bytes']:,} -> "
          f"{r['stored_weight_bytes']:,} bytes)")


@entry("qbench")
def main(argv=None):
    ap = parser("qbench", __doc__)
    ap.add_argument("model", nargs="?", help="the .qcnn model (default: the built-in SqueezeNet)")
    ap.add_argument("--synthetic", metavar="ARCH",
                    help="benchmark a built-in random model of this architecture (alexnet, "
                         "caffenet, vgg_cnn_s, vgg16) instead of a file")
    ap.add_argument("--runs", type=int, default=20, help="timed runs (default 20)")
    ap.add_argument("--warmup", type=int, default=3,
                    help="untimed runs first (default 3; at least half a second unless 0)")
    ap.add_argument("--threads", type=_int_list, default=[1],
                    help="threads (default 1); a list such as 1,2 times each")
    ap.add_argument("--batch", type=_int_list, default=[1],
                    help="images per run (default 1); a list such as 1,16 times each")
    ap.add_argument("--exact", action="store_true",
                    help="float lookup tables everywhere (default: the fast path)")
    out = ap.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the results as JSON")
    out.add_argument("--csv", action="store_true",
                     help="print the results as CSV: a row per layer and a total row per "
                          "threads/batch combination")
    out.add_argument("--markdown", action="store_true",
                     help="print the tables as Markdown (for a README or an issue)")
    ap.add_argument("--accuracy", metavar="SET",
                    help="measure top-1/top-5 on a labelled set (labels.txt, class folders or "
                         "MNIST idx) instead of timing")
    ap.add_argument("--against", metavar="DENSE", help="with --accuracy: a dense reference model")
    ap.add_argument("--limit", type=int, help="with --accuracy: use the first N images")
    ap.add_argument("--compare", action="store_true",
                    help="also time the dense network (dequantized weights) with numpy and, where "
                         "installed, ONNX Runtime fp32 and int8 and OpenVINO fp32 and int8, "
                         "interleaved with qengine")
    ap.add_argument("--calib", metavar="DIR",
                    help="with --compare: calibration images for OpenVINO int8 (NNCF "
                         "post-training quantisation), preprocessed as the model's")
    ap.add_argument("--calib-count", type=int, default=64,
                    help="calibration images to use (default 64)")
    args = ap.parse_args(argv)
    if args.model is not None and args.synthetic is not None:
        fail("qbench", "give a model file or --synthetic ARCH, not both", 2)
    if args.model is None and args.synthetic is None:
        from ..models import default_model
        args.model = default_model()
    if args.runs < 1:
        fail("qbench", "--runs must be at least 1", 2)
    for name in ("threads", "batch"):
        if min(getattr(args, name)) < 1:
            fail("qbench", f"--{name} must be at least 1", 2)
    sweep = [(t, b) for t in args.threads for b in args.batch]
    if args.accuracy or args.compare:
        if len(sweep) > 1:
            fail("qbench", "--accuracy and --compare take one --threads and one --batch", 2)
    args.threads, args.batch = sweep[0]
    if args.warmup < 0:
        fail("qbench", "--warmup must be 0 or more", 2)

    if args.compare and "numpy" not in sys.modules:
        # the baselines get the threads qengine gets: numpy's BLAS (the numpy
        # runner) would otherwise start a thread per core that spins between
        # calls and takes the cores the interleaved runtimes are timed on
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(args.threads))
    from ..errors import QEngineError
    from ..runtime import load
    if args.accuracy:
        if not args.model:
            fail("qbench", "--accuracy needs a model file", 2)
        try:
            r = accuracy(args)
        except QEngineError as e:
            fail("qbench", str(e))
        if args.json:
            print(json.dumps(r, indent=1))
        else:
            print_accuracy(r)
        return 0
    tmpdir = None
    try:
        path = args.model
        if args.synthetic:
            from ..synthetic import make_synthetic
            tmpdir = tempfile.TemporaryDirectory(prefix="qbench-")
            path = os.path.join(tmpdir.name, f"synthetic-{args.synthetic}.qcnn")
            if not args.json:
                print(f"making a synthetic {args.synthetic} model (random codebooks, seed 0)...",
                      file=sys.stderr)
            try:
                make_synthetic(args.synthetic, path)
            except ValueError as e:
                fail("qbench", str(e), 2)
        args.model_name = f"synthetic:{args.synthetic}" if args.synthetic else path
        model = load(path, mode="exact" if args.exact else "fast", threads=args.threads)
        size = os.path.getsize(path)
        results = []
        for threads, batch in sweep:
            model.threads = threads
            args.threads, args.batch = threads, batch
            trip = [_round_trip()] if threads > 1 else None
            totals, per_layer = bench(model, args.runs, args.warmup, batch)
            results.append(report(model, totals, per_layer, args, size))
            if trip is not None:
                trip.append(_round_trip())
                results[-1]["core_round_trip_ns"] = trip
        args.threads, args.batch = sweep[0]
        model.threads = args.threads
        r = results[0]
        if args.compare:
            import numpy as np
            from ..baselines import compare
            x = np.random.default_rng(1).standard_normal(
                (args.batch,) + model.input_shape).astype(np.float32) * 50
            calib = None
            if args.calib:
                calib = _calibration(model, args.calib, args.calib_count)
            if tmpdir is None:
                tmpdir = tempfile.TemporaryDirectory(prefix="qbench-")
            dense = _dense_twin(model, path, tmpdir.name)
            # the peers' own progress output (NNCF's) goes to stderr: stdout holds
            # the table or the JSON only
            import contextlib
            with contextlib.redirect_stdout(sys.stderr):
                rows = compare(model, x, args.runs, calib=calib, dense=dense)
            q = rows[0][1]
            r["compare"] = [{"runtime": n, "ms_per_image": ms, "ratio": (ms / q if ms else None),
                             "max_abs_diff": d} for n, ms, d in rows]
    except QEngineError as e:
        fail("qbench", str(e))
    except MemoryError:
        fail("qbench", f"out of memory (batch {args.batch} too large?)")
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()
    if args.json:
        print(json.dumps(r if len(results) == 1 else {"sweep": results}, indent=1))
    elif args.csv:
        print_csv(results)
    elif args.markdown:
        print_markdown(results)
    else:
        print_table(r)
        if len(results) > 1:
            print()
            print_sweep(results)
    return 0


def _int_list(s):
    """--threads 1,2 -> [1, 2]"""
    try:
        vals = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or a list such as 1,2, got {s!r}")
    if not vals:
        raise argparse.ArgumentTypeError("expected a number or a list such as 1,2")
    return vals


def _sweep_rows(results):
    base = results[0]["images_per_s"]
    return [(r["threads"], r["batch"], r["ms_per_image"]["median"], r["ms_per_image"]["p90"],
             r["ms_per_image"]["p99"], r["ms_per_image"]["std"], r["images_per_s"],
             r["images_per_s"] / base) for r in results]


def _round_trip():
    """A cache line's round trip between two of the kernels' threads, in ns
    (None where two threads cannot run at once)."""
    from .. import _kernels
    if len(os.sched_getaffinity(0)) < 2:
        return None
    ns = _kernels.core_round_trip_ns(0.05)
    return None if ns is None else round(ns, 1)


def _fmt_trip(trip):
    return " / ".join("-" if t is None else f"{t:.0f} ns" for t in trip)


def print_sweep(results):
    """A row per threads/batch combination; speed-up in images/s against the first."""
    trips = any(r.get("core_round_trip_ns") for r in results)
    print(f"{'threads':>7} {'batch':>5} {'median ms':>10} {'p90':>8} {'p99':>8} {'std':>7} "
          f"{'images/s':>9} {'speed-up':>9}" + ("  round trip" if trips else ""))
    for r, (t, b, med, p90, p99, std, ips, up) in zip(results, _sweep_rows(results)):
        trip = f"  {_fmt_trip(r['core_round_trip_ns'])}" if r.get("core_round_trip_ns") else ""
        print(f"{t:>7} {b:>5} {med:>10.2f} {p90:>8.2f} {p99:>8.2f} {std:>7.2f} {ips:>9.1f} "
              f"{up:>8.2f}x{trip}")
    print("(ms per image; speed-up in images/s against the first row, same run)")
    if trips:
        print("(round trip: a cache line between two of the threads and back, before / after "
              "the row's runs; ~80 ns where they share a level-3 cache, several hundred where "
              "not, and then threads that share data run slower: README, Threads)")


def print_csv(results):
    import csv
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(["threads", "batch", "layer", "type", "strategy", "ms", "share", "dense_macs",
                "table_macs", "lookups", "p90_ms", "p99_ms", "std_ms", "images_per_s"])
    for r in results:
        for L in r["layers"]:
            w.writerow([r["threads"], r["batch"], L["name"], L["type"], L["strategy"],
                        f"{L['ms']:.4f}", f"{L['share']:.4f}", L["dense_macs"], L["table_macs"],
                        L["lookups"], "", "", "", ""])
        m = r["ms_per_image"]
        w.writerow([r["threads"], r["batch"], "(total)", "", "", f"{m['median']:.4f}", "1",
                    r["dense_macs"], "", "", f"{m['p90']:.4f}", f"{m['p99']:.4f}",
                    f"{m['std']:.4f}", f"{r['images_per_s']:.2f}"])


def print_markdown(results):
    r = results[0]
    print(f"qengine {r['qengine']}, `{r['model']}`, mode {r['mode']}, {r['isa']}, "
          f"{r['threads']} thread(s), batch {r['batch']}, {r['runs']} runs")
    print()
    print("| layer | type | strategy | ms | share | dense MMAC | table MMAC | lookups M |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for L in r["layers"]:
        if L["ms"] < 0.005 and not L["dense_macs"]:
            continue
        print(f"| {L['name']} | {L['type']} | {L['strategy']} | {L['ms']:.3f} | "
              f"{L['share'] * 100:.1f}% | {_fmt_int(L['dense_macs'])} | "
              f"{_fmt_int(L['table_macs'])} | {_fmt_int(L['lookups'])} |")
    print()
    print("| threads | batch | median ms | p90 | p99 | std | images/s | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t, b, med, p90, p99, std, ips, up in _sweep_rows(results):
        print(f"| {t} | {b} | {med:.2f} | {p90:.2f} | {p99:.2f} | {std:.2f} | {ips:.1f} | "
              f"{up:.2f}x |")


def _dense_twin(model, path, directory):
    """The same network with its weights dequantized, loaded like the model
    (None when every layer is dense already), written into `directory`."""
    if all(getattr(op, "mode", "dense") == "dense" for op in model.layers if op.weighted):
        return None
    from ..convert import convert
    from ..frontends import Source
    from ..runtime import load
    twin = os.path.join(directory, "dense.qcnn")
    convert(Source("qcnn", path), twin, keep_dense=("all",), force=True)
    return load(twin, mode=model.mode, threads=model.threads)


def _calibration(model, src, count):
    """Up to `count` images of `src` (or inputs of an .npy) preprocessed as the
    model's, [N, C, H, W]."""
    from ..datasets import calibration_inputs
    return calibration_inputs(src, model.input_shape, model.preprocessor, count)


if __name__ == "__main__":
    sys.exit(main())
