"""Per-layer A/B of two ways to run one model, interleaved in one process.

    python tools/layer_ab.py MODEL.qcnn [--rounds 30] [--a fast] [--b exact]
        [--a-env QENGINE_CONV16=1] [--b-env QENGINE_CONV16=0]

Each side is loaded with its mode and environment (for example
QENGINE_CONV16=1 forces the 16-bit register-table convolutions where the
instruction set can hold them); rounds alternate A and B on the same random
input, and per-layer medians are printed with the ratio B/A (> 1: A faster).
On shared machines that drift, only such same-run ratios mean anything."""
import argparse
import os
import statistics as st
import sys
import time


def load(path, mode, env):
    import qengine
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return qengine.load(path, mode=mode)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def alternate(models, x, rounds):
    """Run the models in turn on x, one forward pass each per round; returns,
    per model, ({layer: [seconds per run]}, [seconds per run in total])."""
    prof = [{} for _ in models]
    tot = [[] for _ in models]
    for _ in range(rounds):
        for i, m in enumerate(models):
            p = {}
            t = time.perf_counter()
            m.forward(x, profile=p)
            tot[i].append(time.perf_counter() - t)
            for k, v in p.items():
                prof[i].setdefault(k, []).append(v)
    return prof, tot


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--a", default="fast", choices=["fast", "exact"])
    ap.add_argument("--b", default="exact", choices=["fast", "exact"])
    ap.add_argument("--a-env", action="append", default=[], metavar="K=V")
    ap.add_argument("--b-env", action="append", default=[], metavar="K=V")
    args = ap.parse_args(argv)
    import numpy as np
    envs = [dict(kv.split("=", 1) for kv in e) for e in (args.a_env, args.b_env)]
    models = [load(args.model, m, e) for m, e in zip((args.a, args.b), envs)]
    x = (np.random.default_rng(0).standard_normal((1,) + models[0].input_shape) * 50
         ).astype(np.float32)
    prof, tot = alternate(models, x, args.rounds)
    strat = [m.layer_strategies() for m in models]
    print(f"{'layer':<10} {'A ms':>8} {'A strategy':<12} {'B ms':>8} {'B strategy':<12} {'B/A':>6}")
    for k in prof[0]:
        a, b = st.median(prof[0][k]) * 1e3, st.median(prof[1][k]) * 1e3
        print(f"{k:<10} {a:8.3f} {strat[0].get(k, ''):<12} {b:8.3f} {strat[1].get(k, ''):<12} "
              f"{b / a if a > 0 else float('nan'):6.2f}")
    a, b = st.median(tot[0]) * 1e3, st.median(tot[1]) * 1e3
    print(f"{'total':<10} {a:8.3f} {'':<12} {b:8.3f} {'':<12} {b / a:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
