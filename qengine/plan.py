"""Per-layer quantisation settings under a speed budget (qconvert --speedup).

One (d, K) for every layer is a poor trade: layers differ in how much work
they hold and in how much error product quantisation gives them.  For a
target theoretical speed-up S this chooses, per Convolution / InnerProduct
layer, either its dense weights or a subspace dimension d and codebook size K
from a small grid, so that the whole network needs at most 1/S of the dense
network's operations (multiply-adds plus table lookups, graph.layer_cost) and
the summed error of the layers is as small as the grid allows:

  - each candidate is k-means-quantised, and its error measured as the
    layer's relative response error ||Y - Y'||^2 / ||Y||^2 on calibration
    inputs fed through the dense network (without calibration inputs, the
    relative weight error ||W - W'||^2 / ||W||^2);
  - per layer, only the lower convex hull of (cost, error) is kept; the
    layers then move down their hulls greedily, always taking the step that
    adds the least error per operation saved, until the budget is met.

Candidates whose tables would cost as much as the dense layer are never
offered (the runtime would run them densely anyway).
"""
import numpy as np

from .errors import QEngineError
from .graph import infer_shapes
from .layers import QUANTIZABLE, layer_cost, subspace_inputs, subspaces

SUBDIMS = (2, 3, 4, 6, 8)
KS = (16, 32, 64, 128)
PLAN_ITERS = 10          # k-means iterations per candidate (the final run uses the full count)
MAX_PLAN_INPUTS = 8      # calibration inputs the errors are measured on


def operations(L, in_shape, out_shape, d=None, K=None):
    """A layer's theoretical operations per image: dense multiply-adds, or with
    (d, K) table multiply-adds plus lookups."""
    if d is None:
        return layer_cost(L, in_shape, out_shape)[0]
    _, table, lookups = layer_cost(L, in_shape, out_shape, K,
                                   subspaces(L, in_shape, d))
    return table + lookups


def candidates(L, in_shape, out_shape, subdims=SUBDIMS, ks=KS):
    """[(d, K, cost)] worth trying for one layer: cheaper than its dense form."""
    cin = subspace_inputs(L, in_shape)
    dense = operations(L, in_shape, out_shape)
    out = []
    for d in sorted(set(min(d, cin) for d in subdims)):
        for K in ks:
            cost = operations(L, in_shape, out_shape, d, K)
            if cost < dense:
                out.append((d, K, cost))
    return out


def _hull(points):
    """Lower convex hull, by increasing cost, of [(cost, err, option)], after
    dropping options that another beats on both cost and error."""
    pts = sorted(points, key=lambda p: (p[0], p[1]))
    front = []
    for p in pts:
        if not front or p[1] < front[-1][1]:
            front.append(p)
    hull = []
    for p in front:
        while len(hull) >= 2:
            (c1, e1, _), (c2, e2, _) = hull[-2], hull[-1]
            # drop hull[-1] if it lies on or above the segment hull[-2] -> p
            if (e2 - e1) * (p[0] - c1) >= (p[1] - e1) * (c2 - c1):
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def choose(options, budget):
    """options {layer: [(cost, err, option)]} (each with its dense form) -> {layer:
    option} with total cost <= budget and small summed error, or None if even the
    cheapest options exceed the budget."""
    hulls = {n: _hull(pts)[::-1] for n, pts in options.items()}   # most accurate first
    at = {n: 0 for n in hulls}
    total = sum(h[0][0] for h in hulls.values())
    while total > budget:
        best, best_rate = None, None
        for n, h in hulls.items():
            i = at[n]
            if i + 1 < len(h):
                saved = h[i][0] - h[i + 1][0]
                rate = (h[i + 1][1] - h[i][1]) / saved
                if best is None or rate < best_rate:
                    best, best_rate = n, rate
        if best is None:
            return None
        total -= hulls[best][at[best]][0] - hulls[best][at[best] + 1][0]
        at[best] += 1
    # the last step may have saved more than was needed: move layers back up
    # their hulls, the largest error regained first, while the budget holds
    while True:
        best = None
        for n, h in hulls.items():
            for j in range(at[n]):
                extra, gain = h[j][0] - h[at[n]][0], h[at[n]][1] - h[j][1]
                if total + extra <= budget and gain > 0 and (best is None or gain > best[0]):
                    best = (gain, n, j, extra)
        if best is None:
            break
        _, n, j, extra = best
        at[n], total = j, total + extra
    return {n: hulls[n][at[n]][2] for n in hulls}


