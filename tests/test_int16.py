"""Fast mode's dense convolution in 16-bit integers (qe_i16.h): the same bits
on every instruction set, the numpy reference within its quantisation error,
the int32 overflow bound, and where the runtime chooses it."""
import numpy as np
import pytest

from qengine import _kernels
from qengine.layers.convolution import conv2d

from conftest import ISAS, on_every_isa

RNG = np.random.default_rng(1616)
B = 2**31 - 1

# (N, C, H, W, Cout, K, stride, pad, groups): odd tap counts (a padding tap),
# Cout not a multiple of the 6-channel block, strides with phase planes, maps
# narrower than a tile (rows of 3: more than four runs per tile), tail tiles,
# groups, AlexNet's and SqueezeNet's first layers
CASES = [(1, 3, 31, 29, 13, 5, 2, 1, 1), (2, 16, 13, 13, 20, 3, 1, 1, 2),
         (1, 64, 20, 20, 16, 1, 1, 0, 1), (1, 7, 9, 40, 64, 3, 1, 1, 1),
         (1, 5, 3, 3, 7, 3, 1, 1, 1), (1, 96, 13, 13, 17, 5, 1, 2, 1),
         (1, 3, 67, 67, 96, 11, 4, 0, 1), (1, 3, 45, 45, 96, 7, 2, 0, 1),
         (1, 8, 1, 1, 5, 1, 1, 0, 1),
         # weights (160 x 2304 int16, 737 KB) beyond the budget of blocks sharing
         # a panel (5/8 of L2, at least 160 KB): several weight groups per tile
         (1, 256, 6, 7, 160, 3, 1, 1, 1),
         # padded 1x1 (SqueezeNet's conv10): the interior unpadded, the ring the bias
         (2, 12, 9, 11, 14, 1, 1, 1, 2), (1, 40, 13, 13, 25, 1, 1, 2, 1),
         # 78,400 input values: their quantisation split across threads (last)
         (1, 16, 70, 70, 8, 1, 1, 0, 1)]


def layout(w, groups):
    cout = w.shape[0]
    w2 = np.ascontiguousarray(w.reshape(cout, -1), np.float32)
    w16 = np.empty(_kernels.i16_weights_shape(cout, groups, w2.shape[1]), np.int16)
    sc = np.empty(cout, np.float32)
    return w16, sc, _kernels.i16_conv_weights(w2, groups, w16, sc)


