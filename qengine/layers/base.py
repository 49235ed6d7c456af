"""What every layer type's record and runtime op share.

A layer type is one class (a record) with everything qengine knows about it:

    type         its name in the graph ("Convolution", "Eltwise", ...)
    inputs       how many bottoms it takes: (least, most)
    in_place     whether its output may reuse its input's blob name (ReLU ...)
    fuses_relu   whether its kernel applies a following in-place ReLU itself
    check(p, need)            validate the params of an untrusted graph
    shape(p, ins, where)      the output shape from the input shapes
    work(p, ins, out)         operations per image (the budget's and qbench's work)
    weight_shapes(p, ins)     {role: shape} of its dense tensors ({} without weights)
    reference(p, xs, wb)      a plain numpy implementation (the tests' reference)
    Op                        the runtime op that runs it on the C kernels

Shapes are per image: (C, H, W) for feature maps, (C,) after a flattening layer.
"""
import math

from .. import buffers
from ..errors import ModelError

MAX_DIM = 1 << 20
FLOAT32_MAX = 3.4028234663852886e38


def is_int(v, lo, hi):
    return type(v) is int and lo <= v <= hi


def is_num(v):
    """A finite number that a float32 holds (the kernels take float32 parameters)."""
    return type(v) in (int, float) and math.isfinite(v) and abs(v) <= FLOAT32_MAX


def is_int_list(v, n, lo, hi):
    return isinstance(v, list) and len(v) == n and all(is_int(x, lo, hi) for x in v)


def conv_output(size, kernel, stride, pad):
    return (size + 2 * pad - kernel) // stride + 1


def pool_output(size, kernel, stride, pad, ceil=True):
    """The pooled size.  ceil (Caffe, ONNX ceil_mode=1, PyTorch): ceil rounding,
    with a pad the last window starting inside the image or its leading pad
    (Caffe's rule); else floor."""
    if not ceil:
        return (size + 2 * pad - kernel) // stride + 1
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def np():
    import numpy
    return numpy


def need_chw(x, where):
    if len(x) != 3:
        raise ModelError(f"{where}: input must be C x H x W, is {list(x)}")
    return x


class LayerType:
    """A layer type's record (see the module's docstring); subclasses fill it in."""

    type = None
    inputs = (1, 1)
    in_place = False
    fuses_relu = False
    Op = None

    def check(self, p, need):
        pass

    def shape(self, p, ins, where):
        return ins[0]

    def work(self, p, ins, out):
        return buffers.count(out)

    def weight_shapes(self, p, ins):
        return {}

    def reference(self, p, xs, wb):
        raise NotImplementedError(self.type)


class Op:
    """One layer of a loaded model, ready to run: per-image input and output
    shapes known.  Public attributes (Model.layers): name, type, params, bottom,
    top, in_shapes, out_shape, strategy (how it runs), weighted (quantizable)."""

    weighted = False
    strategy = "kernel"
    aliases_input = False     # returns its input's buffer (Dropout, Flatten): no copy

    def __init__(self, L, in_shapes, out_shape, qf=None, opts=None):
        self.L = L
        self.name, self.type = L["name"], L["type"]
        self.bottom, self.top = list(L["bottom"]), list(L["top"])
        self.params = L["params"]
        self.in_shapes, self.out_shape = in_shapes, out_shape
        # tensors this layer decodes (name -> bytes; a name shared by layers is
        # decoded once) and the bytes of its own re-laid copies (the budget)
        self.sources, self.derived_bytes = {}, 0

    def workspace(self):
        return 0

    def can_overwrite(self, k):
        """Whether run(..., reuse=xs[k]) may write the output over input k
        (the runtime passes it only when no later layer reads that buffer)."""
        return False

    def cost(self):
        """Theoretical work: (dense multiply-adds, table multiply-adds, lookups)."""
        return 0, 0, 0

    def model_cost(self):
        """cost() as the model is quantized, whatever strategy runs the layer."""
        return self.cost()

    def work(self):
        """Operations per image: multiply-adds and lookups, or for a layer
        without weights its comparisons or additions (its record's rule)."""
        c = self.cost()
        if any(c):
            return sum(c)
        return RECORDS[self.type].work(self.params, self.in_shapes, self.out_shape)

    def materialize(self):
        """Decode and lay out this layer's tensors (after the budget check)."""

    def dense_weights(self):
        """{role: numpy array} of its weights as the reference takes them, or None."""
        return None

    def new_out(self, n):
        return buffers.empty((n,) + tuple(self.out_shape))

    def __repr__(self):
        return f"<layer {self.name} {self.type} {list(self.in_shapes)} -> {list(self.out_shape)}>"


RECORDS = {}


def register(cls):
    """Class decorator: add a layer type's record to the registry."""
    rec = cls()
    RECORDS[rec.type] = rec
    return cls


def check_tensor(qf, name, dtype, shape, where):
    """The file's tensor `name` must have this dtype ("f32", "u8") and shape."""
    from ..format import DTYPES
    e = qf.entry(name)
    if e["dtype"] != dtype or tuple(e["shape"]) != tuple(shape):
        def dname(d):
            return buffers.DTYPE_NAMES[DTYPES[d][0]] if d in DTYPES else str(d)
        raise ModelError(f"{qf.path}: {where}: tensor {name!r} is {dname(e['dtype'])} "
                         f"{list(e['shape'])}, expected {dname(dtype)} {list(shape)}")
