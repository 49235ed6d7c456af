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
    from qengine.graph import from_prototxt
    from qengine.preprocess import load_image
    from qengine.readers.caffemodel import read_caffemodel
    from qengine.readers.qcnn_original import read_bin, read_cbn
    from PIL import Image
    out = {}
    p = os.path.join(tmp, "seed.qcnn")
    build(p)
    def run_model(path):
        m = qengine.load(path)
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
