"""Small models built in code for the tests: every layer type, LUT and dense."""
import numpy as np

from qengine import format as qformat
from qengine.graph import infer_shapes


def conv(name, bottom, n, k, s=1, p=0, g=1, top=None):
    return {"name": name, "type": "Convolution", "bottom": [bottom], "top": [top or name],
            "params": {"num_output": n, "kernel": [k, k], "stride": s, "pad": p, "group": g,
                       "bias_term": True}}


def layer(name, t, bottom, top=None, **params):
    bottoms = bottom if isinstance(bottom, list) else [bottom]
    return {"name": name, "type": t, "bottom": bottoms, "top": [top or name], "params": params}


def tiny_graph():
    """conv(lut, C<d) relu lrn pool | conv(lut, groups) relu(slope) | conv(dense) |
    concat | avg pool | fc(lut) relu dropout fc(dense) softmax"""
    L = [
        conv("c1", "data", 8, 3, s=2, p=1),
        layer("r1", "ReLU", "c1", "c1", negative_slope=0.0),
        layer("n1", "LRN", "c1", local_size=5, alpha=1e-2, beta=0.75, k=1.0),
        layer("p1", "Pooling", "n1", pool="MAX", kernel=[3, 3], stride=[2, 2], pad=[0, 0],
              **{"global": False}),
        conv("c2a", "p1", 6, 3, p=1, g=2),
        layer("r2", "ReLU", "c2a", "c2a", negative_slope=0.1),
        conv("c2b", "p1", 4, 1),
        layer("cat", "Concat", ["c2a", "c2b"], axis=1),
        layer("p2", "Pooling", "cat", pool="AVE", kernel=[2, 2], stride=[2, 2], pad=[0, 0],
              **{"global": False}),
        {"name": "f1", "type": "InnerProduct", "bottom": ["p2"], "top": ["f1"],
         "params": {"num_output": 12, "bias_term": True}},
        layer("r3", "ReLU", "f1", "f1", negative_slope=0.0),
        layer("d1", "Dropout", "f1", "f1"),
        {"name": "f2", "type": "InnerProduct", "bottom": ["f1"], "top": ["f2"],
         "params": {"num_output": 5, "bias_term": True}},
        layer("prob", "Softmax", "f2"),
    ]
    return {"input": {"name": "data", "shape": [3, 21, 19]}, "layers": L}


