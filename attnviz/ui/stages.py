"""The Heads page for a hierarchical model (Swin; issue 12): per stage, blocks × heads for a query patch.

A Swin block attends inside (shifted) windows, and each stage has its own grid, window count and head
count, so the plain layers × heads mosaic and the head statistics (one global attention per layer) do
not apply. Here a stage is picked; its blocks (rows) × heads (columns) show the query's attention on
that stage's grid (:func:`attnviz.methods.attention.swin_head_grid`: zero outside the query's window,
the cyclic shift undone), and a clicked thumbnail is drawn large over the image
(:func:`~attnviz.methods.attention.block_attention_map`).
"""
from __future__ import annotations

from typing import Callable, Optional

import streamlit as st

from ..methods import attention, hierarchy
from ..methods.common import HEAD_FUSIONS
from . import figures, mapview, panels, state, urlstate
from .compute import model_key
from .context import query_label
from .errors import guard
from .widgets import chart_key, clicked

NOT_HERE = ("Head statistics (attention distance and entropy) and the layers × heads grid assume one attention "
            "over all patches per layer; a Swin block attends inside windows, so they are not shown for this model.")


def _stage_label(info: dict) -> str:
    r, c = info["grid"]
    return (f"stage {info['stage']} · {r}×{c} tokens · window {info['window']} · "
            f"{len(info['blocks'])} blocks × {info['heads']} heads")


def _apply_block_link(url: dict[str, str], infos: list[dict]) -> None:
    """A link's ``layer`` (a block, counted across stages, negative from the end) and ``head`` (one of that
    block's heads; a fusion name or none: head 0) open that block's stage with that head enlarged."""
    ss = st.session_state
    n = sum(len(i["blocks"]) for i in infos)
    try:
        li = int(url["layer"])
        if not -n <= li < n:
            raise ValueError
    except ValueError:
        urlstate.warn(f"The link's layer '{url['layer']}' is not a block between 0 and {n - 1}; using stage 0.")
        return
    li %= n
    info = next(i for i in infos if li in i["blocks"])
    head = url.get("head", "0")
    if not head.isdigit() or int(head) >= info["heads"]:
        if not head.isdigit() and head in HEAD_FUSIONS:
            head = "0"                 # the mosaic enlarges one head: the link's fusion has no thumbnail here
        else:
            urlstate.warn(f"The link's head '{head}' is not one of block {li}'s heads (0–{info['heads'] - 1}); "
                          "using head 0.")
            head = "0"
    ss["h_stage"] = info["stage"]
    ss[f"h_swin_pick_{info['stage']}"] = (info["blocks"].index(li), int(head))


def stages_ui(ctx, query_ui: Callable[[object], str], url: Optional[dict[str, str]] = None) -> tuple[int, str]:
    """Stage picker, query, the stage's blocks × heads mosaic, and the clicked head enlarged; (stage, query).
    ``url``: the link's values the first time the page opens (its stage; the query is the page's)."""
    cap, d = ctx.capture, ctx.display
    infos = hierarchy.stage_info(cap)
    ss = st.session_state
    if url and "stage" in url:
        raw = url["stage"]
        if raw.isdigit() and int(raw) < len(infos):
            ss["h_stage"] = int(raw)
        else:
            urlstate.warn(f"The link's stage '{raw}' is not between 0 and {len(infos) - 1}; using stage 0.")
    if url and "layer" in url:
        _apply_block_link(url, infos)
    if not isinstance(ss.get("h_stage"), int) or not 0 <= ss["h_stage"] < len(infos):
        ss["h_stage"] = 0
    st.caption(NOT_HERE)
    top = st.columns([3, 2])
    with top[0]:
        query = query_ui(ctx)
    with top[1]:
        stage = st.radio("Stage", list(range(len(infos))), key="h_stage", format_func=lambda s: _stage_label(infos[s]),
                         help="Each stage merges 2×2 tokens into one: a coarser grid, more heads.")
        st.session_state.setdefault("h_shared", False)   # own scales: one outlier head cannot blank the rest
        shared = st.toggle("One colour scale for all thumbnails", key="h_shared")
    info = infos[stage]
    blocks = info["blocks"]
    base = f"h_swin_mosaic_{stage}"
    hit = clicked(base)
    if hit is not None:
        ss[f"h_swin_pick_{stage}"] = (int(hit[0]), int(hit[1]))
    pick = ss.get(f"h_swin_pick_{stage}", (len(blocks) - 1, 0))
    with guard("Drawing the stage's thumbnails"):
        grid = state.engine().results.get_or_compute(
            ("swin_grid", ctx.digest, model_key(ctx.adapter), stage, query),
            lambda: attention.swin_head_grid(cap, stage, query))                    # [B_s, H_s, rows_s, cols_s]
        shifts = ", ".join(f"block {b}: shift {s}" for b, s in zip(blocks, info["shifts"]))
        st.markdown(f"**Stage {stage}: attention from {query_label(query, cap)}**, blocks {blocks[0]}–{blocks[-1]} "
                    f"top to bottom (the figure's 'layer' counts within the stage), heads left to right — click one "
                    f"to enlarge")
        fig = panels.figure(   # built once per what it shows, not on every click
            ("h_swin_mosaic", ctx.digest, model_key(ctx.adapter), stage, query, d.cmap_for(False),
             d.norm_for(False), shared, pick),
            lambda: figures.head_mosaic_figure(
                grid, cmap=d.cmap_for(False), norm=d.norm_for(False), shared=shared, selected=pick,
                thumbnails=panels.thumbnails((ctx.digest, model_key(ctx.adapter), "swin", stage, query))))
        st.plotly_chart(fig, key=chart_key(base), on_select="rerun", selection_mode="points",
                        config={"displayModeBar": False}, width="content")
        st.caption(f"Each thumbnail is the stage's {info['grid'][0]}×{info['grid'][1]} grid: zero outside the "
                   f"query's {info['window']}×{info['window']} window, the cyclic shift undone ({shifts}).")
    with guard("Drawing the enlarged head"):
        block, head = blocks[pick[0]], pick[1]
        m = attention.block_attention_map(cap, block, str(head), query)
        scale = mapview.scale_for(m, False, d)
        panels.show_map(ctx.img, m, scale, d, ctx.box, method="attention", width="content",
                        caption=f"Block {block} (stage {stage}), head {head}: attention from {query_label(query, cap)}")
    return stage, query
