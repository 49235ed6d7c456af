"""Throughput of qrun on many images against the forward pass alone (issue 13).

    python tools/throughput.py [MODEL.qcnn] IMAGES_DIR [--count 1000] [--threads 2]
                               [--batch 8] [--rounds 2] [--cluster]

Alternates, in one process, `rounds` times:
  forward   the network alone on already preprocessed inputs (64 distinct
            images cycled to `count`), in batches, with the same threads;
  qrun      the qrun pipeline on `count` image paths: decoding and
            preprocessing in worker threads, batched inference, JSON lines
            written to a file (qengine.scoring, exactly what qrun runs).
It prints the median images/s of each and the overhead, 1 - qrun / forward.
With --cluster: the same paths on a Dask LocalCluster of 2 worker processes
(1 thread each) on loopback, written by qengine.distributed.score_to_file.
Timings on a shared VM drift: read the ratio, not the absolute figures.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("args", nargs="+", metavar="[MODEL] IMAGES")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--io-threads", type=int, default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cluster", action="store_true")
    a = ap.parse_args(argv)
    import numpy as np
    import qengine
    from qengine import scoring
    from qengine.models import default_model
    model_path, src = (a.args[0], a.args[1]) if len(a.args) > 1 else (default_model(), a.args[0])
    paths = scoring.expand([src])[:a.count]
    if len(paths) < a.count:
        sys.exit(f"{src}: {len(paths)} images, fewer than --count {a.count}")
    io_threads = a.threads if a.io_threads is None else a.io_threads
    m = qengine.load(model_path, threads=a.threads)
    x = m.preprocess(paths[:64])
    tmp = tempfile.mkdtemp(prefix="qthroughput-")
    fw, qr = [], []
    for r in range(a.rounds):
        t0 = time.perf_counter()
        done = 0
        while done < a.count:
            n = min(a.batch, a.count - done)
            i = done % 64
            m.forward(np.ascontiguousarray(x[i:i + n]) if i + n <= 64 else x[:n])
            done += n
        fw.append(a.count / (time.perf_counter() - t0))
        out = os.path.join(tmp, f"r{r}.jsonl")
        t0 = time.perf_counter()
        s = scoring.Scorer(m, batch=a.batch, io_threads=io_threads, top=5)
        with scoring.ResultFile(out, "jsonl", 5, force=True) as f:
            for recs in s.batches(paths):
                f.write(recs)
        qr.append(a.count / (time.perf_counter() - t0))
        print(f"round {r + 1}: forward alone {fw[-1]:.1f} images/s, qrun {qr[-1]:.1f} images/s",
              file=sys.stderr)
    f_med, q_med = statistics.median(fw), statistics.median(qr)
    print(f"{os.path.basename(model_path)}, {a.count} images from {src}, threads {a.threads}, "
          f"io threads {io_threads}, batch {a.batch}, {a.rounds} rounds (medians)")
    print(f"  forward pass alone  {f_med:7.1f} images/s")
    print(f"  qrun pipeline       {q_med:7.1f} images/s   overhead {1 - q_med / f_med:+.1%}")
    if a.cluster:
        from dask.distributed import Client, LocalCluster
        from qengine import distributed
        t0 = time.perf_counter()
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None, silence_logs=50) as lc, Client(lc) as c:
            up = time.perf_counter() - t0
            t0 = time.perf_counter()
            distributed.score_to_file(paths, model_path, os.path.join(tmp, "cluster.jsonl"),
                                      client=c, batch=a.batch, threads=1, io_threads=1,
                                      partition_size=64, force=True)
            dt = time.perf_counter() - t0
        print(f"  LocalCluster, 2 worker processes x 1 thread: {a.count / dt:7.1f} images/s "
              f"({dt:.1f} s, cluster start {up:.1f} s)")


if __name__ == "__main__":
    main()
