"""qrun: classify images with a .qcnn model and print the top classes.

    qrun model.qcnn photo.jpg [more images...] [--top 5] [--json] [--exact] [--threads N]
"""
import argparse
import json
import sys
import time

from . import fail


def main(argv=None):
    ap = argparse.ArgumentParser(prog="qrun", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="the .qcnn model")
    ap.add_argument("images", nargs="+", help="images: BMP, JPEG, PNG, ...")
    ap.add_argument("--top", type=int, default=5, help="classes to print per image (default 5)")
    ap.add_argument("--json", action="store_true", help="one JSON object per image per line")
    ap.add_argument("--exact", action="store_true",
                    help="float lookup tables everywhere (default: the fast path, 8-bit tables "
                         "where they pay)")
    ap.add_argument("--threads", type=int, default=1, help="threads per image (default 1)")
    args = ap.parse_args(argv)
    if args.top < 1:
        fail("qrun", "--top must be at least 1", 2)
    if args.threads < 1:
        fail("qrun", "--threads must be at least 1", 2)

    from ..errors import QEngineError
    from ..runtime import load
    try:
        model = load(args.model, mode="exact" if args.exact else "fast", threads=args.threads)
    except QEngineError as e:
        fail("qrun", str(e))
    status = 0
    for path in args.images:
        t0 = time.perf_counter()
        try:
            top = model.predict(path, top=args.top)[0]
        except QEngineError as e:
            print(f"qrun: error: {e}", file=sys.stderr)
            status = 1
            continue
        ms = (time.perf_counter() - t0) * 1e3
        if args.json:
            print(json.dumps({"image": path, "top": top, "ms": round(ms, 3)}, ensure_ascii=False))
        else:
            print(f"{path}  ({ms:.1f} ms)")
            for i, t in enumerate(top, 1):
                print(f"  {i}. {t['prob']:.4f}  {t['label']}")
        sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
