"""The built-in architectures (Caffe deploy prototxts shipped as qengine.models)
that the original Quantized-CNN binaries are matched to: --arch NAME."""
import os

from ..errors import QEngineError
from .caffe import read_prototxt

PRESETS = ("alexnet", "caffenet", "vgg_cnn_s", "vgg16")


def preset_path(name):
    """The preset's prototxt: installed as qengine.models, or models/ in a source tree."""
    try:
        from ..models import preset_path as installed
        return installed(name)
    except ImportError:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return os.path.join(os.path.dirname(here), "models", f"{name}.prototxt")


def preset_graph(name):
    if name not in PRESETS:
        raise QEngineError(f"unknown architecture {name!r}; presets: {', '.join(PRESETS)}")
    return read_prototxt(preset_path(name))


def architecture(arch=None, prototxt=None):
    """(graph, description) of --arch NAME or --prototxt FILE (default: alexnet)."""
    if arch and prototxt:
        raise QEngineError("give either --arch or --prototxt, not both")
    if prototxt:
        return read_prototxt(prototxt), os.path.basename(prototxt)
    return preset_graph(arch or "alexnet"), f"preset:{arch or 'alexnet'}"
