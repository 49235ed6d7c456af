"""The Caffe frontend: a deploy (or train_val) prototxt and its .caffemodel ->
qengine's layer graph and dense weights.

The prototxt text is parsed by readers.prototxt and the weights by
readers.caffemodel (bytes and syntax only); this module knows Caffe: its layer
type names (current and legacy V1 enums), input declarations, train-only
layers, how each layer's parameters map onto the graph's (the layer records in
qengine/layers/ hold the graph's own rules), and BatchNorm + Scale: a
per-channel affine folded into the convolution before it (ResNets), else kept
as a Scale layer.
"""
import os

import numpy as np

from ..errors import FormatError, ModelError
from ..files import open_regular
from ..graph import MAX_DIM, MAX_LAYERS, SUPPORTED, infer_shapes, validate
from ..layers.weighted import scale_outputs
from ..readers import prototxt

MAX_TEXT_BYTES = 16 * 1024 * 1024  # a prototxt

# Caffe's legacy V1 `layers { type: ENUM }` names.
_V1_TYPES = {
    "CONVOLUTION": "Convolution", "INNER_PRODUCT": "InnerProduct", "RELU": "ReLU",
    "LRN": "LRN", "POOLING": "Pooling", "CONCAT": "Concat", "DROPOUT": "Dropout",
    "SOFTMAX": "Softmax", "DATA": "Data", "IMAGE_DATA": "ImageData", "ELTWISE": "Eltwise",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "ACCURACY": "Accuracy",
}
_INPUT_TYPES = ("Input", "Data", "ImageData", "MemoryData", "DummyData")
_TRAIN_ONLY = ("SoftmaxWithLoss", "Accuracy")


def _sub(msg, key, where):
    """The last sub-message `key` of msg (a dict), or {} when absent."""
    vals = msg.get(key)
    if not vals:
        return {}
    if not isinstance(vals[-1], dict):
        raise FormatError(f"{where}: {key} must be a message {{...}}, got {vals[-1]!r:.50}")
    return vals[-1]


def _one(msg, key, default=None, kind=None):
    vals = msg.get(key)
    if not vals:
        return default
    v = vals[-1]
    if kind is not None and not isinstance(v, kind):
        raise FormatError(f"field {key!r} has a value of the wrong type: {v!r}")
    return v


