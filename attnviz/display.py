"""Display options for a map, before it is coloured (transformers-interpret's choices), as pure functions.

* :func:`sign_part`: show only the positive or only the negative attributions of a signed map (the other
  sign set to 0; the negative part returned as magnitudes, >= 0), or all of it;
* :func:`clip_outliers`: clip the map's magnitudes at a percentile, so one extreme value does not wash out
  the rest of the colour scale (real models' maps have such outliers: FIELD-NOTES);
* :func:`masked_image`: the image where the map is high: each pixel scaled by the map (upsampled to the
  image, min–max scaled to [0, 1]), or kept / blacked out above / below a quantile.

``render`` colours what these return; they never touch a model.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image

from .errors import UsageError

SIGNS = ("all", "positive", "negative")


def sign_part(m: np.ndarray, sign: str = "all") -> np.ndarray:
    """``m`` itself ("all"), its positive part ("positive"), or the magnitude of its negative part ("negative")."""
    m = np.asarray(m, dtype=np.float32)
    if sign == "all":
        return m
    if sign == "positive":
        return np.maximum(m, 0)
    if sign == "negative":
        return np.maximum(-m, 0)
    raise UsageError(f"Sign must be one of {', '.join(SIGNS)}.")


def clip_outliers(m: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """Magnitudes above the ``percentile``-th percentile of |m| clipped to it (signs kept); 100: unchanged."""
    if not 0 < percentile <= 100:
        raise UsageError("The outlier percentile must be above 0 and at most 100.")
    m = np.asarray(m, dtype=np.float32)
    top = float(np.percentile(np.abs(m), percentile))
    return np.clip(m, -top, top).astype(np.float32)


def _upsample(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[rows, cols] -> [H, W] (``size`` = (W, H) as PIL gives it), bilinear, in float."""
    img = Image.fromarray(np.asarray(m, dtype=np.float32), mode="F")
    return np.asarray(img.resize(size, Image.BILINEAR), dtype=np.float32)


def masked_image(image: Image.Image, m: np.ndarray, *, keep: Optional[float] = None) -> Image.Image:
    """``image`` where ``m`` (a non-negative map, any grid) is high. ``keep`` None: each pixel times the map's
    min–max scaled value; ``keep`` = q in (0, 1): the pixels whose value is in the top q share kept, the rest
    black."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    v = _upsample(m, image.size)                                               # [H, W]
    span = float(v.max() - v.min())
    v = (v - v.min()) / span if span > 0 else np.zeros_like(v)
    if keep is not None:
        if not 0 < keep < 1:
            raise UsageError("The share of the image to keep must lie between 0 and 1.")
        v = (v >= np.quantile(v, 1 - keep)).astype(np.float32)
    return Image.fromarray(np.clip(rgb * v[..., None] + 0.5, 0, 255).astype(np.uint8))
