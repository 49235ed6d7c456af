#!/usr/bin/env python3
"""Export small CNNs from PyTorch as ONNX, convert them with qconvert (kept
dense) and compare qengine with ONNX Runtime on the same inputs.

    python tools/torch_export_check.py [--opset 17] [--keep DIR]

The models use what the ResNets in ../shared do not: an NHWC input permuted
to NCHW, batch norm left unfolded (do_constant_folding=False), ReLU6, leaky
ReLU, sigmoid, depthwise and grouped convolutions with asymmetric padding,
max pooling with ceil mode, average pooling without the padding, a constant
scale, concatenation, residual sums, x.view(x.size(0), -1), and a classifier
written as torch.matmul + bias (MatMul + Add) or nn.Linear (Gemm), softmax.
Needs torch (a CPU wheel) and onnxruntime; prints one line per model and
exits 1 when any differs by more than 1e-4 relative.
"""
import argparse
import os
import sys
import tempfile

import numpy as np


def models():
    import torch
    from torch import nn
    import torch.nn.functional as F

    class MobileBlock(nn.Module):
        """NHWC input, unfolded batch norm, ReLU6, depthwise, MatMul + Add."""

        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
            self.b1 = nn.BatchNorm2d(16)
            self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
            self.b2 = nn.BatchNorm2d(16)
            self.pw = nn.Conv2d(16, 24, 1)
            self.w = nn.Parameter(torch.randn(24, 10) * 0.1)
            self.bias = nn.Parameter(torch.randn(10) * 0.1)

        def forward(self, x):
            x = x.permute(0, 3, 1, 2)
            x = F.relu6(self.b1(self.c1(x)))
            x = F.relu6(self.b2(self.dw(x)))
            x = self.pw(x)
            x = F.adaptive_avg_pool2d(x, 1)
            x = x.view(x.size(0), -1)
            return torch.matmul(x, self.w) + self.bias

    class Mixed(nn.Module):
        """Grouped conv with asymmetric padding, leaky ReLU, sigmoid gate by a
        constant, ceil-mode max pooling, average pooling without the padding,
        concatenation, a residual sum, Linear and softmax."""

        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3)
            self.g = nn.Conv2d(8, 8, 3, groups=2)
            self.c2 = nn.Conv2d(8, 8, 1)
            self.fc = nn.Linear(16 * 7 * 7, 7)

        def forward(self, x):
            x = F.leaky_relu(self.c1(F.pad(x, (1, 0, 1, 0))), 0.2)
            y = self.g(F.pad(x, (1, 1, 1, 1)))
            x = x + torch.sigmoid(y) * 0.5
            x = F.relu(x + self.c2(x))
            a = F.max_pool2d(x, 3, 2, ceil_mode=True)
            b = F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False)
            x = torch.cat([a, b[:, :, :a.shape[2], :a.shape[3]]], 1)
            x = torch.flatten(x, 1)
            return F.softmax(self.fc(x), dim=1)

    return {"mobile_nhwc_matmul": (MobileBlock(), (2, 32, 32, 3)),
            "mixed_gemm_softmax": (Mixed(), (2, 3, 15, 15))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--keep", help="keep the .onnx and .qcnn files in this directory")
    args = ap.parse_args()
    import onnxruntime as ort
    import torch
    import qengine
    from qengine.convert import convert_onnx
    torch.manual_seed(0)
    out_dir = args.keep or tempfile.mkdtemp()
    os.makedirs(out_dir, exist_ok=True)
    worst = 0.0
    for name, (net, shape) in models().items():
        net.eval()
        for mod in net.modules():       # non-trivial batch-norm statistics
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.data.uniform_(0.5, 1.5)
                mod.bias.data.uniform_(-0.2, 0.2)
        path = os.path.join(out_dir, f"{name}.onnx")
        x = torch.randn(*shape)
        torch.onnx.export(net, (x,), path, opset_version=args.opset, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N"}},
                          do_constant_folding=False, dynamo=False)
        qpath = os.path.join(out_dir, f"{name}.qcnn")
        convert_onnx(path, qpath, keep_dense=("all",), force=True)
        m = qengine.load(qpath)
        xn = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
            None, {"x": xn})[0]
        nhwc = m.metadata["provenance"].get("input_layout", "").startswith("nhwc")
        got = m.forward(xn.transpose(0, 3, 1, 2) if nhwc else xn)
        rel = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
        worst = max(worst, rel)
        import onnx
        ops = sorted({n.op_type for n in onnx.load(path).graph.node})
        print(f"{name:<22} opset {args.opset}  {len(m.layers)} qengine layers "
              f"({', '.join(sorted({L.type for L in m.layers}))})  max rel diff {rel:.2e}\n"
              f"{'':<22} ONNX ops: {', '.join(ops)}")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
