"""ONNX models (as PyTorch, TensorFlow or others export them) -> qengine's
graph and dense weights.

Parsing, the checker and the ops' semantics are the `onnx` package's (the
ecosystem's own library, an optional extra: pip install "qengine[onnx]").
Default-domain opsets 9 to 21.

What becomes what:
  * the shape subgraphs exporters emit (Shape, Gather, ConstantOfShape, Concat,
    Cast, Reshape, Transpose, Unsqueeze, Squeeze, Slice, arithmetic, all on
    constants) are folded into constants before anything else; Shape of a
    feature map reads its per-image shape with a batch of 1;
  * Conv (groups, depthwise; asymmetric pads become a Pad layer), Gemm, MatMul
    (+ Add: the bias), BatchNormalization (folded into the convolution before
    it, else a per-channel Scale), Relu, LeakyRelu, Clip, Sigmoid, Mul / Div /
    Add / Sub by a constant (Scale), Add / Sub of two feature maps (Eltwise),
    MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, Concat, Flatten,
    Reshape to [N, -1], Slice (StridedSlice), Pad (constant), Softmax, Dropout
    and Identity (dropped);
  * an input in NHWC followed by Transpose(perm=[0, 3, 1, 2]): the network's
    input becomes the transposed [C, H, W] (images are fed in NCHW).

Anything else fails before any work with one error listing every unsupported
op type with its node names.
"""
import os

import numpy as np

from ..buffers import count
from ..errors import FormatError, InputError, ModelError
from ..files import check_regular
from ..layers.weighted import scale_outputs

OPSETS = (9, 21)
MAX_BYTES = 2 << 30              # protobuf's own limit for one file
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_CONST = 1 << 24              # values of one folded constant (shape computations are tiny)

# ops folded when all their inputs are constants (the shape subgraphs)
FOLDABLE = {"Constant", "Shape", "Gather", "ConstantOfShape", "Concat", "Cast", "Reshape",
            "Transpose", "Unsqueeze", "Squeeze", "Slice", "Identity", "Add", "Sub", "Mul",
            "Div", "Range", "Size", "Flatten", "Floor", "Ceil", "Neg", "Sqrt", "Equal",
            "Where", "Expand", "ReduceProd", "Min", "Max"}
# ops translated into layers when they act on feature maps
LAYER_OPS = {"Conv", "Gemm", "MatMul", "BatchNormalization", "Relu", "LeakyRelu", "Clip",
             "Sigmoid", "Mul", "Div", "Add", "Sub", "MaxPool", "AveragePool",
             "GlobalAveragePool", "GlobalMaxPool", "Concat", "Flatten", "Reshape", "Slice",
             "Pad", "Softmax", "Dropout", "Identity", "Transpose", "Squeeze", "Unsqueeze"}


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise InputError("reading ONNX models needs the onnx package: "
                         "pip install 'qengine[onnx]' (or pip install onnx)") from None
    return onnx, numpy_helper


class _Unsupported(Exception):
    pass



class _Blob:
    """A feature map: its name in qengine's graph and its per-image shape
    ((C, H, W), or (C,) once flattened)."""

    def __init__(self, name, shape):
        self.name, self.shape = name, tuple(int(v) for v in shape)


