"""Seeds and mutations for fuzzing every reader that takes a file from a user.
Shared by tests/test_fuzz.py (a bounded run in CI) and tools/fuzz.py (long runs)."""
import io
import os
import struct

import numpy as np

from modelkit import build


def mutate(data, rng):
    """One random mutation: flip bytes, truncate, insert, splice a boundary integer."""
    b = bytearray(data)
    kind = rng.integers(0, 5) if b else 2
    if kind == 0:                                   # flip 1-8 bytes
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(0, len(b)))
            b[i] ^= int(rng.integers(1, 256))
    elif kind == 1:                                 # truncate
        del b[int(rng.integers(0, len(b))):]
    elif kind == 2:                                 # insert random bytes
        i = int(rng.integers(0, len(b) + 1))
        b[i:i] = rng.integers(0, 256, int(rng.integers(1, 17)), dtype=np.uint8).tobytes()
    elif kind == 3:                                 # overwrite a 4- or 8-byte integer
        size = 4 if rng.random() < 0.5 else 8
        if len(b) >= size:
            i = int(rng.integers(0, len(b) - size + 1))
            v = int(rng.choice([0, 1, 2 ** 31 - 1, 2 ** 32 - 1, 2 ** 63 - 1, 2 ** 64 - 1, 2 ** 40]))
            b[i:i + size] = (v % 2 ** (8 * size)).to_bytes(size, "little")
    else:                                           # duplicate a chunk
        i = int(rng.integers(0, len(b)))
        j = min(len(b), i + int(rng.integers(1, 65)))
        b[i:i] = b[i:j]
    return bytes(b)


_ODD_VALUES = [0, -1, 1, 2, 7, 2 ** 31, -2 ** 31, 2 ** 62, 1e308, -0.5, float("nan"), "x", "",
               None, True, [], {}, [0, 0], [1, 2, 3], {"a": 1}]


def mutate_header(data, rng):
    """A .qcnn with one value of its JSON header changed (or removed), and the
    header checksum recomputed: it reaches the graph and tensor-table checks."""
    import json
    import zlib
    magic, version, crc, hlen, doff = struct.unpack_from("<8sIIQQ", data)
    header = json.loads(data[32:32 + hlen])
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node[:64]):
                walk(v, path + [i])
        paths.append(path)
    walk(header, [])
    path = paths[int(rng.integers(0, len(paths)))]
    if not path:
        return data
    parent = header
    for key in path[:-1]:
        parent = parent[key]
    if rng.random() < 0.15 and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = _ODD_VALUES[int(rng.integers(0, len(_ODD_VALUES)))]
    hb = json.dumps(header).encode()
    new_doff = (32 + len(hb) + 63) // 64 * 64
    pre = struct.pack("<8sIIQQ", magic, version, zlib.crc32(hb), len(hb), new_doff)
    return pre + hb + b"\0" * (new_doff - 32 - len(hb)) + data[doff:]


def seeds(tmp):
    """{reader: (seed bytes, function reading a path)} for every reader."""
    import qengine
    from qengine.frontends.caffe import from_prototxt
    from qengine.preprocess import load_image
    from qengine.readers.caffemodel import read_caffemodel
    from qengine.readers.qcnn_original import read_bin, read_cbn
    from PIL import Image
    out = {}
    p = os.path.join(tmp, "seed.qcnn")
    build(p)
    def run_model(path):
        m = qengine.load(path, mode="exact")
        m.forward(np.zeros((1,) + m.input_shape, np.float32))
    out["qcnn"] = (open(p, "rb").read(), run_model)
    out["qcnn-header"] = (open(p, "rb").read(), run_model)
    arr = np.arange(24, dtype="<f4").reshape(2, 3, 4)
    out["bin"] = (struct.pack("<i", 3) + struct.pack("<3i", 2, 3, 4) + arr.tobytes(), read_bin)
    vals = np.arange(50, dtype=np.uint8) % 32
    bits = "".join(format(int(v), "05b") for v in vals).ljust(4096 * 8, "0")
    out["cbn"] = (struct.pack("<4i", 2, 5, 10, 5) + int(bits, 2).to_bytes(4096, "big"),
                  lambda path: read_cbn(path, k=32))
    proto = (b'name: "n"\ninput: "data"\ninput_shape { dim: 1 dim: 3 dim: 16 dim: 16 }\n'
             b'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
             b'convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 1 } }\n'
             b'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }\n'
             b'layer { name: "p" type: "Pooling" bottom: "c" top: "p" '
             b'pooling_param { pool: MAX kernel_size: 3 stride: 2 } }\n'
             b'layer { name: "f" type: "InnerProduct" bottom: "p" top: "f" '
             b'inner_product_param { num_output: 5 } }\n')

    def read_proto(path):
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
        return from_prototxt(text, path)
    out["prototxt"] = (proto, read_proto)
    from test_quantize import blob, field, layer
    cm = field(1, 2, b"net") + layer("c", "Convolution", [blob(np.ones((4, 3, 3, 3))),
                                                        blob(np.ones(4), packed=False)]) + \
        layer("f", "InnerProduct", [blob(np.ones((5, 16)), legacy=True)], v1=True)
    out["caffemodel"] = (cm, read_caffemodel)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 10, 3), np.uint8))
    from qengine.preprocess import Preprocessor
    pre = Preprocessor({"channel_order": "bgr", "resize": [9, 9], "crop": [7, 7],
                        "mean": {"type": "pixel", "values": [1.0, 2.0, 3.0]}}, (3, 7, 7))

    def read_image(path):
        load_image(path)      # the numpy view callers get
        pre(path)             # the numpy-free path qrun takes (decode, planes, resize, crop)
    for fmt in ("PNG", "JPEG", "BMP"):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        out[fmt.lower()] = (buf.getvalue(), read_image)
    return out


