"""Files that ship with qengine, installed as qengine.models: the built-in
architecture presets (Caffe deploy prototxts) and the default model,
SqueezeNet v1.0 quantized by qconvert (BSD licence: LICENSE.squeezenet;
rebuilt by tools/build_default_model.py)."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = "squeezenet_v1.0.qcnn"


def preset_path(name):
    return os.path.join(HERE, f"{name}.prototxt")


def default_model():
    """The path of the built-in model (qrun and qbench use it when given none)."""
    return os.path.join(HERE, DEFAULT_MODEL)
