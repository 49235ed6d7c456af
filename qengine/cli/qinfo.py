"""qinfo: what a .qcnn file holds, as gguf-dump shows a GGUF file.

    qinfo [MODEL.qcnn] [--json] [--tensors]

The layers (type, output shape, how each is stored: dense or d and K, the
bytes it stores, and the kernel this machine runs it with), the input and its
preprocessing, the classes, the theoretical speed-up and the provenance (how
it was converted).  Without a model: the built-in one.  The file is fully
checked (checksums, shapes, limits) as the runtime loads it.
"""
import json
import sys

from . import entry, fail, parser


def _preprocess_text(pp, shape):
    c = shape[0]
    parts = []
    if pp.get("resize"):
        parts.append(f"resize to {pp['resize'][0]}x{pp['resize'][1]} "
                     f"({pp.get('resize_method', 'bilinear_align_corners')})")
    if pp.get("crop"):
        parts.append(f"centre crop {pp['crop'][0]}x{pp['crop'][1]}")
    parts.append(f"channels {pp.get('channel_order', 'bgr' if c == 3 else 'gray').upper()}")
    if pp.get("pixel_range", 255) == 1:
        parts.append("pixels in 0..1")
    m = pp.get("mean")
    if isinstance(m, dict) and m.get("type") == "pixel":
        parts.append("minus mean (" + ", ".join(f"{v:g}" for v in m.get("values", [])) + ")")
    elif isinstance(m, dict) and m.get("type") == "image":
        parts.append(f"minus mean image {m.get('tensor')}")
    if pp.get("std"):
        parts.append("divided by (" + ", ".join(f"{v:g}" for v in pp["std"]) + ")")
    if pp.get("scale", 1.0) != 1.0:
        parts.append(f"times {pp['scale']:g}")
    return ", ".join(parts)


def describe(model):
    """Everything qinfo prints, as a dict (the --json output)."""
    from .. import __version__, _kernels
    qf = model._qf
    costs = {c[0]: c[2:] for c in model.layer_costs(as_quantized=True)}
    nbytes = model.layer_bytes()
    layers = []
    for op in model.layers:
        w = op.L.get("weights") or {}
        row = {"name": op.name, "type": op.type, "output": list(op.out_shape)}
        if op.weighted:
            quant = w.get("mode") == "lut"
            row.update({"form": "quantized" if quant else "dense",
                        "d": getattr(op, "d", None) if quant else None,
                        "K": getattr(op, "K", None) if quant else None,
                        "M": getattr(op, "M", None) if quant else None,
                        "kernel": op.strategy, "bytes": nbytes[op.name],
                        # Winograd's form (2, 4 or 45: _kernels.WINO_FORMS)
                        "winograd_form": getattr(op, "wino_tile", None)
                        if op.strategy == "winograd" else None,
                        "tensors": {k: v for k, v in w.items() if k != "mode"}})
            dmac, tmac, lk = costs[op.name]
            row.update({"dense_macs": dmac, "table_macs": tmac, "lookups": lk})
        layers.append(row)
    dense_ops, q_ops = model.theoretical_ops()
    dense_bytes, stored = model.weight_bytes()
    meta = model.metadata
    names = model.class_names
    return {
        "qinfo": __version__, "file": model.path, "size_bytes": model.file_size,
        "format_version": qf.version, "tensors": len(qf.header["tensors"]),
        "input": list(model.input_shape),
        "preprocess": meta.get("preprocess") or {},
        "preprocess_text": _preprocess_text(meta.get("preprocess") or {}, model.input_shape),
        "classes": len(names) or model.blob_shapes[model.layers[-1].top[0]][0],
        "class_names_sample": [n.split(",")[0] for n in names[:4]],
        "layers": layers,
        "weights": {"dense_float32_bytes": dense_bytes, "stored_bytes": stored,
                    "compression": dense_bytes / stored if stored else 1.0},
        "dense_macs": dense_ops, "quantized_ops": q_ops,
        "theoretical_speedup": dense_ops / q_ops if q_ops else 1.0,
        "kernels_isa": _kernels.get_isa(), "mode": model.mode,
        "provenance": meta.get("provenance") or {},
    }


