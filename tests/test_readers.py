"""Readers of the original Quantized-CNN binaries and of Caffe prototxt."""
import os
import struct

import numpy as np
import pytest

from qengine import graph as qgraph
from qengine.frontends import caffe
from qengine.errors import FormatError, ModelError
from qengine.readers import prototxt
from qengine.frontends.qcnn_original import load_quantized_layers
from qengine.readers.qcnn_original import read_bin, read_cbn

from conftest import ROOT, shared_path


def write_bin(path, arr):
    arr = np.asarray(arr, np.float32)
    path.write_bytes(struct.pack("<i", arr.ndim) + struct.pack(f"<{arr.ndim}i", *arr.shape)
                     + arr.astype("<f4").tobytes())
    return str(path)


def write_cbn(path, vals, bits):
    """The original block format, built independently: MSB-first values in 4096-byte blocks."""
    vals = np.asarray(vals, np.uint8)
    per = 4096 * 8 // bits
    out = struct.pack("<i", vals.ndim) + struct.pack(f"<{vals.ndim}i", *vals.shape) + \
        struct.pack("<i", bits)
    flat = vals.reshape(-1)
    for b0 in range(0, flat.size, per):
        chunk = flat[b0:b0 + per]
        bitstr = "".join(format(int(v), f"0{bits}b") for v in chunk)
        bitstr += "0" * (4096 * 8 - len(bitstr))
        out += int(bitstr, 2).to_bytes(4096, "big")
    path.write_bytes(out)
    return str(path)


def test_bin_round_trip_and_errors(tmp_path):
    a = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    assert np.array_equal(read_bin(write_bin(tmp_path / "a.bin", a)), a)
    good = (tmp_path / "a.bin").read_bytes()
    cases = {
        "short": good[:2],
        "ndim0": struct.pack("<i", 0) + good[4:],
        "ndim99": struct.pack("<i", 99) + good[4:],
        "negdim": good[:4] + struct.pack("<i", -2) + good[8:],
        "huge": good[:4] + struct.pack("<i", 2 ** 30) + good[8:],
        "truncated": good[:-4],
        "extra": good + b"\0\0\0\0",
    }
    for name, data in cases.items():
        p = tmp_path / f"{name}.bin"
        p.write_bytes(data)
        with pytest.raises(FormatError) as ei:
            read_bin(str(p))
        assert str(p) in str(ei.value)
    nan = tmp_path / "nan.bin"
    write_bin(nan, [1.0, float("nan")])
    with pytest.raises(FormatError, match="NaN"):
        read_bin(str(nan))


@pytest.mark.parametrize("bits,shape", [(7, (5, 3, 3, 2)), (5, (700, 20)), (4, (3000, 7)),
                                        (1, (9,)), (8, (4097,))])
def test_cbn_reader_matches_independent_writer(tmp_path, bits, shape):
    v = np.random.default_rng(bits).integers(0, 1 << bits, shape).astype(np.uint8)
    got, b = read_cbn(write_cbn(tmp_path / "a.cbn", v, bits))
    assert b == bits and np.array_equal(got, v)


def test_cbn_errors(tmp_path):
    v = np.arange(10, dtype=np.uint8)
    p = write_cbn(tmp_path / "a.cbn", v, 4)
    with pytest.raises(FormatError, match="out of range"):
        read_cbn(p, k=8)
    data = (tmp_path / "a.cbn").read_bytes()
    for name, bad in {"bits0": data[:8] + struct.pack("<i", 0) + data[12:],
                      "bits9": data[:8] + struct.pack("<i", 9) + data[12:],
                      "short": data[:-1], "long": data + b"\0" * 4096}.items():
        q = tmp_path / f"{name}.cbn"
        q.write_bytes(bad)
        with pytest.raises(FormatError) as ei:
            read_cbn(str(q))
        assert str(q) in str(ei.value)


def test_real_alexnet_files_and_wrong_architecture():
    src = shared_path("qcnn-alexnet")
    from qengine.frontends.presets import preset_graph
    layers = load_quantized_layers(src, preset_graph("alexnet"))
    assert sorted(layers) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert layers["conv2"]["indices"].shape == (256, 5, 5, 6)
    assert layers["fc8"]["bits"] == 4 and layers["fc8"]["codebook"].shape == (4096, 16, 1)
    with pytest.raises(ModelError) as ei:
        load_quantized_layers(src, preset_graph("vgg16"))
    assert "layer" in str(ei.value)
    # CaffeNet has its weighted layers at the same indices but pool/LRN swapped: shapes fit
    load_quantized_layers(src, preset_graph("caffenet"))


