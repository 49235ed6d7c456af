"""Readers of the original Quantized-CNN binaries (Wu et al. 2016).

.bin: int32 ndim, int32 dims[ndim], then the raw little-endian float32 data in C order.
.cbn: int32 ndim, int32 dims[ndim], int32 bits, then 4096-byte blocks, each
      holding floor(4096*8/bits) codeword indices bit-packed MSB first.

Every header is checked against the file's length before anything is
allocated; errors name the file and the problem.
"""
import os
import re

import numpy as np

from .. import _kernels
from ..files import open_regular
from ..errors import FormatError

MAX_NDIM = 8
CBN_BLOCK = 4096


def _read_header(path, data, extra_ints=0):
    if len(data) < 4:
        raise FormatError(f"{path}: file too short for a header ({len(data)} bytes)")
    ndim = int(np.frombuffer(data, "<i4", 1)[0])
    if ndim < 1 or ndim > MAX_NDIM:
        raise FormatError(f"{path}: invalid dimension count {ndim} (expected 1..{MAX_NDIM})")
    hdr = 4 * (1 + ndim + extra_ints)
    if len(data) < hdr:
        raise FormatError(f"{path}: file too short for a {ndim}-D header")
    ints = np.frombuffer(data, "<i4", ndim + extra_ints, 4)
    dims = tuple(int(v) for v in ints[:ndim])
    if any(d < 1 for d in dims):
        raise FormatError(f"{path}: invalid dimensions {dims}")
    count = 1
    for d in dims:
        count *= d
        if count > len(data) * 8:  # no more values than bits in the file
            raise FormatError(f"{path}: dimensions {dims} are larger than the file")
    return dims, count, [int(v) for v in ints[ndim:]], hdr


def _read_file(path):
    try:
        with open_regular(path, "Quantized-CNN file") as f:
            return f.read()
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e.strerror}") from None


def read_bin(path):
    """A float32 array from an original .bin file."""
    data = _read_file(path)
    dims, count, _, hdr = _read_header(path, data)
    if len(data) != hdr + 4 * count:
        raise FormatError(f"{path}: header says {dims} ({4 * count} bytes of float32) but the "
                          f"file holds {len(data) - hdr} bytes of data")
    arr = np.frombuffer(data, "<f4", count, hdr).reshape(dims).astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise FormatError(f"{path}: contains NaN or infinite values")
    return arr


def read_cbn(path, k=None):
    """Codeword indices (uint8) and their bit width from an original .cbn file.
    With k given, every index must be < k."""
    data = _read_file(path)
    dims, count, (bits,), hdr = _read_header(path, data, extra_ints=1)
    if bits < 1 or bits > 8:
        raise FormatError(f"{path}: bits per index is {bits}, must be 1..8")
    per_block = CBN_BLOCK * 8 // bits
    nblocks = -(-count // per_block)
    if len(data) != hdr + nblocks * CBN_BLOCK:
        raise FormatError(f"{path}: {count} indices of {bits} bits need {nblocks} blocks "
                          f"({hdr + nblocks * CBN_BLOCK} bytes), file has {len(data)} bytes")
    src = np.frombuffer(data, np.uint8, nblocks * CBN_BLOCK, hdr)
    out = np.empty(nblocks * per_block, np.uint8)
    blocks = src.reshape(nblocks, CBN_BLOCK)
    outb = out.reshape(nblocks, per_block)
    for b in range(nblocks):
        _kernels.unpack_bits(blocks[b], bits, per_block, True, outb[b])
    out = out[:count].reshape(dims)
    if k is not None:
        mx = int(out.max()) if out.size else 0
        if mx >= k:
            raise FormatError(f"{path}: codeword index {mx} out of range (codebook has {k})")
    return out, bits


_NAME = re.compile(r"^(?P<prefix>.+)\.(?P<kind>ctrdLst|asmtLst|biasVec|convKnl|fcntWei)"
                   r"\.(?P<idx>\d+)\.(?P<ext>bin|cbn)$")


def scan_dir(directory):
    """Find the original files in a directory: {(kind, layer_index): path} and the prefix."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        raise FormatError(f"{directory}: cannot list directory: {e.strerror}") from None
    found, prefixes = {}, set()
    for n in names:
        m = _NAME.match(n)
        if not m:
            continue
        prefixes.add(m.group("prefix"))
        key = (m.group("kind"), int(m.group("idx")))
        if key[0] == "asmtLst" and key in found and m.group("ext") == "bin":
            continue  # prefer the compact .cbn over a raw .bin twin
        found[key] = os.path.join(directory, n)
    if len(prefixes) > 1:
        raise FormatError(f"{directory}: files of several models ({', '.join(sorted(prefixes))}); "
                          f"keep one model per directory")
    if not found:
        raise FormatError(f"{directory}: no Quantized-CNN files (*.ctrdLst.NN.bin, "
                          f"*.asmtLst.NN.cbn, *.biasVec.NN.bin) found")
    return found


def read_mean(path):
    """The original mean image (.bin, float32 [3,H,W], B,G,R)."""
    m = read_bin(path)
    if m.ndim != 3 or m.shape[0] not in (1, 3):
        raise FormatError(f"{path}: a mean image must be [C, H, W] with 1 or 3 channels, "
                          f"is {m.shape}")
    return m
