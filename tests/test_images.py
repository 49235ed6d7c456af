"""Images from the wild: every kind gets a correct conversion or a clear ImageError."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from qengine.errors import ImageError
from qengine.preprocess import load_image


def save(tmp_path, img, name, **kw):
    p = tmp_path / name
    img.save(p, **kw)
    return str(p)


def test_modes_convert_to_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), np.uint8)
    g = Image.fromarray(rgb[..., 0])
    a = load_image(save(tmp_path, g, "g.png"))
    assert a.shape == (6, 5, 3) and np.array_equal(a[..., 1], rgb[..., 0])
    pal = Image.fromarray(rgb).convert("P")
    assert np.array_equal(load_image(save(tmp_path, pal, "p.png")),
                          np.asarray(pal.convert("RGB")))
    rgba = np.dstack([rgb, np.full((6, 5), 0, np.uint8)])      # fully transparent
    assert np.all(load_image(save(tmp_path, Image.fromarray(rgba), "a.png")) == 255)
    sixteen = Image.fromarray((np.arange(30, dtype=np.uint16).reshape(6, 5) * 2000))
    a = load_image(save(tmp_path, sixteen, "s.png"))
    assert a.dtype == np.uint8 and a[5, 4, 0] == round(29 * 2000 * 255 / 65535)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    a = load_image(save(tmp_path, cmyk, "c.jpg", quality=95))
    assert a.shape == (6, 5, 3)
    assert np.abs(a.astype(int) - np.asarray(cmyk.convert("RGB")).astype(int)).mean() < 12


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((4, 10, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6                                          # rotate 90 degrees
    p = save(tmp_path, img, "r.jpg", exif=exif.tobytes())
    assert load_image(p).shape == (10, 4, 3)


def png_header_only(w, h):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("content,msg", [
    (b"", "not an image Pillow can read"), (b"hello, not an image", "not an image Pillow can read"),
    (png_header_only(60000, 60000), "pixel"), (png_header_only(30, 30), "cannot read"),
])
def test_bad_files_give_one_clear_error(tmp_path, content, msg):
    p = tmp_path / "x.png"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=msg) as ei:
        load_image(str(p))
    assert str(p) in str(ei.value)


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)).save(
        buf, format="JPEG")
    p = tmp_path / "t.jpg"
    p.write_bytes(buf.getvalue()[:300])
    with pytest.raises(ImageError):
        load_image(str(p))
    with pytest.raises(ImageError, match="no such file"):
        load_image(str(tmp_path / "missing.jpg"))


def test_bmp_declaring_more_pixels_than_it_holds(tmp_path):
    """A small BMP whose header declares a huge bitmap is refused before decoding."""
    p = tmp_path / "x.bmp"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(p)
    data = bytearray(p.read_bytes())
    data[18:22] = (5000).to_bytes(4, "little")      # width
    data[22:26] = (5000).to_bytes(4, "little")      # height
    p.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="declares 5000x5000"):
        load_image(str(p))


def test_compressed_file_declaring_far_more_pixels_than_its_bytes_allow(tmp_path):
    """A few hundred bytes of JPEG claiming 8000x8000 pixels are refused before
    decoding; a real solid-colour image of that size still opens."""
    p = tmp_path / "x.jpg"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(p, quality=50)
    data = bytearray(p.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 7] = (8000).to_bytes(2, "big")     # height
    data[sof + 7:sof + 9] = (8000).to_bytes(2, "big")     # width
    p.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="declares 8000x8000 pixels"):
        load_image(str(p))
    big = tmp_path / "solid.png"
    Image.new("RGB", (3000, 2000), (10, 200, 30)).save(big)
    assert load_image(str(big)).shape == (2000, 3000, 3)
