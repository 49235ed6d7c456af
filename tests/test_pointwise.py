"""Fast mode's pointwise convolution in float (qe_pw.h): the same bits on every
instruction set and thread count, the numpy reference to float rounding, NaN
and infinity passed through, a slice of a wider output, and where the runtime
chooses it."""
import numpy as np
import pytest

from qengine import _kernels
from qengine.layers.weighted import kernel_costs

from conftest import ISAS, on_every_isa

RNG = np.random.default_rng(1717)

# (N, C, H, W, Cout): Cout below, at and past the 8-channel layout block and
# not a multiple of the 4-channel register block, maps smaller than one block
# of positions (1x1, 3x5), a last partial block (overlapping the one before),
# one input channel, SqueezeNet's squeeze layers
CASES = [(1, 96, 11, 13, 16), (2, 5, 7, 9, 3), (1, 33, 1, 1, 9), (2, 1, 3, 5, 8),
         (1, 17, 10, 10, 17), (1, 64, 27, 27, 40), (1, 128, 13, 13, 12), (3, 8, 6, 50, 1)]


def make(case):
    n, c, h, w, co = case
    x = RNG.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (RNG.standard_normal((co, c)) / np.sqrt(c)).astype(np.float32)
    b = RNG.standard_normal(co).astype(np.float32)
    return x, wt, b


def run_pw(x, wt, b, relu=False, nthreads=1):
    wp = np.empty(_kernels.pw_weights_shape(*wt.shape), np.float32)
    _kernels.pw_conv_weights(wt, wp)
    out = np.full((x.shape[0], wt.shape[0]) + x.shape[2:], 7.0, np.float32)
    _kernels.conv_pw(x, wp, b, relu, out, nthreads)
    return out


@pytest.mark.parametrize("case", CASES)
def test_same_bits_on_every_isa_and_thread_count(case):
    x, wt, b = make(case)
    outs = on_every_isa(lambda: [run_pw(x, wt, b, relu, nt) for relu in (False, True)
                                 for nt in (1, 2)])
    for o in outs:
        for a, ref in zip(o, outs[0]):
            assert np.array_equal(a, ref)
    assert len(outs) == len(ISAS)


@pytest.mark.parametrize("case", CASES)
def test_matches_numpy(isa, case):
    x, wt, b = make(case)
    ref = np.einsum("oc,nchw->nohw", wt.astype(np.float64), x.astype(np.float64)) \
        + b[None, :, None, None]
    out = run_pw(x, wt, b)
    # float sums of C products: a few units in the last place of the inputs' scale
    tol = 1e-6 * np.sqrt(x.shape[1]) * (np.abs(x).max() * np.abs(wt).max() * x.shape[1] + 1)
    assert np.abs(out - ref).max() <= tol
    assert np.array_equal(run_pw(x, wt, b, relu=True), np.maximum(out, 0))


def test_non_finite_inputs_reach_the_outputs(isa):
    x, wt, b = make((1, 8, 5, 20, 6))
    x[0, 2, 1, 3] = np.nan
    x[0, 5, 4, 19] = np.inf
    for relu in (False, True):
        out = run_pw(x, wt, b, relu)
        # every channel reads every input channel: the NaN is in all of them
        # (ReLU lets it through), the infinity too unless ReLU clips -inf
        assert np.isnan(out[0, :, 1, 3]).all()
        assert not np.isfinite(out[0, :, 4, 19]).any() or relu
        rest = np.ones(out.shape[2:], bool)
        rest[1, 3] = rest[4, 19] = False
        assert np.isfinite(out[0][:, rest]).all()


def test_writes_only_its_channels_of_a_wider_output():
    x, wt, b = make((2, 12, 9, 9, 5))
    wp = np.empty(_kernels.pw_weights_shape(5, 12), np.float32)
    _kernels.pw_conv_weights(wt, wp)
    wide = np.full((2, 11, 9, 9), 3.0, np.float32)
    _kernels.conv_pw(x, wp, b, True, wide, 2, 4)
    assert np.array_equal(wide[:, 4:9], run_pw(x, wt, b, True))
    assert (wide[:, :4] == 3).all() and (wide[:, 9:] == 3).all()
    with pytest.raises(ValueError):
        _kernels.conv_pw(x, wp, b, True, wide, 1, 7)          # channels past its end
    with pytest.raises(ValueError):
        _kernels.conv_pw(x[:, :11].copy(), wp, b, True, wide)  # weights for 12 inputs


def test_fast_mode_chooses_it_for_1x1_layers_with_few_outputs(tmp_path, monkeypatch):
    import qengine
    from modelkit import build, conv
    few = kernel_costs().pointwise_max_macs - 1
    g = {"input": {"name": "data", "shape": [24, 10, 10]},
         "layers": [conv("squeeze", "data", 3 * (few // 3), 1), conv("expand", "squeeze", 300, 1),
                    conv("padded", "squeeze", 8, 1, p=1), conv("strided", "squeeze", 8, 1, s=2),
                    conv("grouped", "squeeze", 9, 1, g=3), conv("quantized", "squeeze", 8, 1)]}
    path = str(tmp_path / "p.qcnn")
    build(path, g, dense=("squeeze", "expand", "padded", "strided", "grouped"),
          meta_extra={"class_names": []})
    fast, exact = qengine.load(path, mode="fast"), qengine.load(path, mode="exact")
    st = fast.layer_strategies()
    # product-quantized: run on its dequantized weights, by this kernel too
    assert st["squeeze"] == st["quantized"] == "pointwise"
    assert "pointwise" not in (st["expand"], st["padded"], st["strided"], st["grouped"])
    assert "pointwise" not in exact.layer_strategies().values()
    x = RNG.standard_normal((2, 24, 10, 10)).astype(np.float32)
    names = ["squeeze", "quantized"]
    a, ref = fast.forward(x, outputs=names), exact.forward(x, outputs=names)
    for n in names:   # float either way: only the order of the sums differs
        assert np.abs(a[n] - ref[n]).max() <= 1e-5 * np.abs(ref[n]).max()
    monkeypatch.setenv("QENGINE_POINTWISE", "0")
    assert "pointwise" not in qengine.load(path, mode="fast").layer_strategies().values()
    monkeypatch.setenv("QENGINE_POINTWISE", "1")
    st = qengine.load(path, mode="fast").layer_strategies()
    assert st["squeeze"] == st["expand"] == "pointwise" and st["padded"] != "pointwise"
