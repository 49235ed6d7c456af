"""The .qcnn format: round trip, and rejection of malformed or corrupt files."""
import json
import os
import struct
import zlib

import numpy as np
import pytest

import qengine
from qengine import format as qformat
from qengine.errors import FormatError

from modelkit import build


def write_sample(path):
    rng = np.random.default_rng(0)
    tensors = {
        "a": rng.standard_normal((3, 5)).astype(np.float32),
        "idx7": qformat.Tensor(rng.integers(0, 128, (17, 3)).astype(np.uint8), bits=7),
        "idx3": qformat.Tensor(rng.integers(0, 8, 1001).astype(np.uint8), bits=3),
        "raw8": rng.integers(0, 256, 64).astype(np.uint8),
        "i": np.arange(7, dtype=np.int32),
        "smooth": qformat.Tensor((100 + np.add.outer(np.arange(20), np.arange(30)) * 0.37)
                                 .astype(np.float32)[None].repeat(3, 0),
                                 encoding="qdelta2d", step=1 / 64),
    }
    meta = {"graph": {"x": 1}, "names": ["é", "b"]}
    qformat.write(str(path), meta, tensors)
    return meta, tensors


def test_round_trip(tmp_path):
    p = tmp_path / "t.qcnn"
    meta, tensors = write_sample(p)
    f = qformat.QcnnFile(str(p))
    assert f.metadata == meta
    assert np.array_equal(f.tensor("a"), tensors["a"])
    assert np.array_equal(f.tensor("idx7"), tensors["idx7"].array)
    assert np.array_equal(f.tensor("idx3"), tensors["idx3"].array)
    assert np.array_equal(f.tensor("raw8"), tensors["raw8"])
    assert np.array_equal(f.tensor("i"), tensors["i"])
    sm = f.tensor("smooth")
    assert np.abs(sm - tensors["smooth"].array).max() <= 1 / 128 + 1e-6
    for e in f.header["tensors"].values():
        assert (f.data_offset + e["offset"]) % 64 == 0
    # 7-bit indices take 7/8 of a byte each
    assert f.entry("idx7")["nbytes"] == (17 * 3 * 7 + 7) // 8


def test_writer_is_atomic_and_refuses_to_overwrite(tmp_path):
    p = tmp_path / "t.qcnn"
    write_sample(p)
    before = p.read_bytes()
    with pytest.raises(qengine.QEngineError, match="exists"):
        qformat.write(str(p), {}, {"z": np.zeros(3, np.float32)}, force=False)
    assert p.read_bytes() == before

    class Boom(Exception):
        pass

    class Bad(qformat.Tensor):
        def payload(self):
            raise Boom()

    with pytest.raises(Boom):
        qformat.write(str(p), {}, {"z": Bad(np.zeros(3, np.float32))})
    assert p.read_bytes() == before
    assert [f for f in os.listdir(tmp_path) if f != "t.qcnn"] == []
    mask = os.umask(0)
    os.umask(mask)
    assert (os.stat(p).st_mode & 0o777) == 0o666 & ~mask


def test_every_single_byte_flip_is_detected(tmp_path):
    p = tmp_path / "t.qcnn"
    write_sample(p)
    data = bytearray(p.read_bytes())
    rng = np.random.default_rng(3)
    positions = sorted(set(range(0, 64)) | set(rng.integers(0, len(data), 400).tolist())
                       | {len(data) - 1})
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 0x5A
        q = tmp_path / "bad.qcnn"
        q.write_bytes(bytes(bad))
        with pytest.raises(FormatError) as ei:
            qformat.QcnnFile(str(q))
        assert str(q) in str(ei.value)


