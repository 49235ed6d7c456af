"""Every layer type qengine runs, one record each (see layers/base.py for what
a record holds).  The graph (graph.py) validates and shapes a network with
them, the runtime builds their ops, the reference runs their numpy forms.

Adding a layer type: README, "Adding a layer type"."""
# importing each module registers its records
from . import activation, convolution, inner_product, normalization, pooling, structure
from .base import MAX_DIM, RECORDS, LayerType, Op, conv_output, pool_output
from .weighted import dense_shape, indices_shape, layer_cost, subspace_inputs, subspaces

__all__ = ["activation", "convolution", "inner_product", "normalization", "pooling", "structure",
           "MAX_DIM", "RECORDS", "LayerType", "Op", "conv_output", "pool_output", "dense_shape",
           "indices_shape", "layer_cost", "subspace_inputs", "subspaces", "TYPES", "QUANTIZABLE",
           "record"]

TYPES = tuple(RECORDS)
# the layers whose weights are product-quantized (codebooks and indices)
QUANTIZABLE = ("Convolution", "InnerProduct")


def record(layer_type):
    """The record of a layer type (KeyError if qengine has none)."""
    return RECORDS[layer_type]
