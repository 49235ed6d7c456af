"""Exactness against the ORIGINAL Quantized-CNN C++ implementation's own outputs
(../shared/data/qcnn-alexnet-reference), layer by layer, for 5 ImageNet images."""
import os

import numpy as np
import pytest

import qengine

from conftest import shared_path

IMAGES = [f"ILSVRC2012_val_{i:08d}" for i in range(1, 6)]
DUMPS = {"fm01_conv_l01": "conv1", "fm03_lrn_l03": "norm1", "fm04_pool_l04": "pool1",
         "fm05_conv_l05": "conv2", "fm08_pool_l08": "pool2", "fm09_conv_l09": "conv3",
         "fm11_conv_l11": "conv4", "fm13_conv_l13": "conv5", "fm15_pool_l15": "pool5",
         "fm16_fc_l16": "fc6", "fm19_fc_l19": "fc7", "fm22_fc_l22": "fc8",
         "fm23_softmax_l23": "prob"}


def ref_dir(img):
    return shared_path("qcnn-alexnet-reference", img)


def as_nhwc(a, ref):
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a.reshape(ref.shape)


@pytest.mark.parametrize("strategy", ["auto", "lut"])
@pytest.mark.parametrize("img", IMAGES)
def test_every_layer_matches_original(alexnet_qcnn, img, strategy, isa):
    m = qengine.load(alexnet_qcnn, strategy=strategy, mode="exact")
    d = ref_dir(img)
    x = np.load(os.path.join(d, "input_nchw_bgr.npy"))
    got = m.forward(x, outputs=list(DUMPS.values()))
    for f, name in DUMPS.items():
        ref = np.load(os.path.join(d, f + ".npy"))
        out = as_nhwc(got[name], ref)
        assert out.shape == ref.shape, name
        err = float(np.abs(out - ref).max())
        assert err <= 1e-4 * float(np.abs(ref).max()), f"{img} {name}: max|diff| {err:.3g}"


@pytest.mark.parametrize("img", IMAGES)
def test_own_preprocessing_matches_original(alexnet_qcnn, img):
    m = qengine.load(alexnet_qcnn, mode="exact")
    ref = np.load(os.path.join(ref_dir(img), "input_nchw_bgr.npy"))
    x = m.preprocess(shared_path("ilsvrc12-val", "bmp", img + ".BMP"))
    assert x.shape == ref.shape
    assert float(np.abs(x - ref).mean()) <= 0.5
    p, pr = (m.forward(a, outputs=["pool5"])["pool5"] for a in (x, ref))
    assert float(np.abs(p - pr).max()) <= 1e-3 * float(np.abs(pr).max())


def test_alexnet_qcnn_size(alexnet_qcnn):
    src = shared_path("qcnn-alexnet")
    original = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src)
                   if ".ctrdLst." in f or ".asmtLst." in f or ".biasVec." in f)
    size = os.path.getsize(alexnet_qcnn)
    assert size <= original * 1.01, f".qcnn {size} bytes vs original {original}"


def test_alexnet_metadata(alexnet_qcnn):
    m = qengine.load(alexnet_qcnn, mode="exact")
    assert m.input_shape == (3, 227, 227)
    assert len(m.class_names) == 1000 and m.class_names[0].startswith("tench")
    assert m.layer_names[:4] == ["conv1", "relu1", "norm1", "pool1"]
    assert m.layer_names[-1] == "prob"
    pp = m.metadata["preprocess"]
    assert pp["resize"] == [256, 256] and pp["crop"] == [227, 227]
