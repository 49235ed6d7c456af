"""A reader of Caffe .caffemodel files (binary protobuf NetParameter).

Only what qengine needs is decoded: each layer's name, type and weight blobs,
from the current `layer` field (100) and the legacy V1 `layers` field (2).
The protobuf wire format is read by a small, bounds-checked decoder of our own
(no generated code, no protobuf dependency): every length is checked against
the buffer before use, varints are at most 10 bytes, nesting is bounded, and
any inconsistency is a FormatError naming the file.

Field numbers (caffe.proto):
    NetParameter      name 1, layers 2 (V1LayerParameter), layer 100 (LayerParameter)
    LayerParameter    name 1, type 2, blobs 7
    V1LayerParameter  name 4, type 5 (enum), blobs 6
    BlobProto         num 1, channels 2, height 3, width 4, data 5 (float, packed or not),
                      double_data 8, shape 7 (BlobShape: dim 1, int64, packed or not)
"""
import struct

import numpy as np

from ..errors import FormatError

MAX_FILE = 2 * 1024 ** 3
MAX_DIMS = 8

_V1_TYPE_NAMES = {4: "Convolution", 14: "InnerProduct", 18: "ReLU", 15: "LRN", 17: "Pooling",
                  3: "Concat", 6: "Dropout", 20: "Softmax", 5: "Data", 21: "SoftmaxWithLoss",
                  1: "Accuracy"}


class _Reader:
    def __init__(self, buf, path):
        self.buf = buf
        self.path = path

    def fail(self, msg):
        raise FormatError(f"{self.path}: {msg}")

    def varint(self, pos, end):
        result = shift = 0
        for i in range(10):
            if pos >= end:
                self.fail("truncated varint")
            b = self.buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result, pos
            shift += 7
        self.fail("varint longer than 10 bytes")

    def fields(self, start, end):
        """Yield (field number, wire type, value) for a message in buf[start:end]:
        value is an int for varints and fixed ints, or (offset, length) for
        length-delimited fields."""
        pos = start
        while pos < end:
            key, pos = self.varint(pos, end)
            num, wt = key >> 3, key & 7
            if num == 0:
                self.fail("field number 0")
            if wt == 0:
                v, pos = self.varint(pos, end)
            elif wt == 1:
                if pos + 8 > end:
                    self.fail("truncated 64-bit field")
                v = struct.unpack_from("<Q", self.buf, pos)[0]
                pos += 8
            elif wt == 2:
                n, pos = self.varint(pos, end)
                if n > end - pos:
                    self.fail(f"field {num}: length {n} runs past the end of its message")
                v = (pos, n)
                pos += n
            elif wt == 5:
                if pos + 4 > end:
                    self.fail("truncated 32-bit field")
                v = struct.unpack_from("<I", self.buf, pos)[0]
                pos += 4
            else:
                self.fail(f"field {num}: unsupported wire type {wt}")
            yield num, wt, v

    def string(self, v):
        off, n = v
        try:
            return bytes(self.buf[off:off + n]).decode("utf-8")
        except UnicodeDecodeError:
            self.fail("a name is not UTF-8")

    def blob(self, v):
        off, n = v
        legacy = [0, 0, 0, 0]
        shape, chunks, doubles, scalars = None, [], [], []
        for num, wt, val in self.fields(off, off + n):
            if num in (1, 2, 3, 4) and wt == 0:
                legacy[num - 1] = val
            elif num == 7 and wt == 2:
                dims = []
                for dn, dwt, dv in self.fields(val[0], val[0] + val[1]):
                    if dn != 1:
                        continue
                    if dwt == 2:
                        p, e = dv[0], dv[0] + dv[1]
                        while p < e:
                            d, p = self.varint(p, e)
                            dims.append(d)
                    elif dwt == 0:
                        dims.append(dv)
                if len(dims) > MAX_DIMS:
                    self.fail(f"blob has {len(dims)} dimensions")
                shape = tuple(int(d) for d in dims)
            elif num == 5 and wt == 2:
                if val[1] % 4:
                    self.fail("packed float data is not a multiple of 4 bytes")
                chunks.append(np.frombuffer(self.buf, "<f4", val[1] // 4, val[0]))
            elif num == 5 and wt == 5:
                scalars.append(val)
            elif num == 8 and wt == 2:
                if val[1] % 8:
                    self.fail("packed double data is not a multiple of 8 bytes")
                doubles.append(np.frombuffer(self.buf, "<f8", val[1] // 8, val[0]))
        if scalars:
            chunks.append(np.array(scalars, np.uint32).view("<f4"))
        data = (np.concatenate(chunks) if chunks else
                np.concatenate(doubles).astype(np.float32) if doubles else np.zeros(0, np.float32))
        if shape is None:
            shape = tuple(d for d in legacy)
            # legacy 4-D num/channels/height/width: drop leading 1s of FC blobs later
        count = 1
        for d in shape:
            if d < 0 or d > 1 << 34:
                self.fail(f"blob dimension {d} out of range")
            count *= d
        if count != data.size:
            self.fail(f"blob shape {list(shape)} holds {count} values, data has {data.size}")
        arr = data.astype(np.float32, copy=True).reshape(shape)
        if not np.all(np.isfinite(arr)):
            self.fail("blob holds NaN or infinite values")
        return arr


def read_caffemodel(path):
    """{layer name: {"type": str, "blobs": [float32 arrays]}} in file order."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            if size > MAX_FILE:
                raise FormatError(f"{path}: file larger than {MAX_FILE} bytes")
            f.seek(0)
            buf = f.read()
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e.strerror}") from None
    r = _Reader(memoryview(buf), path)
    layers = {}
    for num, wt, v in r.fields(0, len(buf)):
        if wt != 2 or num not in (2, 100):
            continue
        name, ltype, blobs = None, None, []
        name_f, type_f, blob_f = (1, 2, 7) if num == 100 else (4, 5, 6)
        for fn, fwt, fv in r.fields(v[0], v[0] + v[1]):
            if fn == name_f and fwt == 2:
                name = r.string(fv)
            elif fn == type_f:
                ltype = r.string(fv) if fwt == 2 else _V1_TYPE_NAMES.get(fv, f"V1 type {fv}")
            elif fn == blob_f and fwt == 2:
                blobs.append(r.blob(fv))
        if name is None:
            r.fail("a layer has no name")
        if name in layers and layers[name]["blobs"] and blobs:
            r.fail(f"layer {name!r} appears twice with weights")
        if blobs or name not in layers:
            layers[name] = {"type": ltype, "blobs": blobs}
    if not layers:
        raise FormatError(f"{path}: no layers found (not a .caffemodel?)")
    return layers
