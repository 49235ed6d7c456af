"""The fast path: 8-bit fully-connected tables, against the float path, with
its worst-case error bound, bit-identical on every instruction set."""
import numpy as np
import pytest

import qengine
from qengine import _kernels
from qengine.layers.weighted import fc_codebook_t, fc_register_layout

from conftest import on_every_isa, random_fc
from modelkit import build

RNG = np.random.default_rng(77)


def q8_bound(x, cb):
    """Worst case |fast - exact| of one output: half a quantisation step per
    subspace, the step being the largest table-row range / 255 (plus float slack)."""
    M, K, d = cb.shape
    xp = np.zeros(M * d, np.float64)
    xp[:x.size] = x
    T = np.einsum("mkd,md->mk", cb.astype(np.float64), xp.reshape(M, d))
    s = (T.max(axis=1) - T.min(axis=1)).max() / 255
    return M * s / 2 + 1e-4 * np.abs(T).sum(axis=1).max()


@pytest.mark.parametrize("cin,cout,d,K", [(37, 5, 4, 32), (1000, 70, 1, 16), (301, 33, 3, 20),
                                          (4096, 64, 4, 32), (2, 1, 4, 2), (520, 40, 2, 32)])
def test_fc_q8_within_bound_and_identical_across_isas(cin, cout, d, K):
    x, cb, idx, b, ref = random_fc(RNG, 2, cin, cout, d, K)
    M = cb.shape[0]
    lay, cbt = fc_register_layout(idx)[0], fc_codebook_t(cb)
    ws = np.empty(_kernels.fc_q8_workspace_floats(M, K, cout), np.float32)
    def run():
        out = np.full((2, cout), np.nan, np.float32)
        _kernels.fc_q8(x, cbt, lay, cout, b, False, out, ws)
        return out
    outs = on_every_isa(run)
    for o in outs[1:]:
        assert np.array_equal(o, outs[0]), "8-bit sums differ between instruction sets"
    for n in range(2):
        err = np.abs(outs[0][n] - ref[n]).max()
        assert err <= q8_bound(x[n], cb), f"error {err} above the worst-case bound"
    # and far below it on average: rounding errors cancel
    rel = np.linalg.norm(outs[0] - ref) / np.linalg.norm(ref)
    assert rel < 0.05


def test_fc_q8_relu_and_zero_input():
    M, K, d, cout = 10, 32, 4, 40
    cb = RNG.standard_normal((M, K, d)).astype(np.float32)
    idx = RNG.integers(0, K, (cout, M)).astype(np.uint8)
    b = RNG.standard_normal(cout).astype(np.float32)
    ws = np.empty(_kernels.fc_q8_workspace_floats(M, K, cout), np.float32)
    out = np.empty((1, cout), np.float32)
    # a zero input: every table is zero, the output is exactly the bias
    _kernels.fc_q8(np.zeros((1, M * d), np.float32), fc_codebook_t(cb), fc_register_layout(idx)[0], cout, b,
                   False, out, ws)
    assert np.array_equal(out[0], b)
    _kernels.fc_q8(np.zeros((1, M * d), np.float32), fc_codebook_t(cb), fc_register_layout(idx)[0], cout, b,
                   True, out, ws)
    assert np.array_equal(out[0], np.maximum(b, 0))


def test_fast_model_close_to_exact(tmp_path, isa):
    path = tmp_path / "m.qcnn"
    build(path, dense=("c2b",), k_fc=32)
    ex = qengine.load(str(path), strategy="lut", mode="exact")
    fa = qengine.load(str(path), mode="fast", strategy="lut")
    assert fa.layer_strategies()["f1"] == "lut8" and fa.layer_strategies()["f2"] == "lut8"
    assert ex.layer_strategies()["f1"] == "lut"
    x = np.random.default_rng(2).standard_normal((4,) + ex.input_shape).astype(np.float32)
    a = ex.forward(x, outputs=["p2", "f2"])
    b = fa.forward(x, outputs=["p2", "f2"])
    kernels = set(fa.layer_strategies().values())
    if "lut16" in kernels:                           # 16-bit register tables (AVX-512)
        assert np.linalg.norm(a["p2"] - b["p2"]) <= 1e-3 * np.linalg.norm(a["p2"])
    elif "pointwise" in kernels:                     # c2b: float sums in another order
        assert fa.layer_strategies()["c2b"] == "pointwise"
        assert np.abs(a["p2"] - b["p2"]).max() <= 1e-5 * np.abs(a["p2"]).max()
    else:
        assert np.array_equal(a["p2"], b["p2"])      # convolutions are the same float path
    rel = np.linalg.norm(a["f2"] - b["f2"]) / np.linalg.norm(a["f2"])
    assert rel < 0.05


