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
    out["qcnn"] = (open(p, "rb").read(), lambda path: qengine.load(path).forward(
        np.zeros((1, 3, 21, 19), np.float32)))
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
    for fmt in ("PNG", "JPEG", "BMP"):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        out[fmt.lower()] = (buf.getvalue(), load_image)
    return out
