"""The .qcnn file format, version 1 (specified in docs/FORMAT.md).

    offset 0   magic        8 bytes  b"\\x89QCNN\\r\\n\\x1a"
           8   version      u32      1
          12   header_crc   u32      CRC-32 of the header JSON bytes
          16   header_len   u64      length of the header JSON
          24   data_offset  u64      start of the data section, a multiple of 64
          32   header JSON  (UTF-8), then zero bytes up to data_offset
    data_offset   tensors, each at a 64-byte aligned offset, zero bytes between

All integers are little-endian.  The reader checks every size and offset
against the file before it allocates anything, verifies the CRC-32 of the
header and of every tensor, and memory-maps the data.
"""
import json
import mmap
import os
import struct
import sys
import tempfile
import zlib

from . import buffers
from .errors import FormatError
from .files import check_destination, exists_error, open_regular

MAGIC = b"\x89QCNN\r\n\x1a"
# The versions this qengine reads.  A file is written with the lowest version
# whose readers understand all of it (docs/FORMAT.md, "Versioning"): version 2
# adds keys that a version-1 reader would silently ignore.
VERSIONS = (1, 2)
VERSION = VERSIONS[-1]
V1_LAYER_TYPES = ("Convolution", "InnerProduct", "ReLU", "LRN", "Pooling", "Concat", "Dropout",
                  "Softmax")
V2_LAYER_TYPES = ("Eltwise", "Scale", "Clip", "Sigmoid", "Flatten", "StridedSlice", "Pad")
V2_POOLING_KEYS = ("ceil", "exclude_pad")
V2_PREPROCESS_KEYS = ("std", "pixel_range")
PREAMBLE = struct.Struct("<8sIIQQ")
ALIGN = 64
MAX_HEADER = 16 * 1024 * 1024
# JSON arrays and objects in a header: each costs Python ~60 bytes from 1-2 bytes
# of file, so their number bounds the header's memory (~20x its size at most)
MAX_HEADER_CONTAINERS = 1 << 20
MAX_TENSORS = 100000
MAX_NDIM = 8
MAX_NAME = 256
# dtype -> (buffer format, item size); numpy equivalents <f4, u1, <i4
DTYPES = {"f32": ("f", 4), "u8": ("B", 1), "i32": ("i", 4)}
ENCODINGS = ("raw", "qdelta2d")