def test_fast_alexnet_pool5_and_fc(alexnet_qcnn):
    import os
    from conftest import shared_path
    ex = qengine.load(alexnet_qcnn, mode="exact")
    fa = qengine.load(alexnet_qcnn, mode="fast")
    for i in (1, 2):
        x = np.load(os.path.join(shared_path("qcnn-alexnet-reference", f"ILSVRC2012_val_{i:08d}"),
                                 "input_nchw_bgr.npy"))
        a = ex.forward(x, outputs=["pool5", "fc6"])
        b = fa.forward(x, outputs=["pool5", "fc6"])
        assert np.linalg.norm(a["pool5"] - b["pool5"]) <= 0.01 * np.linalg.norm(a["pool5"])
        assert np.linalg.norm(a["fc6"] - b["fc6"]) <= 0.05 * np.linalg.norm(a["fc6"])


def test_dense_baselines_agree_with_qengine(tmp_path):
    """The numpy and ONNX Runtime baselines run the same network (dequantized)."""
    from qengine import baselines
    path = tmp_path / "m.qcnn"
    build(path)
    m = qengine.load(str(path), mode="exact")
    x = np.random.default_rng(4).standard_normal((2,) + m.input_shape).astype(np.float32)
    rows = baselines.compare(m, x, runs=1, warmup=0)
    names = [r[0] for r in rows]
    assert names[0] == "qengine exact" and "numpy im2col+GEMM fp32" in names
    for name, ms, diff in rows:
        if name.startswith("onnxruntime int8"):
            continue  # int8 weights: not expected to agree closely
        assert ms is not None and ms > 0
        assert diff <= 1e-5, (name, diff)


def test_qbench_compare_times_the_dense_twin(tmp_path, capsys):
    """qbench --compare times the same network with dense weights (the real
    speed-up's baseline) beside ONNX Runtime, every layer type included."""
    import json
    from modelkit import build_graph_model
    from qengine.cli import qbench
    path = str(tmp_path / "all.qcnn")
    build_graph_model(path)
    assert qbench.main([path, "--compare", "--runs", "2", "--warmup", "0", "--json",
                        "--exact"]) == 0
    rows = {r["runtime"]: r for r in json.loads(capsys.readouterr().out)["compare"]}
    dense = rows["qengine dense (same network)"]
    assert dense["ms_per_image"] > 0 and dense["max_abs_diff"] <= 1e-5
    assert rows["onnxruntime fp32"]["max_abs_diff"] <= 1e-5


@pytest.mark.parametrize("n", [3, 4, 9, 14])
def test_fc_q8_batch_same_as_one_input_at_a_time(n):
    """Inputs go through the indices four at a time; each one's outputs must be
    the bits it gets alone (every instruction set, a remainder group included)."""
    cin, cout, d, K = 300, 70, 4, 32
    x, cb, idx, b, ref = random_fc(RNG, n, cin, cout, d, K)
    M = cb.shape[0]
    lay, cbt = fc_register_layout(idx)[0], fc_codebook_t(cb)
    ws = np.empty(_kernels.fc_q8_workspace_floats(M, K, cout), np.float32)
    def run():
        together = np.full((n, cout), np.nan, np.float32)
        _kernels.fc_q8(x, cbt, lay, cout, b, True, together, ws, 2)     # and on 2 threads
        alone = np.full((n, cout), np.nan, np.float32)
        for i in range(n):
            _kernels.fc_q8(x[i:i + 1], cbt, lay, cout, b, True, alone[i:i + 1], ws)
        return together, alone
    outs = on_every_isa(run)
    for together, alone in outs:
        assert np.array_equal(together, alone)
        assert np.array_equal(together, outs[0][0])
    for i in range(n):
        assert np.abs(outs[0][0][i] - np.maximum(ref[i], 0)).max() <= q8_bound(x[i], cb)


def unpack_reference(packed, bits, n):
    """fc_q8_pack's documented layout read back with numpy: index 8j + k of a
    64-index unit in bits [k*bits, (k+1)*bits) of the unit's j-th group of
    `bits` bytes, little-endian."""
    groups = packed.reshape(-1, bits).astype(np.uint64)
    words = (groups << (8 * np.arange(bits, dtype=np.uint64))).sum(axis=1, dtype=np.uint64)
    k = np.arange(8, dtype=np.uint64) * np.uint64(bits)
    out = (words[:, None] >> k[None, :]) & np.uint64((1 << bits) - 1)
    return out.reshape(-1).astype(np.uint8)[:n]


@pytest.mark.parametrize("cin,cout,d,K,n", [(37, 5, 4, 32, 1), (1000, 70, 1, 16, 6),
                                            (301, 33, 3, 20, 3), (4096, 64, 4, 32, 5),
                                            (2, 1, 4, 2, 2), (520, 40, 2, 32, 9)])
