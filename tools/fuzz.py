#!/usr/bin/env python3
"""Long fuzzing campaign over every reader that takes a file from a user.

    python tools/fuzz.py [--per-reader 100000] [--readers qcnn,bin,...] [--out fuzz-out]

Each reader runs in a worker process that mutates its seed (tests/fuzzkit.py;
"qcnn-header" changes values of a .qcnn's JSON header and re-signs it, to reach
the graph and tensor-table checks behind the checksum),
writes the input, and reads it.  Counted per reader: inputs tried, clean
results, QEngineErrors, other exceptions (bugs), hangs (over 2 s, SIGALRM) and
crashes (the worker killed by a signal; the input is kept in --out), and the
worker's peak RSS.  A crash restarts the worker after the input that caused it.
"""
import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def worker(reader, start, count, seed, out):
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import numpy as np
    from qengine import QEngineError
    from fuzzkit import mutate, mutate_header, seeds

    class Hang(Exception):
        pass

    def alarm(*_):
        raise Hang()

    signal.signal(signal.SIGALRM, alarm)
    tmp = tempfile.mkdtemp(prefix="qfuzz-")
    data, read = seeds(tmp)[reader]
    path = os.path.join(tmp, f"input.{reader}")
    stats = {"tried": 0, "ok": 0, "error": 0, "other": {}, "hangs": 0}
    cur = os.path.join(out, f"{reader}.current")
    for i in range(start, start + count):
        rng = np.random.default_rng([seed, i])
        b = data
        for _ in range(int(rng.integers(1, 5))):
            b = mutate_header(b, rng) if reader == "qcnn-header" else mutate(b, rng)
        with open(path, "wb") as f:
            f.write(b)
        with open(cur, "w") as f:   # the parent saves it if this input crashes us
            f.write(str(i))
        stats["tried"] += 1
        signal.alarm(2)
        try:
            read(path)
            stats["ok"] += 1
        except QEngineError:
            stats["error"] += 1
        except Hang:
            stats["hangs"] += 1
            with open(os.path.join(out, f"{reader}-hang-{i}.bin"), "wb") as f:
                f.write(b)
        except Exception as e:  # a bug: not the documented error type
            key = f"{type(e).__name__}: {str(e)[:80]}"
            stats["other"][key] = stats["other"].get(key, 0) + 1
            with open(os.path.join(out, f"{reader}-exception-{i}.bin"), "wb") as f:
                f.write(b)
        finally:
            signal.alarm(0)
    stats["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(stats))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-reader", type=int, default=100000)
    ap.add_argument("--readers",
                    default="qcnn,qcnn-header,bin,cbn,prototxt,caffemodel,png,jpeg,bmp")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="fuzz-out")
    ap.add_argument("--chunk", type=int, default=5000, help="inputs per worker process")
    ap.add_argument("--worker", nargs=2, metavar=("READER", "START"), help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.count, args.seed, args.out)
        return 0
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    report = {}
    for reader in args.readers.split(","):
        tot = {"tried": 0, "ok": 0, "error": 0, "other": {}, "hangs": 0, "crashes": 0,
               "peak_rss_bytes": 0}
        t0 = time.time()
        i = 0
        while i < args.per_reader:
            n = min(args.chunk, args.per_reader - i)
            p = subprocess.run([sys.executable, __file__, "--worker", reader, str(i), "--count",
                                str(n), "--seed", str(args.seed), "--out", args.out],
                               capture_output=True, text=True, env=env)
            if p.returncode != 0:   # crashed (signal) or died: keep the input, skip past it
                cur = os.path.join(args.out, f"{reader}.current")
                bad = int(open(cur).read()) if os.path.exists(cur) else i
                tot["crashes"] += 1
                tot["tried"] += bad - i + 1
                print(f"{reader}: worker died ({p.returncode}) at input {bad}: "
                      f"{p.stderr.strip()[-300:]}", file=sys.stderr)
                i = bad + 1
                continue
            s = json.loads(p.stdout.strip().splitlines()[-1])
            for k in ("tried", "ok", "error", "hangs"):
                tot[k] += s[k]
            for k, v in s["other"].items():
                tot["other"][k] = tot["other"].get(k, 0) + v
            tot["peak_rss_bytes"] = max(tot["peak_rss_bytes"], s["peak_rss_bytes"])
            i += n
            print(f"{reader}: {i}/{args.per_reader} inputs, {time.time() - t0:.0f} s",
                  file=sys.stderr)
        tot["seconds"] = round(time.time() - t0, 1)
        report[reader] = tot
        print(json.dumps({reader: tot}))
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    bad = sum(r["crashes"] + r["hangs"] + sum(r["other"].values()) for r in report.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