# -- Fuzzer II: structure-aware .qcnn mutations --------------------------------
# Each mutation reads the seed's header and tensors, changes the model as a
# writer could (values near every limit, layers and tensors added or removed,
# tensor names shared, codebooks re-encoded as qdelta2d) and writes a valid,
# correctly checksummed file.

_LARGE_INTS = [1, 2, 3, 4095, 4096, 65535, 65536, (1 << 20) - 1, 1 << 20, 1 << 16, 255, 256,
               257, 7, 8]
_LARGE_FLOATS = [3.4e38, -3.4e38, 1e-45, 1e30, 1e6, 1e-6, -1e6, 0.0, 65504.0]


def _read_qcnn(data):
    import json
    magic, version, crc, hlen, doff = struct.unpack_from("<8sIIQQ", data)
    header = json.loads(data[32:32 + hlen])
    tensors = {}
    for name, e in header["tensors"].items():
        tensors[name] = (e, data[doff + e["offset"]:doff + e["offset"] + e["nbytes"]])
    return header, tensors


def _write_qcnn(header, tensors):
    """header (its tensor entries' offsets, sizes and checksums recomputed) and
    {name: (entry, payload)} -> file bytes."""
    import json
    import zlib
    entries, blobs, off = {}, [], 0
    for name, (e, payload) in tensors.items():
        e = dict(e, offset=off, nbytes=len(payload), crc32=zlib.crc32(payload))
        entries[name] = e
        blobs.append((off, payload))
        off = (off + len(payload) + 63) // 64 * 64
    data_len = blobs[-1][0] + len(blobs[-1][1]) if blobs else 0
    header = dict(header, tensors=entries, data_len=data_len)
    hb = json.dumps(header).encode()
    doff = (32 + len(hb) + 63) // 64 * 64
    out = bytearray(struct.pack("<8sIIQQ", b"\x89QCNN\r\n\x1a", 1, zlib.crc32(hb), len(hb), doff))
    out += hb + b"\0" * (doff - 32 - len(hb))
    for o, p in blobs:
        out += b"\0" * (doff + o - len(out)) + p
    return bytes(out)


