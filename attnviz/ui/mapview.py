"""How a map is drawn on a page: its colour scale, its legend and its overlay (pure: no Streamlit).

Every map on screen carries a legend that says which values its colours stand for. Maps of
different methods never share one scale: their units differ (attention weights sum to one,
relevance and gradients have the score's units, perturbations the score's change) and so may
their sign convention, and a shared scale lets the map with the largest numbers wash out the
others. Maps of one method for several targets (a prompt each, a caption word each) do share
one, so that a weak target also looks weak.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

from .. import render
from . import notes


@dataclass(frozen=True)
class Scale:
    """The values that the colour bar's two ends stand for, and how colours are picked."""

    lo: float
    hi: float
    cmap: str
    norm: str
    signed: bool
    clipped: bool = False     # some values lie beyond the bar's ends (a robust scale cut the outliers off)

    def describe(self) -> str:
        return f"{self.lo:.3g} to {self.hi:.3g}"

    def clip_note(self) -> str:
        """What the legend says when the scale clips outliers ('' when it clips nothing)."""
        if not self.clipped:
            return ""
        if self.norm == "robust":
            return "values above the 99th percentile shown at the top colour"
        if self.norm == "signed-robust":
            return "values beyond the 99th percentile of |value| shown at the end colours"
        return "values beyond the bar's ends shown at its end colours"


def scale_for(m: np.ndarray, signed: bool, display, *, vmin: Optional[float] = None,
              vmax: Optional[float] = None) -> Scale:
    """The scale ``display`` gives a map of this sign convention: its own range, or ``vmin``..``vmax``."""
    norm, cmap = display.norm_for(signed), display.cmap_for(signed)
    lo, hi = render.value_range(m, norm, vmin=vmin, vmax=vmax)
    return Scale(lo, hi, cmap, norm, signed, _beyond(np.asarray(m), lo, hi))


def _beyond(m: np.ndarray, lo: float, hi: float) -> bool:
    """Whether any value of ``m`` lies outside [lo, hi] by more than rounding."""
    tol = 1e-6 * max(abs(lo), abs(hi), 1e-12)
    return bool(m.size) and (float(m.max()) > hi + tol or float(m.min()) < lo - tol)


def shared_scale(maps, signed: bool, display) -> Scale:
    """One scale over several maps of the same method and units."""
    norm = display.norm_for(signed)
    lo, hi = render.shared_range(list(maps), norm)
    first = scale_for(np.asarray(maps[0]), signed, display, vmin=lo, vmax=hi)
    lo, hi = first.lo, first.hi
    clipped = any(_beyond(np.asarray(m), lo, hi) for m in maps)
    return Scale(lo, hi, first.cmap, first.norm, signed, clipped)


def draw(image: Image.Image, m: np.ndarray, scale: Scale, display, box=None) -> Image.Image:
    """The overlay of ``m`` on ``image`` in exactly the colours its legend shows."""
    return render.overlay(image, m, alpha=display.alpha, cmap=scale.cmap, norm=scale.norm,
                          resample=display.resample, box=box, vmin=scale.lo, vmax=scale.hi)


def colours(size: tuple[int, int], m: np.ndarray, scale: Scale, display, box=None):
    """What :func:`draw` blends onto an image of ``size``, before the opacity: (uint8 colours over the box,
    the box in pixels), for :func:`render.blend`."""
    return render.colour_layer(size, m, cmap=scale.cmap, norm=scale.norm, resample=display.resample, box=box,
                               vmin=scale.lo, vmax=scale.hi)


def legend_title(method: str, scale: Scale) -> str:
    """What the colours measure, in plain words (and which colour is for and which against)."""
    what = notes.units(method)
    if scale.signed and scale.cmap in ("RdBu_r", "coolwarm"):
        what = f"{what}: red for the target, blue against"
    note = scale.clip_note()
    return f"{what} ({note})" if note else what


def legend_html(scale: Scale, title: str) -> str:
    """A colour bar with its end values and a title, as HTML (browser text: readable at any size)."""
    stops = ", ".join(f"{c} {t * 100:.0f}%" for t, c in render.colorscale(scale.cmap, n=11))
    ticks = [f"<span>{html.escape(f'{scale.lo:.3g}')}</span>"]
    if scale.signed and scale.lo < 0 < scale.hi:
        ticks.append("<span>0</span>")
    ticks.append(f"<span>{html.escape(f'{scale.hi:.3g}')}</span>")
    return ('<div class="attnviz-legend" style="font-size: 0.8em; line-height: 1.3; margin: -0.3em 0 0.8em 0">'
            f'<div style="height: 0.7em; border-radius: 2px; background: linear-gradient(to right, {stops})"></div>'
            f'<div style="display: flex; justify-content: space-between">{"".join(ticks)}</div>'
            f'<div style="text-align: center; opacity: 0.8">{html.escape(title)}</div></div>')


SLIDE_SIDE = 1024     # exports are at least this large on their long side: a 64 px scene fills a slide


def slide_sized(image: Image.Image, box=None, side: int = SLIDE_SIDE):
    """(image, box) enlarged so the long side is at least ``side`` pixels (the box scaled with it)."""
    k = side / max(image.size)
    if k <= 1.0:
        return image, box
    big = image.resize((round(image.width * k), round(image.height * k)), Image.Resampling.LANCZOS)
    return big, (None if box is None else tuple(float(v) * big.width / image.width for v in box))


