"""Error correction (Wu et al. 2016, "Q-CNN with error correction").

Layers are refined one after another from the input.  For a layer, the input
X comes from the already-quantised preceding layers, the target Y from the
dense network, both on calibration inputs.  The codebooks and indices are then
refined to minimise ||Y - b - W(C, A) X||^2 over the layer's response (not its
weights), subspace by subspace:

  - codebook step: with the indices fixed, the response is linear in the
    codewords of subspace m; solve the normal equations (a ridge towards the
    current codewords keeps unused codewords in place);
  - index step: with the codebook fixed, each output's index at each kernel tap
    is re-chosen given the others, from Gram matrices of the input patches only.

Convolutions are fitted on a sample of output positions.
"""
import time

import numpy as np

from .calibration import dense_model, input_producers, stream
from .quantize import reconstruct

MAX_POSITIONS = 6144
THREADS = 2              # threads of the calibration passes
RIDGE = 1e-3


# -- the fit ---------------------------------------------------------------

def _conv_patches(x, p, kh, kw, d, M, groups, positions):
    """Input patches at sampled output positions: [groups, P, M, T, d]."""
    n, c, h, w = x.shape
    s, pd = p["stride"], p["pad"]
    cg = c // groups
    xp = np.pad(x, ((0, 0), (0, 0), (pd, pd), (pd, pd)))
    ni, oh, ow = positions
    T = kh * kw
    out = np.zeros((groups, len(ni), M * d, T), np.float32)
    for i in range(kh):
        for j in range(kw):
            v = xp[ni, :, oh * s + i, ow * s + j]          # [P, C]
            for g in range(groups):
                out[g, :, :cg, i * kw + j] = v[:, g * cg:(g + 1) * cg]
    return out.reshape(groups, len(ni), M, d, T).transpose(0, 1, 2, 4, 3)


def _solve_codebook(Ab, bb, Cm, ridge, diagonal):
    """The codebook step's normal equations (blocks Ab [K, K, d, d], right side
    bb [K, d]) with a ridge towards the current codewords Cm.  With one tap
    (1x1 convolutions, fully-connected layers) only codeword k meets codeword
    k: K independent d x d systems.  Otherwise the system is symmetric
    positive definite (a Gram matrix plus a ridge): Cholesky, with SciPy where
    installed (about 3x faster than a general solve at K d = 1024)."""
    K, d = bb.shape
    if diagonal:
        blocks = Ab[np.arange(K), np.arange(K)]                       # [K, d, d]
        lam = ridge * (np.trace(blocks, axis1=1, axis2=2).sum() / (K * d) + 1e-12)
        rhs = bb + lam * Cm
        return np.linalg.solve(blocks + lam * np.eye(d), rhs[..., None])[..., 0]
    Amat = Ab.transpose(0, 2, 1, 3).reshape(K * d, K * d)
    lam = ridge * (np.trace(Amat) / (K * d) + 1e-12)
    A = Amat + lam * np.eye(K * d)
    rhs = bb.reshape(-1) + lam * Cm.reshape(-1)
    try:
        from scipy.linalg import cho_factor, cho_solve
        return cho_solve(cho_factor(A, check_finite=False), rhs,
                         check_finite=False).reshape(K, d)
    except ImportError:
        return np.linalg.solve(A, rhs).reshape(K, d)
    except np.linalg.LinAlgError:              # not positive definite in floating point
        return np.linalg.solve(A, rhs).reshape(K, d)


