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
import math
import os
import struct
import sys

from . import buffers
from .errors import ImageError, ModelError

MAX_IMAGE_PIXELS = 100_000_000  # decompression-bomb guard: 100 megapixels
# A compressed file declaring more pixels than this per byte of file is refused
# before decoding: photos stay under ~100, solid-colour images reach ~300 (JPEG),
# ~1,000 (8-bit PNG, GIF) and ~8,000 (1-bit PNG: deflate's 1032:1 bound), while a
# few hundred corrupt bytes could otherwise claim tens of megapixels.
MAX_PIXELS_PER_BYTE = 16384


def _is_array(src):
    np = sys.modules.get("numpy")   # a numpy array can only exist if numpy was imported
    return np is not None and isinstance(src, np.ndarray)


def read_pixels(src, min_size=None):
    """An image as (pixels, H, W, channels): 8-bit interleaved pixels, RGB
    (3 channels) or grey (1, only for H x W arrays), in a bytes-like object.
    `src` is a path, a PIL image, or a uint8 array (H x W x 3 RGB or H x W).
    With min_size, a JPEG at least twice that size in both directions is
    decoded at a reduced scale (1/2 .. 1/8, by the decoder) that keeps both
    sides >= min_size: a 12-megapixel photo then costs a 500 x 375 decode.
    Needs no numpy for paths and PIL images."""
    if _is_array(src):
        import numpy as np
        if src.dtype != np.uint8 or src.ndim not in (2, 3) or (src.ndim == 3 and src.shape[2] != 3):
            raise ImageError(f"image arrays must be H x W x 3 (RGB) or H x W uint8, got "
                             f"{src.dtype} {src.shape}")
        if min(src.shape[:2]) < 1:
            raise ImageError("image array is empty")
        a = np.ascontiguousarray(src)
        return memoryview(a).cast("B"), a.shape[0], a.shape[1], 1 if a.ndim == 2 else 3
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
            _check_declared_size(img, src, name)
            if min_size and getattr(img, "format", None) == "JPEG" and \
                    min(w, h) >= 2 * min_size:
                img.draft(img.mode, (min_size, min_size))
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                import numpy as np
                a = np.asarray(img, dtype=np.float64)
                peak = 65535.0 if img.mode.startswith("I;16") else max(1.0, float(a.max()))
                a = np.clip(np.round(a * (255.0 / peak)), 0, 255).astype(np.uint8)
                a = np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
                return memoryview(a).cast("B"), a.shape[0], a.shape[1], 3
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(bg, rgba)
            img = img.convert("RGB")
            return img.tobytes(), img.size[1], img.size[0], 3
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


def load_image(src):
    """An image as an H x W x 3 (or H x W for grey arrays) uint8 RGB numpy array
    (see read_pixels)."""
    if _is_array(src):
        read_pixels(src)   # the checks
        return src
    import numpy as np
    px, h, w, ch = read_pixels(src)
    return np.frombuffer(px, np.uint8).reshape(h, w, ch)


def _check_declared_size(img, src, name):
    """A file may declare at most MAX_PIXELS_PER_BYTE pixels per byte of itself, and
    an uncompressed one (BMP, PPM, ...) must hold the bytes its header declares, so
    that a small corrupt file cannot make the decoder allocate a large bitmap."""
    tile = getattr(img, "tile", None) or []
    if not isinstance(src, (str, os.PathLike)):
        return
    w, h = img.size
    have = os.path.getsize(src)
    if w * h > MAX_PIXELS_PER_BYTE * max(have, 1):
        raise ImageError(f"{name}: refused: its header declares {w}x{h} pixels in a "
                         f"{have}-byte file (corrupt, or a decompression bomb)")
    if len(tile) != 1 or tile[0][0] != "raw":
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
        self.mean = None     # a [C, MH, MW] float buffer, and where the crop starts in it
        self.mean_at_crop = False
        m = self.spec.get("mean")
        if m and m.get("type") == "pixel":
            vals = m.get("values")
            if not isinstance(vals, list) or not all(
                    isinstance(v, (int, float)) and math.isfinite(v) and abs(v) < 1e30
                    for v in vals):
                raise ModelError("preprocessing: mean values must be a list of finite numbers")
            if len(vals) not in (1, c):
                raise ModelError(f"preprocessing: {len(vals)} mean values for {c} channels")
            vals = vals * c if len(vals) == 1 else vals
            plane = h * w
            self.mean = buffers.shaped(b"".join(struct.pack("<f", v) * plane for v in vals),
                                       (c, h, w), "f")
        elif m and m.get("type") == "image":
            if mean_image is None:
                raise ModelError("preprocessing: mean image missing")
            mi = mean_image
            if not (isinstance(mi, memoryview) and buffers.format_of(mi) == "f"
                    and mi.c_contiguous):
                import numpy as np
                mi = memoryview(np.ascontiguousarray(mean_image, np.float32))
            if mi.ndim != 3 or mi.shape[0] != c:
                raise ModelError(f"preprocessing: mean image shape {tuple(mi.shape)} for {c} "
                                 f"channels")
            if mi.shape[1:] not in ((h, w), size):
                raise ModelError(f"preprocessing: mean image {tuple(mi.shape[1:])} matches "
                                 f"neither the resized {size} nor the input {h}x{w} size")
            from . import _kernels
            if not _kernels.all_finite(buffers.reshape(mi, (-1,))):
                raise ModelError("preprocessing: mean image holds NaN or infinity")
            self.mean = mi
            # a mean of the resized size is subtracted before the centre crop
            self.mean_at_crop = tuple(mi.shape[1:]) != (h, w)
        elif m:
            raise ModelError(f"preprocessing: unknown mean type {m.get('type')!r}")

    def __call__(self, image):
        """One image (path, PIL image or uint8 array) -> float32 buffer [C, H, W]."""
        from . import _kernels
        c, h, w = self.input_shape
        target = tuple(self.resize) if self.resize else (h, w)
        px, H, W, ch = read_pixels(image, min_size=max(target))
        if (H, W) != target and self.method == "bilinear_align_corners":
            # straight from the 8-bit pixels: no float copy of the whole image
            a = buffers.empty((c,) + target)
            _kernels.resize_pixels_ac(px, H, W, ch, self.order, a)
        else:
            a = buffers.empty((c, H, W))
            _kernels.pixels_to_planar(px, H, W, ch, self.order, a)
            if (H, W) != target:
                a = self._resize(a, *target)
        if target[0] < h or target[1] < w:
            raise ImageError(f"image {target[0]}x{target[1]} is smaller than the crop {h}x{w}")
        y0, x0 = (target[0] - h) // 2, (target[1] - w) // 2
        out = buffers.empty((c, h, w))
        _kernels.crop_mean_scale(a, y0, x0, self.mean, y0 if self.mean_at_crop else 0,
                                 x0 if self.mean_at_crop else 0, self.scale, self.scale != 1.0,
                                 out)
        return out

    def _resize(self, a, out_h, out_w):
        """PIL's bilinear resize of float planes (the align-corners method resizes
        straight from the pixels in __call__)."""
        out = buffers.empty((a.shape[0], out_h, out_w))
        from PIL import Image
        src, dst = buffers.rows(a), buffers.rows(out)
        for ch in range(a.shape[0]):
            img = Image.frombytes("F", (a.shape[2], a.shape[1]), bytes(src[ch]))
            dst[ch][:] = img.resize((out_w, out_h), Image.BILINEAR).tobytes()
        return out
