"""Per-layer quantisation settings under a speed budget (qconvert --speedup).

One (d, K) for every layer is a poor trade: layers differ in how much time
they take and in how much error product quantisation gives them.  For a
target speed-up S this chooses, per Convolution / InnerProduct layer, either
its dense weights or a subspace dimension d and codebook size K from a small
grid, so that the whole network runs in at most 1/S of the time of the same
network run dense by qengine, and the summed error of the layers is as small
as the grid allows:

  - every form of every layer is priced by what it costs on this machine
    (costmodel.CostModel: the runtime's own kernels timed on a one-layer
    model; --plan-on operations prices multiply-adds plus lookups instead);
    forms no faster than the dense layer are dropped before any k-means;
  - each remaining candidate is k-means-quantised, and its error measured as
    the layer's relative response error ||Y - Y'||^2 / ||Y||^2 on calibration
    inputs fed through the dense network (without calibration inputs, the
    relative weight error ||W - W'||^2 / ||W||^2);
  - per layer, only the lower convex hull of (cost, error) is kept; the
    layers then move down their hulls greedily, always taking the step that
    adds the least error per second saved, until the budget is met.
"""
import numpy as np

from .errors import QEngineError
from .graph import infer_shapes
from .costmodel import operations
from .layers import QUANTIZABLE, subspace_inputs

MIN_GAIN = 0.03          # a measured form must be this much faster than dense to be tried
# --min-agreement's default: top-1 agreement with the dense network on held-out
# calibration images (README, "Choosing the settings": chosen so that the
# top-1 drop on images the converter never saw is about one point)
DEFAULT_MIN_AGREEMENT = 0.95
HOLDOUT_EVERY = 4        # every 4th calibration image is held out from fitting
MIN_HELD_OUT = 8
LADDER = 24              # speed-ups tried between 1x and the fastest plan (geometric)
PROBE_IMAGES = 128       # fit images a probe's error correction uses
PROBE_POSITIONS = 2048   # ... and sampled positions per layer

SUBDIMS = (2, 3, 4, 6, 8)
KS = (16, 32, 64, 128)
PLAN_ITERS = 10          # k-means iterations per candidate (the final run uses the full count)
MAX_PLAN_INPUTS = 8      # calibration inputs the errors are measured on


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


