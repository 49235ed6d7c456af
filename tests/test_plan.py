"""Per-layer settings under a speed budget (qengine/plan.py)."""
import itertools

import numpy as np
import pytest

import qengine
from qengine.errors import QEngineError
from qengine.costmodel import CostModel, OperationCounts, predict
from qengine.plan import Planner, _hull, candidates, choose, operations, plan

from modelkit import build, conv, layer


def plan_graph():
    return {"input": {"name": "data", "shape": [16, 12, 12]}, "layers": [
        conv("c1", "data", 48, 3, p=1),
        layer("r1", "ReLU", "c1", "c1", negative_slope=0.0),
        conv("c2", "c1", 64, 3, p=1, g=2),
        layer("r2", "ReLU", "c2", "c2", negative_slope=0.0),
        conv("c3", "c2", 8, 1),
        {"name": "f1", "type": "InnerProduct", "bottom": ["c3"], "top": ["f1"],
         "params": {"num_output": 64, "bias_term": True}},
        layer("prob", "Softmax", "f1")]}


def brute_force(options, budget):
    names = list(options)
    best = None
    for combo in itertools.product(*(options[n] for n in names)):
        cost = sum(p[0] for p in combo)
        err = sum(p[1] for p in combo)
        if cost <= budget and (best is None or err < best[0]):
            best = (err, {n: p[2] for n, p in zip(names, combo)})
    return best


def test_choose_meets_the_budget_with_the_least_error_on_convex_choices():
    options = {"a": [(100, 0.0, None), (20, 0.10, "a1")],
               "b": [(100, 0.0, None), (50, 0.01, "b1"), (30, 0.05, "b2")]}
    assert choose(options, 200) == {"a": None, "b": None}
    assert choose(options, 150) == {"a": None, "b": "b1"}
    got = choose(options, 70)
    assert got == brute_force(options, 70)[1] == {"a": "a1", "b": "b1"}
    assert choose(options, 40) is None
    # random convex cases: greedy along the hulls is optimal when hull points decide
    rng = np.random.default_rng(0)
    for _ in range(30):
        opts = {}
        for n in "abcd":
            costs = np.sort(rng.uniform(5, 100, 4))[::-1]
            errs = np.cumsum(rng.uniform(0, 0.1, 4)) - 0.05
            pts = [(100.0, 0.0, None)] + [(float(c), float(max(e, 0.001) + 0.01 * i), (n, i))
                                          for i, (c, e) in enumerate(zip(costs, errs))]
            opts[n] = _hull(pts)
        budget = float(rng.uniform(80, 300))
        got = choose(opts, budget)
        want = brute_force(opts, budget)
        if want is None:
            assert got is None
            continue
        cost = sum(next(p[0] for p in opts[n] if p[2] == got[n]) for n in opts)
        err = sum(next(p[1] for p in opts[n] if p[2] == got[n]) for n in opts)
        assert cost <= budget + 1e-9
        # greedy on convex hulls: at most the optimum plus the largest single step
        step = max(abs(h[i + 1][1] - h[i][1]) for h in opts.values() for i in range(len(h) - 1))
        assert err <= want[0] + step + 1e-12


def test_hull_drops_dominated_and_concave_points():
    pts = [(100, 0.0, "dense"), (60, 0.5, "bad"), (50, 0.1, "x"), (40, 0.3, "dominated-by-none"),
           (45, 0.5, "dominated"), (10, 0.4, "y")]
    kept = [p[2] for p in _hull(pts)]
    assert "dominated" not in kept and "bad" not in kept
    assert kept[0] == "y" and kept[-1] == "dense"


