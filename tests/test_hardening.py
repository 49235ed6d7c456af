"""Hostile but valid inputs (issue "Hardening II"): each class of input that once
exhausted memory or time, overflowed a size, hung a process or changed the host
program's state, refused or handled, checked against today's behaviour."""
import json
import multiprocessing as mp
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest

import qengine
from qengine import InputError, ModelError, QEngineError, _kernels
from qengine import format as qformat
from qengine.budget import DEFAULT_LIMITS

from modelkit import build, conv, layer

HERE = os.path.dirname(os.path.abspath(__file__))


def write_model(path, graph, tensors, preprocess=None, class_names=None):
    meta = {"graph": graph, "preprocess": preprocess or {}, "class_names": class_names or []}
    qformat.write(str(path), meta, tensors)
    return str(path)


def dense_conv(name, bottom, cin, n, k, s=1, p=0, top=None):
    L = conv(name, bottom, n, k, s=s, p=p, top=top)
    L["weights"] = {"mode": "dense", "weight": f"{name}.w"}
    return L, {f"{name}.w": np.full((n, cin, k, k), 0.01, np.float32)}


def one_conv_model(path, shape, n, k, s=1, p=0):
    L, t = dense_conv("c", "data", shape[0], n, k, s, p)
    return write_model(path, {"input": {"name": "data", "shape": list(shape)}, "layers": [L]}, t)


# -- 1. memory and time from a tiny valid file ------------------------------

def test_huge_stride_scratch_is_refused_at_load(tmp_path):
    # a 1x1 convolution of stride 4096 over a 4096x4096 input: 4096^2 phase planes
    p = one_conv_model(tmp_path / "m.qcnn", (2, 4096, 4096), 1, 1, s=4096)
    assert os.path.getsize(p) < 2000
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match="workspace"):
        qengine.load(p, mode="exact")
    assert time.perf_counter() - t0 < 2


def live_activations_model(path, preprocess=None):
    """20 convolutions of 64 x 512 x 512 outputs, each read again only at the end
    (1.25 GiB of activations alive at once, from a file of a few KiB)."""
    layers, tensors = [], {}
    for i in range(20):
        L, t = dense_conv(f"c{i}", "data", 1, 64, 1)
        layers.append(L)
        tensors.update(t)
    for i in range(20):
        layers.append(layer(f"p{i}", "Pooling", f"c{i}", pool="AVE", kernel=[0, 0],
                            stride=[1, 1], pad=[0, 0], **{"global": True}))
    layers.append(layer("cat", "Concat", [f"p{i}" for i in range(20)], axis=1))
    g = {"input": {"name": "data", "shape": [1, 512, 512]}, "layers": layers}
    return write_model(path, g, tensors, preprocess=preprocess)


def huge_kernel_model(path, preprocess=None):
    """A 2048 x 2048 kernel padded by 2047 on a 2048 x 2048 input, 1-bit indices:
    0.5 MB of file, 7e4 G multiply-adds and lookups per image."""
    L = conv("c", "data", 1, 2048, p=2047)
    L["weights"] = {"mode": "lut", "codebook": "cb", "indices": "idx"}
    return write_model(path, {"input": {"name": "data", "shape": [1, 2048, 2048]},
                              "layers": [L]},
                       {"cb": np.ones((1, 2, 1), np.float32),
                        "idx": qformat.Tensor(np.zeros((1, 2048, 2048, 1), np.uint8), bits=1)},
                       preprocess=preprocess)


def test_many_live_activations_are_refused(tmp_path):
    p = live_activations_model(tmp_path / "m.qcnn")
    assert os.path.getsize(p) < 64 << 10
    with pytest.raises(ModelError, match=r"activations.*over the limit"):
        qengine.load(p, mode="exact")
    # a caller who trusts the model raises the limit; the peak is all 20 outputs
    # and the input, as the last convolution runs
    m = qengine.load(p, limits={"activations": 2 << 30}, mode="exact")
    assert m.resources["activations"] == 4 * (20 * 64 * 512 * 512 + 512 * 512)


