"""qconvert: turn a model into a .qcnn file.

    qconvert DIR -o model.qcnn [--arch alexnet | --prototxt deploy.prototxt]
             [--labels class_names.txt] [--mean imagenet_mean.single.bin] [--force]

DIR holds a model quantized by the original Quantized-CNN code
(*.ctrdLst.NN.bin, *.asmtLst.NN.cbn, *.biasVec.NN.bin).  The output is
written atomically and an existing file is kept unless --force is given.
"""
import argparse
import os
import sys

from . import fail


def main(argv=None):
    ap = argparse.ArgumentParser(prog="qconvert", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="directory of the original Quantized-CNN files")
    ap.add_argument("-o", "--output", required=True, help="the .qcnn file to write")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--arch", help="built-in architecture: alexnet (default), caffenet, "
                                  "vgg_cnn_s, vgg16")
    g.add_argument("--prototxt", help="Caffe deploy.prototxt giving the architecture")
    ap.add_argument("--labels", help="class names, one per line (default: DIR/class_names.txt)")
    ap.add_argument("--mean", help="mean image .bin (default: DIR/imagenet_mean.single.bin)")
    ap.add_argument("--force", action="store_true", help="replace an existing output file")
    ap.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    args = ap.parse_args(argv)

    from ..errors import QEngineError
    from ..convert import convert_original
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    try:
        if os.path.isdir(args.src) and any(f.endswith(".caffemodel") for f in os.listdir(args.src)):
            fail("qconvert", f"{args.src}: quantizing dense Caffe models is not supported yet; "
                             f"this version packs models quantized by the original Quantized-CNN code")
        convert_original(args.src, args.output, arch=args.arch, prototxt=args.prototxt,
                         labels=args.labels, mean=args.mean, force=args.force, log=log)
    except QEngineError as e:
        fail("qconvert", str(e))
    except OSError as e:
        fail("qconvert", f"{e.filename or args.output}: {e.strerror}")
    except KeyboardInterrupt:
        fail("qconvert", "interrupted; no output written", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
