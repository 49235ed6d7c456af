"""Labelled image sets for accuracy evaluation and calibration.

A set is one of:
  - a directory with labels.txt: lines "file label" (label 0-based), files beside it;
  - a directory of class folders: folder names sorted = labels 0, 1, ...;
  - a directory with MNIST idx files (t10k-images-idx3-ubyte[.gz] and
    t10k-labels-idx1-ubyte[.gz]);
  - a directory of images without labels (calibration only).
"""
import gzip
import os

import numpy as np

from .errors import FormatError

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _idx(path):
    from .files import open_regular
    try:
        with open_regular(path, "idx file") as raw:
            f = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
            data = f.read(200 * 1024 * 1024)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise FormatError(f"{path}: cannot read ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise FormatError(f"{path}: not an unsigned-byte idx file")
    nd = data[3]
    if nd < 1 or nd > 4 or len(data) < 4 + 4 * nd:
        raise FormatError(f"{path}: bad idx header")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    n = int(np.prod(dims))
    if len(data) != 4 + 4 * nd + n:
        raise FormatError(f"{path}: idx dims {dims} do not match the file size")
    return np.frombuffer(data, np.uint8, n, 4 + 4 * nd).reshape(dims)


def _find(d, stem):
    for name in (stem, stem + ".gz"):
        p = os.path.join(d, name)
        if os.path.exists(p):
            return p
    return None


def open_set(path, limit=None, labelled=True):
    """(items, labels): items are image paths or uint8 arrays; labels an int array
    (or None for an unlabelled directory when labelled=False)."""
    if not os.path.isdir(path):
        raise FormatError(f"{path}: not a directory of images")
    imgs = _find(path, "t10k-images-idx3-ubyte") or _find(path, "train-images-idx3-ubyte")
    if imgs:
        labs = _find(path, os.path.basename(imgs).replace("images-idx3", "labels-idx1")
                     .replace(".gz", ""))
        x = _idx(imgs)
        y = _idx(labs).astype(np.int64) if labs else None
        if y is not None and len(y) != len(x):
            raise FormatError(f"{path}: {len(x)} images but {len(y)} labels")
        items = list(x[:limit] if limit else x)
        return items, (y[:limit] if (y is not None and limit) else y)
    lt = os.path.join(path, "labels.txt")
    if os.path.exists(lt):
        items, labels = [], []
        from .files import open_regular
        try:
            with open_regular(lt, "labels file", encoding="utf-8") as f:
                for ln, line in enumerate(f, 1):
                    parts = line.split()
                    if not parts:
                        continue
                    if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or \
                            len(parts[1]) > 9:
                        raise FormatError(f"{lt}: line {ln}: expected 'file label'")
                    items.append(os.path.join(path, parts[0]))
                    labels.append(int(parts[1]))
                    if limit and len(items) >= limit:
                        break
        except UnicodeDecodeError:
            raise FormatError(f"{lt}: not UTF-8 text") from None
        return items, np.array(labels, np.int64)
    entries = sorted(os.listdir(path))
    classes = [e for e in entries if os.path.isdir(os.path.join(path, e))]
    if classes:
        per = []
        for ci, c in enumerate(classes):
            files = sorted(f for f in os.listdir(os.path.join(path, c))
                           if f.lower().endswith(IMAGE_EXT))
            per.append([(os.path.join(path, c, f), ci) for f in files])
        # interleave classes so that a --limit keeps every class
        items = []
        for i in range(max(len(p) for p in per)):
            items.extend(p[i] for p in per if i < len(p))
        items = items[:limit] if limit else items
        return [p for p, _ in items], np.array([c for _, c in items], np.int64)
    files = [os.path.join(path, f) for f in entries if f.lower().endswith(IMAGE_EXT)]
    if not files:
        raise FormatError(f"{path}: no images, labels.txt, class folders or MNIST files")
    if labelled:
        raise FormatError(f"{path}: images without labels (labels.txt or class folders needed)")
    return files[:limit] if limit else files, None


def calibration_inputs(src, shape, preprocess, count, log=None, progress=None):
    """Calibration inputs [N, C, H, W] float32: the first `count` of an .npy of
    inputs of this shape, or up to `count` images of a folder or set (a fixed
    random sample, seed 0) through `preprocess` (image -> [C, H, W])."""
    if str(src).endswith(".npy"):
        from .files import check_regular
        check_regular(src, FormatError, "calibration .npy file")
        try:
            x = np.load(src, allow_pickle=False, mmap_mode="r")
        except Exception as e:     # numpy's header parser raises many kinds on bad files
            raise FormatError(f"{src}: cannot read calibration inputs ({e})") from None
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape) or x.dtype.kind not in "fiu" \
                or x.shape[0] < 1:
            raise FormatError(f"{src}: calibration inputs must be real numbers [N, "
                              f"{', '.join(map(str, shape))}], are {x.dtype} {list(x.shape)}")
        out = np.ascontiguousarray(x[:count], np.float32)
        if not np.isfinite(out).all():
            raise FormatError(f"{src}: calibration inputs hold NaN or infinity (or values "
                              f"beyond float32)")
        return out
    items, _ = open_set(src, labelled=False)
    if len(items) > count:
        rng = np.random.default_rng(0)
        items = [items[i] for i in sorted(rng.choice(len(items), count, replace=False))]
    if log:
        log(f"calibration: {len(items)} images from {src}")
    # filled in place: the set is held once (a list then np.stack would hold it twice)
    out = None
    bar = progress("preprocessing", len(items)) if progress else None
    for i, it in enumerate(items):
        x = np.asarray(preprocess(it), np.float32)
        if out is None:
            out = np.empty((len(items),) + x.shape, np.float32)
        out[i] = x
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return out


def iterate_batches(model, items, batch=64):
    """Preprocessed float32 batches of a set's items."""
    for i in range(0, len(items), batch):
        yield i, model.preprocess(list(items[i:i + batch]))


def evaluate(model, items, labels, batch=64, top=5):
    """Top-1 and top-k accuracy and the top-1 predictions of a model on a set."""
    preds, hits = [], 0
    for i, x in iterate_batches(model, items, batch):
        out = model.forward(x)
        out = out.reshape(out.shape[0], -1)
        order = np.argsort(-out, axis=1, kind="stable")[:, :top]
        preds.append(order)
        hits += int((order == labels[i:i + len(order), None]).any(axis=1).sum())
    preds = np.concatenate(preds)
    return {"top1": float((preds[:, 0] == labels).mean()), f"top{top}": hits / len(labels),
            "pred": preds[:, 0], "n": len(labels)}
