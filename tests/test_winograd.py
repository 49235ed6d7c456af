"""Fast mode's stride-1 convolution by Winograd F(2x2, 3x3) and F(4x4, 3x3)
in 16-bit integers (qe_wino.h; kernels past 3x3 in 3x3 pieces, strides by
space to depth): the documented integer pipelines reproduced bit for bit in
numpy, the same bits on every instruction set and thread count, the float
convolution within its quantisation error, the int32 overflow bounds, and
where the runtime chooses each."""
import numpy as np
import pytest

from qengine import _kernels
from qengine.layers.convolution import conv2d

from conftest import ISAS, on_every_isa

B = 2**31 - 1
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.int64)
G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])
# F(4x4, 3x3): points 0, +-1, +-2
BT4 = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.int64)
G4 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
VB4 = 8191
# F(4x4, 5x5) (tile code 45): points 0, +-1, +-2, +-1/2; B' rows scaled to integers
BT8 = np.array([[4, 0, -21, 0, 21, 0, -4, 0], [0, 4, 4, -17, -17, 4, 4, 0],
                [0, -4, 4, 17, -17, -4, 4, 0], [0, 2, 1, -10, -5, 8, 4, 0],
                [0, -2, 1, 10, -5, -8, 4, 0], [0, 4, 8, -5, -10, 1, 2, 0],
                [0, -4, 8, 5, -10, -1, 2, 0], [0, -4, 0, 21, 0, -21, 0, 4]], np.int64)
G8 = np.array([[1 / 4, 0, 0, 0, 0], [-1 / 18] * 5, [-1 / 18, 1 / 18, -1 / 18, 1 / 18, -1 / 18],
               [1 / 360, 1 / 180, 1 / 90, 1 / 45, 2 / 45],
               [1 / 360, -1 / 180, 1 / 90, -1 / 45, 2 / 45],
               [16 / 45, 8 / 45, 4 / 45, 2 / 45, 1 / 45],
               [16 / 45, -8 / 45, 4 / 45, -2 / 45, 1 / 45], [0, 0, 0, 0, 1 / 4]])
TILES = [2, 4, 45]

# (N, C, H, W, Cout, pad, groups, KH, KW, stride): AlexNet conv3-like (13x13,
# tiles past the edge), odd and even sizes, pad 0 and 2, channels not a
# multiple of 2 or 16, Cout not a multiple of the 32-channel block, groups, a
# 1x1 input with pad 1, more tiles than one register block, several images;
# kernels past 3x3 in pieces: AlexNet conv2-like 5x5, 4x4 and 7x3 (pieces
# past the kernel's edge), 11x11 (16 pieces); strides by space to depth:
# AlexNet conv1-like 11x11 stride 4, 7x7 stride 2 (SqueezeNet's conv1), 3x3
# stride 2, 2x2 stride 2 (one tap per phase); 1x1 (QENGINE_WINOGRAD=1 allows it)
CASES = [(1, 64, 13, 13, 40, 1, 1, 3, 3, 1), (2, 7, 9, 12, 5, 0, 1, 3, 3, 1),
         (1, 33, 8, 5, 70, 2, 1, 3, 3, 1), (1, 48, 10, 10, 64, 1, 2, 3, 3, 1),
         (1, 17, 1, 1, 3, 1, 1, 3, 3, 1), (1, 32, 27, 27, 33, 1, 1, 3, 3, 1),
         (3, 20, 6, 7, 32, 1, 1, 3, 3, 1), (1, 24, 15, 15, 40, 2, 2, 5, 5, 1),
         (2, 5, 9, 8, 7, 1, 1, 4, 4, 1), (1, 9, 12, 10, 6, 3, 1, 7, 3, 1),
         (1, 3, 16, 14, 8, 0, 1, 11, 11, 1), (1, 3, 47, 43, 40, 0, 1, 11, 11, 4),
         (2, 3, 23, 20, 9, 3, 1, 7, 7, 2), (1, 16, 9, 10, 33, 1, 1, 3, 3, 2),
         (1, 6, 8, 8, 5, 0, 1, 2, 2, 2), (1, 8, 6, 7, 5, 0, 1, 1, 1, 1),
         # output planes of a multiple of 1,024 floats (stored channel by
         # channel): 32x32, 16x64, and 2x512 (every 4x4 tile cut by the edge)
         (1, 16, 32, 32, 40, 1, 1, 3, 3, 1), (1, 8, 16, 64, 20, 1, 1, 3, 3, 1),
         (1, 4, 2, 512, 20, 1, 1, 3, 3, 1),
         # inputs of 65,536 values or more: their quantisation split across threads
         (1, 3, 151, 151, 8, 0, 1, 11, 11, 4), (1, 20, 60, 60, 8, 1, 1, 3, 3, 1)]


