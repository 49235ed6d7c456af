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
from .errors import FormatError, InputError, ModelError, QEngineError
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


def check_fits(pre, input_shape, tensors):
    """The preprocessing must turn an image into this network's input: checked
    at convert time (a 1-channel network with --channel-order rgb, or a crop
    larger than the resize, would otherwise fail only later, in qrun)."""
    from .preprocess import Preprocessor
    m = tensors.get("preprocess.mean")
    try:
        Preprocessor(pre, input_shape, None if m is None else m.array)
    except ModelError as e:
        c, h, w = input_shape
        raise InputError(f"the preprocessing options do not fit the model's input "
                         f"({c} x {h} x {w}): {str(e).removeprefix('preprocessing: ')}") from None


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


AGREEMENT_IMAGES = 250   # calibration images the agreement is measured on (without a held-out set)
DEFAULT_SETTINGS = {"conv_subdim": 8, "conv_k": 128, "fc_subdim": 4, "fc_k": 32}


class Steps:
    """The wall time of each step of a conversion, logged as each ends."""

    def __init__(self, log):
        self.log, self.times, self.t = log, {}, time.time()

    def done(self, step):
        now, took = time.time(), time.time() - self.t
        self.times[step] = self.times.get(step, 0.0) + took
        self.t = now
        self.log(f"[{step}: {took:.1f} s]")


