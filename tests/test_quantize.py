"""The quantiser: Caffe reading, k-means, error correction, accuracy on real models."""
import struct

import numpy as np
import pytest

import qengine
from qengine.errors import FormatError
from qengine.quantize import kmeans, quantize_weights, reconstruct, subspace_vectors
from qengine.readers.caffemodel import read_caffemodel

from conftest import shared_path


# -- an independent protobuf encoder for test files --------------------------
def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def field(num, wt, payload):
    key = varint(num << 3 | wt)
    if wt == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def blob(arr, legacy=False, packed=True):
    arr = np.asarray(arr, np.float32)
    if legacy:
        dims = (1,) * (4 - arr.ndim) + arr.shape
        out = b"".join(field(i + 1, 0, varint(d)) for i, d in enumerate(dims))
    else:
        out = field(7, 2, field(1, 2, b"".join(varint(d) for d in arr.shape)))
    if packed:
        out += field(5, 2, arr.astype("<f4").tobytes())
    else:
        out += b"".join(field(5, 5, struct.pack("<f", v)) for v in arr.reshape(-1))
    return out


def layer(name, ltype, blobs, v1=False):
    if v1:
        enum = {"Convolution": 4, "InnerProduct": 14}[ltype]
        body = field(4, 2, name.encode()) + field(5, 0, varint(enum)) + \
            b"".join(field(6, 2, b) for b in blobs)
        return field(2, 2, body)
    body = field(1, 2, name.encode()) + field(2, 2, ltype.encode()) + \
        b"".join(field(7, 2, b) for b in blobs)
    return field(100, 2, body)


def test_caffemodel_reader_new_and_legacy(tmp_path):
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((4, 3, 2, 2)), rng.standard_normal(4)
    w2, b2 = rng.standard_normal((5, 7)), rng.standard_normal(5)
    data = field(1, 2, b"net") + layer("c", "Convolution", [blob(w1), blob(b1, packed=False)]) + \
        layer("f", "InnerProduct", [blob(w2, legacy=True), blob(b2, legacy=True)], v1=True)
    p = tmp_path / "m.caffemodel"
    p.write_bytes(data)
    L = read_caffemodel(str(p))
    assert L["c"]["type"] == "Convolution" and L["f"]["type"] == "InnerProduct"
    assert np.allclose(L["c"]["blobs"][0], w1) and np.allclose(L["c"]["blobs"][1], b1)
    assert L["f"]["blobs"][0].shape == (1, 1, 5, 7)
    assert np.allclose(L["f"]["blobs"][0].reshape(5, 7), w2)


@pytest.mark.parametrize("cut", [1, 5, 17, -1])
def test_caffemodel_reader_rejects_damage(tmp_path, cut):
    data = layer("c", "Convolution", [blob(np.ones((2, 2)))])
    p = tmp_path / "bad.caffemodel"
    p.write_bytes(data[:cut])
    with pytest.raises(FormatError) as ei:
        read_caffemodel(str(p))
    assert str(p) in str(ei.value)


def test_caffemodel_reader_shape_mismatch_and_nan(tmp_path):
    bad = field(7, 2, field(1, 2, varint(3))) + field(5, 2, np.ones(2, "<f4").tobytes())
    p = tmp_path / "x.caffemodel"
    p.write_bytes(layer("c", "Convolution", [bad]))
    with pytest.raises(FormatError, match="holds 3 values"):
        read_caffemodel(str(p))
    p.write_bytes(layer("c", "Convolution", [blob(np.array([1.0, np.nan]))]))
    with pytest.raises(FormatError, match="NaN"):
        read_caffemodel(str(p))


# -- k-means and product quantisation ----------------------------------------
def test_kmeans_recovers_separated_clusters_and_is_deterministic():
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((2, 8, 3)) * 10
    labels = rng.integers(0, 8, (2, 400))
    X = np.take_along_axis(centers, labels[..., None], 1) + rng.standard_normal((2, 400, 3)) * 0.01
    C, A = kmeans(X.astype(np.float32), 8, seed=1)
    C2, A2 = kmeans(X.astype(np.float32), 8, seed=1)
    assert np.array_equal(C, C2) and np.array_equal(A, A2)
    for s in range(2):
        # every found cluster is exactly one true cluster
        for k in range(8):
            assert len(set(labels[s][A[s] == k])) == 1
        assert np.abs(C[s][A[s]] - X[s]).max() < 0.1