def _refine(pat, R, group_of, C, A, iters, ridge=RIDGE):
    """Alternating least squares.  pat [G, P, M, T, d] input patches per group,
    R [Cout, P] target responses (bias removed), group_of [Cout], C [M, K, d]
    codebook, A [Cout, T, M] indices.  Returns refined (C, A)."""
    G, P, M, T, d = pat.shape
    K = C.shape[1]
    cout = R.shape[0]
    C = C.astype(np.float64).copy()
    A = A.copy()
    pat64 = pat.astype(np.float64)
    # Gram matrices per group and subspace: [G, M, T, T, d, d]
    gram = np.einsum("gpmtd,gpmue->gmtude", pat64, pat64, optimize=True)

    def contrib(m):
        # [Cout, P]: sum over taps of c_{A[co,t,m]} . x_t
        out = np.empty((cout, P))
        for g in range(G):
            cos = np.nonzero(group_of == g)[0]
            W = C[m][A[cos, :, m]]                       # [n, T, d]
            out[cos] = np.einsum("ntd,ptd->np", W, pat64[g, :, m], optimize=True)
        return out

    # the response of all subspaces; each subspace's own part is recomputed when
    # needed rather than kept (M parts of Cout x P would not fit in memory)
    total = np.zeros_like(R)
    for m in range(M):
        total += contrib(m)
    for _ in range(iters):
        for m in range(M):
            old_part = contrib(m)
            E = R - total + old_part                       # what subspace m should explain
            # q[co, t] = X_t^T E_co
            q = np.empty((cout, T, d))
            for g in range(G):
                cos = np.nonzero(group_of == g)[0]
                q[cos] = np.einsum("ptd,np->ntd", pat64[g, :, m], E[cos], optimize=True)
            # codebook step: normal equations in vec(C_m), blocks [K, K, d, d]
            Ab = np.zeros((K, K, d, d))
            bb = np.zeros((K, d))
            for g in range(G):
                cos = np.nonzero(group_of == g)[0]
                a = A[cos, :, m]                           # [n, T]
                for t in range(T):
                    np.add.at(bb, a[:, t], q[cos, t])
                    for u in range(T):
                        np.add.at(Ab, (a[:, t], a[:, u]), gram[g, m, t, u])
            C[m] = _solve_codebook(Ab, bb, C[m], ridge, T == 1)
            # index step: coordinate descent over taps, scored from Gram matrices
            cc = C[m]
            for g in range(G):
                cos = np.nonzero(group_of == g)[0]
                gm = gram[g, m]                            # [T, T, d, d]
                a = A[cos, :, m].copy()                    # [n, T]
                s = np.einsum("tuef,nuf->nte", gm, cc[a], optimize=True)  # [n, T, d]
                for t in range(T):
                    v = q[cos, t] - s[:, t] + np.einsum("ef,nf->ne", gm[t, t], cc[a[:, t]])
                    quad = np.einsum("ke,ef,kf->k", cc, gm[t, t], cc)
                    new = np.argmin(quad[None, :] - 2 * v @ cc.T, axis=1)
                    delta = cc[new] - cc[a[:, t]]
                    s += np.einsum("uef,nf->nue", gm[:, t], delta)
                    a[:, t] = new
                A[cos, :, m] = a
            total += contrib(m) - old_part
    # bias correction: each output's mean residual moves into its bias
    delta = (R - total).mean(axis=1)
    return C.astype(np.float32), A, delta


def conv_positions(n, out_shape, count, rng):
    """`count` sampled output positions (image, row, column) of a convolution
    run on n images, ordered by image (so batches of images take them in turn)."""
    _, oh, ow = out_shape
    total = n * oh * ow
    pick = np.sort(rng.choice(total, min(total, count), replace=False))
    ni, rest = np.divmod(pick, oh * ow)
    pi, pj = np.divmod(rest, ow)
    return ni, pi, pj


def fc_positions(n, count, rng):
    """Sampled images (rows) of a fully-connected layer, in order."""
    return (np.sort(rng.choice(n, min(n, count), replace=False)),)


def sample_outputs(y, pos, i0):
    """Rows [P, Cout] of a layer's output y (a batch starting at image i0) at
    the sampled positions that fall in it."""
    sel = (pos[0] >= i0) & (pos[0] < i0 + y.shape[0])
    ni = pos[0][sel] - i0
    if len(pos) == 1:
        return y.reshape(y.shape[0], -1)[ni]
    return y[ni, :, pos[1][sel], pos[2][sel]]


