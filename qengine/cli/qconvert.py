"""qconvert: turn a model into a .qcnn file.

    qconvert DIR -o model.qcnn [--arch alexnet | --prototxt deploy.prototxt] [--labels F] [--mean F]
        DIR holds a model quantised by the original Quantized-CNN code
        (*.ctrdLst.NN.bin, *.asmtLst.NN.cbn, *.biasVec.NN.bin): packed as it is;
        or a dense one in its layout (*.convKnl.NN.bin, *.fcntWei.NN.bin,
        *.biasVec.NN.bin): quantised like a Caffe model.

    qconvert MODEL.qcnn -o other.qcnn --conv-k 16 --conv-subdim 4
        re-quantise a .qcnn with other settings: its dequantized weights are the
        dense model; preprocessing and class names carry over.

    qconvert model.onnx -o model.qcnn --pixel-range 1 --mean-pixel 0.485,0.456,0.406
            --std 0.229,0.224,0.225 --channel-order rgb --calib imgs/
        an ONNX model (exported from PyTorch, for example): product-quantised
        like a Caffe model; --keep-dense all keeps it dense.

    qconvert DIR -o model.qcnn                 (DIR holds one .prototxt and one .caffemodel)
    qconvert --prototxt deploy.prototxt --caffemodel weights.caffemodel -o model.qcnn
        a dense Caffe model: product-quantised (k-means per subspace), then, with
        --calib, refined by error correction on calibration images.

    qconvert DIR -o model.qcnn --calib imgs/ [--min-agreement 0.95]
        with calibration images and no settings, the converter chooses them:
        the fastest plan (each layer form timed on this machine) whose top-1
        agreement with the dense network, on calibration images held out from
        fitting, is at least 95%.  --speedup S asks for S times the dense
        network's speed instead; --finetune then trains codebooks and biases
        by distillation (pip install 'qengine[finetune]').

The output is written atomically; an existing file is kept unless --force.
"""
import sys

from . import fail, parser


def _layer_opts(specs):
    """--layer NAME:d=4,k=64 (repeatable) -> {NAME: {"subdim": 4, "k": 64}}"""
    out = {}
    for spec in specs or []:
        name, sep, rest = spec.partition(":")
        if not sep or not name:
            raise ValueError(f"--layer {spec!r}: expected NAME:d=D,k=K")
        opts = {}
        for kv in rest.split(","):
            k, eq, v = kv.partition("=")
            if not eq or k.strip() not in ("d", "k") or not v.strip().isdigit():
                raise ValueError(f"--layer {spec!r}: expected NAME:d=D,k=K")
            opts["subdim" if k.strip() == "d" else "k"] = int(v)
        out[name] = opts
    return out


def _floats(s, n=None, what="value"):
    try:
        vals = [float(v) for v in s.split(",")]
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated numbers, got {s!r}") from None
    if n is not None and len(vals) not in n:
        raise ValueError(f"{what}: expected {' or '.join(map(str, n))} numbers, got {len(vals)}")
    return vals


