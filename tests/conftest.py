"""Shared fixtures: where the real data lives, instruction sets to test."""
import os

import pytest

from qengine import _kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("QENGINE_SHARED", os.path.join(ROOT, "..", "shared"))
ISAS = [isa for isa in _kernels.ISA_NAMES if _kernels.isa_supported(isa)]


def shared_path(*parts):
    """A path under ../shared/data, or skip the test with the reason."""
    p = os.path.join(SHARED, "data", *parts)
    if not os.path.exists(p):
        pytest.skip(f"real data not found at {p} (set QENGINE_SHARED to the shared/ folder)")
    return p


def random_fc(rng, n, cin, cout, d, K):
    """A random quantized fully-connected layer and input, with the numpy reference:
    (x [n, cin], codebook [M, K, d], indices [cout, M], bias, reference output)."""
    import numpy as np
    from qengine import reference
    from qengine.layers.weighted import dequantize_fc
    M = -(-cin // d)
    x = rng.standard_normal((n, cin)).astype(np.float32)
    cb = rng.standard_normal((M, K, d)).astype(np.float32)
    idx = rng.integers(0, K, (cout, M)).astype(np.uint8)
    b = rng.standard_normal(cout).astype(np.float32)
    return x, cb, idx, b, reference.fc(x, dequantize_fc(cb, idx, cin), b)


def on_every_isa(fn):
    """[fn() run with each instruction set this CPU supports], restoring the choice."""
    before = _kernels.get_isa()
    try:
        outs = []
        for isa in ISAS:
            _kernels.set_isa(isa)
            outs.append(fn())
        return outs
    finally:
        _kernels.set_isa(before)


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test once per instruction set this CPU supports."""
    before = _kernels.get_isa()
    _kernels.set_isa(request.param)
    yield request.param
    _kernels.set_isa(before)


@pytest.fixture(scope="session")
def alexnet_qcnn(tmp_path_factory):
    """The original Quantized-CNN AlexNet packed into a .qcnn (once per session)."""
    from qengine.convert import convert_original
    src = shared_path("qcnn-alexnet")
    out = tmp_path_factory.mktemp("alexnet") / "alexnet.qcnn"
    convert_original(src, str(out))
    return str(out)
