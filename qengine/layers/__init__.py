"""Every layer type qengine runs, one record each (see layers/base.py for what
a record holds).  The graph (graph.py) validates and shapes a network with
them, the runtime builds their ops, the reference runs their numpy forms.

Adding a layer type: README, "Adding a layer type"."""
from . import activation, convolution, inner_product, normalization, pooling, structure  # noqa: F401
from .base import MAX_DIM, RECORDS, LayerType, Op, conv_output, pool_output  # noqa: F401
from .weighted import (dense_shape, indices_shape, layer_cost, subspace_inputs,  # noqa: F401
                       subspaces)

TYPES = tuple(RECORDS)
# the layers whose weights are product-quantized (codebooks and indices)
QUANTIZABLE = ("Convolution", "InnerProduct")


def record(layer_type):
    """The record of a layer type (KeyError if qengine has none)."""
    return RECORDS[layer_type]