def test_presets_parse_with_expected_shapes():
    from qengine.frontends.presets import PRESETS, preset_graph
    fc6_in = {"alexnet": (256, 6, 6), "caffenet": (256, 6, 6), "vgg_cnn_s": (512, 6, 6),
              "vgg16": (512, 7, 7)}
    for name in PRESETS:
        g = preset_graph(name)
        shapes = qgraph.infer_shapes(g)
        fc6 = next(L for L in g["layers"] if L["name"] == "fc6")
        assert shapes[fc6["bottom"][0]] == fc6_in[name], name
        assert shapes["prob"] == (1000,)
    assert os.path.exists(os.path.join(ROOT, "models", "alexnet.prototxt"))


def test_prototxt_syntax_new_and_v1():
    new = '''
    name: "n" # comment
    layer { name: "data" type: "Input" top: "data"
            input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
    layer { name: "c" type: "Convolution" bottom: "data" top: "c"
            convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1 } }
    layer { name: "r" type: "ReLU" bottom: "c" top: "c" relu_param { negative_slope: 0.5 } }
    layer { name: "p" type: "Pooling" bottom: "c" top: "p"
            pooling_param { pool: AVE global_pooling: true } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "p" top: "loss" }
    '''
    g = caffe.from_prototxt(new)
    assert [L["type"] for L in g["layers"]] == ["Convolution", "ReLU", "Pooling"]
    assert g["layers"][1]["params"]["negative_slope"] == 0.5
    assert qgraph.infer_shapes(g)["p"] == (4, 1, 1)
    v1 = '''
    input: "data" input_dim: 1 input_dim: 1 input_dim: 28 input_dim: 28
    layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
             convolution_param { num_output: 20 kernel_size: 5 } }
    layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
             pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
    layers { name: "ip" type: INNER_PRODUCT bottom: "pool1" top: "ip"
             inner_product_param { num_output: 10 } }
    '''
    g = caffe.from_prototxt(v1)
    assert qgraph.infer_shapes(g)["ip"] == (10,)
    assert qgraph.infer_shapes(g)["pool1"] == (20, 12, 12)


@pytest.mark.parametrize("text,exc,msg", [
    ('layer { name: "a" ', FormatError, "not closed"),
    ('a: 1 } ', FormatError, "unbalanced"),
    ('layer } ', FormatError, "unexpected"),
    ('input: "d" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4 '
     'layer { name: "x" type: "Deconvolution" bottom: "d" top: "x" } '
     'layer { name: "y" type: "PReLU" bottom: "x" top: "y" }', ModelError,
     "unsupported layers: x \\(Deconvolution\\), y \\(PReLU\\)"),
    ('input: "d" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4 '
     'layer { name: "c" type: "Convolution" bottom: "d" top: "c" '
     'convolution_param { num_output: 2 kernel_size: 3 dilation: 2 } }', ModelError, "dilation"),
    ('layer { name: "c" type: "ReLU" bottom: "d" top: "c" }', ModelError, "no input"),
    ('input: "d" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4 '
     'layer { name: "c" type: "Convolution" bottom: "d" top: "c" '
     'convolution_param { num_output: 2 kernel_size: 9 } }', ModelError, "larger than"),
    ('input: "d" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4 '
     'layer { name: "c" type: "ReLU" bottom: "zz" top: "c" }', ModelError, "zz"),
    ('a: @', FormatError, "unexpected character"),
    # found by tools/fuzz.py: values of the wrong kind
    ('input: "d" input_shape: "ape"', FormatError, "input_shape must be a message"),
    ('input: "d" input_dim: 1 input_dim: 3 input_dim: F16 input_dim: 4', ModelError,
     "3 or 4 integers"),
    ('input: "d" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4 '
     'layer { name: "r" type { x: 1 } bottom: "d" top: "r" }', FormatError, "invalid name or type"),
    ('input: "d" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4 '
     'layer { name: "c" type: "Convolution" bottom: "d" top: "c" convolution_param: "x" }',
     FormatError, "must be a message"),
    ('input: "d" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4 '
     'layer { name: "p" type: "Pooling" bottom: "d" top: "p" pooling_param { pool { a: 1 } } }',
     ModelError, "pooling method"),
    ("{" * 100, FormatError, "field name"),
])
def test_prototxt_errors(text, exc, msg):
    with pytest.raises(exc, match=msg):
        caffe.from_prototxt(text)


def test_prototxt_tokens():
    d = prototxt.parse('a: "x\\"y" b: -1.5e2 c: true d: [1, 2, 3] e < f: 1 >')
    assert d == {"a": ['x"y'], "b": [-150.0], "c": [True], "d": [1, 2, 3], "e": [{"f": [1]}]}
