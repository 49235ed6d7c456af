"""qrun: classify images with a .qcnn model and print the top classes.

    qrun [MODEL.qcnn] IMAGE|FOLDER|@LIST|- ... [--top 5] [--jsonl | --csv] [--output FILE [--resume]]

Without a model, the built-in one is used: SqueezeNet v1.0 (ImageNet, 1,000
classes), quantized by qconvert.  Images are BMP, JPEG, PNG, GIF, TIFF, WebP,
PPM files; a FOLDER gives every image under it (recursively, by extension),
@LIST the paths listed in a file (one per line), - the paths listed on stdin.
"""
import os
import stat
import sys
import time

from . import entry, fail, parser


def _is_model(path):
    """A .qcnn by its name or its first bytes."""
    if path.lower().endswith(".qcnn"):
        return True
    from ..format import MAGIC
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _print_human(rec, out):
    if "error" in rec:
        print(f"qrun: error: {rec['error']}", file=sys.stderr)
        return
    out.write(f"{rec['image']}  ({rec['ms']:.1f} ms)\n")
    for k, t in enumerate(rec["top"], 1):
        out.write(f"  {k}. {t['prob']:.4f}  {t['label']}\n")


@entry("qrun")
def main(argv=None):
    ap = parser("qrun", __doc__)
    ap.add_argument("inputs", nargs="+", metavar="[MODEL.qcnn] IMAGE",
                    help="the model (optional: the built-in SqueezeNet), then images, folders, "
                         "@lists, or - for a list on stdin")
    ap.add_argument("-m", "--model", help="the .qcnn model (instead of the first argument)")
    ap.add_argument("--top", type=int, default=5, help="classes per image (default 5)")
    ap.add_argument("--jsonl", "--json", dest="jsonl", action="store_true",
                    help="one JSON record per image per line: {\"image\", \"top\": [{\"index\", "
                         "\"label\", \"prob\"}], \"ms\"}, or {\"image\", \"error\"}")
    ap.add_argument("--csv", action="store_true",
                    help="CSV: image, top1_index, top1_label, top1_prob, ..., ms, error")
    ap.add_argument("-o", "--output", metavar="FILE",
                    help="write the records to FILE as they come (JSON lines, or CSV for "
                         "*.csv or with --csv) instead of stdout")
    ap.add_argument("--resume", action="store_true",
                    help="with --output: keep the records already in FILE and score only the "
                         "images it does not hold")
    ap.add_argument("--force", action="store_true", help="with --output: replace an existing FILE")
    ap.add_argument("--batch", type=int, default=8,
                    help="images per forward pass (default 8)")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for the network (default 1)")
    ap.add_argument("--io-threads", type=int, default=None,
                    help="threads decoding and preprocessing images while the network runs "
                         "(default: --threads, at least 1; 0 decodes in the main thread)")
    ap.add_argument("--exact", action="store_true",
                    help="float lookup tables everywhere (default: the fast path, integer tables "
                         "where they pay)")
    ap.add_argument("--scheduler", metavar="ADDRESS",
                    help="score on a Dask cluster (tcp://host:8786) instead of this process; "
                         "needs pip install 'qengine[distributed]'")
    ap.add_argument("--partition-size", type=int, default=256,
                    help="with --scheduler: images per task (default 256)")
    ap.add_argument("-q", "--quiet", action="store_true",
                    help="no progress bar and no final line")
    args = ap.parse_intermixed_args(argv)    # options may come between images
    if args.top < 1:
        fail("qrun", "--top must be at least 1", 2)
    if args.threads < 1:
        fail("qrun", "--threads must be at least 1", 2)
    if args.batch < 1:
        fail("qrun", "--batch must be at least 1", 2)
    if args.io_threads is not None and args.io_threads < 0:
        fail("qrun", "--io-threads must be 0 or more", 2)
    if args.resume and not args.output:
        fail("qrun", "--resume needs --output FILE (the file to resume)", 2)
    if args.resume and args.force:
        fail("qrun", "give --resume or --force, not both", 2)
    if args.jsonl and args.csv:
        fail("qrun", "give --jsonl or --csv, not both", 2)
    if args.partition_size < 1:
        fail("qrun", "--partition-size must be at least 1", 2)
    io_threads = max(1, args.threads) if args.io_threads is None else args.io_threads

    # no numpy here: importing it would take longer than classifying the photo
    from .. import scoring
    from ..errors import QEngineError
    inputs = list(args.inputs)
    model_path = args.model
    if model_path is None:
        if _is_model(inputs[0]):
            model_path = inputs.pop(0)
        else:
            from ..models import default_model
            model_path = default_model()
    if not inputs:
        fail("qrun", f"no images given after the model {model_path}", 2)
    try:
        paths = scoring.expand(inputs)
    except QEngineError as e:
        fail("qrun", str(e))
    fmt = scoring.format_of(args.output, args.jsonl, args.csv) \
        if (args.output or args.jsonl or args.csv) else "human"

    if args.scheduler:
        return _on_cluster(args, model_path, paths, fmt)

    from ..runtime import load
    try:
        model = load(model_path, mode="exact" if args.exact else "fast", threads=args.threads)
    except QEngineError as e:
        fail("qrun", str(e))
    out = None
    try:
        if args.output:
            out = scoring.ResultFile(args.output, fmt, args.top, resume=args.resume,
                                     force=args.force)
    except QEngineError as e:
        fail("qrun", str(e))
    except OSError as e:
        fail("qrun", f"{args.output}: {e.strerror}")
    skipped = 0
    if out is not None and out.done:
        before = len(paths)
        paths = [p for p in paths if p not in out.done]
        skipped = before - len(paths)
    return _score_here(args, model, paths, fmt, out, io_threads, skipped)