class Planner:
    """Prices and errors of every candidate form of every weighted layer,
    measured once; then choose(speedup) for any number of speed-ups.

    costs: a costmodel.CostModel (seconds measured on this machine) or
    costmodel.OperationCounts; calib: inputs [N, C, H, W] for response
    errors (the first MAX_PLAN_INPUTS are used; None: weight errors);
    keep_dense and fixed ({layer: {"subdim", "k"}}): the user's own choices."""

    def __init__(self, graph, weights, costs, calib=None, keep_dense=(), fixed=None,
                 subdims=SUBDIMS, ks=KS, seed=0, log=None, progress=None):
        self.graph, self.weights, self.costs = graph, weights, costs
        self.log = log or (lambda m: None)
        self.seed = seed
        self.shapes = infer_shapes(graph)
        self.by_name = {L["name"]: L for L in graph["layers"]}
        fixed = dict(fixed or {})
        self.profile, wall = costs.network(graph, weights)
        self.dense_total = max(wall, sum(self.profile.values()))
        self.prices, forms, self.free, self.free_error = {}, {}, {}, {}
        measured = isinstance(getattr(costs, "mode", None), str) and costs.mode != "operations"
        gain = MIN_GAIN if measured else 0.0
        weighted = [L for L in graph["layers"] if L["name"] in weights and L["type"] in QUANTIZABLE]
        bar = (progress or (lambda label, total: None))("pricing layer forms", len(weighted))
        for L in weighted:
            n, ins = L["name"], self.shapes[L["bottom"][0]]
            cin = subspace_inputs(L, ins)
            if n in keep_dense:
                want = []
            elif n in fixed:
                want = [(int(fixed[n]["subdim"]), int(fixed[n]["k"]))]
            else:
                want = [(d, K) for d in sorted(set(min(d, cin) for d in subdims)) for K in ks]
            self.prices[n] = costs.forms(L, ins, want)
            dense = self.prices[n][None]
            forms[n] = [f for f in want if n in fixed or self.prices[n][f] < dense * (1 - gain)]
            # a form the runtime runs on its dequantized weights costs exactly the
            # dense time: free to store quantized (a smaller file, same speed); the
            # most accurate of them (smallest d, then largest K) is kept in reserve
            free = [f for f in want if measured and n not in fixed
                    and self.prices[n][f] == dense]
            if free:
                self.free[n] = min(free, key=lambda f: (f[0], -f[1]))
            if bar:
                bar.update(1)
        if bar:
            bar.close()
        # the time outside the planned layers: unweighted layers, and each
        # weighted layer's share that its one-layer timing does not see
        self.rest = self.dense_total - sum(p[None] for p in self.prices.values())
        self.fixed = fixed
        self.kmeans = {}
        self.options = self._errors(forms, calib, progress)

    def _errors(self, forms, calib, progress):
        from .calibration import apply_layer
        from .quantize import quantize_weights, reconstruct
        graph, weights = self.graph, self.weights
        last_use = {}
        for i, L in enumerate(graph["layers"]):
            for b in L["bottom"]:
                last_use[b] = i
        bar = (progress or (lambda label, total: None))("candidate errors",
                                                         sum(map(len, forms.values())))
        x = None
        if calib is not None:
            x = np.ascontiguousarray(calib[:MAX_PLAN_INPUTS], np.float32)
            self.log(f"plan: response errors on {len(x)} calibration inputs")
        else:
            self.log("plan: no calibration inputs, so weight errors stand in for response errors")
        blobs = {graph["input"]["name"]: x}
        options = {}
        for i, L in enumerate(graph["layers"]):
            n = L["name"]
            xs = [blobs[b] for b in L["bottom"]] if x is not None else None
            y = None
            if n in weights and L["type"] not in QUANTIZABLE:      # a Scale: as it is
                y = apply_layer(L, xs, weights[n]) if xs is not None else None
            elif n in weights:
                w, b = weights[n]
                kind = "conv" if L["type"] == "Convolution" else "fc"
                pts = [] if n in self.fixed else [(self.prices[n][None], 0.0, None)]
                if xs is not None:
                    y = apply_layer(L, xs, (w, b))
                    y_energy = max(float(np.sum(np.square(y, dtype=np.float64))), 1e-30)
                w_energy = max(float(np.sum(np.square(w, dtype=np.float64))), 1e-30)
                self.kmeans[n] = {}
                extra = [self.free[n]] if n in self.free and self.free[n] not in forms[n] else []
                for d, K in forms[n] + extra:
                    cb, idx = quantize_weights(w, kind, d, K, iters=PLAN_ITERS, seed=self.seed)
                    self.kmeans[n][(d, K)] = (cb, idx)
                    wq = reconstruct(cb, idx, kind, w.shape)
                    if xs is not None:
                        yq = apply_layer(L, xs, (wq, b))
                        err = float(np.sum(np.square(y - yq, dtype=np.float64))) / y_energy
                    else:
                        err = float(np.sum(np.square(w - wq, dtype=np.float64))) / w_energy
                    if (d, K) in forms[n]:
                        pts.append((self.prices[n][(d, K)], err, (d, K)))
                    else:
                        self.free_error[n] = err
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
        return options

    def predict(self, choice):
        """(predicted cost of the network, {layer: cost}) with choice {layer:
        (d, K) or None} (costmodel.predict)."""
        from .costmodel import predict
        total, per, _ = predict(self.graph, self.weights, choice, self.costs)
        return total, per

    def max_speedup(self):
        """The largest speed-up the candidate forms can give."""
        best = sum(min(p[0] for p in opts) for opts in self.options.values()) + self.rest
        return self.dense_total / best

    def choose(self, speedup):
        """{layer: (d, K) or None (dense)} for a speed-up of `speedup` with the
        least summed error, or None when it is out of reach."""
        picked = choose(self.options, self.dense_total / speedup - self.rest)
        return picked

    def settings(self, choice):
        """(layer_opts {layer: {"subdim", "k"}}, dense layer names) of a choice."""
        opts = {n: {"subdim": f[0], "k": f[1]} for n, f in choice.items() if f is not None}
        return opts, {n for n, f in choice.items() if f is None}

    def error(self, n, form):
        if form == self.free.get(n) and n in self.free_error:
            return self.free_error[n]
        return next(p[1] for p in self.options[n] if p[2] == form)

    def describe(self, choice, unit):
        """Log lines of a choice: each layer's form, error and predicted gain."""
        for n, f in choice.items():
            if f is None:
                self.log(f"  plan {n:<24} dense")
            else:
                self.log(f"  plan {n:<24} d={f[0]} K={f[1]:<4} error {self.error(n, f):.4f} "
                         f"({self.prices[n][None] / self.prices[n][f]:.2f}x faster{unit})")


