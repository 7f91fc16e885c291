"""Where a vision-language model's image tokens sit and which part of the image each one covers.

A VLM splices image tokens into its text sequence. ``ImageTokens`` records, for one prompt:

* ``positions``: the sequence index of every image token, in sequence order;
* ``views``: the image as the model cut it, each view a ``rows × cols`` grid of consecutive image tokens
  (row-major) covering ``box`` = (left, top, right, bottom) of the ORIGINAL image, in its pixels. LLaVA and
  PaliGemma have one view (the crop / the squashed image), Qwen2-VL one merged grid, Idefics3 / SmolVLM one
  view per tile plus the global view;
* the ``canvas``: the views that tile the image laid out in their places, one grid the maps are drawn on
  (a view with ``origin=None``, the global view, is shown beside it).

Every adapter builds this from its processor's output and config (never by counting by hand), and one test
checks it against the model: with the vision tower's mixing switched off, repainting one region of the image
changes exactly the image tokens whose boxes cover it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch


@dataclass(frozen=True)
class View:
    """One grid of image tokens: tokens ``start .. start + rows·cols`` (of the image tokens), row-major."""

    name: str
    rows: int
    cols: int
    box: tuple[float, float, float, float]       # (left, top, right, bottom) in the original image's pixels
    start: int
    origin: Optional[tuple[int, int]] = (0, 0)   # (row, col) of its first cell on the canvas; None: shown beside

    @property
    def n(self) -> int:
        return self.rows * self.cols

    def cell_boxes(self) -> np.ndarray:
        """[rows·cols, 4] (left, top, right, bottom) of each cell in original-image pixels, row-major."""
        l, t, r, b = self.box
        ys = np.linspace(t, b, self.rows + 1)
        xs = np.linspace(l, r, self.cols + 1)
        rr, cc = np.meshgrid(np.arange(self.rows), np.arange(self.cols), indexing="ij")
        rr, cc = rr.ravel(), cc.ravel()
        return np.stack([xs[cc], ys[rr], xs[cc + 1], ys[rr + 1]], axis=1)


@dataclass(frozen=True)
class ImageTokens:
    positions: tuple[int, ...]
    views: tuple[View, ...]
    image_size: tuple[int, int]                   # original (width, height)
    canvas_rows: int
    canvas_cols: int
    prefix: int = 0                               # leading image tokens that cover no region (LLaVA "full": CLS)

    def __post_init__(self):
        n = self.prefix + sum(v.n for v in self.views)
        if n != len(self.positions):
            raise RuntimeError(f"Image-token layout mismatch: the prompt holds {len(self.positions)} image tokens, "
                               f"the geometry describes {n}.")

    @property
    def n_tokens(self) -> int:
        return len(self.positions)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The part of the original image the canvas covers (a centre crop for LLaVA; else the whole image)."""
        placed = [v for v in self.views if v.origin is not None]
        return (round(min(v.box[0] for v in placed)), round(min(v.box[1] for v in placed)),
                round(max(v.box[2] for v in placed)), round(max(v.box[3] for v in placed)))

    def token_boxes(self) -> np.ndarray:
        """[n_tokens, 4] region of the original image each image token covers (NaN for prefix tokens)."""
        out = np.full((self.n_tokens, 4), np.nan)
        for v in self.views:
            s = self.prefix + v.start
            out[s:s + v.n] = v.cell_boxes()
        return out

    def view_map(self, values: torch.Tensor | np.ndarray, view: View) -> np.ndarray:
        """float32 [rows, cols] of one view from a per-image-token vector [n_tokens]."""
        v = values.detach().float().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        s = self.prefix + view.start
        return v[s:s + view.n].reshape(view.rows, view.cols).astype(np.float32)      # [rows, cols]

    def to_canvas(self, values: torch.Tensor | np.ndarray) -> np.ndarray:
        """float32 [canvas_rows, canvas_cols]: the placed views' maps in their places."""
        out = np.zeros((self.canvas_rows, self.canvas_cols), dtype=np.float32)
        for v in self.views:
            if v.origin is not None:
                r, c = v.origin
                out[r:r + v.rows, c:c + v.cols] = self.view_map(values, v)
        return out

    def beside(self, values: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """Maps of the views not placed on the canvas (Idefics3's global view), by name."""
        return {v.name: self.view_map(values, v) for v in self.views if v.origin is None}

    def describe(self) -> dict:
        """JSON-ready: the canvas, the crop box and every view (tiles, grid, where its tokens sit)."""
        return {"image_tokens": self.n_tokens, "first_position": int(self.positions[0]) if self.positions else None,
                "canvas": [self.canvas_rows, self.canvas_cols], "box": list(self.box), "prefix_tokens": self.prefix,
                "views": [{"name": v.name, "grid": [v.rows, v.cols], "box": [round(float(x), 2) for x in v.box],
                           "first_token": int(self.positions[self.prefix + v.start]),
                           "on_canvas": list(v.origin) if v.origin is not None else None} for v in self.views]}


def tiled(tile_rows: int, tile_cols: int, grid: int, size: tuple[int, int], with_global: bool) -> tuple[list[View], int, int]:
    """Idefics3's views: ``tile_rows × tile_cols`` tiles (row-major) of ``grid × grid`` tokens each covering an equal
    part of the whole image, then the global view (whole image) when there is one. Returns (views, canvas rows, cols)."""
    w, h = size
    views, start = [], 0
    for i in range(tile_rows):
        for j in range(tile_cols):
            box = (j * w / tile_cols, i * h / tile_rows, (j + 1) * w / tile_cols, (i + 1) * h / tile_rows)
            views.append(View(f"tile {i + 1},{j + 1}", grid, grid, box, start, (i * grid, j * grid)))
            start += grid * grid
    if with_global:
        placed = not views          # an image that needs no tiles is its global view alone: draw it on the canvas
        views.append(View("global", grid, grid, (0.0, 0.0, float(w), float(h)), start, (0, 0) if placed else None))
    rows, cols = (tile_rows * grid, tile_cols * grid) if tile_rows else (grid, grid)
    return views, rows, cols
