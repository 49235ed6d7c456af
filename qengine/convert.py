"""Conversion of models into .qcnn files: convert(source, out, ...) loads any
source through its frontend (frontends.load), then packs quantized original
binaries as they are (pack_original) or quantizes dense weights
(quantize_model), and writes the file with its preprocessing and class names.
"""
import os
import re
import time

import numpy as np

from . import __version__, format as qformat
from .errors import FormatError, ModelError, QEngineError
from .files import check_regular, open_regular
from .frontends import Source, load
from .layers import QUANTIZABLE
from .readers.qcnn_original import read_mean

MEAN_STEP = 1.0 / 64  # mean images are stored to within 1/128 (see docs/FORMAT.md)
MAX_TEXT_BYTES = 16 * 1024 * 1024  # labels files


_WNID = re.compile(r"n\d{8}\s+")


def read_labels(path, n_classes=None):
    """One class name per line; line i (0-based) is class i.  Lines end at "\n"
    only (a "\r" before it is dropped; U+2028, form feeds and the like stay
    inside a label), a UTF-8 byte-order mark is ignored.  When every line
    starts with a WordNet id (Caffe's synset_words.txt), the ids are dropped."""
    try:
        with open_regular(path, "labels file") as f:
            data = f.read(MAX_TEXT_BYTES + 1)
    except OSError as e:
        raise FormatError(f"{path}: cannot read labels ({e.strerror})") from None
    if len(data) > MAX_TEXT_BYTES:
        raise FormatError(f"{path}: labels file larger than {MAX_TEXT_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FormatError(f"{path}: labels file is not UTF-8 text") from None
    names = [ln.strip(" \t\r") for ln in text.split("\n")]
    while names and not names[-1]:
        names.pop()
    # Caffe's synset_words.txt: "n01440764 tench, Tinca tinca" -> "tench, Tinca tinca"
    if names and all(_WNID.match(n) for n in names):
        names = [_WNID.sub("", n, count=1) for n in names]
    if n_classes is not None and len(names) != n_classes:
        raise ModelError(f"{path}: {len(names)} class names for a network with {n_classes} outputs")
    return names


def output_classes(graph):
    from .graph import infer_shapes
    shapes = infer_shapes(graph)
    last = shapes[graph["layers"][-1]["top"][0]]
    return int(np.prod(last))


def convert(source, out, arch=None, input_shape=None, labels=None, mean=None, force=False,
            log=None, **quantize_options):
    """Convert a model source (a frontends.Source, or a path detect() reads)
    into `out` (.qcnn): quantized original binaries are packed as they are,
    every other source quantized by quantize_model(**quantize_options)."""
    from .frontends import detect
    if not isinstance(source, Source):
        source = detect(source)
    if not force and os.path.exists(out):
        raise QEngineError(f"{out}: already exists (use --force to replace it)")
    graph, weights, prov = load(source, arch=arch, input_shape=input_shape)
    if source.kind == "original":
        return pack_original(source.path, graph, weights, prov, out, labels=labels, mean=mean,
                             force=force, log=log)
    if callable(quantize_options.get("calib")):   # inputs made for the model's input shape
        quantize_options["calib"] = quantize_options["calib"](graph["input"]["shape"])
    carried = prov.pop("carried", None)
    if carried is not None and (quantize_options.get("preprocess") or {}) and any(
            v is not None for v in quantize_options["preprocess"].values()):
        carried["preprocess"] = None        # the user's options replace the model's own
    if carried is not None:
        pre = carried["preprocess"]
        if pre is not None:
            pre = (pre[0], {k: qformat.Tensor(v, encoding="qdelta2d", step=MEAN_STEP)
                            for k, v in pre[1].items()})
        quantize_options["prepared"] = (pre, None if labels else carried["class_names"])
    return quantize_model(graph, weights, out, prov, labels=labels, force=force, log=log,
                          **quantize_options)


def convert_original(src_dir, out, arch=None, prototxt=None, **kw):
    """Pack an original Quantized-CNN model directory into `out` (.qcnn)."""
    if not os.path.isdir(src_dir):
        raise QEngineError(f"{src_dir}: not a directory")
    return convert(Source("original", src_dir, prototxt), out, arch=arch, **kw)


def pack_original(src_dir, graph, layers, prov, out, labels=None, mean=None, force=False,
                  log=None):
    """Write quantized original binaries ({layer: codebook, indices, bias, bits})
    with their graph, preprocessing (the directory's mean image) and class names."""
    log = log or (lambda msg: None)
    t0 = time.time()
    log(f"reading {src_dir} ({prov['architecture']}, {len(graph['layers'])} layers)")
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
        "provenance": {**prov, "converter": f"qengine {__version__}",
                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "quantization": qinfo},
    }
    size = qformat.write(out, meta, tensors, force=force)
    log(f"wrote {out}: {size} bytes ({size / 1e6:.2f} MB) in {time.time() - t0:.1f} s")
    return size