def plan(graph, weights, speedup, calib=None, keep_dense=(), fixed=None, subdims=SUBDIMS,
         ks=KS, seed=0, log=None, progress=None, costs=None):
    """Per-layer settings for a speed-up of `speedup` over the dense network:
    ({layer: {"subdim": d, "k": K}}, layers kept dense, the Planner).  costs:
    a costmodel.CostModel (default: measured in fast mode on this machine) or
    costmodel.OperationCounts."""
    from .costmodel import CostModel
    log = log or (lambda m: None)
    if not speedup >= 1.0:
        raise QEngineError(f"--speedup must be at least 1 (got {speedup})")
    costs = CostModel() if costs is None else costs
    pl = Planner(graph, weights, costs, calib, keep_dense, fixed, subdims, ks, seed, log,
                 progress)
    picked = pl.choose(speedup)
    what = "operations" if costs.mode == "operations" else f"time on this machine ({costs.isa})"
    if picked is None:
        raise QEngineError(f"a {speedup:g}x speed-up is out of reach: the fastest settings on the "
                           f"grid give {pl.max_speedup():.2f}x less {what}")
    pl.describe(picked, "" if costs.mode != "operations" else " (operations)")
    total, _ = pl.predict(picked)
    log(f"plan: {pl.dense_total / total:.2f}x less {what} than the dense network "
        f"(target {speedup:g}x)")
    layer_opts, dense = pl.settings(picked)
    return layer_opts, dense | set(keep_dense), pl


def holdout(n):
    """(fit, held-out) indices of n calibration images: every HOLDOUT_EVERY-th
    held out (the set is a random sample, so any stride is as good)."""
    if n < HOLDOUT_EVERY * MIN_HELD_OUT:
        raise QEngineError(f"choosing the settings needs at least "
                           f"{HOLDOUT_EVERY * MIN_HELD_OUT} calibration images "
                           f"({MIN_HELD_OUT} held out to measure agreement), got {n}: give more "
                           f"(--calib-count) or choose the settings (--speedup ...)")
    idx = np.arange(n)
    held = idx[HOLDOUT_EVERY - 1::HOLDOUT_EVERY]
    return np.setdiff1d(idx, held), held


