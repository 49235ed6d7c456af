"""ONNX import (qengine/frontends/onnx.py) and export (qengine/export_onnx.py):
small models written with the onnx helper API, converted dense, run by qengine
and checked against ONNX Runtime on the same inputs; the exporters' shape
subgraphs folded; every unsupported op listed in one error."""
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import qengine  # noqa: E402
from qengine.errors import FormatError, ModelError  # noqa: E402

RNG = np.random.default_rng(0)


def _w(*shape, scale=0.3):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


class Net:
    """A tiny ONNX graph builder: nodes, initializers, one input, one output."""

    def __init__(self, shape=(1, 3, 12, 12), name="x"):
        self.nodes, self.inits, self.k = [], [], 0
        self.input = helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))
        self.last = name

    def const(self, arr, dtype=None):
        self.k += 1
        name = f"c{self.k}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype), name))
        return name

    def op(self, op_type, inputs, **attrs):
        self.k += 1
        out = f"t{self.k}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{op_type}_{self.k}",
                                           **attrs))
        self.last = out
        return out

    def save(self, path, opset=13):
        out = helper.make_tensor_value_info(self.last, TensorProto.FLOAT, None)
        g = helper.make_graph(self.nodes, "t", [self.input], [out], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 7
        if opset >= 9:      # the output's type and shape, as exporters write them
            m = onnx.shape_inference.infer_shapes(m)
        onnx.save(m, str(path))
        return str(path)


def _convert(tmp_path, onnx_path, **kw):
    from qengine.convert import convert_onnx
    out = str(tmp_path / (os.path.basename(onnx_path) + ".qcnn"))
    convert_onnx(onnx_path, out, keep_dense=("all",), force=True, **kw)
    return qengine.load(out, mode="exact")


def _check(tmp_path, path, x_shape, rel=1e-4, nhwc=False, **kw):
    m = _convert(tmp_path, path, **kw)
    x = RNG.standard_normal(x_shape).astype(np.float32)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    got = m.forward(x.transpose(0, 3, 1, 2) if nhwc else x)
    assert got.shape == want.shape
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-6)
    assert err < rel, err
    # fast mode may run convolutions in 16-bit integers (|x| quantised to about
    # 13 bits per image): its bound is tests/test_int16.py's, 2e-3 of the range
    m2 = qengine.load(m.path, mode="fast")
    assert np.abs(m2.forward(x.transpose(0, 3, 1, 2) if nhwc else x) - want).max() \
        / max(np.abs(want).max(), 1e-6) < max(rel, 2e-3)
    return m


