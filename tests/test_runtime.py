"""The runtime on small built models: every layer type against numpy, the API,
errors, and concurrency."""
import threading

import numpy as np
import pytest

import qengine
from qengine import reference
from qengine.layers.weighted import dequantize_conv, dequantize_fc

from modelkit import build


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.qcnn"
    graph, params = build(path)
    return str(path), graph, params


def dense_weights(graph, params):
    from qengine.graph import infer_shapes
    shapes = infer_shapes(graph)
    out = {}
    for L in graph["layers"]:
        if L["name"] not in params:
            continue
        p = params[L["name"]]
        if len(p) == 2:
            out[L["name"]] = p
            continue
        cb, idx, b = p
        cin = shapes[L["bottom"][0]]
        if L["type"] == "Convolution":
            out[L["name"]] = (dequantize_conv(cb, idx, cin[0] // L["params"]["group"]), b)
        else:
            out[L["name"]] = (dequantize_fc(cb, idx, int(np.prod(cin))), b)
    return out


@pytest.mark.parametrize("strategy", ["lut", "auto"])
def test_every_layer_matches_numpy(tiny, isa, strategy):
    path, graph, params = tiny
    m = qengine.load(path, strategy=strategy, mode="exact")
    if strategy == "lut":
        assert all(v in ("lut", "dense") for v in m.layer_strategies().values())
    x = np.random.default_rng(5).standard_normal((3,) + m.input_shape).astype(np.float32) * 3
    names = [L["name"] for L in graph["layers"]]
    got = m.forward(x, outputs=names)
    want = reference.forward(graph, dense_weights(graph, params), x, outputs=names)
    for n in names:
        ref = want[n]
        scale = max(float(np.abs(ref).max()), 1e-6)
        err = float(np.abs(got[n] - ref).max()) / scale
        assert got[n].shape == ref.shape, n
        assert err < 1e-5, f"{n}: relative error {err:.3g}"
    # the plain forward returns the last layer and equals the named output
    assert np.array_equal(m.forward(x), got["prob"])
    assert np.allclose(got["prob"].sum(axis=1), 1.0, atol=1e-5)


def test_strategies_agree(tiny):
    path, _, _ = tiny
    a, b = qengine.load(path, mode="exact"), qengine.load(path, strategy="lut", mode="exact")
    assert a.layer_strategies()["c1"] == "dequantized"   # 3 input channels < d = 4
    # c2a: tables (16 x 6 x 15 x 11) and lookups (6 x 121 x 9 x 1) cost 3x its 5400 multiply-adds
    assert a.layer_strategies()["c2a"] == "dequantized" and b.layer_strategies()["c2a"] == "lut"
    # f1: tables (8 x 90) and lookups (12 x 30) cost the same as its 1080 multiply-adds: kept
    assert a.layer_strategies()["f1"] == "lut"
    assert b.layer_strategies()["c1"] == "lut"
    x = np.random.default_rng(1).standard_normal((2,) + a.input_shape).astype(np.float32)
    ya, yb = a.forward(x, outputs=["c1"])["c1"], b.forward(x, outputs=["c1"])["c1"]
    assert np.abs(ya - yb).max() <= 1e-5 * np.abs(yb).max()


def test_model_attributes_and_predict(tiny):
    path, graph, _ = tiny
    m = qengine.load(path, mode="exact")
    assert m.input_shape == (3, 21, 19)
    assert m.layer_names == [L["name"] for L in graph["layers"]]
    assert m.class_names == [f"class{i}" for i in range(5)]
    img = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    res = m.predict([img, img], top=3)
    assert len(res) == 2 and len(res[0]) == 3
    assert res[0] == res[1]
    probs = [t["prob"] for t in res[0]]
    assert probs == sorted(probs, reverse=True)
    assert all(t["label"] == f"class{t['index']}" for t in res[0])


def test_bad_inputs_raise_qengine_errors(tiny):
    path, _, _ = tiny
    m = qengine.load(path, mode="exact")
    with pytest.raises(qengine.InputError):
        m.forward(np.zeros((3, 21, 19), np.float32))
    with pytest.raises(qengine.InputError):
        m.forward(np.zeros((1, 3, 20, 19), np.float32))
    with pytest.raises(qengine.InputError):
        m.forward(np.zeros((0, 3, 21, 19), np.float32))
    with pytest.raises(qengine.InputError):
        m.forward(np.zeros((1, 3, 21, 19), np.float32), outputs=["nope"])
    with pytest.raises(qengine.ImageError):
        m.predict(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(qengine.QEngineError):
        qengine.load(path, mode="turbo")
    with pytest.raises(qengine.FormatError):
        qengine.load(path + ".missing", mode="exact")


def _same_in_threads(calls, want, rounds):
    """Each call in a thread of its own, all at once, rounds times: every
    result bit-identical to want[i]."""
    errors, done = [], [0] * len(calls)

    def work(i):
        try:
            for _ in range(rounds):
                if not np.array_equal(calls[i](), want[i]):
                    raise AssertionError(f"thread {i}: result differs from the serial run")
                done[i] += 1
        except Exception as e:  # pragma: no cover
            errors.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and done == [rounds] * len(calls)


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_threads_give_identical_results_in_parallel(tiny, mode):
    """8 threads making 200 predictions each on one Model: bit-identical to serial runs."""
    path, _, _ = tiny
    m = qengine.load(path, mode=mode)
    imgs = [np.random.default_rng(i).integers(0, 256, (30, 25, 3), dtype=np.uint8)
            for i in range(8)]
    serial = [m.forward(m.preprocess(im)) for im in imgs]
    _same_in_threads([lambda im=im: m.forward(m.preprocess(im)) for im in imgs], serial, 200)


def test_multithreaded_kernels_match_single(tiny):
    path, _, _ = tiny
    x = np.random.default_rng(3).standard_normal((2, 3, 21, 19)).astype(np.float32)
    y1 = qengine.load(path, threads=1, mode="exact").forward(x)
    y2 = qengine.load(path, threads=2, mode="exact").forward(x)
    assert np.abs(y1 - y2).max() <= 1e-6


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_batch_runs_trunk_in_chunks_and_head_whole(tiny, mode):
    """A batch runs the layers before the first fully-connected one a few
    images at a time (so they stay in cache) and the rest on the whole batch:
    bit-identical to one pass of the whole batch, with intermediate outputs,
    per-layer profiles and two threads too."""
    path, _, _ = tiny
    m = qengine.load(path, mode=mode)
    names = [op.name for op in m._ops]
    assert m._cut == names.index("f1")           # the head: f1 relu dropout f2 softmax
    assert m._chunk >= 1
    x = np.random.default_rng(4).standard_normal((7, 3, 21, 19)).astype(np.float32)
    want = ["c1", "cat", "p2", "f1", "prob"]
    m._chunk = 100                               # the whole batch in one pass
    whole, whole_out = m.forward(x), m.forward(x, outputs=want)
    m._chunk = 2                                 # chunks of 2, 2, 2, 1 images
    prof = {}
    assert np.array_equal(m.forward(x, profile=prof), whole)
    assert set(prof) == set(names) - {"r1", "r3"}          # (the ReLUs run fused)
    got = m.forward(x, outputs=want)
    for k in want:
        assert got[k].shape == whole_out[k].shape and np.array_equal(got[k], whole_out[k]), k
    m._cut = len(m._ops)                         # no head: the whole network in chunks
    assert np.array_equal(m.forward(x), whole)
    m2 = qengine.load(path, mode=mode, threads=2)
    m2._chunk = 3                                # slices of 3 and 4 images, in chunks
    assert np.array_equal(m2.forward(x), whole)


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_one_image_per_thread_shares_the_head(tiny, mode, monkeypatch):
    """A batch of at most one image per thread runs each image's trunk on a
    thread of one OpenMP team and the head once on the whole batch: the same
    bits as one thread, with intermediate outputs and profiles; an error in
    one image's trunk reaches the caller, and the model runs on afterwards."""
    from qengine import _kernels
    path, _, _ = tiny
    m1, m2 = qengine.load(path, mode=mode), qengine.load(path, mode=mode, threads=2)
    calls = []
    team = _kernels.run_team
    monkeypatch.setattr(_kernels, "run_team", lambda fns, n: calls.append(n) or team(fns, n))
    x = np.random.default_rng(6).standard_normal((2, 3, 21, 19)).astype(np.float32)
    want = ["c1", "p2", "f1", "prob"]
    assert np.array_equal(m2.forward(x), m1.forward(x)) and calls == [2]
    got, ref = m2.forward(x, outputs=want), m1.forward(x, outputs=want)
    for k in want:
        assert np.array_equal(got[k], ref[k]), k
    prof = {}
    m2.forward(x, profile=prof)
    assert {"c1", "f1", "prob"} <= set(prof) and all(v >= 0 for v in prof.values())
    calls.clear()
    m2.forward(x[:1])                   # one image: all threads inside its layers
    m2.forward(np.concatenate([x, x]))  # more images than threads: slices
    assert calls == []
    op = next(o for o in m2._ops if o.name == "c1")
    run = op.run
    seen = []

    def fail_second(*a, **k):
        seen.append(threading.get_ident())
        if len(seen) == 2:
            raise RuntimeError("boom in one image's trunk")
        return run(*a, **k)
    monkeypatch.setattr(op, "run", fail_second)
    with pytest.raises(RuntimeError, match="boom"):
        m2.forward(x)
    monkeypatch.setattr(op, "run", run)
    assert np.array_equal(m2.forward(x), m1.forward(x))


def test_shared_head_from_many_calling_threads(tiny):
    """4 Python threads each running 2-image batches on one 2-thread Model (each
    caller its own OpenMP team and scratch): bit-identical to one thread."""
    path, _, _ = tiny
    m, m1 = qengine.load(path, mode="fast", threads=2), qengine.load(path, mode="fast")
    xs = [np.random.default_rng(10 + i).standard_normal((2, 3, 21, 19)).astype(np.float32)
          for i in range(4)]
    want = [m1.forward(x) for x in xs]
    _same_in_threads([lambda x=x: m.forward(x) for x in xs], want, 50)


def test_run_team_keeps_order_and_errors():
    """run_team: results in order, exceptions returned (not raised) per call,
    the calls spread over the team's threads, the caller's thread-local
    values seen in the calls it runs itself."""
    from qengine import _kernels
    local = threading.local()
    local.v = "caller"
    me = threading.get_ident()

    def job(i):
        if i == 3:
            raise ValueError("three")
        return i * i, threading.get_ident(), getattr(local, "v", None)

    res = _kernels.run_team([lambda i=i: job(i) for i in range(4)], 2)
    assert [ok for ok, _ in res] == [True, True, True, False]
    assert isinstance(res[3][1], ValueError) and str(res[3][1]) == "three"
    assert [v[0] for _, v in res[:3]] == [0, 1, 4]
    assert len({v[1] for _, v in res[:3]}) == 2          # two threads ran them
    for ok, (_, ident, v) in res[:3]:
        assert (v == "caller") == (ident == me)
    assert _kernels.run_team([], 2) == []


def test_no_head_when_other_blobs_cross_the_cut(tmp_path):
    """A fully-connected layer is the head's start only where its input is the
    one blob alive: here the network input is read again after it."""
    from modelkit import conv
    L = [conv("c1", "data", 4, 3, p=1),
         {"name": "f1", "type": "InnerProduct", "bottom": ["c1"], "top": ["f1"],
          "params": {"num_output": 5, "bias_term": True}},
         {"name": "f2", "type": "InnerProduct", "bottom": ["data"], "top": ["f2"],
          "params": {"num_output": 5, "bias_term": True}},
         {"name": "sum", "type": "Eltwise", "bottom": ["f1", "f2"], "top": ["sum"],
          "params": {"operation": "SUM", "coeff": [1.0, 1.0]}}]
    graph = {"input": {"name": "data", "shape": [2, 5, 5]}, "layers": L}
    path = tmp_path / "twohead.qcnn"
    graph, params = build(path, graph=graph, dense=("f2",))
    m = qengine.load(str(path), mode="exact")
    assert m._cut == len(m._ops)
    x = np.random.default_rng(5).standard_normal((5, 2, 5, 5)).astype(np.float32)
    m._chunk = 100
    whole = m.forward(x)
    m._chunk = 2
    assert np.array_equal(m.forward(x), whole)
    want = reference.forward(graph, dense_weights(graph, params), x)
    assert np.abs(whole - want).max() <= 1e-5 * np.abs(want).max()


def test_concatenation_written_in_place(tmp_path, isa):
    # a fire module: squeeze conv + ReLU, two expand convs (one with an in-place
    # ReLU, one lookup-table, one dense) concatenated; the concatenation is
    # planned in place and must give what the separate buffers give
    from modelkit import conv, layer
    L = [
        conv("sq", "data", 6, 1),
        layer("sq_relu", "ReLU", "sq", "sq", negative_slope=0.0),
        conv("e1", "sq", 8, 1),
        layer("e1_relu", "ReLU", "e1", "e1", negative_slope=0.0),
        conv("e3", "sq", 5, 3, p=1),
        layer("cat", "Concat", ["e1", "e3"], axis=1),
        conv("after", "cat", 4, 3, p=1),
        layer("cat2", "Concat", ["after", "cat"], axis=1),   # "cat" has another reader: not planned
        {"name": "fc", "type": "InnerProduct", "bottom": ["cat2"], "top": ["fc"],
         "params": {"num_output": 5, "bias_term": True}},
    ]
    graph = {"input": {"name": "data", "shape": [3, 9, 7]}, "layers": L}
    path = tmp_path / "fire.qcnn"
    graph, params = build(path, graph=graph, dense=("e3",))
    for mode in ("exact", "fast"):
        m = qengine.load(str(path), mode=mode)
        names = [op.name for op in m._ops]
        assert set(m._concat_into) == {names.index("e1"), names.index("e3")}
        x = np.random.default_rng(1).standard_normal((2,) + m.input_shape).astype(np.float32)
        planned = m.forward(x)
        separate = m.forward(x, outputs=["fc"])["fc"]
        assert np.array_equal(planned, separate)
        if mode == "exact":   # (fast mode's 8-bit FC tables are checked elsewhere)
            want = reference.forward(graph, dense_weights(graph, params), x)
            assert np.abs(planned - want).max() <= 1e-5 * np.abs(want).max()


def test_model_call_close_and_context_manager(tmp_path):
    """model(x) is forward(x); close() releases the model (a clear error
    after); a with-block closes it."""
    import numpy as np
    import qengine
    from modelkit import build
    path = tmp_path / "m.qcnn"
    build(path)
    x = np.random.default_rng(0).standard_normal((2,) + qengine.load(str(path), mode="exact").input_shape)
    x = x.astype(np.float32)
    with qengine.load(str(path), threads=2, mode="exact") as m:
        assert np.array_equal(m(x), m.forward(x))
    with pytest.raises(qengine.InputError, match="closed"):
        m.forward(x)
    with pytest.raises(qengine.InputError, match="closed"):
        m.classify(x)


def test_core_round_trip_is_measured_and_bounded():
    """The cache-line round trip between two of the kernels' threads (what
    qbench prints beside multi-thread figures): a plausible figure where two
    CPUs are available, and an answer within its time bound either way."""
    import os
    import time
    from qengine import _kernels
    t = time.perf_counter()
    ns = _kernels.core_round_trip_ns(0.02)
    assert time.perf_counter() - t < 2.0
    if len(os.sched_getaffinity(0)) >= 2:
        assert ns is not None and 1 < ns < 1e5
    else:
        assert ns is None or ns > 0
