"""Dense baselines for `qbench --compare` and tools/: the same network with the
dequantized weights, run by numpy (always), by ONNX Runtime (fp32, and its
dynamic int8 quantisation) and by OpenVINO (fp32, and int8 by NNCF
post-training quantisation on calibration inputs) where they are installed."""
import numpy as np

from . import reference
from .export_onnx import onnx_model
from .layers import pool_output


def _maxpool(x, kernel, stride, pad):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    n, c, h, w = x.shape
    oh, ow = pool_output(h, kh, sh, ph), pool_output(w, kw, sw, pw)
    eh, ew = (oh - 1) * sh + kh - h - ph, (ow - 1) * sw + kw - w - pw
    xp = np.pad(x, ((0, 0), (0, 0), (ph, max(eh, 0)), (pw, max(ew, 0))), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    return win[:, :, ::sh, ::sw][:, :, :oh, :ow].max(axis=(4, 5))


def _conv(x, w, b, s, p, g):
    n, c, h, wd = x.shape
    cout, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    oh, ow = (h + 2 * p - kh) // s + 1, (wd + 2 * p - kw) // s + 1
    og = cout // g
    out = np.empty((n, cout, oh * ow), np.float32)
    for gi in range(g):
        cols = np.lib.stride_tricks.sliding_window_view(xp[:, gi * cg:(gi + 1) * cg], (kh, kw),
                                                        axis=(2, 3))[:, :, ::s, ::s][:, :, :oh, :ow]
        cols = np.ascontiguousarray(cols.transpose(0, 1, 4, 5, 2, 3)).reshape(n, cg * kh * kw, -1)
        out[:, gi * og:(gi + 1) * og] = np.matmul(w[gi * og:(gi + 1) * og].reshape(og, -1), cols)
    out += b[None, :, None]
    return out.reshape(n, cout, oh, ow)


def _pool_fast(p, xs, wb):
    x = xs[0]
    if p["global"]:
        return (x.mean(axis=(2, 3), keepdims=True) if p["pool"] == "AVE"
                else x.max(axis=(2, 3), keepdims=True))
    if p["pool"] == "MAX" and p.get("ceil", True):
        return _maxpool(x, p["kernel"], p["stride"], p["pad"])
    return reference.LAYERS["Pooling"](p, xs, wb)


# the reference's layers, with the heavy ones done the way a numpy user would
NUMPY_LAYERS = {
    "Convolution": lambda p, xs, wb: _conv(xs[0], wb[0], wb[1], p["stride"], p["pad"], p["group"]),
    "InnerProduct": lambda p, xs, wb: xs[0].reshape(xs[0].shape[0], -1) @ wb[0].T + wb[1],
    "ReLU": lambda p, xs, wb: (np.maximum(xs[0], 0) if p["negative_slope"] == 0 else
                               np.where(xs[0] > 0, xs[0], xs[0] * np.float32(p["negative_slope"]))),
    "Pooling": _pool_fast,
}


def numpy_runner(graph, weights):
    """A callable x -> output: im2col + GEMM (numpy's BLAS) for conv and fc."""
    return lambda x: reference.forward(graph, weights, x, layers=NUMPY_LAYERS)


def onnxruntime_runners(graph, weights, batch=1, threads=1, int8=True):
    """{name: callable} for ONNX Runtime fp32 (and dynamic int8); {} if not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {}
    import os
    import tempfile
    model = onnx_model(graph, weights, batch)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    runners = {}

    def runner(sess):
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]

    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    runners["onnxruntime fp32"] = runner(sess)
    if int8:
        try:
            import logging
            from onnxruntime.quantization import QuantType, quantize_dynamic
            logging.getLogger().setLevel(logging.ERROR)
            with tempfile.TemporaryDirectory() as d:
                src, dst = os.path.join(d, "m.onnx"), os.path.join(d, "m8.onnx")
                with open(src, "wb") as f:
                    f.write(model.SerializeToString())
                quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
                with open(dst, "rb") as f:
                    data = f.read()
            sess8 = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
            runners["onnxruntime int8 (dynamic)"] = runner(sess8)
        except Exception as e:  # quantisation tooling is optional and version-dependent
            runners["onnxruntime int8 (dynamic)"] = e
    return runners


def openvino_runners(graph, weights, batch=1, threads=1, calib=None):
    """{name: callable} for OpenVINO fp32 and, with calibration inputs calib
    [N, C, H, W] (preprocessed as the model's), int8 by NNCF post-training
    quantisation (its default: activations and weights to int8 wherever
    OpenVINO's CPU plugin has int8 kernels); {} if OpenVINO is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return {}
    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
           "PERFORMANCE_HINT": "LATENCY"}

    def runner(m):
        req = core.compile_model(m, "CPU", cfg).create_infer_request()
        return lambda x: next(iter(req.infer({0: x}).values()))

    model = core.read_model(onnx_model(graph, weights, batch).SerializeToString(), b"")
    runners = {"openvino fp32": runner(model)}
    if calib is not None:
        try:
            import logging
            import nncf
            logging.getLogger("nncf").setLevel(logging.ERROR)
            cal = np.ascontiguousarray(calib, np.float32)
            n = (len(cal) // batch) * batch
            items = [cal[i:i + batch] for i in range(0, max(n, batch), batch)] if n else \
                [np.repeat(cal[:1], batch, 0)]
            q = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items) * batch)
            runners["openvino int8 (nncf)"] = runner(q)
        except ImportError:
            runners["openvino int8 (nncf)"] = ImportError("nncf not installed")
        except Exception as e:  # quantisation tooling is optional and version-dependent
            runners["openvino int8 (nncf)"] = e
    return runners


def compare(model, x, runs, warmup=2, calib=None, dense=None):
    """Time qengine and every available dense baseline on x, interleaved run by run
    (calib: calibration inputs for the int8 baselines that need them; dense: the
    same network with dense weights as a loaded qengine Model, the real speed-up's
    baseline).  Returns [(name, median ms per image, max |diff| against qengine's
    output or an error message)], qengine first."""
    weights = reference.model_weights(model)
    runners = {"qengine " + model.mode: model.forward}
    if dense is not None:
        runners["qengine dense (same network)"] = dense.forward
    threads = max(1, int(model.threads))
    for name, fn in onnxruntime_runners(model.graph, weights, batch=x.shape[0],
                                        threads=threads).items():
        runners[name] = fn
    for name, fn in openvino_runners(model.graph, weights, batch=x.shape[0], threads=threads,
                                     calib=calib).items():
        runners[name] = fn
    runners["numpy im2col+GEMM fp32"] = numpy_runner(model.graph, weights)
    ref = model.forward(x)
    times = {n: [] for n in runners}
    diffs = {}
    for n, fn in runners.items():
        if isinstance(fn, Exception):
            diffs[n] = f"unavailable: {fn}"
            continue
        y = np.asarray(fn(x)).reshape(ref.shape)
        diffs[n] = float(np.abs(y - ref).max())
        for _ in range(warmup):
            fn(x)
    live = {n: fn for n, fn in runners.items() if not isinstance(fn, Exception)}
    times.update(interleaved_times(live, x, runs))
    return [(n, float(np.median(times[n])) * 1e3 / x.shape[0] if times[n] else None, diffs[n])
            for n in runners]


def interleaved_times(runners, x, runs, seed=0):
    """{name: [seconds of each run]}: `runs` rounds of every runner on x, each
    round in a new random order (seeded), so that each runner follows every
    other one about equally often: a fixed order, or a rotated one, would
    always hand the same runner the caches one particular other runner left,
    e.g. a numpy GEMM's hundreds of megabytes."""
    import time
    rng = np.random.default_rng(seed)
    names = list(runners)
    times = {n: [] for n in names}
    for _ in range(runs):
        for i in rng.permutation(len(names)):
            t0 = time.perf_counter()
            runners[names[i]](x)
            times[names[i]].append(time.perf_counter() - t0)
    return times