def main(argv=None):
    ap = parser("qconvert", __doc__)
    ap.add_argument("src", nargs="?", help="directory of the model files, an .onnx, or a .qcnn")
    ap.add_argument("-o", "--output", help="the .qcnn file to write")
    ap.add_argument("--export-onnx", metavar="OUT.onnx",
                    help="instead: write the dequantized network of a .qcnn as ONNX (to open in "
                         "Netron or check in ONNX Runtime)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--arch", help="built-in architecture for original Quantized-CNN files: "
                                  "alexnet (default), caffenet, vgg_cnn_s, vgg16")
    g.add_argument("--prototxt", help="Caffe deploy.prototxt giving the architecture")
    ap.add_argument("--caffemodel", help="dense Caffe weights to quantise")
    ap.add_argument("--labels", help="class names, one per line (default: DIR/class_names.txt)")
    ap.add_argument("--force", action="store_true", help="replace an existing output file")
    ap.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    pre = ap.add_argument_group("preprocessing stored in the model")
    pre.add_argument("--mean", help="mean image (.npy [C,H,W] or original .bin)")
    pre.add_argument("--mean-pixel", help="per-channel mean, e.g. 104,117,123")
    pre.add_argument("--scale", type=float, help="multiply after subtracting the mean")
    pre.add_argument("--std", help="per-channel divisor after the mean, e.g. 0.229,0.224,0.225")
    pre.add_argument("--pixel-range", type=int, choices=[255, 1],
                     help="pixel values the network expects: 255 (default: 0..255) or 1 "
                          "(divided by 255 first, as PyTorch's ToTensor; --mean-pixel is then "
                          "in 0..1 too)")
    pre.add_argument("--channel-order", choices=["bgr", "rgb", "gray"],
                     help="channel order the network expects (default bgr, gray for 1 channel)")
    pre.add_argument("--resize", type=int, help="resize images to this square size first")
    pre.add_argument("--crop", type=int, help="centre crop (default: the input size)")
    q = ap.add_argument_group("quantisation of dense models")
    q.add_argument("--conv-subdim", type=int, help="convolution subspace dimension (default 8)")
    q.add_argument("--conv-k", type=int, help="convolution codebook size (default 128)")
    q.add_argument("--fc-subdim", type=int, help="fully-connected subspace dimension (default 4)")
    q.add_argument("--fc-k", type=int, help="fully-connected codebook size (default 32)")
    q.add_argument("--layer", action="append", metavar="NAME:d=D,k=K",
                   help="per-layer override (repeatable)")
    q.add_argument("--keep-dense", action="append", default=[], metavar="LAYER",
                   help="keep a layer's dense weights (repeatable; 'all' for a dense model)")
    q.add_argument("--calib", help="calibration images (a directory) or inputs (.npy [N,C,H,W]) "
                                   "for choosing the settings, error correction and the "
                                   "agreement check; without it, plain k-means")
    q.add_argument("--calib-count", type=int, default=256,
                   help="calibration images to use (default 256)")
    q.add_argument("--speedup", type=float, metavar="S",
                   help="pick each layer's d and K (or keep it dense) so that the model runs S "
                        "times faster than the same network dense (each layer form timed on "
                        "this machine), with the least response error on the calibration "
                        "inputs (see README); --layer and --keep-dense still apply")
    q.add_argument("--min-agreement", type=float, metavar="A",
                   help="with --calib and no settings given: the fastest plan whose top-1 "
                        "agreement with the dense network, on calibration images held out "
                        "from fitting, is at least A (default 0.95, about one point of top-1)")
    q.add_argument("--finetune", type=int, nargs="?", const=2, metavar="EPOCHS",
                   help="after error correction, fine-tune codebooks and biases so the outputs "
                        "match the dense network's on the calibration images (distillation; "
                        "needs pip install 'qengine[finetune]'); EPOCHS default 2")
    q.add_argument("--finetune-lr", type=float, default=1e-4, metavar="LR",
                   help="fine-tuning learning rate (Adam, default 1e-4)")
    q.add_argument("--plan-on", choices=["time", "operations"], default="time",
                   help="price plans by each layer form's time measured on this machine "
                        "(default) or by theoretical operations (multiply-adds + lookups)")
    q.add_argument("--input-shape", metavar="C,H,W",
                   help="input size of an ONNX model whose size is not fixed")
    q.add_argument("--iters", type=int, default=25, help="k-means iterations (default 25)")
    q.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = ap.parse_args(argv)

    from ..errors import QEngineError
    from .. import convert
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    log.quiet = args.quiet
    if (args.output is None) == (args.export_onnx is None):
        ap.error("give -o OUT.qcnn, or --export-onnx OUT.onnx with a .qcnn")
    try:
        from ..files import check_destination
        if args.export_onnx:
            from ..export_onnx import export
            from ..frontends import detect
            if detect(args.src).kind != "qcnn":
                fail("qconvert", f"{args.src}: --export-onnx reads a .qcnn", 2)
            export(args.src, args.export_onnx, args.force, log)
            return 0
        check_destination(args.output, args.force)     # before any long work
        if args.finetune is not None:
            if not args.calib:
                fail("qconvert", "--finetune needs calibration images (--calib)", 2)
            from ..finetune import _torch
            _torch()
        from ..errors import InputError
        from ..frontends import detect
        try:
            source = detect(args.src, args.prototxt, args.caffemodel)
        except InputError as e:
            fail("qconvert", str(e), 2)
        if args.arch and source.kind not in ("original", "original-dense"):
            fail("qconvert", f"{args.src}: a {source.kind} source carries its own architecture; "
                             f"--arch names the architecture of original Quantized-CNN "
                             f"binaries only", 2)
        shape = None
        if args.input_shape:
            shape = [int(v) for v in _floats(args.input_shape, (3,), "--input-shape")]
        if source.kind == "original":
            convert.convert(source, args.output, arch=args.arch, labels=args.labels,
                            mean=args.mean, force=args.force, log=log)
        else:
            convert.convert(source, args.output, arch=args.arch, input_shape=shape,
                            **_quantize_options(args, source, log))
        return 0
    except ValueError as e:
        fail("qconvert", str(e), 2)
    except QEngineError as e:
        fail("qconvert", str(e))
    except OSError as e:
        fail("qconvert", f"{e.filename or args.output or args.export_onnx}: {e.strerror}")
    except KeyboardInterrupt:
        fail("qconvert", "interrupted; no output written", 130)
    return 0