def layout(w, groups, stride=1, tile=2):
    cout, cg, kh, kw = w.shape
    us, ss = _kernels.wino_weights_shape(cout, groups, cg * groups, kh, kw, stride, tile)
    u, s = np.empty(us, np.int16), np.empty(ss, np.float32)
    return u, s, _kernels.wino_conv_weights(np.ascontiguousarray(w, np.float32), groups, u, s,
                                            stride, tile)


def unpack(u, s, cout, cin_group, groups, tile=2):
    """The layout back to Uq [Cout][NXI][C] and scales [Cout][NXI]."""
    nxi = _kernels.wino_products(tile)
    cog = cout // groups
    cob, cp = (cog + 31) // 32, (cin_group + 1) // 2
    uq = u.reshape(groups, cob, nxi, cp, 32, 2).transpose(0, 1, 4, 2, 3, 5)
    uq = uq.reshape(groups, cob * 32, nxi, 2 * cp)[:, :cog, :, :cin_group]
    sc = s.reshape(groups, cob, nxi, 32).transpose(0, 1, 3, 2).reshape(groups, cob * 32, nxi)
    return uq.reshape(cout, nxi, cin_group).astype(np.int64), sc[:, :cog].reshape(cout, nxi)


def run_wino(x, w, b, P, G_, relu=False, nthreads=1, S=1, tile=2):
    u, s, A = layout(w, G_, S, tile)
    n, c, h, wd = x.shape
    kh, kw = w.shape[2:]
    oh, ow = (h + 2 * P - kh) // S + 1, (wd + 2 * P - kw) // S + 1
    out = np.full((n, w.shape[0], oh, ow), -7, np.float32)
    ws = np.empty(_kernels.wino_workspace_floats(c // G_, h, wd, P, w.shape[0] // G_, kh, kw, S,
                                                 tile), np.float32)
    _kernels.conv_wino(x, u, s, A, b, kh, kw, S, P, relu, out, ws, nthreads, 0, tile)
    return out