def plan(graph, weights, speedup, calib=None, keep_dense=(), fixed=None, subdims=SUBDIMS,
         ks=KS, seed=0, log=None, progress=None):
    """Per-layer settings for a theoretical speed-up of `speedup` over the dense
    network: {layer: {"subdim": d, "k": K}} and the set of layers to keep dense.
    calib: inputs [N, C, H, W] for response errors (None: weight errors);
    keep_dense and fixed ({layer: {"subdim", "k"}}): the user's own choices, kept."""
    from .errcorr import apply_layer
    from .quantize import quantize_weights, reconstruct
    log = log or (lambda m: None)
    if not speedup >= 1.0:
        raise QEngineError(f"--speedup must be at least 1 (got {speedup})")
    shapes = infer_shapes(graph)
    weighted = [L for L in graph["layers"] if L["name"] in weights and L["type"] in QUANTIZABLE]
    dense_total = 0
    for L in graph["layers"]:
        if L["type"] in QUANTIZABLE:
            dense_total += operations(L, shapes[L["bottom"][0]], shapes[L["top"][0]])
    fixed = dict(fixed or {})
    n_cand = {}
    for L in weighted:
        n, ins, outs = L["name"], shapes[L["bottom"][0]], shapes[L["top"][0]]
        if n in keep_dense:
            n_cand[n] = []
        elif n in fixed:
            d, K = int(fixed[n]["subdim"]), int(fixed[n]["k"])
            n_cand[n] = [(d, K, operations(L, ins, outs, d, K))]
        else:
            n_cand[n] = candidates(L, ins, outs, subdims, ks)
    last_use = {}
    for i, L in enumerate(graph["layers"]):
        for b in L["bottom"]:
            last_use[b] = i
    bar = (progress or (lambda label, total: None))("planning", sum(map(len, n_cand.values())))
    x = None
    if calib is not None:
        x = np.ascontiguousarray(calib[:MAX_PLAN_INPUTS], np.float32)
        log(f"plan: response errors on {len(x)} calibration inputs")
    else:
        log("plan: no calibration inputs, so weight errors stand in for response errors")
    blobs = {graph["input"]["name"]: x}
    options, dense_ops = {}, {}
    for i, L in enumerate(graph["layers"]):
        n = L["name"]
        xs = [blobs[b] for b in L["bottom"]] if x is not None else None
        y = None
        if n in weights and L["type"] not in QUANTIZABLE:      # a Scale: as it is
            y = apply_layer(L, xs, weights[n]) if xs is not None else None
        elif n in weights:
            w, b = weights[n]
            kind = "conv" if L["type"] == "Convolution" else "fc"
            dense_ops[n] = operations(L, shapes[L["bottom"][0]], shapes[L["top"][0]])
            pts = [] if n in fixed else [(dense_ops[n], 0.0, None)]
            if xs is not None:
                y = apply_layer(L, xs, (w, b))
                y_energy = max(float(np.sum(np.square(y, dtype=np.float64))), 1e-30)
            w_energy = max(float(np.sum(np.square(w, dtype=np.float64))), 1e-30)
            for d, K, cost in n_cand[n]:
                cb, idx = quantize_weights(w, kind, d, K, iters=PLAN_ITERS, seed=seed)
                wq = reconstruct(cb, idx, kind, w.shape)
                if xs is not None:
                    yq = apply_layer(L, xs, (wq, b))
                    err = float(np.sum(np.square(y - yq, dtype=np.float64))) / y_energy
                else:
                    err = float(np.sum(np.square(w - wq, dtype=np.float64))) / w_energy
                pts.append((cost, err, (d, int(cb.shape[1]))))
                if bar:
                    bar.update(1)
            options[n] = pts
        elif xs is not None:
            y = apply_layer(L, xs)
        if xs is not None:
            for b in L["bottom"]:
                if last_use.get(b, -1) <= i:
                    blobs.pop(b, None)
            for t in L["top"]:
                blobs[t] = y
    if bar:
        bar.close()
    # operations outside the planned layers (unweighted Convolution / InnerProduct)
    fixed = dense_total - sum(dense_ops.values())
    picked = choose(options, dense_total / speedup - fixed)
    if picked is None:
        best = sum(min(p[0] for p in opts) for opts in options.values()) + fixed
        raise QEngineError(f"a {speedup:g}x theoretical speed-up is out of reach: the cheapest "
                           f"settings on the grid give {dense_total / best:.2f}x")
    layer_opts, dense, total = {}, set(keep_dense), fixed
    for n, opt in picked.items():
        cost, err, _ = next(p for p in options[n] if p[2] == opt)
        total += cost
        if opt is None:
            dense.add(n)
            log(f"  plan {n:<18} dense")
        else:
            layer_opts[n] = {"subdim": opt[0], "k": opt[1]}
            log(f"  plan {n:<18} d={opt[0]} K={opt[1]:<4} error {err:.4f} "
                f"({dense_ops[n] / cost:.1f}x fewer operations)")
    log(f"plan: {dense_total / total:.2f}x fewer operations than the dense network "
        f"(target {speedup:g}x)")
    return layer_opts, dense
