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
from ..layers import record

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
    # each weighted layer's op (as the runtime loads it) checks its tensors
    # against the layer and decodes them; its dense_weights() dequantize
    ops = []
    try:
        for L in graph["layers"]:
            ins = [shapes[b] for b in L["bottom"]]
            if record(L["type"]).weight_shapes(L["params"], ins):
                ops.append(record(L["type"]).Op(L, ins, shapes[L["top"][0]], qf,
                                                {"dense_small": False, "fast": False}))
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{qf.path}: malformed weights entry ({type(e).__name__}: "
                          f"{e})") from None
    # what decoding and the dense weights cost must fit the tensors budget
    need, sources = 0, {}
    for op in ops:
        sources.update(op.sources)
        need += op.derived_bytes + 4 * sum(
            buffers.count(s) for s in record(op.type).weight_shapes(op.params,
                                                                    op.in_shapes).values())
    msg = budget.exceeded("tensors", need + sum(sources.values()), budget.DEFAULT_LIMITS,
                          "decoding its weights and dequantizing them")
    if msg:
        raise ModelError(f"{qf.path}: {msg}")
    weights = {}
    for op in ops:
        op.materialize()
        weights[op.name] = tuple(np.ascontiguousarray(a, np.float32)
                                 for a in op.dense_weights())
    for L in graph["layers"]:
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
