"""qrun on many images: folders, @lists, stdin, JSON lines and CSV, result
files written as they go, --resume after a kill; qengine.distributed on a
LocalCluster of two worker processes, one of them killed mid-run."""
import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, shared_path
from modelkit import build
from test_cli import _popen, run

from qengine import scoring


def _images(folder, n, bad=()):
    """n small PNGs (distinct pixels) in folder/a and folder/b/c, plus corrupt files."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        sub = folder / ("a" if i % 2 else os.path.join("b", "c"))
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"img{i:04d}.png"
        Image.fromarray(rng.integers(0, 255, (24 + i % 7, 30, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    for name in bad:
        (folder / name).write_bytes(b"not an image")
        paths.append(str(folder / name))
    (folder / "notes.txt").write_text("not an image, skipped by extension")
    (folder / ".hidden.png").write_bytes(b"skipped: hidden")
    return paths


def _records(text):
    return [json.loads(x) for x in text.splitlines() if x.strip()]


def test_expand_folders_lists_stdin(tmp_path):
    paths = _images(tmp_path / "imgs", 6, bad=("z.jpg",))
    folder = scoring.expand([str(tmp_path / "imgs")])
    assert sorted(folder) == sorted(paths) and len(folder) == 7      # .txt and hidden skipped
    assert folder == scoring.expand([str(tmp_path / "imgs")])        # a stable order
    lst = tmp_path / "list.txt"
    lst.write_text(f"# a comment\n{paths[0]}\n\n{paths[1]}\n")
    assert scoring.expand([f"@{lst}", "-", paths[2]], stdin=io.StringIO(paths[3] + "\n")) == \
        [paths[0], paths[1], paths[3], paths[2]]
    with pytest.raises(scoring.InputsError, match="cannot read the image list"):
        scoring.expand([f"@{tmp_path / 'missing.txt'}"])


def test_qrun_folder_jsonl_csv_and_errors(tmp_path):
    model = tmp_path / "tiny.qcnn"
    build(model)
    paths = _images(tmp_path / "imgs", 9, bad=("broken.png",))
    r = run("qrun", str(model), str(tmp_path / "imgs"), "--jsonl", "--top", "2", "--batch", "4")
    assert r.returncode == 1                                # one image failed
    recs = _records(r.stdout)
    assert sorted(x["image"] for x in recs) == sorted(paths)          # each exactly once
    bad = [x for x in recs if "error" in x]
    assert len(bad) == 1 and "broken.png" in bad[0]["error"]
    assert all(len(x["top"]) == 2 and x["top"][0]["prob"] >= x["top"][1]["prob"]
               for x in recs if "error" not in x)
    assert "qrun: 10 images (1 failed)" in r.stderr and "images/s" in r.stderr
    # the same records as the Python API, image by image
    import qengine
    with qengine.load(str(model)) as m:            # fast, as qrun
        for x in recs:
            if "error" not in x:
                assert x["top"] == m.predict(x["image"], top=2)[0]
    # CSV: a header and a row per image
    lst = tmp_path / "l.txt"
    lst.write_text("\n".join(paths[:3]) + "\n")
    r = run("qrun", str(model), f"@{lst}", "--csv", "--top", "1")
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0] == ["image", "top1_index", "top1_label", "top1_prob", "ms", "error"]
    assert [row[0] for row in rows[1:]] == paths[:3]
    assert [int(row[1]) for row in rows[1:]] == \
        [x["top"][0]["index"] for p in paths[:3] for x in recs if x["image"] == p]


def test_qrun_output_refuses_to_overwrite_and_resumes_a_cut_file(tmp_path):
    model = tmp_path / "tiny.qcnn"
    build(model)
    _images(tmp_path / "imgs", 12)
    out = tmp_path / "out.jsonl"
    r = run("qrun", str(model), str(tmp_path / "imgs"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    full = _records(out.read_text())
    assert len(full) == 12
    r = run("qrun", str(model), str(tmp_path / "imgs"), "-o", str(out))
    assert r.returncode == 1 and "already exists" in r.stderr and "--force" in r.stderr
    # a crash mid-write: 5 complete records and half of the sixth
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:5]) + lines[5][:17])
    r = run("qrun", str(model), str(tmp_path / "imgs"), "-o", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    assert "7 images (0 failed, 5 already in the output)" in r.stderr
    again = _records(out.read_text())
    assert [scoring.strip_timing(x) for x in again] == [scoring.strip_timing(x) for x in full]
    # resuming into a file qrun did not write is refused, the file untouched
    other = tmp_path / "other.jsonl"
    other.write_text("hello\n")
    r = run("qrun", str(model), str(tmp_path / "imgs"), "-o", str(other), "--resume")
    assert r.returncode == 1 and "not a qrun record" in r.stderr
    assert other.read_text() == "hello\n"


def test_qrun_killed_then_resumed_has_every_image_once(tmp_path):
    """The issue's target on real photos: SIGKILL mid-run, --resume, every
    image exactly once, the same records as an uninterrupted run."""
    folder = shared_path("ilsvrc12-val", "set1300")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".JPEG"))[:120]
    lst = tmp_path / "photos.txt"
    lst.write_text("".join(os.path.join(folder, f) + "\n" for f in names))
    out = tmp_path / "out.jsonl"
    p = _popen("qrun", f"@{lst}", "--jsonl", "-o", str(out), "--batch", "4",
               stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 20:
            break
        time.sleep(0.05)
    assert p.poll() is None, "qrun ended before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    p.stderr.close()
    cut = out.read_text().count("\n")
    assert 20 <= cut < len(names)
    r = run("qrun", f"@{lst}", "--jsonl", "-o", str(out), "--batch", "4", "--resume")
    assert r.returncode == 0, r.stderr
    recs = _records(out.read_text())
    assert [x["image"] for x in recs] == [os.path.join(folder, f) for f in names]
    ref = tmp_path / "ref.jsonl"
    r = run("qrun", f"@{lst}", "--jsonl", "-o", str(ref), "--batch", "4")
    assert r.returncode == 0, r.stderr
    assert [scoring.strip_timing(x) for x in recs] == \
        [scoring.strip_timing(x) for x in _records(ref.read_text())]


def test_qrun_reads_a_list_on_stdin_and_options_between(tmp_path):
    model = tmp_path / "tiny.qcnn"
    build(model)
    paths = _images(tmp_path / "imgs", 3)
    import qengine
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(qengine.__file__)))
    r = subprocess.run([sys.executable, "-c", "import sys; from qengine.cli.qrun import main; "
                        "sys.exit(main())", str(model), "-", "--top", "1", "--jsonl"],
                       input="\n".join(paths) + "\n", capture_output=True, text=True,
                       timeout=120, env=env, cwd=os.path.dirname(ROOT))
    assert r.returncode == 0, r.stderr
    assert [x["image"] for x in _records(r.stdout)] == paths


# -- Dask ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("distributed")
    from dask.distributed import Client, LocalCluster
    lc = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=50)
    client = Client(lc)
    yield lc, client
    client.close()
    lc.close()


def _photos(n):
    folder = shared_path("ilsvrc12-val", "set1300")
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if f.endswith(".JPEG")][:n]


def _stripped_text(path):
    return "".join(json.dumps(scoring.strip_timing(json.loads(x)), ensure_ascii=False) + "\n"
                   for x in open(path, encoding="utf-8") if x.strip())


def test_cluster_records_equal_a_single_process_run(tmp_path, cluster):
    lc, client = cluster
    from qengine import distributed
    from qengine.models import default_model
    photos = _photos(24) + [str(tmp_path / "missing.jpg")]
    single = tmp_path / "single.jsonl"
    r = run("qrun", *photos, "--jsonl", "-o", str(single))
    assert r.returncode == 1, r.stderr                      # the missing file
    out = tmp_path / "cluster.jsonl"
    res = distributed.score_to_file(photos, default_model(), str(out), client=client,
                                    partition_size=5)
    assert res == {"scored": 25, "failed": 1, "skipped": 0, "workers": 2}
    assert _stripped_text(out) == _stripped_text(single)    # byte for byte, timing aside
    # the model is loaded once per worker process, however many tasks ran there
    assert set(client.run(lambda: len(__import__("qengine.distributed").distributed._MODELS))
               .values()) <= {1}
    # qrun --scheduler: the same file
    out2 = tmp_path / "cli.jsonl"
    r = run("qrun", *photos, "--jsonl", "-o", str(out2), "--scheduler", lc.scheduler_address,
            "--partition-size", "7")
    assert r.returncode == 1 and "on 2 Dask workers" in r.stderr, r.stderr
    assert _stripped_text(out2) == _stripped_text(single)
    # per-partition files: JSON lines and Parquet, each partition once
    bag = distributed.score(photos[:10], default_model(), partition_size=4)
    files = distributed.to_files(bag, str(tmp_path / "parts"), fmt="parquet")
    assert [os.path.basename(f) for f in files] == \
        ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    import pandas as pd
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    recs = _records(single.read_text())[:10]
    assert list(df["image"]) == [x["image"] for x in recs]
    assert [list(v) for v in df["index"]] == [[t["index"] for t in x["top"]] for x in recs]
    files = distributed.to_files(bag, str(tmp_path / "parts"), fmt="jsonl")
    got = [json.loads(x) for f in files for x in open(f)]
    assert [scoring.strip_timing(x) for x in got] == [scoring.strip_timing(x) for x in recs]
    assert not [f for f in os.listdir(tmp_path / "parts") if ".tmp-" in f]


def test_cluster_survives_a_killed_worker(tmp_path, cluster):
    """SIGKILL one worker process mid-run: Dask runs its tasks again, and the
    output has every image exactly once, with the single-process records."""
    lc, client = cluster
    from qengine import distributed
    from qengine.models import default_model
    photos = _photos(60)
    single = tmp_path / "single.jsonl"
    r = run("qrun", *photos, "--jsonl", "-o", str(single))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "cluster.jsonl"
    client.wait_for_workers(2, timeout=60)
    pids = client.run(os.getpid)
    result = {}

    def go():
        result["r"] = distributed.score_to_file(photos, default_model(), str(out),
                                                client=client, partition_size=3)
    t = threading.Thread(target=go)
    t0 = time.time()
    t.start()
    while time.time() - t0 < 120 and not (out.exists() and out.read_text().count("\n") >= 6):
        time.sleep(0.02)
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    t.join(timeout=300)
    assert not t.is_alive()
    assert result["r"]["scored"] == 60 and result["r"]["failed"] == 0
    recs = _records(out.read_text())
    assert [x["image"] for x in recs] == photos                # none lost, none twice
    assert _stripped_text(out) == _stripped_text(single)
    # the nanny restarted the killed worker
    client.wait_for_workers(2, timeout=60)
    assert victim not in client.run(os.getpid).values()