class _Translator:
    def __init__(self, model, path, numpy_helper):
        self.path = path
        self.nh = numpy_helper
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          None)
        self.g = model.graph
        self.const = {}           # tensor name -> numpy array
        self.blobs = {}           # tensor name -> _Blob
        self.layers = []
        self.weights = {}
        self.names = set()
        self.readers = {}
        for node in self.g.node:
            for i in node.input:
                if i:
                    self.readers[i] = self.readers.get(i, 0) + 1
        for o in self.g.output:
            self.readers[o.name] = self.readers.get(o.name, 0) + 1

    # -- helpers ------------------------------------------------------------
    def fail(self, node, msg):
        raise ModelError(f"{self.path}: node {node.name or node.op_type!r} ({node.op_type}): {msg}")

    def attrs(self, node):
        import onnx
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def layer_name(self, node, suffix=""):
        base = (node.name or f"{node.op_type}_{len(self.layers)}") + suffix
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def add(self, node, type_, bottoms, params, out_name, weights=None, suffix=""):
        """Append a layer reading blobs `bottoms`, producing ONNX tensor `out_name`."""
        from ..layers import record
        name = self.layer_name(node, suffix)
        top = out_name            # ONNX names every tensor once
        L = {"name": name, "type": type_, "bottom": [b.name for b in bottoms], "top": [top],
             "params": params}
        try:
            shape = record(type_).shape(params, [b.shape for b in bottoms],
                                        f"node {node.name!r} ({node.op_type})")
        except ModelError as e:
            raise ModelError(f"{self.path}: {e}") from None
        self.layers.append(L)
        if weights is not None:
            self.weights[name] = weights
        return _Blob(top, shape)

    def cval(self, node, i, default=None):
        """The constant at input i of node (None when the input is absent)."""
        if i >= len(node.input) or not node.input[i]:
            return default
        name = node.input[i]
        if name not in self.const:
            self.fail(node, f"input {name!r} must be a constant (an initializer or folded "
                            f"shape computation), is a feature map")
        return self.const[name]

    def blob(self, node, i=0):
        name = node.input[i]
        if name not in self.blobs:
            self.fail(node, f"input {name!r} must be a feature map")
        return self.blobs[name]

    # -- folding ------------------------------------------------------------
    def fold(self, node):
        """Evaluate node on constants; True when done."""
        op, a = node.op_type, self.attrs(node)
        ins = [self.const.get(i) if i else None for i in node.input]
        if op == "Constant":
            if "value" in a:
                v = self.nh.to_array(a["value"])
            elif "value_float" in a:
                v = np.array(a["value_float"], np.float32)
            elif "value_floats" in a:
                v = np.array(a["value_floats"], np.float32)
            elif "value_int" in a:
                v = np.array(a["value_int"], np.int64)
            elif "value_ints" in a:
                v = np.array(a["value_ints"], np.int64)
            else:
                raise _Unsupported("Constant without a dense value")
            self.const[node.output[0]] = v
            return True
        if op == "Shape" and node.input[0] in self.blobs:
            shape = np.array((1,) + self.blobs[node.input[0]].shape, np.int64)
            start, end = a.get("start", 0), a.get("end", None)
            self.const[node.output[0]] = shape[start:end]
            return True
        if op == "Size" and node.input[0] in self.blobs:
            self.const[node.output[0]] = np.array(int(np.prod(self.blobs[node.input[0]].shape)),
                                                  np.int64)
            return True
        if any(node.input[k] and ins[k] is None for k in range(len(ins))):
            return False
        x = ins[0] if ins else None
        if op == "Identity":
            v = x
        elif op == "Shape":
            v = np.array(np.shape(x), np.int64)[a.get("start", 0):a.get("end", None)]
        elif op == "Size":
            v = np.array(np.size(x), np.int64)
        elif op == "Gather":
            v = np.take(x, ins[1], axis=a.get("axis", 0))
        elif op == "ConstantOfShape":
            fill = self.nh.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
            shape = [int(s) for s in np.asarray(x).reshape(-1)]
            if any(s < 0 for s in shape) or count(shape) > MAX_CONST:
                raise _Unsupported(f"ConstantOfShape of shape {shape}")
            v = np.full(shape, fill.reshape(-1)[0], fill.dtype)
        elif op == "Concat":
            v = np.concatenate([np.atleast_1d(t) for t in ins], axis=a.get("axis", 0))
        elif op == "Cast":
            import onnx
            v = x.astype(onnx.helper.tensor_dtype_to_np_dtype(a["to"]))
        elif op == "Reshape":
            shape = [int(s) for s in ins[1]]
            shape = [x.shape[k] if s == 0 and not a.get("allowzero", 0) else s
                     for k, s in enumerate(shape)]
            v = x.reshape(shape)
        elif op == "Transpose":
            v = np.transpose(x, a.get("perm"))
        elif op == "Unsqueeze":
            axes = a.get("axes") if "axes" in a else [int(t) for t in ins[1]]
            v = x
            nd = x.ndim + len(axes)
            for ax in sorted(ax % nd for ax in axes):
                v = np.expand_dims(v, ax)
        elif op == "Squeeze":
            axes = a.get("axes") if "axes" in a else (
                [int(t) for t in ins[1]] if len(ins) > 1 and ins[1] is not None else None)
            v = np.squeeze(x, axis=tuple(axes) if axes is not None else None)
        elif op == "Slice":
            starts, ends, axes, steps = self._slice_args(node, a, ins, x.ndim)
            sl = [slice(None)] * x.ndim
            for s, e, ax, st in zip(starts, ends, axes, steps):
                sl[ax] = slice(int(s), int(e), int(st))
            v = x[tuple(sl)]
        elif op in ("Add", "Sub", "Mul", "Div", "Min", "Max", "Equal"):
            f = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Min": np.minimum,
                 "Max": np.maximum, "Equal": np.equal}.get(op)
            if op == "Div":
                v = (ins[0] // ins[1] if np.issubdtype(ins[0].dtype, np.integer)
                     else ins[0] / ins[1])
            else:
                v = f(ins[0], ins[1])
            if op != "Equal":
                v = v.astype(np.result_type(ins[0], ins[1]))
        elif op == "Where":
            v = np.where(ins[0], ins[1], ins[2])
        elif op == "Expand":
            shape = np.broadcast_shapes(x.shape, tuple(int(s) for s in ins[1]))
            if count(shape) > MAX_CONST:
                raise _Unsupported(f"Expand to shape {list(shape)}")
            v = np.broadcast_to(x, shape).copy()
        elif op == "Range":
            start, limit, delta = (float(np.asarray(t).reshape(-1)[0]) for t in ins[:3])
            if delta == 0 or max(0.0, np.ceil((limit - start) / delta)) > MAX_CONST:
                raise _Unsupported(f"Range({start}, {limit}, {delta})")
            v = np.arange(ins[0], ins[1], ins[2])
        elif op == "Flatten":
            ax = a.get("axis", 1)
            v = x.reshape(int(np.prod(x.shape[:ax])), -1)
        elif op in ("Floor", "Ceil", "Neg", "Sqrt"):
            v = {"Floor": np.floor, "Ceil": np.ceil, "Neg": np.negative, "Sqrt": np.sqrt}[op](x)
        elif op == "ReduceProd":
            v = np.prod(x, keepdims=bool(a.get("keepdims", 1)))
        else:
            return False
        v = np.asarray(v)
        if v.size > MAX_CONST:
            raise _Unsupported(f"a constant of {v.size} values")
        self.const[node.output[0]] = v
        return True

    def _slice_args(self, node, a, ins, ndim):
        if self.opset is not None and self.opset < 10:
            starts, ends = a["starts"], a["ends"]
            axes = a.get("axes", list(range(len(starts))))
            steps = [1] * len(starts)
        else:
            starts, ends = [int(v) for v in ins[1]], [int(v) for v in ins[2]]
            axes = ([int(v) for v in ins[3]] if len(ins) > 3 and ins[3] is not None
                    else list(range(len(starts))))
            steps = ([int(v) for v in ins[4]] if len(ins) > 4 and ins[4] is not None
                     else [1] * len(starts))
        return starts, ends, [ax % ndim for ax in axes], steps

    # -- the translation ----------------------------------------------------
    def run(self, input_shape=None):
        inits = {t.name for t in self.g.initializer}
        for t in self.g.initializer:
            self.const[t.name] = self.nh.to_array(t)
        inputs = [i for i in self.g.input if i.name not in inits]
        if len(inputs) != 1:
            raise ModelError(f"{self.path}: the network must have one input, has "
                             f"{len(inputs)}: {[i.name for i in inputs]}")
        if len(self.g.output) != 1:
            raise ModelError(f"{self.path}: the network must have one output, has "
                             f"{len(self.g.output)}: {[o.name for o in self.g.output]}")
        inp = inputs[0]
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in inp.type.tensor_type.shape.dim]
        if input_shape is not None:
            if len(dims) != 4:
                raise ModelError(f"{self.path}: input {inp.name!r} has {len(dims)} dimensions; "
                                 f"qengine runs image networks [N, C, H, W]")
            dims = [dims[0]] + list(input_shape)
        if len(dims) != 4 or any(d is None or d < 1 for d in dims[1:]):
            raise ModelError(f"{self.path}: input {inp.name!r} must be [N, C, H, W] with fixed "
                             f"C, H and W, is {['?' if d is None else d for d in dims]} "
                             f"(give the size with --input-shape C,H,W)")
        self.input_name = inp.name
        self.input_dims = dims[1:]
        self.blobs[inp.name] = _Blob(inp.name, dims[1:])
        self.input_transposed = False
        # every op type this translation cannot run, listed at once, first
        unsupported = {}
        for node in self.g.node:
            if node.domain not in ("", "ai.onnx") or (
                    node.op_type not in FOLDABLE and node.op_type not in LAYER_OPS):
                unsupported.setdefault(node.op_type if not node.domain
                                       else f"{node.domain}.{node.op_type}", []).append(
                    node.name or "(unnamed)")
        if unsupported:
            raise ModelError(f"{self.path}: unsupported ONNX ops: " + "; ".join(
                f"{op} ({', '.join(ns[:5])}{', ...' if len(ns) > 5 else ''})"
                for op, ns in sorted(unsupported.items())))
        for node in self.g.node:
            try:
                if self.fold(node):
                    continue
            except _Unsupported as e:
                self.fail(node, str(e))
            except ModelError:
                raise
            except Exception as e:      # numpy on malformed constants
                self.fail(node, f"cannot evaluate on its constant inputs "
                                f"({type(e).__name__}: {str(e)[:200]})")
            try:
                self.translate(node)
            except (TypeError, ValueError, KeyError, IndexError, AttributeError,
                    OverflowError) as e:     # attributes of unexpected kinds or sizes
                self.fail(node, f"malformed node ({type(e).__name__}: {str(e)[:200]})")
        out = self.g.output[0].name
        if out not in self.blobs:
            raise ModelError(f"{self.path}: the output {out!r} is not computed from the input "
                             f"by the supported layers")
        if not self.layers:
            raise ModelError(f"{self.path}: the network has no layers")
        last = self.blobs[out].name
        if self.layers[-1]["top"] != [last]:
            raise ModelError(f"{self.path}: the output {out!r} is not produced by the last "
                             f"layer")
        graph = {"input": {"name": self.input_name, "shape": list(self.input_dims)},
                 "layers": self.layers}
        return graph, self.weights

    def translate(self, node):
        op, a = node.op_type, self.attrs(node)
        out = node.output[0] if node.output else None
        h = getattr(self, "op_" + op, None)
        if h is None:
            self.fail(node, "acts on feature maps, which qengine does not support for this op")
        res = h(node, a)
        if res is not None:
            self.blobs[out] = res

    def _alias(self, node):
        return self.blob(node)

    op_Identity = op_Dropout = lambda self, node, a: self._alias(node)

    def op_Transpose(self, node, a):
        x = self.blob(node)
        if node.input[0] == self.input_name and list(a.get("perm", [])) == [0, 3, 1, 2] \
                and not self.layers and not self.input_transposed:
            # an NHWC input: the network's input becomes [C, H, W]
            h, w, c = self.input_dims
            self.input_dims = [c, h, w]
            self.input_transposed = True
            x.shape = (c, h, w)
            return x
        self.fail(node, f"only a Transpose(perm=[0, 3, 1, 2]) right after an NHWC input is "
                        f"supported on feature maps (perm {a.get('perm')})")

    def _conv_pads(self, node, a, x, kh, kw, sh, sw):
        pads = list(a.get("pads", [0, 0, 0, 0]))
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = []
            for size, k, s in ((x.shape[1], kh, sh), (x.shape[2], kw, sw)):
                total = max((-(-size // s) - 1) * s + k - size, 0)
                lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
                pads.append((lo, total - lo))
            pads = [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]
        elif auto == "VALID":
            pads = [0, 0, 0, 0]
        if len(pads) != 4 or any(p < 0 for p in pads):
            self.fail(node, f"pads {pads} unsupported")
        return pads

    def _explicit_pad(self, node, x, pads, value=0.0):
        t, left, b, r = pads
        return self.add(node, "Pad", [x], {"pads": [0, 0, t, b, left, r], "value": value},
                        node.output[0] + ":pad", suffix="_pad")

    def op_Conv(self, node, a):
        x = self.blob(node)
        w = self.cval(node, 1)
        b = self.cval(node, 2)
        if w.ndim != 4 or len(x.shape) != 3:
            self.fail(node, f"only 2-D convolutions of [C, H, W] maps (weight {list(w.shape)})")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            self.fail(node, f"dilations {a['dilations']} unsupported")
        cout, cg, kh, kw = w.shape
        sh, sw = a.get("strides", [1, 1])
        if sh != sw:
            self.fail(node, f"strides {[sh, sw]} differ (qengine runs one stride for both axes)")
        group = a.get("group", 1)
        pads = self._conv_pads(node, a, x, kh, kw, sh, sw)
        if len(set(pads)) > 1:          # asymmetric or unequal: an explicit Pad first
            x = self._explicit_pad(node, x, pads)
            pad = 0
        else:
            pad = pads[0]
        if x.shape[0] != cg * group:
            self.fail(node, f"weight {list(w.shape)} with group {group} does not fit "
                            f"{x.shape[0]} input channels")
        bias = np.zeros(cout, np.float32) if b is None else b.astype(np.float32).reshape(-1)
        return self.add(node, "Convolution", [x],
                        {"num_output": int(cout), "kernel": [int(kh), int(kw)],
                         "stride": int(sh), "pad": int(pad), "group": int(group),
                         "bias_term": True}, node.output[0],
                        weights=(np.ascontiguousarray(w, np.float32), bias))

    def _producer_layer(self, blob_name):
        """The last layer when it produced blob_name and nothing else reads it."""
        if self.layers and self.layers[-1]["top"] == [blob_name]:
            return self.layers[-1]
        return None

    def op_BatchNormalization(self, node, a):
        x = self.blob(node)
        scale, bias, mean, var = (self.cval(node, i).astype(np.float64) for i in range(1, 5))
        eps = a.get("epsilon", 1e-5)
        if len(node.output) > 1 and any(node.output[1:]):
            self.fail(node, "training-mode outputs (running mean and variance) unsupported")
        s = scale / np.sqrt(var + eps)
        t = bias - mean * s
        return self._affine(node, x, s, t)

    def _affine(self, node, x, s, t):
        """y = s[c] * x + t[c]: folded into a convolution or fully-connected
        layer just before that nothing else reads, else a Scale layer."""
        C = x.shape[0]
        s = np.broadcast_to(np.asarray(s, np.float64).reshape(-1), (C,)) if np.size(s) in (1, C) \
            else None
        t = np.broadcast_to(np.asarray(t, np.float64).reshape(-1), (C,)) if np.size(t) in (1, C) \
            else None
        if s is None or t is None:
            self.fail(node, f"constant of shape other than one value or one per channel "
                            f"({C}) unsupported")
        prod = self._producer_layer(x.name)
        if prod is not None and prod["type"] in ("Convolution", "InnerProduct", "Scale") \
                and self.readers.get(node.input[0], 0) == 1:
            # folded into the layer before: w and b (or a Scale's own) scaled per channel
            self.weights[prod["name"]] = scale_outputs(*self.weights[prod["name"]], s, t)
            return x
        return self.add(node, "Scale", [x], {}, node.output[0],
                        weights=(s.astype(np.float32).copy(), t.astype(np.float32).copy()))

    def op_Relu(self, node, a):
        return self.add(node, "ReLU", [self.blob(node)], {"negative_slope": 0.0}, node.output[0])

    def op_LeakyRelu(self, node, a):
        return self.add(node, "ReLU", [self.blob(node)],
                        {"negative_slope": float(a.get("alpha", 0.01))}, node.output[0])

    def op_Sigmoid(self, node, a):
        return self.add(node, "Sigmoid", [self.blob(node)], {}, node.output[0])

    def op_Clip(self, node, a):
        if self.opset is not None and self.opset < 11:
            lo, hi = a.get("min", -FLOAT32_MAX), a.get("max", FLOAT32_MAX)
        else:
            lo = self.cval(node, 1)
            hi = self.cval(node, 2)
            lo = -FLOAT32_MAX if lo is None else float(lo)
            hi = FLOAT32_MAX if hi is None else float(hi)
        lo, hi = max(float(lo), -FLOAT32_MAX), min(float(hi), FLOAT32_MAX)
        if lo == 0.0 and hi == FLOAT32_MAX:
            return self.op_Relu(node, a)
        return self.add(node, "Clip", [self.blob(node)], {"min": lo, "max": hi}, node.output[0])

    def _binary(self, node):
        """(feature map, other): the other a constant or a second feature map."""
        i0, i1 = node.input[0], node.input[1]
        if i0 in self.blobs and i1 in self.blobs:
            return self.blobs[i0], self.blobs[i1], 0
        if i0 in self.blobs and i1 in self.const:
            return self.blobs[i0], self.const[i1], 0
        if i1 in self.blobs and i0 in self.const:
            return self.blobs[i1], self.const[i0], 1
        self.fail(node, "inputs must be feature maps or constants")

    def _channel_const(self, node, x, c):
        """A constant that broadcasts per channel onto x: its [C] values, or None."""
        c = np.asarray(c, np.float64)
        C = x.shape[0]
        nd = len(x.shape) + 1           # with the batch axis
        if c.ndim > nd:
            return None
        full = (1,) * (nd - c.ndim) + c.shape
        if full[0] != 1 or any(d != 1 for d in full[2:]) or full[1] not in (1, C):
            return None
        return np.broadcast_to(c.reshape(-1), (C,))

    def _arith(self, node, a):
        x, other, pos = self._binary(node)
        op = node.op_type
        if isinstance(other, _Blob):
            if op not in ("Add", "Sub"):
                self.fail(node, "a product or quotient of two feature maps is unsupported")
            if other.shape != x.shape:
                self.fail(node, f"feature maps {list(x.shape)} and {list(other.shape)} differ "
                                f"(broadcasting between feature maps is unsupported)")
            params = {"operation": "SUM"}
            if op == "Sub":
                params["coeff"] = [1.0, -1.0]
            return self.add(node, "Eltwise", [x, other], params, node.output[0])
        c = self._channel_const(node, x, other)
        if c is None:
            self.fail(node, f"constant of shape {list(np.shape(other))} does not broadcast per "
                            f"channel onto {list(x.shape)}")
        C = x.shape[0]
        if op == "Add":
            return self._affine(node, x, np.ones(C), c)
        if op == "Sub":
            return self._affine(node, x, np.ones(C), -c) if pos == 0 else \
                self._affine(node, x, -np.ones(C), c)
        if op == "Mul":
            return self._affine(node, x, c, np.zeros(C))
        if pos == 1:
            self.fail(node, "a constant divided by a feature map is unsupported")
        return self._affine(node, x, 1.0 / c, np.zeros(C))

    op_Add = op_Sub = op_Mul = op_Div = _arith

    def _pool(self, node, a, pool):
        x = self.blob(node)
        if len(x.shape) != 3:
            self.fail(node, "pooling needs a [C, H, W] map")
        if len(node.output) > 1 and node.output[1]:
            self.fail(node, "the indices output of MaxPool is unsupported")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            self.fail(node, f"dilations {a['dilations']} unsupported")
        k = list(a["kernel_shape"])
        if len(k) != 2:
            self.fail(node, f"only 2-D pooling (kernel {k})")
        s = list(a.get("strides", [1, 1]))
        pads = self._conv_pads(node, a, x, k[0], k[1], s[0], s[1])
        exclude = pool == "AVE" and not a.get("count_include_pad", 0)
        if pads[0] != pads[2] or pads[1] != pads[3]:
            if pool == "AVE" and exclude:
                self.fail(node, f"asymmetric pads {pads} with padding excluded from averages "
                                f"unsupported")
            x = self._explicit_pad(node, x, pads, -FLOAT32_MAX if pool == "MAX" else 0.0)
            pads = [0, 0, 0, 0]
        ph, pw = pads[0], pads[1]
        if ph >= k[0] or pw >= k[1]:
            self.fail(node, f"pads {pads} not smaller than the kernel {k}")
        return self.add(node, "Pooling", [x],
                        {"pool": pool, "kernel": k, "stride": s, "pad": [ph, pw],
                         "global": False, "ceil": bool(a.get("ceil_mode", 0)),
                         "exclude_pad": bool(exclude)}, node.output[0])

    def op_MaxPool(self, node, a):
        return self._pool(node, a, "MAX")

    def op_AveragePool(self, node, a):
        return self._pool(node, a, "AVE")

    def _global(self, node, pool):
        x = self.blob(node)
        if len(x.shape) != 3:
            self.fail(node, "global pooling needs a [C, H, W] map")
        return self.add(node, "Pooling", [x], {"pool": pool, "kernel": [0, 0], "stride": [1, 1],
                                               "pad": [0, 0], "global": True}, node.output[0])

    def op_GlobalAveragePool(self, node, a):
        return self._global(node, "AVE")

    def op_GlobalMaxPool(self, node, a):
        return self._global(node, "MAX")

    def op_Concat(self, node, a):
        xs = [self.blob(node, i) for i in range(len(node.input))]
        nd = len(xs[0].shape) + 1
        if a.get("axis", 1) % nd != 1:
            self.fail(node, f"only concatenation along channels (axis {a.get('axis')})")
        return self.add(node, "Concat", xs, {"axis": 1}, node.output[0])

    def _flatten(self, node):
        x = self.blob(node)
        if len(x.shape) == 1:
            return x
        return self.add(node, "Flatten", [x], {}, node.output[0])

    def op_Flatten(self, node, a):
        if a.get("axis", 1) != 1:
            self.fail(node, f"only Flatten(axis=1) (axis {a.get('axis')})")
        return self._flatten(node)

    def op_Reshape(self, node, a):
        x = self.blob(node)
        shape = [int(v) for v in self.cval(node, 1).reshape(-1)]
        n = int(np.prod(x.shape))
        per_image = shape[1:]
        if shape and shape[0] in (0, 1, -1) and (per_image in ([-1], [n])):
            return self._flatten(node)
        keep = [x.shape[k] if s == 0 else s for k, s in enumerate(per_image)]
        if shape and shape[0] in (0, 1, -1) and keep == list(x.shape):
            return x
        self.fail(node, f"only reshapes to [N, -1] are supported (to {shape} from "
                        f"{['N'] + list(x.shape)})")

    def _squeeze(self, node, a, op):
        x = self.blob(node)
        axes = a.get("axes") if "axes" in a else (
            [int(v) for v in self.cval(node, 1).reshape(-1)] if len(node.input) > 1 else None)
        # [N, C, 1, 1] <-> [N, C]: a flatten of a 1x1 map
        if op == "Squeeze" and len(x.shape) == 3 and x.shape[1:] == (1, 1) and \
                (axes is None or sorted(v % 4 for v in axes) == [2, 3]):
            return self._flatten(node)
        self.fail(node, f"{op} of a feature map {['N'] + list(x.shape)} on axes {axes} "
                        f"unsupported")

    def op_Squeeze(self, node, a):
        return self._squeeze(node, a, "Squeeze")

    def op_Unsqueeze(self, node, a):
        return self._squeeze(node, a, "Unsqueeze")

    def _fc(self, node, x, w, b):
        if len(x.shape) != 1:
            x = self.add(node, "Flatten", [x], {}, node.output[0] + ":flat", suffix="_flatten")
        if w.shape[1] != x.shape[0]:
            self.fail(node, f"weight {list(w.shape)} does not fit {x.shape[0]} inputs")
        return self.add(node, "InnerProduct", [x], {"num_output": int(w.shape[0]),
                                                    "bias_term": True}, node.output[0],
                        weights=(np.ascontiguousarray(w, np.float32),
                                 np.ascontiguousarray(b, np.float32)))

    def op_Gemm(self, node, a):
        x = self.blob(node)
        B = self.cval(node, 1).astype(np.float64)
        C = self.cval(node, 2)
        if a.get("transA", 0):
            self.fail(node, "transA=1 unsupported")
        if B.ndim != 2:
            self.fail(node, f"weight must be 2-D, is {list(B.shape)}")
        w = B if a.get("transB", 0) else B.T            # [Cout, Cin]
        w = w * a.get("alpha", 1.0)
        cout = w.shape[0]
        if C is None:
            b = np.zeros(cout)
        else:
            C = np.asarray(C, np.float64)
            if C.size not in (1, cout) or (C.ndim == 2 and C.shape[0] != 1):
                self.fail(node, f"bias of shape {list(C.shape)} unsupported")
            b = np.broadcast_to(C.reshape(-1), (cout,)) * a.get("beta", 1.0)
        return self._fc(node, x, w, b)

    def op_MatMul(self, node, a):
        x = self.blob(node)
        B = self.cval(node, 1)
        if B.ndim != 2:
            self.fail(node, f"weight must be 2-D, is {list(B.shape)}")
        if len(x.shape) != 1:
            self.fail(node, f"MatMul of a {['N'] + list(x.shape)} map (flatten it first)")
        y = self._fc(node, x, B.T.astype(np.float64), np.zeros(B.shape[1]))
        return y

    def op_Slice(self, node, a):
        x = self.blob(node)
        if len(x.shape) != 3:
            self.fail(node, "slicing needs a [C, H, W] map")
        ins = [self.const.get(i) if i else None for i in node.input]
        starts, ends, axes, steps = self._slice_args(node, a, ins, 4)
        start, stop, step = [0, 0, 0], list(x.shape), [1, 1, 1]
        for s, e, ax, st in zip(starts, ends, axes, steps):
            if ax == 0:
                if (s, st) != (0, 1) or e < 1 << 31:
                    self.fail(node, "slicing the batch axis is unsupported")
                continue
            if st < 1:
                self.fail(node, f"step {st} unsupported (only positive steps)")
            n = x.shape[ax - 1]
            s = max(0, min(n, s + n if s < 0 else s))
            e = max(0, min(n, e + n if e < 0 else e))
            if e <= s:
                self.fail(node, f"empty slice [{s}:{e}] of axis {ax}")
            start[ax - 1], stop[ax - 1], step[ax - 1] = s, e, st
        if (start, stop, step) == ([0, 0, 0], list(x.shape), [1, 1, 1]):
            return x
        prod = self._producer_layer(x.name)
        if prod is not None and prod["type"] == "StridedSlice" \
                and self.readers.get(node.input[0], 0) == 1:
            # a slice of a slice (exporters emit one per axis): one layer
            p = prod["params"]
            new = {"start": [], "stop": [], "step": []}
            for k in range(3):
                s0, t0 = p["start"][k], p["step"][k]
                new["start"].append(s0 + start[k] * t0)
                new["step"].append(t0 * step[k])
                new["stop"].append(min(p["stop"][k], s0 + (stop[k] - 1) * t0 + 1))
            self.layers.pop()
            self.names.discard(prod["name"])
            src = next(b for b in self.blobs.values() if b.name == prod["bottom"][0])
            return self.add(node, "StridedSlice", [src], new, node.output[0])
        return self.add(node, "StridedSlice", [x], {"start": start, "stop": stop, "step": step},
                        node.output[0])

    def op_Pad(self, node, a):
        x = self.blob(node)
        mode = a.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant":
            self.fail(node, f"pad mode {mode!r} unsupported (only constant)")
        if self.opset is not None and self.opset < 11:
            pads, value = list(a.get("pads", [])), a.get("value", 0.0)
            axes = None
        else:
            pads = [int(v) for v in self.cval(node, 1).reshape(-1)]
            v = self.cval(node, 2)
            value = 0.0 if v is None or np.size(v) == 0 else float(np.asarray(v).reshape(-1)[0])
            ax = self.cval(node, 3)
            axes = None if ax is None else [int(t) for t in ax.reshape(-1)]
        nd = len(x.shape) + 1
        if axes is None:
            axes = list(range(nd))
        axes = [ax % nd for ax in axes]
        if len(pads) != 2 * len(axes):
            self.fail(node, f"{len(pads)} pads for {len(axes)} axes")
        before, after = [0] * nd, [0] * nd
        for k, ax in enumerate(axes):
            before[ax], after[ax] = pads[k], pads[k + len(axes)]
        if before[0] or after[0]:
            self.fail(node, "padding the batch axis is unsupported")
        if any(v < 0 for v in before + after):
            self.fail(node, f"negative pads {pads} unsupported")
        if len(x.shape) != 3:
            self.fail(node, "padding needs a [C, H, W] map")
        if not -FLOAT32_MAX <= value <= FLOAT32_MAX:
            value = -FLOAT32_MAX if value < 0 else FLOAT32_MAX
        q = [before[1], after[1], before[2], after[2], before[3], after[3]]
        if not any(q):
            return x
        return self.add(node, "Pad", [x], {"pads": q, "value": float(value)}, node.output[0])

    def op_Softmax(self, node, a):
        x = self.blob(node)
        nd = len(x.shape) + 1
        old = self.opset < 13          # before opset 13: over all axes from `axis` on
        axis = a.get("axis", 1 if old else -1) % nd
        channels = axis == 1 and (nd == 2 or not old or x.shape[1:] == (1, 1))
        if not channels:
            self.fail(node, f"softmax only over channels (axis {a.get('axis')} of "
                            f"{['N'] + list(x.shape)}, opset {self.opset})")
        return self.add(node, "Softmax", [x], {}, node.output[0])


def load(path, input_shape=None):
    """An ONNX model -> (graph, {layer: (w, b)} dense weights, provenance)."""
    onnx, numpy_helper = _onnx()
    check_regular(path, FormatError, "ONNX model")
    size = os.path.getsize(path)
    if size > MAX_BYTES:
        raise FormatError(f"{path}: {size} bytes, beyond protobuf's 2 GiB limit for one file")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:          # protobuf's DecodeError and the like
        raise FormatError(f"{path}: not a readable ONNX model ({type(e).__name__}: "
                          f"{str(e)[:200]})") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise FormatError(f"{path}: weights stored in external data files are unsupported "
                          f"(save the model with its weights inside: "
                          f"onnx.save(model, path, save_as_external_data=False))")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not OPSETS[0] <= opset <= OPSETS[1]:
        raise ModelError(f"{path}: opset {opset} unsupported (qengine reads opsets "
                         f"{OPSETS[0]} to {OPSETS[1]}); re-export with opset_version=17")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise FormatError(f"{path}: the ONNX checker refuses the model: {str(e)[:300]}") from None
    t = _Translator(model, path, numpy_helper)
    graph, weights = t.run(input_shape)
    from ..graph import infer_shapes, validate
    try:
        validate(graph)
        infer_shapes(graph)
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None
    prov = {"source": os.path.abspath(path), "source_format": "onnx",
            "onnx_opset": opset, "onnx_producer": f"{model.producer_name} "
                                                  f"{model.producer_version}".strip(),
            "onnx_input": t.input_name,
            "input_layout": "nhwc (transposed)" if t.input_transposed else "nchw"}
    return graph, weights, prov
