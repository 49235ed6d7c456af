"""Preprocessing (the numpy-free C path) against a plain numpy reference of the spec
in qengine/preprocess.py, for every channel order, input kind, resize and mean."""
import numpy as np
import pytest
from PIL import Image

from qengine import buffers, format as qformat
from qengine.errors import ModelError
from qengine.preprocess import Preprocessor

RNG = np.random.default_rng(5)


def resize_align_corners(a, oh, ow):
    """[C, H, W] float64 -> [C, oh, ow]: sample (i*(H-1)/(oh-1), j*(W-1)/(ow-1))."""
    c, h, w = a.shape
    ys = np.arange(oh) * ((h - 1) / (oh - 1) if oh > 1 else 0.0)
    xs = np.arange(ow) * ((w - 1) / (ow - 1) if ow > 1 else 0.0)
    y0 = np.minimum(ys.astype(int), h - 1)
    x0 = np.minimum(xs.astype(int), w - 1)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = a[:, y0][:, :, x0] * (1 - fx) + a[:, y0][:, :, x1] * fx
    bot = a[:, y1][:, :, x0] * (1 - fx) + a[:, y1][:, :, x1] * fx
    return top * (1 - fy) + bot * fy


def reference(rgb, spec, shape, mean_image=None):
    """The spec, step by step, in numpy float64 (rgb: H x W x 3 or H x W uint8)."""
    c, h, w = shape
    order = spec.get("channel_order", "bgr")
    a = rgb.astype(np.float64)
    if order == "gray":
        a = np.round(a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114) if a.ndim == 3 \
            else a
        a = a[None]
    else:
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        a = (a[..., ::-1] if order == "bgr" else a).transpose(2, 0, 1)
    size = tuple(spec["resize"]) if spec.get("resize") else (h, w)
    if a.shape[1:] != size:
        if spec.get("resize_method", "bilinear_align_corners") == "bilinear":
            a = np.stack([np.asarray(Image.fromarray(ch.astype(np.float32), mode="F").resize(
                (size[1], size[0]), Image.BILINEAR)) for ch in a]).astype(np.float64)
        else:
            a = resize_align_corners(a, *size)
    y, x = (size[0] - h) // 2, (size[1] - w) // 2
    m = spec.get("mean")
    if m and m["type"] == "image" and mean_image.shape[1:] == size and size != (h, w):
        a = a - mean_image
    a = a[:, y:y + h, x:x + w]
    if m and m["type"] == "image" and mean_image.shape[1:] == (h, w):
        a = a - mean_image
    if m and m["type"] == "pixel":
        a = a - np.asarray(m["values"], np.float64).reshape(-1, 1, 1)
    return a * spec.get("scale", 1.0)


CASES = [
    ({"channel_order": "bgr"}, (3, 20, 24), (20, 24)),
    ({"channel_order": "rgb", "resize": [30, 33], "crop": [20, 24]}, (3, 20, 24), (47, 61)),
    ({"channel_order": "bgr", "resize": [26, 26], "crop": [21, 21], "mean": "image-resized"},
     (3, 21, 21), (35, 29)),
    ({"channel_order": "bgr", "resize": [26, 26], "crop": [21, 21], "mean": "image-crop",
      "scale": 0.017}, (3, 21, 21), (13, 50)),
    ({"channel_order": "rgb", "mean": "pixel", "scale": 0.5}, (3, 16, 16), (40, 23)),
    ({"channel_order": "gray", "scale": 0.00390625}, (1, 28, 28), (31, 29)),
    ({"channel_order": "gray", "resize": [32, 32], "crop": [28, 28], "mean": "pixel"},
     (1, 28, 28), (28, 28)),
    ({"channel_order": "rgb", "resize": [30, 30], "crop": [24, 24], "resize_method": "bilinear",
      "mean": "image-resized"}, (3, 24, 24), (50, 41)),
]


@pytest.mark.parametrize("spec,shape,img_hw", CASES)
@pytest.mark.parametrize("kind", ["pil", "array", "grey-array"])
def test_preprocessing_matches_numpy_reference(spec, shape, img_hw, kind):
    spec = dict(spec)
    c, h, w = shape
    rgb = RNG.integers(0, 256, img_hw + (3,), dtype=np.uint8)
    if kind == "grey-array":
        rgb = rgb[..., 1].copy()
    mean_image = None
    if spec.get("mean") == "pixel":
        spec["mean"] = {"type": "pixel", "values": [float(v) for v in RNG.uniform(0, 200, c)]}
    elif spec.get("mean", "").startswith("image"):
        size = tuple(spec["resize"]) if spec.get("mean") == "image-resized" else (h, w)
        mean_image = RNG.uniform(0, 255, (c,) + size).astype(np.float32)
        spec["mean"] = {"type": "image", "tensor": "m"}
    pp = Preprocessor(spec, shape, mean_image)
    src = Image.fromarray(rgb) if kind == "pil" else rgb
    got = np.asarray(pp(src))
    assert got.shape == shape and got.dtype == np.float32
    want = reference(rgb, spec, shape, mean_image)
    assert np.abs(got - want).max() <= 2e-4 * max(1.0, np.abs(want).max())


