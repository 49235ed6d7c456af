"""The plain numpy reference: every layer type's numpy form (its record's
`reference`, qengine/layers/), run over a graph.  The independent reference the
tests check the C kernels against, and part of the dense baselines
(baselines.py).  Written for clarity (im2col + matrix products), not speed."""
import numpy as np

from .layers import RECORDS
from .layers.convolution import conv2d

__all__ = ["LAYERS", "conv2d", "fc", "relu", "lrn", "softmax", "pool", "forward", "model_weights"]

# one function per layer type: f(params, inputs, (w, b) or None) -> output
LAYERS = {t: rec.reference for t, rec in RECORDS.items()}


def fc(x, w, b):
    return LAYERS["InnerProduct"]({}, [x], (w, b))


def relu(x, slope=0.0):
    return LAYERS["ReLU"]({"negative_slope": slope}, [x], None)


def lrn(x, size, alpha, beta, k):
    return LAYERS["LRN"]({"local_size": size, "alpha": alpha, "beta": beta, "k": k}, [x], None)


def softmax(x):
    return LAYERS["Softmax"]({}, [x], None)


def pool(x, kernel, stride, pad, method="MAX", global_pool=False):
    """Caffe's pooling of x [N, C, H, W] (numpy)."""
    return RECORDS["Pooling"].reference(
        {"pool": method, "kernel": list(kernel), "stride": list(stride), "pad": list(pad),
         "global": global_pool}, [x], None)


def forward(graph, weights, x, outputs=None, layers=None):
    """Run a graph densely. weights: {layer: (w, b)} with conv w [Cout,Cg,KH,KW]
    and fc w [Cout,Cin]; layers: functions replacing some of LAYERS. Returns the
    last output or a dict of named outputs."""
    impl = dict(LAYERS, **(layers or {}))
    blobs = {graph["input"]["name"]: np.asarray(x, np.float32)}
    res = {}
    out = None
    for L in graph["layers"]:
        out = impl[L["type"]](L["params"], [blobs[b] for b in L["bottom"]],
                              weights.get(L["name"]))
        res[L["name"]] = out
        for top in L["top"]:
            blobs[top] = out
    if outputs is not None:
        return {n: res[n] for n in outputs}
    return out


def model_weights(model):
    """Dense (dequantized) weights of a loaded qengine Model: {layer: (w, b)}
    (Scale layers: (scale, shift))."""
    ws = {}
    for op in model.layers:
        wb = op.dense_weights()
        if wb is not None:
            ws[op.name] = wb
    return ws