def _fmt_bytes(n):
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


def print_info(r, out=sys.stdout):
    p = lambda s="": out.write(s + "\n")        # noqa: E731
    p(f"{r['file']}: .qcnn version {r['format_version']}, {r['size_bytes']:,} bytes, "
      f"{r['tensors']} tensors, checksums ok")
    c, h, w = r["input"]
    sample = ", ".join(r["class_names_sample"])
    p(f"input          {c} x {h} x {w}; {r['classes']} classes"
      + (f" ({sample}, ...)" if sample else " (no class names)"))
    p(f"preprocessing  {r['preprocess_text']}")
    p()
    wn = max([5] + [len(L["name"]) for L in r["layers"]])
    hdr = (f"{'layer':<{wn}} {'type':<13} {'output':<14} {'stored as':<14} {'kernel here':<12} "
           f"{'bytes':>10}")
    p(hdr)
    p("-" * len(hdr))
    for L in r["layers"]:
        shape = "x".join(map(str, L["output"]))
        if "form" in L:
            form = f"d={L['d']} K={L['K']}" if L["form"] == "quantized" else "dense"
            kern = L["kernel"] + (str(L["winograd_form"]) if L.get("winograd_form") else "")
            p(f"{L['name']:<{wn}} {L['type']:<13} {shape:<14} {form:<14} {kern:<12} "
              f"{L['bytes']:>10,}")
        else:
            p(f"{L['name']:<{wn}} {L['type']:<13} {shape:<14}")
    p("-" * len(hdr))
    wt = r["weights"]
    p(f"weights        {_fmt_bytes(wt['stored_bytes'])} stored, {_fmt_bytes(wt['dense_float32_bytes'])} "
      f"as dense float32 ({wt['compression']:.1f}x smaller)")
    p(f"theoretical    {r['theoretical_speedup']:.2f}x fewer operations than the dense network "
      f"({r['dense_macs'] / 1e6:.0f}M multiply-adds vs {r['quantized_ops'] / 1e6:.0f}M)")
    p(f"kernels        {r['kernels_isa']} ({r['mode']} mode) on this machine")
    prov = r["provenance"]
    if prov:
        p()
        p("provenance")
        for k in ("source", "source_format", "architecture", "converter", "created"):
            if k in prov:
                p(f"  {k:<19} {prov[k]}")
        q = prov.get("quantization")
        if isinstance(q, dict):
            for k, v in q.items():
                if k == "layers" or (isinstance(q.get("layers"), dict) and k in q["layers"]):
                    continue            # per layer: in the table above (and in --json)
                if k == "predicted" and isinstance(v, dict):
                    v = {kk: v.get(kk) for kk in ("ms", "dense_ms", "speedup", "isa")}
                p(f"  {k:<19} {json.dumps(v, ensure_ascii=False)[:160]}")


@entry("qinfo")
def main(argv=None):
    ap = parser("qinfo", __doc__)
    ap.add_argument("model", nargs="?", help="the .qcnn model (default: the built-in one)")
    ap.add_argument("--json", action="store_true", help="everything as one JSON object")
    ap.add_argument("--exact", action="store_true",
                    help="show the kernels of exact mode (default: fast, as qrun)")
    args = ap.parse_args(argv)
    from ..errors import QEngineError
    from ..runtime import load
    path = args.model
    if path is None:
        from ..models import default_model
        path = default_model()
    try:
        with load(path, mode="exact" if args.exact else "fast") as model:
            r = describe(model)
    except QEngineError as e:
        fail("qinfo", str(e))
    if args.json:
        print(json.dumps(r, ensure_ascii=False, indent=1))
    else:
        print_info(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
