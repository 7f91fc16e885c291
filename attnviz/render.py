"""Pure rendering: normalise, upsample, colour and overlay explanation maps.

Nothing here touches a model. A *map* is a 2-D float array, either over the
patch grid ``[rows, cols]`` or over model-input pixels ``[H, W]``; it may be
signed (attributions) or non-negative (attention). Because the model may have
seen only a crop of the original image, every image-level function accepts
``box=(left, top, right, bottom)`` in original-image pixels (``None`` = the
whole image): the map is placed inside the box, and the rest of the image is
dimmed so the user sees what the model did not see.

All normalisations are linear (with clipping), so a Plotly heatmap coloured
with ``zmin/zmax`` from :func:`value_range` shows exactly the colours that
:func:`normalize` + :func:`colorize` give, while hover shows raw values.
"""

from __future__ import annotations

import html
import io
import math
from typing import Sequence

import numpy as np
from PIL import Image

NORMALIZATIONS = ("robust", "signed-robust", "minmax", "percentile", "signed")
# The percentile at which the robust normalisations put the top colour: real trained ViTs have a few
# patches 5-100x brighter than the rest (high-norm "register" artefacts), and a min-max scale then shows
# one bright patch on black. Values above it are drawn in the top colour, and the legend says so.
ROBUST_TOP = 99.0
RESAMPLES = ("nearest", "bilinear")

# Brightness factor for the part of the image the model did not see.
OUTSIDE_DIM = 0.35
# Longest side, in cells, of the heatmap drawn in a Plotly figure; the hover
# grid is this fine, and the figure JSON stays small for big photographs.
FIGURE_MAX_SIDE = 384
# Longest side of the background image embedded in a Plotly figure.
FIGURE_MAX_IMAGE_SIDE = 1024

Box = tuple[float, float, float, float]


# --------------------------------------------------------------------------
# validation helpers


def _as_map(m, *, name: str = "map", two_d: bool = False) -> np.ndarray:
    a = np.asarray(m, dtype=np.float64)
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    if two_d and a.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, cols] or [H, W], got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        n_nan = int(np.isnan(a).sum())
        n_inf = int(np.isinf(a).sum())
        raise ValueError(
            f"{name} contains non-finite values ({n_nan} NaN, {n_inf} inf); "
            "the explanation method produced an invalid map"
        )
    return a


def _check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def _check_limits(vmin, vmax) -> None:
    for v in (vmin, vmax):
        if v is not None and not math.isfinite(float(v)):
            raise ValueError(f"vmin/vmax must be finite numbers, got vmin={vmin!r}, vmax={vmax!r}")


def _check_clip(clip) -> tuple[float, float]:
    lo, hi = float(clip[0]), float(clip[1])
    if not (0.0 <= lo < hi <= 100.0):
        raise ValueError(f"percentile clip must satisfy 0 <= low < high <= 100, got {clip!r}")
    return lo, hi


# --------------------------------------------------------------------------
# normalisation


def default_norm(signed: bool) -> str:
    """The normalisation a map gets unless the user picks one: robust to a few outlier values
    (``signed-robust`` for signed maps, ``robust`` for the rest)."""
    return "signed-robust" if signed else "robust"


def is_robust(mode: str) -> bool:
    return mode in ("robust", "signed-robust")


def _robust_top(a: np.ndarray) -> float:
    """The :data:`ROBUST_TOP` percentile of ``a``, or its maximum when that percentile is its minimum
    (a map with fewer than 1 % non-minimal values, such as a head that attends to one patch, would
    otherwise be drawn all in the bottom colour)."""
    top = float(np.percentile(a, ROBUST_TOP))
    return top if top > float(a.min()) else float(a.max())


