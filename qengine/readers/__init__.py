"""Readers, one per input format: Caffe prototxt text, the original Quantized-CNN binaries."""
