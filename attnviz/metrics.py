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


def pointing_game_hit(map2d, mask, box=None) -> bool:
    """Whether the map's maximum falls inside ``mask``.

    ``map2d``: a 2-D map (patch grid or pixels); ``mask``: bool ``[H, W]`` of the
    explained object in image pixels. ``box=(left, top, right, bottom)``: the
    image region the map covers (as in :mod:`attnviz.render`, right/bottom
    exclusive); ``None`` = the whole mask. The map is upsampled by nearest
    neighbour to the box size, and its argmax (ties: the first in row-major
    order) is looked up in the mask. Non-finite map values are never the maximum;
    an all-non-finite map is a miss.
    """
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
    up = _nearest_resize(m, bottom - top, right - left)
    y, x = np.unravel_index(int(np.argmax(up)), up.shape)
    y, x = y + top, x + left
    if not (0 <= y < H and 0 <= x < W):
        return False
    return bool(mk[y, x])