def _align(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


def packed_nbytes(count, bits):
    return (count * bits + 7) // 8


def pack_bits(values, bits):
    """Pack uint8 values < 2**bits into an LSB-first bit stream (see FORMAT.md)."""
    import numpy as np
    v = np.ascontiguousarray(values, np.uint8).reshape(-1)
    if bits == 8:
        return v.tobytes()
    if v.size and int(v.max()) >= (1 << bits):
        raise ValueError(f"value {int(v.max())} does not fit {bits} bits")
    planes = np.unpackbits(v[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_bits(buf, bits, count):
    """The first `count` values of an LSB-first bit stream, as a uint8 buffer."""
    from . import _kernels
    out = buffers.empty((count,), "B")
    _kernels.unpack_bits(memoryview(buf).cast("B"), bits, count, False, out)
    return out


# -- qdelta2d: a compact code, exact to half a step, for smooth float images --
# q = round(x / step); r = q minus the planar prediction from the left, upper
# and upper-left neighbours over the last two axes; r zigzag-mapped to an
# unsigned u32 (0, -1, 1, -2, ... -> 0, 1, 2, 3, ...), its bytes split into
# planes (all low bytes, then all second bytes, ...) and deflated.

def qdelta_encode(arr, step):
    import numpy as np
    a = np.asarray(arr, np.float64)
    if a.ndim < 2:
        raise ValueError("qdelta2d needs at least 2 dimensions")
    q = np.round(a / step)
    if np.abs(q).max(initial=0) > 2 ** 28:
        raise ValueError("values too large for qdelta2d at this step")
    q = q.astype(np.int64)
    r = np.diff(np.diff(q, axis=-1, prepend=0), axis=-2, prepend=0)
    z = np.where(r >= 0, 2 * r, -2 * r - 1).astype("<u4")
    planes = z.view(np.uint8).reshape(-1, 4).T.copy()
    return zlib.compress(planes.tobytes(), 9)


def qdelta_decode(buf, shape, step, where):
    """A qdelta2d payload -> float32 buffer of `shape`."""
    from . import _kernels
    count = buffers.count(shape)
    try:
        d = zlib.decompressobj()
        raw = d.decompress(buf, count * 4 + 1)
    except zlib.error as e:
        raise FormatError(f"{where}: corrupt compressed data ({e})") from None
    if len(raw) != count * 4 or not d.eof:
        raise FormatError(f"{where}: compressed data does not decode to shape {list(shape)}")
    out = buffers.empty((count,), "f")
    rows, cols = shape[-2], shape[-1]
    _kernels.qdelta_decode(raw, count // (rows * cols), rows, cols, step, out)
    return buffers.reshape(out, shape)


class Tensor:
    """One tensor to write: a numpy array and how to store it."""

    def __init__(self, array, bits=None, encoding="raw", step=None):
        import numpy as np
        self.array = np.ascontiguousarray(array)
        self.bits = bits
        self.encoding = encoding
        self.step = step

    def payload(self):
        import numpy as np
        a = self.array
        if self.encoding == "qdelta2d":
            return qdelta_encode(a, self.step), "f32"
        if a.dtype == np.float32:
            return a.astype("<f4").tobytes(), "f32"
        if a.dtype == np.int32:
            return a.astype("<i4").tobytes(), "i32"
        if a.dtype == np.uint8:
            if self.bits is not None and self.bits < 8:
                return pack_bits(a, self.bits), "u8"
            return a.tobytes(), "u8"
        raise TypeError(f"unsupported tensor dtype {a.dtype}")


def required_version(metadata, reading=False):
    """The lowest format version that describes this metadata: 2 when a
    version-1 reader would misread it (pooling rounding or padding rules,
    PyTorch-style preprocessing) or refuse it (a layer type it lacks).
    reading: count only the layer types version 2 added (an unknown type is
    the graph check's to report)."""
    graph = metadata.get("graph") if isinstance(metadata, dict) else None
    layers = graph.get("layers") if isinstance(graph, dict) else None
    for L in layers if isinstance(layers, list) else []:
        if not isinstance(L, dict):
            continue
        t, params = L.get("type"), L.get("params")
        if t in V2_LAYER_TYPES if reading else t not in V1_LAYER_TYPES:
            return 2
        if t == "Pooling" and isinstance(params, dict) and \
                any(k in params for k in V2_POOLING_KEYS):
            return 2
    pre = metadata.get("preprocess") if isinstance(metadata, dict) else None
    if isinstance(pre, dict) and any(k in pre for k in V2_PREPROCESS_KEYS):
        return 2
    return 1


def write(path, metadata, tensors, force=True):
    """Write a .qcnn atomically: a temporary file in the same directory, fsync,
    rename.  With force=False an existing file is never replaced."""
    entries, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            t = Tensor(t)
        data, dtype = t.payload()
        entry = {"dtype": dtype, "shape": [int(s) for s in t.array.shape], "offset": offset,
                 "nbytes": len(data), "crc32": zlib.crc32(data)}
        if t.bits is not None and t.bits < 8:
            entry["bits"] = int(t.bits)
        if t.encoding != "raw":
            entry["encoding"] = t.encoding
            entry["step"] = float(t.step)
        entries[name] = entry
        blobs.append((offset, data))
        offset = _align(offset + len(data))
    data_len = blobs[-1][0] + len(blobs[-1][1]) if blobs else 0
    version = required_version(metadata)
    header = json.dumps({"format": "qcnn", "version": version, "metadata": metadata,
                         "tensors": entries, "data_len": data_len},
                        separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    data_offset = _align(PREAMBLE.size + len(header))
    pre = PREAMBLE.pack(MAGIC, version, zlib.crc32(header), len(header), data_offset)

    def body(f):
        f.write(pre)
        f.write(header)
        f.write(b"\0" * (data_offset - PREAMBLE.size - len(header)))
        pos = 0
        for off, data in blobs:
            f.write(b"\0" * (off - pos))
            f.write(data)
            pos = off + len(data)

    write_atomic(path, body, force)
    return PREAMBLE.size + len(header) + (data_offset - PREAMBLE.size - len(header)) + data_len


def write_atomic(path, body, force=True):
    """Write a file atomically: body(f) fills a temporary file in the same
    directory, fsync, rename (removed on any error or signal).  With
    force=False an existing file is never replaced."""
    path = os.fspath(path)
    check_destination(path, force)
    d = os.path.dirname(os.path.abspath(path))
    clean_stale_temporaries(d)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix=".tmp", dir=d)
    try:
        with _signals_raise():
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
            with os.fdopen(fd, "wb") as f:
                body(f)
                f.flush()
                os.fsync(f.fileno())
            if force:
                check_destination(path, force)
                os.replace(tmp, path)
            else:
                _publish_exclusive(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename durable
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


# Temporary files are named .qcnn-tmp-<pid>-XXXX.tmp beside the output: one
# whose process is gone (killed by SIGKILL mid-write) is removed by the next write
# into the same directory.
TMP_PREFIX = ".qcnn-tmp-"


def _publish_exclusive(tmp, path):
    """Give the finished temporary file its final name unless that name exists,
    atomically: link() fails if the name exists, whatever appeared since the
    first check.  Where hard links are not supported, O_EXCL reserves the name."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise exists_error(path) from None
    except OSError:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            raise exists_error(path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def clean_stale_temporaries(directory):
    """Remove temporary outputs left in `directory` by a process that no longer
    exists (killed while writing)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for n in names:
        if not (n.startswith(TMP_PREFIX) and n.endswith(".tmp")):
            continue
        try:
            pid = int(n[len(TMP_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue                   # its writer is still running
        except ProcessLookupError:
            pass
        except OSError:
            continue                   # exists, owned by someone else
        try:
            os.unlink(os.path.join(directory, n))
        except OSError:
            pass


class _signals_raise:
    """While writing: SIGTERM and SIGHUP raise SystemExit (128 + signal), as
    SIGINT raises KeyboardInterrupt, so that the temporary file is removed.
    Only in the main thread (where Python runs signal handlers)."""

    def __enter__(self):
        import signal
        import threading
        self.saved = {}
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in ("SIGTERM", "SIGHUP"):
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            try:
                self.saved[sig] = signal.signal(sig, _raise_exit)
            except (ValueError, OSError):
                pass
        return self

    def __exit__(self, *exc):
        import signal
        for sig, h in self.saved.items():
            signal.signal(sig, h)
        return False


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


class QcnnFile:
    """A validated, memory-mapped .qcnn file."""

    def __init__(self, path, verify=True):
        self.path = os.fspath(path)
        self._decoded = None          # see keep_decoded()
        f = open_regular(self.path, ".qcnn model")
        with f:
            size = os.fstat(f.fileno()).st_size
            if size < PREAMBLE.size:
                raise FormatError(f"{self.path}: file too short ({size} bytes) for a .qcnn header")
            pre = f.read(PREAMBLE.size)
            magic, version, hcrc, hlen, doff = PREAMBLE.unpack(pre)
            if magic != MAGIC:
                raise FormatError(f"{self.path}: not a .qcnn file (bad magic bytes)")
            if version not in VERSIONS:
                raise FormatError(f"{self.path}: .qcnn version {version} is not supported "
                                  f"(this qengine reads versions "
                                  f"{', '.join(map(str, VERSIONS))}: upgrade qengine)")
            self.version = version
            if hlen > MAX_HEADER or PREAMBLE.size + hlen > size:
                raise FormatError(f"{self.path}: header: length {hlen} exceeds the file or "
                                  f"the {MAX_HEADER}-byte limit")
            if doff % ALIGN or doff < PREAMBLE.size + hlen or doff > size:
                raise FormatError(f"{self.path}: header: data offset {doff} is invalid")
            hbytes = f.read(hlen)
            pad = f.read(doff - PREAMBLE.size - hlen)
            if zlib.crc32(hbytes) != hcrc:
                raise FormatError(f"{self.path}: header: checksum mismatch (file is corrupt)")
            if pad.count(0) != len(pad):
                raise FormatError(f"{self.path}: header: padding is not zero (file is corrupt)")
            if hbytes.count(b"[") + hbytes.count(b"{") > MAX_HEADER_CONTAINERS:
                raise FormatError(f"{self.path}: header: more than {MAX_HEADER_CONTAINERS} "
                                  f"JSON arrays and objects")
            try:
                header = json.loads(hbytes.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError) as e:
                raise FormatError(f"{self.path}: header: invalid JSON ({e})") from None
            self._check_header(header, size - doff)
            self.header = header
            self.metadata = header["metadata"]
            self.size = size
            self.data_offset = doff
            try:
                self._mm = (mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > 0
                            else None)
            except (OSError, ValueError) as e:
                raise FormatError(f"{self.path}: cannot map the file ({size} bytes) into "
                                  f"memory: {getattr(e, 'strerror', None) or e}") from None
        self._buf = memoryview(self._mm)[doff:] if self._mm is not None else memoryview(b"")
        self._check_gaps()
        if verify:
            self.verify()

    def _fail(self, msg):
        raise FormatError(f"{self.path}: {msg}")

    def _check_header(self, h, data_size):
        if not isinstance(h, dict) or h.get("format") != "qcnn" or \
                h.get("version") != self.version:
            self._fail(f"header: not a version-{self.version} .qcnn header")
        need = required_version(h.get("metadata"), reading=True)
        if self.version < need:
            self._fail(f"header: version {self.version} cannot hold what the metadata uses "
                       f"(version {need} features)")
        if not isinstance(h.get("metadata"), dict):
            self._fail("header: metadata missing")
        if h.get("data_len") != data_size:
            self._fail(f"header: data section should be {h.get('data_len')} bytes, file has "
                       f"{data_size} (truncated or padded file)")
        tensors = h.get("tensors")
        if not isinstance(tensors, dict) or len(tensors) > MAX_TENSORS:
            self._fail("header: tensor table missing or too large")
        spans = []
        for name, e in tensors.items():
            where = f"tensor {name[:MAX_NAME]!r}"
            if len(name) > MAX_NAME or not isinstance(e, dict):
                self._fail(f"{where}: invalid entry")
            dtype, shape = e.get("dtype"), e.get("shape")
            off, nb, crc = e.get("offset"), e.get("nbytes"), e.get("crc32")
            enc, bits = e.get("encoding", "raw"), e.get("bits")
            if not isinstance(dtype, str) or dtype not in DTYPES or enc not in ENCODINGS:
                self._fail(f"{where}: unknown dtype {dtype!r} or encoding {enc!r}")
            if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                    or not all(type(s) is int and 0 <= s <= 1 << 40 for s in shape)):
                self._fail(f"{where}: invalid shape {shape!r}")
            for v in (off, nb, crc):
                if type(v) is not int or v < 0:
                    self._fail(f"{where}: invalid offset, size or checksum")
            if off % ALIGN or off + nb > data_size:
                self._fail(f"{where}: data at {off}+{nb} lies outside the data section "
                           f"({data_size} bytes) or is not {ALIGN}-byte aligned")
            count = 1
            for s in shape:
                count *= s
            if bits is not None:
                if dtype != "u8" or type(bits) is not int or not 1 <= bits <= 7:
                    self._fail(f"{where}: invalid bit width {bits!r}")
                want = packed_nbytes(count, bits)
            else:
                want = count * DTYPES[dtype][1]
            if enc == "raw" and nb != want:
                self._fail(f"{where}: holds {nb} bytes, its shape needs {want}")
            if enc == "qdelta2d":
                step = e.get("step")
                if (dtype != "f32" or len(shape) < 2 or not isinstance(step, float)
                        or not step > 0 or count > 1 << 26):
                    self._fail(f"{where}: invalid qdelta2d parameters")
            spans.append((off, off + nb, name))
        spans.sort()
        for (a0, a1, n1), (b0, b1, n2) in zip(spans, spans[1:]):
            if b0 < a1:
                self._fail(f"tensors {n1!r} and {n2!r} overlap")
        self._spans = spans

    def _zero(self, start, end):
        """True when data bytes [start, end) are all zero, read in place (no copy)
        and released from memory after (a large gap may be a sparse hole)."""
        from . import _kernels
        step = 1 << 24
        for a in range(start, end, step):
            b = min(end, a + step)
            if _kernels.max_u8(self._buf[a:b]) != 0:
                return False
            if b - a == step:
                self._release_range(self.data_offset + a, b - a)
        return True

    def _check_gaps(self):
        pos = 0
        for a, b, name in self._spans:
            if a > pos and not self._zero(pos, a):
                self._fail(f"padding before tensor {name!r} is not zero (file is corrupt)")
            pos = max(pos, b)
        if len(self._buf) > pos and not self._zero(pos, len(self._buf)):
            self._fail("bytes after the last tensor are not zero (file is corrupt)")

    def verify(self):
        """Check the CRC-32 of every tensor."""
        for name, e in self.header["tensors"].items():
            data = self._buf[e["offset"]:e["offset"] + e["nbytes"]]
            if zlib.crc32(data) != e["crc32"]:
                self._fail(f"tensor {name!r}: checksum mismatch (file is corrupt)")

    @property
    def tensor_names(self):
        return list(self.header["tensors"])

    def entry(self, name):
        try:
            return self.header["tensors"][name]
        except KeyError:
            raise FormatError(f"{self.path}: tensor {name!r} is missing") from None

    def decoded_nbytes(self, name):
        """Bytes that view(name) allocates: 0 for a raw tensor (a view of the
        mapped file), the decoded size for a packed or encoded one."""
        e = self.entry(name)
        count = buffers.count(e["shape"])
        if e.get("encoding", "raw") == "qdelta2d":
            return 4 * count
        if e.get("bits"):
            return count
        return 0 if sys.byteorder == "little" or e["dtype"] == "u8" else count * 4

    def keep_decoded(self, on):
        """While on, view() decodes each packed or encoded tensor once and hands
        the same buffer to every caller (a tensor shared by many layers)."""
        self._decoded = {} if on else None

    def view(self, name):
        """The tensor as a shaped memoryview (format "f", "B" or "i"): a read-only
        view of the mapped file for raw tensors, a new buffer for packed or encoded
        ones.  Needs no numpy.  Empty tensors are refused."""
        if self._decoded is not None and name in self._decoded:
            return self._decoded[name]
        e = self.entry(name)
        shape = tuple(e["shape"])
        where = f"{self.path}: tensor {name!r}"
        count = buffers.count(shape)
        if count == 0:
            raise FormatError(f"{where}: is empty (shape {list(shape)})")
        data = self._buf[e["offset"]:e["offset"] + e["nbytes"]]
        if e.get("encoding", "raw") == "qdelta2d":
            out = qdelta_decode(data, shape, e["step"], where)
            if not buffers.all_finite(out):
                raise FormatError(f"{where}: decodes to NaN or infinity")
        elif e.get("bits"):
            out = buffers.reshape(unpack_bits(data, e["bits"], count), shape)
        else:
            fmt, size = DTYPES[e["dtype"]]
            if size > 1 and sys.byteorder != "little":  # pragma: no cover - the format is little-endian
                import array
                a = array.array(fmt, bytes(data))
                a.byteswap()
                data = a
            return buffers.shaped(data, shape, fmt)
        if self._decoded is not None:
            self._decoded[name] = out
        return out

    def packed(self, name):
        """A uint8 tensor as stored: (bytes, bits), an LSB-first stream of `bits`-bit
        values (8: plain bytes), for kernels that unpack while they lay out."""
        e = self.entry(name)
        if e["dtype"] != "u8" or e.get("encoding", "raw") != "raw":
            raise FormatError(f"{self.path}: tensor {name!r} is not a uint8 tensor")
        return self._buf[e["offset"]:e["offset"] + e["nbytes"]], e.get("bits") or 8

    def release(self, name):
        """Tell the OS that the mapped bytes of `name` are not needed any more (after a
        kernel has copied them into its own layout), so that they leave the resident
        memory.  Harmless: a later read maps them in again from the file."""
        e = self.entry(name)
        self._release_range(self.data_offset + e["offset"], e["nbytes"])

    def _release_range(self, start, nbytes):
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if self._mm is None or advice is None:
            return
        page = mmap.PAGESIZE
        first = -(-start // page) * page
        last = (start + nbytes) // page * page
        if last > first:
            try:
                self._mm.madvise(advice, first, last - first)
            except (OSError, ValueError):  # pragma: no cover - advice only
                pass

    def tensor(self, name):
        """The tensor as a numpy array (see view())."""
        import numpy as np
        e = self.entry(name)
        if buffers.count(e["shape"]) == 0:
            return np.empty(tuple(e["shape"]), {"f32": np.float32, "u8": np.uint8,
                                                "i32": np.int32}[e["dtype"]])
        return np.asarray(self.view(name))

    def close(self):
        self._buf = None
        # the mapping is released when the last array viewing it is gone
        self._mm = None
