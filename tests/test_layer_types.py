"""The layer records (qengine/layers/): every type's kernel against its numpy
reference, a model holding every type against reference.forward, the
execution plan (fused ReLUs, sums written over a dead input) against plain
runs, and the records' completeness (params check, shape, reference, op,
ONNX exporter, docs/FORMAT.md)."""
import os

import numpy as np
import pytest

import qengine
from qengine import _kernels, format as qformat, reference
from qengine.errors import ModelError
from qengine.graph import infer_shapes, validate
from qengine.layers import RECORDS, TYPES

import modelkit

RNG = np.random.default_rng(3)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_record_is_complete():
    from qengine.export_onnx import EXPORTERS
    fmt = open(os.path.join(ROOT, "docs", "FORMAT.md")).read()
    readme = open(os.path.join(ROOT, "README.md")).read()
    for t, rec in RECORDS.items():
        assert rec.type == t and rec.Op is not None, t
        assert type(rec).reference is not type(rec).__mro__[-2].reference, t
        assert t in EXPORTERS, t
        assert f"`{t}`" in fmt, f"{t} missing from docs/FORMAT.md"
        assert t in qformat.V1_LAYER_TYPES + qformat.V2_LAYER_TYPES, t
    assert "Adding a layer type" in readme


def _model(tmp_path, graph, **kw):
    path = str(tmp_path / "m.qcnn")
    modelkit.build(path, graph, dense=kw.pop("dense", ()), meta_extra={"class_names": []}, **kw)
    return qengine.load(path, mode="exact")


def _close(a, b, tol=1e-5):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.abs(a - b).max() <= tol * max(1.0, np.abs(b).max()), np.abs(a - b).max()


def test_every_type_model_matches_reference(tmp_path):
    path = str(tmp_path / "all.qcnn")
    graph, _ = modelkit.build_graph_model(path)
    assert {L["type"] for L in graph["layers"]} == set(TYPES)
    x = RNG.standard_normal((3, 3, 12, 12)).astype(np.float32)
    for mode in ("exact", "fast"):
        for threads in (1, 2):
            m = qengine.load(path, mode=mode, threads=threads)
            # fast mode: 8-bit tables in the fully-connected layer (README, "Fast mode")
            tol = 1e-5 if mode == "exact" else 2e-2
            want = reference.forward(m.graph, reference.model_weights(m), x)
            _close(m.forward(x), want, tol)
            # every intermediate output (no fusion, no reuse) equals the reference's
            names = [L.name for L in m.layers]
            got = m.forward(x, outputs=names)
            ref = reference.forward(m.graph, reference.model_weights(m), x, outputs=names)
            for n in names:
                _close(got[n], ref[n], tol)


POOL_CASES = [("AVE", False, True, 3, 2, 1), ("AVE", True, True, 3, 2, 1),
              ("AVE", False, False, 2, 2, 0), ("MAX", False, False, 3, 2, 1),
              ("AVE", True, False, 3, 3, 1), ("MAX", True, False, 2, 3, 0)]


def _pool_graph(pool, ceil, exclude, k, s, p):
    return {"input": {"name": "data", "shape": [3, 11, 10]}, "layers": [
        modelkit.layer("p", "Pooling", "data", pool=pool, kernel=[k, k], stride=[s, s],
                       pad=[p, p], ceil=ceil, exclude_pad=exclude, **{"global": False})]}


@pytest.mark.parametrize("case", POOL_CASES)
def test_pooling_rounding_and_padding_rules(tmp_path, case):
    g = _pool_graph(*case)
    m = _model(tmp_path, g)
    x = RNG.standard_normal((2, 3, 11, 10)).astype(np.float32)
    _close(m.forward(x), reference.forward(g, {}, x))