def quantize_model(graph, weights, out, source, conv_subdim=None, conv_k=None, fc_subdim=None,
                   fc_k=None, layer_opts=None, keep_dense=(), labels=None, preprocess=None,
                   iters=25, seed=0, calib=None, speedup=None, force=False, log=None,
                   progress=None, prepared=None, plan_on="time", min_agreement=None,
                   finetune=None):
    """Quantise a dense model (graph and {layer: (w, b)}) into `out` (.qcnn).

    conv_subdim, conv_k, fc_subdim, fc_k: one (d, K) for every convolution /
    fully-connected layer (DEFAULT_SETTINGS for those not given);
    layer_opts: {layer: {"subdim": d, "k": K}} overriding them;
    keep_dense: layer names kept as dense weights ("all" keeps every layer, which
    makes a dense reference model); calib: float32 inputs [N, C, H, W] (an
    array or memory map, read in batches) for error correction (None: plain
    k-means); speedup: a speed-up over the dense network for which plan.py
    picks each remaining layer's d and K (or keeps it dense), measuring errors
    on calib.  With calib and none of the settings above, the settings are
    chosen automatically: the fastest plan whose top-1 agreement with the
    dense network, on the calibration inputs held out from fitting (every
    HOLDOUT_EVERY-th), is at least min_agreement (plan.DEFAULT_MIN_AGREEMENT).
    preprocess: keyword options of make_preprocess() (mean, mean_pixel,
    scale, channel_order, resize, crop); prepared: ((spec, tensors) or None,
    class names or None) already made, as a .qcnn source carries them
    (convert_qcnn); plan_on: what plans and the predicted speed are priced by:
    "time" (each layer form timed on this machine, costmodel.CostModel) or
    "operations" (multiply-adds + lookups); finetune: None, or keyword
    options of finetune.finetune() (epochs, lr, ...) to fine-tune codebooks
    and biases by distillation after error correction (needs calib and
    PyTorch).  Returns the file's size."""
    from .costmodel import CostModel, OperationCounts
    from . import plan as planning
    log = log or (lambda m: None)
    steps = Steps(log)
    if not force and os.path.exists(out):
        raise QEngineError(f"{out}: already exists (use --force to replace it)")
    layer_opts = dict(layer_opts or {})
    known = {L["name"] for L in graph["layers"] if L["type"] in QUANTIZABLE}
    all_dense = "all" in keep_dense
    for n in list(layer_opts) + [k for k in keep_dense if k != "all"]:
        if n not in known:
            raise QEngineError(f"no Convolution or InnerProduct layer named {n!r}; "
                               f"layers: {', '.join(sorted(known))}")
    if plan_on not in ("time", "operations"):
        raise QEngineError(f"plan_on must be 'time' or 'operations', got {plan_on!r}")
    given = {"conv_subdim": conv_subdim, "conv_k": conv_k, "fc_subdim": fc_subdim, "fc_k": fc_k}
    explicit = any(v is not None for v in given.values()) or layer_opts or speedup is not None
    settings = {k: DEFAULT_SETTINGS[k] if v is None else int(v) for k, v in given.items()}
    auto = calib is not None and not explicit and not all_dense
    if min_agreement is not None and not auto:
        raise QEngineError("--min-agreement chooses the settings itself: it needs calibration "
                           "images and none of --speedup, --layer, --conv-*, --fc-*")
    min_agreement = planning.DEFAULT_MIN_AGREEMENT if min_agreement is None else min_agreement
    if not 0.0 <= min_agreement <= 1.0:
        raise QEngineError(f"--min-agreement must be between 0 and 1, got {min_agreement:g}")
    # everything that can fail on the user's input fails before the long work
    names = read_labels(labels, output_classes(graph)) if labels else []
    tensors = {}
    ready_pre, ready_names = prepared or (None, None)
    if ready_names is not None:
        names = ready_names
    if ready_pre is not None:           # a .qcnn source's own preprocessing
        pre = ready_pre[0]
        tensors.update(ready_pre[1])
    else:
        pre = make_preprocess(tuple(graph["input"]["shape"]), tensors=tensors,
                              **(preprocess or {}))
        if any(v is not None for v in (preprocess or {}).values()):
            check_fits(pre, tuple(graph["input"]["shape"]), tensors)
    if finetune is not None:
        if calib is None:
            raise QEngineError("--finetune needs calibration images (--calib)")
        from .finetune import _torch
        _torch()                        # installed? (before any long work)
    costs = CostModel() if plan_on == "time" else OperationCounts()
    if all_dense:
        keep_dense = tuple(known)
    if calib is None and not all_dense and not explicit:
        log("warning: no calibration images, so nothing checks this model's accuracy: the "
            "default settings (conv d=8 K=128, fc d=4 K=32) can lose much of it.  Give --calib "
            "IMAGES to choose the settings by measured agreement, or choose them (--speedup, "
            "--conv-k ...) and check the result with qbench --accuracy")
    fit, held, search = calib, None, None
    if auto:
        from .calibration import Subset
        fit_idx, held_idx = planning.holdout(len(calib))
        fit, held = Subset(calib, fit_idx), Subset(calib, held_idx)
        log(f"choosing the settings: the fastest plan whose top-1 agreement with the dense "
            f"network on {len(held)} held-out calibration images is >= {min_agreement:.1%} "
            f"({len(fit)} images fit the quantisation)")
        search = planning.AgreementSearch(graph, weights, costs, fit, held, min_agreement,
                                          keep_dense=keep_dense, seed=seed, log=log,
                                          progress=progress)
        choice = search.best()
        steps.done("plan")
        layer_opts, dense_set = search.planner.settings(choice)
        keep_dense = tuple(dense_set | set(keep_dense))
    elif speedup is not None and not all_dense:
        what = "operations" if costs.mode == "operations" else "time"
        log(f"planning per-layer settings for {speedup:g}x less {what} than the dense network")
        planned, dense_set, _ = planning.plan(graph, weights, speedup, calib,
                                              keep_dense=keep_dense, fixed=layer_opts,
                                              seed=seed, log=log, progress=progress, costs=costs)
        layer_opts = {**planned, **layer_opts}
        keep_dense = tuple(dense_set)
        steps.done("plan")
    log(f"quantising {source['source']} ({len(graph['layers'])} layers)")
    while True:
        quantized, qinfo = _kmeans_layers(graph, weights, settings, layer_opts, keep_dense,
                                          iters, seed, log, progress)
        steps.done("k-means")
        errors = {}
        if fit is not None and quantized:
            from .errcorr import error_correct
            quantized = error_correct(graph, weights, quantized, fit, log=log, progress=progress,
                                      errors=errors)
            steps.done("error correction")
        if finetune is not None and quantized:
            from .finetune import finetune as tune
            log(f"fine-tuning codebooks and biases by distillation on {len(fit)} images")
            quantized, _ = tune(graph, weights, quantized, fit, seed=seed, log=log,
                                progress=progress, **finetune)
            steps.done("fine-tuning")
        agreement = None
        if calib is not None and quantized:
            check = held
            if check is None:               # at most AGREEMENT_IMAGES, evenly spread
                from .calibration import Subset
                n = len(fit)
                check = fit if n <= AGREEMENT_IMAGES else Subset(
                    fit, np.linspace(0, n - 1, AGREEMENT_IMAGES).astype(np.int64))
            agreement = _agreement(graph, weights, quantized, check,
                                   search.dense_top1 if search is not None else None)
            where = (f"{len(held)} held-out calibration images" if held is not None else
                     f"{len(check)} of its calibration images (fitted by error correction)")
            log(f"top-1 agreement with the dense network: {agreement:.2%} on {where}")
            steps.done("agreement")
        if search is None or agreement is None or agreement >= min_agreement:
            break
        slower = search.slower()
        if slower is None:
            break
        log(f"below {min_agreement:.1%}: the next slower plan")
        layer_opts, dense_set = search.planner.settings(slower)
        keep_dense = tuple(dense_set)
    for L in graph["layers"]:
        n = L["name"]
        if n in weights and L["type"] not in QUANTIZABLE:   # per-channel affine (Scale)
            s_, t_ = weights[n]
            L["weights"] = {"scale": f"{n}.scale", "shift": f"{n}.shift"}
            tensors[f"{n}.scale"] = qformat.Tensor(np.ascontiguousarray(s_, np.float32))
            tensors[f"{n}.shift"] = qformat.Tensor(np.ascontiguousarray(t_, np.float32))
        elif n in weights and n not in quantized:
            w, b = weights[n]
            L["weights"] = {"mode": "dense", "weight": f"{n}.weight", "bias": f"{n}.bias"}
            tensors[f"{n}.weight"] = qformat.Tensor(w)
            tensors[f"{n}.bias"] = qformat.Tensor(b)
        elif n in quantized:
            cb, idx = quantized[n][:2]
            b = quantized[n][2] if len(quantized[n]) > 2 else weights[n][1]
            K = cb.shape[1]
            L["weights"] = {"mode": "lut", "codebook": f"{n}.codebook", "indices": f"{n}.indices",
                            "bias": f"{n}.bias"}
            tensors[f"{n}.codebook"] = qformat.Tensor(np.ascontiguousarray(cb, np.float32))
            tensors[f"{n}.indices"] = qformat.Tensor(idx, bits=max(1, (K - 1).bit_length()))
            tensors[f"{n}.bias"] = qformat.Tensor(np.ascontiguousarray(b, np.float32))
            if n in errors:
                qinfo[n]["response_error"] = round(errors[n], 5)
    quant = {"layers": qinfo, "kmeans_iters": iters, "seed": seed,
             "error_correction": fit is not None,
             "finetune": finetune if finetune is None else dict(finetune),
             "calibration_inputs": 0 if calib is None else len(calib)}
    if auto:
        quant["chosen_by"] = {"min_agreement": min_agreement, "held_out": len(held)}
    if agreement is not None:
        quant["agreement"] = {"top1": round(agreement, 5),
                              "images": len(held) if held is not None else len(check),
                              "held_out": held is not None}
    if quantized and costs.mode != "operations":
        quant["predicted"] = _prediction(graph, weights, quantized, costs, log)
        steps.done("prediction")
    meta = {
        "graph": graph,
        "preprocess": pre,
        "class_names": names,
        "provenance": {**source, "converter": f"qengine {__version__}",
                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "quantization": quant},
    }
    size = qformat.write(out, meta, tensors, force=force)
    steps.done("write")
    _summary(out, qinfo, agreement, held is not None, log)
    total = sum(steps.times.values())
    log(f"wrote {out}: {size} bytes ({size / 1e6:.2f} MB) in {total:.1f} s ("
        + ", ".join(f"{k} {v:.1f} s" for k, v in steps.times.items()) + ")")
    return size


