"""qconvert's predicted speed-up against the measured one, per layer and in total.

    python tools/predicted_vs_measured.py model.qcnn [--runs 300] [--json]

Loads the model and its dense twin (the same network on dequantized weights,
as `qbench --compare` builds it), runs them alternately, one forward pass
each in turn (batch 1, 1 thread, the model's mode; a drift of the shared
machine's speed hits both alike), and prints the median ms of every layer and
of the whole network beside the times qconvert predicted when it converted
the model (provenance.quantization.predicted; measured on the converting
machine, so compare on the same one).
"""
import argparse
import json
import sys
import tempfile

import numpy as np

from layer_ab import alternate       # this script's folder is on sys.path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--mode", default="fast", choices=["fast", "exact"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import qengine
    from qengine.cli.qbench import _dense_twin
    m = qengine.load(args.model, mode=args.mode)
    pred = (m.metadata.get("provenance") or {}).get("quantization", {}).get("predicted")
    with tempfile.TemporaryDirectory() as tmp:
        dense = _dense_twin(m, args.model, tmp)
        x = np.random.default_rng(0).standard_normal((1,) + m.input_shape).astype(np.float32)
        alternate([m, dense], x, 3)                       # warm-up
        (pm, pd), (tm, td) = alternate([m, dense], x, args.runs)
        prof, total = {"model": pm, "dense": pd}, {"model": tm, "dense": td}
    med = {k: {n: float(np.median(v)) * 1e3 for n, v in prof[k].items()} for k in prof}
    tot = {k: float(np.median(v)) * 1e3 for k, v in total.items()}
    strategies = m.layer_strategies()
    res = {"model": args.model, "runs": args.runs, "ms": tot["model"], "dense_ms": tot["dense"],
           "speedup": tot["dense"] / tot["model"], "predicted": pred,
           "layers": [{"name": n, "strategy": strategies.get(n, ""), "ms": med["model"][n],
                       "dense_ms": med["dense"].get(n),
                       "predicted_ms": (pred or {}).get("layers", {}).get(n)}
                      for n in m.layer_names if n in med["model"]]}
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
        return 0
    w = max(len(L["name"]) for L in res["layers"])
    print(f"{'layer':<{w}} {'strategy':<12} {'ms':>8} {'dense ms':>9} {'predicted':>9}")
    for L in res["layers"]:
        p = "" if L["predicted_ms"] is None else f"{L['predicted_ms']:9.3f}"
        d = "" if L["dense_ms"] is None else f"{L['dense_ms']:9.3f}"
        print(f"{L['name']:<{w}} {L['strategy']:<12} {L['ms']:8.3f} {d:>9} {p:>9}")
    print(f"measured   {tot['model']:.3f} ms vs dense twin {tot['dense']:.3f} ms: "
          f"{res['speedup']:.2f}x (medians of {args.runs} alternating runs)")
    if pred:
        print(f"predicted  {pred['ms']:.3f} ms vs dense {pred['dense_ms']:.3f} ms: "
              f"{pred['speedup']:.2f}x ({pred['isa']}, {pred['mode']} mode, at conversion)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
