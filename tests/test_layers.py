"""The package's layering (qengine/frontends/__init__.py): a module imports only
from layers below its own, so that readers stay byte-level parsers, the layer
records know no graph, the graph knows no source format, and frontends and the
runtime sit above them, neither importing the other."""
import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "qengine")
# layer of each module or package (higher imports lower, never the reverse)
LAYERS = {"errors": 0, "buffers": 0, "files": 0, "budget": 0, "progress": 0, "_kernels": 0, "models": 0,
          "readers": 1, "format": 1, "preprocess": 1, "layers": 2, "graph": 3, "frontends": 4, "runtime": 4}


def _qengine_imports(path, package):
    """The qengine modules a file imports (first component under qengine)."""
    tree = ast.parse(open(path).read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] == "qengine" and len(parts) > 1:
                    out.add(parts[1])
                elif parts[0] == "qengine":
                    out.update(a.name for a in node.names)
                continue
            base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
            mod = base + (node.module.split(".") if node.module else [])
            if len(mod) > 1:
                out.add(mod[1])
            else:
                out.update(a.name for a in node.names)
    return out


def test_no_module_imports_from_a_layer_above_it():
    bad = []
    for unit, level in LAYERS.items():
        if unit == "_kernels" or not os.path.exists(os.path.join(ROOT, unit)) and \
                not os.path.exists(os.path.join(ROOT, unit + ".py")):
            continue    # the compiled extension, the data package models/
        paths = ([os.path.join(ROOT, unit + ".py")] if os.path.exists(os.path.join(ROOT, unit + ".py"))
                 else [os.path.join(ROOT, unit, f) for f in os.listdir(os.path.join(ROOT, unit))
                       if f.endswith(".py")])
        package = "qengine" if paths[0].endswith(f"{unit}.py") else f"qengine.{unit}"
        for path in paths:
            for dep in _qengine_imports(path, package):
                if dep == unit:
                    continue
                # a module above every listed layer (runtime, convert, cli...) or one
                # of the same or a higher layer
                if LAYERS.get(dep, 99) >= level and not (level == 0 and LAYERS.get(dep) == 0):
                    bad.append(f"{os.path.relpath(path, ROOT)} imports {dep}")
    assert not bad, bad


def test_graph_knows_no_source_format():
    src = open(os.path.join(ROOT, "graph.py")).read()
    for word in ("prototxt", "V1", "caffemodel", "_V1_TYPES", "Caffe deploy"):
        assert word not in src, word


def test_detect_tells_every_source_kind(tmp_path):
    """frontends.detect: the one place that decides what a qconvert source is."""
    import pytest
    from modelkit import build
    from qengine.errors import FormatError, InputError
    from qengine.frontends import detect
    q = tmp_path / "m.qcnn"
    build(q)
    assert detect(str(q)).kind == "qcnn"
    caffe = tmp_path / "caffe"
    caffe.mkdir()
    (caffe / "net.caffemodel").write_bytes(b"")
    (caffe / "deploy.prototxt").write_text("")
    (caffe / "solver.prototxt").write_text("")
    s = detect(str(caffe))
    assert (s.kind, os.path.basename(s.prototxt), os.path.basename(s.caffemodel)) == \
        ("caffe", "deploy.prototxt", "net.caffemodel")
    orig = tmp_path / "orig"
    orig.mkdir()
    (orig / "AlexNet.ctrdLst.01.bin").write_bytes(b"")
    assert detect(str(orig)).kind == "original"
    dense = tmp_path / "dense"
    dense.mkdir()
    (dense / "AlexNet.convKnl.01.bin").write_bytes(b"")
    assert detect(str(dense)).kind == "original-dense"
    (caffe / "other.caffemodel").write_bytes(b"")
    with pytest.raises(InputError, match="2 .caffemodel files"):
        detect(str(caffe))
    with pytest.raises(InputError, match="does not apply|do not apply"):
        detect(str(q), prototxt="x.prototxt")
    with pytest.raises(FormatError, match="not a directory"):
        detect(str(tmp_path / "missing"))
    with pytest.raises(InputError):
        detect(None)
