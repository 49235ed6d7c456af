"""What a layer costs on this machine, measured: the planner's prices.

Theoretical operations (multiply-adds plus lookups) do not predict speed: a
lookup from float table rows, a lookup from a register table, a dense fp32
multiply-add and the fixed cost of building tables differ by up to 10x, and by
instruction set.  So every candidate form of a weighted layer -- dense, or
product-quantized with (d, K) -- is priced by running it: a one-layer .qcnn
with random weights of that form is loaded by the runtime exactly as a real
model would be (same mode, same strategy choice, same kernels on this ISA) and
timed at batch 1 on one thread.  Times are the minimum of a few runs (the
least disturbed; these machines are shared), cached per layer shape and form.

The whole dense network is timed the same way (Model.forward with a profile),
so a plan's predicted time is

    dense network - sum(dense weighted layers) + sum(chosen weighted layers)

all measured in the same process within seconds of each other, which is what
`--speedup S` is held to and what qbench later shows beside its measurements.
"""
import json
import os
import time

import numpy as np

from . import _kernels, format as qformat
from .graph import infer_shapes
from .layers import QUANTIZABLE, indices_shape, layer_cost, subspaces
from .layers.weighted import dense_shape

MIN_RUNS = 3            # timed runs per candidate (after one warm-up)
MIN_SECONDS = 0.02      # ... and at least this long in total
MAX_RUNS = 50


def operations(L, in_shape, out_shape, d=None, K=None):
    """A layer's theoretical operations per image: dense multiply-adds, or with
    (d, K) table multiply-adds plus lookups."""
    if d is None:
        return layer_cost(L, in_shape, out_shape)[0]
    _, table, lookups = layer_cost(L, in_shape, out_shape, K, subspaces(L, in_shape, d))
    return table + lookups


class Prices:
    """What a price list offers: forms(L, in_shape, forms) -> {form: cost}
    (the dense form None always among them) and network(graph, weights)."""

    def layer(self, L, in_shape, d=None, K=None):
        """The cost of one form of layer L: dense (d None) or (d, K)."""
        form = None if d is None else (int(d), int(K))
        return self.forms(L, in_shape, [form])[form]


