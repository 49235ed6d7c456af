"""The fast convolution (16-bit tables looked up in registers) against the
portable body bit for bit, and against the numpy reference within the
error its table quantisation allows, on every instruction set."""
import numpy as np
import pytest

from qengine import _kernels, reference
from qengine.layers.weighted import dequantize_conv

from conftest import ISAS, on_every_isa

RNG = np.random.default_rng(4321)


def lookup_reference(Q, Kp, tb, aT, R):
    """acc [R, Cop] in conv16_slot order, summed in int64 by numpy."""
    J, Cop = aT.shape
    acc = np.zeros((R, Cop), np.int64)
    slots = np.array([_kernels.conv16_slot(c) for c in range(Cop)])
    for j in range(J):
        for r in range(R):
            t = Q[tb[j] + r * 2 * Kp:]
            a = aT[j].astype(np.int64)
            acc[r, slots] += t[a].astype(np.int64) + (t[Kp + a].astype(np.int64) << 8)
    return acc


@pytest.mark.parametrize("Kp", [16, 32, 64, 128])
@pytest.mark.parametrize("J,Cop,R", [(5, 64, 4), (300, 128, 8), (513, 64, 4)])
def test_lookup_bit_identical_on_every_isa(Kp, J, Cop, R):
    # J > 256 crosses the 16-bit flush; random tables and indices
    ntab = 40
    Q = RNG.integers(0, 256, ntab * 2 * Kp + R * 2 * Kp, dtype=np.uint8)
    tb = (RNG.integers(0, ntab, J) * 2 * Kp).astype(np.int64)
    aT = RNG.integers(0, Kp, (J, Cop)).astype(np.uint8)
    ref = lookup_reference(Q, Kp, tb, aT, R)

    def run():
        acc = np.full((R, Cop), -7, np.int32)
        _kernels.conv16_lookup(Q, Kp, tb, aT, R, acc, 2)
        return acc
    for isa, acc in zip(ISAS, on_every_isa(run)):
        assert np.array_equal(acc, ref), f"{isa}: lookup sums differ from the reference"


@pytest.mark.parametrize("Kp", [16, 128])
def test_lookup_worst_case_sums_do_not_overflow(Kp):
    # every entry 65535 over 1,000 taps: each channel's sum is 65,535,000
    J, Cop, R = 1000, 64, 4
    Q = np.full(2 * Kp * (R + 1), 255, np.uint8)
    tb = np.zeros(J, np.int64)
    aT = RNG.integers(0, Kp, (J, Cop)).astype(np.uint8)

    def run():
        acc = np.zeros((R, Cop), np.int32)
        _kernels.conv16_lookup(Q, Kp, tb, aT, R, acc)
        return acc
    for isa, acc in zip(ISAS, on_every_isa(run)):
        assert (acc == 65535 * J).all(), isa


@pytest.mark.parametrize("J4,Cop,R", [(1, 64, 4), (75, 128, 8), (300, 64, 4)])
def test_four_taps_lookup_bit_identical_on_every_isa(J4, Cop, R):
    ntab = 40
    Q = RNG.integers(0, 256, ntab * 32 + R * 32, dtype=np.uint8)
    tb = (RNG.integers(0, ntab, 4 * J4) * 32).astype(np.int64)
    k = RNG.integers(0, 16, (J4, Cop, 4))
    aQ = (k + 16 * np.arange(4)).astype(np.uint8).reshape(J4, Cop * 4)
    ref = np.zeros((R, Cop), np.int64)
    for q in range(J4):
        for t in range(4):
            for r in range(R):
                tab = Q[tb[4 * q + t] + r * 32:].astype(np.int64)
                ref[r] += tab[k[q, :, t]] + (tab[16 + k[q, :, t]] << 8)

    def run():
        acc = np.full((R, Cop), -7, np.int32)
        _kernels.conv16_lookup4(Q, tb, aQ, R, acc, 2)
        return acc
    for isa, acc in zip(ISAS, on_every_isa(run)):
        assert np.array_equal(acc, ref), f"{isa}: four-taps sums differ from the reference"


# (C, H, W, KH, KW, stride, pad, groups, Cout, d, K)
CASES = [
    (16, 13, 13, 3, 3, 1, 1, 1, 70, 4, 16),     # K=16, Cout past one 64-block
    (12, 9, 11, 3, 3, 1, 1, 1, 7, 5, 32),       # d does not divide C, odd Cout
    (16, 13, 13, 3, 3, 1, 1, 2, 12, 8, 64),     # groups share one codebook
    (10, 17, 15, 4, 3, 3, 2, 2, 6, 4, 128),     # stride 3, uneven kernel, K=128
    (64, 6, 6, 3, 3, 1, 1, 1, 40, 2, 16),       # 288 taps: crosses the 16-bit flush
    (9, 8, 8, 1, 1, 1, 0, 1, 5, 4, 100),        # 1x1, K not a power of two
]


