"""The runtime: a loaded model that runs its layer graph on the C kernels.

Python here only orchestrates: it checks inputs, allocates outputs and calls
one kernel per layer; every kernel releases the GIL.  A Model is immutable
after loading and keeps one scratch workspace per calling thread, so one
Model may serve many threads at once.
"""
import math
import os
import threading
import time

from . import _kernels, budget, buffers
from .errors import FormatError, InputError, ModelError, QEngineError
from .format import DTYPES, QcnnFile
from .graph import infer_shapes, layer_cost, layer_work, validate
from .preprocess import Preprocessor, check_preprocess

MODES = ("exact", "fast")
# A quantized layer runs densely on its dequantized weights when its tables and
# lookups would cost this many times its dense multiply-adds (same sums either way).
DEQUANTIZE_RATIO = 1.25
# What one table lookup of a convolution costs, in dense multiply-adds, by the
# kernel that would do it (measured on Zen 3 against the dense kernel's ~30
# multiply-adds/ns: float table rows 12 lookups/ns for K <= 32, 7-8 beyond, the
# tables then outgrowing L1; 16-bit register tables estimated from llvm-mca and
# the Zen 4 micro-kernel figures in README "Fast mode").
LOOKUP_COST_FLOAT_ROWS_SMALL_K = 2.5   # K <= 32
LOOKUP_COST_FLOAT_ROWS = 4.0
LOOKUP_COST_REGISTER = 1.5


def _isa_from_env():
    isa = os.environ.get("QENGINE_ISA")
    if isa:
        try:
            _kernels.set_isa(isa)
        except ValueError as e:
            raise QEngineError(f"QENGINE_ISA={isa}: {e}") from None


_isa_from_env()


MAX_THREADS = 1024


def check_threads(threads):
    """A thread count: a positive integer (not a string, float or bool)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or \
            not 1 <= threads <= MAX_THREADS:
        raise InputError(f"threads must be an integer from 1 to {MAX_THREADS}, got {threads!r}")
    return threads


# Fork safety.  libgomp's thread pool does not survive fork(): a child that
# enters a parallel region with more than one thread after its parent ran one
# waits forever for threads that do not exist (Python's default multiprocessing
# start method on Linux is fork).  A child forked after threaded work therefore
# runs single-threaded; one forked before any keeps its threads.
_THREADS_USED = False
_FORKED_AFTER_THREADS = False


def _after_fork_in_child():
    global _FORKED_AFTER_THREADS
    if _THREADS_USED:
        _FORKED_AFTER_THREADS = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _threads_now(threads):
    """The threads a call may use now (1 in a child forked after threaded work)."""
    global _THREADS_USED
    if _FORKED_AFTER_THREADS:
        return 1
    if threads > 1:
        _THREADS_USED = True
    return threads


def _check_top(top):
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise InputError(f"top must be a positive integer, got {top!r}")


def op_work(op):
    """Multiply-adds or comparisons per image of a layer without weights."""
    return layer_work(op.L, op.in_shapes, op.out_shape)


class _Op:
    """One layer, ready to run: per-sample input and output shapes known."""

    weighted = False

    def __init__(self, L, in_shapes, out_shape):
        self.L = L
        self.name, self.type = L["name"], L["type"]
        self.bottom, self.top = list(L["bottom"]), list(L["top"])
        self.params = L["params"]
        self.in_shapes, self.out_shape = in_shapes, out_shape

    def workspace(self):
        return 0

    def cost(self):
        """Theoretical work: (dense multiply-adds, table multiply-adds, lookups)."""
        return 0, 0, 0

    def model_cost(self):
        """cost() as the model is quantized, whatever strategy runs the layer."""
        return self.cost()

    def new_out(self, n):
        return buffers.empty((n,) + tuple(self.out_shape))


def _check_tensor(qf, name, dtype, shape, where):
    """The file's tensor `name` must have this dtype ("f32", "u8") and shape."""
    e = qf.entry(name)
    if e["dtype"] != dtype or tuple(e["shape"]) != tuple(shape):
        def dname(d):
            return buffers.DTYPE_NAMES[DTYPES[d][0]] if d in DTYPES else str(d)
        raise ModelError(f"{qf.path}: {where}: tensor {name!r} is {dname(e['dtype'])} "
                         f"{list(e['shape'])}, expected {dname(dtype)} {list(shape)}")