def test_mean_image_from_file_is_the_stored_one(tmp_path):
    """A qdelta2d mean read back through the C decoder (no numpy) is the encoded image."""
    mean = np.cumsum(RNG.uniform(-2, 2, (3, 40, 37)), axis=2).astype(np.float32) + 100
    step = 1 / 64
    qformat.write(str(tmp_path / "m.qcnn"), {}, {"m": qformat.Tensor(mean, encoding="qdelta2d",
                                                                      step=step)})
    back = qformat.QcnnFile(str(tmp_path / "m.qcnn")).view("m")
    assert isinstance(back, memoryview) and tuple(back.shape) == mean.shape
    assert np.abs(np.asarray(back) - mean).max() <= step / 2 + 1e-4


def test_bad_means_are_model_errors():
    with pytest.raises(ModelError, match="finite"):
        Preprocessor({"mean": {"type": "pixel", "values": [1.0, float("nan"), 2.0]}}, (3, 4, 4))
    with pytest.raises(ModelError, match="mean values"):
        Preprocessor({"mean": {"type": "pixel", "values": [1.0, 2.0]}}, (3, 4, 4))
    bad = np.ones((3, 4, 4), np.float32)
    bad[1, 2, 3] = np.inf
    with pytest.raises(ModelError, match="NaN or infinity"):
        Preprocessor({"mean": {"type": "image", "tensor": "m"}}, (3, 4, 4), bad)


def test_buffers_reshape_concat_and_rows():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    b = np.arange(100, 116, dtype=np.float32).reshape(2, 2, 4)
    assert np.array_equal(np.asarray(buffers.concat([memoryview(a), memoryview(b)], 1)),
                          np.concatenate([a, b], 1))
    assert np.array_equal(np.asarray(buffers.concat([memoryview(a), memoryview(a)], 0)),
                          np.concatenate([a, a], 0))
    assert np.array_equal(np.asarray(buffers.reshape(memoryview(a), (4, -1))), a.reshape(4, -1))
    assert [bytes(r) for r in buffers.rows(memoryview(a))] == [a[0].tobytes(), a[1].tobytes()]
    with pytest.raises(ValueError):
        buffers.empty((3, 0))


def test_large_buffers_are_reused_not_mapped_afresh():
    """A freed block of 2 MB or more is kept for the next buffer of the same size
    (a batch's activations come back every pass); other sizes get their own."""
    import sys
    if not sys.platform.startswith("linux"):
        pytest.skip("the block cache is Linux-only (huge pages)")
    def addr(b):
        return np.frombuffer(b, np.uint8).ctypes.data
    a = buffers.empty((3 << 18,))        # 3 MB -> one 4 MB block
    where = addr(a)
    np.frombuffer(a, np.float32)[:] = 7
    del a
    b = buffers.empty((3 << 18,))
    assert addr(b) == where
    c = buffers.empty((5 << 18,))        # another size: not that block
    assert addr(c) != where
    np.frombuffer(c, np.float32)[:] = 1
    np.frombuffer(b, np.float32)[:] = 2  # both usable at once
    assert np.frombuffer(c, np.float32).min() == 1


def test_large_jpeg_decodes_at_reduced_scale_close_to_full_decode(tmp_path):
    """A photo far larger than the network's input is decoded by the JPEG decoder at
    1/2..1/8 scale (both sides kept >= the resize target); the network input stays
    close to the one from the full decode."""
    from qengine.preprocess import read_pixels
    y, x = np.mgrid[0:1536, 0:2048]
    rgb = np.stack([(x * 255 // 2047), (y * 255 // 1535), ((x + y) % 256)], -1).astype(np.uint8)
    p = tmp_path / "big.jpg"
    Image.fromarray(rgb).save(p, quality=95)
    px, H, W, ch = read_pixels(str(p), min_size=256)
    assert (H, W) == (384, 512) and len(px) == H * W * 3        # 1/4 scale, not 1/8 (256 < 192)
    assert read_pixels(str(p))[1:3] == (1536, 2048)
    spec = {"channel_order": "bgr", "resize": [256, 256], "crop": [227, 227],
            "mean": {"type": "pixel", "values": [104.0, 117.0, 123.0]}}
    got = np.asarray(Preprocessor(spec, (3, 227, 227))(str(p)))
    full = reference(np.asarray(Image.open(p).convert("RGB")), spec, (3, 227, 227))
    assert np.abs(got - full).mean() < 2.0


@pytest.mark.parametrize("order,ch", [("bgr", 3), ("rgb", 3), ("gray", 3), ("bgr", 1), ("gray", 1)])
@pytest.mark.parametrize("hw,out", [((37, 50), (256, 256)), ((300, 211), (29, 31)), ((1, 9), (4, 4))])
def test_resizing_from_pixels_equals_resizing_float_planes(order, ch, hw, out):
    """The row-streaming kernel gives the same floats, bit for bit, as converting
    the whole image to planes and resizing those."""
    from qengine import _kernels
    H, W = hw
    px = RNG.integers(0, 256, H * W * ch, dtype=np.uint8)
    C = 1 if order == "gray" else 3
    planes = np.empty((C, H, W), np.float32)
    _kernels.pixels_to_planar(px, H, W, ch, order, planes)
    want = np.empty((C,) + out, np.float32)
    _kernels.resize_bilinear_ac(planes, want)
    got = np.empty((C,) + out, np.float32)
    _kernels.resize_pixels_ac(px, H, W, ch, order, got)
    assert np.array_equal(got, want)
