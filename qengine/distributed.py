"""Scoring images on a Dask cluster (pip install 'qengine[distributed]').

    from dask.distributed import Client
    from qengine import distributed
    client = Client("tcp://scheduler:8786")
    records = distributed.score(paths, "/models/squeezenet.qcnn")   # a dask.bag of records
    distributed.to_files(records, "/results/run1", fmt="parquet")    # one file per partition

Each task scores one partition of image paths with qengine.scoring.Scorer, the
same code as qrun, so the records are the same as a single-process run's.
The model is loaded once per worker process and kept (the .qcnn is
memory-mapped, so the workers of one host share its pages); images are read
by the worker that scores them, from where they live (a shared file system).
Tasks are pure functions of their partition: when a worker dies, Dask runs
its tasks again elsewhere, and since every result is written by one writer
(the client, or an atomic rename per partition file) nothing is lost or
written twice.
"""
import os
import sys
import threading

from .errors import QEngineError

_MODELS = {}                      # (path, mode, threads) -> Model, per worker process
_LOCK = threading.Lock()


def _dask():
    import importlib
    try:
        importlib.import_module("dask.bag")
        importlib.import_module("distributed")
    except ImportError:
        raise ImportError("qengine.distributed needs Dask: pip install "
                          "'qengine[distributed]'") from None


def worker_model(path, mode="fast", threads=1):
    """The model for this worker process, loaded on first use and kept."""
    key = (path, mode, threads)
    with _LOCK:
        m = _MODELS.get(key)
        if m is None:
            from .runtime import load
            m = _MODELS[key] = load(path, mode=mode, threads=threads)
        return m


def score_partition(paths, model, top=5, mode="fast", batch=8, threads=1, io_threads=1):
    """Records for a list of image paths, on this process (one Dask task)."""
    from .scoring import Scorer
    m = worker_model(model, mode, threads)
    return list(Scorer(m, batch=batch, io_threads=io_threads, top=top).records(list(paths)))


def _as_bag(paths, partition_size):
    import dask.bag as db
    if isinstance(paths, db.Bag):
        return paths
    try:
        import dask.dataframe as dd
    except ImportError:         # dask without its dataframe extra: lists and bags only
        dd = None
    if dd is not None and isinstance(paths, dd.DataFrame):
        col = "image" if "image" in paths.columns else paths.columns[0]
        return paths[col].to_bag()
    if dd is not None and isinstance(paths, dd.Series):
        return paths.to_bag()
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError("score() takes a list of paths (or a Dask bag or dataframe of "
                        "paths), not one path")
    return db.from_sequence([os.fspath(p) for p in paths], partition_size=partition_size)


def score(paths, model, top=5, mode="fast", batch=8, threads=1, io_threads=1,
          partition_size=256):
    """A dask.bag of records (see qengine.scoring) for `paths`: a list of image
    paths, a dask.bag of paths, or a dask dataframe (its "image" column, else
    its first) or series of paths.  `model` is a .qcnn path every worker can
    read.  Lazy: compute it, or write it with to_files()."""
    _dask()
    model = os.path.abspath(os.fspath(model))
    bag = _as_bag(paths, partition_size)
    return bag.map_partitions(score_partition, model, top=top, mode=mode, batch=batch,
                              threads=threads, io_threads=io_threads)


PARQUET_COLUMNS = ("image", "index", "label", "prob", "ms", "error")


def _parquet_table(records):
    import pyarrow as pa
    schema = pa.schema([("image", pa.string()), ("index", pa.list_(pa.int32())),
                        ("label", pa.list_(pa.string())), ("prob", pa.list_(pa.float64())),
                        ("ms", pa.float64()), ("error", pa.string())])
    rows = [{"image": r["image"],
             "index": [t["index"] for t in r.get("top", [])] or None,
             "label": [t["label"] for t in r.get("top", [])] or None,
             "prob": [t["prob"] for t in r.get("top", [])] or None,
             "ms": r.get("ms"), "error": r.get("error")} for r in records]
    return pa.Table.from_pylist(rows, schema=schema)


def write_partition(records, path, fmt="jsonl", top=5):
    """Write one partition's records to `path` atomically (a temporary file
    renamed into place): a task run twice after a worker died leaves one
    complete file, never a partial or doubled one.  Returns the path."""
    from .scoring import format_header, format_record
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq
            pq.write_table(_parquet_table(records), tmp)
        else:
            with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
                f.write(format_header(fmt, top))
                for r in records:
                    f.write(format_record(r, fmt, top))
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def to_files(records, directory, fmt="jsonl", top=5, compute=True):
    """Write a bag of records as one file per partition, part-00000.jsonl
    (or .csv, .parquet) ..., into `directory` (created; on a file system the
    workers share).  Returns the paths written (or, with compute=False, the
    Dask delayed objects)."""
    _dask()
    import dask
    if fmt not in ("jsonl", "csv", "parquet"):
        raise ValueError(f"fmt must be 'jsonl', 'csv' or 'parquet', got {fmt!r}")
    os.makedirs(directory, exist_ok=True)
    parts = records.to_delayed()
    width = max(5, len(str(len(parts))))
    writes = [dask.delayed(write_partition, pure=True)(
        p, os.path.join(os.path.abspath(directory), f"part-{i:0{width}d}.{fmt}"), fmt, top)
        for i, p in enumerate(parts)]
    return list(dask.compute(*writes)) if compute else writes


def score_to_file(paths, model, output, scheduler=None, client=None, top=5, fmt="jsonl",
                  mode="fast", batch=8, threads=1, io_threads=1, partition_size=256,
                  resume=False, force=False, progress=False):
    """What `qrun --scheduler` runs: score `paths` on the cluster and write the
    records to one result file in input order as partitions finish (the same
    file a single-process qrun writes; resume skips images already in it).
    Returns {"scored", "failed", "skipped", "workers"}."""
    _dask()
    from distributed import Client, as_completed
    from .progress import Progress
    from .scoring import ResultFile, StreamSink
    model = os.path.abspath(os.fspath(model))
    fmt = "jsonl" if fmt == "human" else fmt
    out = (StreamSink(sys.stdout, fmt, top) if output is None else
           ResultFile(output, fmt, top, resume=resume, force=force))
    try:
        todo = [p for p in paths if p not in out.done]
        skipped = len(paths) - len(todo)
        chunks = [todo[i:i + partition_size] for i in range(0, len(todo), partition_size)]
        own = client is None
        try:
            if own:
                try:
                    client = Client(scheduler, timeout="30s")
                except OSError as e:
                    raise QEngineError(f"cannot reach the Dask scheduler at {scheduler}: "
                                       f"{e}") from None
            workers = len(client.scheduler_info().get("workers", {}))
            bar = Progress("qrun (cluster)", len(todo), unit="images",
                           enabled=None if progress else False)
            futures = {client.submit(score_partition, c, model, top, mode, batch, threads,
                                     io_threads, pure=False): i for i, c in enumerate(chunks)}
            done, ready, nxt, failed = {}, 0, 0, 0
            for fut in as_completed(list(futures)):
                i = futures[fut]
                done[i] = fut.result()
                fut.release()
                while nxt in done:          # in input order, each partition once
                    recs = done.pop(nxt)
                    out.write(recs)
                    failed += sum(1 for r in recs if "error" in r)
                    ready += len(recs)
                    bar.update(len(recs))
                    nxt += 1
            bar.close()
        finally:
            if own and client is not None:
                client.close()
    finally:
        out.close()
    return {"scored": ready, "failed": failed, "skipped": skipped, "workers": workers}
