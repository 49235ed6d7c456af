"""The layer graph: how blobs flow between layers, and their shapes.

A graph is plain data (so it serialises into a .qcnn as JSON): an input blob
with its shape (C, H, W) and an ordered list of layers, each a dict

    {"name": "conv1", "type": "Convolution", "bottom": ["data"], "top": ["conv1"],
     "params": {...}}

What each layer type's params mean, and its shape rule, live in its record
(qengine/layers/); docs/FORMAT.md lists them all.
"""
from .buffers import count
from .errors import ModelError
from .layers import MAX_DIM, QUANTIZABLE, TYPES, record

SUPPORTED = TYPES
WEIGHTED = QUANTIZABLE
MAX_LAYERS = 10000

MAX_BLOB = 1 << 28  # elements of one activation (per image); a model above it is refused


def validate(g):
    """Check a graph's structure and every parameter's type and range (a graph
    read from a file is untrusted).  Raises ModelError naming the layer."""
    if not isinstance(g, dict) or not isinstance(g.get("input"), dict) \
            or not isinstance(g.get("layers"), list):
        raise ModelError("graph must have an input and a list of layers")
    inp = g["input"]
    shape = inp.get("shape")
    if not isinstance(inp.get("name"), str) or not isinstance(shape, list) or len(shape) != 3 \
            or not all(type(v) is int and 1 <= v <= MAX_DIM for v in shape):
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

        record(t).check(p, need)
        w = L.get("weights")
        if w is not None:
            need(isinstance(w, dict) and all(isinstance(v, str) for k, v in w.items()), "weights")


def infer_shapes(g):
    """Shapes of every blob: {blob: (C, H, W)} ((C,) after flattening layers).
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
        rec = record(L["type"])
        lo, hi = rec.inputs
        if not lo <= len(ins) <= hi:
            raise ModelError(f"{where}: takes {lo if lo == hi else f'{lo} to {hi}'} input"
                             f"{'s' if hi > 1 else ''}, has {len(ins)}")
        if len(L["top"]) != 1:
            raise ModelError(f"{where}: must have one output")
        out = rec.shape(L["params"], ins, where)
        if count(out) > MAX_BLOB or min(out) < 1:
            raise ModelError(f"{where}: output {list(out)} is empty or larger than {MAX_BLOB} "
                             f"values per image")
        out = tuple(int(v) for v in out)
        for top in L["top"]:
            # a blob is produced once; a layer may only rewrite its own input in
            # place (ReLU, Dropout), keeping its shape
            if top in shapes and not (rec.in_place and top in L["bottom"] and shapes[top] == out):
                raise ModelError(f"{where}: output blob {top!r} is already produced by an "
                                 f"earlier layer (only in-place layers may reuse a name)")
            shapes[top] = out
    return shapes
