"""Plotly figures the pages compose (pure: no Streamlit, no model)."""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image

from .. import render


LABEL_CHARS = 40     # longer labels (a long prompt) are cut in the axis; the hover shows them whole
PRESENT_FONT = 20    # chart text in presentation mode (px)
RING = (("#000000", 5), ("#ffffff", 2))   # a selection ring: a dark line under a light one, seen on any colour


def presented(fig, size: int = PRESENT_FONT):
    """A copy of ``fig`` whose text is ``size`` px (presentation mode: legible on a projector). A copy, because
    the pages' figures are cached and shared by every session."""
    import plotly.graph_objects as go
    out = go.Figure(fig)
    # Streamlit's chart theme sets tick and title fonts of its own: each is set here, not just the layout's.
    out.update_layout(font=dict(size=size), legend_font_size=size, hoverlabel_font_size=size)
    if out.layout.title.text:
        out.update_layout(title_font_size=size + 2)
    out.update_xaxes(tickfont_size=size, title_font_size=size)
    out.update_yaxes(tickfont_size=size, title_font_size=size)
    out.update_annotations(font_size=size)                     # subplot titles, line labels
    out.update_traces(textfont_size=size, selector=dict(type="bar"))
    out.update_traces(colorbar_tickfont_size=size, colorbar_title_font_size=size, selector=dict(type="heatmap"))
    out.update_traces(marker_colorbar_tickfont_size=size, marker_colorbar_title_font_size=size,
                      selector=lambda t: t.type == "scatter" and t.marker.showscale)   # (others would get a bar)
    return out


def ring(fig, x0: float, x1: float, y0: float, y1: float) -> None:
    """Ring a rectangle so that it shows on any colour (a cyan object swallowed the old cyan ring)."""
    for colour, width in RING:
        fig.add_shape(type="rect", x0=x0, x1=x1, y0=y0, y1=y1, line=dict(color=colour, width=width))


def predictions_figure(rows: Sequence[dict], selected: Optional[int] = None, *, value: str = "probability",
                       keep_order: bool = False, font_size: Optional[int] = None):
    """Horizontal bars of the top-k targets, the first row on top; the selected target highlighted.

    Bars sit at numeric positions with the labels as tick text, so two equal (or equally cut) labels
    never merge into one bar.
    """
    import plotly.graph_objects as go
    rows = list(rows)[::-1]
    full = [r["label"] if keep_order else f"{r['label']} (#{r['index']})" for r in rows]
    ticks = [render.plotly_text(t if len(t) <= LABEL_CHARS else t[:LABEL_CHARS - 1] + "…") for t in full]
    vals = [r[value] for r in rows]
    colours = ["#e4572e" if r["index"] == selected else "#4c78a8" for r in rows]
    pos = list(range(len(rows)))
    fig = go.Figure(go.Bar(
        x=vals, y=pos, orientation="h", marker_color=colours, customdata=[render.plotly_text(t) for t in full],
        text=[f"{v:.1%}" if value == "probability" else f"{v:.3g}" for v in vals], textposition="auto",
        hovertemplate="%{customdata}<br>" + value + "=%{x:.4g}<extra></extra>"))
    size = font_size or 14
    scale = size / 14
    # The bar labels at the font's size: inside a bar plotly shrinks them to its height (~9 px) unless told not to.
    fig.update_layout(height=int((60 + 28 * len(rows)) * scale), margin=dict(l=10, r=10, t=10, b=10),
                      font=dict(size=size), uniformtext=dict(minsize=size, mode="show"),
                      xaxis=dict(range=[0, 1] if value == "probability" else None, title=value),
                      yaxis=dict(automargin=True, tickmode="array", tickvals=pos, ticktext=ticks))
    fig.update_xaxes(tickfont_size=size, title_font_size=size)       # Streamlit's theme would shrink them
    fig.update_yaxes(tickfont_size=size)
    return fig


MOSAIC_WIDTH = 570    # the figure's width in pixels: the Heads page's column at 1440 px, labels included
MOSAIC_LABELS = (34, 24, 64)     # left (layer labels), top (head labels), bottom (colour bar) margins, px
MOSAIC_FONT = 14                 # the thumbnails' labels (px) outside presentation mode


