"""qengine's graph and dense weights -> an ONNX model (opset 17): the
dequantized network of a .qcnn, to open in Netron or run in ONNX Runtime
(`qconvert MODEL.qcnn --export-onnx out.onnx`), and the dense baselines of
`qbench --compare`.  One function per layer type (EXPORTERS; a test checks that
every layer type has one)."""
import numpy as np

OPSET = 17


class _Builder:
    def __init__(self, helper, numpy_helper):
        self.helper, self.nh = helper, numpy_helper
        self.nodes, self.inits = [], []

    def init(self, name, arr, dtype=np.float32):
        self.inits.append(self.nh.from_array(np.ascontiguousarray(arr, dtype), name))
        return name

    def node(self, op, ins, outs, **attrs):
        self.nodes.append(self.helper.make_node(op, ins, outs, **attrs))


def _conv(b, L, xs, y, wb, shapes):
    p, n = L["params"], L["name"]
    w, bias = wb
    b.node("Conv", [xs[0], b.init(n + "_w", w), b.init(n + "_b", bias)], [y],
           kernel_shape=list(p["kernel"]), strides=[p["stride"]] * 2, pads=[p["pad"]] * 4,
           group=p["group"])


def _fc(b, L, xs, y, wb, shapes):
    n = L["name"]
    w, bias = wb
    flat = y + "_flat"
    b.node("Flatten", [xs[0]], [flat], axis=1)
    b.node("Gemm", [flat, b.init(n + "_w", w), b.init(n + "_b", bias)], [y], transB=1)


def _relu(b, L, xs, y, wb, shapes):
    slope = L["params"]["negative_slope"]
    if slope:
        b.node("LeakyRelu", xs, [y], alpha=float(slope))
    else:
        b.node("Relu", xs, [y])


def _lrn(b, L, xs, y, wb, shapes):
    p = L["params"]
    b.node("LRN", xs, [y], size=p["local_size"], alpha=p["alpha"], beta=p["beta"], bias=p["k"])


def _pool(b, L, xs, y, wb, shapes):
    p = L["params"]
    if p["global"]:
        b.node("GlobalAveragePool" if p["pool"] == "AVE" else "GlobalMaxPool", xs, [y])
        return
    (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride"], p["pad"]
    attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw],
                 ceil_mode=int(p.get("ceil", True)))
    if p["pool"] == "AVE":
        attrs["count_include_pad"] = 0 if p.get("exclude_pad", False) else 1
    b.node("MaxPool" if p["pool"] == "MAX" else "AveragePool", xs, [y], **attrs)


def _concat(b, L, xs, y, wb, shapes):
    b.node("Concat", xs, [y], axis=1)


def _softmax(b, L, xs, y, wb, shapes):
    b.node("Softmax", xs, [y], axis=1)


def _identity(b, L, xs, y, wb, shapes):
    b.node("Identity", xs, [y])


def _clip(b, L, xs, y, wb, shapes):
    n, p = L["name"], L["params"]
    b.node("Clip", [xs[0], b.init(n + "_min", np.array(p["min"])),
                    b.init(n + "_max", np.array(p["max"]))], [y])


def _sigmoid(b, L, xs, y, wb, shapes):
    b.node("Sigmoid", xs, [y])


def _channel_shape(shape):
    return (1, shape[0]) + (1,) * (len(shape) - 1)


def _scale(b, L, xs, y, wb, shapes):
    n = L["name"]
    shape = _channel_shape(shapes[L["bottom"][0]])
    s, t = wb
    b.node("Mul", [xs[0], b.init(n + "_scale", np.reshape(s, shape))], [y + "_mul"])
    b.node("Add", [y + "_mul", b.init(n + "_shift", np.reshape(t, shape))], [y])


def _eltwise(b, L, xs, y, wb, shapes):
    n, coeff = L["name"], L["params"].get("coeff")
    terms = list(xs)
    if coeff is not None:
        terms = []
        for k, (x, c) in enumerate(zip(xs, coeff)):
            if c == 1.0:
                terms.append(x)
                continue
            b.node("Mul", [x, b.init(f"{n}_coeff{k}", np.array(c))], [f"{y}_term{k}"])
            terms.append(f"{y}_term{k}")
    b.node("Sum", terms, [y])


def _flatten(b, L, xs, y, wb, shapes):
    b.node("Flatten", xs, [y], axis=1)


def _slice(b, L, xs, y, wb, shapes):
    n, p = L["name"], L["params"]
    b.node("Slice", [xs[0], b.init(n + "_starts", p["start"], np.int64),
                     b.init(n + "_ends", p["stop"], np.int64),
                     b.init(n + "_axes", [1, 2, 3], np.int64),
                     b.init(n + "_steps", p["step"], np.int64)], [y])


def _pad(b, L, xs, y, wb, shapes):
    n, p = L["name"], L["params"]
    q = p["pads"]
    b.node("Pad", [xs[0], b.init(n + "_pads", [0, q[0], q[2], q[4], 0, q[1], q[3], q[5]],
                                 np.int64),
                   b.init(n + "_value", np.array(p["value"]))], [y], mode="constant")


EXPORTERS = {"Convolution": _conv, "InnerProduct": _fc, "ReLU": _relu, "LRN": _lrn,
             "Pooling": _pool, "Concat": _concat, "Softmax": _softmax, "Dropout": _identity,
             "Clip": _clip, "Sigmoid": _sigmoid, "Scale": _scale, "Eltwise": _eltwise,
             "Flatten": _flatten, "StridedSlice": _slice, "Pad": _pad}


def onnx_model(graph, weights, batch=1, name="qengine_dense", doc=""):
    """The network as an ONNX ModelProto (needs the onnx package); batch None
    makes the batch size dynamic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from .graph import infer_shapes
    shapes = infer_shapes(graph)
    b = _Builder(helper, numpy_helper)
    inp = graph["input"]["name"]
    names = {inp: inp}
    out = inp
    for L in graph["layers"]:
        y = f"{L['name']}__out"
        EXPORTERS[L["type"]](b, L, [names[x] for x in L["bottom"]], y, weights.get(L["name"]),
                             shapes)
        for top in L["top"]:
            names[top] = y
        out = y
    n = "N" if batch is None else batch
    last = shapes[graph["layers"][-1]["top"][0]]
    g = helper.make_graph(b.nodes, name,
                          [helper.make_tensor_value_info(inp, TensorProto.FLOAT,
                                                         [n] + list(graph["input"]["shape"]))],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, [n] + list(last))],
                          b.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                          producer_name="qengine", doc_string=doc)
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def export(src, out, force=False, log=None):
    """Write the dequantized network of the .qcnn `src` as the ONNX model `out`
    (dynamic batch); returns its size in bytes."""
    import os
    from .format import write_atomic
    from .frontends import Source
    from .frontends.qcnn import load
    graph, weights, prov = load(Source("qcnn", src))
    m = onnx_model(graph, weights, batch=None, name=os.path.basename(src),
                   doc=f"the dequantized network of {os.path.basename(src)}, by qengine")
    data = m.SerializeToString()
    write_atomic(out, lambda f: f.write(data), force)
    if log:
        log(f"wrote {out}: {len(data)} bytes, {len(m.graph.node)} ONNX nodes (opset {OPSET}), "
            f"input {graph['input']['name']!r} [N, {', '.join(map(str, graph['input']['shape']))}]")
    return len(data)