class CostModel(Prices):
    """Measured seconds per image of layer forms on this machine, in `mode`
    ("fast" is what the CLIs run)."""

    def __init__(self, mode="fast", seed=0):
        self.mode = mode
        self.isa = _kernels.get_isa()
        self._cache, self._networks = {}, {}
        self._rng = np.random.default_rng(seed)
        self.measured = 0

    def _key(self, L, in_shape, form):
        return json.dumps([L["type"], L["params"], list(in_shape), form], sort_keys=True)

    def forms(self, L, in_shape, forms):
        """{form: seconds per image} of layer L on input in_shape, for forms
        None (dense) or (d, K).  The forms not yet measured are timed in
        interleaved rounds (a drift of the machine's speed shifts them all
        alike) and the dense form always with them."""
        in_shape = tuple(int(v) for v in in_shape)
        want = [None] + [tuple(f) for f in forms if f is not None]
        todo = [f for f in dict.fromkeys(want) if self._key(L, in_shape, f) not in self._cache]
        if todo:
            if None not in todo and len(todo) > 0:
                todo = [None] + todo        # re-time dense beside the new forms ...
            times = self._measure(L, in_shape, todo)
            dense_key = self._key(L, in_shape, None)
            if dense_key in self._cache:     # ... but keep the first dense figure
                times[None] = self._cache[dense_key]
            for f, t in times.items():
                self._cache[self._key(L, in_shape, f)] = t
        return {f: self._cache[self._key(L, in_shape, f)] for f in want}

    def _one_layer(self, L, in_shape, form, path):
        """Write a one-layer model of L in `form` with random weights to path."""
        one = {"name": "layer", "type": L["type"], "params": L["params"],
               "bottom": ["data"], "top": ["out"]}
        # a fully-connected layer reads a flat input as [C, 1, 1] (the same floats)
        shape = list(in_shape) + [1] * (3 - len(in_shape))
        graph = {"input": {"name": "data", "shape": shape}, "layers": [one]}
        cout = L["params"]["num_output"]
        scale = np.float32(np.sqrt(2 / float(np.prod(dense_shape(L, in_shape)[1:]))))
        rng = self._rng
        tensors = {"bias": qformat.Tensor(np.zeros(cout, np.float32))}
        if form is None:
            w = rng.standard_normal(dense_shape(L, in_shape)).astype(np.float32)
            tensors["weight"] = qformat.Tensor(w * scale)
            one["weights"] = {"mode": "dense", "weight": "weight", "bias": "bias"}
        else:
            d, K = form
            M = subspaces(L, in_shape, d)
            cb = rng.standard_normal((M, K, d)).astype(np.float32) * scale
            idx = rng.integers(0, K, size=indices_shape(L, in_shape, d), dtype=np.uint8)
            tensors["codebook"] = qformat.Tensor(cb)
            tensors["indices"] = qformat.Tensor(idx, bits=max(1, (K - 1).bit_length()))
            one["weights"] = {"mode": "lut", "codebook": "codebook", "indices": "indices",
                              "bias": "bias"}
        qformat.write(path, {"graph": graph, "preprocess": {}, "class_names": [],
                             "provenance": {"source": "costmodel"}}, tensors, force=True)

    def _measure(self, L, in_shape, forms):
        from .runtime import Model
        models = {}
        from .calibration import scratch_dir
        with scratch_dir() as tmp:
            for i, f in enumerate(forms):
                path = os.path.join(tmp, f"layer{i}.qcnn")
                self._one_layer(L, in_shape, f, path)
                models[f] = Model(path, mode=self.mode, threads=1)
        x = self._rng.standard_normal((1,) + models[forms[0]].input_shape).astype(np.float32)
        # a quantized form the runtime runs on its dequantized weights (in
        # float, or in fast mode's int16) costs what the dense form costs: one
        # figure for both (less noise)
        dense_forms = ("dequantized", "int16", "winograd", "pointwise")
        same = {f for f, m in models.items()
                if f is not None and m.layer_strategies().get("layer") in dense_forms}
        timed = [f for f in forms if f not in same]
        best = {f: float("inf") for f in timed}
        spent = {f: 0.0 for f in timed}
        for f in timed:
            models[f].forward(x)                     # warm-up: first touch of the weights
        rounds = 0
        while rounds < MIN_RUNS or (min(spent.values()) < MIN_SECONDS and rounds < MAX_RUNS):
            for f in timed:
                t0 = time.perf_counter()
                models[f].forward(x)
                dt = time.perf_counter() - t0
                best[f] = min(best[f], dt)
                spent[f] += dt
            rounds += 1
        self.measured += len(timed)
        for f in same:
            best[f] = best[None]
        return best

    def network(self, graph, weights):
        """({layer: seconds per image}, total) of the whole network run dense
        (every weighted layer on its dense weights): the profile of the
        fastest of a few runs.  Measured once per graph."""
        key = json.dumps(graph, sort_keys=True)
        if key not in self._networks:
            self._networks[key] = self._network(graph, weights)
        return self._networks[key]

    def _network(self, graph, weights):
        from .calibration import dense_model
        model = dense_model(graph, weights, mode=self.mode, threads=1)
        x = self._rng.standard_normal((1,) + model.input_shape).astype(np.float32)
        model.forward(x)
        best, total, runs = None, float("inf"), 0
        t_all = 0.0
        while runs < MIN_RUNS or (t_all < 5 * MIN_SECONDS and runs < MAX_RUNS):
            prof = {}
            t0 = time.perf_counter()
            model.forward(x, profile=prof)
            dt = time.perf_counter() - t0
            t_all += dt
            runs += 1
            if dt < total:
                best, total = prof, dt
        return best, total


def layer_inputs(graph):
    """{layer: input shape} of the weighted layers."""
    shapes = infer_shapes(graph)
    return {L["name"]: tuple(shapes[L["bottom"][0]]) for L in graph["layers"]
            if L["type"] in QUANTIZABLE}




def predict(graph, weights, choice, costs):
    """(predicted cost of the network, {layer: cost}, dense network's cost)
    with choice {layer: (d, K) or None}: the dense network's profile with
    each weighted layer's one-layer dense time replaced by its form's, plus
    the time a forward pass spends outside its layers (the Python between
    them: a tenth of a millisecond, which matters on LeNet-sized networks)."""
    prof, wall = costs.network(graph, weights)
    overhead = max(0.0, wall - sum(prof.values()))
    ins = layer_inputs(graph)
    by_name = {L["name"]: L for L in graph["layers"]}
    per = dict(prof)
    for n, f in choice.items():
        if f is not None:
            t = costs.forms(by_name[n], ins[n], [f])
            per[n] = prof[n] - t[None] + t[tuple(f)]
    return sum(per.values()) + overhead, per, sum(prof.values()) + overhead


class OperationCounts(Prices):
    """The theoretical prices of the same forms: multiply-adds plus table
    lookups per image (layers.layer_cost), no timing.  What `qconvert
    --plan-on operations` plans with; deterministic, so the tests use it."""

    mode = "operations"
    isa = "any"
    measured = 0

    def forms(self, L, in_shape, forms):
        from .layers import record
        in_shape = tuple(in_shape)
        out = record(L["type"]).shape(L["params"], [in_shape], f"layer {L['name']!r}")
        return {f: float(operations(L, in_shape, out, *(f or (None, None))))
                for f in [None] + [tuple(f) for f in forms if f is not None]}

    def network(self, graph, weights):
        shapes = infer_shapes(graph)
        prof = {L["name"]: (self.layer(L, shapes[L["bottom"][0]])
                            if L["type"] in QUANTIZABLE else 0.0) for L in graph["layers"]}
        return prof, sum(prof.values())
