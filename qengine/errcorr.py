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
import numpy as np

from . import _kernels
from .quantize import reconstruct
from .reference import LAYERS
from .layers.pooling import pool_into
from .layers.weighted import blocked_conv_weights

MAX_POSITIONS = 6144
RIDGE = 1e-3


# -- running the graph (dense and quantised side by side) -----------------

def _conv(x, w, b, p):
    n, c, h, wd = x.shape
    kh, kw = w.shape[2:]
    g = p["group"]
    oh, ow = _kernels.conv_output_size(h, wd, kh, kw, p["stride"], p["pad"])
    out = np.empty((n, w.shape[0], oh, ow), np.float32)
    ws = np.empty(_kernels.conv_workspace_floats(c // g, h, wd, kh, kw, p["stride"], p["pad"], 0, 0,
                                                 w.shape[0] // g), np.float32)
    wblk = blocked_conv_weights(np.ascontiguousarray(w, np.float32), g)
    _kernels.conv_dense(np.ascontiguousarray(x, np.float32), wblk, b, kh, kw, p["stride"],
                        p["pad"], False, out, ws, 2)
    return out


def _fc(x, w, b):
    x2 = np.ascontiguousarray(x.reshape(x.shape[0], -1), np.float32)
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    _kernels.fc_dense(x2, np.ascontiguousarray(w), b, False, out, 2)
    return out


def _pool(p, xs, wb):
    from .layers import record
    x = np.ascontiguousarray(xs[0], np.float32)
    n, c, h, w = x.shape
    out = np.empty((n,) + record("Pooling").shape(p, [(c, h, w)], "pooling"), np.float32)
    return pool_into(p, x, out)


# the reference's layers with the C kernels for the heavy ones (calibration runs are large)
FAST_LAYERS = {
    "Convolution": lambda p, xs, wb: _conv(xs[0], wb[0], wb[1], p),
    "InnerProduct": lambda p, xs, wb: _fc(xs[0], wb[0], wb[1]),
    "ReLU": lambda p, xs, wb: np.where(xs[0] > 0, xs[0], xs[0] * np.float32(p["negative_slope"])),
    "Pooling": _pool,
}


def apply_layer(L, xs, wb=None):
    return dict(LAYERS, **FAST_LAYERS)[L["type"]](L["params"], xs, wb)


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
            Amat = Ab.transpose(0, 2, 1, 3).reshape(K * d, K * d)
            lam = ridge * (np.trace(Amat) / (K * d) + 1e-12)
            theta = np.linalg.solve(Amat + lam * np.eye(K * d), bb.reshape(-1) + lam * C[m].reshape(-1))
            C[m] = theta.reshape(K, d)
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


def refine_layer(L, x_in, y_target, bias, codebook, indices, iters=4, seed=0):
    """Refine one quantised layer; returns (codebook, indices, bias, relative response
    error before, after)."""
    rng = np.random.default_rng(seed)
    M, K, d = codebook.shape
    if L["type"] == "InnerProduct":
        X = x_in.reshape(x_in.shape[0], -1).astype(np.float32)
        n, cin = X.shape
        if n > MAX_POSITIONS:
            X = X[rng.choice(n, MAX_POSITIONS, replace=False)]
            y_target = None if y_target is None else y_target
        Xp = np.zeros((X.shape[0], M * d), np.float32)
        Xp[:, :cin] = X
        pat = Xp.reshape(1, X.shape[0], M, 1, d)
        R = (y_target - bias).T.astype(np.float64)       # [Cout, P]
        A = indices.reshape(indices.shape[0], 1, M).astype(np.int64)
        group_of = np.zeros(indices.shape[0], np.int64)
    else:
        p = L["params"]
        kh, kw = p["kernel"]
        G = p["group"]
        n = x_in.shape[0]
        oh, ow = y_target.shape[2:]
        total = n * oh * ow
        pick = rng.choice(total, min(total, MAX_POSITIONS), replace=False)
        ni, rest = np.divmod(pick, oh * ow)
        pi, pj = np.divmod(rest, ow)
        pat = _conv_patches(x_in, p, kh, kw, d, M, G, (ni, pi, pj))
        R = (y_target[ni, :, pi, pj] - bias[None, :]).T.astype(np.float64)
        cout = indices.shape[0]
        A = indices.reshape(cout, kh * kw, M).astype(np.int64)
        group_of = np.arange(cout) // (cout // G)

    def err(C, A, delta=0.0):
        out = np.zeros_like(R) + np.asarray(delta)[..., None]
        C64 = C.astype(np.float64)
        for g in range(pat.shape[0]):
            cos = np.nonzero(group_of == g)[0]
            for m in range(M):
                out[cos] += np.einsum("ntd,ptd->np", C64[m][A[cos, :, m]], pat[g, :, m].astype(np.float64),
                                      optimize=True)
        return float(np.linalg.norm(R - out) / max(np.linalg.norm(R), 1e-30))

    before = err(codebook, A)
    C2, A2, delta = _refine(pat, R, group_of, codebook, A, iters)
    after = err(C2, A2, delta)
    if after >= before:       # never make a layer worse
        return codebook, indices, bias, before, before
    return (C2, A2.reshape(indices.shape).astype(np.uint8), (bias + delta).astype(np.float32),
            before, after)


def error_correct(graph, weights, quantized, calib, iters=4, seed=0, log=None, progress=None):
    """Refine every quantised layer in graph order on calibration inputs calib
    [N, C, H, W]; returns the refined {layer: (codebook, indices, bias)}."""
    log = log or (lambda m: None)
    calib = np.ascontiguousarray(calib, np.float32)
    name_in = graph["input"]["name"]
    dense, quant = {name_in: calib}, {name_in: calib}
    out = dict(quantized)
    for L in graph["layers"]:
        n = L["name"]
        xd = [dense[b] for b in L["bottom"]]
        xq = [quant[b] for b in L["bottom"]]
        if n in weights:
            w, b = weights[n]
            yd = apply_layer(L, xd, (w, b))
            if n in quantized:
                kind = "conv" if L["type"] == "Convolution" else "fc"
                cb, idx = quantized[n][:2]
                cb, idx, bq, e0, e1 = refine_layer(L, xq[0], yd, b, cb, idx, iters, seed)
                out[n] = (cb, idx, bq)
                log(f"  error correction {n:<18} response error {e0:.4f} -> {e1:.4f}")
                wq = reconstruct(cb, idx, kind, w.shape)
                yq = apply_layer(L, xq, (wq, bq))
            else:
                yq = apply_layer(L, xq, (w, b))
        else:
            yd, yq = apply_layer(L, xd), apply_layer(L, xq)
        for t in L["top"]:
            dense[t], quant[t] = yd, yq
        for b in L["bottom"]:
            if all(b not in L2["bottom"] for L2 in graph["layers"][graph["layers"].index(L) + 1:]):
                dense.pop(b, None)
                quant.pop(b, None)
    return out
