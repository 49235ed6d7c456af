"""Running a network on calibration data, for the converter: the graph's
layers on the C kernels for the heavy ones (dense weights, whatever the
layer will be stored as), and the calibration set streamed through it in
batches, so that memory holds one batch's activations, never the set's.

A calibration set is anything with len() and slicing that yields float32
[n, C, H, W] (an array, a memory map, or a Subset of either)."""
import json
import os
import tempfile

import numpy as np

from . import _kernels
from .layers.pooling import pool_into
from .layers.weighted import blocked_conv_weights
from .reference import LAYERS


def _conv(x, w, b, p):
    n, c, h, wd = x.shape
    kh, kw = w.shape[2:]
    g = p["group"]
    oh, ow = _kernels.conv_output_size(h, wd, kh, kw, p["stride"], p["pad"])
    out = np.empty((n, w.shape[0], oh, ow), np.float32)
    ws = np.empty(_kernels.conv_workspace_floats(c // g, h, wd, kh, kw, p["stride"], p["pad"], 0, 0,
                                                 w.shape[0] // g), np.float32)
    wblk = blocked_conv_weights(np.ascontiguousarray(w, np.float32), g)
    _kernels.conv_dense(np.ascontiguousarray(x, np.float32), wblk, b, kh, kw, p["stride"],
                        p["pad"], False, out, ws, 2)
    return out


def _fc(x, w, b):
    x2 = np.ascontiguousarray(x.reshape(x.shape[0], -1), np.float32)
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    _kernels.fc_dense(x2, np.ascontiguousarray(w), b, False, out, 2)
    return out


def _pool(p, xs, wb):
    from .layers import record
    x = np.ascontiguousarray(xs[0], np.float32)
    n, c, h, w = x.shape
    out = np.empty((n,) + record("Pooling").shape(p, [(c, h, w)], "pooling"), np.float32)
    return pool_into(p, x, out)


# the reference's layers with the C kernels for the heavy ones (calibration runs are large)
FAST_LAYERS = {
    "Convolution": lambda p, xs, wb: _conv(xs[0], wb[0], wb[1], p),
    "InnerProduct": lambda p, xs, wb: _fc(xs[0], wb[0], wb[1]),
    "ReLU": lambda p, xs, wb: np.where(xs[0] > 0, xs[0], xs[0] * np.float32(p["negative_slope"])),
    "Pooling": _pool,
}


def apply_layer(L, xs, wb=None):
    return dict(LAYERS, **FAST_LAYERS)[L["type"]](L["params"], xs, wb)


ACTIVATION_BYTES = 256 << 20     # activations alive at once while streaming


def activation_bytes(graph):
    """Bytes of every blob of the network for one image (float32): an upper
    bound of what one image's activations hold at once."""
    from .graph import infer_shapes
    return 4 * sum(int(np.prod(s)) for s in infer_shapes(graph).values())


def stream_batch(graph, n):
    """Images per batch so that one batch's activations stay within
    ACTIVATION_BYTES."""
    return int(max(1, min(n, 64, ACTIVATION_BYTES // max(activation_bytes(graph), 1))))


def stream(graph, inputs, batch=None):
    """(first index, float32 batch) over a calibration set."""
    n = len(inputs)
    batch = batch or stream_batch(graph, n)
    for i0 in range(0, n, batch):
        yield i0, np.ascontiguousarray(inputs[i0:i0 + batch], np.float32)


class Subset:
    """Some images of a calibration set, by index, without copying them."""

    def __init__(self, inputs, index):
        index = np.asarray(index, np.int64)
        if isinstance(inputs, Subset):          # a subset of a subset: one level
            inputs, index = inputs.inputs, inputs.index[index]
        self.inputs, self.index = inputs, index

    def __len__(self):
        return len(self.index)

    def __getitem__(self, s):
        """Images by a slice (or an index array) of the subset."""
        return np.asarray(self.inputs[self.index[s]])


def dequantized_params(graph, weights, quantized):
    """weights {layer: (w, b)} with every layer of quantized {layer:
    (codebook, indices[, bias])} replaced by its dequantized weights (and its
    refitted bias, when it has one): the network as a quantized file runs it."""
    from .quantize import reconstruct
    by_name = {L["name"]: L for L in graph["layers"]}
    params = dict(weights)
    for n, q in quantized.items():
        kind = "conv" if by_name[n]["type"] == "Convolution" else "fc"
        w, b = weights[n]
        params[n] = (reconstruct(q[0], q[1], kind, w.shape), q[2] if len(q) > 2 else b)
    return params


def outputs(graph, params, inputs, threads=2):
    """The network's last output for every input, [N, ...] (streamed through
    the runtime on dense weights)."""
    model = dense_model(graph, params, threads=threads)
    res = [model.forward(x).reshape(len(x), -1) for _, x in stream(graph, inputs)]
    return np.concatenate(res)


def top1(graph, params, inputs):
    """The network's top-1 class of every input (streamed)."""
    return outputs(graph, params, inputs).argmax(1)


def scratch_dir():
    """A temporary directory for models made on the fly (removed on exit; a
    loaded model keeps its mapping): memory-backed where the system has it."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.TemporaryDirectory(prefix="qengine-", dir=base)


def dense_model(graph, params, mode="exact", threads=1, layers=None):
    """A runtime Model of the graph (its first `layers` layers) on dense
    weights params {layer: (w, b) or (scale, shift)}: written to a temporary
    .qcnn (memory-backed where the system has one), loaded, the file removed
    (the model keeps its mapping).  The runtime's kernels, fused ReLUs and
    buffer reuse: a calibration pass as fast as inference."""
    from . import format as qformat
    from .layers import QUANTIZABLE
    from .runtime import Model
    g = json.loads(json.dumps({"input": graph["input"],
                               "layers": graph["layers"][:layers]}))
    tensors = {}
    for L in g["layers"]:
        L.pop("weights", None)
        n = L["name"]
        if n not in params or params[n] is None:
            continue
        a, b = params[n]
        if L["type"] in QUANTIZABLE:
            L["weights"] = {"mode": "dense", "weight": f"{n}.weight", "bias": f"{n}.bias"}
            tensors[f"{n}.weight"] = qformat.Tensor(np.ascontiguousarray(a, np.float32))
            tensors[f"{n}.bias"] = qformat.Tensor(np.ascontiguousarray(b, np.float32))
        else:
            L["weights"] = {"scale": f"{n}.scale", "shift": f"{n}.shift"}
            tensors[f"{n}.scale"] = qformat.Tensor(np.ascontiguousarray(a, np.float32))
            tensors[f"{n}.shift"] = qformat.Tensor(np.ascontiguousarray(b, np.float32))
    with scratch_dir() as tmp:
        path = os.path.join(tmp, "network.qcnn")
        qformat.write(path, {"graph": g, "preprocess": {}, "class_names": [],
                             "provenance": {"source": "calibration"}}, tensors, force=True)
        return Model(path, mode=mode, threads=threads, limits={"work": 1 << 62})


def input_producers(graph):
    """{layer: the layer whose output it reads as its first input (None: the
    network's input)}: for in-place blobs, the last writer before it."""
    writer, out = {}, {}
    for L in graph["layers"]:
        out[L["name"]] = writer.get(L["bottom"][0])
        for t in L["top"]:
            writer[t] = L["name"]
    return out
