"""The command-line tools end to end, as a user runs them."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, shared_path

from modelkit import build


def run(tool, *args, without_numpy=False):
    """Run a tool the way its console script does, with the same interpreter and
    the same qengine package the tests import.  without_numpy: the run fails
    if the tool imported numpy."""
    import qengine
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(qengine.__file__)))
    env["PYTHONPATH"] = pkg_parent + os.pathsep + env.get("PYTHONPATH", "")
    code = f"import sys; from qengine.cli.{tool} import main; rc = main()"
    if without_numpy:
        code += "; sys.exit(17) if 'numpy' in sys.modules else None"
    code += "; sys.exit(rc)"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300, cwd=os.path.dirname(ROOT), env=env)


def test_qconvert_qrun_qbench_alexnet(tmp_path):
    src = shared_path("qcnn-alexnet")
    out = tmp_path / "alexnet.qcnn"
    r = run("qconvert", src, "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stderr and out.exists()
    # refuses to overwrite without --force, and keeps the file
    before = out.read_bytes()
    r = run("qconvert", src, "-o", str(out))
    assert r.returncode != 0 and "--force" in r.stderr
    assert out.read_bytes() == before
    assert run("qconvert", src, "-o", str(out), "--force", "-q").returncode == 0

    imgs = [shared_path("ilsvrc12-val", "bmp", f"ILSVRC2012_val_{i:08d}.BMP") for i in (1, 2)]
    r = run("qrun", str(out), *imgs, "--json", "--top", "3")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["image"] for x in lines] == imgs
    for x in lines:
        assert len(x["top"]) == 3 and x["ms"] > 0
        assert set(x["top"][0]) == {"index", "label", "prob"}
        assert 0 <= x["top"][0]["prob"] <= 1
    r = run("qrun", str(out), imgs[0], without_numpy=True)
    assert r.returncode == 0, "qrun imported numpy (it costs more than the whole forward pass)"
    assert "1." in r.stdout
    fast = json.loads(run("qrun", str(out), imgs[0], "--json").stdout)
    exact = json.loads(run("qrun", str(out), imgs[0], "--json", "--exact").stdout)
    assert fast["top"][0]["index"] == exact["top"][0]["index"]
    # qrun's numpy-free path gives what the numpy API gives
    import numpy as np
    import qengine
    m = qengine.load(str(out), mode="exact")
    probs = m.forward(m.preprocess(imgs[0])).reshape(-1)
    want = np.argsort(-probs, kind="stable")[:5]
    assert [t["index"] for t in exact["top"]] == list(want)
    assert np.allclose([t["prob"] for t in exact["top"]], probs[want], rtol=1e-6, atol=0)

    r = run("qbench", str(out), "--runs", "2", "--warmup", "1", "--json")
    assert r.returncode == 0, r.stderr
    b = json.loads(r.stdout)
    assert b["ms_per_image"]["median"] > 0 and b["images_per_s"] > 0
    assert b["size_bytes"] == out.stat().st_size and b["peak_rss_bytes"] > 0
    names = [L["name"] for L in b["layers"]]
    assert names[0] == "conv1" and "fc8" in names
    assert 2.5 < b["theoretical_speedup"] < 5
    assert b["mode"] == "fast"
    r = run("qbench", str(out), "--runs", "2", "--warmup", "0", "--exact")
    assert r.returncode == 0 and "images/s" in r.stdout and "conv3" in r.stdout
    assert "mode=exact" in r.stdout


def test_qbench_synthetic_and_qrun_on_small_model(tmp_path):
    r = run("qbench", "--synthetic", "alexnet", "--runs", "1", "--warmup", "0", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"] == "synthetic:alexnet"
    r = run("qbench", "--synthetic", "lenet9")
    assert r.returncode == 2 and "unknown architecture" in r.stderr

    model = tmp_path / "tiny.qcnn"
    build(model)
    from PIL import Image
    import numpy as np
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(img)
    r = run("qrun", str(model), str(img), "--top", "2", without_numpy=True)
    assert r.returncode == 0, r.stderr
    assert "class" in r.stdout


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_qrun_bad_image_gives_one_line(tmp_path, content):
    model = tmp_path / "tiny.qcnn"
    build(model)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(content)
    r = run("qrun", str(model), str(bad))
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and str(bad) in r.stderr


def test_missing_and_corrupt_files(tmp_path):
    r = run("qrun", str(tmp_path / "none.qcnn"), "x.jpg")
    assert r.returncode == 1 and "none.qcnn" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    model = tmp_path / "tiny.qcnn"
    build(model)
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1
    (tmp_path / "bad.qcnn").write_bytes(bytes(data))
    for tool in ("qrun", "qbench"):
        args = [str(tmp_path / "bad.qcnn")] + (["x.png"] if tool == "qrun" else [])
        r = run(tool, *args)
        assert r.returncode == 1 and "checksum" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    r = run("qconvert", str(tmp_path), "-o", str(tmp_path / "o.qcnn"))
    assert r.returncode == 1 and "no Quantized-CNN files" in r.stderr
    assert not (tmp_path / "o.qcnn").exists()


def test_qconvert_caffe_lenet_then_qrun_and_accuracy(tmp_path):
    src = shared_path("caffe", "lenet")
    out = tmp_path / "lenet.qcnn"
    labels = tmp_path / "digits.txt"
    labels.write_text("\n".join(f"digit {i}" for i in range(10)) + "\n")
    r = run("qconvert", src, "-o", str(out), "--scale", "0.00390625", "--labels", str(labels),
            "--layer", "conv2:d=4,k=64")
    assert r.returncode == 0, r.stderr
    assert "conv2" in r.stderr and "d=4 K=64" in r.stderr
    # an MNIST digit as a PNG file, classified with the embedded labels
    from qengine.datasets import open_set
    from PIL import Image
    items, y = open_set(shared_path("mnist-t10k"), limit=3)
    img = tmp_path / "digit.png"
    Image.fromarray(items[0]).save(img)
    r = run("qrun", str(out), str(img), "--json", "--top", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["top"][0]["label"] == f"digit {y[0]}"
    dense = tmp_path / "dense.qcnn"
    assert run("qconvert", src, "-o", str(dense), "--scale", "0.00390625", "--keep-dense",
               "all").returncode == 0
    r = run("qbench", str(out), "--accuracy", shared_path("mnist-t10k"), "--against", str(dense),
            "--limit", "2000", "--json")
    assert r.returncode == 0, r.stderr
    acc = json.loads(r.stdout)
    rows = {(x["role"], x["mode"]): x for x in acc["rows"]}
    assert rows[("dense", "exact")]["top1"] - rows[("model", "exact")]["top1"] <= 0.005
    assert rows[("model", "fast")]["fast_vs_exact_agreement"] >= 0.99
    assert acc["compression"] > 4 and acc["theoretical_speedup"] > 1


def test_qconvert_caffe_errors(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "deploy.prototxt").write_text(
        'input: "d" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
        'layer { name: "bn" type: "Deconvolution" bottom: "d" top: "bn" }\n'
        'layer { name: "sc" type: "PReLU" bottom: "bn" top: "sc" }\n')
    (bad / "w.caffemodel").write_bytes(b"")
    r = run("qconvert", str(bad), "-o", str(tmp_path / "o.qcnn"))
    assert r.returncode == 1 and "unsupported layers: bn (Deconvolution), sc (PReLU)" in r.stderr
    r = run("qconvert", "--caffemodel", str(bad / "w.caffemodel"), "-o", str(tmp_path / "o.qcnn"))
    assert r.returncode == 2 and "--prototxt" in r.stderr
    r = run("qconvert", shared_path("caffe", "lenet"), "-o", str(tmp_path / "o.qcnn"),
            "--layer", "conv9:d=2,k=4")
    assert r.returncode == 1 and "conv9" in r.stderr
    assert not (tmp_path / "o.qcnn").exists()


def test_qrun_batches_with_threads_and_skips_bad_images(tmp_path):
    model = tmp_path / "tiny.qcnn"
    build(model)
    from PIL import Image
    import numpy as np
    good = tmp_path / "g.png"
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    r = run("qrun", str(model), str(good), str(bad), str(good), "--threads", "2", "--json")
    assert r.returncode == 1
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    # one record per image, in order; the bad one is an error record and the run goes on
    assert [x["image"] for x in lines] == [str(good), str(bad), str(good)]
    assert lines[0]["top"] == lines[2]["top"]
    assert "bad.jpg" in lines[1]["error"] and "top" not in lines[1]
    err = r.stderr.strip().splitlines()
    assert len(err) == 2 and "bad.jpg" in err[0]
    assert err[1].startswith("qrun: 3 images (1 failed) in ")


def test_qconvert_finetune_and_agreement_errors(tmp_path, monkeypatch, capsys):
    """--finetune without PyTorch names the install command, without --calib
    says so; --min-agreement beside explicit settings is refused; all before
    any long work, and no output is left behind."""
    import sys
    from qengine.cli.qconvert import main
    out = tmp_path / "o.qcnn"
    lenet = shared_path("caffe", "lenet")
    import numpy as np
    np.save(tmp_path / "x.npy", np.zeros((40, 1, 28, 28), np.float32))
    monkeypatch.setitem(sys.modules, "torch", None)         # as if not installed
    for extra, msg in ((["--finetune", "--calib", str(tmp_path / "x.npy")],
                        "pip install 'qengine[finetune]'"),
                       (["--finetune"], "--finetune needs calibration images"),
                       (["--min-agreement", "0.9", "--conv-k", "16"], "--min-agreement")):
        with pytest.raises(SystemExit) as e:
            main([lenet, "-o", str(out), "--scale", "0.00390625", "-q"] + extra)
        assert e.value.code != 0 and msg in capsys.readouterr().err
        assert not out.exists()
    r = run("qconvert", lenet, "-o", str(out), "--min-agreement", "0.9", "--conv-k", "16")
    assert r.returncode == 1 and "--min-agreement" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("tool", ["qconvert", "qrun", "qbench", "qinfo"])
def test_every_tool_has_version(tool):
    import qengine
    r = run(tool, "--version")
    assert r.returncode == 0 and f"{tool} (qengine) {qengine.__version__}" in r.stdout
    assert "kernels:" in r.stdout and r.stderr == ""


def test_a_missing_output_directory_is_named(tmp_path):
    out = tmp_path / "no" / "such" / "dir" / "m.qcnn"
    r = run("qconvert", shared_path("caffe", "lenet"), "-o", str(out), "--scale", "0.00390625",
            "--keep-dense", "all")
    assert r.returncode == 1
    assert f"the output directory {out.parent} does not exist" in r.stderr
    assert "Traceback" not in r.stderr and ".tmp" not in r.stderr


def test_accuracy_against_a_model_of_another_task_is_refused(tmp_path):
    """qbench --accuracy SET --against OTHER: a reference with another input
    shape or class count is an error, not 0.00% agreement."""
    tiny = tmp_path / "tiny.qcnn"
    build(tiny)
    lenet = tmp_path / "lenet.qcnn"
    r = run("qconvert", shared_path("caffe", "lenet"), "-o", str(lenet), "--scale", "0.00390625",
            "--keep-dense", "all", "-q")
    assert r.returncode == 0, r.stderr
    r = run("qbench", str(lenet), "--accuracy", shared_path("mnist-t10k"), "--against", str(tiny),
            "--limit", "20")
    assert r.returncode == 1 and "--against needs a model of the same task" in r.stderr
    assert "Traceback" not in r.stderr


def _popen(tool, *args, **kw):
    import qengine
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(qengine.__file__)))
    env["PYTHONPATH"] = pkg_parent + os.pathsep + env.get("PYTHONPATH", "")
    code = f"import sys; from qengine.cli.{tool} import main; sys.exit(main())"
    # from outside the source tree (as run() does): with a non-editable install
    # the tree's qengine has no compiled kernels
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, text=True,
                            stderr=subprocess.PIPE, cwd=os.path.dirname(ROOT), **kw)


def test_qrun_closed_pipe_ctrl_c_and_intermixed_options(tmp_path):
    """`qrun ... --json | head -1` ends quietly; options may sit between
    images; Ctrl-C in qbench is one line, no traceback."""
    import signal
    import time
    from PIL import Image
    import numpy as np
    model = tmp_path / "tiny.qcnn"
    build(model)
    img = tmp_path / "g.png"
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(img)
    p = _popen("qrun", str(model), *[str(img)] * 3000, "--json", stdout=subprocess.PIPE)
    first = p.stdout.readline()
    p.stdout.close()                                  # the reader goes away, as head does
    err = p.stderr.read()
    p.wait(timeout=120)
    assert first, err
    assert json.loads(first)["image"] == str(img)
    assert err == "" and p.returncode == 141, err
    r = run("qrun", str(model), str(img), "--top", "1", str(img), "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 2 and all(len(x["top"]) == 1 for x in lines)
    p = _popen("qbench", str(model), "--runs", "100000000", stdout=subprocess.DEVNULL)
    time.sleep(3)
    p.send_signal(signal.SIGINT)
    err = p.stderr.read()
    p.wait(timeout=60)
    assert p.returncode == 130 and err.strip() == "qbench: interrupted", err


def _tool(tmp_path, name):
    """(run(*args) -> CompletedProcess of tools/NAME with the qengine package the
    tests import (installed, or built in place), a small model's path)."""
    import qengine
    script = os.path.join(ROOT, "tools", name)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(qengine.__file__)))
    env = dict(os.environ, PYTHONPATH=pkg_parent + os.pathsep + os.environ.get("PYTHONPATH", ""))
    model = str(tmp_path / "m.qcnn")
    build(model)

    def run(*args):
        return subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                              env=env, timeout=300, cwd=str(tmp_path))
    return run, model