def mutate_structure(data, rng):
    """One structure-aware mutation of a .qcnn (see above)."""
    import copy
    header, tensors = _read_qcnn(data)
    header = copy.deepcopy(header)
    meta = header["metadata"]
    graph = meta.get("graph", {})
    layers = graph.get("layers", [])
    kind = int(rng.integers(0, 9))
    pick = (lambda seq: seq[int(rng.integers(0, len(seq)))]) if True else None
    if kind == 0 and layers:                            # a parameter near a limit
        L = pick(layers)
        p = L.get("params", {})
        if p:
            k = pick(sorted(p))
            v = p[k]
            if isinstance(v, list):
                p[k] = [pick(_LARGE_INTS) for _ in v]
            elif isinstance(v, float):
                p[k] = pick(_LARGE_FLOATS)
            elif isinstance(v, int) and not isinstance(v, bool):
                p[k] = pick(_LARGE_INTS)
    elif kind == 1:                                     # input shape near a limit
        shape = graph.get("input", {}).get("shape")
        if isinstance(shape, list) and shape:
            shape[int(rng.integers(0, len(shape)))] = pick([1, 4096, 16384, 1 << 20, 65536])
    elif kind == 2 and layers:                          # a layer repeated or removed
        i = int(rng.integers(0, len(layers)))
        if rng.random() < 0.5:
            L = copy.deepcopy(layers[i])
            L["name"] = L["name"] + "_dup"
            layers.insert(i + 1, L)
        else:
            del layers[i]
    elif kind == 3:                                     # a tensor added or removed
        if rng.random() < 0.5 and tensors:
            del tensors[pick(sorted(tensors))]
        else:
            n = int(rng.integers(1, 64))
            tensors[f"extra{len(tensors)}"] = ({"dtype": "f32", "shape": [n]},
                                              np.ones(n, "<f4").tobytes())
    elif kind == 4 and len(layers) > 1:                 # tensor names shared by layers
        w = [L for L in layers if isinstance(L.get("weights"), dict)]
        if len(w) > 1:
            a, b = pick(w), pick(w)
            a["weights"] = copy.deepcopy(b["weights"])
    elif kind == 5:                                     # a float tensor as qdelta2d
        cands = [n for n, (e, _) in tensors.items()
                 if e["dtype"] == "f32" and len(e["shape"]) >= 2 and "encoding" not in e]
        if cands:
            from qengine.format import qdelta_encode
            n = pick(cands)
            e, payload = tensors[n]
            arr = np.frombuffer(payload, "<f4").reshape(e["shape"])
            step = float(pick([1 / 4096, 1 / 64, 1.0, 1e-30]))
            try:
                enc = qdelta_encode(arr, step)
            except ValueError:
                return data
            tensors[n] = (dict(e, encoding="qdelta2d", step=step), enc)
    elif kind == 6:                                     # preprocessing near its limits
        pp = meta.setdefault("preprocess", {})
        key = pick(["resize", "crop", "scale", "mean", "channel_order", "resize_method"])
        pp[key] = pick({
            "resize": [[65536, 65536], [1, 1], [4096, 4096], [30, 30]],
            "crop": [[1, 1], [65536, 1]],
            "scale": [1e-6, 1e6, -1.0, 3.4e38],
            "mean": [{"type": "pixel", "values": [1e6, -1e6, 0]},
                     {"type": "image", "tensor": pick(sorted(tensors) or ["x"])}],
            "channel_order": ["rgb", "gray", "bgr"],
            "resize_method": ["bilinear", "bilinear_align_corners"]}[key])
    elif kind == 7:                                     # weights mode flipped
        w = [L for L in layers if isinstance(L.get("weights"), dict)]
        if w:
            L = pick(w)
            L["weights"]["mode"] = "dense" if L["weights"].get("mode") == "lut" else "lut"
    else:                                               # class names odd
        meta["class_names"] = pick([["a"] * 3, ["\u2028"] * 5, [""] * 100000, []])
    return _write_qcnn(header, tensors)


def run_model_full(path, rng=None):
    """Everything a caller does with a model: load in fast and exact mode, with
    forced tables, two threads, a batch of 3, intermediate outputs, predict."""
    import qengine
    rng = rng or np.random.default_rng(0)
    mode = "fast" if rng.random() < 0.5 else "exact"
    strategy = "lut" if rng.random() < 0.3 else "auto"
    threads = 2 if rng.random() < 0.5 else 1
    m = qengine.load(path, mode=mode, strategy=strategy, threads=threads)
    x = rng.standard_normal((3,) + m.input_shape).astype(np.float32)
    want = m.layer_names[int(rng.integers(0, len(m.layer_names)))] if rng.random() < 0.3 else None
    m.forward(x, outputs=want)
    if m.input_shape[0] in (1, 3):
        img = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        m.predict([img], top=3)