def read_mean_file(path):
    """A mean image from .npy ([C,H,W]) or the original .bin format."""
    if str(path).endswith(".npy"):
        try:
            check_regular(path, FormatError, "mean file")
            # mapped: a header declaring more values than the file holds fails here,
            # before anything is allocated
            m = np.load(path, allow_pickle=False, mmap_mode="r")
            if m.size > 1 << 26:
                raise FormatError(f"{path}: mean image of {m.size} values is too large")
        except QEngineError:
            raise
        except Exception as e:     # numpy's header parser raises many kinds on bad files
            raise FormatError(f"{path}: cannot read mean image ({e})") from None
        if m.ndim != 3 or m.dtype.kind not in "fiu" or not np.all(np.isfinite(m)) or \
                np.abs(m).max(initial=0) > 1e6:
            raise FormatError(f"{path}: a mean image must be finite [C, H, W], is {m.shape}")
        return np.ascontiguousarray(m, np.float32)
    return read_mean(path)


def make_preprocess(input_shape, mean=None, mean_pixel=None, scale=None, channel_order=None,
                    resize=None, crop=None, tensors=None, std=None, pixel_range=None):
    """Preprocessing metadata from qconvert's options (see preprocess.py)."""
    c, h, w = input_shape
    pre = {"channel_order": channel_order or ("bgr" if c == 3 else "gray")}
    if pixel_range is not None and pixel_range != 255:
        pre["pixel_range"] = 1 if pixel_range == 1 else pixel_range
    if std is not None:
        pre["std"] = [float(v) for v in std]
    if mean is not None and mean_pixel is not None:
        raise QEngineError("give --mean or --mean-pixel, not both")
    if mean is not None:
        m = read_mean_file(mean)
        tensors["preprocess.mean"] = qformat.Tensor(m, encoding="qdelta2d", step=MEAN_STEP)
        pre["mean"] = {"type": "image", "tensor": "preprocess.mean"}
        if m.shape[1:] != (h, w) and resize is None:
            resize = m.shape[1]
    if mean_pixel is not None:
        pre["mean"] = {"type": "pixel", "values": [float(v) for v in mean_pixel]}
    if scale is not None:
        pre["scale"] = float(scale)
    if resize:
        pre["resize"] = [int(resize), int(resize)] if np.isscalar(resize) else list(resize)
        pre["resize_method"] = "bilinear"
        pre["crop"] = [h, w] if crop is None else [int(crop), int(crop)]
    elif crop:
        pre["crop"] = [int(crop), int(crop)]
    return pre


def convert_caffe(prototxt, caffemodel, out, **kw):
    """Quantise a dense Caffe model into `out` (.qcnn); options as quantize_model()."""
    return convert(Source("caffe", None, prototxt, caffemodel), out, **kw)


def convert_original_dense(src_dir, out, arch=None, prototxt=None, **kw):
    """Quantise a dense model in the original code's layout (convKnl/fcntWei/biasVec)."""
    return convert(Source("original-dense", src_dir, prototxt), out, arch=arch, **kw)


def convert_onnx(path, out, input_shape=None, **kw):
    """Quantise (or with keep_dense=("all",) keep dense) an ONNX model into `out`."""
    return convert(Source("onnx", path), out, input_shape=input_shape, **kw)


def convert_qcnn(src, out, preprocess=None, labels=None, **kw):
    """Re-quantise a .qcnn with other settings (its dequantized weights are the
    dense model); its preprocessing and class names carry over unless
    `preprocess` options or `labels` are given.  Options as quantize_model()."""
    return convert(Source("qcnn", src), out, preprocess=preprocess, labels=labels, **kw)


