"""What a new user meets in the first hour: the built-in model does real
work, conversion checks its options, qinfo and qbench report what they
should, and the Python API takes images as they come."""
import csv
import io
import json
import os

import numpy as np
import pytest

from conftest import shared_path
from modelkit import build
from test_cli import run

import qengine
from qengine.models import default_model


def test_the_built_in_model_ships_with_its_licence():
    path = default_model()
    assert os.path.getsize(path) < 2_000_000                     # about 1.5 MB
    lic = open(os.path.join(os.path.dirname(path), "LICENSE.squeezenet")).read()
    assert "SqueezeNet" in lic and "BSD" in lic
    with qengine.load(path) as m:
        assert m.input_shape == (3, 227, 227) and len(m.class_names) == 1000
        assert m.mode == "fast"                                  # load() defaults to fast
        quantized = [op for op in m.layers if op.weighted and op.L["weights"]["mode"] == "lut"]
        assert len(quantized) >= 8


@pytest.fixture(scope="module")
def dense_squeezenet(tmp_path_factory):
    """The dense SqueezeNet, converted from the shared Caffe files."""
    out = tmp_path_factory.mktemp("sq") / "dense.qcnn"
    from qengine.convert import convert_caffe
    src = shared_path("caffe", "squeezenet_v1.0")
    convert_caffe(os.path.join(src, "deploy.prototxt"),
                  os.path.join(src, "squeezenet_v1.0.caffemodel"), str(out),
                  keep_dense=("all",), preprocess={"mean_pixel": [104, 117, 123],
                                                   "resize": 256, "crop": 227})
    return str(out)


@pytest.mark.slow
def test_the_built_in_model_agrees_with_dense_squeezenet(dense_squeezenet):
    """The README's figures for the shipped model, on the 1,300 shared
    ImageNet images: top-1 68.2% (dense 70.0%), 88.8% top-1 agreement; its
    fast mode (the default) agrees with its exact mode on >= 99.5% (README
    99.85%, the 16-bit integer convolutions)."""
    from qengine.datasets import open_set
    items, labels = open_set(shared_path("ilsvrc12-val", "set1300"))
    with qengine.load(default_model(), threads=2) as q, \
            qengine.load(default_model(), mode="exact", threads=2) as qe, \
            qengine.load(dense_squeezenet, mode="exact", threads=2) as d:
        assert q.metadata["preprocess"] == d.metadata["preprocess"]
        assert "int16" in q.layer_strategies().values()
        qp, ep, dp = [], [], []
        for i in range(0, len(items), 25):
            x = q.preprocess(items[i:i + 25])                    # one decode for all
            qp.append(q.forward(x).reshape(len(x), -1).argmax(1))
            ep.append(qe.forward(x).reshape(len(x), -1).argmax(1))
            dp.append(d.forward(x).reshape(len(x), -1).argmax(1))
    qp, dp, labels = np.concatenate(qp), np.concatenate(dp), np.asarray(labels)
    assert (qp == np.concatenate(ep)).mean() >= 0.995            # fast vs exact
    agreement = (qp == dp).mean()
    top1_q, top1_d = (qp == labels).mean(), (dp == labels).mean()
    assert abs(top1_d - 0.70) < 0.005                            # the dense reference
    assert agreement >= 0.88, agreement                          # README: 88.8%
    assert top1_q >= 0.675 and top1_d - top1_q <= 0.025, (top1_q, top1_d)


def test_qrun_without_a_model_uses_the_built_in_one(tmp_path):
    photo = os.path.join(shared_path("ilsvrc12-val", "set1300"), "ILSVRC2012_val_00000355.JPEG")
    r = run("qrun", photo, "--jsonl", "--top", "3")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    with qengine.load(default_model()) as m:
        assert rec["top"] == m.predict(photo, top=3)[0]
    labels = dict(line.split() for line in open(
        shared_path("ilsvrc12-val", "set1300", "labels.txt")))
    assert rec["top"][0]["index"] == int(labels["ILSVRC2012_val_00000355.JPEG"])


