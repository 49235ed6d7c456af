"""Frontends: one module per kind of model source, each turning it into
qengine's layer graph (graph.py) and weights with the same call,
load(source) -> (graph, weights, provenance):

    caffe           Caffe prototxt + caffemodel (through readers/)
    onnx            ONNX models (through the onnx package)
    qcnn_original   the original Quantized-CNN binaries, dense or quantized
                    (with an architecture from presets, or a prototxt)
    qcnn            a .qcnn as the source of a new quantization (dequantized)

detect() decides which a source is; load() runs its frontend.

The layering, bottom to top (a module imports only from layers below it):
    errors, buffers, files  ->  readers (bytes and syntax), format  ->  layers
    (one record per layer type)  ->  graph  ->  frontends | runtime  ->  convert, cli
tests/test_layers.py checks it.
"""
import glob
import os

from ..errors import FormatError, InputError
from ..format import MAGIC

KINDS = ("qcnn", "onnx", "caffe", "original-dense", "original")


class Source:
    """What a model source is: `kind` (one of KINDS), the path it was given, and
    for Caffe the prototxt and caffemodel to read."""

    def __init__(self, kind, path=None, prototxt=None, caffemodel=None):
        self.kind, self.path = kind, path
        self.prototxt, self.caffemodel = prototxt, caffemodel

    def __repr__(self):
        return (f"Source({self.kind!r}, {self.path!r}, prototxt={self.prototxt!r}, "
                f"caffemodel={self.caffemodel!r})")


def _is_qcnn(path):
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def detect(src=None, prototxt=None, caffemodel=None):
    """The kind of model source `src` is (a .qcnn file; a directory of the
    original Quantized-CNN binaries, quantized or dense; a directory holding a
    Caffe deploy prototxt and caffemodel), or the Caffe pair given explicitly.
    Raises InputError for an ambiguous or unusable combination."""
    if src and os.path.isfile(src) and str(src).lower().endswith(".onnx") and not _is_qcnn(src):
        if prototxt or caffemodel:
            raise InputError(f"{src}: an ONNX model carries its own architecture; --prototxt "
                             f"and --caffemodel do not apply")
        return Source("onnx", src)
    if src and os.path.isfile(src) and _is_qcnn(src):
        if prototxt or caffemodel:
            raise InputError(f"{src}: a .qcnn carries its own architecture; --prototxt and "
                             f"--caffemodel do not apply")
        return Source("qcnn", src)
    if src and not os.path.isdir(src):
        raise FormatError(f"{src}: not a directory, an .onnx or a .qcnn file")
    if src and not caffemodel and not glob.glob(os.path.join(src, "*.ctrdLst.*")):
        models = sorted(glob.glob(os.path.join(src, "*.caffemodel")))
        protos = sorted(glob.glob(os.path.join(src, "*.prototxt")))
        if models:
            if len(models) != 1:
                raise InputError(f"{src}: {len(models)} .caffemodel files; pick one with "
                                 f"--caffemodel")
            caffemodel = models[0]
            if not prototxt:
                deploy = [p for p in protos if "deploy" in os.path.basename(p)] or protos
                if len(deploy) != 1:
                    raise InputError(f"{src}: need exactly one deploy .prototxt (found "
                                     f"{len(protos)}); pick one with --prototxt")
                prototxt = deploy[0]
    if caffemodel:
        if not prototxt:
            raise InputError("--caffemodel needs --prototxt (or a DIR holding both)")
        return Source("caffe", src, prototxt, caffemodel)
    if src and glob.glob(os.path.join(src, "*.convKnl.*")) + \
            glob.glob(os.path.join(src, "*.fcntWei.*")):
        return Source("original-dense", src, prototxt)
    if src:
        return Source("original", src, prototxt)
    raise InputError("give a model directory or .qcnn file, or --prototxt and --caffemodel")


def load(source, arch=None, input_shape=None):
    """(graph, weights, provenance) of a Source (see detect): weights are dense
    {layer: (w, b)}, except for quantized original binaries (packed as they
    are).  arch: the architecture of original binaries; input_shape: [C, H, W]
    for an ONNX model whose input size is not fixed."""
    if input_shape is not None and source.kind != "onnx":
        raise InputError("--input-shape applies to ONNX models only")
    if arch is not None and source.kind not in ("original", "original-dense"):
        raise InputError(f"--arch applies to the original Quantized-CNN binaries only, "
                         f"not to a {source.kind} source")
    if source.kind == "onnx":
        from . import onnx
        return onnx.load(source.path, input_shape)
    if source.kind == "caffe":
        from . import caffe
        return caffe.load(source)
    if source.kind == "qcnn":
        from . import qcnn
        return qcnn.load(source)
    from . import qcnn_original
    return qcnn_original.load(source, arch)