def test_quantize_shapes_and_small_layers():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    cb, idx = quantize_weights(w, "conv", 2, 16)
    assert cb.shape == (3, 16, 2) and idx.shape == (6, 3, 3, 3) and idx.dtype == np.uint8
    r = reconstruct(cb, idx, "conv", w.shape)
    assert r.shape == w.shape
    # with as many codewords as vectors, quantisation is exact
    w = rng.standard_normal((3, 8)).astype(np.float32)
    cb, idx = quantize_weights(w, "fc", 4, 32)
    assert cb.shape == (2, 3, 4)
    assert np.allclose(reconstruct(cb, idx, "fc", w.shape), w, atol=1e-6)
    v = subspace_vectors(w, "fc", 4)
    assert v.shape == (2, 3, 4) and np.array_equal(v[1, 2], w[2, 4:])


def test_error_correction_reduces_response_error():
    from qengine.calibration import apply_layer
    from qengine.errcorr import refine_layer
    rng = np.random.default_rng(1)
    L = {"name": "c", "type": "Convolution", "bottom": ["x"], "top": ["c"],
         "params": {"num_output": 12, "kernel": [3, 3], "stride": 1, "pad": 1, "group": 2,
                    "bias_term": True}}
    # correlated inputs, as real activations are
    x = np.maximum(rng.standard_normal((20, 8, 9, 9)) + rng.standard_normal((20, 1, 9, 9)), 0)
    x = x.astype(np.float32)
    w = rng.standard_normal((12, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    y = apply_layer(L, [x], (w, b))
    cb, idx = quantize_weights(w, "conv", 2, 8)
    cb2, idx2, b2, before, after = refine_layer(L, x, y, b, cb, idx, iters=3)
    assert after < 0.8 * before
    # the reported error is the real response error
    yq = apply_layer(L, [x], (reconstruct(cb2, idx2, "conv", w.shape), b2))
    real = np.linalg.norm(yq - y) / np.linalg.norm(y - b[None, :, None, None])
    assert abs(real - after) < 0.05 * after + 1e-3
    # fully-connected
    Lf = {"name": "f", "type": "InnerProduct", "bottom": ["x"], "top": ["f"],
          "params": {"num_output": 10, "bias_term": True}}
    xf = x.reshape(20, -1)[:, :60]
    wf = rng.standard_normal((10, 60)).astype(np.float32)
    yf = apply_layer(Lf, [xf], (wf, b[:10]))
    cbf, idxf = quantize_weights(wf, "fc", 3, 4)
    _, _, _, before, after = refine_layer(Lf, xf, yf, b[:10], cbf, idxf, iters=3)
    assert after < 0.8 * before


# -- real models ---------------------------------------------------------------
def test_lenet_quantized_accuracy(tmp_path):
    from qengine.convert import convert_caffe
    from qengine.datasets import evaluate, open_set
    src = shared_path("caffe", "lenet")
    items, labels = open_set(shared_path("mnist-t10k"))
    kw = dict(preprocess={"scale": 0.00390625})
    convert_caffe(f"{src}/deploy.prototxt", f"{src}/lenet_iter_10000.caffemodel",
                  str(tmp_path / "d.qcnn"), keep_dense=["all"], **kw)
    convert_caffe(f"{src}/deploy.prototxt", f"{src}/lenet_iter_10000.caffemodel",
                  str(tmp_path / "q.qcnn"), **kw)
    dense = evaluate(qengine.load(str(tmp_path / "d.qcnn"), threads=2, mode="exact"), items, labels, 500)
    assert abs(dense["top1"] - 0.9914) < 0.0005      # the model's published dense accuracy
    for mode in ("exact", "fast"):
        q = evaluate(qengine.load(str(tmp_path / "q.qcnn"), mode=mode, threads=2), items, labels, 500)
        assert dense["top1"] - q["top1"] <= 0.002, (mode, q["top1"])
        assert (q["pred"] == dense["pred"]).mean() >= 0.99


def test_cifar10_error_correction_halves_the_loss(tmp_path):
    from qengine.convert import DEFAULT_SETTINGS, convert_caffe
    from qengine.datasets import evaluate, open_set
    src = shared_path("caffe", "cifar10_quick")
    items, labels = open_set(shared_path("cifar10-test"), limit=4000)
    calib_items, test_items, test_labels = items[:500], items[500:], labels[500:]
    kw = dict(preprocess={"mean": f"{src}/mean_rgb_3x32x32.npy", "channel_order": "rgb"})
    args = (f"{src}/deploy.prototxt", f"{src}/cifar10_quick_iter_5000.caffemodel")
    convert_caffe(*args, str(tmp_path / "d.qcnn"), keep_dense=["all"], **kw)
    dense_m = qengine.load(str(tmp_path / "d.qcnn"), threads=2, mode="exact")
    calib = dense_m.preprocess(calib_items)
    convert_caffe(*args, str(tmp_path / "km.qcnn"), **kw)
    # the default settings, given (with calibration alone the converter would choose them)
    convert_caffe(*args, str(tmp_path / "ec.qcnn"), calib=calib, **DEFAULT_SETTINGS, **kw)
    acc = {n: evaluate(qengine.load(str(tmp_path / f"{n}.qcnn"), threads=2, mode="exact"), test_items,
                       test_labels, 500)["top1"] for n in ("d", "km", "ec")}
    loss_km, loss_ec = acc["d"] - acc["km"], acc["d"] - acc["ec"]
    assert loss_km > 0.005                 # plain k-means loses more than 0.5 pt here...
    assert loss_ec <= loss_km / 2, acc     # ...and error correction cuts the loss at least in half


def test_original_dense_layout_is_quantised(tmp_path):
    """*.convKnl / *.fcntWei / *.biasVec in the original code's layout, matched by layer
    index; with as many codewords as vectors the quantised model equals the dense one."""
    from qengine.convert import convert_original_dense
    from qengine.layers.weighted import dequantize_conv, dequantize_fc
    from test_readers import write_bin
    proto = tmp_path / "net.prototxt"
    proto.write_text('input: "d" input_dim: 1 input_dim: 2 input_dim: 6 input_dim: 6\n'
                     'layer { name: "c" type: "Convolution" bottom: "d" top: "c" '
                     'convolution_param { num_output: 3 kernel_size: 3 } }\n'
                     'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }\n'
                     'layer { name: "f" type: "InnerProduct" bottom: "c" top: "f" '
                     'inner_product_param { num_output: 4 } }\n')
    rng = np.random.default_rng(0)
    src = tmp_path / "dense"
    src.mkdir()
    wc, bc = rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    wf, bf = rng.standard_normal((4, 48)), rng.standard_normal(4)
    write_bin(src / "m.convKnl.01.bin", wc)
    write_bin(src / "m.biasVec.01.bin", bc)
    write_bin(src / "m.fcntWei.03.bin", wf)
    write_bin(src / "m.biasVec.03.bin", bf)
    out = tmp_path / "m.qcnn"
    convert_original_dense(str(src), str(out), prototxt=str(proto), conv_subdim=2, conv_k=64,
                           fc_subdim=4, fc_k=8)
    m = qengine.load(str(out), strategy="lut", mode="exact")
    conv, fc = (op for op in m._ops if op.weighted)
    assert np.allclose(dequantize_conv(conv.codebook, conv.stored_indices(), 2), wc, atol=1e-6)
    assert np.allclose(dequantize_fc(fc.codebook, fc.stored_indices(), 48), wf, atol=1e-6)
    (src / "m.fcntWei.03.bin").unlink()
    with pytest.raises(qengine.ModelError, match="layer 3"):
        convert_original_dense(str(src), str(tmp_path / "n.qcnn"), prototxt=str(proto))


def test_original_dense_layout_takes_calibration_from_the_command_line(tmp_path):
    """qconvert DIR --calib x.npy quantises the original dense layout with error correction."""
    from qengine.cli.qconvert import main
    from test_readers import write_bin
    proto = tmp_path / "net.prototxt"
    proto.write_text('input: "d" input_dim: 1 input_dim: 4 input_dim: 6 input_dim: 6\n'
                     'layer { name: "c" type: "Convolution" bottom: "d" top: "c" '
                     'convolution_param { num_output: 8 kernel_size: 3 } }\n')
    rng = np.random.default_rng(1)
    src = tmp_path / "dense"
    src.mkdir()
    write_bin(src / "m.convKnl.01.bin", rng.standard_normal((8, 4, 3, 3)))
    write_bin(src / "m.biasVec.01.bin", rng.standard_normal(8))
    np.save(tmp_path / "calib.npy", rng.standard_normal((6, 4, 6, 6)).astype(np.float32))
    out = tmp_path / "m.qcnn"
    main([str(src), "-o", str(out), "--prototxt", str(proto), "--conv-subdim", "2",
          "--conv-k", "4", "--calib", str(tmp_path / "calib.npy"), "-q"])
    q = qengine.load(str(out), mode="exact").metadata["provenance"]["quantization"]
    assert q["error_correction"] and q["calibration_inputs"] == 6


def test_labels_drop_wordnet_ids_only_when_every_line_has_one(tmp_path):
    from qengine.convert import read_labels
    p = tmp_path / "synset_words.txt"
    p.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    assert read_labels(str(p), 2) == ["tench, Tinca tinca", "goldfish, Carassius auratus"]
    p.write_text("n01440764 tench\ncat\n")
    assert read_labels(str(p)) == ["n01440764 tench", "cat"]
    with pytest.raises(qengine.ModelError, match="2 class names"):
        read_labels(str(p), 3)
