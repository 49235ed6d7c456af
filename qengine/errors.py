"""The one exception family qengine raises for bad input."""


class QEngineError(Exception):
    """Base class of every error qengine raises on bad input or bad use."""


class FormatError(QEngineError):
    """A model file (.qcnn, .bin, .cbn, prototxt) is malformed or corrupt."""


class ModelError(QEngineError):
    """A model is well-formed but inconsistent: shapes, layers, parameters."""


class ImageError(QEngineError):
    """An image cannot be read or converted."""


class InputError(QEngineError):
    """An input array or argument passed to the API is invalid."""