def _summary(out, qinfo, agreement, held_out, log):
    """The run's closing table: each weighted layer's form, the kernel the
    runtime runs it with on this machine (fast mode, as qrun), the bytes the
    file stores for it and its response error after error correction."""
    if not qinfo:
        return
    from .runtime import Model
    kernels, nbytes = {}, {}
    try:
        with Model(out, mode="fast") as m:
            kernels, nbytes = m.layer_strategies(), m.layer_bytes()
    except QEngineError as e:        # the file is written; the summary is a courtesy
        log(f"(summary without kernels: {e})")
    log("summary (kernel: how qrun runs the layer on this machine):")
    w = max(len(n) for n in qinfo)
    for n, info in qinfo.items():
        form = "dense" if info["mode"] == "dense" else f"d={info['subdim']} K={info['k']}"
        err = info.get("response_error")
        log(f"  {n:<{w}}  {form:<10} kernel {kernels.get(n, '?'):<12} "
            f"{nbytes.get(n, 0):>10,} bytes  "
            + ("" if err is None else f"response error {err:.4f}"))
    if agreement is not None:
        log(f"  top-1 agreement with the dense network {agreement:.2%}"
            + (" (held-out images)" if held_out else " (calibration images)"))


def _kmeans_layers(graph, weights, settings, layer_opts, keep_dense, iters, seed, log, progress):
    """k-means of every weighted layer not kept dense: ({layer: (codebook,
    indices)}, {layer: info for the file's provenance})."""
    from .quantize import quantize_weights
    quantized, qinfo = {}, {}
    for L in graph["layers"]:
        n = L["name"]
        if n not in weights or L["type"] not in QUANTIZABLE:
            continue
        w, b = weights[n]
        if n in keep_dense:
            qinfo[n] = {"mode": "dense"}
            log(f"  {n:<18} kept dense {list(w.shape)}")
            continue
        kind = "conv" if L["type"] == "Convolution" else "fc"
        o = layer_opts.get(n, {})
        d = int(o.get("subdim", settings[f"{kind}_subdim"]))
        K = int(o.get("k", settings[f"{kind}_k"]))
        if not 1 <= K <= 256 or d < 1:
            raise QEngineError(f"layer {n!r}: need 1 <= K <= 256 and d >= 1 (got K={K}, d={d})")
        prog = (progress or (lambda label, total: None))(f"k-means {n}", iters)
        cb, idx = quantize_weights(w, kind, d, K, iters=iters, seed=seed, progress=prog)
        if prog:
            prog.close()
        quantized[n] = (cb, idx)
        qinfo[n] = {"mode": "lut", "subdim": d, "k": int(cb.shape[1])}
        log(f"  {n:<18} d={d} K={cb.shape[1]:<4} M={cb.shape[0]:<5} indices {list(idx.shape)}")
    return quantized, qinfo