def test_plan_reaches_the_speedup_it_promises(tmp_path):
    from qengine.convert import quantize_model
    from qengine.graph import infer_shapes
    graph, params = build(tmp_path / "dense.qcnn", plan_graph(), dense=("c1", "c2", "c3", "f1"))
    weights = {n: v for n, v in params.items()}
    x = np.random.default_rng(1).standard_normal((4,) + tuple(graph["input"]["shape"]))
    x = x.astype(np.float32)
    shapes = infer_shapes(graph)
    for L in graph["layers"]:
        if L["name"] in weights:
            ins, outs = shapes[L["bottom"][0]], shapes[L["top"][0]]
            for d, K, cost in candidates(L, ins, outs):
                assert cost == operations(L, ins, outs, d, K) < operations(L, ins, outs)
    dense_ops = sum(sum(c[2:]) if c[3] else c[2] for c in
                    qengine.load(str(tmp_path / "dense.qcnn"), mode="exact").layer_costs())
    out = tmp_path / "p.qcnn"
    quantize_model(graph, weights, str(out), {"source": "test"}, calib=x, speedup=2.0, force=True,
                   plan_on="operations")
    m = qengine.load(str(out), strategy="lut", mode="exact")
    ops = sum(c[3] + c[4] if c[3] else c[2] for c in m.layer_costs())
    assert dense_ops / ops >= 2.0
    assert set(m.layer_strategies().values()) >= {"lut"}
    with pytest.raises(QEngineError, match="out of reach"):
        plan(graph, weights, 50, calib=x, subdims=(4,), ks=(16,), costs=OperationCounts())


def test_plan_keeps_the_users_settings_and_counts_them_in_the_budget(tmp_path):
    from qengine.convert import quantize_model
    graph, weights = build(tmp_path / "dense.qcnn", plan_graph(), dense=("c1", "c2", "c3", "f1"))
    x = np.random.default_rng(2).standard_normal((4,) + tuple(graph["input"]["shape"]))
    x = x.astype(np.float32)
    user = {"c2": {"subdim": 8, "k": 16}}
    opts, dense, _ = plan(graph, weights, 1.5, calib=x, fixed=user, costs=OperationCounts())
    assert opts["c2"] == {"subdim": 8, "k": 16} and "c2" not in dense
    out = tmp_path / "p.qcnn"
    quantize_model(graph, weights, str(out), {"source": "test"}, calib=x, speedup=1.5,
                   layer_opts=user, force=True, plan_on="operations")
    m = qengine.load(str(out), strategy="lut", mode="exact")
    ops = sum(c[3] + c[4] if c[3] else c[2] for c in m.layer_costs())
    assert sum(c[2] for c in m.layer_costs()) / ops >= 1.5
    assert m.metadata["provenance"]["quantization"]["layers"]["c2"]["subdim"] == 8


class FixedPrices(OperationCounts):
    """Prices set by the test: so a plan's choice is known in advance."""
    mode = "fixed"

    def __init__(self, prices, rest=0.0):
        self.prices, self.rest = prices, rest

    def forms(self, L, in_shape, forms):
        p = self.prices[L["name"]]
        return {f: p[f] for f in [None] + [tuple(f) for f in forms if f is not None] if f in p}

    def network(self, graph, weights):
        prof = {L["name"]: (self.prices[L["name"]][None] if L["name"] in self.prices else 0.0)
                for L in graph["layers"]}
        prof["prob"] += self.rest
        return prof, sum(prof.values())


def test_the_plan_spends_measured_time_not_operations(tmp_path):
    """A form is worth only what it saves in time: one layer's lookup form is
    priced slower than its dense form (as narrow layers measure on AVX2), so
    it is never offered however few operations it has; and a speed-up needs
    the time the other layers can give."""
    graph, weights = build(tmp_path / "dense.qcnn", plan_graph(), dense=("c1", "c2", "c3", "f1"))
    x = np.random.default_rng(3).standard_normal((4,) + tuple(graph["input"]["shape"]))
    x = x.astype(np.float32)
    grid = [(d, K) for d in (2, 4) for K in (16, 64)]
    prices = {"c1": {None: 10.0, **{f: 4.0 + f[1] / 64 for f in grid}},
              "c2": {None: 10.0, **{f: 12.0 for f in grid}},       # lookups slower here
              "c3": {None: 1.0, **{f: 0.5 for f in grid}},
              "f1": {None: 1.0, **{f: 0.9 for f in grid}}}
    costs = FixedPrices(prices, rest=2.0)
    pl = Planner(graph, weights, costs, x, subdims=(2, 4), ks=(16, 64))
    assert all(p[2] is None for p in pl.options["c2"])          # never offered
    assert pl.max_speedup() == pytest.approx(24.0 / (4.25 + 10 + 0.5 + 0.9 + 2.0))
    choice = pl.choose(1.3)
    total, per = pl.predict(choice)
    assert total <= 24.0 / 1.3 and choice["c2"] is None and choice["c1"] is not None
    assert pl.choose(1.6) is None
    with pytest.raises(QEngineError, match="out of reach.*1.36x less time"):
        plan(graph, weights, 1.6, calib=x, subdims=(2, 4), ks=(16, 64), costs=costs)