def quantize_model(graph, weights, out, source, conv_subdim=8, conv_k=128, fc_subdim=4, fc_k=32,
                   layer_opts=None, keep_dense=(), labels=None, preprocess=None, iters=25, seed=0,
                   calib=None, speedup=None, force=False, log=None, progress=None,
                   prepared=None):
    """Quantise a dense model (graph and {layer: (w, b)}) into `out` (.qcnn).

    layer_opts: {layer: {"subdim": d, "k": K}} overriding the defaults;
    keep_dense: layer names kept as dense weights ("all" keeps every layer, which
    makes a dense reference model); calib: float32 inputs [N, C, H, W] for error
    correction (None: plain k-means); speedup: a theoretical speed-up for which
    plan.py picks each remaining layer's d and K (or keeps it dense), measuring
    errors on calib; preprocess: keyword options of
    make_preprocess() (mean, mean_pixel, scale, channel_order, resize, crop);
    prepared: ((spec, tensors) or None, class names or None) already made, as
    a .qcnn source carries them (convert_qcnn)."""
    from .quantize import quantize_weights
    log = log or (lambda m: None)
    t0 = time.time()
    if not force and os.path.exists(out):
        raise QEngineError(f"{out}: already exists (use --force to replace it)")
    layer_opts = dict(layer_opts or {})
    known = {L["name"] for L in graph["layers"] if L["type"] in QUANTIZABLE}
    all_dense = "all" in keep_dense
    for n in list(layer_opts) + [k for k in keep_dense if k != "all"]:
        if n not in known:
            raise QEngineError(f"no Convolution or InnerProduct layer named {n!r}; "
                               f"layers: {', '.join(sorted(known))}")
    # everything that can fail on the user's input fails before the long work
    names = read_labels(labels, output_classes(graph)) if labels else []
    tensors, qinfo = {}, {}
    ready_pre, ready_names = prepared or (None, None)
    if ready_names is not None:
        names = ready_names
    if ready_pre is not None:           # a .qcnn source's own preprocessing
        pre = ready_pre[0]
        tensors.update(ready_pre[1])
    else:
        pre = make_preprocess(tuple(graph["input"]["shape"]), tensors=tensors,
                              **(preprocess or {}))
    if speedup is not None and not all_dense:
        from .plan import plan as plan_layers
        log(f"planning per-layer settings for a {speedup:g}x theoretical speed-up")
        planned, dense_set = plan_layers(graph, weights, speedup, calib, keep_dense=keep_dense,
                                  fixed=layer_opts, seed=seed, log=log, progress=progress)
        layer_opts = {**planned, **layer_opts}
        keep_dense = tuple(dense_set)
    log(f"quantising {source['source']} ({len(graph['layers'])} layers)")
    plan = []
    for L in graph["layers"]:
        n = L["name"]
        if n not in weights:
            continue
        if L["type"] not in QUANTIZABLE:     # per-channel affine (Scale): stored as it is
            s_, t_ = weights[n]
            L["weights"] = {"scale": f"{n}.scale", "shift": f"{n}.shift"}
            tensors[f"{n}.scale"] = qformat.Tensor(np.ascontiguousarray(s_, np.float32))
            tensors[f"{n}.shift"] = qformat.Tensor(np.ascontiguousarray(t_, np.float32))
            continue
        kind = "conv" if L["type"] == "Convolution" else "fc"
        if all_dense or n in keep_dense:
            plan.append((L, kind, None, None))
            continue
        o = layer_opts.get(n, {})
        d = int(o.get("subdim", conv_subdim if kind == "conv" else fc_subdim))
        K = int(o.get("k", conv_k if kind == "conv" else fc_k))
        if not 1 <= K <= 256 or d < 1:
            raise QEngineError(f"layer {n!r}: need 1 <= K <= 256 and d >= 1 (got K={K}, d={d})")
        plan.append((L, kind, d, K))
    quantized = {}
    for L, kind, d, K in plan:
        n = L["name"]
        w, b = weights[n]
        if d is None:
            L["weights"] = {"mode": "dense", "weight": f"{n}.weight", "bias": f"{n}.bias"}
            tensors[f"{n}.weight"] = qformat.Tensor(w)
            qinfo[n] = {"mode": "dense"}
            log(f"  {n:<18} kept dense {list(w.shape)}")
        else:
            prog = (progress or (lambda label, total: None))(f"k-means {n}", iters)
            cb, idx = quantize_weights(w, kind, d, K, iters=iters, seed=seed, progress=prog)
            if prog:
                prog.close()
            quantized[n] = (cb, idx)
            qinfo[n] = {"mode": "lut", "subdim": d, "k": int(cb.shape[1])}
            log(f"  {n:<18} d={d} K={cb.shape[1]:<4} M={cb.shape[0]:<5} indices {list(idx.shape)}")
        tensors[f"{n}.bias"] = qformat.Tensor(b)
    if calib is not None and quantized:
        from .errcorr import error_correct
        quantized = error_correct(graph, weights, quantized, calib, log=log, progress=progress)
    for n, q in quantized.items():
        cb, idx = q[:2]
        if len(q) > 2:                      # error correction refitted the bias
            tensors[f"{n}.bias"] = qformat.Tensor(q[2])
        L = next(L for L in graph["layers"] if L["name"] == n)
        K = cb.shape[1]
        L["weights"] = {"mode": "lut", "codebook": f"{n}.codebook", "indices": f"{n}.indices",
                        "bias": f"{n}.bias"}
        tensors[f"{n}.codebook"] = qformat.Tensor(np.ascontiguousarray(cb, np.float32))
        tensors[f"{n}.indices"] = qformat.Tensor(idx, bits=max(1, (K - 1).bit_length()))
    meta = {
        "graph": graph,
        "preprocess": pre,
        "class_names": names,
        "provenance": {**source, "converter": f"qengine {__version__}",
                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "quantization": {"layers": qinfo, "kmeans_iters": iters, "seed": seed,
                                        "error_correction": calib is not None,
                                        "calibration_inputs": 0 if calib is None else len(calib)}},
    }
    size = qformat.write(out, meta, tensors, force=force)
    log(f"wrote {out}: {size} bytes ({size / 1e6:.2f} MB) in {time.time() - t0:.1f} s")
    return size
