"""Distillation fine-tuning of a product-quantized network (qconvert --finetune).

After error correction every layer fits its own response; fine-tuning then
trains the whole network end to end, as in Stock et al., "And the bit goes
down" (ICLR 2020): the dense network is the teacher, the quantized one the
student, and on unlabelled calibration images (random crops and flips) the
student's codebooks and biases follow the gradient of the KL divergence
between the teacher's and the student's class distributions (on logits,
with a temperature), optionally plus the relative L2 distance of chosen
intermediate feature maps.  Each codeword's gradient is the sum of the
gradients of the weights that use it; the indices are fixed during an epoch
and, between epochs, each weight sub-vector may move to the codeword now
nearest to its dense value (reassign=True).

PyTorch is an optional extra (pip install "qengine[finetune]"); the runtime
never imports this module.
"""
import time

import numpy as np

from .errors import QEngineError
from .layers.pooling import _rules
from .layers.base import pool_output

TEMPERATURE = 2.0
TRAIN_BYTES = 768 << 20     # activations of one training batch (forward and backward)


def _torch():
    try:
        import torch
    except ImportError:
        raise QEngineError("--finetune needs PyTorch: pip install 'qengine[finetune]'") from None
    return torch


# -- the graph as PyTorch operations ---------------------------------------

def _pool(torch, F, p, x):
    n, c, h, w = x.shape
    if p["global"]:
        return x.amax(dim=(2, 3), keepdim=True) if p["pool"] == "MAX" else \
            x.mean(dim=(2, 3), keepdim=True)
    (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride"], p["pad"]
    ceil, exclude = _rules(p)
    oh, ow = pool_output(h, kh, sh, ph, ceil), pool_output(w, kw, sw, pw, ceil)
    # pad to exactly the windows the output needs (Caffe's ceil rule included)
    eh = max(0, (oh - 1) * sh + kh - (h + 2 * ph))
    ew = max(0, (ow - 1) * sw + kw - (w + 2 * pw))
    pads = (pw, pw + ew, ph, ph + eh)
    if p["pool"] == "MAX":
        xp = F.pad(x, pads, value=float("-inf"))
        return F.max_pool2d(xp, (kh, kw), (sh, sw))[:, :, :oh, :ow]
    xp = F.pad(x, pads)
    # the divisor: the window clipped to the input (exclude_pad) or to the padded input
    mask = torch.zeros((1, 1, h + 2 * ph + eh, w + 2 * pw + ew), dtype=x.dtype)
    if exclude:
        mask[:, :, ph:ph + h, pw:pw + w] = 1
    else:
        mask[:, :, :h + 2 * ph, :w + 2 * pw] = 1
    s = F.avg_pool2d(xp, (kh, kw), (sh, sw))[:, :, :oh, :ow]
    cnt = F.avg_pool2d(mask, (kh, kw), (sh, sw))[:, :, :oh, :ow]
    return s / cnt


def _lrn(torch, F, p, x):
    size, alpha, beta, k = p["local_size"], p["alpha"], p["beta"], p["k"]
    pre = (size - 1) // 2
    sq = F.pad((x * x).unsqueeze(1), (0, 0, 0, 0, pre, size - 1 - pre)).squeeze(1)
    s = F.avg_pool3d(sq.unsqueeze(1), (size, 1, 1), 1).squeeze(1) * size
    return x / (k + alpha / size * s) ** beta


def run_layer(torch, L, xs, wb):
    """One layer of the graph in PyTorch (differentiable)."""
    F = torch.nn.functional
    t, p = L["type"], L["params"]
    x = xs[0]
    if t == "Convolution":
        return F.conv2d(x, wb[0], wb[1], p["stride"], p["pad"], 1, p["group"])
    if t == "InnerProduct":
        return F.linear(x.reshape(x.shape[0], -1), wb[0], wb[1])
    if t == "ReLU":
        s = p["negative_slope"]
        return F.relu(x) if s == 0 else F.leaky_relu(x, s)
    if t == "Clip":
        return x.clamp(p["min"], p["max"])
    if t == "Sigmoid":
        return torch.sigmoid(x)
    if t == "Softmax":
        return torch.softmax(x, 1)
    if t == "Dropout":
        return x
    if t == "Pooling":
        return _pool(torch, F, p, x)
    if t == "LRN":
        return _lrn(torch, F, p, x)
    if t == "Scale":
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * wb[0].reshape(shape) + wb[1].reshape(shape)
    if t == "Concat":
        return torch.cat(xs, 1)
    if t == "Eltwise":
        coeff = p.get("coeff") or [1.0] * len(xs)
        out = coeff[0] * xs[0]
        for c, v in zip(coeff[1:], xs[1:]):
            out = out + c * v
        return out
    if t == "Flatten":
        return x.reshape(x.shape[0], -1)
    if t == "StridedSlice":
        (c0, h0, w0), (c1, h1, w1), (cs, hs, ws) = p["start"], p["stop"], p["step"]
        return x[:, c0:c1:cs, h0:h1:hs, w0:w1:ws]
    if t == "Pad":
        q = p["pads"]
        return F.pad(x, (q[4], q[5], q[2], q[3], q[0], q[1]), value=p["value"])
    raise QEngineError(f"fine-tuning does not know layer type {t!r}")


def forward(torch, graph, params, x, features=(), logits=True):
    """Run the graph on x; returns (output, {feature layer: output}).  With
    logits, a final Softmax is left out (distillation compares logits)."""
    layers = graph["layers"]
    if logits and layers and layers[-1]["type"] == "Softmax":
        layers = layers[:-1]
    last = {}
    for i, L in enumerate(layers):
        for b in L["bottom"]:
            last[b] = i
    blobs = {graph["input"]["name"]: x}
    feats = {}
    y = x
    for i, L in enumerate(layers):
        y = run_layer(torch, L, [blobs[b] for b in L["bottom"]], params.get(L["name"]))
        if L["name"] in features:
            feats[L["name"]] = y
        for b in L["bottom"]:
            if last.get(b, -1) <= i and b not in L["top"]:
                blobs.pop(b, None)
        for t in L["top"]:
            blobs[t] = y
    return y, feats


# -- the student: weights made of codewords ----------------------------------

def _gather(torch, L, codebook, indices, shape):
    """Dense weights from a codebook [M, K, d] (a tensor) and indices,
    differentiably: conv [Cout, Cg, KH, KW], fc [Cout, Cin]."""
    M, K, d = codebook.shape
    m = torch.arange(M).reshape((1,) * (indices.ndim - 1) + (M,))
    v = codebook[m, indices]                  # [..., M, d]
    if L["type"] == "Convolution":
        cout, cg, kh, kw = shape
        w = v.reshape(cout, kh, kw, M * d)[..., :cg]
        return w.permute(0, 3, 1, 2)
    cout, cin = shape
    return v.reshape(cout, M * d)[:, :cin]


def _augment(torch, x, rng):
    """Random flips and random crops (shifts by up to 1/8 of the size,
    zero-filled) of a batch."""
    n, c, h, w = x.shape
    flip = torch.from_numpy(rng.random(n) < 0.5)
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    ph, pw = max(1, h // 8), max(1, w // 8)
    xp = torch.nn.functional.pad(x, (pw, pw, ph, ph))
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = rng.integers(0, 2 * ph + 1), rng.integers(0, 2 * pw + 1)
        out[i] = xp[i, :, dy:dy + h, dx:dx + w]
    return out


def train_batch(graph):
    """Images per training step: 16, fewer where a batch's activations (kept
    for the backward pass, about three times the forward blobs) would pass
    TRAIN_BYTES (SqueezeNet at 227x227: 8)."""
    from .calibration import activation_bytes
    return int(max(4, min(16, TRAIN_BYTES // max(1, 3 * activation_bytes(graph)))))


def finetune(graph, weights, quantized, calib, epochs=2, lr=1e-4, batch=None, features=(),
             feature_weight=1.0, reassign=False, seed=0, threads=None, log=None, progress=None):
    """Fine-tune the codebooks and biases of `quantized` ({layer: (codebook,
    indices[, bias])}) so the network's outputs match the dense network's
    (`weights`) on the calibration inputs calib [N, C, H, W] (read in
    batches); returns {layer: (codebook, indices, bias)} and the mean loss
    of each epoch.  Adam at `lr`, decayed to 0 on a cosine over all steps."""
    torch = _torch()
    log = log or (lambda m: None)
    batch = batch or train_batch(graph)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    by_name = {L["name"]: L for L in graph["layers"]}
    teacher = {n: tuple(torch.from_numpy(np.array(a, np.float32)) for a in wb)
               for n, wb in weights.items()}
    codebooks, biases, idx, shapes = {}, {}, {}, {}
    for n, q in quantized.items():
        codebooks[n] = torch.nn.Parameter(torch.from_numpy(np.array(q[0], np.float32)))
        b = q[2] if len(q) > 2 else weights[n][1]
        biases[n] = torch.nn.Parameter(torch.from_numpy(np.array(b, np.float32)))
        idx[n] = torch.from_numpy(np.asarray(q[1]).astype(np.int64))
        shapes[n] = tuple(weights[n][0].shape)
    params = list(codebooks.values()) + list(biases.values())
    opt = torch.optim.Adam(params, lr=lr)
    n_img = len(calib)
    steps = -(-n_img // batch)
    # cosine decay of the learning rate over all steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1 + np.cos(np.pi * min(t, epochs * steps) / (epochs * steps))))
    history = []
    for epoch in range(epochs):
        t0 = time.time()
        bar = (progress or (lambda label, total: None))(f"fine-tune epoch {epoch + 1}/{epochs}",
                                                         steps)
        order = rng.permutation(n_img)
        total = 0.0
        for s in range(steps):
            sel = np.sort(order[s * batch:(s + 1) * batch])
            x = torch.from_numpy(np.ascontiguousarray(calib[sel], np.float32))
            x = _augment(torch, x, rng)
            with torch.no_grad():
                t_out, t_feat = forward(torch, graph, teacher, x, features)
            student = dict(teacher)
            for n in quantized:
                student[n] = (_gather(torch, by_name[n], codebooks[n], idx[n], shapes[n]),
                              biases[n])
            s_out, s_feat = forward(torch, graph, student, x, features)
            tl = t_out.reshape(len(x), -1) / TEMPERATURE
            sl = s_out.reshape(len(x), -1) / TEMPERATURE
            loss = torch.nn.functional.kl_div(torch.log_softmax(sl, 1), torch.log_softmax(tl, 1),
                                              reduction="batchmean", log_target=True)
            loss = loss * TEMPERATURE ** 2
            for f in features:
                loss = loss + feature_weight * ((s_feat[f] - t_feat[f]).pow(2).sum()
                                                / t_feat[f].pow(2).sum().clamp_min(1e-12))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(x)
            if bar:
                bar.update(1)
        if bar:
            bar.close()
        if reassign:
            _reassign(torch, by_name, weights, codebooks, idx)
        history.append(total / n_img)
        log(f"  fine-tune epoch {epoch + 1}/{epochs}: distillation loss {history[-1]:.4f} "
            f"({time.time() - t0:.1f} s)")
    out = {n: (codebooks[n].detach().numpy().astype(np.float32),
               idx[n].numpy().astype(np.uint8).reshape(np.asarray(quantized[n][1]).shape),
               biases[n].detach().numpy().astype(np.float32)) for n in quantized}
    return out, history


def _reassign(torch, by_name, weights, codebooks, idx):
    """Each weight sub-vector to the codeword now nearest its dense value."""
    from .quantize import assign, assignments_to_indices, subspace_vectors
    for n, cb in codebooks.items():
        kind = "conv" if by_name[n]["type"] == "Convolution" else "fc"
        C = cb.detach().numpy()
        w = np.asarray(weights[n][0], np.float32)
        A = assign(subspace_vectors(w, kind, C.shape[2]), C)
        idx[n] = torch.from_numpy(assignments_to_indices(A, w, kind, C.shape[2]).astype(np.int64))