@pytest.mark.parametrize("case", POOL_CASES)
def test_pooling_rules_match_onnxruntime(tmp_path, case):
    """The same settings as ONNX defines them (ceil_mode, count_include_pad)."""
    ort = pytest.importorskip("onnxruntime")
    from qengine.export_onnx import onnx_model
    g = _pool_graph(*case)
    m = _model(tmp_path, g)
    x = RNG.standard_normal((2, 3, 11, 10)).astype(np.float32)
    sess = ort.InferenceSession(onnx_model(g, {}, batch=2).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    _close(m.forward(x), sess.run(None, {"data": x})[0])


def test_eltwise_sums_fused_relu_and_reuse(tmp_path):
    """A sum of three branches with coefficients; a sum whose input is read
    again later must not be written over; the ReLU after a sum is fused."""
    g = {"input": {"name": "data", "shape": [4, 6, 6]}, "layers": [
        modelkit.conv("a", "data", 4, 3, p=1),
        modelkit.conv("b", "data", 4, 1),
        modelkit.layer("s1", "Eltwise", ["a", "b", "data"], operation="SUM",
                       coeff=[1.0, 2.0, -1.0]),
        modelkit.layer("r1", "ReLU", "s1", negative_slope=0.0),
        modelkit.layer("s2", "Eltwise", ["r1", "a"], operation="SUM"),   # a read again here
        modelkit.layer("s3", "Eltwise", ["s2", "b"], operation="SUM"),
    ]}
    m = _model(tmp_path, g, dense=("a", "b"))
    assert m._fused == {2}
    # s1 may not overwrite the network input, nor a (read by s2): it overwrites b? no, b
    # is read by s3; s3 may overwrite s2's buffer
    assert 2 not in m._reuse and m._reuse.get(5) == 0
    x = RNG.standard_normal((2, 4, 6, 6)).astype(np.float32)
    x0 = x.copy()
    want = reference.forward(g, reference.model_weights(m), x)
    _close(m.forward(x), want)
    _close(m.forward(x), want)           # twice: nothing the plan reuses leaks between runs
    assert np.array_equal(x, x0)


def test_lrn_normalises_in_place_only_a_buffer_no_one_reads_again(tmp_path):
    """LRN writes over its input when nothing later reads it (norm1); not over
    the network's input (norm0), nor over a blob read again (norm2's input c2,
    read by the sum), nor with a window too wide for it (norm3)."""
    lrn = dict(alpha=1e-2, beta=0.75, k=2.0)
    g = {"input": {"name": "data", "shape": [6, 7, 9]}, "layers": [
        modelkit.layer("norm0", "LRN", "data", local_size=5, **lrn),
        modelkit.conv("c1", "norm0", 6, 3, p=1),
        modelkit.layer("norm1", "LRN", "c1", local_size=5, **lrn),
        modelkit.conv("c2", "norm1", 6, 1),
        modelkit.layer("norm2", "LRN", "c2", local_size=3, **lrn),
        modelkit.layer("s", "Eltwise", ["norm2", "c2"], operation="SUM"),
        modelkit.layer("norm3", "LRN", "s", local_size=21, **lrn),
    ]}
    m = _model(tmp_path, g, dense=("c1", "c2"))
    names = {m._ops[i].name: k for i, k in m._reuse.items()}
    assert names == {"norm1": 0, "s": 0}
    x = (RNG.standard_normal((2, 6, 7, 9)) * 10).astype(np.float32)
    x0 = x.copy()
    want = reference.forward(g, reference.model_weights(m), x)
    _close(m.forward(x), want)
    _close(m.forward(x), want)
    assert np.array_equal(x, x0)
    outs = m.forward(x, outputs=["c1", "norm1", "norm3"])   # kept outputs: no overwriting
    c1 = reference.forward(dict(g, layers=g["layers"][:2]), reference.model_weights(m), x)
    _close(outs["c1"], c1)


def test_slice_pad_clip_sigmoid_scale_kernels():
    x = RNG.standard_normal((2, 5, 9, 7)).astype(np.float32) * 30
    out = np.empty((2, 2, 3, 3), np.float32)
    _kernels.strided_slice(x, [1, 2, 0], [3, 3, 3], out)
    assert np.array_equal(out, x[:, 1::3, 2::3, 0::3][:, :2, :3, :3])
    with pytest.raises(ValueError):
        _kernels.strided_slice(x, [1, 2, 0], [3, 3, 3], np.empty((2, 2, 3, 4), np.float32))
    pads = [1, 2, 0, 3, 2, 0]
    out = np.empty((2, 8, 12, 9), np.float32)
    _kernels.pad(x, pads, -1.5, out)
    assert np.array_equal(out, np.pad(x, ((0, 0), (1, 2), (0, 3), (2, 0)), constant_values=-1.5))
    with pytest.raises(ValueError):
        _kernels.pad(x, [1, 2, 0, 3, 2, 1], 0.0, out)
    flat = x.reshape(-1)
    y = np.empty_like(flat)
    _kernels.clip(flat, y, -6.0, 6.0)
    assert np.array_equal(y, np.clip(flat, -6, 6))
    _kernels.sigmoid(flat, y)
    _close(y, RECORDS["Sigmoid"].reference({}, [flat], None), 1e-6)
    assert np.all(np.isfinite(y)) and y.min() >= 0 and y.max() <= 1
    s, t = RNG.standard_normal(5).astype(np.float32), RNG.standard_normal(5).astype(np.float32)
    z = np.empty((2, 5, 63), np.float32)
    _kernels.affine(x.reshape(2, 5, 63), s, t, z, True)
    _close(z, np.maximum(x.reshape(2, 5, 63) * s[None, :, None] + t[None, :, None], 0))


@pytest.mark.parametrize("bad", [
    ("StridedSlice", {"start": [0, 0, 0], "stop": [4, 9, 9], "step": [1, 1, 1]}, "beyond"),
    ("StridedSlice", {"start": [2, 0, 0], "stop": [2, 4, 4], "step": [1, 1, 1]}, "invalid"),
    ("StridedSlice", {"start": [0, 0, 0], "stop": [1, 1, 1], "step": [0, 1, 1]}, "invalid"),
    ("Pad", {"pads": [0, 0, -1, 0, 0, 0], "value": 0.0}, "invalid"),
    ("Pad", {"pads": [0, 0, 1, 0, 0, 0], "value": float("nan")}, "invalid"),
    ("Clip", {"min": 1.0, "max": 0.0}, "invalid"),
    ("Eltwise", {"operation": "PROD"}, "invalid"),
    ("Pooling", {"pool": "MAX", "kernel": [2, 2], "stride": [1, 1], "pad": [0, 0],
                 "global": False, "ceil": "yes"}, "invalid"),
])
def test_new_layer_params_checked(bad):
    t, params, msg = bad
    g = {"input": {"name": "data", "shape": [4, 8, 8]}, "layers": [
        {"name": "l", "type": t, "bottom": ["data"] * (2 if t == "Eltwise" else 1),
         "top": ["l"], "params": params}]}
    with pytest.raises(ModelError, match=msg):
        validate(g)
        infer_shapes(g)


def test_eltwise_shapes_must_agree():
    g = {"input": {"name": "data", "shape": [4, 8, 8]}, "layers": [
        modelkit.layer("p", "Pooling", "data", pool="MAX", kernel=[2, 2], stride=[2, 2],
                       pad=[0, 0], **{"global": False}),
        modelkit.layer("s", "Eltwise", ["p", "data"], operation="SUM")]}
    validate(g)
    with pytest.raises(ModelError, match="differ in shape"):
        infer_shapes(g)


# -- Caffe: Eltwise, BatchNorm + Scale (a ResNet block) ------------------------

def test_caffe_resnet_block_converts(tmp_path):
    from test_quantize import blob, field, layer
    proto = """
input: "data" input_dim: 1 input_dim: 4 input_dim: 8 input_dim: 8
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "bn1" type: "BatchNorm" bottom: "c1" top: "c1"
        batch_norm_param { use_global_stats: true eps: 0.001 } }
layer { name: "sc1" type: "Scale" bottom: "c1" top: "c1" scale_param { bias_term: true } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "bn2" type: "BatchNorm" bottom: "c1" top: "bn2" }
layer { name: "sum" type: "Eltwise" bottom: "bn2" bottom: "data" top: "sum"
        eltwise_param { operation: SUM } }
layer { name: "r2" type: "ReLU" bottom: "sum" top: "sum" }
layer { name: "fc" type: "InnerProduct" bottom: "sum" top: "fc"
        inner_product_param { num_output: 3 } }
"""
    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    mean, var = rng.standard_normal(4), rng.random(4) + 0.5
    sf = np.array([2.0])
    s1, t1 = rng.standard_normal(4), rng.standard_normal(4)
    mean2, var2 = rng.standard_normal(4), rng.random(4) + 0.5
    wf, bf = rng.standard_normal((3, 256)), rng.standard_normal(3)
    data = field(1, 2, b"net") + layer("c1", "Convolution", [blob(w1)]) + \
        layer("bn1", "BatchNorm", [blob(mean * 2), blob(var * 2), blob(sf)]) + \
        layer("sc1", "Scale", [blob(s1), blob(t1)]) + \
        layer("bn2", "BatchNorm", [blob(mean2), blob(var2), blob([1.0])]) + \
        layer("fc", "InnerProduct", [blob(wf), blob(bf)])
    d = tmp_path / "caffe"
    d.mkdir()
    (d / "deploy.prototxt").write_text(proto)
    (d / "w.caffemodel").write_bytes(data)
    from qengine.cli import qconvert
    out = str(tmp_path / "r.qcnn")
    assert qconvert.main([str(d), "-o", out, "--keep-dense", "all", "-q"]) == 0
    m = qengine.load(out, mode="exact")
    types = [L.type for L in m.layers]
    # bn1 + sc1 folded into c1; bn2 (after a ReLU) kept as a Scale layer
    assert types == ["Convolution", "ReLU", "Scale", "Eltwise", "ReLU", "InnerProduct"]
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    # Caffe's own arithmetic, written out
    y = reference.conv2d(x, w1, None, 1, 1)
    y = (y - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-3)
    y = np.maximum(y * s1[None, :, None, None] + t1[None, :, None, None], 0)
    y = (y - mean2[None, :, None, None]) / np.sqrt(var2[None, :, None, None] + 1e-5)
    y = np.maximum(y + x, 0)
    want = y.reshape(2, -1) @ wf.T + bf
    _close(m.forward(x), want.astype(np.float32), 1e-4)


@pytest.mark.parametrize("stride,pad,mult,k", [(1, 1, 1, 3), (2, 1, 2, 3), (1, 2, 1, 5),
                                               (3, 0, 1, 2)])
def test_depthwise_convolution(tmp_path, stride, pad, mult, k):
    """Depthwise convolutions (one input channel per group) run on their own
    kernel, dense or dequantized, with the ReLU fused and into a concatenation."""
    g = {"input": {"name": "data", "shape": [6, 11, 9]}, "layers": [
        modelkit.conv("dw", "data", 6 * mult, k, s=stride, p=pad, g=6),
        modelkit.layer("r", "ReLU", "dw", "dw", negative_slope=0.0),
        modelkit.conv("dq", "data", 6 * mult, k, s=stride, p=pad, g=6),
        modelkit.layer("cat", "Concat", ["dw", "dq"], axis=1)]}
    m = _model(tmp_path, g, dense=("dw",), d_conv=2)
    assert m.layer_strategies() == {"dw": "depthwise", "dq": "depthwise"}
    x = RNG.standard_normal((2, 6, 11, 9)).astype(np.float32)
    _close(m.forward(x), reference.forward(g, reference.model_weights(m), x))
    lut = qengine.load(m.path, strategy="lut", mode="exact")      # forced tables: the same sums
    assert lut.layer_strategies()["dq"] == "lut"
    _close(lut.forward(x), m.forward(x))