def test_measured_prices_are_the_runtime_running_the_layer(tmp_path):
    """CostModel times the runtime's own op: positive seconds, cached per
    shape and form, and a quantized form the runtime runs on its dequantized
    weights (a first convolution with fewer channels than d) costs exactly
    what the dense form costs."""
    graph = plan_graph()
    cm = CostModel()
    L = graph["layers"][0]
    r = cm.forms(L, (16, 12, 12), [(4, 16), (8, 128)])
    assert all(v > 0 for v in r.values()) and set(r) == {None, (4, 16), (8, 128)}
    n = cm.measured
    assert cm.forms(L, (16, 12, 12), [(4, 16)]) == {None: r[None], (4, 16): r[(4, 16)]}
    assert cm.measured == n                                       # cached
    first = {"name": "c0", "type": "Convolution", "bottom": ["data"], "top": ["c0"],
             "params": {"num_output": 16, "kernel": [3, 3], "stride": 1, "pad": 1, "group": 1,
                        "bias_term": True}}
    r = cm.forms(first, (3, 20, 20), [(8, 64)])
    assert r[(8, 64)] == r[None]


def test_prediction_of_the_dense_choice_is_the_dense_network(tmp_path):
    graph, weights = build(tmp_path / "dense.qcnn", plan_graph(), dense=("c1", "c2", "c3", "f1"))
    costs = OperationCounts()
    total, per, dense = predict(graph, weights, {"c1": None}, costs)
    assert total == dense == sum(costs.network(graph, weights)[0].values())
    total, per, _ = predict(graph, weights, {"c1": (4, 16)}, costs)
    assert per["c1"] == costs.forms(graph["layers"][0], (16, 12, 12), [(4, 16)])[(4, 16)]
    assert total < dense


def test_a_quantized_model_records_its_predicted_time(tmp_path):
    from qengine.convert import quantize_model
    graph, weights = build(tmp_path / "dense.qcnn", plan_graph(), dense=("c1", "c2", "c3", "f1"))
    out = tmp_path / "q.qcnn"
    logs = []
    quantize_model(graph, weights, str(out), {"source": "test"}, conv_subdim=4, conv_k=16,
                   fc_subdim=4, fc_k=16, iters=3, force=True, log=logs.append)
    pred = qengine.load(str(out), mode="exact").metadata["provenance"]["quantization"]["predicted"]
    assert pred["mode"] == "fast" and pred["ms"] > 0 and pred["dense_ms"] > 0
    # every layer that runs (a ReLU fused into its convolution runs inside it)
    assert set(pred["layers"]) == {"c1", "c2", "c3", "f1", "prob"}
    assert pred["ms"] == pytest.approx(sum(pred["layers"].values()) + pred["outside_layers_ms"],
                                       rel=1e-3, abs=1e-3)
    assert pred["outside_layers_ms"] >= 0
    assert any(m.startswith("predicted:") for m in logs)


def _auto(tmp_path, name, x, **kw):
    from qengine.convert import quantize_model
    graph, weights = build(tmp_path / "dense.qcnn", plan_graph(), dense=("c1", "c2", "c3", "f1"))
    logs = []
    out = tmp_path / name
    quantize_model(graph, weights, str(out), {"source": "test"}, calib=x, force=True,
                   plan_on="operations", iters=5, log=logs.append, **kw)
    return qengine.load(str(out), mode="exact"), logs


