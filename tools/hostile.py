#!/usr/bin/env python3
"""Hostile inputs under a memory cap: each class of input that once exhausted
memory or time, built here and handed to the CLIs or the API in a child process
limited to --cap-gib of address space (RLIMIT_AS).  Each must end in <= 2 s
with a QEngineError (exit 1, one line on stderr, no traceback) - or, for inputs
that are legitimate once handled well (a codebook shared by 40 layers, a large
16-bit image), with a clean result (no time bound: they do real work).
--cap-gib 0 runs without a cap (the sparse-file models then reach the budget
checks instead of failing to map).

    python tools/hostile.py [--cap-gib 1] [--json]

Prints per input: outcome, seconds, peak RSS and the first line of stderr.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def build_cases(d):
    """[(name, argv, expect)]: expect "error" (a QEngineError) or "ok"."""
    import struct
    import zlib

    import numpy as np
    from PIL import Image

    from qengine import format as qformat
    from test_hardening import (huge_kernel_model, live_activations_model, one_conv_model,
                                write_model)
    from test_quantize import field

    def py(code):
        """A Python call whose QEngineError prints one line, as the CLIs do."""
        return [sys.executable, "-c",
                "import sys\nfrom qengine import QEngineError\ntry:\n    " + code +
                "\nexcept QEngineError as e:\n    print('error:', e, file=sys.stderr)\n"
                "    sys.exit(1)\n"]
    img = os.path.join(d, "photo.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    cases = []

    def qrun(name, model, expect="error", image=img):
        cases.append((name, ["qrun", model, image], expect))

    qrun("conv stride 4096 (4 GiB scratch)",
         one_conv_model(os.path.join(d, "stride.qcnn"), (1, 4096, 4096), 1, 1, s=4096))
    qrun("20 live activations (1.25 GiB)",
         live_activations_model(os.path.join(d, "live.qcnn"), {"channel_order": "gray"}))
    # one qdelta2d codebook (256 MiB decoded, ~1000:1) named by 40 layers
    cb = np.zeros((1024, 256, 256), np.float32)
    tensors = {"cb": qformat.Tensor(cb, encoding="qdelta2d", step=1 / 64),
               "idx": np.zeros((512, 1024), np.uint8)}
    g = {"input": {"name": "data", "shape": [1, 512, 512]}, "layers": [
        {"name": f"f{i}", "type": "InnerProduct", "bottom": ["data"], "top": [f"f{i}"],
         "params": {"num_output": 512, "bias_term": False},
         "weights": {"mode": "lut", "codebook": "cb", "indices": "idx"}} for i in range(40)]}
    qrun("qdelta2d codebook shared by 40 layers",
         write_model(os.path.join(d, "shared.qcnn"), g, tensors,
                     preprocess={"channel_order": "gray"}), expect="ok")
    qrun("input [3, 2^20, 2^20]",
         one_conv_model(os.path.join(d, "input.qcnn"), (3, 1 << 20, 1 << 20), 1, 1))
    qrun("kernel 2048, pad 2047 (hours per image)",
         huge_kernel_model(os.path.join(d, "work.qcnn"), {"channel_order": "gray"}))
    # FC with 2^26 inputs, d=1, K=32: an 8 GiB codebook in a sparse file
    path = os.path.join(d, "fc.qcnn")
    M, K = 1 << 26, 32
    entries = {"cb": {"dtype": "f32", "shape": [M, K, 1], "offset": 0, "nbytes": M * K * 4,
                      "crc32": 0},
               "idx": {"dtype": "u8", "shape": [16, M], "offset": M * K * 4, "nbytes": 16 * M,
                       "crc32": 0}}
    graph = {"input": {"name": "data", "shape": [1, 8192, 8192]},
             "layers": [{"name": "fc", "type": "InnerProduct", "bottom": ["data"],
                         "top": ["fc"], "params": {"num_output": 16, "bias_term": False},
                         "weights": {"mode": "lut", "codebook": "cb", "indices": "idx"}}]}
    hb = json.dumps({"format": "qcnn", "version": 1, "metadata": {"graph": graph},
                     "tensors": entries, "data_len": M * K * 4 + 16 * M}).encode()
    doff = (32 + len(hb) + 63) // 64 * 64
    with open(path, "wb") as f:
        f.write(struct.pack("<8sIIQQ", qformat.MAGIC, 1, zlib.crc32(hb), len(hb), doff) + hb)
        f.truncate(doff + M * K * 4 + 16 * M)
    qrun("FC 2^26 inputs, d=1, K=32 (sparse 9 GiB file)", path)
    # a prototxt of tiny fields at the 16 MB limit
    proto = os.path.join(d, "tiny.prototxt")
    with open(proto, "w") as f:
        f.write("a: 1 b: 2.5\n" * (16_000_000 // 12))
    cases.append(("prototxt 16 MB of tiny fields",
                  py("import qengine.convert as c; c.read_prototxt(%r)" % proto), "error"))
    small = os.path.join(d, "small.prototxt")
    with open(small, "w") as f:
        f.write('input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
                'layer { name: "l0" type: "Convolution" bottom: "data" top: "l0" '
                'convolution_param { num_output: 4 kernel_size: 3 } }\n')
    # a caffemodel of empty blobs
    cm = os.path.join(d, "empty.caffemodel")
    body = field(2, 2, b"Convolution") + field(7, 2, b"") * 64
    with open(cm, "wb") as f:
        for i in range(20000):
            f.write(field(100, 2, field(1, 2, b"l%d" % i) + body))
    cases.append(("caffemodel of empty blobs",
                  ["qconvert", "--prototxt", small, "--caffemodel", cm, "-o",
                   os.path.join(d, "out.qcnn")], "error"))
    cases.append(("caffemodel of empty blobs (reader)",
                  py("from qengine.readers.caffemodel import read_caffemodel as r; r(%r)" % cm),
                  "error"))
    # a 16 MiB header of [] (over 2^20 JSON arrays)
    hb = json.dumps({"format": "qcnn", "version": 1,
                     "metadata": {"x": [[]] * 5_000_000}, "tensors": {}, "data_len": 0}).encode()
    hb = hb[:16 << 20] if len(hb) > 16 << 20 else hb
    path = os.path.join(d, "brackets.qcnn")
    doff = (32 + len(hb) + 63) // 64 * 64
    with open(path, "wb") as f:
        f.write(struct.pack("<8sIIQQ", qformat.MAGIC, 1, zlib.crc32(hb), len(hb), doff) + hb)
        f.write(b"\0" * (doff - 32 - len(hb)))
    qrun("header of 2^22 empty arrays", path)
    # a sparse 1 GiB gap between tensors
    gap = 1 << 30
    data = np.arange(16, dtype="<f4").tobytes()
    hb = json.dumps({"format": "qcnn", "version": 1, "metadata": {},
                     "tensors": {"t": {"dtype": "f32", "shape": [16], "offset": gap,
                                       "nbytes": 64, "crc32": zlib.crc32(data)}},
                     "data_len": gap + 64}).encode()
    doff = (32 + len(hb) + 63) // 64 * 64
    path = os.path.join(d, "gap.qcnn")
    with open(path, "wb") as f:
        f.write(struct.pack("<8sIIQQ", qformat.MAGIC, 1, zlib.crc32(hb), len(hb), doff) + hb)
        f.seek(doff + gap)
        f.write(data)
    qrun("sparse 1 GiB gap between tensors", path)
    # a large 16-bit PNG (80 megapixels, just under the pixel limit)
    big = os.path.join(d, "deep.png")
    a = np.zeros((8000, 10000), np.uint16)
    a[::97] = 40000
    Image.fromarray(a).save(big, compress_level=1)
    good = os.path.join(d, "good.qcnn")
    from modelkit import build
    build(good)
    cases.append(("80 MP 16-bit PNG", ["qrun", good, big], "ok"))
    # preprocessing metadata: NaN scale
    nan = os.path.join(d, "nan.qcnn")
    build(nan, meta_extra={"preprocess": {"scale": float("nan")}})
    qrun("NaN preprocessing scale", nan)
    fifo = os.path.join(d, "fifo")
    os.mkfifo(fifo)
    qrun("FIFO as the model", fifo)
    qrun("FIFO as the image", good, image=fifo)
    return cases


def run(argv, cap, timeout=30):
    def limit():
        if cap:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as errf:
        p = subprocess.Popen(argv, stdout=out, stderr=errf, text=True, preexec_fn=limit)
        deadline = t0 + timeout
        while True:                 # reap it ourselves: wait4 gives this child's peak RSS
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                p.kill()
                os.wait4(p.pid, 0)
                return {"outcome": "hang", "seconds": timeout, "stderr": ""}
            time.sleep(0.01)
        p.returncode = os.waitstatus_to_exitcode(status)
        secs = time.perf_counter() - t0
        errf.seek(0)
        err = errf.read()
    return {"code": p.returncode, "seconds": round(secs, 2), "stderr_lines": len(err.splitlines()),
            "traceback": "Traceback" in err,
            "stderr": err.strip().splitlines()[0][:160] if err.strip() else "",
            "peak_rss_mib": ru.ru_maxrss // 1024}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cap-gib", type=float, default=1.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cap = int(args.cap_gib * (1 << 30))
    rows, bad = [], 0
    with tempfile.TemporaryDirectory(prefix="qhostile-") as d:
        for name, argv, expect in build_cases(d):
            r = run(argv, cap)
            if "outcome" not in r:
                if expect == "ok":
                    r["outcome"] = "ok" if r["code"] == 0 and not r["traceback"] else "FAIL"
                else:
                    r["outcome"] = ("refused" if r["code"] == 1 and r["stderr_lines"] == 1
                                    and not r["traceback"] else "FAIL")
            if r["outcome"] in ("FAIL", "hang") or (expect == "error" and r["seconds"] > 2):
                bad += 1
            r["input"] = name
            rows.append(r)
            if not args.json:
                print(f"{name:45s} {r['outcome']:8s} {r['seconds']:6.2f} s "
                      f"{r.get('peak_rss_mib', 0):5d} MiB  {r.get('stderr', '')[:100]}")
    if args.json:
        print(json.dumps(rows, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
