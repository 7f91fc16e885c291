"""A generated corpus of good, odd and hostile image files for ``attnviz.images``.

``corpus()`` maps a case name to ``(bytes, expected)``: ``expected`` is None
when the bytes must load, else a substring of the rejection sentence. All
cases are made in memory (nothing on disk, nothing downloaded) and cheaply:
the oversized-header PNGs are crafted chunk by chunk, never allocated.
The pixel truths each accepted case must show live in ``tests/test_images.py``.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image, features

from attnviz.images import MAX_BYTES

NOT_SUPPORTED = "not a supported image"
DAMAGED = "damaged or truncated"
TOO_SMALL = "too small"
TOO_MANY_PIXELS = "too many pixels"

ORIENTATION = 0x0112  # EXIF tag


def corpus() -> dict[str, tuple[bytes, str | None]]:
    """Name -> (file bytes, None if it must load else a substring of the rejection)."""
    return dict(_build())  # a fresh dict: callers may mutate theirs


def has_webp() -> bool:
    return features.check("webp")


# --- builders -------------------------------------------------------------------


def _save(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def crafted_png(width: int, height: int) -> bytes:
    """A valid-looking 8-bit RGB PNG whose IHDR claims width x height, with a
    tiny IDAT: it costs bytes, not the memory the header promises."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, RGB, no interlace
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def rgb_gradient(width: int = 64, height: int = 40) -> np.ndarray:
    """A non-square [H, W, 3] uint8 image in which every pixel is predictable."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 4 % 256, y * 6 % 256, np.full_like(x, 100)], axis=-1).astype(np.uint8)


def gray16() -> np.ndarray:
    """[16, 32] uint16 in four 8-column bands: 65535, 32768, 0, 257."""
    a = np.zeros((16, 32), dtype=np.uint16)
    a[:, 0:8] = 65535
    a[:, 8:16] = 32768
    a[:, 24:32] = 257
    return a


def _noise_png(width: int = 64, height: int = 48) -> bytes:
    # Noise does not compress, so cutting the file really cuts pixel data.
    rng = np.random.default_rng(0)
    return _save(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)), "PNG")


def _rgba_png() -> bytes:
    a = np.zeros((32, 32, 4), dtype=np.uint8)
    a[:, :16] = (255, 0, 0, 0)  # fully transparent *red*: must come out white, not red
    a[:, 16:] = (0, 0, 255, 255)  # opaque blue
    a[0, 16:] = (0, 0, 0, 128)  # half-transparent black over white: ~127 grey
    return _save(Image.fromarray(a), "PNG")


def _palette_png() -> bytes:
    im = Image.new("P", (32, 32), 0)
    im.putpalette([0, 0, 0, 0, 255, 0])  # 0: black (made transparent), 1: green
    im.paste(1, (16, 0, 32, 32))
    return _save(im, "PNG", transparency=0)


def _animated(fmt: str, **kwargs) -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return _save(
        frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **kwargs
    )


def _exif_jpeg(exif: bytes) -> bytes:
    # Stored 40 wide x 24 high, white, with a red 8x8 marker at the stored top-left.
    im = Image.new("RGB", (40, 24), "white")
    im.paste((255, 0, 0), (0, 0, 8, 8))
    return _save(im, "JPEG", quality=95, exif=exif)


def _orientation6() -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    return _exif_jpeg(exif.tobytes())


def _bilevel_png() -> bytes:
    checker = (np.indices((32, 32)).sum(axis=0) % 2).astype(bool)  # [H, W]
    return _save(Image.fromarray(checker), "PNG")  # bool array -> mode "1"


def _la_png() -> bytes:
    a = np.zeros((24, 24, 2), dtype=np.uint8)
    a[:, :12] = (0, 0)  # transparent black
    a[:, 12:] = (60, 255)  # opaque dark grey
    return _save(Image.fromarray(a), "PNG")  # [H, W, 2] uint8 -> mode "LA"


@functools.lru_cache(maxsize=1)
def _build() -> tuple[tuple[str, tuple[bytes, str | None]], ...]:
    good_png = _save(Image.fromarray(rgb_gradient()), "PNG")
    noise = _noise_png()
    jpeg = _save(Image.fromarray(rgb_gradient()), "JPEG", quality=90)
    cases: dict[str, tuple[bytes, str | None]] = {
        # --- must load ---
        "rgb_png": (good_png, None),
        "gray8_png": (_save(Image.new("L", (20, 30), 77), "PNG"), None),
        "bilevel_png": (_bilevel_png(), None),
        "gray16_png": (_save(Image.fromarray(gray16()), "PNG"), None),
        "cmyk_jpeg": (_save(Image.new("CMYK", (32, 24), (255, 0, 0, 0)), "JPEG", quality=95), None),
        "animated_gif": (_animated("GIF"), None),
        "rgba_png": (_rgba_png(), None),
        "la_png": (_la_png(), None),
        "palette_transparency_png": (_palette_png(), None),
        "exif_orientation6_jpeg": (_orientation6(), None),
        # EXIF whose first IFD offset points far past the end of the block.
        "malformed_exif_jpeg": (_exif_jpeg(b"Exif\x00\x00MM\x00*\xff\xff\xff\xf0"), None),
        "garbage_exif_jpeg": (_exif_jpeg(b"Exif\x00\x00not a tiff header at all"), None),
        "bmp": (_save(Image.fromarray(rgb_gradient(48, 32)), "BMP"), None),
        # --- must be rejected ---
        "empty": (b"", "empty"),
        "too_large_payload": (b"\x89PNG\r\n\x1a\n" + bytes(MAX_BYTES), "too large"),
        "text_named_png": (b"A text file that somebody named photo.png.\n" * 20, NOT_SUPPORTED),
        "tiff": (_save(Image.new("RGB", (32, 32), "red"), "TIFF"), NOT_SUPPORTED),
        "truncated_png": (noise[: len(noise) * 6 // 10], DAMAGED),
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], DAMAGED),
        "png_header_without_pixels": (crafted_png(64, 64), DAMAGED),
        "tiny_1x1_png": (_save(Image.new("RGB", (1, 1), "red"), "PNG"), TOO_SMALL),
        "small_10x10_png": (_save(Image.new("RGB", (10, 10), "red"), "PNG"), TOO_SMALL),
        "narrow_200x10_png": (_save(Image.new("RGB", (200, 10), "red"), "PNG"), TOO_SMALL),
        # Three routes to "too many pixels": Pillow's bomb error (> 2x its
        # limit), Pillow's bomb warning (1x..2x), and our own lower cap.
        "header_30000x30000_png": (crafted_png(30000, 30000), TOO_MANY_PIXELS),
        "header_10000x10000_png": (crafted_png(10000, 10000), TOO_MANY_PIXELS),
        "header_8000x6000_png": (crafted_png(8000, 6000), TOO_MANY_PIXELS),
    }
    if has_webp():
        cases["webp"] = (_save(Image.fromarray(rgb_gradient(48, 32)), "WEBP", lossless=True), None)
        cases["animated_webp"] = (_animated("WEBP", lossless=True), None)
    return tuple(cases.items())