def test_calibration_alone_chooses_the_fastest_plan_that_agrees(tmp_path):
    """With --calib and no settings, every 4th calibration input is held out;
    the plan is the fastest whose held-out top-1 agreement with the dense
    network reaches --min-agreement, measured again on the final model and
    stored with it.  A lower threshold never gives a slower plan."""
    x = np.random.default_rng(5).standard_normal((40, 16, 12, 12)).astype(np.float32)
    results = {}
    for a in (0.0, 1.0):
        m, logs = _auto(tmp_path, f"a{a}.qcnn", x, min_agreement=a)
        q = m.metadata["provenance"]["quantization"]
        assert q["chosen_by"] == {"min_agreement": a, "held_out": 10}
        ops = sum(c[3] + c[4] if c[3] else c[2] for c in m.layer_costs(as_quantized=True))
        results[a] = ops
        if "agreement" in q:
            assert q["agreement"]["held_out"] and q["agreement"]["images"] == 10
            assert q["agreement"]["top1"] >= a or any("next slower" in s for s in logs)
        assert any(s.startswith("[plan:") for s in logs)
    assert results[0.0] < results[1.0]


def test_without_calibration_the_defaults_warn_and_settings_do_not(tmp_path):
    from qengine.convert import quantize_model
    graph, weights = build(tmp_path / "dense.qcnn", plan_graph(), dense=("c1", "c2", "c3", "f1"))
    logs = []
    quantize_model(graph, weights, str(tmp_path / "a.qcnn"), {"source": "test"}, iters=3,
                   plan_on="operations", log=logs.append)
    assert any(s.startswith("warning: no calibration images") for s in logs)
    logs.clear()
    quantize_model(graph, weights, str(tmp_path / "b.qcnn"), {"source": "test"}, iters=3,
                   conv_k=16, plan_on="operations", log=logs.append)
    assert not any(s.startswith("warning") for s in logs)
    x = np.random.default_rng(5).standard_normal((64, 16, 12, 12)).astype(np.float32)
    with pytest.raises(QEngineError, match="min-agreement"):
        quantize_model(graph, weights, str(tmp_path / "c.qcnn"), {"source": "test"}, calib=x,
                       conv_k=16, min_agreement=0.9)
    with pytest.raises(QEngineError, match="at least 32 calibration images"):
        quantize_model(graph, weights, str(tmp_path / "c.qcnn"), {"source": "test"},
                       calib=x[:20])


def test_layers_left_dense_are_stored_quantized_where_that_costs_no_time(tmp_path):
    """When no form is faster than dense (the AVX2 picture for narrow layers),
    the fastest plan is dense; the layers are then stored in the most
    accurate form the runtime runs at dense speed (priced exactly as dense),
    if the held-out agreement allows."""
    from qengine.calibration import Subset
    from qengine.plan import AgreementSearch, holdout
    graph, weights = build(tmp_path / "dense.qcnn", plan_graph(), dense=("c1", "c2", "c3", "f1"))
    grid = [(d, K) for d in (2, 4) for K in (16, 64)]
    prices = {n: {None: 5.0, **{f: 5.0 for f in grid}} for n in ("c1", "c2", "c3", "f1")}
    prices["c3"][(4, 16)] = 1.0                    # one form is faster: offered as usual
    x = np.random.default_rng(6).standard_normal((40, 16, 12, 12)).astype(np.float32)
    fit, held = holdout(len(x))
    for a, want_free in ((0.0, True), (1.01, False)):
        s = AgreementSearch(graph, weights, FixedPrices(prices), Subset(x, fit), Subset(x, held),
                            a, subdims=(2, 4), ks=(16, 64))
        plan = s.best()
        assert s.planner.free == {n: (2, 64) for n in ("c1", "c2", "c3", "f1")}
        if want_free:
            assert plan["c3"] == (4, 16) and plan["c1"] == plan["c2"] == plan["f1"] == (2, 64)
        else:                                       # nothing agrees enough: all dense
            assert all(f is None for f in plan.values())
