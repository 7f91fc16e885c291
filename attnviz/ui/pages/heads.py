"""Heads: every layer's and head's attention as thumbnails, a query token you choose, head statistics."""
from __future__ import annotations

import time
from typing import Any

import streamlit as st

from attnviz import render
from attnviz.methods.common import HEAD_FUSIONS
from attnviz.methods.hierarchy import is_hierarchical
from attnviz.ui import figures, mapview, notes, panels, stages, state, urlstate
from attnviz.ui.compute import model_key
from attnviz.ui.context import load_context, query_label, token_queries
from attnviz.ui.errors import guard
from attnviz.ui.lesson_steps import distance_sentence
from attnviz.ui.widgets import chart_key as _chart_key
from attnviz.ui.widgets import clicked as _clicked
from attnviz.ui.widgets import page_header, shared_url_values

PATCH = "a patch"
PRESENT_MOSAIC = (700, 470)      # presentation mode: the thumbnails' figure at most this wide and tall (1280×720)


def _clamp_state(L: int, H: int, rows: int, cols: int, prefix: list[str]) -> None:
    """Keep stored picks valid when the model changes (a slider value outside its range is an error)."""
    ss = st.session_state
    if not isinstance(ss.get("h_layer"), int) or not 0 <= ss["h_layer"] < L:
        ss["h_layer"] = L - 1
    heads = [*range(H), *HEAD_FUSIONS]
    if ss.get("h_head") not in heads:
        ss["h_head"] = "mean"
    if ss.get("h_qkind") not in (*prefix, PATCH):
        ss["h_qkind"] = prefix[0] if prefix else PATCH
    for key, n in (("h_row", rows), ("h_col", cols)):
        if not isinstance(ss.get(key), int) or not 0 <= ss[key] < n:
            ss[key] = n // 2


def _apply_url(url: dict[str, str], L: int, H: int, rows: int, cols: int, prefix: list[str]) -> None:
    ss = st.session_state
    for key, name in (("h_shared", "shared"), ("h_over", "over")):    # the two switches travel in the link
        if name in url:
            ss[key] = str(url[name]).lower() in urlstate.TRUE_WORDS
    if "layer" in url:
        try:
            li = int(url["layer"])
            if not -L <= li < L:
                raise ValueError
            ss["h_layer"] = li % L
        except ValueError:
            urlstate.warn(f"The link's layer '{url['layer']}' is not between 0 and {L - 1}; using the last layer.")
    if "head" in url:
        v = url["head"]
        if v in HEAD_FUSIONS:
            ss["h_head"] = v
        elif v.isdigit() and int(v) < H:
            ss["h_head"] = int(v)
        else:
            urlstate.warn(f"The link's head '{v}' is not 0–{H - 1} or one of {', '.join(HEAD_FUSIONS)}; using mean.")
    if "query" in url:
        q = url["query"].strip().lower()
        if q == "output" and "output" not in prefix and prefix:
            q = prefix[0]          # the output reads exactly this token (CLS): one query, one name
        if q in prefix:
            ss["h_qkind"] = q
        else:
            try:
                r, c = (int(x) for x in q.split(","))
                if not (0 <= r < rows and 0 <= c < cols):
                    raise ValueError
                ss["h_qkind"], ss["h_row"], ss["h_col"] = PATCH, r, c
            except ValueError:
                urlstate.warn(f"The link's query '{url['query']}' is not one of {', '.join(prefix) or 'the tokens'} "
                              f"or a patch 'row,col' inside the {rows}×{cols} grid; using the default.")


def query_ui(ctx) -> str:
    """The query token: a prefix token, or a patch clicked on the image (or typed as row and column)."""
    lay = ctx.capture.layout
    kinds = [*token_queries(ctx.capture), PATCH]
    # Labels made here: Streamlit keeps format_func with the session, and a closure over the capture
    # would keep its activations alive as long as the session (issue 13).
    labels = {k: query_label(k, ctx.capture) for k in kinds if k != PATCH}
    kind = st.radio("Query token", kinds, key="h_qkind", horizontal=True,
                    format_func=lambda k: labels.get(k, k),
                    help="Whose attention the thumbnails show. output: the tokens the prediction is read from "
                         "when it reads more than one (CLS and distillation averaged for distilled DeiT; the mean "
                         "of the patches for BEiT).")
    if kind != PATCH:
        return kind
    hit = _clicked("h_patch_fig")
    if hit is not None:
        st.session_state["h_row"], st.session_state["h_col"] = int(hit[0]), int(hit[1])
    c1, c2 = st.columns(2)
    r = c1.number_input("Patch row", 0, lay.rows - 1, step=1, key="h_row")
    c = c2.number_input("Patch column", 0, lay.cols - 1, step=1, key="h_col")
    with guard("Drawing the patch picker"):
        st.caption("Click a patch on the image to make it the query.")
        box = None if ctx.box is None else tuple(ctx.box)
        fig = panels.figure(("h_picker", ctx.img.digest, box, lay.rows, lay.cols, int(r), int(c)),
                            lambda: figures.patch_picker_figure(ctx.img.display, lay.rows, lay.cols, box=ctx.box,
                                                                selected=(int(r), int(c))))
        st.plotly_chart(fig, key=_chart_key("h_patch_fig"), on_select="rerun", selection_mode="points",
                        config={"displayModeBar": False})
    return f"{int(r)},{int(c)}"


