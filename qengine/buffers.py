"""Plain buffers for the runtime, so that running a model needs no numpy.

The kernels take any C-contiguous buffer (typed memoryviews), so the runtime
keeps activations, weights and scratch in Python memoryviews over C arrays
(_kernels.empty_buffer), bytearrays or the mapped .qcnn file.  Importing numpy costs more than a whole
AlexNet forward pass; qrun therefore never imports it, and the public API
converts to numpy arrays only where it hands results to the caller.
"""

ITEMSIZE = {"f": 4, "B": 1, "i": 4, "h": 2}
DTYPE_NAMES = {"f": "float32", "B": "uint8", "i": "int32", "h": "int16"}


def count(shape):
    """The number of values of a shape."""
    n = 1
    for s in shape:
        n *= s
    return n


_alloc = None


def empty(shape, fmt="f"):
    """A new uninitialised C-contiguous buffer of the given shape ("f" float32, "B" uint8)."""
    global _alloc
    if _alloc is None:
        from ._kernels import empty_buffer as _alloc
    shape = tuple(map(int, shape))
    if 0 in shape:
        raise ValueError(f"empty shape {list(shape)}")
    return _alloc(shape, fmt)


def zeros(shape, fmt="f"):
    """A new zero-filled C-contiguous buffer of the given shape."""
    shape = tuple(int(s) for s in shape)
    return shaped(bytearray(count(shape) * ITEMSIZE[fmt]), shape, fmt)


def shaped(buf, shape, fmt):
    """A memoryview of `buf`'s bytes as `fmt` values of `shape`."""
    mv = memoryview(buf)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    if 0 in shape:
        raise ValueError(f"empty shape {list(shape)}")
    return mv.cast(fmt, tuple(shape))


def reshape(mv, shape):
    """The same C-contiguous values with another shape (one entry may be -1)."""
    mv = memoryview(mv)
    if -1 in shape:
        shape = list(shape)
        k = shape.index(-1)
        shape[k] = 1
        shape[k] = mv.nbytes // mv.itemsize // max(1, count(shape))
    if 0 in shape:
        raise ValueError(f"empty shape {list(shape)}")
    f = mv.format
    if f not in ("f", "B", "i"):
        f = format_of(mv)
    return (mv if mv.ndim == 1 and mv.format == "B" else mv.cast("B")).cast(f, tuple(shape))


def format_of(mv):
    """The buffer's value format: "f", "B" or "i"."""
    f = mv.format.lstrip("@=<")
    return "B" if f in ("b", "c", "?") else f


def rows(mv):
    """The first-axis slices of a C-contiguous buffer, as flat byte views."""
    flat = memoryview(mv).cast("B")
    step = flat.nbytes // mv.shape[0]
    return [flat[i * step:(i + 1) * step] for i in range(mv.shape[0])]


def concat(parts, axis):
    """Join C-contiguous float buffers [N, C_i, ...] along axis 0 or 1."""
    first = parts[0]
    shape = list(first.shape)
    shape[axis] = sum(p.shape[axis] for p in parts)
    out = empty(shape, format_of(first))
    dst = memoryview(out).cast("B")
    if axis == 0:
        pos = 0
        for p in parts:
            b = memoryview(p).cast("B")
            dst[pos:pos + b.nbytes] = b
            pos += b.nbytes
        return out
    part_rows = [rows(p) for p in parts]
    pos = 0
    for n in range(shape[0]):
        for pr in part_rows:
            row = pr[n]
            dst[pos:pos + row.nbytes] = row
            pos += row.nbytes
    return out


def all_finite(mv):
    """True when no value of a float buffer (any shape) is NaN or infinite."""
    from . import _kernels
    return _kernels.all_finite(reshape(mv, (-1,)))


def to_numpy(mv):
    """A numpy view of a buffer (no copy; numpy is imported here, on first use)."""
    import numpy as np
    return np.asarray(mv)
