"""Image geometry shared by the patch-grid adapters: pixels in, token grid out.

A ViT-style tower cuts its input into ``patch_size`` tiles after the
processor's resize (and centre crop, when it has one). ``view_box`` says which
part of the original image the model saw, so maps land on the right pixels;
``pixels`` runs the processor, optionally at a user-chosen size rounded to
whole patches; ``grid_layout`` names the tokens of the resulting sequence.
"""
from __future__ import annotations

from math import isqrt
from typing import Any, Optional

import torch
from PIL import Image

from ..errors import UsageError
from ..types import TokenLayout

MAX_PATCHES = 4096          # a chosen input size may make at most this many patch tokens (full attention)
#: ... and on the chunked attention path (no T² memory; time still grows with T²: hours beyond this on a CPU)
MAX_ROWS_PATCHES = 65536


def pair(v) -> tuple[int, int]:
    """An int or a 2-sequence as (height, width)."""
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def view_box(processor, size: tuple[int, int]) -> Optional[tuple[int, int, int, int]]:
    """The (left, top, right, bottom) region of the original image a center-crop keeps.

    ``size`` is the image's (width, height). Returns None when the processor
    resizes the whole image (no crop).
    """
    if not getattr(processor, "do_center_crop", False) or not getattr(processor, "crop_size", None):
        return None
    w, h = size
    rs = processor.size or {}
    if "shortest_edge" in rs:
        s = rs["shortest_edge"] / min(w, h)
        rw, rh = round(w * s), round(h * s)
    elif "height" in rs:
        rw, rh = rs["width"], rs["height"]
    else:
        return None
    cw, ch = processor.crop_size["width"], processor.crop_size["height"]
    left, top = max(0, (rw - cw) // 2), max(0, (rh - ch) // 2)
    sx, sy = w / rw, h / rh
    return (round(left * sx), round(top * sy), round(min(rw, left + cw) * sx), round(min(rh, top + ch) * sy))


def rounded_size(size: tuple[int, int], patch_size: tuple[int, int]) -> tuple[int, int]:
    """A chosen (height, width) rounded to whole patches (at least one)."""
    ph, pw = patch_size
    return max(ph, round(size[0] / ph) * ph), max(pw, round(size[1] / pw) * pw)


def pixels(processor, image: Image.Image, patch_size: tuple[int, int],
           size: Optional[tuple[int, int]] = None,
           max_patches: Optional[int] = MAX_PATCHES) -> tuple[torch.Tensor, Optional[tuple[int, int, int, int]]]:
    """(pixel_values [1, C, H, W], box) for one RGB image.

    ``size=(height, width)`` replaces the processor's resize, rounded to whole
    patches (at least one), with no crop: the whole image is seen (box None).
    ``max_patches`` None: no fixed cap (the adapter refuses by memory: ``tokens/budget.py``).
    """
    kw: dict[str, Any] = {}
    if size is not None:
        ph, pw = patch_size
        h, w = rounded_size(size, patch_size)
        n = (h // ph) * (w // pw)
        if max_patches is not None and n > max_patches:
            # attention memory grows with the square of the token count: 4000×4000 at 16 px would need ~1 TB
            raise UsageError(f"The input size {h}×{w} makes {n:,} patches of {ph}×{pw}; at most {max_patches:,} "
                             f"(e.g. {ph * isqrt(max_patches)}×{pw * isqrt(max_patches)}).")
        kw = {"size": {"height": h, "width": w}, "do_center_crop": False}
    pixel_values = processor(images=image, return_tensors="pt", **kw)["pixel_values"]
    return pixel_values, (None if size is not None else view_box(processor, image.size))


def grid_layout(prefix: tuple[str, ...], patch_size: tuple[int, int], pixel_values: torch.Tensor) -> TokenLayout:
    """Prefix tokens, then the (H/ph) × (W/pw) patch grid row by row, for an input [.., H, W]."""
    h, w = pixel_values.shape[-2:]
    ph, pw = patch_size
    return TokenLayout(prefix_names=tuple(prefix), rows=h // ph, cols=w // pw,
                       patch_size=patch_size, input_size=(int(h), int(w)))
