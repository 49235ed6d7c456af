"""Distillation fine-tuning (qengine/finetune.py, qconvert --finetune): the
graph in PyTorch against qengine's numpy reference for every layer type and
pooling rule, the codeword gather against dequantize, and fine-tuning
bringing a coarse quantized network's outputs closer to the dense one's on
inputs it never saw."""
import numpy as np
import pytest

import qengine
from qengine import reference
from qengine.layers.weighted import dequantize_conv, dequantize_fc

import modelkit

torch = pytest.importorskip("torch", reason="fine-tuning needs the optional PyTorch extra")
from qengine import finetune  # noqa: E402


def _t(wb):
    return tuple(torch.from_numpy(np.array(a, np.float32)) for a in wb)


def test_every_layer_type_in_torch_matches_the_reference(tmp_path):
    path = str(tmp_path / "all.qcnn")
    graph, _ = modelkit.build_graph_model(path)
    m = qengine.load(path, mode="exact")
    weights = reference.model_weights(m)
    x = np.random.default_rng(0).standard_normal((3, 3, 12, 12)).astype(np.float32)
    want = reference.forward(m.graph, weights, x)
    got, _ = finetune.forward(torch, m.graph, {n: _t(wb) for n, wb in weights.items()},
                              torch.from_numpy(x), logits=False)
    assert np.abs(got.numpy() - want).max() <= 1e-4 * max(1, np.abs(want).max())


@pytest.mark.parametrize("pool,k,s,pad,ceil,exclude,size", [
    ("MAX", 3, 2, 0, True, False, 13),    # Caffe's ceil rule (AlexNet, SqueezeNet)
    ("MAX", 3, 2, 1, True, False, 8),     # a last window starting in the pad is dropped
    ("AVE", 3, 2, 1, True, False, 9),     # padding counted, window clipped to the padded input
    ("AVE", 3, 2, 1, False, True, 9),     # ONNX: floor, padding excluded
    ("AVE", 2, 2, 0, False, False, 7),
])
def test_pooling_rules_in_torch_match_the_reference(pool, k, s, pad, ceil, exclude, size):
    from qengine.layers import record
    p = {"pool": pool, "kernel": [k, k], "stride": [s, s], "pad": [pad, pad], "global": False,
         "ceil": ceil, "exclude_pad": exclude}
    L = {"name": "p", "type": "Pooling", "params": p, "bottom": ["x"], "top": ["p"]}
    x = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
    want = record("Pooling").reference(p, [x], None)
    got = finetune.run_layer(torch, L, [torch.from_numpy(x)], None).numpy()
    assert got.shape == want.shape
    assert np.allclose(got, want, atol=1e-5)


def test_codeword_gather_is_dequantize():
    rng = np.random.default_rng(2)
    cb = rng.standard_normal((3, 16, 4)).astype(np.float32)       # 10 channels: last is short
    ic = rng.integers(0, 16, (5, 3, 3, 3)).astype(np.uint8)
    conv = {"type": "Convolution"}
    w = finetune._gather(torch, conv, torch.from_numpy(cb), torch.from_numpy(ic.astype(np.int64)),
                         (5, 10, 3, 3))
    assert np.array_equal(w.numpy(), np.asarray(dequantize_conv(cb, ic, 10)))
    fi = rng.integers(0, 16, (7, 3)).astype(np.uint8)
    w = finetune._gather(torch, {"type": "InnerProduct"}, torch.from_numpy(cb),
                         torch.from_numpy(fi.astype(np.int64)), (7, 10))
    assert np.array_equal(w.numpy(), np.asarray(dequantize_fc(cb, fi, 10)))


def _kl(graph, weights, quantized, x):
    from qengine.calibration import dequantized_params, outputs
    params = dequantized_params(graph, weights, quantized)
    t, s = outputs(graph, weights, x).astype(np.float64), outputs(graph, params, x)
    t = np.exp(t - t.max(1, keepdims=True))
    t /= t.sum(1, keepdims=True)
    s = np.exp(s - s.max(1, keepdims=True))
    s /= s.sum(1, keepdims=True)
    return float(np.mean(np.sum(t * (np.log(t + 1e-12) - np.log(s + 1e-12)), 1))), \
        float(np.mean(t.argmax(1) == s.argmax(1)))


def test_finetuning_brings_the_outputs_closer_on_unseen_inputs(tmp_path):
    """A small CNN quantized coarsely (K=8): distillation on 96 inputs lowers
    the KL divergence from the dense network on 96 other inputs, and the
    result is still codebooks and indices (the file format's)."""
    from qengine.quantize import quantize_weights
    graph = {"input": {"name": "data", "shape": [3, 12, 12]}, "layers": [
        modelkit.conv("c1", "data", 16, 3, p=1),
        modelkit.layer("r1", "ReLU", "c1", "c1", negative_slope=0.0),
        modelkit.conv("c2", "c1", 16, 3, p=1),
        modelkit.layer("r2", "ReLU", "c2", "c2", negative_slope=0.0),
        {"name": "f1", "type": "InnerProduct", "bottom": ["c2"], "top": ["f1"],
         "params": {"num_output": 10, "bias_term": True}}]}
    _, weights = modelkit.build(tmp_path / "d.qcnn", graph, dense=("c1", "c2", "f1"))
    weights = {n: (np.asarray(w, np.float32), np.asarray(b, np.float32))
               for n, (w, b) in weights.items()}
    quantized = {}
    for L in graph["layers"]:
        if L["name"] in weights:
            kind = "conv" if L["type"] == "Convolution" else "fc"
            quantized[L["name"]] = quantize_weights(weights[L["name"]][0], kind, 4, 8, iters=5)
    rng = np.random.default_rng(4)
    train = rng.standard_normal((96, 3, 12, 12)).astype(np.float32)
    test = rng.standard_normal((96, 3, 12, 12)).astype(np.float32)
    before, _ = _kl(graph, weights, quantized, test)
    tuned, history = finetune.finetune(graph, weights, quantized, train, epochs=6, lr=3e-3,
                                       batch=16, threads=1)
    after, _ = _kl(graph, weights, tuned, test)
    assert after < 0.7 * before, (before, after, history)
    for n, (cb, idx, b) in tuned.items():
        assert cb.shape == quantized[n][0].shape and cb.dtype == np.float32
        assert np.array_equal(idx, quantized[n][1])         # indices fixed without reassign
