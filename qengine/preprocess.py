"""Image loading and the model's preprocessing, as stored in the .qcnn.

The preprocessing metadata (all keys optional):
    channel_order  "bgr" (default), "rgb" or "gray"
    resize         [H, W]: resize the whole image first (aspect not kept)
    resize_method  "bilinear_align_corners" (the original Quantized-CNN) or "bilinear"
    mean           {"type": "image", "tensor": NAME} (a [C,H,W] tensor of the resized
                   or the cropped size) or {"type": "pixel", "values": [..]}
    crop           [H, W]: centre crop, offset floor((size - crop) / 2)
    scale          multiply after subtracting the mean (default 1)
"""
import numpy as np

from .errors import ImageError, ModelError

MAX_IMAGE_PIXELS = 100_000_000  # decompression-bomb guard: 100 megapixels


def load_image(src):
    """An image as an H x W x 3 (or H x W for grey) uint8 RGB array.
    `src` is a path, a PIL image, or a uint8 array (H x W x 3 RGB or H x W)."""
    if isinstance(src, np.ndarray):
        if src.dtype != np.uint8 or src.ndim not in (2, 3) or (src.ndim == 3 and src.shape[2] != 3):
            raise ImageError(f"image arrays must be H x W x 3 (RGB) or H x W uint8, got "
                             f"{src.dtype} {src.shape}")
        if min(src.shape[:2]) < 1:
            raise ImageError("image array is empty")
        return src
    try:
        from PIL import Image, ImageOps
    except ImportError:  # pragma: no cover
        raise ImageError("reading image files needs Pillow (pip install pillow)") from None
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    name = getattr(src, "filename", None) or str(src)
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = src if isinstance(src, Image.Image) else Image.open(src)
            w, h = img.size
            if w < 1 or h < 1 or w * h > MAX_IMAGE_PIXELS:
                raise ImageError(f"{name}: image size {w}x{h} is empty or above the "
                                 f"{MAX_IMAGE_PIXELS}-pixel limit")
            _check_raw_size(img, src, name)
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(img, dtype=np.float64)
                peak = 65535.0 if img.mode.startswith("I;16") else max(1.0, float(a.max()))
                a = np.clip(np.round(a * (255.0 / peak)), 0, 255).astype(np.uint8)
                return np.repeat(a[:, :, None], 3, axis=2)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(bg, rgba)
            img = img.convert("RGB")
            return np.asarray(img, dtype=np.uint8)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: refused, too many pixels ({e})") from None
    except Image.DecompressionBombWarning as e:
        raise ImageError(f"{name}: refused, too many pixels ({e})") from None
    except Exception as e:  # PIL raises many types for bad files
        raise ImageError(f"{name}: cannot read image ({type(e).__name__}: {e})") from None


def _check_raw_size(img, src, name):
    """An uncompressed image (BMP, PPM, ...) must hold the bytes its header declares,
    so that a small corrupt file cannot make the decoder allocate a large bitmap."""
    import os
    tile = getattr(img, "tile", None) or []
    if not isinstance(src, (str, os.PathLike)) or len(tile) != 1 or tile[0][0] != "raw":
        return
    try:
        args = tile[0][3]
        offset = int(tile[0][2])
        stride = int(args[1]) if len(args) > 1 and args[1] else 0
        rows = int(tile[0][1][3]) - int(tile[0][1][1])
    except (TypeError, ValueError, IndexError):
        return
    need = offset + abs(stride) * rows
    have = os.path.getsize(src)
    if stride and have < need:
        raise ImageError(f"{name}: truncated or corrupt: its header declares {img.size[0]}x"
                         f"{img.size[1]} pixels ({need} bytes), the file has {have}")


