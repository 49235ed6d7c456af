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
import os
import struct

import numpy as np

from ..errors import FormatError

MAX_FILE = 2 * 1024 ** 3
MAX_DIMS = 8
# Bounds on what a file may make the reader do, far above real models (VGG-16:
# 38 layers, 32 blobs, a few hundred fields; legacy unpacked float data is read
# a run at a time, not a field at a time): time and memory stay proportional to
# the float data, never to the number of tiny fields a hostile file can hold.
MAX_FIELDS = 1 << 20
MAX_LAYERS = 1 << 16
MAX_BLOBS_PER_LAYER = 64
MAX_BLOBS = 1 << 14

_V1_TYPE_NAMES = {4: "Convolution", 14: "InnerProduct", 18: "ReLU", 15: "LRN", 17: "Pooling",
                  3: "Concat", 6: "Dropout", 20: "Softmax", 5: "Data", 21: "SoftmaxWithLoss",
                  1: "Accuracy"}


class _Reader:
    def __init__(self, buf, path):
        self.buf = buf
        self.path = path
        self.budget = MAX_FIELDS
        self.blobs = 0

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
            self.budget -= 1
            if self.budget < 0:
                self.fail(f"more than {MAX_FIELDS} protobuf fields (not a real model)")
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

    def _one_field(self, pos, end):
        """One field at pos: (number, wire type, value, next position)."""
        for num, wt, v in self.fields(pos, end):
            return num, wt, v, self._after(pos, end, num, wt, v)

    def _after(self, pos, end, num, wt, v):
        if wt == 2:
            return v[0] + v[1]
        _, p = self.varint(pos, end)               # the key
        if wt == 0:
            return self.varint(p, end)[1]
        return p + (8 if wt == 1 else 4)

    def _float_run(self, pos, end):
        """The values of consecutive unpacked float fields (5 bytes each) at pos."""
        count = (end - pos) // 5
        if count == 0:
            self.fail("truncated 32-bit field")
        recs = np.frombuffer(self.buf, np.uint8, 5 * count, pos).reshape(count, 5)
        bad = np.flatnonzero(recs[:, 0] != 0x2D)
        k = int(bad[0]) if bad.size else count
        return recs[:k, 1:].copy().view("<f4").reshape(-1)

    def string(self, v):
        off, n = v
        try:
            return bytes(self.buf[off:off + n]).decode("utf-8")
        except UnicodeDecodeError:
            self.fail("a name is not UTF-8")

    def blob(self, v):
        off, n = v
        legacy = [0, 0, 0, 0]
        shape, chunks, doubles = None, [], []
        end = off + n
        pos = off
        while pos < end:
            # legacy unpacked float data (field 5, wire type 5): tag byte 0x2d and
            # 4 bytes per value; read the whole run of such fields at once
            if self.buf[pos] == 0x2D:
                run = self._float_run(pos, end)
                chunks.append(run)
                pos += 5 * run.size
                continue
            num, wt, val, pos = self._one_field(pos, end)
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
            elif num == 8 and wt == 2:
                if val[1] % 8:
                    self.fail("packed double data is not a multiple of 8 bytes")
                doubles.append(np.frombuffer(self.buf, "<f8", val[1] // 8, val[0]))
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
    import mmap
    from ..files import open_regular
    try:
        with open_regular(path, "caffemodel") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_FILE:
                raise FormatError(f"{path}: file larger than {MAX_FILE} bytes")
            # mapped, not read: the file's pages are the page cache's, not ours
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
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
                if len(blobs) >= MAX_BLOBS_PER_LAYER:
                    r.fail(f"layer {name!r}: more than {MAX_BLOBS_PER_LAYER} weight blobs")
                r.blobs += 1
                if r.blobs > MAX_BLOBS:
                    r.fail(f"more than {MAX_BLOBS} weight blobs")
                blobs.append(r.blob(fv))
        if name is None:
            r.fail("a layer has no name")
        if name in layers and layers[name]["blobs"] and blobs:
            r.fail(f"layer {name!r} appears twice with weights")
        if blobs or name not in layers:
            if len(layers) >= MAX_LAYERS:
                r.fail(f"more than {MAX_LAYERS} layers")
            layers[name] = {"type": ltype, "blobs": blobs}
    if not layers:
        raise FormatError(f"{path}: no layers found (not a .caffemodel?)")
    return layers