def main() -> None:
    page_header("Attention heads", "heads")
    ctx = None
    with guard("Preparing the image and model"):
        ctx = load_context()
    if ctx is None:
        return
    cap, eng = ctx.capture, state.engine()
    if ctx.adapter.family == "vlm":   # decoder heads over question, answer and image tokens: the Ask page's views
        st.info(f"{ctx.adapter.name} is a vision-language model: its decoder's heads read the image tokens, the "
                "question and the answer in one sequence. The Ask page shows each layer's and head's attention "
                "from an answer word to the image (image attention, with its layer and head).")
        urlstate.sync(shared_url_values(ctx))
        return
    if not cap.attentions and not is_hierarchical(cap):    # a CNN: no heads, so no layer / head controls either
        what = "is a convolutional network" if ctx.adapter.family == "cnn" else "has no attention layers"
        gated = (" Its channel gates (squeeze-and-excitation, ECA, CBAM) are on the Explore page."
                 if any(g.kind == "channel" for g in cap.gates) else "")
        st.info(f"{ctx.adapter.name} {what}: it has no attention heads to show here.{gated} Pick a vision "
                "transformer to see heads.")
        urlstate.sync(shared_url_values(ctx))
        return
    L, H, lay = cap.n_layers, cap.n_heads, cap.layout
    kinds = token_queries(cap)
    _clamp_state(L, H, lay.rows, lay.cols, kinds)
    url = urlstate.consume("heads")
    if url:
        # a Swin's layer and head name a block and one of its heads (heads differ by stage): stages_ui reads them
        own = {k: v for k, v in url.items() if k not in ("layer", "head")} if is_hierarchical(cap) else url
        _apply_url(own, L, H, lay.rows, lay.cols, kinds)
    if is_hierarchical(cap):         # Swin: per stage, blocks × heads (heads and grids differ by stage)
        stage, query = stages.stages_ui(ctx, query_ui, url)
        urlstate.sync({**shared_url_values(ctx), "stage": stage, "query": query})
        return

    hit = _clicked("h_mosaic")
    if hit is not None:
        st.session_state["h_layer"], st.session_state["h_head"] = int(hit[0]), int(hit[1])

    d = ctx.display
    # Presentation mode: the controls fold into one box, the thumbnails come first (issue 20).
    controls = st.expander("Query, layer, head and display", expanded=False) if d.present else st.container()
    with controls:
        top = st.columns([3, 2])
    with top[0]:
        query = query_ui(ctx)
    with top[1]:
        c1, c2 = st.columns(2)
        layer = c1.slider("Layer (0 = first)", 0, L - 1, key="h_layer") if L > 1 else 0
        head = c2.selectbox("Head", [*range(H), *HEAD_FUSIONS], key="h_head",
                            format_func=lambda h: f"head {h}" if isinstance(h, int) else f"{h} of heads",
                            help="One head, or all heads fused by mean, max or min.")
        st.session_state.setdefault("h_shared", False)   # own scales: one outlier head cannot blank the rest
        st.session_state.setdefault("h_over", True)
        shared = st.toggle("One colour scale for all thumbnails", key="h_shared",
                           help="Off (the default): each thumbnail is stretched to its own range, so every head's "
                                "pattern shows. On: brightness compares across heads, but on a real model one "
                                "head's outlier patch can leave all the others looking like the plain photo.")
        over = st.toggle("Thumbnails over the image", key="h_over",
                         help="Each head's map drawn over a small copy of the image (off: the map alone).")

    sel = (layer, head) if isinstance(head, int) else None
    mosaic_box, side_box = st.columns([3, 2] if d.present else [5, 3], gap="large")
    with mosaic_box, guard("Drawing the thumbnails"):
        grid = eng.attention_grid(ctx.adapter, ctx.entry, ctx.digest, query)        # [L, H, rows, cols]
        st.markdown(f"**Attention from {query_label(query, cap)}**" + (" · click one to enlarge" if d.present else
                    ", layers top to bottom, heads left to right — click one to enlarge"))
        # Built once per what it shows (plotly's validation costs tens of ms on every click otherwise).
        alpha = max(d.alpha, 0.5)
        fig = panels.figure(
            ("h_mosaic", ctx.digest, model_key(ctx.adapter), query, d.cmap_for(False), d.norm_for(False), shared,
             sel, over, alpha, d.present),
            lambda: figures.head_mosaic_figure(
                grid, cmap=d.cmap_for(False), norm=d.norm_for(False), shared=shared, selected=sel,
                image=_model_view(ctx) if over else None, alpha=alpha,
                width=PRESENT_MOSAIC[0] if d.present else figures.MOSAIC_WIDTH,
                max_height=PRESENT_MOSAIC[1] if d.present else None,
                font_size=figures.PRESENT_FONT if d.present else None,
                thumbnails=panels.thumbnails((ctx.digest, model_key(ctx.adapter), query))))
        st.plotly_chart(figures.presented(fig) if d.present else fig, key=_chart_key("h_mosaic"), on_select="rerun",
                        selection_mode="points",
                        config={"displayModeBar": False}, width="content")
        if not shared:
            st.caption("Each thumbnail on its own scale: compare patterns, not brightness.")
        view = _model_view(ctx) if over else None
        st.download_button(
            "All thumbnails PNG",
            lambda: render.to_png_bytes(mapview.grid_picture(
                grid, row_label="L", col_label="h", cmap=d.cmap_for(False), norm=d.norm_for(False), shared=shared,
                image=view, alpha=alpha, title=f"{ctx.adapter.name}: attention from {query_label(query, cap)}")),
            file_name=f"attnviz-heads-{ctx.digest[:8]}-{query.replace(',', '_')}.png", mime="image/png",
            on_click="ignore", key="dl_heads",
            help="Every layer × head thumbnail in one labelled picture, slide-sized, on the scales shown.")
    with side_box, guard("Drawing the enlarged head"):
        t0 = time.perf_counter()
        exp = eng.explain(ctx.adapter, ctx.entry, ctx.digest, "attention", None,
                          {"layer": layer, "head": str(head), "query": query})
        scale = mapview.scale_for(exp.map, False, d)
        which = f"head {head}" if isinstance(head, int) else f"{head} of {H} heads"
        panels.show_map(ctx.img, exp.map, scale, d, ctx.box, method="attention",
                        caption=f"Layer {layer}, {which}: attention from {query_label(query, cap)}",
                        width=panels.present_width(ctx.img.display.size, PRESENT_MOSAIC[1] - 90) if d.present
                        else "stretch")
        hover = st.expander("Hover for values", key="h_hover", on_change="rerun")
        if hover.open:   # drawn only when opened: the figure is the costly part of a head switch
            fig = render.heatmap_figure(ctx.img.display, exp.map, cmap=scale.cmap, norm=scale.norm, alpha=d.alpha,
                                        resample=d.resample, box=ctx.box, hover_label="attention weight")
            hover.plotly_chart(figures.presented(fig) if d.present else fig, key="h_big")
        st.caption(f"Drawn on the server in {time.perf_counter() - t0:.3f} s, no model run (the one forward pass "
                   "is cached); the browser then takes its own time to receive and show the page.")

    with guard("Computing the head statistics"):
        dist, ent = eng.head_stats(ctx.adapter, ctx.entry, ctx.digest)
        st.markdown("**How far and how evenly each head looks** (the ViT paper's Fig. 7, for this image)")
        fig = panels.figure(("h_stats", ctx.digest, model_key(ctx.adapter), sel),
                            lambda: figures.head_stats_figure(dist, ent, lay.n_tokens, selected=sel))
        st.plotly_chart(figures.presented(fig) if d.present else fig, key="h_stats", config={"displayModeBar": False})
        st.caption(distance_sentence(dist, "On this image") + " " + notes.HEADS_DISTANCE_GLOSS)

    values: dict[str, Any] = {**shared_url_values(ctx), "layer": layer, "head": head, "query": query,
                              "shared": "1" if shared else None, "over": None if over else "0"}
    urlstate.sync(values)


def _model_view(ctx):
    """The part of the display image the model saw (its crop box), for the thumbnails' background."""
    if ctx.box is None:
        return ctx.img.display
    return ctx.img.display.crop(tuple(int(round(v)) for v in ctx.box))


if __name__ == "__main__":
    main()