def virtual_input(x, A, P, kh, kw, S, hh, ww, r=3):
    """The input quantised as qe_i16.h does, split into stride^2 phases and
    shifted by r per r x r piece of the kernel into virtual channels, hh x ww
    (zero padded); and the scale back to floats."""
    f = np.float32
    c, h, wd = x.shape
    mx = np.abs(x).max()
    inv, sa = (f(A) / mx, mx / f(A)) if mx > 0 else (f(0), f(0))
    t = x * inv
    t = t + np.where(t < 0, f(-0.5), f(0.5))
    xq = np.trunc(np.clip(t, -A, A)).astype(np.int64)
    sy, sx = -(-(-(-kh // S)) // r), -(-(-(-kw // S)) // r)
    big = np.zeros((c, (hh + r * sy + 1) * S + h, (ww + r * sx + 1) * S + wd), np.int64)
    big[:, P:P + h, P:P + wd] = xq
    # virtual channel ((piece * C + c) * S + a) * S + e
    xp = np.stack([big[:, r * py * S + a::S, r * px * S + e::S][:, :hh, :ww]
                   for py in range(sy) for px in range(sx)
                   for a in range(S) for e in range(S)])               # [piece, a, e][c]
    xp = xp.reshape(sy * sx, S * S, c, hh, ww).transpose(0, 2, 1, 3, 4).reshape(-1, hh, ww)
    return xp, sa


def pipeline(x, uq, su, A, b, P, relu, kh=3, kw=3, S=1):
    """qe_wino.h's F(2x2, 3x3) arithmetic in numpy for one group of one image:
    the virtual input (virtual_input), V = B'dB and M = sum Uq V exactly, then
    float32 steps in the kernel's order (no fused multiply-adds)."""
    f = np.float32
    c, h, wd = x.shape
    oh, ow = (h + 2 * P - kh) // S + 1, (wd + 2 * P - kw) // S + 1
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    xp, sa = virtual_input(x, A, P, kh, kw, S, 2 * th + 2, 2 * tw + 2)
    c = xp.shape[0]
    sc = (sa * su).astype(f)                          # [Cout][16]
    y = np.zeros((uq.shape[0], 2 * th, 2 * tw), f)
    for ty in range(th):
        for tx in range(tw):
            d = xp[:, 2 * ty:2 * ty + 4, 2 * tx:2 * tx + 4]
            V = np.einsum("ak,ckl,bl->abc", BT, d, BT).reshape(16, c)
            assert np.abs(V).max() <= 4 * A
            M = np.einsum("oxc,xc->ox", uq, V)
            assert np.abs(M).max() <= B
            m = (M.astype(f) * sc).reshape(-1, 4, 4)
            r0 = (m[:, :, 0] + m[:, :, 1]) + m[:, :, 2]
            r1 = (m[:, :, 1] - m[:, :, 2]) - m[:, :, 3]
            yy = [((r0[:, 0] + r0[:, 1]) + r0[:, 2]) + b, ((r1[:, 0] + r1[:, 1]) + r1[:, 2]) + b,
                  ((r0[:, 1] - r0[:, 2]) - r0[:, 3]) + b, ((r1[:, 1] - r1[:, 2]) - r1[:, 3]) + b]
            for q, v in enumerate(yy):
                y[:, 2 * ty + q // 2, 2 * tx + q % 2] = np.where(v > 0, v, 0) if relu else v
    return y[:, :oh, :ow]


def a4(m):
    """F(4x4, 3x3)'s A' on the last axis of 6 (float32, the kernel's order)."""
    f = np.float32
    s12, d12 = m[..., 1] + m[..., 2], m[..., 1] - m[..., 2]
    s34, d34 = m[..., 3] + m[..., 4], m[..., 3] - m[..., 4]
    return np.stack([(m[..., 0] + s12) + s34, d12 + d34 * f(2), s12 + s34 * f(4),
                     (d12 + d34 * f(8)) + m[..., 5]], -1)


def a45(m):
    """F(4x4, 5x5)'s A' on the last axis of 8 (float32, the kernel's order)."""
    f = np.float32
    s12, d12 = m[..., 1] + m[..., 2], m[..., 1] - m[..., 2]
    s34, d34 = m[..., 3] + m[..., 4], m[..., 3] - m[..., 4]
    s56, d56 = m[..., 5] + m[..., 6], m[..., 5] - m[..., 6]
    return np.stack([((m[..., 0] + s12) + s34) + s56, (d12 + d34 * f(2)) + d56 * f(0.5),
                     (s12 + s34 * f(4)) + s56 * f(0.25),
                     ((d12 + d34 * f(8)) + d56 * f(0.125)) + m[..., 7]], -1)


def pipeline4(x, uq, su, A, b, P, relu, kh=3, kw=3, S=1, tile=4):
    """qe_wino.h's F(4x4, 3x3) (or, tile 45, F(4x4, 5x5)) arithmetic in numpy
    for one group of one image: V = B'dB exactly, rescaled per transformed
    position to |Vq| <= VB4 with sv = VB4 / max|V| (float32) and rounding to
    the nearest, ties to even; M = sum Uq Vq exactly; m = float32(M) * ((sa /
    sv) * su), then A' m A in the kernel's order."""
    f = np.float32
    bt, at, n, r = (BT8, a45, 8, 5) if tile == 45 else (BT4, a4, 6, 3)
    c, h, wd = x.shape
    oh, ow = (h + 2 * P - kh) // S + 1, (wd + 2 * P - kw) // S + 1
    th, tw = -(-oh // 4), -(-ow // 4)
    xp, sa = virtual_input(x, A, P, kh, kw, S, 4 * th + n - 4, 4 * tw + n - 4, r)
    c = xp.shape[0]
    d = np.stack([np.stack([xp[:, 4 * ty:4 * ty + n, 4 * tx:4 * tx + n] for tx in range(tw)])
                  for ty in range(th)])                          # [th, tw, c, n, n]
    V = np.einsum("ak,yxckl,bl->yxcab", bt, d, bt).reshape(th, tw, c, n * n)
    assert np.abs(V).max() < 2**31
    vmax = np.abs(V).max(axis=(0, 1, 2))
    sv = np.ones(n * n, f)
    sv[vmax > 0] = f(VB4) / vmax[vmax > 0].astype(f)
    Vq = np.rint(V.astype(f) * sv).astype(np.int64)
    assert np.abs(Vq).max() <= VB4
    M = np.einsum("oic,yxci->oyxi", uq, Vq)
    assert np.abs(M).max() <= B
    sc = ((f(sa) / sv)[None, :] * su).astype(f)                # [Cout][n * n]
    m = (M.astype(f) * sc[:, None, None, :]).reshape(-1, th, tw, n, n)
    r = at(m)                                                  # m A: [.., n rows, 4]
    out = at(np.swapaxes(r, -1, -2))                           # [.., 4 cols, 4 rows]
    out = np.swapaxes(out, -1, -2) + b[:, None, None, None, None]
    if relu:
        out = np.where(out > 0, out, f(0))
    y = out.transpose(0, 1, 3, 2, 4).reshape(-1, 4 * th, 4 * tw)
    return y[:, :oh, :ow]


def make(case, seed=0):
    n, c, h, wd, cout, p, g, kh, kw, _ = case
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal((n, c, h, wd)), -0.3).astype(np.float32)
    w = (rng.standard_normal((cout, c // g, kh, kw)) * 0.1).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    return x, w, b, p, g


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("case", CASES)
def test_kernel_is_the_documented_integer_pipeline(case, tile):
    x, w, b, p, g = make(case)
    S = case[-1]
    u, s, A = layout(w, g, S, tile)
    n, c = x.shape[:2]
    cg, og = c // g, w.shape[0] // g
    kh, kw = w.shape[2:]
    uq, su = unpack(u, s, w.shape[0], cg * _kernels.wino_pieces(kh, kw, S, tile), g, tile)
    pipe = pipeline if tile == 2 else lambda *a: pipeline4(*a, tile=tile)
    want = np.stack([np.concatenate([
        pipe(x[i, gi * cg:(gi + 1) * cg], uq[gi * og:(gi + 1) * og], su[gi * og:(gi + 1) * og],
             A, b[gi * og:(gi + 1) * og], p, True, kh, kw, S) for gi in range(g)])
        for i in range(n)])
    outs = on_every_isa(lambda: (run_wino(x, w, b, p, g, True, 1, S, tile),
                                 run_wino(x, w, b, p, g, True, 2, S, tile)))
    for isa, (o1, o2) in zip(ISAS, outs):
        assert np.array_equal(o1, want), f"{isa}: not the documented pipeline's bits"
        assert np.array_equal(o2, want), f"{isa}, 2 threads: outputs differ"


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("case", CASES)
def test_matches_the_float_convolution_within_quantisation_error(isa, case, tile):
    x, w, b, p, g = make(case, 1)
    S = case[-1]
    ref = conv2d(x, w, b, S, p, g)
    got = run_wino(x, w, b, p, g, S=S, tile=tile)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < (2e-3 if tile == 2 else 5e-3), err
    assert np.array_equal(run_wino(x, w, b, p, g, relu=True, S=S, tile=tile), np.maximum(got, 0))


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("C", [1, 3, 64, 384, 2000])
def test_weight_layout_keeps_every_sum_inside_int32(C, tile):
    rng = np.random.default_rng(C)
    cout, k = 37, _kernels.wino_piece_size(tile)
    w = rng.standard_normal((cout, C, k, k)).astype(np.float32)
    w[1] = 0.0
    w[1, 0, 1, 1] = 3.0            # one weight: U's rows have a single non-zero
    w[2] = -0.25                   # all equal: the widest rows
    w[3] = 0.0
    w[4] = 0.0
    w[4, :, 0, 0] = 1e-42          # subnormal: scales underflow, the channel counts as zero
    u, s, A = layout(w, 1, tile=tile)
    if tile == 2:
        assert 1 <= A <= 8191      # |V| <= 4A fits int16
        vb, g, nxi = 4 * A, G, 16
    else:
        assert A == 32767          # |V| <= 100 A (2500 A) fits int32 before its rescaling
        vb, g, nxi = (VB4, G4, 36) if tile == 4 else (VB4, G8, 64)
    uq, su = unpack(u, s, cout, C, 1, tile=tile)
    assert np.all(vb * np.abs(uq).sum(-1) <= B)
    assert np.abs(uq).max() <= 32767
    U = np.einsum("ak,ockl,bl->oabc", g, w.astype(np.float64), g).reshape(cout, nxi, C)
    # each level comes back to U within half a step of its row's scale
    assert np.all(np.abs(uq * su[..., None].astype(np.float64) - U)
                  <= 0.5001 * su[..., None] + 1e-40)
    assert not su[3].any() and not uq[3].any()
    assert not su[4].any() and not uq[4].any()


@pytest.mark.parametrize("tile", [4, 45])
def test_rescaled_worst_case_sums_do_not_wrap(tile):
    # every input channel the same: at the tile where |V[xi]| is largest, Vq =
    # +-VB4 in every channel, and with one kernel tap U[xi] has one sign over
    # the channels, so M = VB4 sum|Uq| for every xi, as close to 2^31 as the
    # layout allows
    C, cout, H, k = 512, 4, 12, _kernels.wino_piece_size(tile)
    rng = np.random.default_rng(7)
    x = np.repeat(rng.standard_normal((1, 1, H, H)), C, axis=1).astype(np.float32)
    w = np.zeros((cout, C, k, k), np.float32)
    w[:, :, 0, 0] = 1.0
    w[1::2] *= -1
    b = np.zeros(cout, np.float32)
    ref = conv2d(x, w, b, 1, 0, 1)
    u, s, A = layout(w, 1, tile=tile)
    uq, _ = unpack(u, s, cout, C, 1, tile=tile)
    assert VB4 * np.abs(uq[:, 0]).sum(-1).max() > B // 2      # near the bound
    # (512 identical channels: the rounding errors add up coherently, to 2.2e-3
    # of the largest output for F(4x4, 5x5); a wrapped sum would be off by 2^32)
    tol = 2e-3 if tile == 4 else 4e-3
    for isa, got in zip(ISAS, on_every_isa(lambda: run_wino(x, w, b, 0, 1, tile=tile))):
        assert np.allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max()), isa
        big = np.abs(ref) > 0.01 * np.abs(ref).max()
        assert np.array_equal(np.sign(got[big]), np.sign(ref[big])), f"{isa}: a sum wrapped"


def test_worst_case_sums_do_not_wrap():
    # inputs of +-max in the pattern that makes V[0] = +-4A in every tile, and
    # kernels whose transformed corner entry has one sign: M[0] = 4A sum|Uq|,
    # as close to 2^31 as the layout allows
    C, cout, H = 512, 4, 8
    sign = np.where((np.arange(H) // 2) % 2 == 0, 1.0, -1.0)
    x = np.zeros((1, C, H, H), np.float32)
    x[0, :, ::2, ::2] = np.outer(sign, sign)[::2, ::2]
    w = np.zeros((cout, C, 3, 3), np.float32)
    w[:, :, 0, 0] = 1.0
    w[1::2] *= -1
    b = np.zeros(cout, np.float32)
    ref = conv2d(x, w, b, 1, 0, 1)
    u, s, A = layout(w, 1)
    uq, _ = unpack(u, s, cout, C, 1)
    assert 4 * A * np.abs(uq[:, 0]).sum(-1).max() > B // 2   # near the bound
    for isa, got in zip(ISAS, on_every_isa(lambda: run_wino(x, w, b, 0, 1))):
        assert np.allclose(got, ref, rtol=1e-3, atol=1e-3), isa
        assert np.array_equal(np.sign(got), np.sign(ref)), f"{isa}: a sum wrapped around"


@pytest.mark.parametrize("tile", TILES)
def test_zero_and_non_finite_inputs(tile):
    x, w, b, p, g = make((2, 16, 7, 7, 20, 1, 2, 3, 3, 1))
    zero = run_wino(np.zeros_like(x), w, b, p, g, tile=tile)
    assert np.array_equal(zero, np.broadcast_to(b[None, :, None, None], zero.shape))
    bad = x.copy()
    bad[0, 3, 2, 2] = np.nan
    out = run_wino(bad, w, b, p, g, tile=tile)
    assert np.isnan(out[0, :10]).all()     # that image's group: no integer stands for it
    assert np.isfinite(out[0, 10:]).all() and np.isfinite(out[1]).all()


@pytest.mark.parametrize("tile", TILES)
def test_non_finite_input_found_by_any_thread(tile):
    """An input large enough that threads share its quantisation: a NaN or an
    infinity in the last thread's part still makes that image's outputs NaN."""
    x, w, b, p, g = make((2, 20, 60, 60, 8, 1, 1, 3, 3, 1))
    for v in (np.nan, np.inf):
        bad = x.copy()
        bad[1, 19, 59, 58] = v
        out = run_wino(bad, w, b, p, g, nthreads=2, tile=tile)
        assert np.isnan(out[1]).all() and np.isfinite(out[0]).all()


def test_rejects_mismatched_layouts_and_small_workspace():
    x, w, b, p, g = make((1, 8, 5, 5, 4, 1, 1, 3, 3, 1))
    u, s, A = layout(w, g)
    out = np.zeros((1, 4, 5, 5), np.float32)
    ws = np.empty(_kernels.wino_workspace_floats(8, 5, 5, 1, 4), np.float32)
    with pytest.raises(ValueError, match="workspace"):
        _kernels.conv_wino(x, u, s, A, b, 3, 3, 1, p, False, out, ws[:-20])
    with pytest.raises(ValueError, match="do not match"):
        _kernels.conv_wino(x[:, :6], u, s, A, b, 3, 3, 1, p, False, out, ws)
    with pytest.raises(ValueError, match="do not match"):
        _kernels.conv_wino(x, u, s, 9000, b, 3, 3, 1, p, False, out, ws)
    with pytest.raises(ValueError, match="do not match"):      # the layout of a 3x3 kernel
        _kernels.conv_wino(x, u, s, A, b, 5, 5, 1, 2, False, out, ws)
    with pytest.raises(ValueError, match="do not match"):      # ... of stride 1
        _kernels.conv_wino(x, u, s, A, b, 3, 3, 2, 1, False, np.zeros((1, 4, 3, 3), np.float32),
                           ws)
    with pytest.raises(ValueError, match="at most 15x15"):
        layout(np.zeros((4, 8, 16, 16), np.float32), 1)
    with pytest.raises(ValueError, match="tiles are"):
        layout(w, g, tile=3)
    with pytest.raises(ValueError, match="do not match"):      # F(2x2) weights, F(4x4) call
        _kernels.conv_wino(x, u, s, A, b, 3, 3, 1, p, False, out, ws, 1, 0, 4)
    u4, s4, A4 = layout(w, g, tile=4)
    ws4 = np.empty(_kernels.wino_workspace_floats(8, 5, 5, 1, 4, tile=4), np.float32)
    with pytest.raises(ValueError, match="do not match"):      # ... and the other way
        _kernels.conv_wino(x, u4, s4, A4, b, 3, 3, 1, p, False, out, ws4, 1, 0, 2)
    with pytest.raises(ValueError, match="workspace"):
        _kernels.conv_wino(x, u4, s4, A4, b, 3, 3, 1, p, False, out, ws4[:-20], 1, 0, 4)
    ws45 = np.empty(_kernels.wino_workspace_floats(8, 5, 5, 1, 4, tile=45), np.float32)
    with pytest.raises(ValueError, match="do not match"):      # F(4x4, 3x3) weights, F(4x4, 5x5)
        _kernels.conv_wino(x, u4, s4, A4, b, 3, 3, 1, p, False, out, ws45, 1, 0, 45)
    u45, s45, A45 = layout(w, g, tile=45)
    with pytest.raises(ValueError, match="do not match"):
        _kernels.conv_wino(x, u45, s45, A45, b, 3, 3, 1, p, False, out, ws4, 1, 0, 4)
    with pytest.raises(ValueError, match="workspace"):        # its patches are 8x8, not 6x6
        _kernels.conv_wino(x, u45, s45, A45, b, 3, 3, 1, p, False, out, ws4, 1, 0, 45)


def test_fast_models_run_wide_stride_1_layers_by_winograd(tmp_path, monkeypatch):
    import qengine
    from modelkit import build, conv
    g = {"input": {"name": "data", "shape": [48, 14, 14]},
         "layers": [conv("wide", "data", 64, 3, p=1), conv("five", "wide", 64, 5, p=2, g=2),
                    conv("narrow", "five", 16, 3, p=1),
                    conv("strided", "narrow", 64, 3, s=2, p=1), conv("one", "strided", 16, 1)]}
    path = str(tmp_path / "w.qcnn")
    build(path, g, dense=("wide", "narrow", "strided", "five", "one"),
          meta_extra={"class_names": []})
    monkeypatch.setenv("QENGINE_INT16", "1")
    fast, exact = qengine.load(path, mode="fast"), qengine.load(path, mode="exact")
    # 48 input channels: Winograd; 64 -> 16 too, and 5x5 with 32 per group (4
    # pieces); 16 input channels, stride 2 or 1x1: direct int16
    assert fast.layer_strategies() == {"wide": "winograd", "narrow": "winograd",
                                       "strided": "int16", "five": "winograd", "one": "int16"}
    x = np.maximum(np.random.default_rng(5).standard_normal((2, 48, 14, 14)), 0).astype(np.float32)
    a, b = fast.forward(x), exact.forward(x)
    assert 0 < np.abs(a - b).max() <= 2e-3 * np.abs(b).max()
    monkeypatch.setenv("QENGINE_WINOGRAD", "0")
    assert set(qengine.load(path, mode="fast").layer_strategies().values()) == {"int16"}


def test_runtime_picks_f4_for_large_outputs_and_f2_for_small(tmp_path, monkeypatch):
    """F(4x4, 3x3) where the cost model prices it at most 0.9 of F(2x2, 3x3)
    (27x27 outputs of 192 channels on every instruction set's prices), F(2x2,
    3x3) at 13x13; QENGINE_WINOGRAD_TILE forces either; fast mode stays
    within F(4x4)'s rounding of exact mode."""
    import qengine
    from modelkit import build, conv
    from qengine.layers.weighted import winograd_tile_ratio, WINO4_MAX_RATIO
    p3 = {"kernel": [3, 3], "stride": 1}
    assert winograd_tile_ratio(p3, 192, (64, 27, 27)) <= WINO4_MAX_RATIO
    assert winograd_tile_ratio(p3, 256, (64, 13, 13)) > WINO4_MAX_RATIO
    g = {"input": {"name": "data", "shape": [192, 27, 27]},
         "layers": [conv("big", "data", 64, 3, p=1), conv("down", "big", 192, 3, s=2, p=1),
                    conv("small", "down", 32, 3, p=1)]}
    path = str(tmp_path / "t.qcnn")
    build(path, g, dense=("big", "down", "small"), meta_extra={"class_names": []})
    monkeypatch.setenv("QENGINE_INT16", "1")
    monkeypatch.setenv("QENGINE_WINOGRAD", "1")
    fast, exact = qengine.load(path, mode="fast"), qengine.load(path, mode="exact")
    tiles = {op.name: op.wino_tile for op in fast.layers if op.strategy == "winograd"}
    assert tiles["big"] == 4 and tiles["small"] == 2
    x = np.maximum(np.random.default_rng(2).standard_normal((2, 192, 27, 27)), 0)
    x = x.astype(np.float32)
    a, b = fast.forward(x, outputs=["big"])["big"], exact.forward(x, outputs=["big"])["big"]
    # (192 channels of random weights: F(4x4)'s rounding error is ~3x F(2x2)'s,
    # 2e-3 against 6e-4 here; on AlexNet's pool5 ~2x)
    assert 0 < np.linalg.norm(a - b) <= 4e-3 * np.linalg.norm(b)
    assert np.abs(a - b).max() <= 1e-2 * np.abs(b).max()
    want = exact.forward(x)
    for t in ("2", "4"):
        monkeypatch.setenv("QENGINE_WINOGRAD_TILE", t)
        m = qengine.load(path, mode="fast")
        assert {op.wino_tile for op in m.layers if op.strategy == "winograd"} == {int(t)}
        assert np.linalg.norm(m.forward(x) - want) <= 4e-3 * np.linalg.norm(want)


def test_runtime_picks_f45_for_5x5_kernels(tmp_path, monkeypatch):
    """F(4x4, 5x5) for an AlexNet conv2-like layer (5x5, 48 channels per group,
    27x27; 64 products per tile and channel against F(4x4, 3x3)'s 4 pieces x
    36), F(4x4, 3x3) or F(2x2, 3x3) for the 3x3 layer; forcing F(4x4, 3x3)
    gives the same convolution within both forms' rounding."""
    import qengine
    from modelkit import build, conv
    from qengine.layers.weighted import winograd_tile
    p5 = {"kernel": [5, 5], "stride": 1}
    assert winograd_tile(p5, 48, (128, 27, 27)) == 45
    assert winograd_tile({"kernel": [3, 3], "stride": 1}, 48, (128, 27, 27)) != 45
    g = {"input": {"name": "data", "shape": [96, 27, 27]},
         "layers": [conv("five", "data", 128, 5, p=2, g=2), conv("three", "five", 64, 3, p=1)]}
    path = str(tmp_path / "f.qcnn")
    build(path, g, dense=("five", "three"), meta_extra={"class_names": []})
    monkeypatch.setenv("QENGINE_INT16", "1")
    monkeypatch.setenv("QENGINE_WINOGRAD", "1")
    fast, exact = qengine.load(path, mode="fast"), qengine.load(path, mode="exact")
    tiles = {op.name: op.wino_tile for op in fast.layers}
    assert tiles["five"] == 45 and tiles["three"] != 45
    x = np.maximum(np.random.default_rng(4).standard_normal((2, 96, 27, 27)), 0)
    x = x.astype(np.float32)
    a = fast.forward(x, outputs=["five"])["five"]
    b = exact.forward(x, outputs=["five"])["five"]
    assert 0 < np.linalg.norm(a - b) <= 4e-3 * np.linalg.norm(b)
    monkeypatch.setenv("QENGINE_WINOGRAD_TILE", "4")
    f4 = qengine.load(path, mode="fast")
    assert f4.layers[0].wino_tile == 4
    c = f4.forward(x, outputs=["five"])["five"]
    assert not np.array_equal(a, c)
    assert np.linalg.norm(c - b) <= 4e-3 * np.linalg.norm(b)
