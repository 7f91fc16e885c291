"""Channel attention on Explore (issue 20): a CNN's squeeze-and-excitation / ECA / CBAM channel gates for this
image, one block at a time: the gate of every channel as bars (Hu et al. 2018, Fig. 6 for one image), and the
feature maps of the channels the block passes most, over the image (what those channels respond to)."""
from __future__ import annotations

import numpy as np
import streamlit as st

from . import mapview, panels
from .compute import model_key
from .errors import guard

TOP_CHANNELS = 3


def channel_gates(capture) -> list:
    """The capture's channel gates in forward order."""
    return [g for g in capture.gates if g.kind == "channel"]


def bars_figure(values: np.ndarray, top: list[int], title: str):
    """One bar per channel (its gate in [0, 1]), the top channels in the accent colour."""
    import plotly.graph_objects as go
    colours = ["#e4572e" if c in top else "#4c78a8" for c in range(len(values))]
    fig = go.Figure(go.Bar(x=list(range(len(values))), y=values, marker_color=colours,
                           hovertemplate="channel %{x}<br>gate %{y:.3f}<extra></extra>"))
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=40, b=10), title=dict(text=title),
                      xaxis=dict(title="channel", automargin=True), yaxis=dict(title="gate", range=[0, 1.02],
                                                                             automargin=True))
    return fig


def gates_ui(ctx) -> None:
    """The chosen block's channel gates and its most-passed channels' feature maps."""
    gates = channel_gates(ctx.capture)
    if not gates:
        return
    with guard("Drawing the channel gates"):
        st.markdown("**Channel attention**: how much each gated block passes each channel for this image "
                    "(0 = silenced, 1 = passed whole).")
        labels = [f"block {i} · {g.module} · stage {g.stage}" for i, g in enumerate(gates)]
        st.session_state.setdefault("gate_block", len(gates) - 1)
        if not 0 <= int(st.session_state["gate_block"]) < len(gates):
            st.session_state["gate_block"] = len(gates) - 1
        i = st.selectbox("Gated block", list(range(len(gates))), key="gate_block", format_func=lambda j: labels[j])
        g = gates[i]
        v = g.value.float().cpu().numpy()                                                  # [C]
        top = [int(c) for c in np.argsort(-v, kind="stable")[:TOP_CHANNELS]]
        fig = panels.figure(("gate_bars", ctx.digest, model_key(ctx.adapter), i),
                            lambda: bars_figure(v, top, f"{labels[i]}: {len(v)} channels, mean gate {v.mean():.2f}"))
        st.plotly_chart(fig, key="gate_bars", config={"displayModeBar": False})
        if g.features is None:
            return
        st.caption(f"The {len(top)} channels this block passes most, as the feature maps the gate scales "
                   "(each on its own colour scale):")
        feats = g.features.float().cpu().numpy()                                           # [C, h, w]
        for col, c in zip(st.columns(len(top)), top):
            with col:
                m = feats[c]
                panels.show_map(ctx.img, m, mapview.scale_for(m, bool((m < 0).any()), ctx.display), ctx.display,
                                ctx.map_box(m.shape), method="feature", caption=f"channel {c}: gate {v[c]:.2f}")
