"""Building blocks of attnviz's self-contained HTML reports (a dataset's and a single image's).

Everything a page shows is inside the one file: plots are matplotlib figures
and overlays are Pillow images, both embedded as base64 PNG data URIs; the
style sheet is inline and there is no script. User text (labels, paths) is
escaped.
"""
from __future__ import annotations

import html
import io
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from PIL import Image

from . import render

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:72rem;color:#222;
     padding:0 1rem;line-height:1.4}
h1{font-size:1.6rem} h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0} td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:left}
th{background:#f4f4f4} .grid{display:flex;flex-wrap:wrap;gap:.8rem}
figure{margin:0;width:11rem;font-size:.8rem} figure img{width:11rem;border:1px solid #ccc}
figcaption{overflow-wrap:anywhere} .note{color:#555;font-size:.9rem} img.plot{max-width:100%}
"""


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def png_uri(img: Image.Image, max_side: Optional[int] = None) -> str:
    """An image as a PNG data URI, shrunk to ``max_side`` pixels on its longer side."""
    if max_side is not None and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return render.data_uri(buf.getvalue())


def figure_uri(fig) -> str:
    """A matplotlib figure as a PNG data URI (the figure is closed)."""
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return render.data_uri(buf.getvalue())


def new_figure(width: float = 6.0, height: float = 4.0):
    import matplotlib
    matplotlib.use("Agg")          # no display: reports are built headless
    import matplotlib.pyplot as plt
    return plt.subplots(figsize=(width, height))


def plot(fig, alt: str) -> str:
    return f'<img class="plot" alt="{esc(alt)}" src="{figure_uri(fig)}">'


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def card(img: Image.Image, caption: str, *, max_side: int = 256) -> str:
    return f'<figure><img alt="{esc(caption)}" src="{png_uri(img, max_side)}"><figcaption>{esc(caption)}</figcaption></figure>'


def grid(cards: Iterable[str]) -> str:
    return '<div class="grid">' + "".join(cards) + "</div>"


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{body}</body></html>")


def map_image(m: np.ndarray, *, signed: bool = False, side: int = 160, cmap: str = "inferno") -> Image.Image:
    """A bare map as a coloured image (nearest-neighbour, so patches stay visible)."""
    m01 = render.normalize(np.asarray(m, dtype=np.float64), render.default_norm(signed))
    rgb = render.colorize(m01, cmap)
    h, w = rgb.shape[:2]
    scale = max(1, side // max(h, w))
    return Image.fromarray(rgb).resize((w * scale, h * scale), Image.NEAREST)