def run_conv16(x, cb, idx, b, S, P, G, relu, nthreads=1, quad=False):
    N, C, H, W = x.shape
    Cout, KH, KW, M = idx.shape
    cg = C // G
    aT = np.empty(_kernels.conv16_layout_shape(Cout, G, KH * KW * M, quad), np.uint8)
    _kernels.conv16_layout(np.ascontiguousarray(idx.reshape(Cout, -1)), G, aT, quad)
    oh, ow = _kernels.conv_output_size(H, W, KH, KW, S, P)
    ws = np.empty(_kernels.conv16_workspace_floats(cg, H, W, KH, KW, S, P, M, cb.shape[1],
                                                   cb.shape[2], Cout // G), np.float32)
    out = np.full((N, Cout, oh, ow), np.nan, np.float32)
    _kernels.conv16(x, cb, aT, KH, KW, b, S, P, relu, out, ws, nthreads, quad)
    return out


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("nthreads", [1, 2])
def test_conv16_matches_numpy(isa, case, nthreads):
    C, H, W, KH, KW, S, P, G, Cout, d, K = case
    cg = C // G
    M = -(-cg // d)
    x = np.maximum(RNG.standard_normal((2, C, H, W)), 0).astype(np.float32)  # post-ReLU input
    cb = RNG.standard_normal((M, K, d)).astype(np.float32)
    idx = RNG.integers(0, K, (Cout, KH, KW, M)).astype(np.uint8)
    b = RNG.standard_normal(Cout).astype(np.float32)
    ref = reference.conv2d(x, dequantize_conv(cb, idx, cg), b, S, P, G)
    for relu, quad in ((False, False), (True, False), (False, True)):
        if quad and K > 16:
            continue
        out = run_conv16(x, cb, idx, b, S, P, G, relu, nthreads, quad)
        want = np.maximum(ref, 0) if relu else ref
        err = np.abs(out.astype(np.float64) - want).max() / np.abs(want).max()
        # 16-bit tables: each entry within half a step of range/65535
        assert err < 2e-4, f"relative error {err:.3g} (quad={quad})"


def test_conv16_same_on_every_isa():
    # the tables are built per instruction set (FMA may round differently), the
    # sums are exact: outputs agree to the quantisation step
    C, H, W, KH, KW, S, P, G, Cout, d, K = CASES[0]
    M = -(-C // d)
    x = np.maximum(RNG.standard_normal((1, C, H, W)), 0).astype(np.float32)
    cb = RNG.standard_normal((M, K, d)).astype(np.float32)
    idx = RNG.integers(0, K, (Cout, KH, KW, M)).astype(np.uint8)
    b = np.zeros(Cout, np.float32)
    outs = on_every_isa(lambda: run_conv16(x, cb, idx, b, S, P, G, False))
    for o in outs[1:]:
        assert np.abs(o - outs[0]).max() <= 1e-4 * np.abs(outs[0]).max()


def test_avx512_emulated_is_built_where_simde_is_installed():
    import os
    if os.path.exists("/usr/include/simde/x86/avx512.h"):
        assert _kernels.isa_supported("avx512-emulated"), \
            "SIMDe is installed but the avx512-emulated kernels were not built"
    else:
        pytest.skip("SIMDe (libsimde-dev) not installed here")


def test_register_lookups_per_isa():
    assert _kernels.ISA_NAMES[:2] == ("generic", "avx2")

    def kmax():
        return _kernels.get_isa(), _kernels.conv16_max_k()
    want = {"generic": 0, "avx2": 32, "avx512": 128, "avx512-emulated": 128}
    for isa, k in on_every_isa(kmax):
        assert k == want[isa], isa
    quad = dict(zip(ISAS, on_every_isa(lambda: (_kernels.conv16_quad(16),
                                                _kernels.conv16_quad(32)))))
    for isa, q in quad.items():
        assert q == ((True, False) if isa.startswith("avx512") else (False, False)), isa


def _fast_and_exact(path, isa, monkeypatch, force=None, strategy="auto"):
    import qengine
    if force is not None:
        monkeypatch.setenv("QENGINE_CONV16", force)
    before = _kernels.get_isa()
    _kernels.set_isa(isa)
    try:
        return (qengine.load(path, mode="fast", strategy=strategy),
                qengine.load(path, mode="exact", strategy=strategy))
    finally:
        _kernels.set_isa(before)


@pytest.mark.parametrize("isa,force", [(i, f) for i in ISAS for f in (None, "1")])
def test_fast_model_uses_register_tables_where_chosen(tmp_path, isa, force, monkeypatch):
    import modelkit
    path = str(tmp_path / "m.qcnn")
    modelkit.build(path, seed=5)
    # strategy "lut": the lookup form however it is priced against the dense
    # kernels (on AVX-512 these small layers now run dequantized in int16)
    fast, exact = _fast_and_exact(path, isa, monkeypatch, force, strategy="lut")
    before = _kernels.get_isa()
    _kernels.set_isa(isa)
    limit = _kernels.conv16_max_k() if force == "1" else _kernels.conv16_auto_k()
    try:
        strat = fast.layer_strategies()
        looked_up = [op for op in fast._ops if op.type == "Convolution" and op.mode == "lut"]
        assert len(looked_up) == 2
        for op in looked_up:
            assert (strat[op.name] == "lut16") == (op.K <= limit), (op.name, strat)
        x = np.maximum(RNG.standard_normal((3,) + fast.input_shape), 0).astype(np.float32)
        names = [n for n in fast.layer_names if n.startswith("c")]
        a, b = fast.forward(x, outputs=names), exact.forward(x, outputs=names)
        for n in names:
            err = np.linalg.norm(a[n] - b[n]) / np.linalg.norm(b[n])
            assert err < 1e-3, (n, err)
    finally:
        _kernels.set_isa(before)


@pytest.mark.parametrize("strategy,kernels", [
    # AVX-512 prices: conv2-5 dense in int16 on their dequantized weights, by
    # Winograd F(2x2, 3x3) (conv2's 5x5 kernels in four 3x3 pieces)
    ("auto", {"winograd"}),
    ("lut", {"lut16"}),     # every quantized layer on tables: 16-bit register tables
])
def test_alexnet_pool5_fast_within_half_a_percent(alexnet_qcnn, monkeypatch, strategy, kernels):
    # the original AlexNet (K=128) on the AVX-512 code (emulated where the CPU
    # lacks it), pool5 against the float tables of exact mode
    import glob
    from conftest import shared_path
    isa = "avx512" if "avx512" in ISAS else "avx512-emulated"
    if isa not in ISAS:
        pytest.skip("no AVX-512 kernels here (install SIMDe, libsimde-dev)")
    ref = shared_path("qcnn-alexnet-reference")
    x = np.load(sorted(glob.glob(f"{ref}/*/input_nchw_bgr.npy"))[0])
    fast, exact = _fast_and_exact(alexnet_qcnn, isa, monkeypatch, strategy=strategy)
    assert {fast.layer_strategies()[n] for n in ("conv2", "conv3", "conv4", "conv5")} == kernels
    before = _kernels.get_isa()
    _kernels.set_isa(isa)
    try:
        a = fast.forward(x, outputs=["pool5"])["pool5"]
    finally:
        _kernels.set_isa(before)
    b = exact.forward(x, outputs=["pool5"])["pool5"]
    err = np.linalg.norm(a - b) / np.linalg.norm(b)
    assert err <= 5e-3, f"pool5 relative L2 error {err:.2e}"
    assert err > 0   # the fast path did run on other tables


@pytest.mark.parametrize("cout", [5, 16, 31, 32, 33, 70])
def test_narrow_layers_skip_padding_channels(tmp_path, monkeypatch, cout):
    """Layers with fewer outputs than a 64-channel block: the register halves
    holding only padding channels are skipped; every real channel still gets
    the 16-bit tables' sums (fast vs exact, within their precision)."""
    import qengine
    from modelkit import build, conv
    monkeypatch.setenv("QENGINE_CONV16", "1")
    g = {"input": {"name": "data", "shape": [16, 12, 12]},
         "layers": [conv("c", "data", cout, 3, p=1)]}
    path = str(tmp_path / "n.qcnn")
    build(path, g, dense=(), d_conv=4, k_conv=16, meta_extra={"class_names": []})
    fast = qengine.load(path, mode="fast", strategy="lut")
    exact = qengine.load(path, mode="exact", strategy="lut")
    if fast.layer_strategies()["c"] != "lut16":
        pytest.skip("this instruction set has no register tables for K=16")
    x = np.random.default_rng(cout).standard_normal((2, 16, 12, 12)).astype(np.float32)
    a, b = fast.forward(x), exact.forward(x)
    assert np.abs(a - b).max() <= 2e-4 * np.abs(b).max()
