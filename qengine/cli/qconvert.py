"""qconvert: turn a model into a .qcnn file.

    qconvert DIR -o model.qcnn [--arch alexnet | --prototxt deploy.prototxt] [--labels F] [--mean F]
        DIR holds a model quantised by the original Quantized-CNN code
        (*.ctrdLst.NN.bin, *.asmtLst.NN.cbn, *.biasVec.NN.bin): packed as it is;
        or a dense one in its layout (*.convKnl.NN.bin, *.fcntWei.NN.bin,
        *.biasVec.NN.bin): quantised like a Caffe model.

    qconvert MODEL.qcnn -o other.qcnn --conv-k 16 --conv-subdim 4
        re-quantise a .qcnn with other settings: its dequantized weights are the
        dense model; preprocessing and class names carry over.

    qconvert DIR -o model.qcnn                 (DIR holds one .prototxt and one .caffemodel)
    qconvert --prototxt deploy.prototxt --caffemodel weights.caffemodel -o model.qcnn
        a dense Caffe model: product-quantised (k-means per subspace), then, with
        --calib, refined by error correction on calibration images.

The output is written atomically; an existing file is kept unless --force.
"""
import argparse
import sys

from . import fail


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
    ap = argparse.ArgumentParser(prog="qconvert", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", nargs="?", help="directory of the model files, or a .qcnn")
    ap.add_argument("-o", "--output", required=True, help="the .qcnn file to write")
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
    pre.add_argument("--channel-order", choices=["bgr", "rgb", "gray"],
                     help="channel order the network expects (default bgr, gray for 1 channel)")
    pre.add_argument("--resize", type=int, help="resize images to this square size first")
    pre.add_argument("--crop", type=int, help="centre crop (default: the input size)")
    q = ap.add_argument_group("quantisation of dense models")
    q.add_argument("--conv-subdim", type=int, default=8, help="convolution subspace dimension (8)")
    q.add_argument("--conv-k", type=int, default=128, help="convolution codebook size (128)")
    q.add_argument("--fc-subdim", type=int, default=4, help="fully-connected subspace dimension (4)")
    q.add_argument("--fc-k", type=int, default=32, help="fully-connected codebook size (32)")
    q.add_argument("--layer", action="append", metavar="NAME:d=D,k=K",
                   help="per-layer override (repeatable)")
    q.add_argument("--keep-dense", action="append", default=[], metavar="LAYER",
                   help="keep a layer's dense weights (repeatable; 'all' for a dense model)")
    q.add_argument("--calib", help="calibration images (a directory) or inputs (.npy [N,C,H,W]) "
                                   "for error correction; without it, plain k-means")
    q.add_argument("--calib-count", type=int, default=256,
                   help="calibration images to use (default 256)")
    q.add_argument("--speedup", type=float, metavar="S",
                   help="pick each layer's d and K (or keep it dense) for a theoretical speed-up "
                        "of S over the dense network, with the least response error on the "
                        "calibration inputs (see README); --layer and --keep-dense still apply")
    q.add_argument("--iters", type=int, default=25, help="k-means iterations (default 25)")
    q.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = ap.parse_args(argv)

    from ..errors import QEngineError
    from .. import convert
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    try:
        from ..files import check_destination
        check_destination(args.output, args.force)     # before any long work
        from ..errors import InputError
        from ..frontends import detect
        try:
            source = detect(args.src, args.prototxt, args.caffemodel)
        except InputError as e:
            fail("qconvert", str(e), 2)
        if source.kind == "qcnn":
            if args.arch:
                fail("qconvert", f"{args.src}: a .qcnn carries its own architecture; "
                                 f"--arch, --prototxt and --caffemodel do not apply", 2)
            opts = _quantize_options(args, None, log, qcnn_source=args.src)
            convert.convert_qcnn(args.src, args.output, **opts)
        elif source.kind == "caffe":
            convert.convert_caffe(source.prototxt, source.caffemodel, args.output,
                                  **_quantize_options(args, source.prototxt, log))
        elif source.kind == "original-dense":
            arch_file = args.prototxt or convert.preset_path(args.arch or "alexnet")
            convert.convert_original_dense(args.src, args.output, arch=args.arch,
                                           prototxt=args.prototxt,
                                           **_quantize_options(args, arch_file, log))
        else:
            convert.convert_original(args.src, args.output, arch=args.arch, prototxt=args.prototxt,
                                     labels=args.labels, mean=args.mean, force=args.force, log=log)
        return 0
    except ValueError as e:
        fail("qconvert", str(e), 2)
    except QEngineError as e:
        fail("qconvert", str(e))
    except OSError as e:
        fail("qconvert", f"{e.filename or args.output}: {e.strerror}")
    except KeyboardInterrupt:
        fail("qconvert", "interrupted; no output written", 130)
    return 0


def _quantize_options(args, arch_file, log, qcnn_source=None):
    """Keyword options of convert.quantize_model() from the command line: the
    preprocessing stored in the model, calibration inputs (preprocessed as the
    network `arch_file` describes, or as the .qcnn `qcnn_source` does) and the
    quantisation settings."""
    from ..progress import Progress
    preprocess = {"mean": args.mean, "scale": args.scale, "channel_order": args.channel_order,
                  "resize": args.resize, "crop": args.crop}
    if args.mean_pixel:
        preprocess["mean_pixel"] = _floats(args.mean_pixel, what="--mean-pixel")
    calib = None
    if args.calib and qcnn_source:
        calib = _calibration_from_qcnn(args.calib, qcnn_source, args.calib_count, log)
    elif args.calib:
        calib = load_calibration(args.calib, arch_file, preprocess, args.calib_count, log)
    return dict(conv_subdim=args.conv_subdim, conv_k=args.conv_k, fc_subdim=args.fc_subdim,
                fc_k=args.fc_k, layer_opts=_layer_opts(args.layer), keep_dense=args.keep_dense,
                labels=args.labels, preprocess=preprocess, iters=args.iters, seed=args.seed,
                calib=calib, speedup=args.speedup, force=args.force, log=log,
                progress=None if args.quiet else (lambda label, total: Progress(label, total)))


def _calibration_from_qcnn(src, qcnn, count, log):
    """Calibration inputs for re-quantising a .qcnn: an .npy, or images
    preprocessed by the model's own preprocessing."""
    from ..datasets import calibration_inputs
    from ..runtime import Model
    model = Model(qcnn)
    return calibration_inputs(src, model.input_shape, model.preprocessor, count, log)


def load_calibration(src, prototxt, preprocess, count, log):
    """Calibration inputs [N, C, H, W]: an .npy, or images preprocessed as the model's."""
    from ..convert import make_preprocess, read_prototxt
    from ..datasets import calibration_inputs
    from ..preprocess import Preprocessor
    graph = read_prototxt(prototxt)
    shape = tuple(graph["input"]["shape"])
    pp = None
    if not src.endswith(".npy"):
        tensors = {}
        pre = make_preprocess(shape, tensors=tensors, **{k: v for k, v in preprocess.items()})
        mean = tensors["preprocess.mean"].array if "preprocess.mean" in tensors else None
        pp = Preprocessor(pre, shape, mean)
    return calibration_inputs(src, shape, pp, count, log)


if __name__ == "__main__":
    sys.exit(main())
