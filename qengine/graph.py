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
from .errors import ModelError

SUPPORTED = ("Convolution", "InnerProduct", "ReLU", "LRN", "Pooling", "Concat", "Dropout",
             "Softmax")
WEIGHTED = ("Convolution", "InnerProduct")
MAX_LAYERS = 10000
MAX_DIM = 1 << 20

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

