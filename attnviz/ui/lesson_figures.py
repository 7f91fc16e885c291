"""Plotly figures of the teaching page (pure: no Streamlit, no model): tokens, q, k, the check, Σ a·v."""
from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image

from .. import render
from ..types import TokenLayout
from . import figures
from .lesson_steps import HeadView, token_label, top_tokens

PREFIX_COLOURS = {"cls": "#e4572e", "distillation": "#f2a541"}
REGISTER_COLOUR = "#9c6ade"
PATCH_COLOUR = "#a0aec0"
QUERY_COLOUR = "#00b4d8"


def _plain(fig, height: int, **margin):
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10, **margin), plot_bgcolor="rgba(0,0,0,0)",
                      dragmode=False)
    return fig


def patch_grid_picker(image: Image.Image, layout: TokenLayout, *, box=None,
                      selected: Optional[tuple[int, int]] = None):
    """The clickable patch picker with the patch borders drawn: the image as the model cuts it."""
    fig = figures.patch_picker_figure(image, layout.rows, layout.cols, box=box, selected=selected)
    w, h = image.size
    left, top, right, bottom = (0, 0, w, h) if box is None else box
    line = dict(color="rgba(255,255,255,0.6)", width=1)
    for c in range(1, layout.cols):
        x = left + c * (right - left) / layout.cols
        fig.add_shape(type="line", x0=x, x1=x, y0=top, y1=bottom, line=line, layer="above")
    for r in range(1, layout.rows):
        y = top + r * (bottom - top) / layout.rows
        fig.add_shape(type="line", x0=left, x1=right, y0=y, y1=y, line=line, layer="above")
    return fig


def _token_colour(layout: TokenLayout, i: int) -> str:
    if i >= layout.n_prefix:
        return PATCH_COLOUR
    name = layout.prefix_names[i]
    return PREFIX_COLOURS.get(name, REGISTER_COLOUR if name.startswith("register") else "#718096")


def token_strip_figure(layout: TokenLayout, query: int):
    """The token sequence as one row of cells: extra tokens first (coloured), then the patches, query ringed."""
    import plotly.graph_objects as go
    t = layout.n_tokens
    names = [token_label(layout, i) for i in range(t)]
    fig = go.Figure(go.Bar(x=list(range(t)), y=[1] * t, marker_color=[_token_colour(layout, i) for i in range(t)],
                           marker_line_width=0, customdata=names, width=0.9,
                           hovertemplate="token %{x}: %{customdata}<extra></extra>", showlegend=False))
    fig.add_trace(go.Scatter(x=[query], y=[1.25], mode="markers", marker=dict(symbol="triangle-down", size=14,
                                                                             color=QUERY_COLOUR),
                             hovertemplate=f"the query: {names[query]}<extra></extra>", showlegend=False))
    ticks = sorted({*range(layout.n_prefix), t - 1, query})          # the extra tokens, the query, the last patch
    fig.update_xaxes(tickvals=ticks, ticktext=[names[i].replace("patch ", "").replace(" token", "") for i in ticks],
                     tickangle=-45 if layout.n_prefix > 2 else 0,
                     range=[-0.6, t - 0.4], showgrid=False)
    fig.update_yaxes(visible=False, range=[0, 1.45])
    return _plain(fig, 150)


def token_legend(layout: TokenLayout) -> str:
    """What the strip's colours mean, for the tokens this model has."""
    kinds = {}
    for i in range(layout.n_prefix):
        name = layout.prefix_names[i]
        kinds.setdefault("registers" if name.startswith("register") else token_label(layout, i), _token_colour(layout, i))
    kinds[f"the {layout.n_patches} patches, row by row"] = PATCH_COLOUR
    return " · ".join(f"<span style='color:{c}'>■</span> {k}" for k, c in kinds.items()) + \
        f" · <span style='color:{QUERY_COLOUR}'>▼</span> the query"


def vector_figure(values: np.ndarray, name: str, colour: str = QUERY_COLOUR):
    """A vector as bars, one per number (signed)."""
    import plotly.graph_objects as go
    fig = go.Figure(go.Bar(x=list(range(values.size)), y=values, marker_color=colour, name=name,
                           hovertemplate=f"{name}[%{{x}}] = %{{y:.4g}}<extra></extra>"))
    fig.update_xaxes(title_text="number (dimension)", showgrid=False)
    fig.update_yaxes(zeroline=True, zerolinecolor="#888")
    return _plain(fig, 220)


