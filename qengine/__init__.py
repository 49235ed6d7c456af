"""qengine: a CPU inference engine for product-quantized CNNs.

    import qengine
    model = qengine.load("alexnet.qcnn")
    model.predict("photo.jpg", top=5)
"""
from . import budget
from .errors import FormatError, ImageError, InputError, ModelError, QEngineError
from .runtime import Model, load

__version__ = "0.1.0"
__all__ = ["budget", "load", "Model", "QEngineError", "FormatError", "ModelError", "ImageError",
           "InputError", "__version__"]
