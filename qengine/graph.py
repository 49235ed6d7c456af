"""The layer graph: what each layer is, how blobs flow, and their shapes.

A graph is plain data (so it serialises into a .qcnn as JSON): an input blob
with its shape (C, H, W) and an ordered list of layers, each a dict

    {"name": "conv1", "type": "Convolution", "bottom": ["data"], "top": ["conv1"],
     "params": {...}}

Layer types and their params (all integers unless said):
    Convolution   num_output, kernel [kh, kw], stride, pad, group, bias_term (bool)
    InnerProduct  num_output, bias_term
    ReLU          negative_slope (float)
    LRN           local_size, alpha, beta, k (floats but local_size)
    Pooling       pool ("MAX" | "AVE"), kernel [kh, kw], stride [sh, sw], pad [ph, pw], global (bool)
    Concat        axis (1 only)
    Dropout, Softmax   (no params; Softmax over channels)
"""
from .buffers import count
from .errors import FormatError, ModelError
from .readers import prototxt

SUPPORTED = ("Convolution", "InnerProduct", "ReLU", "LRN", "Pooling", "Concat", "Dropout",
             "Softmax")
WEIGHTED = ("Convolution", "InnerProduct")
MAX_LAYERS = 10000
MAX_DIM = 1 << 20

# Caffe's legacy V1 `layers { type: ENUM }` names.
_V1_TYPES = {
    "CONVOLUTION": "Convolution", "INNER_PRODUCT": "InnerProduct", "RELU": "ReLU",
    "LRN": "LRN", "POOLING": "Pooling", "CONCAT": "Concat", "DROPOUT": "Dropout",
    "SOFTMAX": "Softmax", "DATA": "Data", "IMAGE_DATA": "ImageData",
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
    return {}


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
        if ltype not in SUPPORTED:
            unsupported.append(f"{name} ({ltype})")
            continue
        bottoms = [str(b) for b in lm.get("bottom", [])]
        tops = [str(t) for t in lm.get("top", [])]
        if not tops:
            raise FormatError(f"{where}: no top blob")
        layers.append({"name": str(name), "type": ltype, "bottom": bottoms, "top": tops,
                       "params": _layer_params(ltype, lm, where)})
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


MAX_BLOB = 1 << 28  # elements of one activation (per image); a model above it is refused


def _is_int(v, lo, hi):
    return type(v) is int and lo <= v <= hi


FLOAT32_MAX = 3.4028234663852886e38


def _is_num(v):
    """A finite number that a float32 holds (the kernels take float32 parameters)."""
    import math
    return type(v) in (int, float) and math.isfinite(v) and abs(v) <= FLOAT32_MAX


def validate(g):
    """Check a graph's structure and every parameter's type and range (a graph
    read from a file is untrusted).  Raises ModelError naming the layer."""
    if not isinstance(g, dict) or not isinstance(g.get("input"), dict) \
            or not isinstance(g.get("layers"), list):
        raise ModelError("graph must have an input and a list of layers")
    inp = g["input"]
    shape = inp.get("shape")
    if not isinstance(inp.get("name"), str) or not isinstance(shape, list) or len(shape) != 3 \
            or not all(_is_int(v, 1, MAX_DIM) for v in shape):
        raise ModelError(f"graph input must have a name and a shape [C, H, W], got {inp!r:.200}")
    if len(g["layers"]) > MAX_LAYERS:
        raise ModelError(f"more than {MAX_LAYERS} layers")
    names = set()
    for i, L in enumerate(g["layers"]):
        if not isinstance(L, dict) or not isinstance(L.get("name"), str):
            raise ModelError(f"layer {i + 1}: not an object with a name")
        where = f"layer {L['name'][:100]!r}"
        if L["name"] in names:
            raise ModelError(f"{where}: duplicate layer name")
        names.add(L["name"])
        t, p = L.get("type"), L.get("params")
        if t not in SUPPORTED or not isinstance(p, dict):
            raise ModelError(f"{where}: unsupported type {t!r:.50} or missing params")
        for key in ("bottom", "top"):
            v = L.get(key)
            if not isinstance(v, list) or not v or len(v) > 64 or \
                    not all(isinstance(x, str) and len(x) < 1024 for x in v):
                raise ModelError(f"{where}: {key} must be a list of blob names")

        def need(cond, what):
            if not cond:
                raise ModelError(f"{where}: invalid {what} in {p!r:.200}")

        if t == "Convolution":
            need(_is_int(p.get("num_output"), 1, MAX_DIM), "num_output")
            k = p.get("kernel")
            need(isinstance(k, list) and len(k) == 2 and all(_is_int(v, 1, 4096) for v in k),
                 "kernel")
            need(_is_int(p.get("stride"), 1, 4096), "stride")
            need(_is_int(p.get("pad"), 0, 4096), "pad")
            need(_is_int(p.get("group"), 1, MAX_DIM), "group")
        elif t == "InnerProduct":
            need(_is_int(p.get("num_output"), 1, MAX_DIM), "num_output")
        elif t == "ReLU":
            need(_is_num(p.get("negative_slope")), "negative_slope")
        elif t == "LRN":
            need(_is_int(p.get("local_size"), 1, 1023) and p["local_size"] % 2 == 1, "local_size")
            need(all(_is_num(p.get(k)) for k in ("alpha", "beta", "k")), "alpha, beta or k")
            need(p["k"] > 0 or p["alpha"] > 0, "k")
        elif t == "Pooling":
            need(p.get("pool") in ("MAX", "AVE") and isinstance(p.get("global"), bool), "pool")
            glob = p.get("global") is True
            for key, lo in (("kernel", 0 if glob else 1), ("stride", 1), ("pad", 0)):
                v = p.get(key)
                need(isinstance(v, list) and len(v) == 2 and all(_is_int(x, lo, 4096) for x in v),
                     key)
            if not p["global"]:
                need(p["pad"][0] < p["kernel"][0] and p["pad"][1] < p["kernel"][1], "pad")
        elif t == "Concat":
            need(p.get("axis") == 1, "axis")
        w = L.get("weights")
        if t in WEIGHTED and w is not None:
            need(isinstance(w, dict) and all(isinstance(v, str) for k, v in w.items()), "weights")


def pool_output(size, kernel, stride, pad):
    """Caffe's pooled size: ceil rounding, last window starting inside the image."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def conv_output(size, kernel, stride, pad):
    return (size + 2 * pad - kernel) // stride + 1


def infer_shapes(g):
    """Shapes of every blob: {blob: (C, H, W)} ((C,) for fully-connected outputs).
    Checks that every bottom exists and that every layer fits its input."""
    shapes = {g["input"]["name"]: tuple(g["input"]["shape"])}
    if count(g["input"]["shape"]) > MAX_BLOB:
        raise ModelError(f"input {list(g['input']['shape'])} is larger than {MAX_BLOB} values "
                         f"per image")
    for L in g["layers"]:
        where = f"layer {L['name']!r} ({L['type']})"
        for b in L["bottom"]:
            if b not in shapes:
                raise ModelError(f"{where}: input blob {b!r} is not produced by an earlier layer")
        ins = [shapes[b] for b in L["bottom"]]
        t, p = L["type"], L["params"]
        if t != "Concat" and len(ins) != 1:
            raise ModelError(f"{where}: takes one input, has {len(ins)}")
        if t != "Concat" and len(L["top"]) != 1:
            raise ModelError(f"{where}: must have one output")
        x = ins[0] if ins else None
        if t == "Convolution":
            if len(x) != 3:
                raise ModelError(f"{where}: input must be C x H x W, is {x}")
            c, h, w = x
            kh, kw = p["kernel"]
            grp = p["group"]
            if p["num_output"] < 1 or c % grp or p["num_output"] % grp:
                raise ModelError(f"{where}: group {grp} does not divide {c} input and "
                                 f"{p['num_output']} output channels")
            if h + 2 * p["pad"] < kh or w + 2 * p["pad"] < kw:
                raise ModelError(f"{where}: kernel {kh}x{kw} larger than the padded input {h}x{w}")
            # a pad beyond the input's size only adds outputs made of padding (real
            # models pad by up to the kernel: SqueezeNet's 1x1 conv10 by 1), a
            # stride beyond the padded input skips all but one row
            if p["pad"] > max(h, w) or \
                    p["stride"] > max(h, w) + 2 * p["pad"]:
                raise ModelError(f"{where}: pad {p['pad']} or stride {p['stride']} out of range "
                                 f"for kernel {kh}x{kw} on input {h}x{w}")
            out = (p["num_output"], conv_output(h, kh, p["stride"], p["pad"]),
                   conv_output(w, kw, p["stride"], p["pad"]))
        elif t == "InnerProduct":
            if p["num_output"] < 1:
                raise ModelError(f"{where}: num_output must be positive")
            out = (p["num_output"],)
        elif t == "Pooling":
            if len(x) != 3:
                raise ModelError(f"{where}: input must be C x H x W, is {x}")
            c, h, w = x
            if p["global"]:
                out = (c, 1, 1)
            else:
                (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride"], p["pad"]
                if h + 2 * ph < kh or w + 2 * pw < kw or ph >= kh or pw >= kw:
                    raise ModelError(f"{where}: pooling window does not fit input {h}x{w}")
                if sh > h + 2 * ph or sw > w + 2 * pw:
                    raise ModelError(f"{where}: pooling stride {[sh, sw]} beyond input {h}x{w}")
                out = (c, pool_output(h, kh, sh, ph), pool_output(w, kw, sw, pw))
        elif t == "Concat":
            if not ins or any(len(s) != len(ins[0]) or s[1:] != ins[0][1:] for s in ins):
                raise ModelError(f"{where}: inputs {ins} differ in spatial size")
            out = (sum(s[0] for s in ins),) + tuple(ins[0][1:])
        elif t == "LRN":
            if len(x) != 3:
                raise ModelError(f"{where}: input must be C x H x W, is {x}")
            out = x
        else:  # ReLU, Dropout, Softmax
            out = x
        if count(out) > MAX_BLOB or min(out) < 1:
            raise ModelError(f"{where}: output {list(out)} is empty or larger than {MAX_BLOB} "
                             f"values per image")
        out = tuple(int(v) for v in out)
        for top in L["top"]:
            # a blob is produced once; a layer may only rewrite its own input in
            # place (ReLU, Dropout), keeping its shape
            if top in shapes and not (top in L["bottom"] and shapes[top] == out):
                raise ModelError(f"{where}: output blob {top!r} is already produced by an "
                                 f"earlier layer (only in-place layers may reuse a name)")
            shapes[top] = out
    return shapes




def layer_work(L, in_shapes, out_shape):
    """Operations per image of a layer without weights (the budget's work):
    a pooling window's comparisons or additions, LRN's window, else one per value."""
    n = count(out_shape)
    p = L["params"]
    if L["type"] == "Pooling":
        return count(in_shapes[0]) if p["global"] else n * p["kernel"][0] * p["kernel"][1]
    if L["type"] == "LRN":
        return n * (p["local_size"] + 4)
    return n


def layer_cost(L, in_shape, out_shape, K=None, M=None):
    """Theoretical work of a Convolution or InnerProduct layer per image:
    (dense multiply-adds, table multiply-adds, lookups).  With K and M (codebook
    size, subspaces) the lookup-table form, else the dense one (0, 0 for tables).

    A convolution's table holds K inner products per subspace at every padded
    input position the kernel can touch (K x C multiply-adds per position); each
    output then sums one entry per kernel tap and subspace.  A fully-connected
    layer's table holds K x Cin multiply-adds; each output sums M entries."""
    cout = L["params"]["num_output"]
    if L["type"] == "Convolution":
        c, h, w = in_shape
        _, oh, ow = out_shape
        p = L["params"]
        kh, kw = p["kernel"]
        g, pd = p["group"], p["pad"]
        dense = cout * oh * ow * (c // g) * kh * kw
        if K is None:
            return dense, 0, 0
        return dense, g * K * (c // g) * (h + 2 * pd) * (w + 2 * pd), cout * oh * ow * kh * kw * M
    cin = count(in_shape)
    if K is None:
        return cout * cin, 0, 0
    return cout * cin, K * cin, cout * M