def keys_figure(view: HeadView, layout: TokenLayout):
    """Every token's key as a row (tokens down, dimensions across), the query's own row marked."""
    import plotly.graph_objects as go
    k = view.k                                                                   # [T, d]
    names = np.array([[token_label(layout, i)] * k.shape[1] for i in range(k.shape[0])])
    lim = float(np.abs(k).max()) or 1.0
    fig = go.Figure(go.Heatmap(z=k, zmin=-lim, zmax=lim, colorscale=render.colorscale("RdBu_r"), customdata=names,
                               colorbar=dict(title="key", thickness=10),
                               hovertemplate="%{customdata}<br>number %{x}: %{z:.3g}<extra></extra>"))
    fig.add_shape(type="rect", x0=-0.5, x1=k.shape[1] - 0.5, y0=view.query - 0.5, y1=view.query + 0.5,
                  line=dict(color=QUERY_COLOUR, width=2))
    fig.update_yaxes(autorange="reversed", title_text="token", showgrid=False)
    fig.update_xaxes(title_text="number (dimension)", showgrid=False)
    return _plain(fig, int(min(520, max(220, 3 * k.shape[0] + 80))))


def check_figure(view: HeadView, layout: TokenLayout):
    """Recomputed softmax against the model's own attention, one point per token, with the diagonal."""
    import plotly.graph_objects as go
    names = [token_label(layout, i) for i in range(view.weights.size)]
    top = float(max(view.weights.max(), view.model.max())) * 1.05 or 1.0
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", line=dict(color="#888", dash="dot"),
                             hoverinfo="skip", showlegend=False))
    fig.add_trace(go.Scatter(x=view.model, y=view.weights, mode="markers", customdata=names,
                             marker=dict(size=7, color=[_token_colour(layout, i) for i in range(len(names))],
                                         line=dict(width=0.5, color="#333")),
                             hovertemplate="%{customdata}<br>model %{x:.6f}<br>recomputed %{y:.6f}<extra></extra>",
                             showlegend=False))
    fig.update_xaxes(title_text="the model's attention", range=[0, top], tickformat=".0%")
    fig.update_yaxes(title_text="softmax(q·k/√d) here", range=[0, top], tickformat=".0%", scaleanchor="x")
    return _plain(fig, 320)


def weighted_sum_figure(view: HeadView, layout: TokenLayout, n: int = 5):
    """Σ_j a_j v_j as rows: the heaviest tokens' weighted values, the rest together, and the total."""
    import plotly.graph_objects as go
    top = top_tokens(view, n)
    rest = [i for i in range(view.weights.size) if i not in set(top)]
    rows = [view.weights[i] * view.v[i] for i in top]                               # [d] each
    labels = [f"{view.weights[i]:.1%} × value of {token_label(layout, i)}" for i in top]
    if rest:
        rows.append((view.weights[rest, None] * view.v[rest]).sum(0))
        labels.append(f"the other {len(rest)} tokens, weighted")
    rows.append(view.output)
    labels.append("= output (the sum of the rows above)")
    z = np.stack(rows)                                                              # [n+2, d]
    lim = float(np.abs(z).max()) or 1.0
    fig = go.Figure(go.Heatmap(z=z, zmin=-lim, zmax=lim, colorscale=render.colorscale("RdBu_r"),
                               y=list(range(len(rows))), colorbar=dict(thickness=10),
                               customdata=np.array([[lab] * z.shape[1] for lab in labels]),
                               hovertemplate="%{customdata}<br>number %{x}: %{z:.3g}<extra></extra>"))
    fig.add_shape(type="line", x0=-0.5, x1=z.shape[1] - 0.5, y0=len(rows) - 1.5, y1=len(rows) - 1.5,
                  line=dict(color="#222", width=2))
    fig.update_yaxes(autorange="reversed", tickvals=list(range(len(rows))), ticktext=labels, showgrid=False)
    fig.update_xaxes(title_text="number (dimension)", showgrid=False)
    return _plain(fig, 60 + 34 * len(rows))
