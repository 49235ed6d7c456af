"""The original Quantized-CNN binaries as a model source: per-layer codebooks
(*.ctrdLst.NN.bin), indices (*.asmtLst.NN.cbn or .bin) and biases
(*.biasVec.NN.bin), or the dense layout (*.convKnl.NN.bin, *.fcntWei.NN.bin,
*.biasVec.NN.bin), matched to the layers of an architecture's graph.  The file
formats themselves are read by readers.qcnn_original."""
import os

import numpy as np

from ..errors import FormatError, ModelError
from ..graph import infer_shapes
from ..layers.weighted import subspace_count
from ..readers.qcnn_original import read_bin, read_cbn, scan_dir


def _weighted_layers(directory, graph, kinds):
    """The files of every Convolution and InnerProduct layer of `graph`, matched
    by 1-based layer index: (all files found, [(index, layer, input shape,
    {kind: path})]); kinds(layer) names the kinds a layer needs, and a missing
    one is a ModelError naming the layer."""
    found = scan_dir(directory)
    shapes = infer_shapes(graph)
    layers = []
    for idx, L in enumerate(graph["layers"], 1):
        if L["type"] not in ("Convolution", "InnerProduct"):
            continue
        need = kinds(L)
        missing = [k for k in need if (k, idx) not in found]
        if missing:
            raise ModelError(f"{directory}: layer {idx} ({L['name']}) has no "
                             f"{', '.join(f'{k}.{idx:02d}' for k in missing)} file")
        layers.append((idx, L, shapes[L["bottom"][0]], {k: found[(k, idx)] for k in need}))
    return found, layers


def load_quantized_layers(directory, graph):
    """Read codebooks, indices and biases for every Convolution and InnerProduct
    layer of `graph`, matched by 1-based layer index; check every shape.

    Returns {layer_name: {"codebook": f32 [M,K,d], "indices": u8, "bias": f32, "bits": b}}."""
    found, layers = _weighted_layers(directory, graph,
                                     lambda L: ("ctrdLst", "asmtLst", "biasVec"))
    out = {}
    for idx, L, x_shape, files in layers:
        name, p = L["name"], L["params"]
        cb = read_bin(files["ctrdLst"])
        bias = read_bin(files["biasVec"])
        if cb.ndim != 3:
            raise ModelError(f"{files['ctrdLst']}: codebook must be [M, K, d], is {cb.shape}")
        M, K, d = cb.shape
        if K > 256:
            raise ModelError(f"{files['ctrdLst']}: K={K} codewords exceed 8-bit indices")
        apath = files["asmtLst"]
        if apath.endswith(".cbn"):
            asmt, bits = read_cbn(apath, k=K)
        else:
            asmt = read_bin(apath)
            if np.any(asmt != np.round(asmt)) or asmt.min() < 1 or asmt.max() > K:
                raise FormatError(f"{apath}: raw assignments must be integers 1..{K}")
            asmt = (asmt - 1).astype(np.uint8)
            bits = max(1, int(K - 1).bit_length())
        cout = p["num_output"]
        if L["type"] == "Convolution":
            cin_g = x_shape[0] // p["group"]
            kh, kw = p["kernel"]
            want_m = subspace_count(cin_g, d)
            want = (cout, kh, kw, want_m)
        else:
            cin = 1
            for v in x_shape:
                cin *= v
            want_m = subspace_count(cin, d)
            want = (cout, want_m)
        if M != want_m:
            raise ModelError(f"{files['ctrdLst']}: layer {idx} ({name}) needs {want_m} "
                             f"subspaces of d={d}, codebook has {M}")
        if asmt.shape != want:
            raise ModelError(f"{apath}: layer {idx} ({name}) needs assignments {want}, "
                             f"file has {asmt.shape}")
        if bias.shape != (cout,):
            raise ModelError(f"{files['biasVec']}: layer {idx} ({name}) needs {cout} "
                             f"biases, file has {bias.shape}")
        out[name] = {"codebook": np.ascontiguousarray(cb), "indices": np.ascontiguousarray(asmt),
                     "bias": bias, "bits": int(bits)}
    extra = sorted({i for (_, i) in found} - {idx for idx, *_ in layers})
    if extra:
        raise ModelError(f"{directory}: files for layer index(es) {extra}, which are not "
                         f"Convolution or InnerProduct layers of the architecture")
    return out


def load_original_dense(directory, graph):
    """Dense weights {layer: (w, b)} from the original code's dense layout:
    *.convKnl.NN.bin [Cout, Cg, KH, KW], *.fcntWei.NN.bin [Cout, Cin] and
    *.biasVec.NN.bin, matched to the graph by 1-based layer index."""
    def kinds(L):
        return ("convKnl" if L["type"] == "Convolution" else "fcntWei", "biasVec")
    weights = {}
    for idx, L, cin, files in _weighted_layers(directory, graph, kinds)[1]:
        n, p = L["name"], L["params"]
        kind = kinds(L)[0]
        w = read_bin(files[kind])
        b = read_bin(files["biasVec"])
        cout = p["num_output"]
        want = ((cout, cin[0] // p["group"]) + tuple(p["kernel"]) if kind == "convKnl"
                else (cout, int(np.prod(cin))))
        if w.shape != want or b.shape != (cout,):
            raise ModelError(f"{files[kind]}: layer {idx} ({n}) needs weights {list(want)} "
                             f"and {cout} biases, files have {list(w.shape)} and {list(b.shape)}")
        weights[n] = (np.ascontiguousarray(w), np.ascontiguousarray(b))
    return weights


def load(source, arch=None):
    """The original binaries in directory source.path, matched to --arch or
    source.prototxt (default alexnet) -> (graph, weights, provenance).  Dense
    files ("original-dense"): weights {layer: (w, b)}.  Quantized files
    ("original"): {layer: {"codebook", "indices", "bias", "bits"}}, to be packed
    as they are."""
    from .presets import architecture
    graph, arch_src = architecture(arch, source.prototxt)
    scan_dir(source.path)
    prov = {"source": os.path.abspath(source.path), "architecture": arch_src}
    if source.kind == "original-dense":
        return graph, load_original_dense(source.path, graph), \
            {**prov, "source_format": "quantized-cnn dense"}
    return graph, load_quantized_layers(source.path, graph), \
        {**prov, "source_format": "quantized-cnn"}