def mosaic_image(maps: np.ndarray, cell: tuple[int, int], gap: int, *, cmap: str, norm: str, shared: bool,
                 image: Optional[Image.Image] = None, alpha: float = 0.6,
                 resample: str = "bilinear") -> tuple[np.ndarray, float, float]:
    """(rgb [L·(h+gap)-gap, H·(w+gap)-gap, 3] uint8, lo, hi): every head's map coloured, on white gaps.

    ``cell`` = (w, h) of a thumbnail; ``image`` (the model's view, already cropped) puts each map over
    a small copy of the image. ``shared``: one colour range for all (lo..hi), else each its own.
    """
    L, H = maps.shape[:2]
    w, h = cell
    a = maps.astype(np.float64)
    lo, hi = render.value_range(a.reshape(-1, a.shape[-1]), norm) if shared else (0.0, 1.0)
    under = (image.convert("RGB").resize((w, h), Image.Resampling.BILINEAR) if image is not None
             else Image.new("RGB", (w, h)))
    out = np.full((L * (h + gap) - gap, H * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for li in range(L):
        for hj in range(H):
            vmin, vmax = (lo, hi) if shared else render.value_range(a[li, hj], norm)
            thumb = render.overlay(under, a[li, hj], alpha=alpha if image is not None else 1.0, cmap=cmap,
                                   norm=norm, resample=resample, vmin=vmin, vmax=vmax)
            y0, x0 = li * (h + gap), hj * (w + gap)
            out[y0:y0 + h, x0:x0 + w] = np.asarray(thumb)
    return out, lo, hi


def head_mosaic_figure(maps: np.ndarray, *, cmap: str = "inferno", norm: str = "minmax", shared: bool = True,
                       selected: Optional[tuple[int, int]] = None, image: Optional[Image.Image] = None,
                       alpha: float = 0.6, width: int = MOSAIC_WIDTH, font_size: Optional[int] = None,
                       thumbnails: Optional[Callable[..., tuple[np.ndarray, float, float]]] = None,
                       max_height: Optional[int] = None):
    """Layer × head thumbnails as ONE image (fast to draw even for 12×12 heads), clickable.

    ``maps``: [L, H, rows, cols]. The figure is exactly as large as its thumbnails plus the label and
    colour-bar margins (drawn at that width, no empty bands), the head labels sit on the top edge and
    the layer labels on the left edge of the thumbnails, and the colour bar under them is as wide as
    the grid. ``image``: the model's view of the image, drawn under each thumbnail. A transparent
    marker on each thumbnail's centre carries (layer, head), so a click anywhere selects it. With
    ``shared`` every head uses one colour range (brightness compares across heads); otherwise each
    thumbnail is scaled on its own and there is no colour bar. ``max_height``: the thumbnails shrink so that
    the whole figure is at most this tall (presentation mode: the grid on one screen). The label margins grow
    with ``font_size``.
    """
    import plotly.graph_objects as go
    L, H, r, c = maps.shape
    font_size = font_size or MOSAIC_FONT
    grow = font_size / 12
    left, top, bottom = (round(m * grow) for m in MOSAIC_LABELS)
    left += round(8 * grow) if L > 10 else 0                          # "L11" is a character longer
    gap = max(2, width // 200)
    cw = int(np.clip((width - left - 8 - gap * (H - 1)) // H, 16, 128))
    if max_height is not None:        # rows of thumbnails, the labels and the colour bar within max_height
        room = max_height - top - (bottom if shared else 8) - gap * (L - 1)
        cw = max(16, min(cw, int(room / L * c / r)))
    ch = max(8, round(cw * r / c))                                  # thumbnails keep the grid's aspect
    make = thumbnails or mosaic_image          # the app passes a cached one (panels.thumbnails)
    rgb, lo, hi = make(maps, (cw, ch), gap, cmap=cmap, norm=norm, shared=shared, image=image, alpha=alpha)
    gh, gw = rgb.shape[:2]
    cx = [h * (cw + gap) + (cw - 1) / 2 for li in range(L) for h in range(H)]
    cy = [li * (ch + gap) + (ch - 1) / 2 for li in range(L) for h in range(H)]
    fig = go.Figure()
    fig.add_trace(go.Image(z=rgb, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=cx, y=cy, mode="markers", customdata=[[li, h] for li in range(L) for h in range(H)],
                             marker=dict(size=max(6, min(cw, ch)), symbol="square", opacity=0.0),
                             hovertemplate="layer %{customdata[0]}, head %{customdata[1]}<br>click to enlarge"
                                           "<extra></extra>", showlegend=False))
    if shared:   # the colour bar: an empty trace that only carries the scale, as wide as the grid
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", hoverinfo="skip", showlegend=False,
                                 marker=dict(colorscale=render.colorscale(cmap), cmin=lo, cmax=hi, color=[lo],
                                             showscale=True,
                                             colorbar=dict(orientation="h", x=0, xanchor="left", len=1.0,
                                                           y=-8 / gh, yanchor="top", thickness=10,
                                                           title=dict(text="attention weight", side="right")))))
    if selected is not None:
        li, h = selected
        x0, y0 = h * (cw + gap) - 0.5, li * (ch + gap) - 0.5
        ring(fig, x0 - gap / 2, x0 + cw + gap / 2, y0 - gap / 2, y0 + ch + gap / 2)
    fig.update_xaxes(range=[-0.5, gw - 0.5], tickvals=[h * (cw + gap) + (cw - 1) / 2 for h in range(H)],
                     ticktext=[f"h{h}" for h in range(H)], side="top", showgrid=False, zeroline=False,
                     ticks="", fixedrange=True)
    fig.update_yaxes(range=[gh - 0.5, -0.5], tickvals=[li * (ch + gap) + (ch - 1) / 2 for li in range(L)],
                     ticktext=[f"L{li}" for li in range(L)], showgrid=False, zeroline=False, ticks="",
                     fixedrange=True)
    # Streamlit's chart theme shrinks tick labels to ~8 px unless they carry their own size (issue 20)
    fig.update_xaxes(tickfont_size=font_size)
    fig.update_yaxes(tickfont_size=font_size)
    fig.update_layout(width=left + gw + 8, height=top + gh + (bottom if shared else 8), autosize=False,
                      margin=dict(l=left, r=8, t=top, b=bottom if shared else 8, pad=0),
                      font=dict(size=font_size), hovermode="closest", hoverdistance=-1,
                      clickmode="event+select", dragmode=False, plot_bgcolor="rgba(0,0,0,0)")
    return fig


DOTS_UP_TO = 12     # patches a side up to which the picker draws a dot on each patch


def patch_picker_figure(image: Image.Image, rows: int, cols: int, *, box=None,
                        selected: Optional[tuple[int, int]] = None):
    """The image with a clickable dot on every patch centre; the selected patch ringed. On a fine grid
    (more than :data:`DOTS_UP_TO` patches a side) the dots would hide the image: each patch is then an
    invisible square that still answers hover and click."""
    import plotly.graph_objects as go
    w, h = image.size
    left, top, right, bottom = (0, 0, w, h) if box is None else box
    pw, ph = (right - left) / cols, (bottom - top) / rows
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    xs, ys = left + (cc.ravel() + 0.5) * pw, top + (rr.ravel() + 0.5) * ph
    fig = go.Figure(go.Scatter(
        x=xs, y=ys, mode="markers", customdata=np.stack([rr.ravel(), cc.ravel()], 1),
        marker=(dict(size=max(3, min(10, 400 // max(rows, cols))), color="rgba(255,255,255,0.55)",
                     line=dict(color="rgba(0,0,0,0.5)", width=1)) if max(rows, cols) <= DOTS_UP_TO else
                dict(size=max(4, 380 // max(rows, cols)), symbol="square", opacity=0.0)),
        hovertemplate="patch row %{customdata[0]}, col %{customdata[1]}<br>click to query<extra></extra>",
        showlegend=False))
    if selected is not None:
        sr, sc = selected
        ring(fig, left + sc * pw, left + (sc + 1) * pw, top + sr * ph, top + (sr + 1) * ph)
    fig.add_layout_image(dict(source=render.png_data_uri(image), xref="x", yref="y", x=0, y=0, sizex=w, sizey=h,
                              xanchor="left", yanchor="top", sizing="stretch", layer="below"))
    fig.update_xaxes(range=[0, w], showgrid=False, zeroline=False, visible=False, constrain="domain")
    fig.update_yaxes(range=[h, 0], showgrid=False, zeroline=False, visible=False, scaleanchor="x", scaleratio=1,
                     constrain="domain")
    fig.update_layout(margin=dict(l=0, r=0, t=0, b=0), hovermode="closest", hoverdistance=-1,
                      clickmode="event+select", dragmode=False, height=380, plot_bgcolor="rgba(0,0,0,0)")
    return fig


def head_stats_figure(distance: np.ndarray, entropy: np.ndarray, n_tokens: int, *,
                      selected: Optional[tuple[int, int]] = None):
    """ViT Fig. 7 for one image: mean attention distance per head by layer, and entropy per head."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    L, H = distance.shape
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("Mean attention distance (input pixels)",
                                        "Attention entropy (nats: natural-log units)"))
    layers = np.repeat(np.arange(L), H)
    heads = np.tile(np.arange(H), L)
    jitter = (heads - (H - 1) / 2) / max(H, 1) * 0.5           # spread a layer's heads sideways a little
    for col, vals, unit in ((1, distance, "px"), (2, entropy, "nats")):
        fig.add_trace(go.Scatter(
            x=layers + jitter, y=vals.ravel(), mode="markers", customdata=np.stack([layers, heads], 1),
            marker=dict(color=heads, colorscale="Viridis", size=8, showscale=False, line=dict(width=0.5, color="#333")),
            hovertemplate="layer %{customdata[0]}, head %{customdata[1]}<br>%{y:.3g} " + unit + "<extra></extra>",
            showlegend=False), row=1, col=col)
        if selected is not None:
            li, h = selected
            fig.add_trace(go.Scatter(x=[li + jitter[li * H + h]], y=[vals[li, h]], mode="markers",
                                     marker=dict(size=14, color="rgba(0,0,0,0)", line=dict(color="#e4572e", width=2.5)),
                                     hoverinfo="skip", showlegend=False), row=1, col=col)
    fig.add_hline(y=math.log(n_tokens), line_dash="dot", line_color="gray", row=1, col=2,
                  annotation_text="uniform (log T)", annotation_position="bottom right")
    fig.update_xaxes(title_text="layer", dtick=1 if L <= 24 else None)
    fig.update_yaxes(rangemode="tozero")
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def deletion_figure(result: dict):
    """Deletion and insertion curves of a map (solid) beside random orders (dotted), AUC in the legend."""
    import plotly.graph_objects as go
    fig = go.Figure()
    colours = {"deletion": "#e4572e", "insertion": "#4c78a8"}
    for kind in ("deletion", "insertion"):
        c = result[kind]
        fig.add_trace(go.Scatter(x=c.fractions, y=c.values, mode="lines+markers", marker=dict(size=4),
                                 line=dict(color=colours[kind], width=2.5),
                                 name=f"{kind}, map order (AUC {c.auc:.3f})",
                                 hovertemplate="%{x:.0%} changed<br>%{y:.4g}<extra></extra>"))
        for i, r in enumerate(result[f"random_{kind}"]):
            fig.add_trace(go.Scatter(x=r.fractions, y=r.values, mode="lines", showlegend=i == 0,
                                     line=dict(color=colours[kind], width=1.5, dash="dot"),
                                     name=f"{kind}, random order (AUC {r.auc:.3f})",
                                     hovertemplate="%{x:.0%} changed<br>%{y:.4g}<extra></extra>"))
    q = result["deletion"].quantity
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=10, b=10), legend=dict(orientation="h", y=-0.3),
                      xaxis=dict(title="share of the image changed", tickformat=".0%", automargin=True),
                      yaxis=dict(title=f"target {q}", range=[0, 1.02] if q == "probability" else None,
                                 automargin=True))
    return fig


def randomisation_figure(steps: Sequence):
    """Rank correlation with the original map as more blocks are randomised (from the top)."""
    import plotly.graph_objects as go
    # short ticks: "none", "5", "4–5", ... (the blocks randomised so far)
    labels = ["none" if not s.blocks else (f"{s.blocks[0]}" if len(s.blocks) == 1 else f"{s.blocks[0]}–{s.blocks[-1]}")
              for s in steps]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=labels, y=[s.spearman_abs for s in steps], mode="lines+markers",
                             name="Spearman of |map|", line=dict(color="#e4572e", width=2.5)))
    fig.add_trace(go.Scatter(x=labels, y=[s.spearman for s in steps], mode="lines+markers",
                             name="Spearman of the signed map", line=dict(color="#4c78a8", width=1.5, dash="dot")))
    fig.add_hline(y=0, line_color="gray", line_width=1)
    # Room for the axis titles: with a 10 px margin the x title was cut ("…from the to", issue 20).
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
                      xaxis=dict(title=dict(text="blocks randomised, from the top", standoff=8), type="category",
                                 automargin=True),
                      yaxis=dict(title=dict(text="Spearman with the original", standoff=4), range=[-1.05, 1.05],
                                 automargin=True))
    return fig