def test_conv_bn_activations_pools_concat_residual(tmp_path):
    n = Net((2, 3, 13, 13))
    x = n.last
    # a convolution with asymmetric pads (an explicit Pad layer), then batch norm (folded)
    c1 = n.op("Conv", [x, n.const(_w(8, 3, 3, 3)), n.const(_w(8))], kernel_shape=[3, 3],
              pads=[1, 0, 2, 1], strides=[1, 1])
    bn = n.op("BatchNormalization", [c1, n.const(_w(8) + 1), n.const(_w(8)), n.const(_w(8)),
                                     n.const(np.abs(_w(8)) + 0.5)], epsilon=1e-3)
    a = n.op("LeakyRelu", [bn], alpha=0.1)
    # grouped and depthwise convolutions, ReLU6, sigmoid
    g = n.op("Conv", [a, n.const(_w(8, 4, 3, 3))], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
             group=2)
    d = n.op("Conv", [g, n.const(_w(8, 1, 3, 3)), n.const(_w(8))], kernel_shape=[3, 3],
             pads=[1, 1, 1, 1], group=8)
    r6 = n.op("Clip", [d, n.const(np.float32(0)), n.const(np.float32(6))])
    s = n.op("Sigmoid", [g])
    # a residual sum, a constant multiply and add per channel (a Scale layer)
    res = n.op("Add", [r6, s])
    mul = n.op("Mul", [res, n.const(_w(1, 8, 1, 1))])
    add = n.op("Add", [mul, n.const(np.float32(0.25))])
    sub = n.op("Sub", [add, g])
    # pools: max with ceil mode, average excluding and including padding
    mp = n.op("MaxPool", [sub], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    ap = n.op("AveragePool", [sub], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    ap2 = n.op("AveragePool", [sub], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
               count_include_pad=1)
    cat = n.op("Concat", [mp, ap, ap2], axis=1)
    gp = n.op("GlobalAveragePool", [cat])
    fl = n.op("Flatten", [gp], axis=1)
    mm = n.op("MatMul", [fl, n.const(_w(24, 5))])
    out = n.op("Add", [mm, n.const(_w(5))])
    n.op("Softmax", [out], axis=1)
    m = _check(tmp_path, n.save(tmp_path / "net.onnx"), (2, 3, 13, 13))
    types = [L.type for L in m.layers]
    # batch norm folded into the convolution, MatMul + Add one fully-connected layer
    assert "InnerProduct" in types and types.count("Scale") == 1
    assert types.count("Pad") == 1 and types.count("Eltwise") == 2


@pytest.mark.parametrize("opset", [9, 11, 13, 17, 21])
def test_opsets_resnet_option_a_shortcut(tmp_path, opset):
    """The strided Slice + channel Pad shortcut (ResNet option A), in the
    attribute (opset 9) and input forms, with its pads computed by a shape
    subgraph as PyTorch exports it."""
    n = Net((1, 4, 8, 8))
    x = n.last
    conv = n.op("Conv", [x, n.const(_w(8, 4, 3, 3))], kernel_shape=[3, 3], strides=[2, 2],
                pads=[1, 1, 1, 1])
    if opset < 10:
        sl = n.op("Slice", [x], starts=[0, 0], ends=[1 << 40, 1 << 40], axes=[2, 3])
        sl = n.op("Slice", [sl], starts=[0], ends=[8], axes=[1])
        pick = n.op("Conv", [sl, n.const(np.eye(4, dtype=np.float32).reshape(4, 4, 1, 1))],
                    kernel_shape=[1, 1], strides=[2, 2])
        pad = n.op("Pad", [pick], pads=[0, 2, 0, 0, 0, 2, 0, 0], mode="constant", value=0.0)
    else:
        i64 = np.int64
        sl = n.op("Slice", [x, n.const([0], i64), n.const([1 << 62], i64), n.const([2], i64),
                            n.const([2], i64)])
        sl = n.op("Slice", [sl, n.const([0], i64), n.const([1 << 62], i64), n.const([3], i64),
                            n.const([2], i64)])
        # pads from a shape subgraph: ConstantOfShape, Concat, Reshape, Slice, Transpose, Cast
        # F.pad(x, (0, 0, 0, 0, 2, 2)): pairs from the last axis, batch's zeros appended
        zeros = n.op("ConstantOfShape", [n.const([2], i64)],
                     value=numpy_helper.from_array(np.zeros(1, np.int64)))
        both = n.op("Concat", [n.const([0, 0, 0, 0, 2, 2], i64), zeros], axis=0)
        r = n.op("Reshape", [both, n.const([-1, 2], i64)])
        rev = n.op("Slice", [r, n.const([-1], i64), n.const([-(1 << 62)], i64),
                             n.const([0], i64), n.const([-1], i64)])
        tr = n.op("Transpose", [rev], perm=[1, 0])
        flat = n.op("Reshape", [tr, n.const([-1], i64)])
        pads = n.op("Cast", [flat], to=TensorProto.INT64)
        pad = n.op("Pad", [sl, pads, n.const(np.float32(0))], mode="constant")
    add = n.op("Add", [conv, pad])
    n.op("Relu", [add])
    m = _check(tmp_path, n.save(tmp_path / f"a{opset}.onnx", opset), (1, 4, 8, 8))
    if opset >= 10:
        assert [L.type for L in m.layers].count("StridedSlice") == 1   # two slices made one


def test_nhwc_input_and_flatten_by_shape_subgraph(tmp_path):
    """A TensorFlow-style NHWC input transposed first; x.view(x.size(0), -1) as
    PyTorch exports it (Shape, Gather, Unsqueeze, Concat, Reshape); Gemm with
    alpha, beta and transB=0."""
    n = Net(("N", 10, 10, 3))
    t = n.op("Transpose", [n.last], perm=[0, 3, 1, 2])
    c = n.op("Conv", [t, n.const(_w(6, 3, 3, 3)), n.const(_w(6))], kernel_shape=[3, 3],
             auto_pad="SAME_UPPER")
    r = n.op("Relu", [c])
    p = n.op("MaxPool", [r], kernel_shape=[2, 2], strides=[2, 2])
    i64 = np.int64
    sh = n.op("Shape", [p])
    b = n.op("Gather", [sh, n.const(0, i64)], axis=0)
    u = n.op("Unsqueeze", [b, n.const([0], i64)])
    tgt = n.op("Concat", [u, n.const([-1], i64)], axis=0)
    fl = n.op("Reshape", [p, tgt])
    n.op("Gemm", [fl, n.const(_w(150, 4)), n.const(_w(1, 4))], alpha=0.5, beta=2.0)
    path = n.save(tmp_path / "nhwc.onnx")
    m = _check(tmp_path, path, (3, 10, 10, 3), nhwc=True)
    assert m.input_shape == (3, 10, 10)
    assert m.metadata["provenance"]["input_layout"] == "nhwc (transposed)"


def test_unsupported_ops_listed_at_once(tmp_path):
    n = Net()
    a = n.op("Conv", [n.last, n.const(_w(4, 3, 1, 1))], kernel_shape=[1, 1])
    b = n.op("Tanh", [a])
    c = n.op("InstanceNormalization", [b, n.const(np.ones(4, np.float32)),
                                       n.const(np.zeros(4, np.float32))])
    n.op("Tanh", [c])
    path = n.save(tmp_path / "bad.onnx")
    with pytest.raises(ModelError) as e:
        _convert(tmp_path, path)
    msg = str(e.value)
    assert "unsupported ONNX ops: InstanceNormalization (InstanceNormalization_" in msg
    assert "Tanh (Tanh_" in msg and msg.count("Tanh_") == 2
    assert not os.path.exists(tmp_path / "bad.onnx.qcnn")


def test_bad_files_and_opsets(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(FormatError, match="junk.onnx"):
        _convert(tmp_path, str(junk))
    n = Net()
    n.op("Relu", [n.last])
    with pytest.raises(ModelError, match="opset 8 unsupported"):
        _convert(tmp_path, n.save(tmp_path / "old.onnx", opset=8))
    n = Net(shape=("N", 3, "H", "W"))
    n.op("Conv", [n.last, n.const(_w(2, 3, 1, 1))], kernel_shape=[1, 1])
    path = n.save(tmp_path / "dyn.onnx")
    with pytest.raises(ModelError, match="--input-shape"):
        _convert(tmp_path, path)
    m = _convert(tmp_path, path, input_shape=[3, 5, 7])
    assert m.input_shape == (3, 5, 7)


def test_export_round_trip_every_layer_type(tmp_path):
    """qconvert --export-onnx: every layer type has an exporter, and the export
    of a model holding them runs in ONNX Runtime with qengine's results."""
    from qengine.export_onnx import EXPORTERS
    from qengine.layers import TYPES
    assert sorted(EXPORTERS) == sorted(TYPES)
    from modelkit import build_graph_model
    path = str(tmp_path / "all.qcnn")
    build_graph_model(path)
    m = qengine.load(path, mode="exact")
    from qengine.cli import qconvert
    out = str(tmp_path / "all.onnx")
    assert qconvert.main([path, "--export-onnx", out, "-q"]) == 0
    x = RNG.standard_normal((2,) + m.input_shape).astype(np.float32)
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    got = m.forward(x)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    used = {L.type for L in m.layers}
    assert used == set(TYPES) - {"LRN"} or used == set(TYPES)
    with pytest.raises(SystemExit):                 # an existing file is kept
        qconvert.main([path, "--export-onnx", out, "-q"])


# -- the real ResNets exported from PyTorch (../shared/data/onnx-cifar-resnet) --

RESNET_PRE = ["--pixel-range", "1", "--mean-pixel", "0.485,0.456,0.406",
              "--std", "0.229,0.224,0.225", "--channel-order", "rgb"]


def _cifar_items(n_per_class, start=0):
    from conftest import shared_path
    root = shared_path("cifar10-test")
    classes = sorted(os.listdir(root))
    items = []
    for label, c in enumerate(classes):
        files = sorted(os.listdir(os.path.join(root, c)))[start:start + n_per_class]
        items += [(os.path.join(root, c, f), label) for f in files]
    return items


@pytest.mark.parametrize("net", ["resnet20", "resnet32"])
def test_resnet_dense_matches_onnxruntime(tmp_path, net):
    """Converted dense, the exported ResNets give ONNX Runtime's outputs
    (relative 1e-4) on random inputs, and its predictions on real test images
    preprocessed by the model's own stored preprocessing."""
    from conftest import shared_path
    from qengine.cli import qconvert
    src = shared_path("onnx-cifar-resnet", f"{net}.onnx")
    out = str(tmp_path / f"{net}.qcnn")
    assert qconvert.main([src, "-o", out, "--keep-dense", "all", "-q"] + RESNET_PRE) == 0
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    x = RNG.standard_normal((8, 3, 32, 32)).astype(np.float32)
    want = sess.run(None, {"data": x})[0]
    for mode in ("exact", "fast"):
        m = qengine.load(out, mode=mode)
        got = m.forward(x)
        # fast mode runs the wider convolutions in 16-bit integers (README, "Fast
        # mode: int16"): about 5e-4 of the largest logit after 20 layers
        tol = 1e-4 if mode == "exact" else 2e-3
        assert np.abs(got - want).max() <= tol * np.abs(want).max(), mode
    # real images: PyTorch's ToTensor + Normalize, written out, against the stored preprocessing
    from PIL import Image
    items = _cifar_items(20)
    xs = m.preprocess([p for p, _ in items])
    ref = np.stack([((np.asarray(Image.open(p).convert("RGB"), np.float32) / 255
                      - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)
                    for p, _ in items]).astype(np.float32)
    assert np.abs(xs - ref).max() < 1e-5
    assert np.array_equal(m.forward(xs).argmax(1), sess.run(None, {"data": ref})[0].argmax(1))


@pytest.mark.slow
def test_resnet20_quantized_keeps_accuracy(tmp_path):
    """ResNet-20 quantized (d=4, K=128 convolutions, error correction on 500
    test images) loses at most 1.5 points of top-1 on 2,000 other test images
    (the closing note of issue 11 gives the full-set figures)."""
    from conftest import shared_path
    from qengine.cli import qconvert
    src = shared_path("onnx-cifar-resnet", "resnet20.onnx")
    calib = tmp_path / "calib"
    for p, label in _cifar_items(50):
        d = calib / str(label)
        d.mkdir(parents=True, exist_ok=True)
        os.symlink(p, d / os.path.basename(p))
    dense, quant = str(tmp_path / "d.qcnn"), str(tmp_path / "q.qcnn")
    assert qconvert.main([src, "-o", dense, "--keep-dense", "all", "-q"] + RESNET_PRE) == 0
    assert qconvert.main([src, "-o", quant, "--conv-subdim", "4", "--conv-k", "128",
                          "--fc-subdim", "2", "--fc-k", "16", "--calib", str(calib),
                          "--calib-count", "500", "-q"] + RESNET_PRE) == 0
    items = _cifar_items(200, start=100)
    labels = np.array([lb for _, lb in items])
    acc = {}
    for path in (dense, quant):
        m = qengine.load(path, mode="fast")
        preds = np.concatenate([m.forward(m.preprocess([p for p, _ in items[i:i + 250]])).argmax(1)
                                for i in range(0, len(items), 250)])
        acc[path] = (preds == labels).mean() * 100
    assert acc[dense] > 78
    assert acc[quant] >= acc[dense] - 1.5, acc


def test_hostile_shape_computations_are_refused(tmp_path):
    """Constant folding never allocates what a tiny file asks for."""
    i64 = np.int64
    for make in (lambda n: n.op("ConstantOfShape", [n.const([1 << 20, 1 << 20], i64)]),
                 lambda n: n.op("Range", [n.const(0, i64), n.const(1 << 40, i64),
                                          n.const(1, i64)]),
                 lambda n: n.op("Expand", [n.const([1.0], np.float32),
                                           n.const([1 << 16, 1 << 16], i64)])):
        n = Net()
        x = n.last
        make(n)                      # folded first, in node order; its output unused
        n.op("Relu", [x])
        path = n.save(tmp_path / "h.onnx")
        with pytest.raises(ModelError, match="h.onnx: node"):
            _convert(tmp_path, path)


def test_shape_of_an_initializer_folds(tmp_path):
    """Shape and Size of a constant (PyTorch exports pads computed from a
    constant's shape this way)."""
    i64 = np.int64
    n = Net((1, 2, 4, 4))
    x = n.last
    sh = n.op("Shape", [n.const(np.zeros((3, 5), np.float32))])
    g = n.op("Gather", [sh, n.const(1, i64)], axis=0)          # 5
    pads = n.op("Concat", [n.const([0, 0, 0], i64), n.op("Unsqueeze", [g, n.const([0], i64)]),
                           n.const([0, 0, 0, 0], i64)], axis=0)  # [0,0,0,5, 0,0,0,0]
    n.op("Pad", [x, pads, n.const(np.float32(1.5))], mode="constant")
    m = _check(tmp_path, n.save(tmp_path / "s.onnx"), (1, 2, 4, 4))
    assert m.layers[0].out_shape == (2, 4, 9)
