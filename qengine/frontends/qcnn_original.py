"""The original Quantized-CNN binaries as a model source: per-layer codebooks
(*.ctrdLst.NN.bin), indices (*.asmtLst.NN.cbn or .bin) and biases
(*.biasVec.NN.bin), matched to the layers of an architecture's graph.  The file
formats themselves are read by readers.qcnn_original."""
import numpy as np

from ..errors import FormatError, ModelError
from ..graph import infer_shapes
from ..readers.qcnn_original import read_bin, read_cbn, scan_dir


def load_quantized_layers(directory, graph):
    """Read codebooks, indices and biases for every Convolution and InnerProduct
    layer of `graph`, matched by 1-based layer index; check every shape.

    Returns {layer_name: {"codebook": f32 [M,K,d], "indices": u8, "bias": f32, "bits": b}}."""
    found = scan_dir(directory)
    shapes = infer_shapes(graph)
    out = {}
    for idx, L in enumerate(graph["layers"], 1):
        if L["type"] not in ("Convolution", "InnerProduct"):
            continue
        name, p = L["name"], L["params"]
        need = [("ctrdLst", idx), ("asmtLst", idx), ("biasVec", idx)]
        missing = [k for k in need if k not in found]
        if missing:
            raise ModelError(f"{directory}: layer {idx} ({name}) has no "
                             f"{', '.join(f'{k}.{i:02d}' for k, i in missing)} file")
        cb = read_bin(found[("ctrdLst", idx)])
        bias = read_bin(found[("biasVec", idx)])
        if cb.ndim != 3:
            raise ModelError(f"{found[('ctrdLst', idx)]}: codebook must be [M, K, d], is {cb.shape}")
        M, K, d = cb.shape
        if K > 256:
            raise ModelError(f"{found[('ctrdLst', idx)]}: K={K} codewords exceed 8-bit indices")
        apath = found[("asmtLst", idx)]
        if apath.endswith(".cbn"):
            asmt, bits = read_cbn(apath, k=K)
        else:
            asmt = read_bin(apath)
            if np.any(asmt != np.round(asmt)) or asmt.min() < 1 or asmt.max() > K:
                raise FormatError(f"{apath}: raw assignments must be integers 1..{K}")
            asmt = (asmt - 1).astype(np.uint8)
            bits = max(1, int(K - 1).bit_length())
        x_shape = shapes[L["bottom"][0]]
        cout = p["num_output"]
        if L["type"] == "Convolution":
            cin_g = x_shape[0] // p["group"]
            kh, kw = p["kernel"]
            want_m = -(-cin_g // d)
            want = (cout, kh, kw, want_m)
        else:
            cin = 1
            for v in x_shape:
                cin *= v
            want_m = -(-cin // d)
            want = (cout, want_m)
        if M != want_m:
            raise ModelError(f"{found[('ctrdLst', idx)]}: layer {idx} ({name}) needs {want_m} "
                             f"subspaces of d={d}, codebook has {M}")
        if asmt.shape != want:
            raise ModelError(f"{apath}: layer {idx} ({name}) needs assignments {want}, "
                             f"file has {asmt.shape}")
        if bias.shape != (cout,):
            raise ModelError(f"{found[('biasVec', idx)]}: layer {idx} ({name}) needs {cout} "
                             f"biases, file has {bias.shape}")
        out[name] = {"codebook": np.ascontiguousarray(cb), "indices": np.ascontiguousarray(asmt),
                     "bias": bias, "bits": int(bits)}
    extra = sorted({i for (_, i) in found} - {i for i, L in enumerate(graph["layers"], 1)
                                             if L["type"] in ("Convolution", "InnerProduct")})
    if extra:
        raise ModelError(f"{directory}: files for layer index(es) {extra}, which are not "
                         f"Convolution or InnerProduct layers of the architecture")
    return out