def picture(image: Image.Image, m: np.ndarray, scale: Scale, display, box, title: str) -> Image.Image:
    """The overlay with its legend drawn under it (a download looks like the screen), slide-sized."""
    image, box = slide_sized(image, box)
    shown = draw(image, m, scale, display, box)
    key = render.legend(shown.width, scale.lo, scale.hi, cmap=scale.cmap, title=title, signed=scale.signed)
    return render.with_legend(shown, key)


def masked_picture(image: Image.Image, m: np.ndarray, mask: np.ndarray, scale: Scale, display, box=None,
                   dim: float = render.OUTSIDE_DIM) -> Image.Image:
    """:func:`draw`'s overlay with the patches outside ``mask`` (bool, the map's grid) dimmed: a head's
    attention and its DINO mask (Caron et al. 2021) in one picture."""
    shown = np.asarray(draw(image, m, scale, display, box), dtype=np.float32)       # [h, w, 3]
    h, w = shown.shape[:2]
    left, top, right, bottom = (0, 0, w, h) if box is None else (int(round(v)) for v in box)
    keep = np.zeros((h, w), dtype=bool)
    inside = render.upsample(np.asarray(mask, dtype=np.float32), (right - left, bottom - top), "nearest") > 0.5
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(bottom, h), min(right, w)
    keep[y0:y1, x0:x1] = inside[y0 - top:y1 - top, x0 - left:x1 - left]
    shown[~keep] *= dim
    return Image.fromarray(np.rint(shown).astype(np.uint8))


GRID_FONT = 28        # label size (px) in a grid export: legible on a slide
GRID_GAP = 6


@dataclass(frozen=True)
class GridLayout:
    """Where a grid export puts its thumbnails: cell ``(i, j)`` (row i, column j) spans
    ``x0 + j·(w + gap) .. +w`` and ``y0 + i·(h + gap) .. +h`` of the picture."""

    x0: int
    y0: int
    w: int
    h: int
    gap: int

    def cell(self, i: int, j: int) -> tuple[int, int, int, int]:
        x, y = self.x0 + j * (self.w + self.gap), self.y0 + i * (self.h + self.gap)
        return x, y, x + self.w, y + self.h


def grid_layout(n_rows: int, n_cols: int, aspect: float, side: int = SLIDE_SIDE) -> GridLayout:
    """The cells of an ``n_rows`` × ``n_cols`` grid export whose thumbnails keep ``aspect`` (h / w) and whose
    thumbnails alone are at least ``side`` pixels wide (a slide), with room for the labels and a title line."""
    label_w, head_h = round(GRID_FONT * 2.4), GRID_FONT * 3 + 12        # row labels; title line + column labels
    w = max(48, -(-(side - GRID_GAP * (n_cols - 1)) // n_cols))
    return GridLayout(label_w, head_h, w, max(8, round(w * aspect)), GRID_GAP)


def grid_picture(maps: np.ndarray, *, row_label: str, col_label: str, title: str, cmap: str, norm: str,
                 shared: bool, image: Optional[Image.Image] = None, alpha: float = 0.6,
                 legend_title: str = "attention weight") -> Image.Image:
    """Every map of ``maps`` [rows, cols, r, c] as one labelled PNG-ready picture: a title line, the column
    labels (``col_label`` + index) on top, the row labels (``row_label`` + index) on the left, each map over
    a small copy of ``image``; with ``shared`` one scale and its legend under the grid, else each thumbnail
    on its own scale (said under the grid). The Heads page's L × H thumbnails in one click."""
    from PIL import ImageDraw

    from .figures import mosaic_image
    n_rows, n_cols, r, c = maps.shape
    lay = grid_layout(n_rows, n_cols, r / c)
    rgb, lo, hi = mosaic_image(maps, (lay.w, lay.h), lay.gap, cmap=cmap, norm=norm, shared=shared, image=image,
                               alpha=alpha)
    font = render._font(GRID_FONT)
    width = lay.x0 + rgb.shape[1] + GRID_GAP
    out = Image.new("RGB", (width, lay.y0 + rgb.shape[0] + GRID_GAP), (255, 255, 255))
    out.paste(Image.fromarray(rgb), (lay.x0, lay.y0))
    draw = ImageDraw.Draw(out)
    ink = (40, 40, 40)
    draw.text((lay.x0, 6), render._wrap(title, font, width - lay.x0)[0], fill=ink, font=font, anchor="la")
    for j in range(n_cols):
        x0, y0, x1, _ = lay.cell(0, j)
        draw.text(((x0 + x1) // 2, y0 - 6), f"{col_label}{j}", fill=ink, font=font, anchor="md")
    for i in range(n_rows):
        x0, y0, _, y1 = lay.cell(i, 0)
        draw.text((x0 - 8, (y0 + y1) // 2), f"{row_label}{i}", fill=ink, font=font, anchor="rm")
    if shared:
        key = render.legend(rgb.shape[1], lo, hi, cmap=cmap, title=legend_title, font_size=GRID_FONT)
    else:
        key = Image.new("RGB", (rgb.shape[1], GRID_FONT * 2), (255, 255, 255))
        ImageDraw.Draw(key).text((rgb.shape[1] // 2, GRID_FONT // 2), "each thumbnail on its own colour scale",
                                 fill=ink, font=font, anchor="ma")
    full = Image.new("RGB", (out.width, out.height + key.height), (255, 255, 255))
    full.paste(out, (0, 0))
    full.paste(key, (lay.x0, out.height))
    return full