class AgreementSearch:
    """The fastest plan whose top-1 agreement with the dense network on
    held-out images is at least min_agreement.

    Plans for a ladder of speed-ups (the Planner's least-error choice for
    each) are ordered fastest first; a binary search finds the fastest whose
    network agrees enough.  Each probe is the plan's k-means candidates
    refined by a short error correction (PROBE_IMAGES fit images,
    PROBE_POSITIONS positions per layer): k-means alone would judge the
    fast plans far worse than error correction leaves them.  The final model
    (full k-means and error correction) is measured again; when it falls
    short, slower() gives the next slower plan."""

    def __init__(self, graph, weights, costs, fit, held, min_agreement, keep_dense=(), seed=0,
                 log=None, progress=None, subdims=SUBDIMS, ks=KS):
        from .calibration import Subset, top1
        self.log = log or (lambda m: None)
        self.graph, self.weights, self.held = graph, weights, held
        self.min_agreement, self.seed = min_agreement, seed
        self.keep_dense = set(keep_dense)
        self.planner = Planner(graph, weights, costs, fit, keep_dense=keep_dense, subdims=subdims,
                               ks=ks, seed=seed, log=log, progress=progress)
        n = len(fit)
        self.probe_fit = Subset(fit, np.linspace(0, n - 1, min(n, PROBE_IMAGES)).astype(int)) \
            if n > PROBE_IMAGES else fit
        self.dense_top1 = top1(graph, weights, held)
        top = self.planner.max_speedup()
        ladder = [top ** (i / (LADDER - 1)) for i in range(LADDER - 1, -1, -1)]
        self.plans = []
        for s in ladder:
            c = self.planner.choose(s * (1 - 1e-9))
            if c is not None and c not in self.plans:
                self.plans.append(c)
        dense = {n: None for n in self.planner.options}
        if dense not in self.plans:
            self.plans.append(dense)
        self.agreements = {}
        self.at = None
        self.progress = progress

    def speedup(self, i):
        total, _ = self.planner.predict(self.plans[i])
        return self.planner.dense_total / total

    def agreement(self, i):
        """Held-out top-1 agreement of plan i after a probe's error correction."""
        from .calibration import dequantized_params, top1
        from .errcorr import error_correct
        if i not in self.agreements:
            quantized = {n: self.planner.kmeans[n][f] for n, f in self.plans[i].items()
                         if f is not None}
            quantized = error_correct(self.graph, self.weights, quantized, self.probe_fit,
                                      iters=2, seed=self.seed,
                                      max_positions=PROBE_POSITIONS)
            params = dequantized_params(self.graph, self.weights, quantized)
            self.agreements[i] = float(np.mean(top1(self.graph, params, self.held)
                                               == self.dense_top1))
            self.log(f"  plan {self.speedup(i):5.2f}x faster: held-out agreement "
                     f"{self.agreements[i]:.2%} (a short error correction)")
        return self.agreements[i]

    def best(self):
        """The fastest plan that agrees enough (the dense one if none does)."""
        lo, hi = 0, len(self.plans) - 1            # plans[hi] is dense: agreement 1
        self.agreements[hi] = 1.0
        steps = max(1, (hi - lo).bit_length())
        bar = (self.progress or (lambda label, total: None))("agreement search", steps)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.agreement(mid) >= self.min_agreement:
                hi = mid
            else:
                lo = mid + 1
            if bar:
                bar.update(1)
        if bar:
            bar.close()
        self.at = lo
        self.log(f"chosen: the plan {self.speedup(lo):.2f}x faster than the dense network "
                 f"(probe agreement {self.agreements[lo]:.2%})")
        self._compress(lo)
        self.planner.describe(self.plans[lo], "")
        return self.plans[lo]

    def _compress(self, i):
        """The layers plan i leaves dense, stored quantized where that costs no
        time (a form the runtime runs on its dequantized weights), if the
        held-out agreement still holds: the same speed in a smaller file."""
        free = self.planner.free
        plan = {n: (free[n] if f is None and n in free and n not in self.keep_dense else f)
                for n, f in self.plans[i].items()}
        if plan == self.plans[i]:
            return
        n_free = sum(1 for n in plan if plan[n] != self.plans[i][n])
        self.plans.insert(i, plan)
        self.agreements = {(k + 1 if k >= i else k): v for k, v in self.agreements.items()}
        if self.agreement(i) >= self.min_agreement:
            self.log(f"  {n_free} layers it keeps dense are stored quantized instead: the "
                     f"runtime runs them on their dequantized weights (same time, smaller file)")
        else:
            del self.plans[i]
            self.agreements = {(k - 1 if k > i else k): v for k, v in self.agreements.items()
                               if k != i}

    def slower(self):
        """The next slower plan after the one last given, or None."""
        if self.at is None or self.at + 1 >= len(self.plans):
            return None
        self.at += 1
        return self.plans[self.at]
