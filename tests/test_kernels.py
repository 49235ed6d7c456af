"""Every kernel against the plain numpy reference, on every instruction set."""
import numpy as np
import pytest

from qengine import _kernels, reference
from qengine.layers.weighted import (block_fc_indices, blocked_conv_weights, dequantize_conv,
                                     fc_codebook_t, fc_register_layout)

from conftest import on_every_isa, random_fc

RNG = np.random.default_rng(1234)


def close(a, b, tol=2e-5):
    scale = max(float(np.abs(b).max()), 1e-6)
    err = float(np.abs(a.astype(np.float64) - b).max()) / scale
    assert err <= tol, f"max relative error {err:.3g} > {tol}"


# (C, H, W, KH, KW, stride, pad, groups, Cout, d, K)
CONV_CASES = [
    (3, 19, 23, 5, 5, 2, 0, 1, 8, 8, 16),      # first layer: C < d
    (12, 9, 11, 3, 3, 1, 1, 1, 7, 5, 32),      # d does not divide C, odd Cout
    (16, 13, 13, 3, 3, 1, 1, 2, 12, 8, 64),    # groups share one codebook
    (10, 17, 15, 4, 3, 3, 2, 2, 6, 4, 8),      # stride 3, uneven kernel, pad > 1
    (9, 8, 8, 1, 1, 1, 0, 1, 5, 4, 256),       # 1x1, K = 256
    (6, 31, 29, 11, 11, 4, 0, 1, 9, 8, 128),   # AlexNet conv1-like
    (4, 3, 3, 3, 3, 1, 1, 1, 3, 3, 4),         # output as large as a tiny input
    (300, 7, 6, 3, 3, 1, 1, 1, 7, 8, 16),      # dense: panel shared by < 4 blocks (plane mode)
    (8, 40, 37, 3, 3, 1, 1, 1, 13, 4, 16),     # dense: full 32-position tiles, gathered
    (16, 30, 30, 1, 1, 1, 0, 1, 20, 4, 16),    # 1x1: tiles read in place
    (2, 5, 1, 1, 1, 2, 0, 1, 3, 2, 4),         # a row narrower than the stride
    (3, 7, 2, 3, 3, 3, 1, 1, 4, 3, 8),         # stride 3 over 2 columns, padded
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("nthreads", [1, 2])
def test_conv_lut_matches_numpy(isa, case, nthreads):
    C, H, W, KH, KW, S, P, G, Cout, d, K = case
    cg = C // G
    M = -(-cg // d)
    x = RNG.standard_normal((2, C, H, W)).astype(np.float32)
    cb = RNG.standard_normal((M, K, d)).astype(np.float32)
    idx = RNG.integers(0, K, (Cout, KH, KW, M)).astype(np.uint8)
    b = RNG.standard_normal(Cout).astype(np.float32)
    ref = reference.conv2d(x, dequantize_conv(cb, idx, cg), b, S, P, G)
    oh, ow = _kernels.conv_output_size(H, W, KH, KW, S, P)
    assert ref.shape[2:] == (oh, ow)
    ws = np.empty(_kernels.conv_workspace_floats(cg, H, W, KH, KW, S, P, M, K, Cout // G),
                  np.float32)
    for relu in (False, True):
        out = np.full((2, Cout, oh, ow), np.nan, np.float32)
        _kernels.conv_lut(x, cb, idx, b, S, P, G, relu, out, ws, nthreads)
        close(out, np.maximum(ref, 0) if relu else ref)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_dense_matches_numpy(isa, case):
    C, H, W, KH, KW, S, P, G, Cout, _, _ = case
    cg = C // G
    x = RNG.standard_normal((2, C, H, W)).astype(np.float32)
    w = RNG.standard_normal((Cout, cg, KH, KW)).astype(np.float32)
    b = RNG.standard_normal(Cout).astype(np.float32)
    ref = reference.conv2d(x, w, b, S, P, G)
    ws = np.empty(_kernels.conv_workspace_floats(cg, H, W, KH, KW, S, P, 0, 0, Cout // G),
                  np.float32)
    out = np.full(ref.shape, np.nan, np.float32)
    _kernels.conv_dense(x, blocked_conv_weights(w, G), b, KH, KW, S, P, False, out, ws)
    close(out, ref)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_dense_same_bits_on_every_fma_isa(case):
    """The float dense kernel is 8 lanes wide on AVX2 and 16 on AVX-512, but
    every output sums its taps in the same order with fused multiply-adds:
    the same bits (the portable build has no FMA and rounds each product).
    Relu on, and off; the gather, in-place and accumulator paths all occur."""
    C, H, W, KH, KW, S, P, G, Cout, _, _ = case
    cg = C // G
    x = RNG.standard_normal((3, C, H, W)).astype(np.float32)
    wb = blocked_conv_weights(RNG.standard_normal((Cout, cg, KH, KW)).astype(np.float32), G)
    b = RNG.standard_normal(Cout).astype(np.float32)
    oh, ow = _kernels.conv_output_size(H, W, KH, KW, S, P)
    ws = np.empty(_kernels.conv_workspace_floats(cg, H, W, KH, KW, S, P, 0, 0, Cout // G),
                  np.float32)

    def run():
        outs = []
        for relu in (False, True):
            out = np.full((3, Cout, oh, ow), np.nan, np.float32)
            _kernels.conv_dense(x, wb, b, KH, KW, S, P, relu, out, ws)
            outs.append(out)
        return _kernels.get_isa(), outs
    fma = [(isa, o) for isa, o in on_every_isa(run) if isa != "generic"]
    for isa, outs in fma[1:]:
        for a, ref in zip(outs, fma[0][1]):
            assert np.array_equal(a, ref), isa


# (Cin, Cout, d, K)
FC_CASES = [(37, 5, 4, 32), (1000, 33, 1, 16), (130, 7, 8, 256), (4608, 64, 4, 32), (3, 2, 4, 2)]


@pytest.mark.parametrize("case", FC_CASES)
@pytest.mark.parametrize("nthreads", [1, 2])
def test_fc_lut_matches_numpy(isa, case, nthreads):
    cin, cout, d, K = case
    x, cb, idx, b, ref = random_fc(RNG, 3, cin, cout, d, K)
    M = cb.shape[0]
    ws = np.empty(M * K, np.float32)
    for relu in (False, True):
        out = np.full((3, cout), np.nan, np.float32)
        _kernels.fc_lut(x, fc_codebook_t(cb), block_fc_indices(idx, K), b, relu, out, ws,
                        nthreads)
        close(out, np.maximum(ref, 0) if relu else ref)


@pytest.mark.parametrize("case", [c for c in FC_CASES if c[3] <= 32] + [(70, 45, 2, 7),
                                                                         (300, 64, 3, 9)])
def test_fc_register_lookup_matches_numpy_and_across_isas(case):
    """The exact register-lookup FC kernel (K <= 32; larger K use fc_lut, tested above)."""
    cin, cout, d, K = case
    x, cb, idx, b, ref = random_fc(RNG, 2, cin, cout, d, K)
    M = cb.shape[0]
    lay, cbt = fc_register_layout(idx)[0], fc_codebook_t(cb)
    ws = np.empty(_kernels.fc_f32_workspace_floats(M, K, cout), np.float32)
    def run():
        out = np.full((2, cout), np.nan, np.float32)
        _kernels.fc_f32(x, cbt, lay, cout, b, True, out, ws)
        return out
    outs = on_every_isa(run)
    close(outs[0], np.maximum(ref, 0))
    for o in outs[1:]:
        assert np.array_equal(o, outs[0])


@pytest.mark.parametrize("cin,cout", [(1, 1), (15, 3), (16, 4), (333, 17)])
def test_fc_dense_matches_numpy(isa, cin, cout):
    x = RNG.standard_normal((2, cin)).astype(np.float32)
    w = RNG.standard_normal((cout, cin)).astype(np.float32)
    b = RNG.standard_normal(cout).astype(np.float32)
    out = np.empty((2, cout), np.float32)
    _kernels.fc_dense(x, w, b, False, out)
    close(out, reference.fc(x, w, b))


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 1.0), (3, 0.5, 0.6, 2.0),
                                               (5, 5e-4, 0.75, 2.0), (1, 1.0, 1.0, 1.0)])
def test_lrn_matches_numpy(isa, size, alpha, beta, k):
    x = (RNG.standard_normal((2, 7, 5, 6)) * 30).astype(np.float32)
    out = np.empty_like(x)
    _kernels.lrn(x, out, size, alpha, beta, k)
    close(out, reference.lrn(x, size, alpha, beta, k), 1e-5)


@pytest.mark.parametrize("size,beta", [(5, 0.75), (3, 0.75), (7, 0.6), (16, 0.75), (1, 1.0)])
@pytest.mark.parametrize("hw", [(5, 6), (13, 13), (4, 8)])
def test_lrn_in_place_gives_the_same_bits(isa, size, beta, hw):
    """Written over its input (the window held in registers, the last positions
    a partial vector), on 1 and 2 threads: the same bits as into a new buffer,
    which match numpy; a window too large for that, or a partial overlap, is
    refused."""
    x = (RNG.standard_normal((2, 21) + hw) * 30).astype(np.float32)
    out = np.full_like(x, np.nan)
    _kernels.lrn(x, out, size, 1e-2, beta, 2.0)
    close(out, reference.lrn(x, size, 1e-2, beta, 2.0), 1e-5)
    for nt in (1, 2):
        y = x.copy()
        _kernels.lrn(y, y, size, 1e-2, beta, 2.0, nt)
        assert np.array_equal(y, out)
    with pytest.raises(ValueError, match="in place"):
        _kernels.lrn(x, x, _kernels.LRN_MAX_IN_PLACE + 1, 1e-2, 0.75, 2.0)
    flat = np.zeros(2 * x.size, np.float32)
    a, b = flat[:x.size].reshape(x.shape), flat[7:7 + x.size].reshape(x.shape)
    with pytest.raises(ValueError, match="overlap"):
        _kernels.lrn(a, b, 3, 1e-2, 0.75, 2.0)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("h,w,k,s,p", [(55, 55, 3, 2, 0), (13, 13, 3, 2, 0), (7, 9, 2, 2, 0),
                                       (8, 8, 3, 2, 1), (6, 5, 3, 3, 1), (1, 1, 1, 1, 0),
                                       # rows of vectors and a tail, stride 1 and 2, padded
                                       (9, 40, 3, 1, 1), (5, 37, 2, 1, 0), (6, 41, 3, 2, 1),
                                       (4, 111, 3, 2, 0),
                                       # 8-lane column pass (8 <= outputs < 16), overlapping
                                       # last vectors, ceil overhang past the padding
                                       (5, 27, 3, 2, 0), (4, 13, 3, 1, 1), (3, 20, 2, 2, 0),
                                       (3, 34, 3, 2, 1), (4, 17, 4, 1, 3), (3, 50, 3, 3, 1),
                                       # one and two output rows (the two row buffers)
                                       (2, 30, 2, 2, 0), (3, 45, 3, 2, 0), (5, 33, 3, 2, 0),
                                       # one window over the whole input (global average)
                                       (13, 13, 13, 1, 0), (21, 21, 21, 2, 0)])
def test_pool_matches_numpy(isa, method, h, w, k, s, p):
    from qengine.layers import pool_output
    x = RNG.standard_normal((2, 3, h, w)).astype(np.float32)
    ref = reference.pool(x, (k, k), (s, s), (p, p), method)
    out = np.empty((2, 3, pool_output(h, k, s, p), pool_output(w, k, s, p)), np.float32)
    assert out.shape == ref.shape
    _kernels.pool(x, out, k, k, s, s, p, p, method == "AVE")
    close(out, ref, 1e-6)


@pytest.mark.parametrize("width", [50, 27, 13])
def test_max_pool_skips_nans_with_the_same_bits_on_every_isa(width):
    x = RNG.standard_normal((1, 4, 9, width)).astype(np.float32)
    x[0, 0, 2, 5:width - 3:3] = np.nan
    x[0, 1] = np.nan                       # a channel of NaNs: every window empty
    x[0, 2, :, 7] = -np.inf
    def run(s):
        oh, ow = -(-(9 - 3) // s) + 1, -(-(width - 3) // s) + 1
        out = np.full((1, 4, oh, ow), 7, np.float32)
        _kernels.pool(x, out, 3, 3, s, s, 0, 0, False)
        return out
    for s in (1, 2):
        outs = on_every_isa(lambda: run(s))
        for o in outs[1:]:
            assert np.array_equal(o, outs[0], equal_nan=True)
        ref = reference.pool(np.where(np.isnan(x), -np.inf, x), (3, 3), (s, s), (0, 0), "MAX")
        ref = np.where(np.isneginf(ref), -np.finfo(np.float32).max, ref)   # nothing but NaNs
        assert np.array_equal(outs[0], np.maximum(ref, -np.finfo(np.float32).max))


def test_caffe_ceil_pooling_sizes():
    from qengine.layers import pool_output
    assert pool_output(55, 3, 2, 0) == 27      # AlexNet pool1
    assert pool_output(13, 3, 2, 0) == 6       # pool5
    assert pool_output(6, 3, 2, 0) == 3        # ceil: (6-3)/2 = 1.5 -> 2, +1
    assert pool_output(5, 2, 2, 1) == 3        # last window must start inside the image


def test_relu_and_softmax():
    x = RNG.standard_normal(1001).astype(np.float32)
    out = np.empty_like(x)
    _kernels.relu(x, out, 0.1)
    close(out, reference.relu(x, 0.1), 1e-7)
    x = (RNG.standard_normal((3, 10, 4)) * 20).astype(np.float32)
    out = np.empty_like(x)
    _kernels.softmax(x, out)
    close(out, reference.softmax(x), 1e-6)
    assert np.allclose(out.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("bits", range(1, 9))
def test_bit_unpacking_both_orders(bits):
    from qengine.format import pack_bits
    n = 1001
    v = RNG.integers(0, 1 << bits, n).astype(np.uint8)
    out = np.empty(n, np.uint8)
    _kernels.unpack_bits(np.frombuffer(pack_bits(v, bits), np.uint8), bits, n, False, out)
    assert np.array_equal(out, v)
    # MSB-first stream, built independently with numpy
    stream = np.unpackbits(v[:, None], axis=1)[:, 8 - bits:].reshape(-1)
    msb = np.packbits(stream)
    _kernels.unpack_bits(msb, bits, n, True, out)
    assert np.array_equal(out, v)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("cout,M", [(1, 1), (33, 7), (70, 130), (5, 257)])
def test_register_layout_unpacks_while_it_lays_out(bits, cout, M):
    """Laid out straight from the packed stream (rows need not start on a byte)
    == laid out from the unpacked bytes; both report the largest index."""
    from qengine.format import pack_bits
    idx = RNG.integers(0, 1 << bits, (cout, M)).astype(np.uint8)
    from_bytes, top = fc_register_layout(idx)
    stream = np.frombuffer(pack_bits(idx, bits), np.uint8)
    from_stream, top2 = fc_register_layout(stream, (cout, M), bits)
    assert bytes(from_stream) == bytes(from_bytes)
    assert top == top2 == idx.max()
    with pytest.raises(ValueError):
        fc_register_layout(stream[:len(stream) // 2], (cout, M + 64), bits)


def test_kernels_reject_bad_shapes():
    x = np.zeros((1, 4, 5, 5), np.float32)
    cb = np.zeros((1, 4, 4), np.float32)
    idx = np.zeros((2, 3, 3, 1), np.uint8)
    with pytest.raises(ValueError):
        _kernels.conv_lut(x, cb, idx, np.zeros(2, np.float32), 1, 0, 1, False,
                          np.zeros((1, 2, 4, 4), np.float32), np.zeros(10, np.float32))
    with pytest.raises(ValueError):
        _kernels.unpack_bits(np.zeros(1, np.uint8), 9, 1, False, np.zeros(1, np.uint8))
    with pytest.raises(ValueError):
        _kernels.set_isa("sse9")


def test_pool_and_lrn_split_over_threads_give_the_same_bits():
    x = RNG.standard_normal((2, 13, 17, 15)).astype(np.float32)
    for kh, s, p, avg in ((3, 2, 0, False), (3, 2, 1, True), (2, 1, 0, False)):
        oh = -(-(17 + 2 * p - kh) // s) + 1
        ow = -(-(15 + 2 * p - kh) // s) + 1
        outs = []
        for nt in (1, 2, 3):
            out = np.full((2, 13, oh, ow), np.nan, np.float32)
            _kernels.pool(x, out, kh, kh, s, s, p, p, avg, nt)
            outs.append(out)
        assert all(np.array_equal(outs[0], o) for o in outs[1:])
    outs = []
    for nt in (1, 2, 3):
        out = np.full_like(x, np.nan)
        _kernels.lrn(x, out, 5, 1e-2, 0.75, 1.0, nt)
        outs.append(out)
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    want = reference.lrn(x, 5, 1e-2, 0.75, 1.0)
    close(outs[1], want, 1e-5)


def test_fc_codebook_t_is_the_transpose():
    cb = RNG.standard_normal((7, 5, 3)).astype(np.float32)
    assert np.array_equal(np.asarray(fc_codebook_t(cb)), cb.transpose(0, 2, 1))
    with pytest.raises(ValueError, match="does not match"):
        _kernels.fc_codebook_t(cb, np.empty((7, 5, 3), np.float32))