@pytest.mark.parametrize("extra, msg", [
    (["--channel-order", "rgb"], "channel order 'rgb' does not fit 1 channels"),
    (["--resize", "20", "--crop", "28"], "crop [28, 28] is larger than resize (20, 20)"),
    (["--crop", "30"], "crop [30, 30] does not match the input 28x28"),
    (["--mean-pixel", "1,2,3"], "mean values must be 1 finite numbers"),
])
def test_qconvert_checks_preprocessing_against_the_model(tmp_path, extra, msg):
    out = tmp_path / "o.qcnn"
    r = run("qconvert", shared_path("caffe", "lenet"), "-o", str(out), "--keep-dense", "all",
            *extra)
    assert r.returncode != 0 and msg in r.stderr and "(1 x 28 x 28)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_qconvert_refuses_arch_with_a_caffe_directory(tmp_path):
    r = run("qconvert", shared_path("caffe", "lenet"), "-o", str(tmp_path / "o.qcnn"),
            "--arch", "alexnet")
    assert r.returncode == 2 and "--arch" in r.stderr and "carries its own architecture" in r.stderr


def test_qconvert_summary_names_kernel_bytes_and_error(tmp_path):
    """A line per layer: form, kernel, bytes, response error; and progress
    lines for long steps when the output is a log, not a terminal."""
    out = tmp_path / "lenet.qcnn"
    x = np.random.default_rng(0).standard_normal((40, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run("qconvert", shared_path("caffe", "lenet"), "-o", str(out), "--scale", "0.00390625",
            "--conv-k", "16", "--conv-subdim", "2", "--fc-k", "16", "--calib",
            str(tmp_path / "x.npy"))
    assert r.returncode == 0, r.stderr
    lines = r.stderr[r.stderr.index("summary"):].splitlines()
    with qengine.load(str(out)) as m:
        entries = m._qf.header["tensors"]
        for op in m.layers:
            if not op.weighted:
                continue
            nbytes = sum(entries[v]["nbytes"] for k, v in op.L["weights"].items() if k != "mode")
            line = next(s for s in lines if s.split()[0] == op.name)
            assert f"kernel {op.strategy}" in line and f"{nbytes:,} bytes" in line
            assert f"d={op.d} K={op.K}" in line and "response error" in line


def test_progress_lines_when_not_a_terminal():
    from qengine.progress import Progress
    s = io.StringIO()
    p = Progress("error correction", 3, stream=s, log_every=0.0)
    for _ in range(3):
        p.update(1)
    p.close()
    assert not p.enabled and "error correction: 1/3 (33%)" in s.getvalue() and "eta" in s.getvalue()
    s = io.StringIO()
    p = Progress("qrun", 10, stream=s, unit="images", enabled=True)
    p.update(5)
    assert "5/10" in s.getvalue() and "images/s" in s.getvalue()
    s = io.StringIO()
    Progress("quiet", 10, stream=s).update(10)                  # not a terminal, no log_every
    assert s.getvalue() == ""


def test_qinfo_shows_layers_preprocessing_classes_provenance(tmp_path):
    r = run("qinfo", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    with qengine.load(default_model()) as m:
        assert info["input"] == [3, 227, 227] and info["classes"] == 1000
        assert info["preprocess"] == m.metadata["preprocess"]
        by = {L["name"]: L for L in info["layers"]}
        for op in m.layers:
            if op.weighted:
                quant = op.L["weights"]["mode"] == "lut"
                assert by[op.name]["form"] == ("quantized" if quant else "dense")
                assert by[op.name]["kernel"] == op.strategy
                assert by[op.name]["winograd_form"] == (
                    op.wino_tile if op.strategy == "winograd" else None)
                if quant:
                    assert (by[op.name]["d"], by[op.name]["K"]) == (op.d, op.K)
        dense, stored = m.weight_bytes()
    assert sum(L.get("bytes", 0) for L in info["layers"]) == stored
    assert 1.5 < info["theoretical_speedup"] < 2.0
    assert info["provenance"]["quantization"]["error_correction"] is True
    r = run("qinfo")
    assert r.returncode == 0 and "conv_final" in r.stdout and "d=4 K=128" in r.stdout
    assert "resize to 256x256" in r.stdout and "1000 classes" in r.stdout
    bad = tmp_path / "bad.qcnn"
    bad.write_bytes(b"\x89QCNN\r\n\x1a" + b"\0" * 40)
    r = run("qinfo", str(bad))
    assert r.returncode == 1 and str(bad) in r.stderr and "Traceback" not in r.stderr


def test_qbench_percentiles_sweeps_csv_markdown(tmp_path):
    model = tmp_path / "tiny.qcnn"
    build(model)
    r = run("qbench", str(model), "--runs", "12", "--warmup", "0", "--threads", "1,2",
            "--batch", "1,3", "--json")
    assert r.returncode == 0, r.stderr
    sweep = json.loads(r.stdout)["sweep"]
    assert [(s["threads"], s["batch"]) for s in sweep] == [(1, 1), (1, 3), (2, 1), (2, 3)]
    for s in sweep:
        m = s["ms_per_image"]
        assert m["min"] <= m["median"] <= m["p90"] <= m["p99"] <= m["max"] and m["std"] >= 0
        # beside every multi-thread figure: a cache line's round trip between
        # two of the threads, before and after its runs (None: no second CPU)
        trip = s.get("core_round_trip_ns")
        assert (trip is None) == (s["threads"] == 1)
        if trip is not None:
            assert len(trip) == 2 and all(t is None or 1 < t < 1e6 for t in trip)
            if len(os.sched_getaffinity(0)) >= 2:
                assert all(t is not None for t in trip)
    r = run("qbench", str(model), "--runs", "5", "--warmup", "0", "--batch", "1,2", "--csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    totals = [x for x in rows if x["layer"] == "(total)"]
    assert [x["batch"] for x in totals] == ["1", "2"] and all(float(x["images_per_s"]) > 0
                                                               for x in totals)
    r = run("qbench", str(model), "--runs", "5", "--warmup", "0", "--markdown")
    assert r.returncode == 0 and "| layer | type |" in r.stdout and "|---:|" in r.stdout
    r = run("qbench", str(model), "--runs", "5", "--threads", "1,x")
    assert r.returncode == 2 and "1,x" in r.stderr


def test_predict_takes_paths_pil_arrays_batches_and_iterables(tmp_path):
    from PIL import Image
    model = tmp_path / "tiny.qcnn"
    build(model)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (20 + i, 25, 3), dtype=np.uint8) for i in range(5)]
    paths = []
    for i, a in enumerate(imgs):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(a).save(paths[-1])
    with qengine.load(str(model)) as m:
        ref = [m.predict(p)[0] for p in paths]
        assert [m.predict(Image.open(p))[0] for p in paths] == ref
        assert [m.predict(a)[0] for a in imgs] == ref                       # uint8 HxWx3
        assert m.predict(imgs) == ref and m.predict(tuple(paths)) == ref
        x = m.preprocess(paths)                                             # float NCHW
        assert m.predict(x) == ref and [m.predict(x[i])[0] for i in range(5)] == ref
        assert m(x).shape[0] == 5                                           # model(x)
        grey = rng.integers(0, 255, (30, 30), dtype=np.uint8)
        assert m.predict(grey)[0] == m.predict(np.repeat(grey[:, :, None], 3, 2))[0]
        # any iterable, lazily: nothing is read before it is asked for
        seen = []

        def gen():
            for p in paths:
                seen.append(p)
                yield p
        out = m.predict(gen(), batch=2)
        assert seen == []
        assert next(out) == ref[0] and len(seen) == 2
        assert [ref[0]] + list(out) == ref
        with pytest.raises(qengine.InputError, match="preprocessed input"):
            m.predict(np.zeros((3, 5, 5), np.float32))
        with pytest.raises(qengine.InputError, match="iterable"):
            m.predict(42)