def _agreement(graph, weights, quantized, inputs, dense_top1=None):
    """Top-1 agreement of the quantized network (dequantized weights) with
    the dense one on inputs (whose dense top-1 classes may be given)."""
    from .calibration import dequantized_params, top1
    if dense_top1 is None:
        dense_top1 = top1(graph, weights, inputs)
    return float(np.mean(top1(graph, dequantized_params(graph, weights, quantized), inputs)
                         == dense_top1))


def _prediction(graph, weights, quantized, costs, log):
    """The predicted time per image of the quantized network on this machine
    (costmodel.predict), logged and stored in the file for qbench to show."""
    from .costmodel import predict
    choice = {n: (int(q[0].shape[2]), int(q[0].shape[1])) for n, q in quantized.items()}
    dense_graph = {"input": graph["input"],
                   "layers": [{k: v for k, v in L.items() if k != "weights"}
                              for L in graph["layers"]]}
    total, per, dense = predict(dense_graph, weights, choice, costs)
    log(f"predicted: {total * 1e3:.2f} ms per image, {dense / total:.2f}x faster than the dense "
        f"network ({dense * 1e3:.2f} ms), batch 1, 1 thread, {costs.mode} mode, {costs.isa}")
    return {"ms": round(total * 1e3, 4), "dense_ms": round(dense * 1e3, 4),
            "outside_layers_ms": round((total - sum(per.values())) * 1e3, 4),
            "speedup": round(dense / total, 4), "isa": costs.isa, "mode": costs.mode,
            "batch": 1, "threads": 1,
            "layers": {n: round(t * 1e3, 4) for n, t in per.items()}}