def _data_range(a: np.ndarray, mode: str, clip) -> tuple[float, float]:
    """The (vmin, vmax) a map's own values imply under ``mode``."""
    if mode == "minmax":
        return float(a.min()), float(a.max())
    if mode == "robust":
        return float(a.min()), _robust_top(a)
    if mode == "signed-robust":
        s = _robust_top(np.abs(a))
        return -s, s
    if mode == "percentile":
        lo, hi = _check_clip(clip)
        pl, ph = np.percentile(a, [lo, hi])
        return float(pl), float(ph)
    s = float(np.abs(a).max())
    return -s, s


def normalize(
    m: np.ndarray,
    mode: str = "robust",
    *,
    clip: tuple[float, float] = (1.0, 99.0),
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Map values to float32 in [0, 1].

    ``robust`` (the default for maps >= 0): min -> 0, the :data:`ROBUST_TOP`
    (99th) percentile -> 1, values above it clipped to 1: a few outlier
    patches (the high-norm "register" artefacts of trained ViTs) no longer
    take the whole colour range. ``signed-robust`` (the default for signed
    maps): as ``signed`` with s = the 99th percentile of |m|.
    ``minmax``: (m - min) / (max - min). ``percentile``: clip to the ``clip``
    percentiles, then minmax. ``signed``: 0 -> 0.5,
    -max|m| -> 0, +max|m| -> 1, so the sign survives (for attributions such
    as integrated gradients; use a diverging colormap).

    ``vmin``/``vmax`` override the range taken from the data, giving several
    maps one shared scale (see :func:`shared_range`); values outside are
    clipped. For ``signed`` the scale is max(|vmin|, |vmax|). A degenerate
    range (constant map) gives zeros, or 0.5 everywhere for ``signed``.
    """
    _check_choice(mode, NORMALIZATIONS, "normalization")
    a = _as_map(m)
    _check_limits(vmin, vmax)

    if mode in ("signed", "signed-robust"):
        if vmin is None and vmax is None:
            s = _data_range(a, mode, clip)[1]
        else:
            s = max(abs(float(v)) for v in (vmin, vmax) if v is not None)
        if s <= 0.0:
            return np.full(a.shape, 0.5, dtype=np.float32)
        out = 0.5 + 0.5 * np.clip(a / s, -1.0, 1.0)
        return out.astype(np.float32)

    lo, hi = _data_range(a, mode, clip) if (vmin is None or vmax is None) else (0.0, 0.0)
    lo = float(vmin) if vmin is not None else lo
    hi = float(vmax) if vmax is not None else hi
    if not hi > lo:
        return np.zeros(a.shape, dtype=np.float32)
    out = (np.clip(a, lo, hi) - lo) / (hi - lo)
    return out.astype(np.float32)


def value_range(
    m: np.ndarray,
    mode: str = "robust",
    *,
    clip: tuple[float, float] = (1.0, 99.0),
    vmin: float | None = None,
    vmax: float | None = None,
) -> tuple[float, float]:
    """The raw-value (low, high) that :func:`normalize` maps to (0, 1).

    Never degenerate (a constant map gets a unit-wide range placed so its
    colour matches ``normalize``), so it can be handed to Plotly as
    ``zmin/zmax``.
    """
    _check_choice(mode, NORMALIZATIONS, "normalization")
    _check_limits(vmin, vmax)
    a = _as_map(m)
    if mode in ("signed", "signed-robust"):
        if vmin is None and vmax is None:
            lo, hi = _data_range(a, mode, clip)
        else:
            lo, hi = (float(vmin) if vmin is not None else 0.0), (float(vmax) if vmax is not None else 0.0)
    else:
        lo, hi = _data_range(a, mode, clip) if (vmin is None or vmax is None) else (0.0, 0.0)
        lo = float(vmin) if vmin is not None else lo
        hi = float(vmax) if vmax is not None else hi
    return _display_range(lo, hi, mode)


def _display_range(lo: float, hi: float, mode: str) -> tuple[float, float]:
    """(lo, hi) made safe for Plotly's zmin/zmax, matching normalize()'s colours."""
    if mode in ("signed", "signed-robust"):
        s = max(abs(lo), abs(hi))
        s = s if s > 0.0 else 1.0  # normalize() gives 0.5 -> the middle colour
        return -s, s
    if not hi > lo:
        return lo, lo + 1.0  # normalize() gives 0 -> the bottom colour
    return lo, hi


def shared_range(
    maps: Sequence[np.ndarray], mode: str, *, clip: tuple[float, float] = (1.0, 99.0)
) -> tuple[float, float]:
    """The (vmin, vmax) to pass to :func:`normalize` so ``maps`` share one scale.

    minmax: global min and max; percentile and robust: the percentiles of all
    values pooled; signed: (-s, s) with s the largest |value| of any map
    (signed-robust: the 99th percentile of all |values| pooled).
    """
    _check_choice(mode, NORMALIZATIONS, "normalization")
    if len(maps) == 0:
        raise ValueError("shared_range needs at least one map")
    arrays = [_as_map(m, name=f"map {i}") for i, m in enumerate(maps)]
    if mode == "minmax":
        return float(min(a.min() for a in arrays)), float(max(a.max() for a in arrays))
    if mode in ("percentile", "robust", "signed-robust"):
        pooled = np.concatenate([a.ravel() for a in arrays])
        return _data_range(pooled, mode, clip)
    s = float(max(np.abs(a).max() for a in arrays))
    return -s, s


# --------------------------------------------------------------------------
# resampling and colour


def _check_size(size) -> tuple[int, int]:
    try:
        w, h = (int(size[0]), int(size[1]))
    except (TypeError, IndexError, ValueError):
        raise ValueError(f"size must be (width, height), got {size!r}") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"size must be positive (width, height), got {size!r}")
    return w, h


def upsample(m: np.ndarray, size: tuple[int, int], resample: str = "bilinear") -> np.ndarray:
    """Resize a 2-D map to ``size = (width, height)`` (PIL order); float32 out.

    ``nearest`` keeps patches as hard blocks (exact when the size is a
    multiple of the grid); ``bilinear`` is PIL's bilinear on a mode-"F" image
    (pixel centres aligned, like ``align_corners=False``).
    """
    _check_choice(resample, RESAMPLES, "resample")
    a = _as_map(m, two_d=True).astype(np.float32)
    w, h = _check_size(size)
    rows, cols = a.shape
    if (rows, cols) == (h, w):
        return a.copy()
    if resample == "nearest" and h % rows == 0 and w % cols == 0:
        # [rows, cols] -> [rows*ky, cols*kx]: exact blocks, no float rounding.
        return np.repeat(np.repeat(a, h // rows, axis=0), w // cols, axis=1)
    mode = Image.Resampling.NEAREST if resample == "nearest" else Image.Resampling.BILINEAR
    img = Image.fromarray(np.ascontiguousarray(a))  # float32 2-D -> mode "F"
    return np.asarray(img.resize((w, h), resample=mode), dtype=np.float32)


def _get_cmap(cmap: str):
    import matplotlib

    try:
        return matplotlib.colormaps[cmap]
    except KeyError:
        examples = ", ".join(["inferno", "viridis", "magma", "jet", "turbo", "RdBu_r", "coolwarm", "gray"])
        raise ValueError(
            f"unknown colormap {cmap!r}; valid names include {examples} "
            "(any name in matplotlib.colormaps)"
        ) from None


def colorize(m01: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """Colour a [0, 1] map with a matplotlib colormap -> uint8 ``[h, w, 3]``.

    Values outside [0, 1] are clipped. Channels are rounded (not truncated)
    from the colormap's float RGBA.
    """
    cm = _get_cmap(cmap)
    a = np.clip(_as_map(m01), 0.0, 1.0)
    # Index the colormap's own lookup table the way Colormap.__call__ does
    # (floor(x * N), 1.0 -> last entry): same colours, ~10x faster on
    # full-resolution photographs than calling the colormap per pixel.
    n = cm.N
    lut = np.round(cm(np.arange(n))[:, :3] * 255.0).astype(np.uint8)  # [N, 3]
    idx = np.minimum((a * n).astype(np.intp), n - 1)
    return lut[idx]


def colorscale(cmap: str = "inferno", n: int = 33) -> list[list]:
    """A Plotly colorscale sampled from a matplotlib colormap."""
    cm = _get_cmap(cmap)
    scale = []
    for t in np.linspace(0.0, 1.0, n):
        r, g, b = (int(round(c * 255)) for c in cm(float(t))[:3])
        scale.append([float(t), f"rgb({r},{g},{b})"])
    return scale


# --------------------------------------------------------------------------
# overlays


def _resolve_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    """Round a crop box to whole pixels; it may reach past the image edges."""
    if box is None:
        return 0, 0, width, height
    try:
        left, top, right, bottom = (int(round(float(v))) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"box must be (left, top, right, bottom), got {box!r}") from None
    if right <= left or bottom <= top:
        raise ValueError(f"box must have right > left and bottom > top, got {box!r}")
    if right <= 0 or bottom <= 0 or left >= width or top >= height:
        raise ValueError(f"box {box!r} lies outside the {width}x{height} image")
    return left, top, right, bottom


def _dim_outside(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """uint8 copy of ``rgb`` darkened outside ``box``."""
    h, w = rgb.shape[:2]
    left, top, right, bottom = box
    if left <= 0 and top <= 0 and right >= w and bottom >= h:
        return rgb.copy()
    out = np.round(rgb.astype(np.float32) * OUTSIDE_DIM).astype(np.uint8)
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(right, w), min(bottom, h)
    out[y0:y1, x0:x1] = rgb[y0:y1, x0:x1]
    return out


def overlay(
    image: Image.Image,
    m: np.ndarray,
    *,
    alpha: float = 0.5,
    cmap: str = "inferno",
    norm: str = "robust",
    resample: str = "bilinear",
    box: Box | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Image.Image:
    """Blend a coloured map onto ``image``; RGB at the original image size.

    The map is normalised (``norm``, optional shared ``vmin/vmax``),
    upsampled to the box (the model's view of the image; whole image when
    ``None``), coloured, and alpha-blended inside the box: ``alpha=0`` is the
    image, ``alpha=1`` the colours. Outside the box the image is dimmed by
    :data:`OUTSIDE_DIM`. The two steps are :func:`colour_layer` and :func:`blend`
    (the app keeps the first and redoes only the second when the opacity changes).
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    colours, px_box = colour_layer((rgb.shape[1], rgb.shape[0]), m, cmap=cmap, norm=norm, resample=resample,
                                   box=box, vmin=vmin, vmax=vmax)
    return blend(rgb, colours, px_box, alpha)


def colour_layer(
    size: tuple[int, int],
    m: np.ndarray,
    *,
    cmap: str = "inferno",
    norm: str = "robust",
    resample: str = "bilinear",
    box: Box | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The coloured map :func:`overlay` blends onto an image of ``size = (width, height)``:
    uint8 ``[box height, box width, 3]``, and the box in whole pixels."""
    width, height = _check_size(size)
    left, top, right, bottom = _resolve_box(box, width, height)
    m01 = normalize(_as_map(m, two_d=True), norm, vmin=vmin, vmax=vmax)
    return colorize(upsample(m01, (right - left, bottom - top), resample), cmap), (left, top, right, bottom)


def blend(rgb: np.ndarray, colours: np.ndarray, box: tuple[int, int, int, int], alpha: float = 0.5) -> Image.Image:
    """:func:`overlay`'s last step: ``colours`` (from :func:`colour_layer`) over the uint8 ``rgb`` image
    ``[h, w, 3]`` inside ``box`` at opacity ``alpha``; outside the box the image is dimmed."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    height, width = rgb.shape[:2]
    left, top, right, bottom = box
    out = _dim_outside(rgb, (left, top, right, bottom))
    # Part of the box inside the image, in image and in box coordinates.
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
    inside = rgb[y0:y1, x0:x1].astype(np.float32)
    col = colours[y0 - top : y1 - top, x0 - left : x1 - left].astype(np.float32)
    a = float(alpha)
    # (1 - a)·image + a·colours, rounded: in place (the same float32 operations, half the memory traffic).
    inside *= 1.0 - a
    col *= a
    inside += col
    np.rint(inside, out=inside)
    np.clip(inside, 0, 255, out=inside)
    out[y0:y1, x0:x1] = inside
    return Image.fromarray(out)


# --------------------------------------------------------------------------
# legends


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _tick(v: float) -> str:
    return f"{v:.3g}"     # a plain hyphen: Pillow's built-in font has no minus sign


def legend(
    width: int,
    lo: float,
    hi: float,
    *,
    cmap: str = "inferno",
    title: str = "",
    signed: bool = False,
    font_size: int | None = None,
) -> Image.Image:
    """A colour bar ``width`` pixels wide with its value ticks and a title: the key to one overlay.

    The bar runs from ``lo`` (left, colour 0) to ``hi`` (right, colour 1), linearly, as
    :func:`normalize` maps values for that range; a signed map (``lo = -hi``) gets a middle tick at 0.
    Text scales with the width, so a legend under a large image stays readable on a projector.
    """
    w = int(width)
    if w < 8:
        raise ValueError(f"legend width must be at least 8 pixels, got {width!r}")
    _check_limits(lo, hi)
    size = int(font_size or max(11, min(28, round(w / 26))))
    font = _font(size)
    bar_h = max(8, size * 2 // 3)
    pad = max(2, size // 4)
    lines = _wrap(title, font, w) if title else []
    height = pad + bar_h + pad + size + pad + (size + pad) * len(lines)
    img = Image.new("RGB", (w, height), (255, 255, 255))
    ramp = colorize(np.tile(np.linspace(0.0, 1.0, w, dtype=np.float32), (bar_h, 1)), cmap)  # [bar_h, w, 3]
    img.paste(Image.fromarray(ramp), (0, pad))
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    y = pad + bar_h + pad
    ticks = [(0, _tick(lo), "la"), (w, _tick(hi), "ra")]
    if signed and lo < 0 < hi:
        ticks.insert(1, (round(w * (0 - lo) / (hi - lo)), "0", "ma"))
    for x, text, anchor in ticks:
        draw.text((x, y), text, fill=(40, 40, 40), font=font, anchor=anchor)
    for i, line in enumerate(lines):      # the title wrapped to the bar's width: never cut
        draw.text((w // 2, y + (size + pad) * (i + 1)), line, fill=(40, 40, 40), font=font, anchor="ma")
    return img


def _wrap(text: str, font, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels in ``font`` (words kept whole unless one alone is wider)."""
    from PIL import ImageDraw
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    lines: list[str] = []
    for word in str(text).split():
        if lines and measure(lines[-1] + " " + word, font=font) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def with_legend(image: Image.Image, key: Image.Image) -> Image.Image:
    """``image`` with ``key`` (a :func:`legend`, resized to the image's width) under it."""
    if key.width != image.width:
        key = key.resize((image.width, max(1, round(key.height * image.width / key.width))), Image.Resampling.LANCZOS)
    out = Image.new("RGB", (image.width, image.height + key.height), (255, 255, 255))
    out.paste(image.convert("RGB"), (0, 0))
    out.paste(key, (0, image.height))
    return out


def side_by_side(images: Sequence[Image.Image], *, gap: int = 8) -> Image.Image:
    """Images next to each other, tops aligned, on white (a comparison as one PNG)."""
    if not images:
        raise ValueError("side_by_side needs at least one image")
    w = sum(i.width for i in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (w, max(i.height for i in images)), (255, 255, 255))
    x = 0
    for i in images:
        out.paste(i.convert("RGB"), (x, 0))
        x += i.width + gap
    return out


def to_png_bytes(img: Image.Image) -> bytes:
    """Encode an image as PNG bytes (for downloads and ``--out x.png``)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------
# Plotly figures


def plotly_text(text) -> str:
    """User text (a prompt, a caption word, a class name) for a Plotly label: Plotly draws a subset of
    HTML in labels (bold, links, line breaks), so it is escaped to show exactly what was typed."""
    return html.escape(str(text), quote=False)


def data_uri(png: bytes) -> str:
    """PNG bytes as a ``data:`` URI (plotly layout images, the self-contained HTML reports)."""
    import base64

    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_data_uri(img: Image.Image) -> str:
    """An image as a PNG ``data:`` URI."""
    return data_uri(to_png_bytes(img))


def _fit(w: int, h: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(w, h))
    return max(1, int(round(w * scale))), max(1, int(round(h * scale)))


def heatmap_figure(
    image: Image.Image,
    m: np.ndarray,
    *,
    title: str = "",
    cmap: str = "inferno",
    norm: str = "robust",
    alpha: float = 0.5,
    resample: str = "bilinear",
    box: Box | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    hover_label: str = "value",
    compact: bool = False,
    over: str = "patches",
):
    """Interactive overlay: the image below, a hoverable heatmap on top.

    Hovering names the map's own cell: "patch row r, col c" for a map over the patch grid (the same
    numbering as the query pickers), "input pixel row r, col c" of the model input for a pixel map;
    pixel positions of the displayed image mean nothing to the model (issue 20).

    ``compact``: for several figures side by side in narrow columns: the colour bar lies under the
    image and the axes carry no tick labels, so the image keeps the column's width.

    Axes are original-image pixels (y down). The heatmap holds RAW map
    values, so hovering shows them; colours use ``zmin/zmax`` from
    :func:`value_range`, identical to :func:`overlay`'s. With ``nearest`` the
    heatmap is the map itself, one cell per patch; with ``bilinear`` it is
    upsampled to at most :data:`FIGURE_MAX_SIDE` cells a side.
    """
    import plotly.graph_objects as go

    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    _check_choice(resample, RESAMPLES, "resample")
    a = _as_map(m, two_d=True)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    height, width = rgb.shape[:2]
    left, top, right, bottom = _resolve_box(box, width, height)
    bw, bh = right - left, bottom - top
    zmin, zmax = value_range(a, norm, vmin=vmin, vmax=vmax)

    if resample == "nearest":
        z = a.astype(np.float32)
    else:
        z = upsample(a, _fit(bw, bh, FIGURE_MAX_SIDE), "bilinear")
    rows, cols = z.shape
    # The map cell under each heatmap cell (the upsampled cells of one patch name that patch).
    src_r = np.minimum((np.arange(rows) * a.shape[0]) // rows, a.shape[0] - 1)
    src_c = np.minimum((np.arange(cols) * a.shape[1]) // cols, a.shape[1] - 1)
    cell = np.stack(np.meshgrid(src_r, src_c, indexing="ij"), axis=-1)        # [rows, cols, 2]: (row, col)
    where = "patch" if over == "patches" else "input pixel"
    # Cell centres in original-image pixels; cells tile the box exactly.
    xs = left + (np.arange(cols) + 0.5) * (bw / cols)
    ys = top + (np.arange(rows) + 0.5) * (bh / rows)

    background = Image.fromarray(_dim_outside(rgb, (left, top, right, bottom)))
    background = background.resize(_fit(width, height, FIGURE_MAX_IMAGE_SIDE), Image.Resampling.BILINEAR)

    label = str(hover_label).replace("%", "%%")
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=xs,
            y=ys,
            zmin=zmin,
            zmax=zmax,
            colorscale=colorscale(cmap),
            opacity=float(alpha),
            zsmooth=False,
            colorbar=(dict(orientation="h", y=-0.04, yanchor="top", thickness=10, len=1.0,
                           title=dict(text=plotly_text(hover_label), side="top"))
                      if compact else dict(title=dict(text=plotly_text(hover_label)))),
            customdata=cell,
            hovertemplate=f"{where} row %{{customdata[0]}}, col %{{customdata[1]}}<br>{label}=%{{z:.4g}}"
                          "<extra></extra>",
            name=str(hover_label),
        )
    )
    fig.add_layout_image(
        dict(
            source=png_data_uri(background),
            xref="x",
            yref="y",
            x=0,
            y=0,
            sizex=width,
            sizey=height,
            xanchor="left",
            yanchor="top",
            sizing="stretch",
            layer="below",
        )
    )
    fig.update_xaxes(range=[0, width], showgrid=False, zeroline=False, constrain="domain",
                     showticklabels=not compact)
    fig.update_yaxes(
        range=[height, 0], showgrid=False, zeroline=False, scaleanchor="x", scaleratio=1, constrain="domain",
        showticklabels=not compact,
    )
    fig.update_layout(
        title=dict(text=plotly_text(title)) if title else None,
        margin=dict(l=10, r=10, t=40 if title else 10, b=60 if compact else 10),
        height=340 if compact else None,
        plot_bgcolor="rgba(0,0,0,0)",
    )
    return fig


def grid_figure(
    maps: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    cols: int,
    cmap: str = "inferno",
    norm: str = "robust",
    shared: bool = True,
):
    """Small multiples (e.g. layer x head thumbnails), one heatmap per map.

    With ``shared`` every trace gets the same ``zmin/zmax`` (from
    :func:`shared_range`) and one colorbar, so brightness compares across
    maps; otherwise each map uses its own range and no colorbar is drawn.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if len(maps) == 0:
        raise ValueError("grid_figure needs at least one map")
    if len(titles) != len(maps):
        raise ValueError(f"got {len(maps)} maps but {len(titles)} titles")
    if int(cols) < 1:
        raise ValueError(f"cols must be >= 1, got {cols!r}")
    arrays = [_as_map(m, name=f"map {i}", two_d=True) for i, m in enumerate(maps)]
    cols = min(int(cols), len(arrays))
    rows = math.ceil(len(arrays) / cols)
    scale = colorscale(cmap)
    if shared:
        common = _display_range(*shared_range(arrays, norm), norm)

    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[plotly_text(t) for t in titles],
        horizontal_spacing=0.02,
        vertical_spacing=0.06 if rows > 1 else 0.0,
    )
    for i, a in enumerate(arrays):
        r, c = divmod(i, cols)
        zmin, zmax = common if shared else value_range(a, norm)
        fig.add_trace(
            go.Heatmap(
                z=a.astype(np.float32),
                zmin=zmin,
                zmax=zmax,
                colorscale=scale,
                showscale=shared and i == 0,
                zsmooth=False,
                name=plotly_text(titles[i]),
                hovertemplate=f"{plotly_text(titles[i]).replace('%', '%%')}<br>row=%{{y}}, col=%{{x}}"
                "<br>value=%{z:.4g}<extra></extra>",
            ),
            row=r + 1,
            col=c + 1,
        )
    for i in range(len(arrays)):
        axis = "" if i == 0 else str(i + 1)
        fig.update_layout(
            {
                f"xaxis{axis}": dict(showticklabels=False, showgrid=False, zeroline=False, constrain="domain"),
                f"yaxis{axis}": dict(
                    showticklabels=False,
                    showgrid=False,
                    zeroline=False,
                    autorange="reversed",
                    scaleanchor=f"x{axis}",
                    scaleratio=1,
                    constrain="domain",
                ),
            }
        )
    fig.update_layout(
        height=max(200, 170 * rows + 40),
        margin=dict(l=10, r=10, t=40, b=10),
    )
    return fig