def _quantize_options(args, source, log):
    """Keyword options of convert.quantize_model() from the command line: the
    preprocessing stored in the model, calibration inputs (preprocessed as the
    model will be: by these options, or by a .qcnn source's own) and the
    quantisation settings."""
    preprocess = {"mean": args.mean, "scale": args.scale, "channel_order": args.channel_order,
                  "resize": args.resize, "crop": args.crop, "pixel_range": args.pixel_range}
    if args.mean_pixel:
        preprocess["mean_pixel"] = _floats(args.mean_pixel, what="--mean-pixel")
    if args.std:
        preprocess["std"] = _floats(args.std, what="--std")
    calib = None
    own = source.kind == "qcnn" and all(v is None for v in preprocess.values())
    if args.calib and own:
        calib = _calibration_from_qcnn(args.calib, source.path, args.calib_count, log)
    elif args.calib:
        def calib(input_shape):        # called once the model's input shape is known
            return load_calibration(args.calib, input_shape, preprocess, args.calib_count, log)
    return dict(conv_subdim=args.conv_subdim, conv_k=args.conv_k, fc_subdim=args.fc_subdim,
                fc_k=args.fc_k, layer_opts=_layer_opts(args.layer), keep_dense=args.keep_dense,
                labels=args.labels, preprocess=preprocess, iters=args.iters, seed=args.seed,
                calib=calib, speedup=args.speedup, force=args.force, log=log,
                min_agreement=args.min_agreement, plan_on=args.plan_on,
                finetune=None if args.finetune is None else
                {"epochs": args.finetune, "lr": args.finetune_lr},
                progress=_bar(log))


def _calibration_from_qcnn(src, qcnn, count, log):
    """Calibration inputs for re-quantising a .qcnn: an .npy, or images
    preprocessed by the model's own preprocessing."""
    from ..datasets import calibration_inputs
    from ..runtime import Model
    model = Model(qcnn)
    return calibration_inputs(src, model.input_shape, model.preprocessor, count, log, _bar(log))


def load_calibration(src, shape, preprocess, count, log):
    """Calibration inputs [N, C, H, W] for a network of input `shape`: an .npy,
    or images preprocessed as the model's."""
    from ..convert import make_preprocess
    from ..datasets import calibration_inputs
    from ..preprocess import Preprocessor
    shape = tuple(shape)
    pp = None
    if not src.endswith(".npy"):
        tensors = {}
        pre = make_preprocess(shape, tensors=tensors, **{k: v for k, v in preprocess.items()})
        mean = tensors["preprocess.mean"].array if "preprocess.mean" in tensors else None
        pp = Preprocessor(pre, shape, mean)
    return calibration_inputs(src, shape, pp, count, log, _bar(log))


def _bar(log):
    """A progress-bar factory (shown on a terminal), none when quiet."""
    from ..progress import Progress
    # on a terminal a bar; in a log (not a terminal) a line every 15 s of a long step
    return None if getattr(log, "quiet", False) else (
        lambda label, total: Progress(label, total, log_every=15.0))


if __name__ == "__main__":
    sys.exit(main())
