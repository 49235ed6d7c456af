"""OpenVINO baselines of `qbench --compare` (the optional [openvino] extra):
they compute the same network as qengine (fp32 closely, int8 roughly)."""
import numpy as np
import pytest

import qengine
from qengine import baselines, reference

import modelkit

pytest.importorskip("openvino", reason="optional extra: pip install '.[openvino]'")
pytest.importorskip("nncf", reason="optional extra: pip install '.[openvino]'")


def test_openvino_fp32_and_int8_compute_the_network(tmp_path):
    path = str(tmp_path / "m.qcnn")
    modelkit.build(path, seed=7)
    m = qengine.load(path, mode="exact")
    rng = np.random.default_rng(0)
    calib = np.maximum(rng.standard_normal((16,) + m.input_shape), 0).astype(np.float32)
    x = calib[:2]
    runners = baselines.openvino_runners(m.graph, reference.model_weights(m), batch=2,
                                         calib=calib)
    want = m.forward(x)
    got = np.asarray(runners["openvino fp32"](x)).reshape(want.shape)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    fn = runners["openvino int8 (nncf)"]
    assert not isinstance(fn, Exception), fn
    got8 = np.asarray(fn(x)).reshape(want.shape)
    assert np.abs(got8 - want).max() < 0.1      # softmax outputs of an int8 network