def test_fc_q8_packed_indices_same_sums_on_every_isa(cin, cout, d, K, n):
    """Bit-packed indices (5 bits for K=32, 4 for K=16, ...) give every
    instruction set, and 2 threads, the bits of the byte layout."""
    x, cb, idx, b, ref = random_fc(RNG, n, cin, cout, d, K)
    M = cb.shape[0]
    lay, cbt = fc_register_layout(idx)[0], fc_codebook_t(cb)
    lay = np.asarray(lay)
    bits = _kernels.fc_q8_index_bits(K)
    assert bits == int(np.ceil(np.log2(K))) if K > 1 else bits == 1
    packed = np.full(_kernels.fc_q8_packed_size(len(lay), bits), 7, np.uint8)
    assert len(packed) == len(lay) * bits // 8 + 64
    _kernels.fc_q8_pack(lay, bits, packed)
    assert np.array_equal(unpack_reference(packed[:-64], bits, len(lay)), lay)
    assert not packed[-64:].any()
    ws = np.empty(_kernels.fc_q8_workspace_floats(M, K, cout), np.float32)
    def run():
        outs = []
        for form, nbits, threads in ((lay, 8, 1), (packed, bits, 1), (packed, bits, 2)):
            out = np.full((n, cout), np.nan, np.float32)
            _kernels.fc_q8(x, cbt, form, cout, b, True, out, ws, threads, nbits)
            outs.append(out)
        return outs
    for isa_outs in on_every_isa(run):
        for o in isa_outs:
            assert np.array_equal(o, isa_outs[0]), "packed indices changed the sums"
    # one more bit than needed is a valid packing too; one fewer is refused
    wide = np.empty(_kernels.fc_q8_packed_size(len(lay), min(bits + 1, 7)), np.uint8)
    _kernels.fc_q8_pack(lay, min(bits + 1, 7), wide)
    out = np.empty((n, cout), np.float32)
    _kernels.fc_q8(x, cbt, wide, cout, b, True, out, ws, 1, min(bits + 1, 7))
    assert np.array_equal(out, run()[0])
    if bits > 1:
        with pytest.raises(ValueError, match="more than"):
            _kernels.fc_q8_pack(lay, bits - 1,
                                np.empty(_kernels.fc_q8_packed_size(len(lay), bits - 1), np.uint8))
        with pytest.raises(ValueError, match="cannot hold"):
            _kernels.fc_q8(x, cbt, packed, cout, b, True, out, ws, 1, bits - 1)
    with pytest.raises(ValueError, match="does not match"):
        _kernels.fc_q8(x, cbt, packed[:-1], cout, b, True, out, ws, 1, bits)


def test_fast_mode_packs_fc_indices_where_the_isa_unpacks_them(tmp_path, isa):
    path = tmp_path / "m.qcnn"
    build(path, dense=("c2b",), k_fc=32)
    fa = qengine.load(str(path), mode="fast", strategy="lut")
    ex = qengine.load(str(path), mode="exact", strategy="lut")
    f1 = next(op for op in fa._ops if op.name == "f1")
    assert f1.index_bits == (5 if _kernels.fc_q8_packs() else 8)
    assert _kernels.fc_q8_packs() == isa.startswith("avx512")
    lay = _kernels.fc_q8_layout_size(f1.params["num_output"], f1.M)
    assert f1.derived_bytes - 4 * f1.M * f1.K * f1.d == \
        (lay * 5 // 8 + 64 if _kernels.fc_q8_packs() else lay)
    x = np.random.default_rng(3).standard_normal((5,) + fa.input_shape).astype(np.float32)
    a, b = fa.forward(x, outputs=["f2"])["f2"], ex.forward(x, outputs=["f2"])["f2"]
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.05


def test_interleaved_times_shuffle_the_order():
    """Each round runs every runner once, in a new order, so each follows
    every other one (not always the same one)."""
    from qengine import baselines
    seen = []
    runners = {n: (lambda x, n=n: seen.append(n)) for n in "abcd"}
    times = baselines.interleaved_times(runners, None, 40)
    assert {n: len(v) for n, v in times.items()} == {n: 40 for n in "abcd"}
    rounds = ["".join(seen[4 * r:4 * r + 4]) for r in range(40)]
    assert all(sorted(r) == list("abcd") for r in rounds)
    pairs = {}
    for r in rounds:
        for p, q in zip(r, r[1:]):
            pairs[p + q] = pairs.get(p + q, 0) + 1
    assert len(pairs) == 12 and min(pairs.values()) >= 5     # every ordered pair, often
    assert seen == [n for r in rounds for n in r] and len(set(rounds)) > 10
