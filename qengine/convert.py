"""Conversion of models into .qcnn files.

convert_original(): pack a model quantized by the original Quantized-CNN code
(codebooks, .cbn assignments, biases) with its architecture, preprocessing
and class names.
"""
import os
import time

import numpy as np

from . import __version__, format as qformat
from .errors import FormatError, ModelError, QEngineError
from .graph import from_prototxt
from .readers.qcnn_original import load_quantized_layers, read_mean, scan_dir

MEAN_STEP = 1.0 / 64  # mean images are stored to within 1/128 (see docs/FORMAT.md)
MAX_LABELS_BYTES = 16 * 1024 * 1024


def read_prototxt(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read(MAX_LABELS_BYTES + 1)
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: cannot read prototxt ({e})") from None
    return from_prototxt(text, source=path)


PRESETS = ("alexnet", "caffenet", "vgg_cnn_s", "vgg16")


def preset_path(name):
    """The preset's prototxt: installed as qengine.models, or models/ in a source tree."""
    try:
        from .models import preset_path as installed
        return installed(name)
    except ImportError:
        here = os.path.dirname(os.path.abspath(__file__))
        return os.path.join(os.path.dirname(here), "models", f"{name}.prototxt")


def preset_graph(name):
    if name not in PRESETS:
        raise QEngineError(f"unknown architecture {name!r}; presets: {', '.join(PRESETS)}")
    return read_prototxt(preset_path(name))


def read_labels(path, n_classes=None):
    """One class name per line; line i (0-based) is class i."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_LABELS_BYTES + 1)
    except OSError as e:
        raise FormatError(f"{path}: cannot read labels ({e.strerror})") from None
    if len(data) > MAX_LABELS_BYTES:
        raise FormatError(f"{path}: labels file larger than {MAX_LABELS_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{path}: labels file is not UTF-8 text") from None
    names = [ln.strip() for ln in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if n_classes is not None and len(names) != n_classes:
        raise ModelError(f"{path}: {len(names)} class names for a network with {n_classes} outputs")
    return names


def output_classes(graph):
    from .graph import infer_shapes
    shapes = infer_shapes(graph)
    last = shapes[graph["layers"][-1]["top"][0]]
    return int(np.prod(last))


def _graph_for(arch, prototxt):
    if arch and prototxt:
        raise QEngineError("give either --arch or --prototxt, not both")
    if prototxt:
        return read_prototxt(prototxt), os.path.basename(prototxt)
    return preset_graph(arch or "alexnet"), f"preset:{arch or 'alexnet'}"


def convert_original(src_dir, out, arch=None, prototxt=None, labels=None, mean=None,
                     force=False, log=None):
    """Pack an original Quantized-CNN model directory into `out` (.qcnn)."""
    log = log or (lambda msg: None)
    t0 = time.time()
    if not os.path.isdir(src_dir):
        raise QEngineError(f"{src_dir}: not a directory")
    if not force and os.path.exists(out):
        raise QEngineError(f"{out}: already exists (use --force to replace it)")
    graph, arch_src = _graph_for(arch, prototxt)
    scan_dir(src_dir)
    log(f"reading {src_dir} ({arch_src}, {len(graph['layers'])} layers)")
    layers = load_quantized_layers(src_dir, graph)
    tensors, qinfo = {}, {}
    for L in graph["layers"]:
        q = layers.get(L["name"])
        if q is None:
            continue
        n = L["name"]
        M, K, d = q["codebook"].shape
        L["weights"] = {"mode": "lut", "codebook": f"{n}.codebook", "indices": f"{n}.indices",
                        "bias": f"{n}.bias"}
        tensors[f"{n}.codebook"] = qformat.Tensor(q["codebook"])
        tensors[f"{n}.indices"] = qformat.Tensor(q["indices"], bits=q["bits"])
        tensors[f"{n}.bias"] = qformat.Tensor(q["bias"])
        qinfo[n] = {"subdim": d, "k": K, "bits": q["bits"]}
        log(f"  {n:8s} {L['type']:13s} M={M:5d} K={K:4d} d={d} indices {list(q['indices'].shape)} "
            f"{q['bits']} bits")
    c, h, w = graph["input"]["shape"]
    pre = {"channel_order": "bgr"}
    if mean is None:
        cand = os.path.join(src_dir, "imagenet_mean.single.bin")
        mean = cand if os.path.exists(cand) else None
    if mean is not None:
        m = read_mean(mean)
        tensors["preprocess.mean"] = qformat.Tensor(m, encoding="qdelta2d", step=MEAN_STEP)
        pre["mean"] = {"type": "image", "tensor": "preprocess.mean"}
        if m.shape[1:] != (h, w):
            pre["resize"] = [int(m.shape[1]), int(m.shape[2])]
            pre["resize_method"] = "bilinear_align_corners"
            pre["crop"] = [h, w]
        log(f"  mean image {mean} {list(m.shape)}")
    if labels is None:
        cand = os.path.join(src_dir, "class_names.txt")
        labels = cand if os.path.exists(cand) else None
    names = read_labels(labels, output_classes(graph)) if labels else []
    if labels:
        log(f"  {len(names)} class names from {labels}")
    meta = {
        "graph": graph,
        "preprocess": pre,
        "class_names": names,
        "provenance": {"source": os.path.abspath(src_dir), "source_format": "quantized-cnn",
                       "architecture": arch_src, "converter": f"qengine {__version__}",
                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "quantization": qinfo},
    }
    size = qformat.write(out, meta, tensors, force=force)
    log(f"wrote {out}: {size} bytes ({size / 1e6:.2f} MB) in {time.time() - t0:.1f} s")
    return size
