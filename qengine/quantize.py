"""Product quantisation of dense Caffe models (Wu et al. 2016).

Every weighted layer's weights are split into subspaces of d input channels;
each subspace gets a codebook of K codewords by k-means (k-means++ seeding,
Lloyd iterations, vectorised across subspaces, deterministic for a seed) and
every weight sub-vector becomes a codeword index.  Convolutions are quantised
per kernel position across subspaces of the input channels (all positions and
both groups share one codebook per subspace); fully-connected layers across
subspaces of the input dimension.  Error correction (errcorr.py) then refines
codebooks and indices to fit each layer's response on calibration inputs.
"""
import numpy as np

from .errors import ModelError
from .layers.weighted import subspace_count

MAX_CHUNK_FLOATS = 16 * 1024 * 1024  # distance matrix per k-means step


def subspace_vectors(w, kind, d):
    """Training vectors [M, N, d] of a layer's weights (zero-padded last subspace).
    conv w [Cout, Cg, KH, KW] -> N = Cout*KH*KW; fc w [Cout, Cin] -> N = Cout."""
    if kind == "conv":
        cout, cg, kh, kw = w.shape
        M = subspace_count(cg, d)
        wp = np.zeros((cout, M * d, kh, kw), np.float32)
        wp[:, :cg] = w
        # [Cout, M, d, KH, KW] -> [M, Cout, KH, KW, d]
        v = wp.reshape(cout, M, d, kh, kw).transpose(1, 0, 3, 4, 2)
        return np.ascontiguousarray(v.reshape(M, cout * kh * kw, d))
    cout, cin = w.shape
    M = subspace_count(cin, d)
    wp = np.zeros((cout, M * d), np.float32)
    wp[:, :cin] = w
    return np.ascontiguousarray(wp.reshape(cout, M, d).transpose(1, 0, 2))


def indices_shape(w, kind, d):
    if kind == "conv":
        cout, cg, kh, kw = w.shape
        return (cout, kh, kw, subspace_count(cg, d))
    return (w.shape[0], subspace_count(w.shape[1], d))


def assign(X, C, with_dist=False):
    """Nearest codeword of every vector: X [S, N, d], C [S, K, d] -> [S, N] int64
    (and, with with_dist, the squared distances [S, N])."""
    S, N, d = X.shape
    K = C.shape[1]
    out = np.empty((S, N), np.int64)
    dist = np.empty((S, N), np.float32) if with_dist else None
    step = max(1, MAX_CHUNK_FLOATS // max(1, N * K))
    cn = (C.astype(np.float32) ** 2).sum(-1)
    for s0 in range(0, S, step):
        x = X[s0:s0 + step]
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 does not change the argmin
        D = np.matmul(x, C[s0:s0 + step].transpose(0, 2, 1))
        D *= -2
        D += cn[s0:s0 + step, None, :]
        a = D.argmin(-1)
        out[s0:s0 + step] = a
        if with_dist:
            dd = np.take_along_axis(D, a[..., None], -1)[..., 0] + (x ** 2).sum(-1)
            dist[s0:s0 + step] = np.maximum(dd, 0)
    return (out, dist) if with_dist else out


def kmeans(X, K, iters=25, seed=0, progress=None):
    """Batched k-means over S independent subspaces: X [S, N, d] -> (C [S, K, d],
    A [S, N]).  k-means++ seeding; an emptied cluster takes the point farthest
    from its codeword."""
    X = np.asarray(X, np.float32)
    S, N, d = X.shape
    K = max(1, min(K, N))
    rng = np.random.default_rng(seed)
    rows = np.arange(S)
    # k-means++ seeding, all subspaces at once
    C = np.empty((S, K, d), np.float32)
    C[:, 0] = X[rows, rng.integers(0, N, S)]
    D = ((X - C[:, :1]) ** 2).sum(-1)
    for k in range(1, K):
        cum = np.cumsum(D, axis=1, dtype=np.float64)
        tot = cum[:, -1]
        u = rng.random(S) * tot
        pick = np.minimum((cum < u[:, None]).sum(1), N - 1)
        pick = np.where(tot > 0, pick, rng.integers(0, N, S))
        C[:, k] = X[rows, pick]
        D = np.minimum(D, ((X - C[:, k:k + 1]) ** 2).sum(-1))
    A = None
    for it in range(iters):
        prev = A
        A = assign(X, C)
        if prev is not None and np.array_equal(A, prev):
            if progress:
                progress.update(iters - it)
            break
        flat = (rows[:, None] * K + A).reshape(-1)
        counts = np.bincount(flat, minlength=S * K).reshape(S, K)
        sums = np.stack([np.bincount(flat, weights=X[..., j].reshape(-1), minlength=S * K)
                         for j in range(d)], -1).reshape(S, K, d)
        newC = np.where(counts[..., None] > 0, sums / np.maximum(counts, 1)[..., None], C)
        empty = np.argwhere(counts == 0)
        if len(empty):
            _, dist = assign(X, C, with_dist=True)
            far = np.argsort(-dist, axis=1)
            used = {}
            for s, k in empty:
                j = used.get(s, 0)
                used[s] = j + 1
                newC[s, k] = X[s, far[s, j % N]]
        C = newC.astype(np.float32)
        if progress:
            progress.update(1)
    A = assign(X, C)
    return C, A


def quantize_weights(w, kind, d, K, iters=25, seed=0, progress=None):
    """Codebook [M, K, d] and uint8 indices of one layer's weights."""
    X = subspace_vectors(w, kind, d)
    C, A = kmeans(X, K, iters, seed, progress)
    if C.shape[1] > 256:
        raise ModelError(f"K={C.shape[1]} codewords do not fit 8-bit indices")
    return C, assignments_to_indices(A, w, kind, d)


def assignments_to_indices(A, w, kind, d):
    """Codeword assignments [M, N] of subspace_vectors(w, kind, d) as the
    layer's uint8 indices: conv [Cout, KH, KW, M], fc [Cout, M]."""
    shp = indices_shape(w, kind, d)
    if kind == "conv":
        cout, kh, kw, M = shp
        idx = A.reshape(M, cout, kh, kw).transpose(1, 2, 3, 0)
    else:
        idx = A.T
    return np.ascontiguousarray(idx, np.uint8)


def reconstruct(codebook, indices, kind, shape):
    """Dense weights from a codebook and indices (the inverse of quantize_weights)."""
    from .layers.weighted import dequantize_conv, dequantize_fc
    if kind == "conv":
        return dequantize_conv(codebook, indices, shape[1])
    return dequantize_fc(codebook, indices, shape[1])
