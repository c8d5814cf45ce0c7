"""Real image bytes for tests: good photos (fixtures.images) and every kind of bad input a post can carry."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from fixtures.images import encode, photo_array, photo_jpeg

# encode and photo_array are re-exported: tests use them beside the bad inputs below


def jpeg(w: int = 60, h: int = 48, seed: int = 0, quality: int = 90) -> bytes:
    return photo_jpeg(w, h, seed, quality=quality)


def png(w: int = 60, h: int = 48, seed: int = 0) -> bytes:
    return encode(Image.fromarray(photo_array(w, h, seed)), "PNG")


def truncated_jpeg() -> bytes:
    data = jpeg(200, 160, seed=3)
    return data[: len(data) // 2]


def random_bytes(n: int = 5000, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def one_pixel() -> bytes:
    return encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def declared_size_png(w: int, h: int) -> bytes:
    """A tiny file whose header declares a w x h RGB image (a decompression bomb when large)."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _png_chunk(b"IEND", b"")


def cmyk_jpeg() -> bytes:
    return encode(Image.fromarray(photo_array(64, 48, 4)).convert("CMYK"), "JPEG", quality=90)


def gray16_png(value: int = 32768) -> bytes:
    """16-bit grayscale PNG, every pixel `value` (0..65535)."""
    return encode(Image.fromarray(np.full((40, 50), value, dtype=np.uint16)), "PNG")


def palette_transparent_png() -> bytes:
    """Palette image: left half fully transparent (palette index 0, black), right half opaque red."""
    img = Image.new("P", (64, 32), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    img.paste(1, (32, 0, 64, 32))
    return encode(img, "PNG", transparency=0)


def rgba_png() -> bytes:
    a = np.zeros((32, 32, 4), dtype=np.uint8)
    a[..., 2] = 255  # blue, half transparent
    a[..., 3] = 128
    return encode(Image.fromarray(a, "RGBA"), "PNG")


def animated_gif() -> bytes:
    """Two frames: red, then blue. The first frame is the one that counts."""
    frames = [Image.new("RGB", (40, 40), (255, 0, 0)), Image.new("RGB", (40, 40), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def exif_rotated_jpeg(orientation: int = 6) -> tuple[bytes, bytes]:
    """(JPEG stored landscape with an EXIF orientation tag, the same picture stored upright without a tag)."""
    a = np.zeros((48, 96, 3), dtype=np.uint8)
    a[:, :48] = (255, 255, 255)  # white left half, black right half
    img = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = orientation
    tagged = encode(img, "JPEG", quality=95, exif=exif.tobytes())
    upright = encode(img.transpose(Image.Transpose.ROTATE_270), "JPEG", quality=95)  # what orientation 6 means
    return tagged, upright
