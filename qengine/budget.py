"""The resource budget: what a model may ask of the machine.

A .qcnn file is untrusted, and a valid file of a few hundred bytes can describe
a network that needs terabytes of memory or hours per image.  `qengine.load`
therefore adds up, from the layer graph and the file's tensor table alone and
before anything is decoded or run, what the model will need, and refuses it
with a ModelError naming the layer and the figure when it exceeds a limit:

    tensors      bytes decoded or re-laid at load: decoded codebooks, unpacked
                 indices, dequantized and blocked weights (a tensor shared by
                 several layers is decoded once).  Raw tensors are views of the
                 memory-mapped file and cost nothing here.
    activations  peak bytes of activations alive at once while one image runs,
                 the input included (a batch runs in slices that fit it)
    workspace    scratch bytes one calling thread keeps (the largest layer's)
    input        bytes of one image's network input and preprocessing buffers
    work         multiply-adds plus table lookups per image

The defaults fit every real CNN we know at its usual input size (VGG-16 needs
15.5 G of work and ~60 MB of activations per image, ~0.6 GB of tensors when
its fully-connected layers are kept dense) with a wide margin, and keep a
hostile file well below the memory of a small machine.  Raise them with
`qengine.load(path, limits={"work": 10**12})`.
"""
from .errors import InputError

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_LIMITS = {
    "tensors": 2 * GiB,
    "activations": 1 * GiB,
    "workspace": 512 * MiB,
    "input": 256 * MiB,
    "work": 200 * 10 ** 9,
}
UNITS = {"tensors": "bytes", "activations": "bytes", "workspace": "bytes", "input": "bytes",
         "work": "multiply-adds and lookups"}


def resolve(limits=None):
    """The defaults updated by `limits` (a dict of some of DEFAULT_LIMITS' keys)."""
    out = dict(DEFAULT_LIMITS)
    if limits is None:
        return out
    if not isinstance(limits, dict):
        raise InputError(f"limits must be a dict with keys among {sorted(DEFAULT_LIMITS)}, "
                         f"got {type(limits).__name__}")
    for k, v in limits.items():
        if k not in DEFAULT_LIMITS:
            raise InputError(f"unknown limit {k!r}; limits are {sorted(DEFAULT_LIMITS)}")
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"limit {k!r} must be a positive integer, got {v!r}")
        out[k] = v
    return out


def human(n, key):
    """A figure with its unit, for messages."""
    if UNITS[key] != "bytes":
        return f"{n / 1e9:.3g} G {UNITS[key]}"
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def exceeded(key, need, limits, what):
    """A message for a figure over its limit, or None."""
    if need <= limits[key]:
        return None
    return (f"{what} needs {human(need, key)} of {key}, over the limit of "
            f"{human(limits[key], key)} (raise it with qengine.load(..., "
            f"limits={{{key!r}: N}}) if the model is trusted)")