class _Weighted(_Op):
    """A convolution or fully-connected layer.  Built in two steps so that the
    model's resource budget is checked before anything is decoded: the
    constructor reads only the file's tensor table (shapes, encodings) and
    decides the strategy; materialize() then decodes and lays out the weights."""

    weighted = True

    def __init__(self, L, in_shapes, out_shape, qf, dense_small=True, fast=False):
        super().__init__(L, in_shapes, out_shape)
        self.dense_small = dense_small
        self.fast = fast
        w = L.get("weights")
        self.L_weights = w
        self._qf = qf
        self._where = where = f"layer {self.name!r}"
        if not isinstance(w, dict) or w.get("mode") not in ("lut", "dense"):
            raise ModelError(f"{qf.path}: {where}: missing or unknown weights mode")
        self.mode = w["mode"]
        self.strategy = w["mode"]
        cout = self.params["num_output"]
        # tensors this layer decodes (name -> bytes; a name shared by layers is
        # decoded once) and the bytes of its own re-laid copies
        self.sources, self.derived_bytes = {}, 0
        if w.get("bias"):
            self._use(w["bias"], "f32", (cout,))
        self._plan(qf, w, where, cout)
        # the kernels index one layer's weights, tables and indices with 32-bit ints
        if self.type == "Convolution":
            kh, kw = self.params["kernel"]
            weights = cout * (self.in_shapes[0][0] // self.params["group"]) * kh * kw
        else:
            weights = cout * buffers.count(self.in_shapes[0])
        try:
            _kernels.check_int_range(where, weights=weights, **(
                {"M_K": self.M * self.K * self.d} if self.mode == "lut" else {}))
        except ValueError as e:
            raise ModelError(f"{qf.path}: {e}") from None

    def _use(self, name, dtype, shape):
        """Check a tensor's table entry; count what decoding it costs."""
        _check_tensor(self._qf, name, dtype, shape, self._where)
        self.sources[name] = self._qf.decoded_nbytes(name)

    def materialize(self):
        """Decode and lay out this layer's weights (after the budget check)."""
        qf, w, cout = self._qf, self.L_weights, self.params["num_output"]
        self.bias = self._finite(qf.view(w["bias"]) if w.get("bias")
                                 else buffers.zeros((cout,)), "bias")
        if self.mode == "lut":
            self.codebook = self._finite(qf.view(w["codebook"]), "codebook")
        self._load(qf, w, cout)

    def _finite(self, buf, what):
        """buf, refused if it holds NaN or infinity."""
        if not buffers.all_finite(buf):
            raise ModelError(f"{self._qf.path}: {self._where}: {what} holds NaN or infinity")
        return buf

    def model_cost(self):
        lut = self.mode == "lut"
        return layer_cost(self.L, self.in_shapes[0], self.out_shape,
                          self.K if lut else None, self.M if lut else None)

    def _plan_lut(self, qf, w, where, cin, idx_prefix):
        """Check the codebook's and the indices' entries: the M subspaces must
        cover the cin input channels and the indices be idx_prefix + (M,)."""
        e = qf.entry(w["codebook"])
        if e["dtype"] != "f32" or len(e["shape"]) != 3:
            raise ModelError(f"{qf.path}: {where}: codebook must be float32 [M, K, d]")
        M, K, d = e["shape"]
        if not (1 <= K <= 256 and d >= 1):
            raise ModelError(f"{qf.path}: {where}: codebook K={K}, d={d} out of range")
        if M != -(-cin // d):
            raise ModelError(f"{qf.path}: {where}: {M} subspaces of d={d} do not cover {cin} "
                             f"inputs")
        self._use(w["codebook"], "f32", (M, K, d))
        _check_tensor(qf, w["indices"], "u8", tuple(idx_prefix) + (M,), where)
        self.codebook, self.indices = None, None
        self.M, self.K, self.d = M, K, d
        self._idx_name = w["indices"]

    def _use_unpacked_indices(self):
        self.sources[self._idx_name] = self._qf.decoded_nbytes(self._idx_name)

    def _check_top(self, top):
        if top >= self.K:
            raise ModelError(f"{self._qf.path}: {self._where}: codeword index {top} >= "
                             f"K={self.K}")

    def _unpacked_indices(self):
        """The indices as stored, unpacked to bytes, every one checked < K."""
        idx = self._qf.view(self._idx_name)
        self._check_top(_kernels.max_u8(buffers.reshape(idx, (-1,))))
        if self._qf.entry(self._idx_name).get("bits"):
            self._qf.release(self._idx_name)     # unpacked into a buffer of its own
        return idx

    def stored_indices(self):
        """The codeword indices as stored in the file (the kernels may hold them re-laid)."""
        return self._qf.tensor(self._idx_name)


def _dequantize(codebook, indices, cin):
    """Dense weights [R, cin, T] from a codebook [M, K, d] and indices [R, T, M] (buffers)."""
    R, T, _ = indices.shape
    out = buffers.empty((R, cin, T))
    _kernels.dequantize(codebook, indices, cin, out)
    return out


def dequantize_conv(codebook, indices, cin_group):
    """Dense weights [Cout, Cg, KH, KW] (numpy) of a quantized convolution:
    w[o, m*d + c, kh, kw] = codebook[m, indices[o, kh, kw, m], c]."""
    import numpy as np
    idx = np.ascontiguousarray(indices, np.uint8)
    cout, kh, kw, M = idx.shape
    w = _dequantize(np.ascontiguousarray(codebook, np.float32), idx.reshape(cout, kh * kw, M),
                    cin_group)
    return buffers.to_numpy(w).reshape(cout, cin_group, kh, kw)


def dequantize_fc(codebook, indices, cin):
    """Dense weights [Cout, Cin] (numpy) of a quantized fully-connected layer."""
    import numpy as np
    idx = np.ascontiguousarray(indices, np.uint8)
    w = _dequantize(np.ascontiguousarray(codebook, np.float32), idx[:, None, :], cin)
    return buffers.to_numpy(w).reshape(idx.shape[0], cin)


def blocked_conv_weights(w, groups):
    """Dense weights [Cout, Cg, KH, KW] (a buffer) -> the dense kernel's blocked layout."""
    cout = w.shape[0]
    w2 = buffers.reshape(w, (cout, -1))
    out = buffers.empty(_kernels.conv_blocked_shape(cout, groups, w2.shape[1]))
    _kernels.block_conv_weights(w2, groups, out)
    return out


def _conv16_k_limit():
    """Largest K whose convolutions fast mode runs on 16-bit register tables:
    the instruction set's default, or with QENGINE_CONV16=1 every K it can
    hold in registers (=0: never)."""
    force = os.environ.get("QENGINE_CONV16", "")
    if force == "1":
        return _kernels.conv16_max_k()
    if force == "0":
        return 0
    return _kernels.conv16_auto_k()


class _Conv(_Weighted):
    def _plan(self, qf, w, where, cout):
        c, h, wd = self.in_shapes[0]
        p = self.params
        self.kh, self.kw = p["kernel"]
        self.group = p["group"]
        cg = c // self.group
        J = self.kh * self.kw
        blocked = 4 * buffers.count(_kernels.conv_blocked_shape(cout, self.group, cg * J))
        if self.mode != "lut":
            self.strategy = "dense"
            self._use(w["weight"], "f32", (cout, cg, self.kh, self.kw))
            self.derived_bytes = blocked
            return
        self._plan_lut(qf, w, where, cg, (cout, self.kh, self.kw))
        self._use_unpacked_indices()
        # A first layer with fewer input channels than the subspace dimension
        # (AlexNet's conv1: 3 of d=8) gains nothing from tables: each table
        # entry would replace under d multiply-adds while the table is K
        # times larger than the input.  Run it densely on the dequantized
        # weights, the same sums in another order.  So is any layer whose
        # tables and lookups would cost more than its dense multiply-adds,
        # each lookup priced by the kernel that would do it (small d with
        # float table rows, 1x1 convolutions with few outputs, for example).
        self.strategy = "lut"
        dense_cost, table, lookups = self.cost()
        register = (self.fast and self.K <= _conv16_k_limit()
                    and J * self.M <= _kernels.C16_MAX_TAPS)
        per_lookup = (LOOKUP_COST_REGISTER if register else
                      LOOKUP_COST_FLOAT_ROWS_SMALL_K if self.K <= 32 else
                      LOOKUP_COST_FLOAT_ROWS)
        # register tables are built in two passes (ranges, then entries)
        table_cost = 2 * table if register else table
        # a first layer with fewer channels than d stays dense: its lookup
        # form measured 0.83x of the dense kernel with register tables on
        # AVX2 (AlexNet K=16 conv1, README), untimed on AVX-512
        if self.dense_small and ((self.M == 1 and cg < self.d)
                                 or table_cost + per_lookup * lookups > dense_cost):
            self.strategy = "dequantized"
            self.derived_bytes = 4 * cout * cg * J + blocked   # dense, then blocked
        elif register:
            # fast: 16-bit tables looked up inside SIMD registers, where this
            # instruction set can hold K entries (see README, "Fast mode")
            self.strategy = "lut16"
            # four taps per register (AVX-512, K <= 16); QENGINE_CONV16_QUAD=0 keeps
            # one tap per register (for A/B runs on a Zen 4, see README)
            self.quad = (_kernels.conv16_quad(self.K)
                         and os.environ.get("QENGINE_CONV16_QUAD", "") != "0")
            self.layout16 = _kernels.conv16_layout_shape(cout, self.group, J * self.M,
                                                         self.quad)
            self.derived_bytes = buffers.count(self.layout16)

    def _load(self, qf, w, cout):
        cg = self.in_shapes[0][0] // self.group
        if self.strategy == "dense":
            self.weight = self._finite(qf.view(w["weight"]), "weight tensor")
            self.weight_blocked = blocked_conv_weights(self.weight, self.group)
            return
        self.indices = self._unpacked_indices()
        taps = self.kh * self.kw
        if self.strategy == "dequantized":
            self.weight_blocked = blocked_conv_weights(
                _dequantize(self.codebook, buffers.reshape(self.indices, (cout, taps, self.M)),
                            cg), self.group)
        elif self.strategy == "lut16":
            self.indices16 = buffers.empty(self.layout16, "B")
            _kernels.conv16_layout(buffers.reshape(self.indices, (cout, taps * self.M)),
                                   self.group, self.indices16, self.quad)
            self.indices = None

    def workspace(self):
        c, h, w = self.in_shapes[0]
        g = self.group
        if self.strategy == "lut16":
            return _kernels.conv16_workspace_floats(c // g, h, w, self.kh, self.kw,
                                                    self.params["stride"], self.params["pad"],
                                                    self.M, self.K, self.d,
                                                    self.params["num_output"] // g)
        if self.strategy == "lut":
            return _kernels.conv_workspace_floats(c // g, h, w, self.kh, self.kw, self.params["stride"],
                                                  self.params["pad"], self.M, self.K,
                                                  self.params["num_output"] // g)
        return _kernels.conv_workspace_floats(c // g, h, w, self.kh, self.kw, self.params["stride"],
                                              self.params["pad"], 0, 0,
                                              self.params["num_output"] // g)

    def cost(self):
        lut = self.strategy in ("lut", "lut16")
        return layer_cost(self.L, self.in_shapes[0], self.out_shape,
                          self.K if lut else None, self.M if lut else None)

    def run(self, xs, ws, nthreads, relu, into=None):
        """into: (buffer, c0) to write channels c0.. of a wider buffer (a
        concatenation's output) instead of a new one."""
        x = xs[0]
        out, c0 = into if into is not None else (self.new_out(x.shape[0]), 0)
        p = self.params
        if self.strategy == "lut16":
            _kernels.conv16(x, self.codebook, self.indices16, self.kh, self.kw, self.bias,
                            p["stride"], p["pad"], relu, out, ws, nthreads, self.quad, c0)
        elif self.strategy == "lut":
            _kernels.conv_lut(x, self.codebook, self.indices, self.bias, p["stride"], p["pad"],
                              self.group, relu, out, ws, nthreads, c0)
        else:
            _kernels.conv_dense(x, self.weight_blocked, self.bias, self.kh, self.kw, p["stride"],
                                p["pad"], relu, out, ws, nthreads, c0)
        return out


def block_fc_indices(asmt, K):
    """Indices [Cout, M] -> the blocked layout the fully-connected kernel reads:
    for each block of fc_block(K) subspaces, that block's [Cout, mb] indices."""
    out = buffers.empty(asmt.shape, "B")
    _kernels.block_fc_indices(asmt, K, out)
    return out


def fc_register_layout(asmt, shape=None, bits=8):
    """Indices [Cout, M] -> the layout of the register-lookup FC kernels (fc_q8,
    fc_f32); `asmt` may also be the packed stream of `bits`-bit values of `shape`.
    Returns the layout and the largest index."""
    cout, M = shape or asmt.shape
    out = buffers.empty((_kernels.fc_q8_layout_size(cout, M),), "B")
    top = _kernels.fc_q8_layout(buffers.reshape(asmt, (-1,)), bits, cout, M, out)
    return out, top


class _FC(_Weighted):
    def _plan(self, qf, w, where, cout):
        self.cin = buffers.count(self.in_shapes[0])
        if self.mode != "lut":
            self._use(w["weight"], "f32", (cout, self.cin))
            return
        self._plan_lut(qf, w, where, self.cin, (cout,))
        dense_cost, table, lookups = self.cost()
        q8 = self.fast and self.K <= 32   # 8-bit lookups are far cheaper than multiply-adds
        if self.dense_small and not q8 and table + lookups > DEQUANTIZE_RATIO * dense_cost:
            # tables would cost clearly more than the dense layer: dequantize (same sums)
            self.strategy = "dequantized"
            self._use_unpacked_indices()
            self.derived_bytes = 4 * cout * self.cin
        elif self.K <= 32:
            # fast: 8-bit tables; exact: float tables small enough to be looked up
            # inside registers.  Unpacked and laid out in one pass.
            if q8:
                self.strategy = "lut8"
            self.derived_bytes = _kernels.fc_q8_layout_size(cout, self.M)
        else:
            self._use_unpacked_indices()
            self.derived_bytes = cout * self.M

    def _load(self, qf, w, cout):
        if self.mode != "lut":
            self.weight = self._finite(qf.view(w["weight"]), "weight tensor")
        elif self.strategy == "dequantized":
            taps = buffers.reshape(self._unpacked_indices(), (cout, 1, self.M))
            self.weight = buffers.reshape(_dequantize(self.codebook, taps, self.cin),
                                          (cout, self.cin))
        elif self.K <= 32:
            stream, bits = qf.packed(self._idx_name)
            self.indices, top = fc_register_layout(stream, (cout, self.M), bits)
            self._check_top(top)
            qf.release(self._idx_name)
        else:
            self.indices = block_fc_indices(self._unpacked_indices(), self.K)

    def workspace(self):
        if self.strategy == "lut8":
            return _kernels.fc_q8_workspace_floats(self.M, self.K, self.params["num_output"])
        if self.strategy == "lut" and self.K <= 32:
            return _kernels.fc_f32_workspace_floats(self.M, self.K, self.params["num_output"])
        return self.M * self.K if self.strategy == "lut" else 0

    def cost(self):
        lut = self.strategy in ("lut", "lut8")
        return layer_cost(self.L, self.in_shapes[0], self.out_shape,
                          self.K if lut else None, self.M if lut else None)

    def run(self, xs, ws, nthreads, relu):
        x = buffers.reshape(xs[0], (xs[0].shape[0], -1))
        out = self.new_out(x.shape[0])
        if self.strategy == "lut8":
            _kernels.fc_q8(x, self.codebook, self.indices, self.params["num_output"], self.bias,
                           relu, out, ws, nthreads)
        elif self.strategy == "lut" and self.K <= 32:
            _kernels.fc_f32(x, self.codebook, self.indices, self.params["num_output"], self.bias,
                            relu, out, ws, nthreads)
        elif self.strategy == "lut":
            _kernels.fc_lut(x, self.codebook, self.indices, self.bias, relu, out, ws, nthreads)
        else:
            _kernels.fc_dense(x, self.weight, self.bias, relu, out, nthreads)
        return out


class _ReLU(_Op):
    def run(self, xs, ws, nthreads, relu):
        x = xs[0]
        out = buffers.empty(x.shape)
        _kernels.relu(buffers.reshape(x, (-1,)), buffers.reshape(out, (-1,)),
                      self.params["negative_slope"])
        return out


class _LRN(_Op):
    def workspace(self):
        _, h, w = self.in_shapes[0]
        return h * w

    def run(self, xs, ws, nthreads, relu):
        x = xs[0]
        out = buffers.empty(x.shape)
        p = self.params
        _kernels.lrn(x, out, p["local_size"], p["alpha"], p["beta"], p["k"], ws, nthreads)
        return out


class _Pool(_Op):
    def run(self, xs, ws, nthreads, relu):
        x = xs[0]
        out = self.new_out(x.shape[0])
        p = self.params
        _, h, w = self.in_shapes[0]
        if p["global"]:
            _kernels.pool(x, out, h, w, 1, 1, 0, 0, p["pool"] == "AVE", nthreads)
        else:
            (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride"], p["pad"]
            _kernels.pool(x, out, kh, kw, sh, sw, ph, pw, p["pool"] == "AVE", nthreads)
        return out


class _Concat(_Op):
    def run(self, xs, ws, nthreads, relu):
        return buffers.concat(xs, 1)


class _Dropout(_Op):
    def run(self, xs, ws, nthreads, relu):
        return xs[0]


class _Softmax(_Op):
    def run(self, xs, ws, nthreads, relu):
        x = xs[0]
        out = buffers.empty(x.shape)
        n, c = x.shape[:2]
        _kernels.softmax(buffers.reshape(x, (n, c, -1)), buffers.reshape(out, (n, c, -1)))
        return out


_OPS = {"Convolution": _Conv, "InnerProduct": _FC, "ReLU": _ReLU, "LRN": _LRN, "Pooling": _Pool,
        "Concat": _Concat, "Dropout": _Dropout, "Softmax": _Softmax}


class Model:
    """A loaded .qcnn model. Create with qengine.load(path)."""

    def __init__(self, path, mode="exact", threads=1, strategy="auto", limits=None):
        if strategy not in ("auto", "lut"):
            raise InputError(f"strategy must be 'auto' or 'lut', got {strategy!r}")
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self._executor = None
        self._pool_lock = threading.Lock()
        self.threads = threads
        self.limits = budget.resolve(limits)
        # the tensors' checksums are verified after the budget check: a model
        # refused for its size is refused without reading gigabytes first
        qf = QcnnFile(path, verify=False)
        self.path = qf.path
        self.file_size = qf.size
        meta = qf.metadata
        graph = meta.get("graph")
        if not isinstance(graph, dict):
            raise FormatError(f"{qf.path}: metadata has no layer graph")
        try:
            validate(graph)
            shapes = infer_shapes(graph)
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{qf.path}: malformed layer graph ({type(e).__name__}: {e})") from None
        except ModelError as e:
            raise ModelError(f"{qf.path}: {e}") from None
        self.graph = graph
        self.metadata = meta
        self.input_name = graph["input"]["name"]
        self.input_shape = tuple(graph["input"]["shape"])
        self.blob_shapes = shapes
        self._ops = []
        try:
            for L in graph["layers"]:
                cls = _OPS[L["type"]]
                ins = [shapes[b] for b in L["bottom"]]
                out = shapes[L["top"][0]]
                self._ops.append(cls(L, ins, out, qf, strategy == "auto", mode == "fast")
                                 if cls.weighted else cls(L, ins, out))
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{qf.path}: malformed layer entry ({type(e).__name__}: {e})") from None
        if not self._ops:
            raise ModelError(f"{qf.path}: the model has no layers")
        self.layer_names = [op.name for op in self._ops]
        names = meta.get("class_names") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise FormatError(f"{qf.path}: class_names must be a list of strings")
        self.class_names = names
        pp = meta.get("preprocess")
        pp = {} if pp is None else pp
        try:
            self._mean_bytes = check_preprocess(pp, self.input_shape, qf, self.limits)
        except ModelError as e:
            raise ModelError(f"{qf.path}: {e}") from None
        self._preprocess_spec = pp
        self._preprocessor = None
        self._pp_lock = threading.Lock()
        self._local = threading.local()
        # last layer that reads each blob, to drop activations early
        self._last_use = {}
        for i, op in enumerate(self._ops):
            for b in op.bottom:
                self._last_use[b] = i
        self._concat_into = self._plan_concat_in_place()
        self._qf = qf
        self._check_budget()
        qf.verify()
        # the budget holds: decode and lay out the weights (a tensor shared by
        # several layers decoded once)
        qf.keep_decoded(True)
        try:
            for op in self._ops:
                if op.weighted:
                    op.materialize()
        except MemoryError:
            raise ModelError(f"{qf.path}: out of memory decoding the weights (the model "
                             f"needs {budget.human(self.resources['tensors'], 'tensors')}; "
                             f"this process may not allocate that much)") from None
        finally:
            qf.keep_decoded(False)

    def _check_budget(self):
        """Refuse, before anything is decoded or run, a model that needs more
        than self.limits (see qengine.budget)."""
        lim, path = self.limits, self.path
        need_in = 4 * buffers.count(self.input_shape)
        fail = [budget.exceeded("input", need_in, lim, f"the input {list(self.input_shape)}")]
        sources, derived = {}, 0
        work, work_fail = 0, None
        ws_floats, ws_layer = 16, None
        for op in self._ops:
            work += sum(op.cost()) if op.weighted else op_work(op)
            if op.weighted:
                sources.update(op.sources)
                derived += op.derived_bytes
            try:
                wsf = op.workspace()
            except ValueError as e:
                raise ModelError(f"{path}: layer {op.name!r}: {e}") from None
            if wsf > ws_floats:
                ws_floats, ws_layer = wsf, op.name
            # named at the first layer where the running total goes over the limit
            work_fail = work_fail or budget.exceeded("work", work, lim,
                                                     f"up to layer {op.name!r}, the model")
        fail.append(work_fail)
        tensors = sum(sources.values()) + derived + self._mean_bytes
        fail.append(budget.exceeded("tensors", tensors, lim, "decoding the weights"))
        fail.append(budget.exceeded("workspace", 4 * ws_floats, lim, f"layer {ws_layer!r}"))
        peak, at = self._peak_activations()
        fail.append(budget.exceeded("activations", peak, lim, f"one image, at layer {at!r},"))
        for msg in fail:
            if msg:
                raise ModelError(f"{path}: {msg}")
        self._ws_floats = ws_floats
        self.resources = {"tensors": tensors, "activations": peak, "workspace": 4 * ws_floats,
                          "input": need_in, "work": work}

    def _peak_activations(self):
        """(bytes, layer): the most activation bytes alive at once while one
        image runs the schedule of _run (input included), and where."""
        live = {self.input_name: 4 * buffers.count(self.input_shape)}
        peak, at = sum(live.values()), self.input_name
        ops = self._ops
        i = 0
        while i < len(ops):
            op, first = ops[i], i
            size = 4 * buffers.count(op.out_shape)
            alias = 0
            if i in self._concat_into:          # writes into its concatenation's buffer
                ci = self._concat_into[i][0]
                key = ("concat", ci)
                if key not in live:
                    live[key] = 4 * buffers.count(ops[ci].out_shape)
                size, alias = 0, 1
            elif ("concat", i) in live:         # that buffer, already written
                size = live.pop(("concat", i))
            now = sum(live.values()) + size
            if now > peak:
                peak, at = now, op.name
            if op.weighted and self._relu_follows(i):
                i += 1
            for b in op.bottom:
                if self._last_use.get(b, -1) <= i:
                    live.pop(b, None)
            for t in ops[first].top:
                live[t] = 0 if alias else size
            i += 1
        return peak, at

    @property
    def threads(self):
        """Threads each call may use (settable: an integer from 1 to MAX_THREADS)."""
        return self._threads

    @threads.setter
    def threads(self, n):
        self._threads = check_threads(n)
        with self._pool_lock:
            ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=False)

    def _relu_follows(self, i):
        """True when op i+1 is a plain ReLU applied in place to op i's output
        (a weighted op then applies it itself)."""
        ops = self._ops
        return (i + 1 < len(ops) and ops[i + 1].type == "ReLU"
                and ops[i + 1].params["negative_slope"] == 0.0
                and ops[i + 1].bottom == ops[i].top and ops[i + 1].top == ops[i].top)

    def _plan_concat_in_place(self):
        """{producer index: (concat index, first channel)} for concatenations
        (along channels) whose inputs are convolutions read by nothing else (an
        in-place ReLU after one is fused into it): those write straight into the
        concatenation's output, which then costs no copy."""
        producer, readers = {}, {}
        for i, op in enumerate(self._ops):
            for b in op.bottom:
                readers.setdefault(b, []).append(i)
            for t in op.top:
                if t not in op.bottom:
                    producer[t] = i
        plan = {}
        for ci, op in enumerate(self._ops):
            if op.type != "Concat" or op.params.get("axis", 1) != 1 \
                    or len(set(op.bottom)) != len(op.bottom):
                continue
            c0, cand = 0, {}
            for b in op.bottom:
                pi = producer.get(b)
                if pi is None or pi >= ci or pi in plan or pi in cand:
                    break
                p = self._ops[pi]
                others = [r for r in readers.get(b, []) if r != ci]
                fused_relu = others == [pi + 1] and self._relu_follows(pi)
                if p.type != "Convolution" or p.top != [b] or (others and not fused_relu):
                    break
                cand[pi] = (ci, c0)
                c0 += p.out_shape[0]
            else:
                plan.update(cand)
        return plan

    # -- running ----------------------------------------------------------
    def _workspace(self):
        ws = getattr(self._local, "ws", None)
        if ws is None:
            ws = self._local.ws = buffers.empty((self._ws_floats,))
        return ws

    def forward(self, x, outputs=None, profile=None):
        """Run the network on a preprocessed float32 batch x [N, C, H, W].

        Returns the last layer's output, or with outputs=[names] a dict of those
        layers' outputs ([N, C, H, W], or [N, C] after fully-connected layers),
        as numpy arrays.  With profile={} the seconds spent in each layer are added to it."""
        import numpy as np
        try:
            x = np.asarray(x)
            if x.dtype.kind not in "fiub":
                raise TypeError(f"values of type {x.dtype}")
        except (TypeError, ValueError) as e:
            raise InputError(f"input must be a numeric array [N, C, H, W] ({e})") from None
        if x.ndim == 3:
            raise InputError(f"input must be a batch [N, C, H, W]; got {list(x.shape)} "
                             f"(add a batch axis: x[None])")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape or x.shape[0] < 1:
            raise InputError(f"input must be [N, {', '.join(map(str, self.input_shape))}] with "
                             f"N >= 1, got {list(x.shape)}")
        x = memoryview(np.ascontiguousarray(x, dtype=np.float32))
        want = None
        if outputs is not None:
            if isinstance(outputs, str):
                outputs = [outputs]
            if not isinstance(outputs, (list, tuple)) or \
                    not all(isinstance(n, str) for n in outputs):
                raise InputError(f"outputs must be a layer name or a list of layer names, "
                                 f"got {outputs!r:.100}")
            want = list(outputs)
            unknown = [n for n in want if n not in self.layer_names]
            if unknown:
                raise InputError(f"unknown layer name(s) {unknown}; layers: {self.layer_names}")
        out = self._forward_checked(x, want, profile)
        if want is not None:
            return {k: buffers.to_numpy(v) for k, v in out.items()}
        return buffers.to_numpy(out)

    def _forward_checked(self, x, want=None, profile=None):
        try:
            return self._forward(x, want, profile)
        except MemoryError:
            raise InputError(f"{self.path}: out of memory running a batch of {x.shape[0]} "
                             f"(about {budget.human(self.resources['activations'], 'activations')} "
                             f"of activations per image); use smaller batches or a lower "
                             f"'activations' limit") from None

    def _forward(self, x, want=None, profile=None):
        """forward() on a checked C-contiguous float32 buffer [N, C, H, W]; returns buffers."""
        n = x.shape[0]
        # a batch runs in slices whose activations fit the budget (same results:
        # every kernel treats the images of a batch independently)
        per = max(1, self.limits["activations"] // max(1, self.resources["activations"]))
        if n > per:
            outs = [self._forward(x[i:i + per], want, profile) for i in range(0, n, per)]
            if want is not None:
                return {k: buffers.concat([o[k] for o in outs], 0) for k in want}
            return buffers.concat(outs, 0)
        nthreads = _threads_now(self.threads)
        if nthreads > 1 and n > 1:
            # A batch: one slice of images per thread, each thread's kernels
            # single-threaded (they release the GIL, so the slices run in parallel).
            parts = min(nthreads, n)
            bounds = [n * i // parts for i in range(parts + 1)]
            profs = [None if profile is None else {} for _ in range(parts)]
            futs = [self._pool().submit(self._run, x[bounds[i]:bounds[i + 1]], want, profs[i], 1)
                    for i in range(parts)]
            outs = [f.result() for f in futs]
            if profile is not None:
                for pr in profs:
                    for k, v in pr.items():
                        profile[k] = profile.get(k, 0.0) + v / parts
            if want is not None:
                return {k: buffers.concat([o[k] for o in outs], 0) for k in want}
            return buffers.concat(outs, 0)
        return self._run(x, want, profile, nthreads)

    def _pool(self):
        with self._pool_lock:
            if self._executor is None:
                from concurrent.futures import ThreadPoolExecutor
                self._executor = ThreadPoolExecutor(max_workers=self.threads,
                                                    thread_name_prefix="qengine")
            return self._executor

    def _run(self, x, want, profile, nthreads):
        ws = self._workspace()
        blobs = {self.input_name: x}
        results = {}
        keep = set(want or [])
        ops = self._ops
        # concatenations written in place by their inputs (not when a caller
        # asks for intermediate outputs: they must stay separate buffers)
        into_plan = self._concat_into if want is None else {}
        cat_bufs = {}
        i = 0
        while i < len(ops):
            op = ops[i]
            fuse = op.weighted and self._relu_follows(i) and op.name not in keep
            t0 = time.perf_counter() if profile is not None else 0.0
            if i in into_plan:
                ci, c0 = into_plan[i]
                if ci not in cat_bufs:
                    cat_bufs[ci] = ops[ci].new_out(x.shape[0])
                out = op.run([blobs[b] for b in op.bottom], ws, nthreads, fuse,
                             into=(cat_bufs[ci], c0))
            elif i in cat_bufs:                   # a concatenation already written
                out = cat_bufs.pop(i)
            else:
                out = op.run([blobs[b] for b in op.bottom], ws, nthreads, fuse)
            if profile is not None:
                profile[op.name] = profile.get(op.name, 0.0) + time.perf_counter() - t0
            if op.name in keep:
                results[op.name] = out
            if fuse:
                i += 1
                if ops[i].name in keep:
                    results[ops[i].name] = out
            for b in op.bottom:
                if self._last_use.get(b, -1) <= i and b in blobs:
                    del blobs[b]
            for t in op.top:
                blobs[t] = out
            i += 1
        if want is not None:
            return {n: results[n] for n in want}
        return out

    @property
    def preprocessor(self):
        """The model's preprocessing, built on first use (it may decode a mean image)."""
        if self._preprocessor is None:
            with self._pp_lock:
                if self._preprocessor is None:
                    pp = self._preprocess_spec
                    mean = None
                    if isinstance(pp.get("mean"), dict) and pp["mean"].get("type") == "image":
                        mean = self._qf.view(str(pp["mean"].get("tensor", "")))
                    try:
                        self._preprocessor = Preprocessor(pp, self.input_shape, mean)
                    except ModelError as e:
                        raise ModelError(f"{self.path}: {e}") from None
        return self._preprocessor

    def preprocess(self, images):
        """Images (paths, PIL images, uint8 arrays) -> float32 batch [N, C, H, W] (numpy)."""
        return buffers.to_numpy(self._preprocess(images))

    def _preprocess(self, images):
        if isinstance(images, (str, os.PathLike)) or not isinstance(images, (list, tuple)):
            images = [images]
        return self.stack([self.preprocessor(im) for im in images])

    def stack(self, inputs):
        """Preprocessed inputs [C, H, W] (buffers from Model.preprocessor) -> a batch buffer."""
        return buffers.concat([buffers.reshape(a, (1,) + tuple(a.shape)) for a in inputs], 0)

    def predict(self, images, top=5):
        """Classify images; returns, per image, the top classes as dicts
        {"index", "label", "prob"}, most probable first."""
        _check_top(top)
        if isinstance(images, (list, tuple)) and not images:
            raise InputError("predict() needs at least one image, got an empty list")
        return self.classify(self._preprocess(images), top)

    def classify(self, batch, top=5):
        """The top classes of a preprocessed batch [N, C, H, W] (see predict): a numpy
        array, or a batch buffer from Model.stack (then numpy is not needed)."""
        _check_top(top)
        if isinstance(batch, memoryview) and buffers.format_of(batch) == "f" \
                and batch.c_contiguous and tuple(batch.shape[1:]) == self.input_shape:
            out = self._forward_checked(batch)
        else:
            out = memoryview(self.forward(batch))
        softmax = self._ops[-1].type == "Softmax"
        res = []
        for row in buffers.rows(out):
            p = row.cast("f").tolist()
            if not all(map(math.isfinite, p)):
                raise ModelError(f"{self.path}: the network's output is not finite (NaN or "
                                 f"infinity): the model's weights overflow float32 on this input")
            if not softmax:
                hi = max(p)
                e = [math.exp(v - hi) for v in p]
                total = sum(e)
                p = [v / total for v in e]
            order = sorted(range(len(p)), key=p.__getitem__, reverse=True)
            k = min(top, len(p))
            res.append([{"index": i, "label": self.label(i), "prob": p[i]} for i in order[:k]])
        return res

    def label(self, i):
        return self.class_names[i] if 0 <= i < len(self.class_names) else str(i)

    # -- introspection ----------------------------------------------------
    def layer_costs(self, as_quantized=False):
        """[(name, type, dense MACs, table MACs, lookups)] per layer, per image, as
        each layer runs (its strategy), or with as_quantized=True as the model is
        quantized (tables for every quantized layer: the theoretical speed-up)."""
        return [(op.name, op.type) + (op.model_cost() if as_quantized else op.cost())
                for op in self._ops]

    def layer_strategies(self):
        """{layer: "lut" | "dequantized" | "dense"} for the weighted layers."""
        return {op.name: op.strategy for op in self._ops if op.weighted}

    def __repr__(self):
        return (f"<qengine.Model {os.path.basename(self.path)} input={self.input_shape} "
                f"layers={len(self._ops)} mode={self.mode}>")


def load(path, mode="exact", threads=1, strategy="auto", limits=None):
    """Load a .qcnn model once; call forward()/predict() on it many times.

    mode      "exact": float lookup tables everywhere.
              "fast": fully-connected layers with K <= 32 codewords use 8-bit tables
              looked up inside SIMD registers (one scale per layer and image, one
              offset per table row); convolutions use 16-bit tables looked up inside
              registers where the instruction set makes them pay (AVX-512: K <= 128;
              QENGINE_CONV16=1 also on AVX2 for K <= 32), else float tables (README).
    threads   threads each call may use (the kernels split output positions)
    strategy  "auto" runs a first convolution whose input has fewer channels than
              the subspace dimension densely on its dequantized weights (faster,
              same sums); "lut" forces lookup tables for every quantized layer.
    limits    a dict raising (or lowering) some of the resource limits checked at
              load: "tensors", "activations", "workspace", "input", "work"
              (qengine.budget.DEFAULT_LIMITS; see qengine.budget)."""
    return Model(path, mode=mode, threads=threads, strategy=strategy, limits=limits)