def test_truncation_and_garbage_are_rejected(tmp_path):
    p = tmp_path / "t.qcnn"
    write_sample(p)
    data = p.read_bytes()
    q = tmp_path / "bad.qcnn"
    for n in (0, 1, 7, 31, 32, 100, len(data) // 2, len(data) - 1):
        q.write_bytes(data[:n])
        with pytest.raises(FormatError):
            qformat.QcnnFile(str(q))
    q.write_bytes(data + b"\0")
    with pytest.raises(FormatError, match="data section"):
        qformat.QcnnFile(str(q))
    q.write_bytes(b"GGUF" + data[4:])
    with pytest.raises(FormatError, match="magic"):
        qformat.QcnnFile(str(q))


def forge(path, header, data=b"", version=1):
    """A file with a valid checksum around an arbitrary header."""
    hb = json.dumps(header).encode()
    doff = (32 + len(hb) + 63) // 64 * 64
    pre = struct.pack("<8sIIQQ", qformat.MAGIC, version, zlib.crc32(hb), len(hb), doff)
    path.write_bytes(pre + hb + b"\0" * (doff - 32 - len(hb)) + data)
    return str(path)


def entry(**kw):
    e = {"dtype": "f32", "shape": [4], "offset": 0, "nbytes": 16, "crc32": zlib.crc32(bytes(16))}
    e.update(kw)
    return e


@pytest.mark.parametrize("bad,msg", [
    ({"t": entry(shape=[1 << 41])}, "shape"),
    ({"t": entry(shape=[-1])}, "shape"),
    ({"t": entry(shape=[2] * 9)}, "shape"),
    ({"t": entry(nbytes=1 << 50)}, "outside"),
    ({"t": entry(offset=8)}, "aligned"),
    ({"t": entry(dtype="f64")}, "dtype"),
    ({"t": entry(dtype=["f32"])}, "dtype"),            # found by tools/fuzz.py (qcnn-header)
    ({"t": entry(dtype={"a": 1})}, "dtype"),
    ({"t": entry(nbytes=12)}, "needs"),
    ({"t": entry(dtype="u8", bits=9, shape=[8], nbytes=8)}, "bit width"),
    ({"t": entry(), "u": entry()}, "overlap"),
    ({"t": entry(encoding="qdelta2d", step=-1.0, shape=[2, 2])}, "qdelta2d"),
    ({"t": entry(crc32=1)}, "checksum"),
])
def test_malformed_tensor_tables(tmp_path, bad, msg):
    p = forge(tmp_path / "f.qcnn", {"format": "qcnn", "version": 1, "metadata": {},
                                    "tensors": bad, "data_len": 16}, bytes(16))
    with pytest.raises(FormatError, match=msg):
        qformat.QcnnFile(p)


def test_malformed_headers(tmp_path):
    cases = [
        ({"format": "qcnn", "version": 1, "metadata": {}, "tensors": {}, "data_len": 5}, "data"),
        ({"format": "gguf", "version": 1, "metadata": {}, "tensors": {}, "data_len": 0}, "header"),
        ({"format": "qcnn", "version": 1, "tensors": {}, "data_len": 0}, "metadata"),
        ([1, 2, 3], "header"),
    ]
    for h, msg in cases:
        p = forge(tmp_path / "f.qcnn", h)
        with pytest.raises(FormatError, match=msg):
            qformat.QcnnFile(p)
    p = forge(tmp_path / "v.qcnn", {}, version=3)
    with pytest.raises(FormatError, match="version 3 is not supported.*upgrade qengine"):
        qformat.QcnnFile(p)
    # a header claiming version 1 while using version-2 keys is refused
    h = {"format": "qcnn", "version": 1, "tensors": {}, "data_len": 0,
         "metadata": {"graph": {"layers": [{"type": "Eltwise"}]}}}
    with pytest.raises(FormatError, match="version 1 cannot hold"):
        qformat.QcnnFile(forge(tmp_path / "w.qcnn", h))


def test_writer_picks_the_lowest_version(tmp_path):
    """A model using only version-1 layers and keys is written as version 1
    (older qengines read it); pooling rounding rules, PyTorch-style
    preprocessing or a new layer type make it version 2."""
    import modelkit
    p = str(tmp_path / "v1.qcnn")
    modelkit.build(p)
    assert qformat.QcnnFile(p).version == 1
    with open(p, "rb") as f:
        assert qformat.PREAMBLE.unpack(f.read(qformat.PREAMBLE.size))[1] == 1
    g = modelkit.tiny_graph()
    g["layers"][3]["params"]["ceil"] = False
    modelkit.build(p, g)
    assert qformat.QcnnFile(p).version == 2
    modelkit.build(p, meta_extra={"preprocess": {"std": [0.5]}})
    assert qformat.QcnnFile(p).version == 2
    modelkit.build_graph_model(p)
    assert qformat.QcnnFile(p).version == 2
    # deeply nested JSON is refused, not a crash
    hb = b"[" * 100000 + b"]" * 100000
    pre = struct.pack("<8sIIQQ", qformat.MAGIC, 1, zlib.crc32(hb), len(hb),
                      (32 + len(hb) + 63) // 64 * 64)
    q = tmp_path / "deep.qcnn"
    q.write_bytes(pre + hb + b"\0" * ((32 + len(hb) + 63) // 64 * 64 - 32 - len(hb)))
    with pytest.raises(FormatError):
        qformat.QcnnFile(str(q))


def test_model_level_validation(tmp_path):
    """Well-formed files whose contents do not fit the graph are refused by load()."""
    p = tmp_path / "m.qcnn"
    graph, _ = build(p)
    f = qformat.QcnnFile(str(p))
    meta = f.metadata
    tensors = {n: f.tensor(n) for n in f.tensor_names}
    # an index >= K hidden in a 4-bit field for a K=8 codebook... use K=16 table with bits 5
    idx = tensors["c2a.indices"].copy()
    idx.flat[0] = 31
    t2 = dict(tensors)
    t2["c2a.indices"] = qformat.Tensor(idx, bits=5)
    q = tmp_path / "bad_index.qcnn"
    qformat.write(str(q), meta, t2)
    with pytest.raises(qengine.ModelError, match="index 31"):
        qengine.load(str(q), mode="exact")
    # a bias of the wrong length
    t3 = dict(tensors)
    t3["c2a.bias"] = np.zeros(5, np.float32)
    qformat.write(str(q), meta, t3)
    with pytest.raises(qengine.ModelError, match="c2a.bias"):
        qengine.load(str(q), mode="exact")
    # a graph whose layer reads a blob nobody made
    m2 = json.loads(json.dumps(meta))
    m2["graph"]["layers"][4]["bottom"] = ["nowhere"]
    qformat.write(str(q), m2, tensors)
    with pytest.raises(qengine.ModelError, match="nowhere"):
        qengine.load(str(q), mode="exact")
    # missing tensor
    t4 = dict(tensors)
    del t4["f1.codebook"]
    qformat.write(str(q), meta, t4)
    with pytest.raises(FormatError, match="f1.codebook"):
        qengine.load(str(q), mode="exact")


def test_released_tensors_read_back_unchanged(tmp_path):
    """release() only drops mapped pages from memory; the data reads back the same."""
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 32, (300, 1000)).astype(np.uint8)
    cb = rng.standard_normal((1000, 32, 4)).astype(np.float32)
    qformat.write(str(tmp_path / "r.qcnn"), {}, {"i": qformat.Tensor(idx, bits=5), "c": cb})
    f = qformat.QcnnFile(str(tmp_path / "r.qcnn"))
    before = f.tensor("c").copy()
    for name in ("i", "c"):
        f.release(name)
    assert np.array_equal(f.tensor("i"), idx) and np.array_equal(f.tensor("c"), before)