def _int(msg, key, default, where):
    v = _one(msg, key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise FormatError(f"{where}: {key} must be an integer, got {v!r}")
    if v < 0 or v > MAX_DIM:
        raise FormatError(f"{where}: {key}={v} is out of range")
    return v


def _float(msg, key, default, where):
    v = _one(msg, key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise FormatError(f"{where}: {key} must be a number, got {v!r}")
    return float(v)


def _pair(msg, key, hkey, wkey, default, where):
    """Caffe's kernel_size / kernel_h + kernel_w style parameters."""
    if hkey in msg or wkey in msg:
        return [_int(msg, hkey, default, where), _int(msg, wkey, default, where)]
    vals = msg.get(key, [])
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > MAX_DIM:
            raise FormatError(f"{where}: {key} must be a non-negative integer, got {v!r}")
    if not vals:
        return [default, default]
    if len(vals) == 1:
        return [vals[0], vals[0]]
    if len(vals) == 2:
        return list(vals)
    raise FormatError(f"{where}: {key} has {len(vals)} values; 2-D layers take 1 or 2")


def _layer_params(ltype, msg, where):
    if ltype == "Convolution":
        p = _sub(msg, "convolution_param", where)
        dil = p.get("dilation", [])
        if any(v != 1 for v in dil):
            raise ModelError(f"{where}: dilation {dil} is not supported (only 1)")
        kernel = _pair(p, "kernel_size", "kernel_h", "kernel_w", 0, where)
        stride = _pair(p, "stride", "stride_h", "stride_w", 1, where)
        pad = _pair(p, "pad", "pad_h", "pad_w", 0, where)
        if min(kernel) < 1 or min(stride) < 1:
            raise ModelError(f"{where}: kernel and stride must be at least 1")
        if stride[0] != stride[1] or pad[0] != pad[1]:
            raise ModelError(f"{where}: different strides or pads in height and width are not "
                             f"supported (stride {stride}, pad {pad})")
        return {"num_output": _int(p, "num_output", 0, where), "kernel": kernel,
                "stride": stride[0], "pad": pad[0], "group": max(1, _int(p, "group", 1, where)),
                "bias_term": bool(_one(p, "bias_term", True))}
    if ltype == "InnerProduct":
        p = _sub(msg, "inner_product_param", where)
        if _one(p, "transpose", False):
            raise ModelError(f"{where}: transposed InnerProduct weights are not supported")
        return {"num_output": _int(p, "num_output", 0, where),
                "bias_term": bool(_one(p, "bias_term", True))}
    if ltype == "ReLU":
        p = _sub(msg, "relu_param", where)
        return {"negative_slope": _float(p, "negative_slope", 0.0, where)}
    if ltype == "LRN":
        p = _sub(msg, "lrn_param", where)
        region = _one(p, "norm_region", "ACROSS_CHANNELS")
        if region not in ("ACROSS_CHANNELS", 0):
            raise ModelError(f"{where}: LRN norm_region {region} is not supported")
        size = _int(p, "local_size", 5, where)
        if size < 1 or size % 2 == 0:
            raise ModelError(f"{where}: LRN local_size must be odd and positive, got {size}")
        return {"local_size": size, "alpha": _float(p, "alpha", 1.0, where),
                "beta": _float(p, "beta", 0.75, where), "k": _float(p, "k", 1.0, where)}
    if ltype == "Pooling":
        p = _sub(msg, "pooling_param", where)
        pool = _one(p, "pool", "MAX")
        if isinstance(pool, int) and not isinstance(pool, bool):
            pool = {0: "MAX", 1: "AVE"}.get(pool, pool)
        if pool not in ("MAX", "AVE"):
            raise ModelError(f"{where}: pooling method {pool} is not supported (MAX, AVE)")
        glob = bool(_one(p, "global_pooling", False))
        kernel = _pair(p, "kernel_size", "kernel_h", "kernel_w", 0, where)
        stride = _pair(p, "stride", "stride_h", "stride_w", 1, where)
        pad = _pair(p, "pad", "pad_h", "pad_w", 0, where)
        if not glob and (min(kernel) < 1 or min(stride) < 1):
            raise ModelError(f"{where}: pooling kernel and stride must be at least 1")
        return {"pool": pool, "kernel": kernel, "stride": stride, "pad": pad, "global": glob}
    if ltype == "Concat":
        p = _sub(msg, "concat_param", where)
        axis = _one(p, "axis", _one(p, "concat_dim", 1))
        if axis != 1:
            raise ModelError(f"{where}: Concat along axis {axis} is not supported (only 1)")
        return {"axis": 1}
    if ltype == "Softmax":
        p = _sub(msg, "softmax_param", where)
        if _one(p, "axis", 1) != 1:
            raise ModelError(f"{where}: Softmax only over axis 1 is supported")
        return {}
    if ltype == "Eltwise":
        p = _sub(msg, "eltwise_param", where)
        op = _one(p, "operation", "SUM")
        op = {0: "PROD", 1: "SUM", 2: "MAX"}.get(op, op) if not isinstance(op, bool) else op
        if op != "SUM":
            raise ModelError(f"{where}: Eltwise operation {op} is not supported (only SUM)")
        coeff = p.get("coeff", [])
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in coeff):
            raise FormatError(f"{where}: Eltwise coeff must be numbers")
        return {"operation": "SUM", **({"coeff": [float(v) for v in coeff]} if coeff else {})}
    return {}


def _affine_params(ltype, msg, where):
    """A BatchNorm or Scale layer: the graph's Scale (weights from the
    caffemodel), and what computing them needs."""
    if ltype == "BatchNorm":
        p = _sub(msg, "batch_norm_param", where)
        if _one(p, "use_global_stats", True) is False:
            raise ModelError(f"{where}: BatchNorm with use_global_stats: false is training-only")
        return {"type": "BatchNorm", "eps": _float(p, "eps", 1e-5, where)}
    p = _sub(msg, "scale_param", where)
    if _one(p, "axis", 1) != 1 or _one(p, "num_axes", 1) != 1:
        raise ModelError(f"{where}: Scale only per channel (axis 1, num_axes 1) is supported")
    return {"type": "Scale", "bias_term": bool(_one(p, "bias_term", False))}


def from_prototxt(text, source="<prototxt>"):
    """Build a graph dict from Caffe deploy prototxt text (new or V1 syntax)."""
    try:
        return _from_prototxt(text, source)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as e:
        # a value of an unexpected kind somewhere the checks above did not foresee
        raise FormatError(f"{source}: malformed prototxt ({type(e).__name__}: {e})") from None


def _from_prototxt(text, source):
    msg = prototxt.parse(text, source)
    layers_msg = msg.get("layer", []) + msg.get("layers", [])
    if len(layers_msg) > MAX_LAYERS:
        raise FormatError(f"{source}: more than {MAX_LAYERS} layers")
    input_name, input_shape = None, None
    if "input" in msg:
        input_name = msg["input"][0]
        dims = msg.get("input_dim") or []
        if not dims and msg.get("input_shape"):
            dims = _sub(msg, "input_shape", source).get("dim", [])
        input_shape = dims
    layers, unsupported = [], []
    for i, lm in enumerate(layers_msg):
        if not isinstance(lm, dict):
            raise FormatError(f"{source}: layer {i + 1} is not a message {{...}}")
        ltype = _one(lm, "type", None)
        name = _one(lm, "name", f"layer{i + 1}")
        where = f"{source}: layer {str(name)[:100]!r}"
        if not isinstance(ltype, (str, int)) or isinstance(ltype, bool) or \
                not isinstance(name, str):
            raise FormatError(f"{where}: missing or invalid name or type")
        if isinstance(ltype, int) or ltype in _V1_TYPES:
            ltype = _V1_TYPES.get(ltype, str(ltype))
        # layers only in the TEST/TRAIN phase of a train_val file
        if ltype in _INPUT_TYPES:
            if input_name is None:
                tops = lm.get("top", [])
                input_name = tops[0] if tops else name
                ip = _sub(lm, "input_param", where)
                input_shape = _sub(ip, "shape", where).get("dim", [])
            continue
        if ltype in _TRAIN_ONLY:
            continue
        caffe = None
        if ltype in ("BatchNorm", "Scale"):
            caffe = _affine_params(ltype, lm, where)
            if len(lm.get("bottom", [])) != 1:
                raise ModelError(f"{where}: {ltype} with {len(lm.get('bottom', []))} inputs is "
                                 f"not supported (only a learned per-channel {ltype})")
            ltype = "Scale"
        elif ltype not in SUPPORTED:
            unsupported.append(f"{name} ({ltype})")
            continue
        bottoms = [str(b) for b in lm.get("bottom", [])]
        tops = [str(t) for t in lm.get("top", [])]
        if not tops:
            raise FormatError(f"{where}: no top blob")
        L = {"name": str(name), "type": ltype, "bottom": bottoms, "top": tops,
             "params": {} if caffe else _layer_params(ltype, lm, where)}
        if caffe:
            L["caffe"] = caffe            # read by load(), then dropped
        layers.append(L)
    if unsupported:
        raise ModelError(f"{source}: unsupported layers: {', '.join(unsupported)}")
    if input_name is None:
        raise ModelError(f"{source}: no input declared (input/input_dim or an Input layer)")
    if not isinstance(input_name, str):
        raise FormatError(f"{source}: the input name must be a string")
    if input_shape is None or len(input_shape) not in (3, 4) or \
            not all(type(v) is int for v in input_shape):
        raise ModelError(f"{source}: input shape must be 3 or 4 integers, got {input_shape!r:.100}")
    chw = list(input_shape[-3:])
    if min(chw) < 1 or max(chw) > MAX_DIM:
        raise ModelError(f"{source}: invalid input shape {input_shape}")
    g = {"input": {"name": str(input_name), "shape": chw}, "layers": layers}
    validate(g)
    infer_shapes(g)
    return g


def read_prototxt(path):
    """The graph of a prototxt file."""
    try:
        with open_regular(path, "prototxt file") as f:
            data = f.read(MAX_TEXT_BYTES + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: cannot read prototxt ({e})") from None
    if len(data) > MAX_TEXT_BYTES:
        raise FormatError(f"{path}: prototxt larger than {MAX_TEXT_BYTES} bytes")
    return from_prototxt(text, source=path)


def _blob(blobs, n, k, caffemodel, size, what):
    bl = blobs[n]["blobs"]
    if len(bl) <= k or bl[k].size != size:
        raise ModelError(f"{caffemodel}: layer {n!r} needs {what} of {size} values")
    return bl[k].reshape(-1).astype(np.float64)


def load_weights(graph, caffemodel, prototxt="prototxt"):
    """Dense weights {layer: (w, b)} (Scale layers: (scale, shift)) of `graph`
    from a .caffemodel, matched by layer name, shapes checked (legacy 4-D blobs
    reshaped).  Drops the graph's "caffe" notes."""
    from ..layers import record
    from ..readers.caffemodel import read_caffemodel
    blobs = read_caffemodel(caffemodel)
    shapes = infer_shapes(graph)
    weights = {}
    for L in graph["layers"]:
        n, p = L["name"], L["params"]
        shapes_of = record(L["type"]).weight_shapes(p, [shapes[b] for b in L["bottom"]])
        if not shapes_of:
            continue
        if n not in blobs or not blobs[n]["blobs"]:
            raise ModelError(f"{caffemodel}: no weights for layer {n!r} of {prototxt}")
        bl = blobs[n]["blobs"]
        caffe = L.pop("caffe", None)
        if caffe is not None:           # BatchNorm or Scale -> (scale, shift)
            C = shapes_of["scale"][0]
            if caffe["type"] == "BatchNorm":
                mean = _blob(blobs, n, 0, caffemodel, C, "a mean")
                var = _blob(blobs, n, 1, caffemodel, C, "a variance")
                sf = _blob(blobs, n, 2, caffemodel, 1, "a scale factor")[0] if len(bl) > 2 else 1
                f = 0.0 if sf == 0 else 1.0 / sf
                s = 1.0 / np.sqrt(var * f + caffe["eps"])
                t = -mean * f * s
            else:
                s = _blob(blobs, n, 0, caffemodel, C, "scales")
                t = (_blob(blobs, n, 1, caffemodel, C, "biases") if caffe["bias_term"]
                     else np.zeros(C))
            weights[n] = (s.astype(np.float32), t.astype(np.float32))
            continue
        want = shapes_of["weight"]
        cout = p["num_output"]
        w = bl[0]
        if w.size != int(np.prod(want)):
            raise ModelError(f"{caffemodel}: layer {n!r} weights {list(w.shape)} do not fit "
                             f"{list(want)} from {prototxt}")
        w = np.ascontiguousarray(w.reshape(want), np.float32)
        if p.get("bias_term", True):
            if len(bl) < 2 or bl[1].size != cout:
                raise ModelError(f"{caffemodel}: layer {n!r} needs {cout} biases")
            b = np.ascontiguousarray(bl[1].reshape(cout), np.float32)
        else:
            b = np.zeros(cout, np.float32)
        weights[n] = (w, b)
    return weights


def fold_affine(graph, weights):
    """Fold each Scale layer into the Convolution or InnerProduct just before it
    that produces its input (in place, or read by nothing else): w and b scaled
    per output channel, the Scale layer removed.  BatchNorm + Scale after a
    convolution (Caffe ResNets) then cost nothing at run time."""
    layers, out = graph["layers"], []
    readers = {}
    for L in layers:
        for b in L["bottom"]:
            readers[b] = readers.get(b, 0) + 1
    for L in layers:
        prev = out[-1] if out else None
        if L["type"] == "Scale" and prev is not None and \
                prev["type"] in ("Convolution", "InnerProduct") and \
                L["bottom"] == prev["top"] and \
                (L["top"] == L["bottom"] or readers.get(L["bottom"][0]) == 1):
            weights[prev["name"]] = scale_outputs(*weights[prev["name"]],
                                                  *weights.pop(L["name"]))
            prev["top"] = list(L["top"])
            prev["params"]["bias_term"] = True
            continue
        out.append(L)
    graph["layers"] = out
    return graph, weights


def load(source):
    """A Caffe model (Source with prototxt and caffemodel) -> (graph, dense
    weights {layer: (w, b)}, provenance)."""
    graph = read_prototxt(source.prototxt)
    weights = load_weights(graph, source.caffemodel, source.prototxt)
    graph, weights = fold_affine(graph, weights)
    validate(graph)
    infer_shapes(graph)
    return graph, weights, {"source": os.path.abspath(source.caffemodel), "source_format": "caffe",
                            "architecture": os.path.abspath(source.prototxt)}