class Preprocessor:
    """Turns images into the network's input, following the model's metadata."""

    def __init__(self, spec, input_shape, mean_image=None):
        self.spec = dict(spec or {})
        self.input_shape = tuple(input_shape)
        c, h, w = self.input_shape
        order = self.spec.get("channel_order", "bgr" if c == 3 else "gray")
        if order not in ("bgr", "rgb", "gray") or (order == "gray") != (c == 1):
            raise ModelError(f"preprocessing: channel order {order!r} does not fit {c} channels")
        self.order = order
        self.resize = self.spec.get("resize")
        self.method = self.spec.get("resize_method", "bilinear_align_corners")
        if self.method not in ("bilinear_align_corners", "bilinear"):
            raise ModelError(f"preprocessing: unknown resize method {self.method!r}")
        self.crop = self.spec.get("crop")
        self.scale = float(self.spec.get("scale", 1.0))
        size = tuple(self.resize) if self.resize else None
        if self.crop and tuple(self.crop) != (h, w):
            raise ModelError(f"preprocessing: crop {self.crop} does not match the input {h}x{w}")
        if self.crop and size and (size[0] < self.crop[0] or size[1] < self.crop[1]):
            raise ModelError(f"preprocessing: crop {self.crop} is larger than resize {size}")
        if not self.crop and size and size != (h, w):
            raise ModelError(f"preprocessing: resize {size} without crop must equal the input")
        self.mean = None
        m = self.spec.get("mean")
        if m and m.get("type") == "pixel":
            vals = np.asarray(m.get("values"), np.float32).reshape(-1)
            if vals.size not in (1, c):
                raise ModelError(f"preprocessing: {vals.size} mean values for {c} channels")
            self.mean = vals.reshape(-1, 1, 1)
        elif m and m.get("type") == "image":
            if mean_image is None:
                raise ModelError("preprocessing: mean image missing")
            mi = np.asarray(mean_image, np.float32)
            if mi.ndim != 3 or mi.shape[0] != c:
                raise ModelError(f"preprocessing: mean image shape {mi.shape} for {c} channels")
            if mi.shape[1:] not in ((h, w), size):
                raise ModelError(f"preprocessing: mean image {mi.shape[1:]} matches neither the "
                                 f"resized {size} nor the input {h}x{w} size")
            self.mean = mi
        elif m:
            raise ModelError(f"preprocessing: unknown mean type {m.get('type')!r}")

    def __call__(self, image):
        """One image (path, PIL image or uint8 array) -> float32 [C, H, W]."""
        a = load_image(image)
        c, h, w = self.input_shape
        if self.order == "gray":
            if a.ndim == 3:
                a = np.round(a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114)
            a = np.asarray(a, np.float32)[None]
        else:
            if a.ndim == 2:
                a = np.repeat(a[:, :, None], 3, axis=2)
            a = np.asarray(a, np.float32)
            if self.order == "bgr":
                a = a[..., ::-1]
            a = np.ascontiguousarray(a.transpose(2, 0, 1))
        target = tuple(self.resize) if self.resize else (h, w)
        if a.shape[1:] != target:
            a = self._resize(a, *target)
        if self.mean is not None and self.mean.ndim == 3 and self.mean.shape[1:] == a.shape[1:] \
                and a.shape[1:] != (h, w):
            a = a - self.mean
            a = self._crop(a, h, w)
        else:
            a = self._crop(a, h, w)
            if self.mean is not None:
                a = a - self.mean
        if self.scale != 1.0:
            a = a * self.scale
        return np.ascontiguousarray(a, np.float32)

    def _resize(self, a, out_h, out_w):
        if self.method == "bilinear_align_corners":
            from . import _kernels
            out = np.empty((a.shape[0], out_h, out_w), np.float32)
            _kernels.resize_bilinear_ac(np.ascontiguousarray(a, np.float32), out)
            return out
        from PIL import Image
        chans = [np.asarray(Image.fromarray(ch.astype(np.float32), mode="F").resize(
            (out_w, out_h), Image.BILINEAR)) for ch in a]
        return np.stack(chans)

    @staticmethod
    def _crop(a, h, w):
        H, W = a.shape[1:]
        if (H, W) == (h, w):
            return a
        if H < h or W < w:
            raise ImageError(f"image {H}x{W} is smaller than the crop {h}x{w}")
        y, x = (H - h) // 2, (W - w) // 2
        return a[:, y:y + h, x:x + w]
