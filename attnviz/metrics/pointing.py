"""Faithfulness and sanity metrics for explanation maps (pure numpy).

Pointing game: Zhang et al. 2016, "Top-down Neural Attention by Excitation
Backprop", https://arxiv.org/abs/1608.00507 — a map scores a hit when its
maximum lies on the object it explains.
"""

from __future__ import annotations

import numpy as np


def _nearest_resize(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D array, sampling at pixel centres."""
    rows, cols = a.shape
    ri = np.minimum(((np.arange(height) + 0.5) * rows / height).astype(int), rows - 1)
    ci = np.minimum(((np.arange(width) + 0.5) * cols / width).astype(int), cols - 1)
    return a[ri[:, None], ci[None, :]]


POINTING_MODES = ("pixel", "cell", "bilinear")


def pointing_game_hit(map2d, mask, box=None, *, mode: str = "pixel") -> bool:
    """Whether the map's maximum falls inside ``mask``.

    ``map2d``: a 2-D map (patch grid or pixels); ``mask``: bool ``[H, W]`` of the
    explained object in image pixels. ``box=(left, top, right, bottom)``: the
    image region the map covers (as in :mod:`attnviz.render`, right/bottom
    exclusive); ``None`` = the whole mask. Non-finite map values are never the
    maximum; an all-non-finite map is a miss.

    ``mode="pixel"``: the map is upsampled by nearest neighbour to the box size and
    its argmax pixel (ties: the first in row-major order) is looked up in the mask.
    For a coarse map every cell becomes a block of equal values, so the point is
    the block's top-left pixel: on 8-pixel patches this decides by one corner.
    ``mode="cell"``: the argmax cell of ``map2d`` (ties: the first) is a hit when
    any mask pixel lies in its footprint. ``mode="bilinear"``: the map is upsampled
    bilinearly to the box size, as the overlay shows it, and its hottest pixel is
    looked up in the mask (the point a user's eye goes to). All three agree on
    pixel-resolution maps.
    """
    if mode not in POINTING_MODES:
        raise ValueError(f"mode must be one of {POINTING_MODES}, got {mode!r}")
    m = np.asarray(map2d, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"map2d must be 2-D, got shape {m.shape}")
    mk = np.asarray(mask).astype(bool)
    if mk.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mk.shape}")
    H, W = mk.shape
    left, top, right, bottom = (0, 0, W, H) if box is None else (int(v) for v in box)
    if not (right > left and bottom > top):
        raise ValueError(f"empty box {box}")
    m = np.where(np.isfinite(m), m, -np.inf)
    if not np.isfinite(m).any():
        return False
    bh, bw = bottom - top, right - left
    if mode in ("pixel", "bilinear"):
        if mode == "bilinear" and m.shape != (bh, bw):
            from ..render import upsample
            m = np.where(np.isfinite(m), m, np.nanmin(np.where(np.isfinite(m), m, np.nan)))
            up = upsample(m.astype(np.float32), (bw, bh), "bilinear")
        else:
            up = _nearest_resize(m, bh, bw)
        y, x = np.unravel_index(int(np.argmax(up)), up.shape)
        y, x = y + top, x + left
        return bool(0 <= y < H and 0 <= x < W and mk[y, x])
    # the footprint of cell (r, c): the box pixels that nearest-resize maps to it
    r, c = np.unravel_index(int(np.argmax(m)), m.shape)
    rows, cols = m.shape
    ri = np.minimum(((np.arange(bh) + 0.5) * rows / bh).astype(int), rows - 1)
    ci = np.minimum(((np.arange(bw) + 0.5) * cols / bw).astype(int), cols - 1)
    ys = np.flatnonzero(ri == r) + top
    xs = np.flatnonzero(ci == c) + left
    ys, xs = ys[(ys >= 0) & (ys < H)], xs[(xs >= 0) & (xs < W)]
    return bool(mk[np.ix_(ys, xs)].any()) if len(ys) and len(xs) else False
