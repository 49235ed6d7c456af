"""Architecture presets (Caffe deploy prototxt), installed as qengine.models."""
import os

def preset_path(name):
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.prototxt")