def image_kinds(rng_seed=0):
    """{name: bytes} of images in many kinds: 16-bit, TIFF, GIF, CMYK, float."""
    from PIL import Image
    rng = np.random.default_rng(rng_seed)
    rgb = rng.integers(0, 256, (14, 11, 3), np.uint8)
    out = {}

    def save(name, img, fmt, **kw):
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        out[name] = buf.getvalue()
    save("png16", Image.fromarray((rgb[:, :, 0].astype(np.uint16) * 257)), "PNG")
    save("tiff", Image.fromarray(rgb), "TIFF")
    save("tiff-float", Image.fromarray(rgb[:, :, 0].astype(np.float32) / 7), "TIFF")
    save("gif", Image.fromarray(rgb).convert("P"), "GIF")
    save("jpeg-cmyk", Image.fromarray(rgb).convert("CMYK"), "JPEG")
    save("png-rgba", Image.fromarray(np.dstack([rgb, rgb[:, :, :1]])), "PNG")
    return out


def more_seeds(tmp):
    """Fuzzer II's extra targets: {name: (seed bytes, reader of a path)}."""
    import qengine
    from PIL import Image
    from qengine.convert import read_labels, read_mean_file
    from qengine.datasets import calibration_inputs
    out = {}
    p = os.path.join(tmp, "seed2.qcnn")
    build(p)
    seed = open(p, "rb").read()
    out["qcnn-struct"] = (seed, run_model_full)
    out["labels"] = ("\ufeffn01440764 tench\nn01443537 goldfish\r\nzebra\u2028x\n".encode(),
                     lambda path: read_labels(path, None))
    buf = io.BytesIO()
    np.save(buf, np.ones((3, 4, 5), np.float32))
    out["mean-npy"] = (buf.getvalue(), read_mean_file)
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 3, 21, 19), np.float32))
    out["calib-npy"] = (buf.getvalue(),
                        lambda path: calibration_inputs(path, (3, 21, 19), None, 2))
    model = qengine.load(p, mode="exact")
    from qengine.preprocess import Preprocessor
    bilinear = Preprocessor({"channel_order": "rgb", "resize_method": "bilinear",
                             "resize": [9, 8], "crop": [7, 7]}, (3, 7, 7))

    def read_image_every_way(path):
        model.predict(path)                               # a path
        bilinear(path)                                    # PIL's resize, a channel at a time
        with open(path, "rb") as f:                       # a file object
            model.predict(io.BytesIO(f.read()))
        try:
            img = Image.open(path)                        # a PIL image
            img.load()
        except Exception:
            return
        model.predict(img)
    for name, b in image_kinds().items():
        out[f"image-{name}"] = (b, read_image_every_way)
    # the onnx package (an optional extra) parses with C++ exceptions, which
    # AddressSanitizer loaded by LD_PRELOAD cannot intercept in a library
    # opened later (CI's ASan stage): the target runs in the other stages
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):
        try:
            out["onnx"] = (onnx_seed(), convert_and_run_onnx)
        except ImportError:
            pass
    return out


