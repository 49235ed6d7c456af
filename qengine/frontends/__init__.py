"""Frontends: one module per kind of model source, each turning it into
qengine's layer graph (graph.py) and weights.

    caffe           Caffe prototxt (+ caffemodel through readers.caffemodel)
    qcnn_original   the original Quantized-CNN binaries (codebooks, indices, biases)

The layering, bottom to top (a module imports only from layers below it):
    errors, buffers, files  ->  readers (bytes and syntax)  ->  graph  ->  frontends  ->
    convert, runtime, cli
tests/test_layers.py checks it.
"""