def sample_inputs(L, x, pos, i0, d, M):
    """Input patches [G, P, M, T, d] of layer L (x: its input for a batch
    starting at image i0) at the sampled positions in that batch."""
    sel = (pos[0] >= i0) & (pos[0] < i0 + x.shape[0])
    ni = pos[0][sel] - i0
    if L["type"] == "InnerProduct":
        X = x.reshape(x.shape[0], -1)[ni]
        Xp = np.zeros((len(ni), M * d), np.float32)
        Xp[:, :X.shape[1]] = X
        return Xp.reshape(1, len(ni), M, 1, d)
    p = L["params"]
    kh, kw = p["kernel"]
    return _conv_patches(x, p, kh, kw, d, M, p["group"], (ni, pos[1][sel], pos[2][sel]))


def refine_samples(L, pat, R, bias, codebook, indices, iters=4):
    """Refine one quantised layer from sampled input patches pat [G, P, M, T, d]
    and the dense network's responses R [P, Cout] at the same positions;
    returns (codebook, indices, bias, relative response error before, after)."""
    M, K, d = codebook.shape
    cout = indices.shape[0]
    R = (np.asarray(R, np.float64) - np.asarray(bias, np.float64)[None, :]).T   # [Cout, P]
    if L["type"] == "InnerProduct":
        A = indices.reshape(cout, 1, M).astype(np.int64)
        group_of = np.zeros(cout, np.int64)
    else:
        kh, kw = L["params"]["kernel"]
        A = indices.reshape(cout, kh * kw, M).astype(np.int64)
        group_of = np.arange(cout) // (cout // L["params"]["group"])

    def err(C, A, delta=0.0):
        out = np.zeros_like(R) + np.asarray(delta)[..., None]
        C64 = C.astype(np.float64)
        for g in range(pat.shape[0]):
            cos = np.nonzero(group_of == g)[0]
            for m in range(M):
                out[cos] += np.einsum("ntd,ptd->np", C64[m][A[cos, :, m]],
                                      pat[g, :, m].astype(np.float64), optimize=True)
        return float(np.linalg.norm(R - out) / max(np.linalg.norm(R), 1e-30))

    before = err(codebook, A)
    C2, A2, delta = _refine(pat, R, group_of, codebook, A, iters)
    after = err(C2, A2, delta)
    if after >= before:       # never make a layer worse
        return codebook, indices, bias, before, before
    return (C2, A2.reshape(indices.shape).astype(np.uint8), (bias + delta).astype(np.float32),
            before, after)


def _positions(L, n, out_shape, rng, count=MAX_POSITIONS):
    if L["type"] == "InnerProduct":
        return fc_positions(n, count, rng)
    return conv_positions(n, out_shape, count, rng)


def refine_layer(L, x_in, y_target, bias, codebook, indices, iters=4, seed=0):
    """Refine one quantised layer on its whole input x_in and the dense
    response y_target (arrays in memory); returns (codebook, indices, bias,
    relative response error before, after)."""
    rng = np.random.default_rng(seed)
    M, K, d = codebook.shape
    pos = _positions(L, x_in.shape[0], y_target.shape[1:], rng)
    return refine_samples(L, sample_inputs(L, x_in, pos, 0, d, M),
                          sample_outputs(y_target, pos, 0), bias, codebook, indices, iters)


def _ancestors(graph):
    """{layer: names of the layers its input depends on}."""
    made_by, anc = {}, {}
    for L in graph["layers"]:
        a = set()
        for b in L["bottom"]:
            if b in made_by:
                src = made_by[b]
                a |= anc[src] | {src}
        anc[L["name"]] = a
        for t in L["top"]:
            made_by[t] = L["name"]
    return anc


