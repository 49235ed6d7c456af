"""qconvert with a .qcnn as its source: the dequantized weights are the dense
model; preprocessing and class names carry over."""
import numpy as np

import qengine
from qengine.cli import qconvert
from qengine.reference import model_weights

import modelkit


def test_requantize_a_qcnn_with_other_codebooks(tmp_path):
    src = tmp_path / "src.qcnn"
    modelkit.build(str(src), seed=3)
    out = tmp_path / "k4.qcnn"
    rc = qconvert.main([str(src), "-o", str(out), "--conv-k", "4", "--conv-subdim", "2",
                        "--fc-k", "4", "--fc-subdim", "2", "-q"])
    assert rc == 0
    a, b = qengine.load(str(src), mode="exact"), qengine.load(str(out), mode="exact")
    assert b.class_names == a.class_names and b.input_shape == a.input_shape
    assert b._preprocess_spec.keys() == a._preprocess_spec.keys()
    wa, wb = model_weights(a), model_weights(b)
    assert wa.keys() == wb.keys()
    for n in wa:
        # every quantized layer now has K=4 codebooks of d=2 (dense layers stay dense)
        op = next(o for o in b._ops if o.name == n)
        if op.mode == "lut":
            assert (op.K, op.d) == (4, 2), n
        err = np.linalg.norm(wb[n][0] - wa[n][0]) / np.linalg.norm(wa[n][0])
        assert err < (0.9 if op.mode == "lut" else 1e-6), (n, err)
        assert np.array_equal(wb[n][1], wa[n][1])
    # the same settings as the source reproduce it closely: k-means on weights
    # that already take K values per subspace finds them again
    same = tmp_path / "same.qcnn"
    op = next(o for o in a._ops if o.weighted and o.mode == "lut" and o.type == "Convolution")
    assert qconvert.main([str(src), "-o", str(same), "--conv-k", str(op.K), "--conv-subdim",
                          str(op.d), "--keep-dense", "f1", "--keep-dense", "f2",
                          "--keep-dense", "c2b", "-q"]) == 0
    ws = model_weights(qengine.load(str(same), mode="exact"))
    err = np.linalg.norm(ws[op.name][0] - wa[op.name][0]) / np.linalg.norm(wa[op.name][0])
    assert err < 1e-3, err


def test_requantize_refuses_architecture_options(tmp_path, capsys):
    src = tmp_path / "src.qcnn"
    modelkit.build(str(src), seed=1)
    import pytest
    with pytest.raises(SystemExit) as e:
        qconvert.main([str(src), "-o", str(tmp_path / "x.qcnn"), "--arch", "alexnet"])
    assert e.value.code == 2
    assert "carries its own architecture" in capsys.readouterr().err
