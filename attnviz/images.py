"""The one way an image enters attnviz: untrusted bytes in, a plain RGB image out.

Everything that can go wrong with a user's file is settled here — size caps,
a format allowlist judged by content, decompression bombs, truncation, tiny
images, EXIF rotation, odd modes (alpha, palette, CMYK, 16-bit), animation —
so the app and CLI only ever see a fully loaded ``RGB`` :class:`PIL.Image.Image`
or an :class:`ImageRejected` whose message is one sentence fit for a user.
Nothing here writes to disk.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000
MIN_SIDE = 16
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")

_FORMAT_NAMES = "PNG, JPEG, WebP, GIF or BMP"
# Modes with more than 8 bits per sample; Pillow's convert() clips these to
# 0..255 instead of rescaling, which turns most 16-bit images solid white.
_HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


class ImageRejected(ValueError):
    """The input is not an image we accept; ``str(e)`` is one user-facing sentence."""


def image_digest(data: bytes) -> str:
    """SHA-256 hex digest of the raw bytes, for cache keys."""
    return hashlib.sha256(data).hexdigest()


def load_path(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES) -> Image.Image:
    """Read an image file (at most ``max_bytes + 1`` bytes) and :func:`load_image` it."""
    try:
        with open(path, "rb") as f:
            # One byte past the cap is enough to know the file is too big,
            # without pulling a multi-gigabyte file into memory.
            data = f.read(max_bytes + 1)
    except (OSError, ValueError) as exc:  # ValueError: e.g. a NUL byte in the path
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ImageRejected(f"The file could not be read ({reason}).") from exc
    return load_image(data, max_bytes=max_bytes)


def load_image(data: bytes, *, max_bytes: int = MAX_BYTES) -> Image.Image:
    """Decode untrusted image bytes into a new, fully loaded RGB image.

    Raises :class:`ImageRejected` (and nothing else) for anything unusable.
    """
    size = len(data)
    if size == 0:
        raise ImageRejected("The file is empty.")
    if size > max_bytes:
        # No size in the message: load_path stops reading at the cap, so the
        # true size is unknown there.
        raise ImageRejected(f"The file is too large (the limit is {_megabytes(max_bytes)}).")
    try:
        return _decode(bytes(data))
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(
            f"The image has too many pixels (the limit is {MAX_PIXELS:,})."
        ) from exc
    except Image.UnidentifiedImageError as exc:  # before OSError: it is one
        raise ImageRejected(f"The file is not a supported image ({_FORMAT_NAMES}).") from exc
    except MemoryError as exc:
        raise ImageRejected("The image is too large to decode in the memory available.") from exc
    except Exception as exc:
        # Pillow's plugins raise a zoo of types on hostile or damaged input
        # (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib
        # errors, IndexError...). Whatever it is, the file cannot be used, and
        # the app must show a sentence rather than a traceback.
        raise ImageRejected(
            "The image file is damaged or truncated and could not be decoded."
        ) from exc


def _decode(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        # Pillow warns (rather than raises) between 1x and 2x MAX_IMAGE_PIXELS;
        # make that a rejection. Other warnings (e.g. "Corrupt EXIF data") are
        # noise to a user whose image still loads. catch_warnings is
        # process-global, so under threads a filter may briefly be lost; the
        # MAX_PIXELS check below still holds, since it is below Pillow's limit.
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as im:
            _check_size(*im.size)  # from the header, before any pixel is decoded
            im.load()  # animated GIF/WebP: open() leaves us on the first frame
            return _to_rgb(_exif_transpose(im))


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageRejected(
            f"The image has too many pixels ({width}x{height}; the limit is {MAX_PIXELS:,})."
        )
    if min(width, height) < MIN_SIDE:
        raise ImageRejected(
            f"The image is too small ({width}x{height} pixels; "
            f"each side must be at least {MIN_SIDE})."
        )


def _exif_transpose(im: Image.Image) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(im)
    except Exception:
        # Malformed EXIF is common from cheap cameras and editors; an
        # un-rotated image is more useful than a refusal.
        return im
    return im if out is None else out


def _to_rgb(im: Image.Image) -> Image.Image:
    """A new RGB image: alpha over white, 16-bit rescaled, CMYK/L/1/P converted."""
    if im.mode in _HIGH_BIT_MODES:
        return Image.fromarray(_rescale_to_8bit(np.asarray(im))).convert("RGB")
    if im.has_transparency_data:
        # White, not black: transparent regions of logos and screenshots are
        # meant as "background", and black would read as content to a model.
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # convert() always returns a new image


def _rescale_to_8bit(arr: np.ndarray) -> np.ndarray:
    """Map 0..65535 linearly onto 0..255 (rounded); values outside are clipped."""
    a = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=65535.0, neginf=0.0)
    np.clip(a, 0.0, 65535.0, out=a)
    a *= 255.0 / 65535.0
    a += 0.5
    return np.floor(a, out=a).astype(np.uint8)


def _megabytes(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.3g} MB"
    return f"{n:,} bytes"