def _one_line_errors(run, cases):
    for args, says in cases:
        p = run(*args)
        assert p.returncode == 2, p.stderr
        assert says in p.stderr and "Traceback" not in p.stderr


def test_peer_table_bad_inputs_give_one_line_not_a_traceback(tmp_path):
    run, model = _tool(tmp_path, "peer_table.py")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_errors(run, (([model, "--calib", str(tmp_path / "nowhere")], "not a directory"),
                           ([str(tmp_path / "none.qcnn")], "no such file"),
                           ([model, "--calib", str(empty), "--runs", "1"], "no images")))


def test_build_ab_compares_two_thread_counts_and_reports_bad_input(tmp_path):
    run, model = _tool(tmp_path, "build_ab.py")
    # the same build on 1 and 2 threads: the same bits, a ratio printed
    p = run(model, "--b-threads", "2", "--rounds", "2", "--batch", "3", "--layers")
    assert p.returncode == 0, p.stderr
    assert "max|A - B| 0" in p.stdout and "B/A" in p.stdout, p.stdout
    import qengine
    names = qengine.load(model).layer_names
    # one row per layer run, in order (a ReLU fused into its layer has none)
    rows = [ln.split()[0] for ln in p.stdout.splitlines()[5:]]
    assert "c1" in rows and [n for n in names if n in rows] == rows, p.stdout
    _one_line_errors(run, (([str(tmp_path / "none.qcnn")], "no such file"),
                           ([model, "--b-src", str(tmp_path)], "no qengine package there")))