def onnx_seed():
    """A small ONNX model using many of the ops the frontend translates."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name
    nodes.append(helper.make_node("Conv", ["x", const("w", rng.standard_normal((4, 3, 3, 3))
                                                      .astype(np.float32)), const("b", np.zeros(4, np.float32))],
                                  ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c"], ["r"]))
    nodes.append(helper.make_node("Slice", ["r", const("st", np.array([0, 0], np.int64)),
                                            const("en", np.array([8, 8], np.int64)),
                                            const("ax", np.array([2, 3], np.int64)),
                                            const("sp", np.array([2, 2], np.int64))], ["s"]))
    nodes.append(helper.make_node("Pad", ["s", const("pd", np.array([0, 1, 0, 0, 0, 1, 0, 0],
                                                                    np.int64))], ["p"]))
    nodes.append(helper.make_node("MaxPool", ["r"], ["m"], kernel_shape=[2, 2], strides=[2, 2]))
    nodes.append(helper.make_node("Concat", ["m", "p"], ["cat"], axis=1))
    nodes.append(helper.make_node("GlobalAveragePool", ["cat"], ["g"]))
    nodes.append(helper.make_node("Flatten", ["g"], ["f"]))
    nodes.append(helper.make_node("Gemm", ["f", const("fw", rng.standard_normal((5, 10))
                                                      .astype(np.float32))], ["y"], transB=1))
    g = helper.make_graph(nodes, "seed", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                       [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    return m.SerializeToString()


def convert_and_run_onnx(path):
    """qconvert an ONNX model (dense) and run what it gives."""
    import tempfile
    import qengine
    from qengine.convert import convert_onnx
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "m.qcnn")
        convert_onnx(path, out, keep_dense=("all",))
        m = qengine.load(out, mode="exact")
        m.forward(np.ones((2,) + m.input_shape, np.float32))


# -- the harness: each input in a worker process with a memory cap, the parent
# holding a kill timeout (a C kernel cannot be interrupted by a signal handler)

def all_seeds(tmp):
    s = seeds(tmp)
    s.update(more_seeds(tmp))
    return s


def input_name(target):
    return "input." + target.rsplit("-", 1)[-1]


def make_input(target, data, seed, i):
    """The i-th mutated input of a target (deterministic in seed and i)."""
    rng = np.random.default_rng([seed, i])
    b = data
    for _ in range(int(rng.integers(1, 5))):
        try:
            if target == "qcnn-header":
                b = mutate_header(b, rng)
            elif target in ("qcnn-struct", "qcnn-alexnet"):
                b = mutate_structure(b, rng) if rng.random() < 0.7 else mutate_header(b, rng)
            else:
                b = mutate(b, rng)
        except Exception:     # an earlier round made a header this mutator cannot walk
            pass
    return b, rng


def serve(seed, cap):
    """Worker main loop: lines "TARGET I" on stdin, one JSON answer per line."""
    import json
    import resource
    import sys
    import tempfile
    import warnings
    warnings.simplefilter("ignore")          # Pillow's warnings about corrupt files
    if cap:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from qengine import QEngineError
    tmp = tempfile.mkdtemp(prefix="qfuzz-")
    S = all_seeds(tmp)
    alex = os.environ.get("QENGINE_FUZZ_ALEXNET")
    if alex and os.path.exists(alex):
        S["qcnn-alexnet"] = (open(alex, "rb").read(), run_model_full)
    print(json.dumps({"ready": sorted(S)}), flush=True)
    for line in sys.stdin:
        target, i = line.split()
        data, read = S[target]
        try:
            b, rng = make_input(target, data, seed, int(i))
        except Exception:            # a mutator that cannot parse an earlier mutation's
            b, rng = data, np.random.default_rng([seed, int(i)])   # output: the seed itself
        path = os.path.join(tmp, input_name(target))
        with open(path, "wb") as f:
            f.write(b)
        try:
            if read is run_model_full:
                read(path, rng)
            else:
                read(path)
            r = "ok"
        except QEngineError:
            r = "error"
        except MemoryError:
            r = "over_cap"
        except Exception as e:
            r = f"other: {type(e).__name__}: {str(e)[:120]}"
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({"r": r, "rss": rss}), flush=True)


class Worker:
    """A worker process serving inputs, restarted after a crash or a hang."""

    def __init__(self, seed=1, cap=3 << 30, timeout=20.0, alexnet=None):
        # QENGINE_FUZZ_CAP=0: no cap (AddressSanitizer reserves terabytes of
        # address space for its shadow memory, which RLIMIT_AS would refuse)
        cap = int(os.environ.get("QENGINE_FUZZ_CAP", cap))
        self.seed, self.cap, self.timeout = seed, cap, timeout
        self.alexnet = alexnet
        self.proc = None
        self.peak_rss = 0

    def _start(self):
        import json
        import subprocess
        import sys
        import tempfile
        here = os.path.dirname(os.path.abspath(__file__))
        # the installed qengine (or the one PYTHONPATH names, e.g. a sanitizer build
        # in place); run outside the source tree, whose qengine/ has no extension
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([here,
                                                          os.environ.get("PYTHONPATH", "")]))
        if self.alexnet:
            env["QENGINE_FUZZ_ALEXNET"] = self.alexnet
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"import fuzzkit; fuzzkit.serve({self.seed}, {self.cap})"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            cwd=tempfile.gettempdir())
        line = self._read(120)
        if not line:
            raise RuntimeError("fuzz worker did not start")
        self.targets = json.loads(line)["ready"]

    def _read(self, timeout):
        import select
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            return None                     # timed out
        return self.proc.stdout.readline()  # "" at end of file: the worker died

    def run(self, target, i):
        """"ok", "error", "over_cap", "hang", "crash: ..." or "other: ..." for input i."""
        import json
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        try:
            self.proc.stdin.write(f"{target} {i}\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self._read(self.timeout)
        if not line:
            if line is None:
                self.proc.kill()
            code = self.proc.wait()
            self.proc = None
            return "hang" if line is None else f"crash: exit {code}"
        ans = json.loads(line)
        self.peak_rss = max(self.peak_rss, ans["rss"])
        return ans["r"]

    def close(self):
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(10)
            self.proc = None
