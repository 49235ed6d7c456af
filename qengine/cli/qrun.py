"""qrun: classify images with a .qcnn model and print the top classes.

    qrun model.qcnn photo.jpg [more images...] [--top 5] [--json] [--exact] [--threads N]
"""
import argparse
import json
import sys
import time

from . import _version, entry, fail


@entry("qrun")
def main(argv=None):
    ap = argparse.ArgumentParser(prog="qrun", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="the .qcnn model")
    ap.add_argument("--version", action="version", version=_version())
    ap.add_argument("images", nargs="+", help="images: BMP, JPEG, PNG, ...")
    ap.add_argument("--top", type=int, default=5, help="classes to print per image (default 5)")
    ap.add_argument("--json", action="store_true", help="one JSON object per image per line")
    ap.add_argument("--exact", action="store_true",
                    help="float lookup tables everywhere (default: the fast path, 8-bit tables "
                         "where they pay)")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads (default 1); with several images, that many go through the "
                         "network together")
    args = ap.parse_intermixed_args(argv)    # options may come between images
    if args.top < 1:
        fail("qrun", "--top must be at least 1", 2)
    if args.threads < 1:
        fail("qrun", "--threads must be at least 1", 2)

    # no numpy here: importing it would take longer than classifying the photo
    from ..errors import QEngineError
    from ..runtime import load
    try:
        model = load(args.model, mode="exact" if args.exact else "fast", threads=args.threads)
    except QEngineError as e:
        fail("qrun", str(e))
    status = 0
    # with several threads, images go through the network together, one per thread
    step = max(1, args.threads)
    for i in range(0, len(args.images), step):
        t0 = time.perf_counter()
        paths, inputs = [], []
        for path in args.images[i:i + step]:
            try:
                inputs.append(model.preprocessor(path))
                paths.append(path)
            except QEngineError as e:
                print(f"qrun: error: {e}", file=sys.stderr)
                status = 1
        if not inputs:
            continue
        tops = model.classify(model.stack(inputs), top=args.top)
        ms = (time.perf_counter() - t0) * 1e3 / len(inputs)
        for path, top in zip(paths, tops):
            if args.json:
                print(json.dumps({"image": path, "top": top, "ms": round(ms, 3)},
                                 ensure_ascii=False))
            else:
                print(f"{path}  ({ms:.1f} ms)")
                for k, t in enumerate(top, 1):
                    print(f"  {k}. {t['prob']:.4f}  {t['label']}")
        sys.stdout.flush()
    return status

if __name__ == "__main__":
    sys.exit(main())