def test_input_shape_beyond_the_budget_is_refused_at_load(tmp_path):
    # a global pooling first: only the input itself is large (13 TB as floats)
    g = {"input": {"name": "data", "shape": [3, 1 << 20, 1 << 20]},
         "layers": [layer("p", "Pooling", "data", pool="AVE", kernel=[0, 0], stride=[1, 1],
                          pad=[0, 0], **{"global": True})]}
    p = write_model(tmp_path / "m.qcnn", g, {})
    with pytest.raises(ModelError, match="input"):
        qengine.load(p, mode="exact")


def test_huge_kernel_and_pad_cost_is_refused(tmp_path):
    p = huge_kernel_model(tmp_path / "m.qcnn")
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match="work"):
        qengine.load(p, mode="exact")
    assert time.perf_counter() - t0 < 2


@pytest.mark.parametrize("k,p,s", [(3, 33, 1), (1, 40, 1), (3, 1, 300)])
def test_pad_or_stride_out_of_proportion_is_refused(tmp_path, k, p, s):
    path = one_conv_model(tmp_path / "m.qcnn", (3, 32, 32), 4, k, s=s, p=p)
    with pytest.raises(ModelError, match="pad .* or stride"):
        qengine.load(path, mode="exact")


def test_shared_codebook_is_decoded_once(tmp_path):
    """40 layers name one qdelta2d codebook: one decode, one buffer, counted once."""
    rng = np.random.default_rng(0)
    d, K, C = 4, 16, 8
    cb = (0.01 * np.cumsum(rng.standard_normal((C // d, K, d)), axis=1)).astype(np.float32)
    tensors = {"cb": qformat.Tensor(cb, encoding="qdelta2d", step=1 / 4096)}
    layers, bottom = [], "data"
    for i in range(40):
        L = conv(f"c{i}", bottom, C, 3, p=1)
        L["weights"] = {"mode": "lut", "codebook": "cb", "indices": f"i{i}"}
        tensors[f"i{i}"] = rng.integers(0, K, (C, 3, 3, C // d)).astype(np.uint8)
        layers.append(L)
        bottom = f"c{i}"
    g = {"input": {"name": "data", "shape": [C, 12, 12]}, "layers": layers}
    p = write_model(tmp_path / "m.qcnn", g, tensors)
    m = qengine.load(p, strategy="lut", mode="exact")
    cbs = {id(op.codebook) for op in m._ops}
    assert len(cbs) == 1
    assert m.resources["tensors"] == cb.nbytes
    x = rng.standard_normal((1, C, 12, 12)).astype(np.float32)
    assert np.isfinite(m.forward(x)).all()


def test_batch_runs_in_slices_within_the_activation_budget(tmp_path):
    p = tmp_path / "m.qcnn"
    build(p)
    m = qengine.load(str(p), mode="exact")
    x = np.random.default_rng(0).standard_normal((7,) + m.input_shape).astype(np.float32)
    want = np.concatenate([m.forward(x[i:i + 1]) for i in range(7)])
    small = qengine.load(str(p), limits={"activations": m.resources["activations"] * 2}, mode="exact")
    assert np.array_equal(small.forward(x), want)


def test_limits_are_validated():
    for bad in ({"memory": 1}, {"work": 0}, {"work": "1"}, {"tensors": True}, [1]):
        with pytest.raises(InputError):
            qengine.budget.resolve(bad)
    assert qengine.budget.resolve({"work": 5})["work"] == 5


# -- 2. sizes computed in C ---------------------------------------------------

def test_fc_workspace_sizes_do_not_overflow():
    # >= 2^26 inputs with d=1 and K=32: once a 32-bit product, now refused
    for fn in (_kernels.fc_q8_workspace_floats, _kernels.fc_f32_workspace_floats):
        with pytest.raises(ValueError, match="32-bit"):
            fn(1 << 26, 32, 16)
    M, K, cout = 1000, 32, 4096
    # a float table, 8-bit tables and sums for four inputs at a time, then each
    # table row's lowest entry and range
    assert _kernels.fc_q8_workspace_floats(M, K, cout) == \
        M * K + 4 * ((M * 32 + 3) // 4 + cout) + 2 * M
    assert _kernels.fc_f32_workspace_floats(M, K, cout) == M * 32 + cout
    with pytest.raises(ValueError, match="32-bit"):
        _kernels.fc_q8_layout_size(1 << 20, 1 << 12)
    with pytest.raises(ValueError, match="32-bit"):
        _kernels.conv_workspace_floats(1 << 16, 256, 256, 256, 256, 1, 0, 0, 0, 8)


# -- 3. fork after threads ----------------------------------------------------

def _child_forward(path, x, q):
    import qengine as qe
    q.put(qe.load(path, mode="exact").forward(x))


def _child_reuse(q):
    q.put(_SHARED_MODEL.forward(_SHARED_X[:1]))       # one image: the OpenMP threads


_SHARED_MODEL = _SHARED_X = None


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_child_process_after_threaded_work(tmp_path, method):
    global _SHARED_MODEL, _SHARED_X
    p = str(tmp_path / "m.qcnn")
    build(p)
    m = qengine.load(p, threads=2, mode="exact")
    x = np.random.default_rng(1).standard_normal((3,) + m.input_shape).astype(np.float32)
    ref = m.forward(x)
    m.forward(x[:1])                       # OpenMP threads of the kernels
    ctx = mp.get_context(method)
    q = ctx.Queue()
    if method == "fork":                   # the parent's model, used in the child
        _SHARED_MODEL, _SHARED_X = m, x
        proc = ctx.Process(target=_child_reuse, args=(q,))
    else:
        proc = ctx.Process(target=_child_forward, args=(p, x, q))
    proc.start()
    try:
        out = q.get(timeout=60)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    assert np.allclose(out, ref[:len(out)], atol=1e-5)
    assert proc.exitcode == 0


@pytest.mark.parametrize("bad", [0, -1, "2", 2.0, True, None, 10 ** 6])
def test_threads_validated(tmp_path, bad):
    p = str(tmp_path / "m.qcnn")
    build(p)
    with pytest.raises(InputError, match="threads"):
        qengine.load(p, threads=bad, mode="exact")


# -- 4. qconvert outputs --------------------------------------------------------

META = {"graph": {"input": {"name": "d", "shape": [1, 1, 1]}, "layers": []}}


def test_outputs_only_to_regular_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "dir").mkdir()
    targets = [fifo, tmp_path / "dir"]
    try:
        os.mknod(tmp_path / "null", 0o600 | 0o020000, os.makedev(1, 3))
        targets.append(tmp_path / "null")
    except (PermissionError, OSError):
        pass                               # not root: FIFO and directory still checked
    for t in targets:
        for force in (False, True):
            with pytest.raises(QEngineError, match="regular files only"):
                qformat.write(str(t), META, {"x": np.zeros(4, np.float32)}, force=force)
    assert not (tmp_path / "fifo").is_file() and (tmp_path / "dir").is_dir()
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


def test_dangling_symlink_counts_as_existing(tmp_path):
    link = tmp_path / "out.qcnn"
    os.symlink(tmp_path / "missing", link)
    with pytest.raises(QEngineError, match="already exists"):
        qformat.write(str(link), META, {"x": np.zeros(4, np.float32)}, force=False)
    assert os.path.islink(link) and not (tmp_path / "missing").exists()


def test_no_replace_race_without_force(tmp_path, monkeypatch):
    """A file that appears between the last check and the rename is never replaced:
    here it appears just before the output is given its final name."""
    out = tmp_path / "out.qcnn"
    real_replace, real_link = os.replace, os.link

    def race(real):
        def call(src, dst, *a, **k):
            if os.fspath(dst) == str(out) and not out.exists():
                out.write_bytes(b"theirs")
            return real(src, dst, *a, **k)
        return call
    monkeypatch.setattr(os, "replace", race(real_replace))
    monkeypatch.setattr(os, "link", race(real_link))
    with pytest.raises(QEngineError, match="already exists"):
        qformat.write(str(out), META, {"x": np.zeros(4, np.float32)}, force=False)
    assert out.read_bytes() == b"theirs"
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_mid_write_leaves_no_temporary(tmp_path, sig):
    script = (
        "import os, sys, time, numpy as np\n"
        "from qengine import format as f\n"
        "real = os.fsync\n"
        "def slow(fd):\n"
        "    real(fd); open(sys.argv[1] + '.ready', 'w').close(); time.sleep(30)\n"
        "os.fsync = slow\n"
        "f.write(sys.argv[1], {'graph': {}}, {'x': np.zeros(1 << 20, np.float32)})\n")
    out = str(tmp_path / "out.qcnn")
    proc = subprocess.Popen([sys.executable, "-c", script, out], stderr=subprocess.PIPE,
                            cwd=str(tmp_path))
    t0 = time.time()
    while not os.path.exists(out + ".ready"):
        assert time.time() - t0 < 30 and proc.poll() is None
        time.sleep(0.05)
    assert any(n.endswith(".tmp") for n in os.listdir(tmp_path))
    proc.send_signal(sig)
    proc.wait(30)
    assert proc.returncode != 0
    assert not os.path.exists(out)
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


def test_stale_temporary_of_a_killed_writer_is_cleaned(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"], cwd=str(tmp_path))
    dead.wait()
    stale = tmp_path / f"{qformat.TMP_PREFIX}{dead.pid}-abcd.tmp"
    stale.write_bytes(b"x" * 100)
    alive = tmp_path / f"{qformat.TMP_PREFIX}{os.getppid()}-abcd.tmp"   # a live process's
    alive.write_bytes(b"x")
    qformat.write(str(tmp_path / "out.qcnn"), META, {"x": np.zeros(4, np.float32)})
    assert not stale.exists() and alive.exists()


# -- 5. validation of everything read -----------------------------------------

@pytest.mark.parametrize("pp", [
    {"scale": float("nan")}, {"scale": float("inf")}, {"scale": "2"}, {"scale": [1]},
    {"scale": 0}, {"resize": "256"}, {"resize": [256]}, {"crop": [1.5, 2]},
    {"channel_order": 3}, {"mean": 5}, {"mean": {"type": "pixel", "values": [float("nan")]}},
    {"mean": {"type": "pixel", "values": "abc"}}, {"mean": {"type": "image"}},
    {"mean": {"type": "image", "tensor": "missing"}}, {"resize_method": None},
    {"resize": [60000, 60000], "crop": [21, 19]}, [], "x"])
def test_bad_preprocessing_metadata_is_refused_at_load(tmp_path, pp):
    p = tmp_path / "m.qcnn"
    build(p, meta_extra={"preprocess": pp})
    with pytest.raises(QEngineError):
        qengine.load(str(p), mode="exact")


def test_nan_in_bias_or_dense_weights_is_refused(tmp_path):
    for target in ("c2b.bias", "c2b.weight", "f2.weight", "c1.bias"):
        p = tmp_path / f"{target}.qcnn"
        graph, params = build(p)
        qf = qformat.QcnnFile(str(p))
        tensors = {n: qf.tensor(n).copy() for n in qf.tensor_names}
        tensors[target].reshape(-1)[1] = np.nan
        meta = qf.metadata
        qf.close()
        qformat.write(str(p), meta, tensors)
        with pytest.raises(ModelError, match="NaN or infinity"):
            qengine.load(str(p), mode="exact")


@pytest.mark.parametrize("field,value", [("alpha", 1e39), ("k", -1e40), ("beta", 3.5e38)])
def test_float_parameters_beyond_float32_are_refused(tmp_path, field, value):
    from modelkit import tiny_graph
    g = tiny_graph()
    g["layers"][2]["params"][field] = value
    p = tmp_path / "m.qcnn"
    build(p, graph=g)
    with pytest.raises(ModelError, match="alpha, beta or k"):
        qengine.load(str(p), mode="exact")


def test_labels_split_on_newline_only_and_bom_stripped(tmp_path):
    from qengine.convert import read_labels
    f = tmp_path / "labels.txt"
    f.write_bytes("\ufeffn01440764 tench\nn01443537 gold\u2028fish\r\nn01484850 a\x0cb\n"
                  .encode("utf-8"))
    assert read_labels(str(f)) == ["tench", "gold\u2028fish", "a\x0cb"]


def test_fifo_as_model_image_or_labels_fails_at_once(tmp_path):
    from qengine.convert import read_labels
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    p = tmp_path / "m.qcnn"
    build(p)
    m = qengine.load(str(p), mode="exact")
    errors = []

    def attempt():
        for call in (lambda: qengine.load(fifo, mode="exact"), lambda: m.predict(fifo),
                     lambda: read_labels(fifo)):
            try:
                call()
            except QEngineError as e:
                errors.append(str(e))
    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():                        # unblock the hung open() before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO hangs")
    assert len(errors) == 3 and all("FIFO" in e for e in errors)


# -- 6. bounded reader cost -----------------------------------------------------

def _peak(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_prototxt_parser_memory_is_a_small_multiple_of_its_text():
    from qengine.readers import prototxt
    text = "a: 1 b: 2.5\n" * 25_000             # 300 KB of tiny fields, 200,000 tokens
    peak = _peak(lambda: prototxt.parse(text))
    assert peak < 8 * len(text), peak


def test_caffemodel_of_empty_blobs_is_refused_quickly(tmp_path):
    from qengine.readers.caffemodel import MAX_BLOBS, read_caffemodel
    from test_quantize import field
    empty = field(7, 2, b"")
    body = field(1, 2, b"l") + field(2, 2, b"Convolution") + empty * 64
    layers = b"".join(field(100, 2, field(1, 2, b"l%d" % i) + body[3:])
                      for i in range(MAX_BLOBS // 64 + 2))
    p = tmp_path / "m.caffemodel"
    p.write_bytes(layers)
    t0 = time.perf_counter()
    with pytest.raises(QEngineError, match="weight blobs"):
        read_caffemodel(str(p))
    assert time.perf_counter() - t0 < 10      # a guard against quadratic work, not a speed test


def test_caffemodel_unpacked_floats_read_by_runs(tmp_path):
    from qengine.readers.caffemodel import read_caffemodel
    from test_quantize import blob, layer as cm_layer
    w = np.random.default_rng(0).standard_normal((64, 3, 3, 3)).astype(np.float32)
    b = np.arange(64, dtype=np.float32)
    p = tmp_path / "m.caffemodel"
    p.write_bytes(cm_layer("c", "Convolution", [blob(w, packed=False), blob(b, packed=False)]))
    got = read_caffemodel(str(p))["c"]["blobs"]
    assert np.array_equal(got[0], w) and np.array_equal(got[1], b)


def test_header_of_many_containers_is_refused(tmp_path):
    hb = json.dumps({"format": "qcnn", "version": 1, "metadata": {"x": [[]] * 1_100_000},
                     "tensors": {}, "data_len": 0}).encode()
    doff = (32 + len(hb) + 63) // 64 * 64
    p = tmp_path / "m.qcnn"
    p.write_bytes(struct.pack("<8sIIQQ", qformat.MAGIC, 1, zlib.crc32(hb), len(hb), doff) + hb
                  + b"\0" * (doff - 32 - len(hb)))
    with pytest.raises(QEngineError, match="arrays and objects"):
        qformat.QcnnFile(str(p))


def test_sparse_gap_checked_in_place(tmp_path):
    gap = 256 << 20
    data = np.arange(16, dtype="<f4").tobytes()
    hb = json.dumps({"format": "qcnn", "version": 1, "metadata": {},
                     "tensors": {"t": {"dtype": "f32", "shape": [16], "offset": gap,
                                       "nbytes": 64, "crc32": zlib.crc32(data)}},
                     "data_len": gap + 64}).encode()
    doff = (32 + len(hb) + 63) // 64 * 64
    p = tmp_path / "m.qcnn"
    with open(p, "wb") as f:
        f.write(struct.pack("<8sIIQQ", qformat.MAGIC, 1, zlib.crc32(hb), len(hb), doff) + hb)
        f.seek(doff + gap)
        f.write(data)
    peak = _peak(lambda: qformat.QcnnFile(str(p)))
    assert peak < 4 << 20, peak
    assert np.array_equal(qformat.QcnnFile(str(p)).tensor("t"), np.arange(16))


def test_16bit_image_converted_without_float64_copies(tmp_path):
    from PIL import Image
    from qengine.preprocess import read_pixels
    h, w = 1000, 1200
    a = (np.arange(h * w, dtype=np.uint32) * 37 % 65536).astype(np.uint16).reshape(h, w)
    p = tmp_path / "deep.png"
    Image.fromarray(a).save(p)
    got = {}
    peak = _peak(lambda: got.setdefault("px", read_pixels(str(p))))
    px, H, W, ch = got["px"]
    want = np.clip(np.rint(a.astype(np.float64) * 255 / 65535), 0, 255).astype(np.uint8)
    out = np.frombuffer(px, np.uint8).reshape(H, W, ch)
    assert (H, W, ch) == (h, w, 3)
    assert np.abs(out[:, :, 0].astype(int) - want).max() <= 1
    assert peak < 10 * h * w, peak       # was 24+ bytes a pixel (float64 copies)


# -- 7. API errors and global state ---------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    p = tmp_path_factory.mktemp("tiny") / "m.qcnn"
    build(p)
    return qengine.load(str(p), mode="exact")


@pytest.mark.parametrize("call", [
    lambda m: m.predict([]),
    lambda m: m.forward("abc"),
    lambda m: m.forward([[1, 2], [3]]),
    lambda m: m.forward(np.zeros((1,) + m.input_shape, complex)),
    lambda m: m.forward(np.zeros((1,) + m.input_shape, np.float32), outputs=5),
    lambda m: m.forward(np.zeros((1,) + m.input_shape, np.float32), outputs=[None]),
    lambda m: m.classify(np.zeros((1,) + m.input_shape, np.float32), top=None),
    lambda m: m.classify(np.zeros((1,) + m.input_shape, np.float32), top=0),
    lambda m: m.classify(np.zeros((1,) + m.input_shape, np.float32), top=-3),
    lambda m: m.predict(np.zeros((30, 30, 3), np.uint8), top="5"),
])
def test_api_misuse_raises_qengine_errors(tiny, call):
    with pytest.raises(QEngineError):
        call(tiny)


def test_predict_leaves_host_state_alone(tiny, tmp_path):
    from PIL import Image
    img = tmp_path / "i.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(img)
    Image.MAX_IMAGE_PIXELS = 12345678
    filters = list(warnings.filters)
    try:
        ts = [threading.Thread(target=lambda: [tiny.predict(str(img)) for _ in range(20)])
              for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert Image.MAX_IMAGE_PIXELS == 12345678
        assert warnings.filters == filters
    finally:
        Image.MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3


def test_default_limits_documented():
    import qengine.budget as b
    for k in DEFAULT_LIMITS:
        assert k in b.__doc__


def test_real_architectures_pass_the_new_graph_rules():
    """The tightened rules (pad, stride, input size) accept every real network at
    hand: the presets and the shared Caffe models (SqueezeNet pads a 1x1 by 1)."""
    import glob
    from conftest import shared_path
    from qengine.frontends.caffe import read_prototxt
    from qengine.frontends.presets import PRESETS, preset_graph
    for name in PRESETS:
        preset_graph(name)
    protos = glob.glob(os.path.join(shared_path("caffe"), "*", "*deploy*.prototxt"))
    assert len(protos) >= 3
    for p in protos:
        read_prototxt(p)


def test_prototxt_of_endless_comments_or_punctuation_is_refused_quickly():
    from qengine.readers import prototxt
    from qengine.errors import FormatError
    for text in ("#\n" * 300_000, ";" * 300_000, "a{} " * 300_000):
        t0 = time.perf_counter()
        with pytest.raises(FormatError, match="tokens|messages"):
            prototxt.parse(text)
        assert time.perf_counter() - t0 < 5


def test_threads_setter_validated(tiny):
    with pytest.raises(InputError):
        tiny.threads = "2"
    tiny.threads = 2
    x = np.zeros((3,) + tiny.input_shape, np.float32)
    y2 = tiny.forward(x)
    tiny.threads = 1
    assert np.allclose(tiny.forward(x), y2, atol=1e-6)


def test_non_finite_network_output_is_an_error_not_nan_probabilities(tmp_path):
    """Weights that overflow float32 on an input give inf/NaN scores: predict
    raises instead of printing NaN probabilities (qrun --json printed NaN)."""
    L, t = dense_conv("c", "data", 3, 4, 3)
    t["c.w"][:] = 3e38
    g = {"input": {"name": "data", "shape": [3, 8, 8]},
         "layers": [L, {"name": "f", "type": "InnerProduct", "bottom": ["c"], "top": ["f"],
                        "params": {"num_output": 5, "bias_term": False},
                        "weights": {"mode": "dense", "weight": "f.w"}}]}
    t["f.w"] = np.ones((5, 4 * 6 * 6), np.float32)
    m = qengine.load(write_model(tmp_path / "m.qcnn", g, t), mode="exact")
    with pytest.raises(ModelError, match="not finite"):
        m.predict([np.full((8, 8, 3), 200, np.uint8)])


def test_bilinear_resize_one_channel_at_a_time_matches_all_channels():
    """The 'bilinear' method resizes one float plane at a time (a large photo no
    longer becomes 12 bytes a pixel): the same values as all planes at once."""
    from qengine import buffers
    from qengine.preprocess import Preprocessor
    img = np.random.default_rng(0).integers(0, 256, (301, 257, 3), np.uint8)
    for order in ("bgr", "rgb"):
        pp = Preprocessor({"channel_order": order, "resize_method": "bilinear",
                           "resize": [64, 80], "crop": [60, 70]}, (3, 60, 70))
        a = buffers.empty((3, 301, 257))
        _kernels.pixels_to_planar(memoryview(img).cast("B"), 301, 257, 3, order, a)
        want = np.asarray(pp._resize(a, 64, 80))[:, 2:62, 5:75]
        assert np.array_equal(np.asarray(pp(img)), want)


def test_a_blob_produced_twice_is_refused(tmp_path):
    """Found by Fuzzer II (qcnn-struct input 13934 of 100,000): a duplicated layer
    writing the same top with another shape reached the kernel with the wrong
    output shape (a ValueError from the wrapper, not a QEngineError)."""
    from fuzzkit import _read_qcnn, _write_qcnn
    p = tmp_path / "m.qcnn"
    build(p)
    header, tensors = _read_qcnn(p.read_bytes())
    layers = header["metadata"]["graph"]["layers"]
    dup = json.loads(json.dumps(layers[4]))            # c2a, writes "c2a"
    layers[4]["params"]["stride"] = 3
    dup["name"] = "c2a_dup"
    layers.insert(5, dup)
    p.write_bytes(_write_qcnn(header, tensors))
    with pytest.raises(ModelError, match="already produced"):
        qengine.load(str(p), mode="exact")
