"""Deterministic synthetic models: the built-in default for trying qengine
without downloading anything.  Architecture from a preset, codebooks drawn
with He-style scaling and uniformly random codeword indices, so activations
stay in a sane range; the predictions mean nothing."""
import numpy as np

from . import __version__, format as qformat
from .frontends.presets import PRESETS, preset_graph
from .graph import infer_shapes
from .layers.weighted import subspace_count

# (subspace dimension d, codebook size K), after the paper's AlexNet set-up
CONV_QUANT = (8, 128)
FC_QUANT = (4, 32)
LAST_FC_QUANT = (1, 16)


def make_synthetic(arch, path, seed=0, force=True):
    """Write a synthetic .qcnn of preset `arch` to `path`; returns its size in bytes."""
    if arch not in PRESETS:
        raise ValueError(f"unknown architecture {arch!r}; presets: {', '.join(PRESETS)}")
    rng = np.random.default_rng(seed)
    graph = preset_graph(arch)
    shapes = infer_shapes(graph)
    fcs = [L["name"] for L in graph["layers"] if L["type"] == "InnerProduct"]
    tensors = {}
    for L in graph["layers"]:
        if L["type"] not in ("Convolution", "InnerProduct"):
            continue
        n, p = L["name"], L["params"]
        cin = shapes[L["bottom"][0]]
        cout = p["num_output"]
        if L["type"] == "Convolution":
            d, K = CONV_QUANT
            cg = cin[0] // p["group"]
            kh, kw = p["kernel"]
            M = subspace_count(cg, d)
            idx_shape = (cout, kh, kw, M)
            fan_in = cg * kh * kw
        else:
            d, K = LAST_FC_QUANT if n == fcs[-1] else FC_QUANT
            c = int(np.prod(cin))
            M = subspace_count(c, d)
            idx_shape = (cout, M)
            fan_in = c
        cb = (rng.standard_normal((M, K, d)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        idx = rng.integers(0, K, size=idx_shape, dtype=np.uint8)
        bias = (rng.standard_normal(cout) * 0.01).astype(np.float32)
        bits = max(1, (K - 1).bit_length())
        L["weights"] = {"mode": "lut", "codebook": f"{n}.codebook", "indices": f"{n}.indices",
                        "bias": f"{n}.bias"}
        tensors[f"{n}.codebook"] = qformat.Tensor(cb)
        tensors[f"{n}.indices"] = qformat.Tensor(idx, bits=bits)
        tensors[f"{n}.bias"] = qformat.Tensor(bias)
    c, h, w = graph["input"]["shape"]
    nout = int(np.prod(shapes[graph["layers"][-1]["top"][0]]))
    meta = {
        "graph": graph,
        "preprocess": {"channel_order": "bgr", "resize": [256, 256], "resize_method": "bilinear",
                       "crop": [h, w], "mean": {"type": "pixel", "values": [104.0, 117.0, 123.0]}},
        "class_names": [f"synthetic class {i}" for i in range(nout)],
        "provenance": {"source": f"synthetic:{arch}", "seed": seed,
                       "converter": f"qengine {__version__}"},
    }
    return qformat.write(path, meta, tensors, force=force)