def run_i16(x, w, b, S, P, G, relu=False, nthreads=1):
    w16, sc, A = layout(w, G)
    n, c, h, wd = x.shape
    kh, kw = w.shape[2:]
    oh, ow = _kernels.conv_output_size(h, wd, kh, kw, S, P)
    out = np.full((n, w.shape[0], oh, ow), -7, np.float32)
    ws = np.empty(_kernels.i16_workspace_floats(c // G, h, wd, kh, kw, S, P, w.shape[0] // G),
                  np.float32)
    _kernels.conv_i16(x, w16, sc, A, b, kh, kw, S, P, relu, out, ws, nthreads)
    return out


def make(case, seed=0):
    n, c, h, wd, cout, k, s, p, g = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
    w = (rng.standard_normal((cout, c // g, k, k)) * 0.1).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    return x, w, b, s, p, g


@pytest.mark.parametrize("case", CASES)
def test_same_bits_on_every_isa(case):
    x, w, b, s, p, g = make(case)
    outs = on_every_isa(lambda: (run_i16(x, w, b, s, p, g, True, 1),
                                 run_i16(x, w, b, s, p, g, False, 2)))
    for isa, (o1, o2) in zip(ISAS, outs):
        assert np.array_equal(o1, outs[0][0]), f"{isa}: outputs differ from the portable body"
        assert np.array_equal(o2, outs[0][1]), f"{isa}, 2 threads: outputs differ"
    assert np.array_equal(np.maximum(outs[0][1], 0), outs[0][0]), "1 and 2 threads differ"


@pytest.mark.parametrize("case", CASES)
def test_matches_numpy_within_quantisation_error(isa, case):
    x, w, b, s, p, g = make(case, 1)
    ref = conv2d(x, w, b, s, p, g)
    got = run_i16(x, w, b, s, p, g)
    # inputs with about 12-15 bits, weights per channel 11-15 bits (see qe_i16_weights)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < 2e-3, err
    relu = run_i16(x, w, b, s, p, g, relu=True)
    assert np.array_equal(relu, np.maximum(got, 0))


@pytest.mark.parametrize("J", [1, 9, 147, 576, 4608, 20000])
def test_weight_layout_keeps_every_sum_inside_int32(J):
    # random weights, and a channel with one large weight among tiny ones
    # (sum|w| / max|w| near 1: the most levels), and one all equal (near J)
    cout = 7
    w = RNG.standard_normal((cout, J)).astype(np.float32)
    w[1] = 1e-6
    w[1, 0] = 3.0
    w[2] = -0.25
    w[3] = 0.0
    w[4] = 0.0
    w[4, ::3] = 1e-42      # subnormal: its scale would underflow, the channel counts as zero
    w16, sc, A = layout(w, 1)
    assert 1 <= A <= 32767
    J2 = (J + 1) // 2 * 2
    q = w16.reshape(-1, J2 // 2, 6, 2).transpose(0, 2, 1, 3).reshape(-1, J2)[:cout]
    assert np.all(A * np.abs(q.astype(np.int64)).sum(1) <= B)
    # the levels come back to the weights within half a step per channel
    # (the subnormal channel is off by its own 1e-42)
    assert np.all(np.abs(q[:, :J] * sc[:, None].astype(np.float64) - w)
                  <= 0.5001 * sc[:, None] + 1e-40)
    assert sc[3] == 0 and not q[3].any()
    assert sc[4] == 0 and not q[4].any()
    assert np.abs(q).max() <= 32767


def test_worst_case_sums_do_not_wrap():
    # every input at its largest value, every weight of one sign: each output's
    # integer sum is A * sum|wq|, as close to 2^31 as the layout allows
    C, K, cout = 512, 3, 12
    x = np.ones((1, C, 6, 6), np.float32)
    w = np.full((cout, C, K, K), 0.5, np.float32)
    w[1::2] *= -1
    b = np.zeros(cout, np.float32)
    ref = conv2d(x, w, b, 1, 0, 1)
    for isa, got in zip(ISAS, on_every_isa(lambda: run_i16(x, w, b, 1, 0, 1))):
        assert np.allclose(got, ref, rtol=1e-3), isa
        assert np.all(np.sign(got) == np.sign(ref)), f"{isa}: a sum wrapped around"


def test_zero_and_non_finite_inputs():
    x, w, b, s, p, g = make(CASES[1])
    zero = run_i16(np.zeros_like(x), w, b, s, p, g)
    assert np.array_equal(zero, np.broadcast_to(b[None, :, None, None], zero.shape))
    bad = x.copy()
    bad[0, 3, 2, 2] = np.inf
    out = run_i16(bad, w, b, s, p, g)
    # no integer stands for it: that image's outputs of that group are NaN
    assert np.isnan(out[0, :10]).all()
    assert np.isfinite(out[0, 10:]).all() and np.isfinite(out[1]).all()   # the rest is not


def test_non_finite_input_found_by_any_thread():
    x, w, b, s, p, g = make(CASES[-1])
    for v in (np.nan, -np.inf):
        bad = x.copy()
        bad[0, 15, 69, 69] = v
        assert np.isnan(run_i16(bad, w, b, s, p, g, nthreads=2)).all()


def test_fast_model_runs_wide_dense_convolutions_in_int16(tmp_path, monkeypatch):
    import qengine
    from modelkit import build, conv
    g = {"input": {"name": "data", "shape": [16, 14, 14]},
         "layers": [conv("wide", "data", 64, 3, p=1), conv("narrow", "wide", 8, 1)]}
    path = str(tmp_path / "d.qcnn")
    build(path, g, dense=("wide", "narrow"), meta_extra={"class_names": []})
    fast, exact = qengine.load(path, mode="fast"), qengine.load(path, mode="exact")
    # 576 multiply-adds per input value in "wide", 8 in "narrow" (README): a 1x1
    # layer that few goes to the float pointwise kernel (test_pointwise.py)
    assert fast.layer_strategies() == {"wide": "int16", "narrow": "pointwise"}
    assert set(exact.layer_strategies().values()) == {"dense"}
    x = RNG.standard_normal((2, 16, 14, 14)).astype(np.float32)
    a, b = fast.forward(x), exact.forward(x)
    assert 0 < np.abs(a - b).max() <= 2e-3 * np.abs(b).max()
    monkeypatch.setenv("QENGINE_INT16", "0")
    monkeypatch.setenv("QENGINE_POINTWISE", "0")
    assert set(qengine.load(path, mode="fast").layer_strategies().values()) == {"dense"}
    monkeypatch.delenv("QENGINE_POINTWISE")
    monkeypatch.setenv("QENGINE_INT16", "1")
    assert set(qengine.load(path, mode="fast").layer_strategies().values()) == {"int16"}


def test_padded_1x1_is_the_unpadded_one_inside_a_ring_of_bias(isa):
    x, w, b, s, p, g = make((2, 20, 7, 10, 9, 1, 1, 2, 1))
    b[0], b[1] = -0.0, -1.5
    inner = run_i16(x, w, b, 1, 0, 1)
    for relu in (False, True):
        out = run_i16(x, w, b, 1, 2, 1, relu)
        assert np.array_equal(out[:, :, 2:-2, 2:-2], np.maximum(inner, 0) if relu else inner)
        ring = out.copy()
        ring[:, :, 2:-2, 2:-2] = np.nan
        want = np.maximum(b, 0) if relu else b + np.float32(0)     # -0 + 0 = +0, as the kernel
        for co in range(9):
            r = ring[:, co][~np.isnan(ring[:, co])]
            assert r.size == 2 * (11 * 14 - 7 * 10)
            assert np.array_equal(r, np.full(r.size, want[co], np.float32))
            assert not np.signbit(r).any() or want[co] < 0
    # the workspace it needs is checked; a non-finite input makes every output NaN
    w16, sc, A = layout(w, 1)
    with pytest.raises(ValueError, match="workspace"):
        _kernels.conv_i16(x, w16, sc, A, b, 1, 1, 1, 2, False,
                          np.empty((2, 9, 11, 14), np.float32), np.empty(9 * 70, np.float32))
    bad = x.copy()
    bad[1, 3, 4, 5] = np.inf
    out = run_i16(bad, w, b, 1, 2, 1, True)
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all()


def test_1x1_read_in_place_gives_the_bits_of_the_split_planes(isa):
    # a 1x1 convolution without padding reads its input in place; with pad 1
    # it goes through the phase planes: same max|x|, same integers, so the
    # interior of the padded one is the unpadded one, bit for bit
    x, w, b, s, p, g = make((2, 24, 9, 13, 14, 1, 1, 0, 2))
    direct = run_i16(x, w, b, 1, 0, 2, relu=True)
    split = run_i16(x, w, b, 1, 1, 2, relu=True)
    assert np.array_equal(direct, split[:, :, 1:-1, 1:-1])