def error_correct(graph, weights, quantized, calib, iters=4, seed=0, log=None, progress=None,
                  errors=None, max_positions=MAX_POSITIONS):
    """Refine every quantised layer in graph order on calibration inputs calib
    [N, C, H, W] (an array, or a memory map: it is read in batches); returns the
    refined {layer: (codebook, indices, bias)}; errors (a dict), if given,
    receives each layer's relative response error after refinement.

    The activations are streamed: one pass of the dense network collects each
    layer's responses at its sampled positions; then, layer after layer, a
    pass of the network quantised so far (the layers already refined)
    collects its input patches there.  Layers that do not feed one another
    (the branches of a fire module) share a pass.  Memory is the samples
    plus one batch's activations, whatever N."""
    from .graph import infer_shapes
    log = log or (lambda m: None)
    layers = graph["layers"]
    shapes = infer_shapes(graph)
    n = len(calib)
    rng = np.random.default_rng(seed)
    index = {L["name"]: i for i, L in enumerate(layers)}
    todo = [L["name"] for L in layers if L["name"] in quantized]
    pos = {name: _positions(layers[index[name]], n, shapes[layers[index[name]]["top"][0]], rng,
                            max_positions) for name in todo}
    dense = {name: weights[name] for name in weights}
    bar = (progress or (lambda label, total: None))("error correction", len(todo) + 1)

    def batches():
        return stream(graph, calib)

    # the dense responses at every layer's positions, in one pass (the
    # runtime's kernels on dense weights; requested outputs come before any
    # fused ReLU, as the layers' responses are)
    t0 = time.perf_counter()
    resp = {name: [] for name in todo}
    model = dense_model(graph, dense, threads=THREADS, layers=max(index[n] for n in todo) + 1)
    for i0, x in batches():
        outs = model.forward(x, outputs=todo)
        for name in todo:
            resp[name].append(sample_outputs(outs[name], pos[name], i0))
    del model
    resp = {k: np.concatenate(v) for k, v in resp.items()}
    t_pass, t_fit = time.perf_counter() - t0, 0.0
    if bar:
        bar.update(1)
    anc = _ancestors(graph)
    producer = input_producers(graph)
    qparams = dict(dense)
    out = dict(quantized)
    pending = list(todo)
    while pending:
        # every pending layer whose input no pending layer feeds: one pass of
        # the network quantised so far, up to the last of them
        group = [name for name in pending if not (anc[name] & set(pending))]
        pats = {name: [] for name in group}
        t0 = time.perf_counter()
        model = dense_model(graph, qparams, threads=THREADS,
                            layers=max(index[n] for n in group) + 1)
        wanted = sorted({producer[n] for n in group if producer[n] is not None})
        for i0, x in batches():
            outs = model.forward(x, outputs=wanted) if wanted else {}
            for name in group:
                M, _, d = quantized[name][0].shape
                xin = x if producer[name] is None else outs[producer[name]]
                pats[name].append(sample_inputs(layers[index[name]], xin, pos[name], i0, d, M))
        del model
        t_pass += time.perf_counter() - t0
        for name in group:
            L = layers[index[name]]
            kind = "conv" if L["type"] == "Convolution" else "fc"
            w, b = weights[name]
            cb, idx = quantized[name][:2]
            t0 = time.perf_counter()
            cb, idx, bq, e0, e1 = refine_samples(L, np.concatenate(pats.pop(name), axis=1),
                                                 resp.pop(name), b, cb, idx, iters)
            t_fit += time.perf_counter() - t0
            out[name] = (cb, idx, bq)
            qparams[name] = (reconstruct(cb, idx, kind, w.shape), bq)
            log(f"  error correction {name:<18} response error {e0:.4f} -> {e1:.4f}")
            if errors is not None:
                errors[name] = e1
            if bar:
                bar.update(1)
            pending.remove(name)
    if bar:
        bar.close()
    log(f"  error correction: {t_pass:.1f} s running {n} calibration inputs through the network, "
        f"{t_fit:.1f} s fitting")
    return out