def build(path, graph=None, dense=("c2b", "f2"), seed=0, d_conv=4, k_conv=16, d_fc=3, k_fc=8,
          meta_extra=None, extra_tensors=None):
    """Write a .qcnn of `graph` with random weights; returns (graph, {layer: (codebook,
    indices) or weight, bias})."""
    rng = np.random.default_rng(seed)
    graph = graph or tiny_graph()
    shapes = infer_shapes(graph)
    tensors, params = {}, {}
    for L in graph["layers"]:
        if L["type"] not in ("Convolution", "InnerProduct"):
            continue
        n, p = L["name"], L["params"]
        cin = shapes[L["bottom"][0]]
        cout = p["num_output"]
        b = rng.standard_normal(cout).astype(np.float32) * 0.1
        if L["type"] == "Convolution":
            cg = cin[0] // p["group"]
            kh, kw = p["kernel"]
            wshape, d, K = (cout, cg, kh, kw), d_conv, k_conv
            M = -(-cg // d)
            ishape = (cout, kh, kw, M)
        else:
            c = int(np.prod(cin))
            wshape, d, K = (cout, c), d_fc, k_fc
            M = -(-c // d)
            ishape = (cout, M)
        if n in dense:
            w = rng.standard_normal(wshape).astype(np.float32) * 0.3
            L["weights"] = {"mode": "dense", "weight": f"{n}.weight", "bias": f"{n}.bias"}
            tensors[f"{n}.weight"] = w
            params[n] = (w, b)
        else:
            cb = rng.standard_normal((M, K, d)).astype(np.float32) * 0.3
            idx = rng.integers(0, K, ishape).astype(np.uint8)
            L["weights"] = {"mode": "lut", "codebook": f"{n}.codebook", "indices": f"{n}.indices",
                            "bias": f"{n}.bias"}
            tensors[f"{n}.codebook"] = cb
            tensors[f"{n}.indices"] = qformat.Tensor(idx, bits=max(1, (K - 1).bit_length()))
            params[n] = (cb, idx, b)
        tensors[f"{n}.bias"] = b
    meta = {"graph": graph, "preprocess": {"channel_order": "bgr"},
            "class_names": [f"class{i}" for i in range(5)], "provenance": {"source": "test"}}
    meta.update(meta_extra or {})
    tensors.update(extra_tensors or {})
    qformat.write(str(path), meta, tensors)
    return graph, params


def every_type_graph():
    """A graph holding every layer type: quantized and dense convolutions, a
    per-channel Scale, Clip, a weighted Eltwise with its ReLU fused (a new
    blob), Sigmoid, StridedSlice, channel Pad, average pooling with floor
    rounding and padding excluded, LRN, Concat, global max pooling, Flatten,
    a quantized fully-connected layer, Dropout, Softmax."""
    L = [
        conv("c1", "data", 8, 3, p=1),
        layer("bn", "Scale", "c1", "c1"),
        layer("r1", "ReLU", "c1", "c1", negative_slope=0.0),
        conv("c2", "c1", 8, 3, p=1),
        layer("clip", "Clip", "c2", min=-0.5, max=0.75),
        layer("sum", "Eltwise", ["clip", "c1"], operation="SUM", coeff=[1.0, -0.5]),
        layer("sumr", "ReLU", "sum", negative_slope=0.0),
        layer("sig", "Sigmoid", "sumr"),
        layer("sl", "StridedSlice", "sig", start=[0, 0, 1], stop=[8, 12, 12], step=[1, 2, 2]),
        layer("pd", "Pad", "sl", pads=[2, 2, 0, 0, 0, 0], value=0.0),
        layer("ap", "Pooling", "sumr", pool="AVE", kernel=[3, 3], stride=[2, 2], pad=[1, 1],
              ceil=False, exclude_pad=True, **{"global": False}),
        layer("lrn", "LRN", "ap", local_size=3, alpha=1e-2, beta=0.75, k=1.0),
        layer("cat", "Concat", ["pd", "lrn"], axis=1),
        layer("gp", "Pooling", "cat", pool="MAX", kernel=[0, 0], stride=[1, 1], pad=[0, 0],
              **{"global": True}),
        layer("fl", "Flatten", "gp"),
        {"name": "fc", "type": "InnerProduct", "bottom": ["fl"], "top": ["fc"],
         "params": {"num_output": 6, "bias_term": True}},
        layer("drop", "Dropout", "fc", "fc"),
        layer("prob", "Softmax", "fc"),
    ]
    return {"input": {"name": "data", "shape": [3, 12, 12]}, "layers": L}


def build_graph_model(path, seed=0):
    """Write every_type_graph() as a .qcnn (c2 dense, c1 and fc quantized, the
    Scale's own tensors); returns (graph, dense weights {layer: (w, b)})."""
    graph = every_type_graph()
    rng = np.random.default_rng(seed)
    scale = (rng.standard_normal(8) * 0.5 + 1).astype(np.float32)
    shift = (rng.standard_normal(8) * 0.1).astype(np.float32)
    extra = {"bn.scale": scale, "bn.shift": shift}
    for L in graph["layers"]:
        if L["name"] == "bn":
            L["weights"] = {"scale": "bn.scale", "shift": "bn.shift"}
    _graph, params = build(path, graph, dense=("c2",), seed=seed, extra_tensors=extra,
                           meta_extra={"class_names": []})
    return graph, params
