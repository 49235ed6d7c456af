"""A .qcnn as a model source (re-quantization with other settings): its graph,
its weights dequantized (w[o, m*d + c] = codebook[m, index, c]) as the dense
model, and the preprocessing and class names it carries."""
import copy
import os

import numpy as np

from .. import budget, buffers
from ..errors import FormatError, ModelError
from ..format import QcnnFile
from ..graph import infer_shapes, validate
from ..layers import QUANTIZABLE, record
from ..layers.base import check_tensor
from ..layers.weighted import dense_shape, dequantize_conv, dequantize_fc, indices_shape

MEAN_STEP = 1.0 / 64     # mean images are stored as multiples of this (docs/FORMAT.md)


def _weights(qf, L, ins):
    """The dense weights of one layer as the reference takes them."""
    w, where = L.get("weights"), f"layer {L['name']!r}"
    rec = record(L["type"])
    shapes = rec.weight_shapes(L["params"], ins)
    if not isinstance(w, dict):
        raise ModelError(f"{qf.path}: {where}: no weights")
    if L["type"] not in QUANTIZABLE:
        out = []
        for role, shape in shapes.items():
            check_tensor(qf, w.get(role, ""), "f32", shape, where)
            out.append(np.asarray(qf.tensor(w[role]), np.float32))
        return tuple(out)
    cout = L["params"]["num_output"]
    bias = np.zeros(cout, np.float32)
    if w.get("bias"):
        check_tensor(qf, w["bias"], "f32", (cout,), where)
        bias = np.asarray(qf.tensor(w["bias"]), np.float32)
    if w.get("mode") == "dense":
        check_tensor(qf, w.get("weight", ""), "f32", shapes["weight"], where)
        return np.asarray(qf.tensor(w["weight"]), np.float32), bias
    if w.get("mode") != "lut":
        raise ModelError(f"{qf.path}: {where}: unknown weights mode {w.get('mode')!r:.30}")
    e = qf.entry(w.get("codebook", ""))
    if e["dtype"] != "f32" or len(e["shape"]) != 3 or not 1 <= e["shape"][1] <= 256 \
            or e["shape"][2] < 1:
        raise ModelError(f"{qf.path}: {where}: codebook must be float32 [M, K, d], K <= 256")
    M, K, d = e["shape"]
    want = indices_shape(L, ins[0], d)
    if want[-1] != M:
        raise ModelError(f"{qf.path}: {where}: {M} subspaces of d={d} do not fit the layer")
    check_tensor(qf, w.get("indices", ""), "u8", want, where)
    cb = np.asarray(qf.tensor(w["codebook"]), np.float32)
    idx = np.asarray(qf.tensor(w["indices"]), np.uint8)
    if idx.size and int(idx.max()) >= K:
        raise ModelError(f"{qf.path}: {where}: codeword index {int(idx.max())} >= K={K}")
    cin = dense_shape(L, ins[0])[1]
    w = dequantize_conv(cb, idx, cin) if L["type"] == "Convolution" else dequantize_fc(cb, idx, cin)
    return w, bias


def load(source):
    """(graph, dense weights {layer: (w, b)}, provenance); provenance["carried"]
    holds the model's preprocessing ((spec, {name: tensor array})) and class
    names, which a re-quantization keeps unless told otherwise."""
    from ..preprocess import check_preprocess
    qf = QcnnFile(source.path)
    meta = qf.metadata
    graph = copy.deepcopy(meta.get("graph"))
    try:
        validate(graph)
        shapes = infer_shapes(graph)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise FormatError(f"{qf.path}: malformed layer graph ({type(e).__name__}: {e})") from None
    except ModelError as e:
        raise ModelError(f"{qf.path}: {e}") from None
    # the dense weights this makes must fit the tensors budget
    need = 0
    for L in graph["layers"]:
        ins = [shapes[b] for b in L["bottom"]]
        need += 4 * sum(buffers.count(s) for s in
                        record(L["type"]).weight_shapes(L["params"], ins).values())
    msg = budget.exceeded("tensors", need, budget.DEFAULT_LIMITS, "its dense weights")
    if msg:
        raise ModelError(f"{qf.path}: {msg}")
    weights = {}
    for L in graph["layers"]:
        ins = [shapes[b] for b in L["bottom"]]
        if record(L["type"]).weight_shapes(L["params"], ins):
            try:
                weights[L["name"]] = _weights(qf, L, ins)
            except (KeyError, TypeError) as e:
                raise FormatError(f"{qf.path}: layer {L['name']!r}: malformed weights entry "
                                  f"({e})") from None
        L.pop("weights", None)
    pre = copy.deepcopy(meta.get("preprocess") or {})
    try:
        check_preprocess(pre, tuple(graph["input"]["shape"]), qf)
    except ModelError as e:
        raise ModelError(f"{qf.path}: {e}") from None
    tensors = {}
    mean = pre.get("mean")
    if isinstance(mean, dict) and mean.get("type") == "image":
        tensors["preprocess.mean"] = np.asarray(qf.tensor(mean["tensor"]), np.float32)
        pre["mean"] = {"type": "image", "tensor": "preprocess.mean"}
    names = meta.get("class_names") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise FormatError(f"{qf.path}: class_names must be a list of strings")
    prov = {"source": os.path.abspath(source.path), "source_format": "qcnn (dequantized)",
            "carried": {"preprocess": (pre, tensors), "class_names": list(names)}}
    return graph, weights, prov