def _report(n, failed, skipped, seconds, forward_seconds, where=""):
    rate = n / seconds if seconds > 0 else 0.0
    extra = f", {skipped} already in the output" if skipped else ""
    fw = (f" ({n / forward_seconds:.1f} images/s counting only the time in the network)"
          if forward_seconds and n else "")
    print(f"qrun: {n} images ({failed} failed{extra}) in {seconds:.1f} s{where}: "
          f"{rate:.1f} images/s{fw}", file=sys.stderr)


def _score_here(args, model, paths, fmt, out, io_threads, skipped):
    from .. import scoring
    from ..progress import Progress
    scorer = scoring.Scorer(model, batch=args.batch, io_threads=io_threads, top=args.top)
    many = len(paths) > 1 or skipped
    bar = Progress("qrun", len(paths), unit="images",
                   enabled=False if args.quiet or not many else None)
    failed = 0
    t0 = time.perf_counter()
    stdout = sys.stdout
    sink = out if out is not None or fmt == "human" else scoring.StreamSink(stdout, fmt, args.top)
    try:
        for recs in scorer.batches(paths):
            for rec in recs:
                failed += "error" in rec
                if fmt == "human":
                    if bar.enabled:
                        stdout.write("\r\033[K")
                    _print_human(rec, stdout)
                elif out is None and fmt == "jsonl" and "error" in rec:
                    print(f"qrun: error: {rec['error']}", file=sys.stderr)
            if sink is not None:
                sink.write(recs)
            else:
                stdout.flush()
            bar.update(len(recs))
    finally:
        if sink is not None:
            sink.close()
    bar.close()
    if many and not args.quiet:
        _report(len(paths), failed, skipped, time.perf_counter() - t0, scorer.forward_seconds)
    return 1 if failed else 0


def _on_cluster(args, model_path, paths, fmt):
    from ..errors import QEngineError
    try:
        from .. import distributed
    except ImportError as e:
        fail("qrun", f"--scheduler needs Dask: pip install 'qengine[distributed]' ({e})")
    t0 = time.perf_counter()
    try:
        res = distributed.score_to_file(
            paths, model_path, args.output, scheduler=args.scheduler, top=args.top,
            fmt=fmt, mode="exact" if args.exact else "fast", batch=args.batch,
            threads=args.threads, partition_size=args.partition_size, resume=args.resume,
            force=args.force, progress=not args.quiet)
    except QEngineError as e:
        fail("qrun", str(e))
    except OSError as e:
        fail("qrun", f"{e.filename or args.output}: {e.strerror}")
    if not args.quiet:
        _report(res["scored"], res["failed"], res["skipped"], time.perf_counter() - t0, None,
                f" on {res['workers']} Dask workers")
    return 1 if res["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
