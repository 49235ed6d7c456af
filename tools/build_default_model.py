"""Rebuild the default model shipped in models/: SqueezeNet v1.0 quantized by
qconvert at the plan that keeps its accuracy (--speedup 1.75 priced by
operations, so the plan does not depend on the machine's timings; error
correction on 128 calibration images).

    python tools/build_default_model.py [--shared ../shared] [-o models/squeezenet_v1.0.qcnn]

It runs exactly this (about 4 minutes on 2 cores):

    qconvert SHARED/data/caffe/squeezenet_v1.0 -o models/squeezenet_v1.0.qcnn \\
        --mean-pixel 104,117,123 --resize 256 --crop 227 \\
        --labels SHARED/data/ilsvrc12-val/synset_words.txt \\
        --calib SHARED/data/imagenet-train-1000 --calib-count 128 \\
        --speedup 1.75 --plan-on operations --force

tests/test_first_hour.py measures the result against the dense SqueezeNet on
the shared ImageNet images.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(shared, output):
    data = os.path.join(shared, "data")
    return [os.path.join(data, "caffe", "squeezenet_v1.0"), "-o", output,
            "--mean-pixel", "104,117,123", "--resize", "256", "--crop", "227",
            "--labels", os.path.join(data, "ilsvrc12-val", "synset_words.txt"),
            "--calib", os.path.join(data, "imagenet-train-1000"), "--calib-count", "128",
            "--speedup", "1.75", "--plan-on", "operations", "--force"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default=os.environ.get("QENGINE_SHARED",
                                                       os.path.join(ROOT, "..", "shared")))
    ap.add_argument("-o", "--output", default=os.path.join(ROOT, "models",
                                                           "squeezenet_v1.0.qcnn"))
    args = ap.parse_args(argv)
    from qengine.cli.qconvert import main as qconvert
    return qconvert(command(args.shared, args.output))


if __name__ == "__main__":
    sys.exit(main())
