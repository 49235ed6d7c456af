"""Per-layer settings under a speed budget (qengine/plan.py)."""
import itertools

import numpy as np
import pytest

import qengine
from qengine.errors import QEngineError
from qengine.plan import _hull, candidates, choose, operations, plan

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
                    qengine.load(str(tmp_path / "dense.qcnn")).layer_costs())
    out = tmp_path / "p.qcnn"
    quantize_model(graph, weights, str(out), {"source": "test"}, calib=x, speedup=2.0, force=True)
    m = qengine.load(str(out), strategy="lut")
    ops = sum(c[3] + c[4] if c[3] else c[2] for c in m.layer_costs())
    assert dense_ops / ops >= 2.0
    assert set(m.layer_strategies().values()) >= {"lut"}
    with pytest.raises(QEngineError, match="out of reach"):
        plan(graph, weights, 50, calib=x, subdims=(4,), ks=(16,))


def test_plan_keeps_the_users_settings_and_counts_them_in_the_budget(tmp_path):
    from qengine.convert import quantize_model
    graph, weights = build(tmp_path / "dense.qcnn", plan_graph(), dense=("c1", "c2", "c3", "f1"))
    x = np.random.default_rng(2).standard_normal((4,) + tuple(graph["input"]["shape"]))
    x = x.astype(np.float32)
    user = {"c2": {"subdim": 8, "k": 16}}
    opts, dense = plan(graph, weights, 1.5, calib=x, fixed=user)
    assert opts["c2"] == {"subdim": 8, "k": 16} and "c2" not in dense
    out = tmp_path / "p.qcnn"
    quantize_model(graph, weights, str(out), {"source": "test"}, calib=x, speedup=1.5,
                   layer_opts=user, force=True)
    m = qengine.load(str(out), strategy="lut")
    ops = sum(c[3] + c[4] if c[3] else c[2] for c in m.layer_costs())
    assert sum(c[2] for c in m.layer_costs()) / ops >= 1.5
    assert m.metadata["provenance"]["quantization"]["layers"]["c2"]["subdim"] == 8
