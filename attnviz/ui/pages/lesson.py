"""How attention works: one layer of the model taken apart on the user's image, step by step (issue 14).

q, k and v come from the layer's own projections (``attnviz.anatomy``), captured only when this page
asks and cached per image, model and layer. Every sentence under a plot is computed from the plotted
numbers (``lesson_steps``); the softmax recomputed here is checked against the model's own attention row.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import streamlit as st

from attnviz import render
from attnviz.anatomy import Anatomy, attention_anatomies
from attnviz.headstats import attention_entropy, dino_masks, mean_attention_distance
from attnviz.methods.hierarchy import is_hierarchical
from attnviz.ui import figures, panels, state, urlstate
from attnviz.ui import lesson_figures as lf
from attnviz.ui.cache import ResultCache
from attnviz.ui.compute import model_key
from attnviz.ui.context import load_context
from attnviz.ui.errors import guard
from attnviz.ui.lesson_steps import (STEPS, HeadView, capital, check_sentence, distance_sentence, head_view,
                                     heads_sentence, keys_sentence, layer_name, mask_sentence, output_sentence,
                                     patch_grid, query_sentence, scores_sentence, sequence_sentence,
                                     softmax_sentence, step_index, token_label, trend_sentence)
from attnviz.ui.widgets import chart_key, clicked, present_style

PAGES = {"heads": "attnviz/ui/pages/heads.py", "explore": "attnviz/ui/pages/explore.py",
         "caption": "attnviz/ui/pages/caption.py"}
THIS_IMAGE, SAMPLES = "this image", "the sample images"
# Large type for projecting: the step box and the sentences computed from the plots.
STYLE = """<style>
.st-key-l_step_box p, .st-key-l_step_box li { font-size: 1.35rem; line-height: 1.55; }
[class*="st-key-l_fact"] p { font-size: 1.15rem; line-height: 1.5; }
</style>"""
# Presentation mode: the root font is already 20 px (widgets.present_style); the paragraph beside its figure.
PRESENT_STYLE = """<style>
.st-key-l_step_box p, .st-key-l_step_box li { font-size: 1rem; line-height: 1.45; }
.st-key-l_step_box h3 { font-size: 1.25rem; padding-top: 0; }
[class*="st-key-l_fact"] p { font-size: 1rem; line-height: 1.45; }
</style>"""


# --- cached computations ------------------------------------------------------------------------

ANATOMY_ENTRIES = 2      # images whose every layer is taken apart (q, k, v and [H, T, T]: ~5 MB a layer for ViT-B/16)

# Shared caches (every session reuses them), computed once per key; the model work waits for its turn in
# the model's line and says how many requests are ahead (panels.model_turn), as a capture does.

@st.cache_resource(show_spinner=False)
def _anatomies() -> ResultCache:
    """Layers taken apart, bounded on their own: the engine's result cache counts entries, sized for small maps."""
    return ResultCache(ANATOMY_ENTRIES, state.CACHE_TTL)


def layer_anatomy(digest: str, layer: int, adapter, inputs) -> Anatomy:
    """One layer taken apart, per image (digest, prompts included) and model. The first layer asked for takes
    every layer apart in the same one extra forward (``attention_anatomies``): moving the layer slider after
    it runs no model."""
    def run() -> dict[int, Anatomy]:
        with panels.model_turn(adapter):
            return attention_anatomies(adapter, inputs)
    every = _anatomies().get_or_compute((digest, model_key(adapter)), run)
    return every[layer % len(every)]


def sample_head_stats(digests: tuple[str, ...], texts, adapter, images) -> tuple[np.ndarray, np.ndarray]:
    """Mean attention distance and entropy [L, H], each averaged over the images (one forward each, each
    taking its own turn with the model)."""
    def run() -> tuple[np.ndarray, np.ndarray]:
        dist, ent = [], []
        for img in images:
            inputs = adapter.prepare(img, texts=list(texts)) if texts else adapter.prepare(img)
            with panels.model_turn(adapter):
                cap = adapter.capture(inputs, grads=False)
            dist.append(mean_attention_distance(cap))
            ent.append(attention_entropy(cap))
        return np.mean(dist, axis=0), np.mean(ent, axis=0)
    key = ("sample_head_stats", model_key(adapter), tuple(digests), tuple(texts or ()))
    return state.engine().results.get_or_compute(key, run)


# --- state --------------------------------------------------------------------------------------

def _clamp_state(L: int, H: int, rows: int, cols: int) -> None:
    """Keep stored picks valid when the model or image changes (a slider outside its range is an error)."""
    ss = st.session_state
    for key, n, default in (("l_layer", L, 0), ("l_head", H, 0), ("l_row", rows, rows // 2),
                            ("l_col", cols, cols // 2), ("l_step", len(STEPS), 0)):
        if not isinstance(ss.get(key), int) or not 0 <= ss[key] < n:
            ss[key] = default
    if not isinstance(ss.get("l_share"), float) or not 0.05 <= ss["l_share"] <= 1.0:
        ss["l_share"] = 0.6
    if ss.get("l_over") not in (THIS_IMAGE, SAMPLES):
        ss["l_over"] = THIS_IMAGE
    ss.setdefault("l_guided", True)


def _move(delta: int, n_layers: int) -> None:
    st.session_state["l_step"] = min(max(st.session_state.get("l_step", 0) + delta, 0), len(STEPS) - 1)
    _opened(n_layers)


def _opened(n_layers: int) -> None:
    """A step was opened: a step that reads best on the last layer (heads, distance, DINO) opens there."""
    if STEPS[st.session_state.get("l_step", 0)].last_layer:
        st.session_state["l_layer"] = n_layers - 1


# --- the walk-through box -----------------------------------------------------------------------

def walkthrough_ui(n_layers: int, present: bool = False) -> int:
    """The current step: its number, title and paragraph in large type, and the buttons to move on (also the
    ← and → keys). In presentation mode the buttons come right under the title, the step slider last: the
    buttons stay on the screen however long the paragraph."""
    with st.container(key="l_step_box", border=True):
        slots = [st.container() for _ in range(4)]
        order = ("title", "buttons", "text", "slider") if present else ("slider", "title", "text", "buttons")
        slot = dict(zip(order, slots))
        step = slot["slider"].select_slider("Step", options=list(range(len(STEPS))), key="l_step",
                                            format_func=lambda i: str(i + 1), on_change=_opened, args=(n_layers,))
        slot["title"].subheader(f"Step {step + 1} of {len(STEPS)}: {STEPS[step].title}")
        slot["text"].markdown(STEPS[step].text)
        c1, c2 = slot["buttons"].columns(2) if present else slot["buttons"].columns([3, 3, 4])[:2]
        c1.button("← Previous step", key="l_prev", on_click=_move, args=(-1, n_layers), disabled=step == 0,
                  shortcut="Left", help="Or press ←.")
        c2.button("Next step →", key="l_next", on_click=_move, args=(1, n_layers), disabled=step == len(STEPS) - 1,
                  type="primary", shortcut="Right", help="Or press →.")
    return step


def _chart(fig, **kw) -> None:
    """st.plotly_chart, with the figure's text enlarged in presentation mode."""
    st.plotly_chart(figures.presented(fig) if urlstate.presenting() else fig, **kw)


def _fact(key: str, text: str) -> None:
    """A sentence computed from the plot above it, in large type."""
    with st.container(key=f"l_fact_{key}"):
        st.markdown(text)


# --- the sections ---------------------------------------------------------------------------------

class Lesson:
    """What every section reads: the context, the layer taken apart and the chosen head and query."""

    def __init__(self, ctx, an: Anatomy, layer: int, head: int, row: int, col: int):
        self.ctx, self.an, self.layer, self.head, self.row, self.col = ctx, an, layer, head, row, col
        self.layout = ctx.capture.layout
        self.an_layers = ctx.capture.n_layers
        self.query = self.layout.patch_token(row, col)
        self.view: HeadView = head_view(an, head, self.query)

    def picture(self, values: np.ndarray, *, cmap: str, norm: str, label: str, compact: bool):
        """A patch map over the image with the query ringed, built once per process for what it shows
        (a rerun that changes another step reuses it)."""
        ctx, lay = self.ctx, self.layout
        where = (ctx.img.digest, None if ctx.box is None else tuple(ctx.box), lay.rows, lay.cols, self.row, self.col)
        return panels.figure(("l_map", *where, panels.map_digest(values), cmap, norm, label, compact),
                             lambda: self.ring(render.heatmap_figure(
                                 ctx.img.display, patch_grid(lay, values), cmap=cmap, norm=norm, alpha=0.75,
                                 resample="nearest", box=ctx.box, hover_label=label, compact=compact)))

    def chart(self, name: str, build):
        """A figure of this layer, head and query (``build()``), built once per process for them."""
        ctx = self.ctx
        return panels.figure((f"l_{name}", ctx.digest, model_key(ctx.adapter), self.layer, self.head, self.query),
                             build)

    def signed_map(self, values: np.ndarray, label: str, *, compact: bool = False):
        return self.picture(values, cmap="RdBu_r", norm=render.default_norm(True), label=label, compact=compact)

    def ring(self, fig):
        """Ring the query patch on a figure drawn in display-image pixels."""
        w, h = self.ctx.img.display.size
        left, top, right, bottom = (0, 0, w, h) if self.ctx.box is None else self.ctx.box
        pw, ph = (right - left) / self.layout.cols, (bottom - top) / self.layout.rows
        fig.add_shape(type="rect", x0=left + self.col * pw, x1=left + (self.col + 1) * pw, y0=top + self.row * ph,
                      y1=top + (self.row + 1) * ph, line=dict(color=lf.QUERY_COLOUR, width=3))
        return fig

    def prefix_values(self, values: np.ndarray, fmt: str) -> str:
        lay = self.layout
        return " · ".join(f"{token_label(lay, i)}: {format(values[i], fmt)}" for i in range(lay.n_prefix))


def tokens_section(ls: Lesson) -> None:
    _chart(ls.chart("tokens", lambda: lf.token_strip_figure(ls.layout, ls.query)), key="l_tokens",
                    config={"displayModeBar": False})
    st.caption(lf.token_legend(ls.layout), unsafe_allow_html=True)
    _fact("tokens", sequence_sentence(ls.layout) + f" The query is {token_label(ls.layout, ls.query)}, "
          f"token {ls.query} of the sequence (counting from 0).")


def query_section(ls: Lesson) -> None:
    _chart(ls.chart("q", lambda: lf.vector_figure(ls.view.q, "q")), key="l_q",
                    config={"displayModeBar": False})
    _fact("query", query_sentence(ls.layout, ls.view))


def keys_section(ls: Lesson) -> None:
    _chart(ls.chart("k", lambda: lf.keys_figure(ls.view, ls.layout)), key="l_k",
                    config={"displayModeBar": False})
    _fact("keys", keys_sentence(ls.layout, ls.view))


def scores_section(ls: Lesson) -> None:
    v = ls.view
    if v.bias is None:
        _chart(ls.signed_map(v.scores, "q·k/√d"), key="l_scores", config={"displayModeBar": False})
    else:
        parts = (("content: q·k/√d", v.dot), ("position term", v.bias), ("score (sum)", v.scores))
        for col, (label, values), key in zip(st.columns(3), parts, ("l_dot", "l_bias", "l_scores")):
            with col:
                st.markdown(f"**{label}**")
                _chart(ls.signed_map(values, label, compact=True), key=key, config={"displayModeBar": False})
    if v.bias is None and ls.an.bias is not None:
        st.caption("This model adds a learned position term before the softmax; for this head and query it "
                   "is zero everywhere, so the map is the content term alone.")
    if ls.layout.n_prefix:
        st.caption(f"Scores of the extra tokens (not on the image): {ls.prefix_values(v.scores, '.3f')}")
    _fact("scores", scores_sentence(ls.layout, v))


def softmax_section(ls: Lesson) -> None:
    v = ls.view
    c1, c2 = st.columns(2)
    with c1:
        fig = ls.picture(v.weights, cmap="inferno", norm=render.default_norm(False), label="weight", compact=True)
        _chart(fig, key="l_softmax", config={"displayModeBar": False})
    with c2:
        _chart(ls.chart("check", lambda: lf.check_figure(v, ls.layout)), key="l_check",
                        config={"displayModeBar": False})
    if ls.layout.n_prefix:
        st.caption(f"Weights of the extra tokens: {ls.prefix_values(v.weights, '.2%')}")
    (st.success if v.check_passes else st.error)(check_sentence(v))
    _fact("softmax", softmax_sentence(ls.layout, v))


def output_section(ls: Lesson) -> None:
    _chart(ls.chart("output", lambda: lf.weighted_sum_figure(ls.view, ls.layout)), key="l_output",
                    config={"displayModeBar": False})
    _fact("output", output_sentence(ls.layout, ls.view))


def heads_section(ls: Lesson) -> None:
    ctx, lay = ls.ctx, ls.layout
    views = [head_view(ls.an, h, ls.query) for h in range(ls.an.n_heads)]
    scores = np.stack([patch_grid(lay, v.scores) for v in views])                  # [H, rows, cols]
    weights = np.stack([patch_grid(lay, v.weights) for v in views])                # [H, rows, cols]
    # One scale per row of pictures, robust to one outlier token (issue 20): beyond it, the end colours.
    s_lim = render.shared_range(list(scores), "signed-robust")[1]
    w_max = render.shared_range(list(weights), "robust")[1]
    per_row = min(len(views), 4)
    st.caption(f"{capital(layer_name(ls.layer, ls.an_layers))}, query {token_label(lay, ls.query)}. For each head: "
               f"the scores (red + / blue −, one scale ±{s_lim:.2f}) and the weights after the softmax (one "
               f"scale, 0 to {w_max:.1%}); values beyond the 99th percentile are drawn at the end colours.")
    for start in range(0, len(views), per_row):
        for col, v in zip(st.columns(per_row), views[start:start + per_row]):
            d = ctx.display
            s_img = panels.drawn_overlay(ctx.img.digest, ctx.img.display, scores[v.head], alpha=0.75,
                                         cmap="RdBu_r", norm="signed", resample="nearest", box=ctx.box,
                                         vmin=-s_lim, vmax=s_lim)
            w_img = panels.drawn_overlay(ctx.img.digest, ctx.img.display, weights[v.head], alpha=max(d.alpha, 0.6),
                                         cmap="inferno", norm="minmax", resample="nearest", box=ctx.box,
                                         vmin=0.0, vmax=w_max)
            top = int(v.weights.argmax())
            col.image([s_img, w_img], width="stretch", output_format="JPEG")
            col.caption(f"head {v.head}: most to {token_label(lay, top)} ({v.weights[top]:.1%}) · "
                        f"check {v.max_difference:.1e}")
    _fact("heads", heads_sentence(lay, views))


def distance_section(ls: Lesson) -> None:
    ctx = ls.ctx
    samples = state.samples_for(ctx.adapter)        # photos for a photo model, shape scenes for a demo model
    kind = "shape scenes" if state.knows_only_shapes(ctx.adapter) else "sample photos"
    over = st.radio("Mean attention distance of", [THIS_IMAGE, SAMPLES], key="l_over", horizontal=True,
                    format_func=lambda o: o if o == THIS_IMAGE else f"the {len(samples)} {kind}, averaged")
    if over == SAMPLES and samples:
        images = [state.decode(b) for b in samples.values()]
        with st.spinner(f"Running the model on {len(images)} {kind} (once)…"):
            dist, ent = sample_head_stats(tuple(i.digest for i in images), ctx.texts,
                                          ctx.adapter, [i.image for i in images])
        where = f"Averaged over the {len(images)} {kind}"
    else:
        dist, ent = state.engine().head_stats(ctx.adapter, ctx.entry, ctx.digest)
        where = "On this image"
    sel = (ls.layer, ls.head)
    # ctx.digest carries the prompts too, which the samples' statistics also depend on
    over_what = (tuple(samples), ctx.digest) if over == SAMPLES and samples else ctx.digest
    fig = panels.figure(("l_distance", over_what, model_key(ctx.adapter), sel),
                        lambda: figures.head_stats_figure(dist, ent, ls.layout.n_tokens, selected=sel))
    _chart(fig, key="l_distance", config={"displayModeBar": False})
    st.caption("Left: one dot per head and layer (the chosen head ringed). Right: each head's entropy, how "
               "evenly it spreads its attention (the dotted line is perfectly even).")
    _fact("distance", distance_sentence(dist, where) + " " + trend_sentence(dist))


def dino_section(ls: Lesson) -> None:
    ctx, cap, lay = ls.ctx, ls.ctx.capture, ls.layout
    if "cls" in lay.prefix_names:
        query, who = "cls", "CLS"
    elif cap.readout is not None:
        query, who = "output", "the output's pooling"
    else:
        st.info("This model has no CLS token and no single output token, so there is no row to threshold.")
        return
    share = st.slider("Share of the attention each head keeps", 0.05, 1.0, step=0.05, key="l_share",
                      help="Per head, the smallest set of patches holding this share of the row (DINO uses 60 %).")
    masks = dino_masks(cap, layer=ls.layer, share=float(share), query=query)         # [H, rows, cols]
    per_row = min(masks.shape[0], 6)
    where = layer_name(ls.layer, ls.an_layers)
    st.caption(f"{capital(where)}, attention from {who} to the patches (extra tokens left out, the rest "
               f"renormalised). Bright: the patches kept.")
    for start in range(0, masks.shape[0], per_row):
        for col, h in zip(st.columns(per_row), range(start, min(start + per_row, masks.shape[0]))):
            img = panels.drawn_overlay(ctx.img.digest, ctx.img.display, masks[h].astype(np.float32), alpha=0.7,
                                       cmap="gray", norm="minmax", resample="nearest", box=ctx.box,
                                       vmin=0.0, vmax=1.0)
            col.image(img, caption=f"head {h}: {int(masks[h].sum())} of {masks[h].size} patches", width="stretch",
                      output_format="JPEG")
    _fact("dino", mask_sentence(masks, float(share), who, where))


def explain_section(ls: Lesson) -> None:
    c1, c2, c3 = st.columns(3)
    c1.page_link(PAGES["heads"], label="Heads: every layer and head at once", icon=":material/grid_view:")
    c2.page_link(PAGES["explore"], label="Explore: relevance and the faithfulness panel",
                 icon=":material/visibility:")
    c3.page_link(PAGES["caption"], label="Caption: cross-attention", icon=":material/subtitles:")
    st.caption("On Explore, pick the attention method, open **Is the attention map faithful?** and run deletion / "
               "insertion: if the curve does not fall faster than the random order, the map does not explain "
               "the score. Try the same with relevance.")


SECTIONS: dict[str, Callable[[Lesson], None]] = {
    "tokens": tokens_section, "query": query_section, "keys": keys_section, "scores": scores_section,
    "softmax": softmax_section, "output": output_section, "heads": heads_section, "distance": distance_section,
    "dino": dino_section, "explain": explain_section}


def picker_ui(ls: Lesson, inputs: bool = True) -> None:
    """The image cut into patches; a click makes a patch the query (``inputs``: with row and column boxes)."""
    ctx, lay = ls.ctx, ls.layout
    st.markdown(f"**Click a patch** · layer {ls.layer}, head {ls.head}, query {token_label(lay, ls.query)}")
    box = None if ctx.box is None else tuple(ctx.box)
    # built once per image, grid and chosen patch (the image's PNG and the grid lines cost ~150 ms a run)
    fig = panels.figure(("l_picker", ctx.img.digest, box, lay.rows, lay.cols, ls.row, ls.col),
                        lambda: lf.patch_grid_picker(ctx.img.display, lay, box=ctx.box, selected=(ls.row, ls.col)))
    _chart(fig, key=chart_key("l_patch"), on_select="rerun", selection_mode="points",
                    config={"displayModeBar": False})
    if inputs:
        c1, c2 = st.columns(2)
        c1.number_input("Patch row", 0, lay.rows - 1, step=1, key="l_row")
        c2.number_input("Patch column", 0, lay.cols - 1, step=1, key="l_col")


def _draw(ls: Lesson, keys: list[str], guided: bool) -> None:
    for k in keys:
        i = step_index(k)
        if not guided:
            st.markdown(f"### {i + 1} · {STEPS[i].title}")
            st.markdown(STEPS[i].text)
        with guard(f"Step {i + 1}"):
            SECTIONS[k](ls)


def main() -> None:
    present = urlstate.presenting()
    st.markdown(PRESENT_STYLE if present else STYLE, unsafe_allow_html=True)
    if present:
        present_style()
    st.title("How attention works")
    if not present:
        st.caption("One layer of the model taken apart on your image, with the model's own numbers.")
    ctx = None
    with guard("Preparing the image and model"):
        ctx = load_context()
    if ctx is None:
        return
    cap = ctx.capture
    if is_hierarchical(cap):
        st.info(f"{ctx.adapter.name} attends within small shifted windows, not across the whole image, so this "
                "page's one-layer walk-through does not apply; pick a ViT-family model here, or see Swin's "
                "windows on the Heads page.")
        return
    if not cap.attentions:
        st.info(f"{ctx.adapter.name} has no attention layers to take apart; pick a vision transformer.")
        return
    lay, L, H = cap.layout, cap.n_layers, cap.n_heads
    _clamp_state(L, H, lay.rows, lay.cols)
    hit = clicked("l_patch")
    if hit is not None:
        st.session_state["l_row"], st.session_state["l_col"] = hit
    if present and st.session_state.get("l_guided", True):
        _present(ctx, L, H)
        return
    guided = st.toggle("Guided walk-through, one step at a time", key="l_guided",
                       help="Off: every step on one page.")
    step: Optional[int] = walkthrough_ui(L) if guided else None
    c1, c2 = st.columns(2)
    layer = c1.slider("Layer", 0, L - 1, key="l_layer") if L > 1 else 0
    head = c2.selectbox("Head", list(range(H)), key="l_head", format_func=lambda h: f"head {h}")
    ls = None
    with guard("Taking the layer apart"), st.spinner("Taking the layer apart (one more model run)…"):
        an = layer_anatomy(ctx.digest, int(layer), ctx.adapter, cap.inputs)
        ls = Lesson(ctx, an, int(layer), int(head), int(st.session_state["l_row"]), int(st.session_state["l_col"]))
    if ls is None:
        return
    shown = [s for s in STEPS if step is None or s is STEPS[step]]
    beside = [s.key for s in shown if s.needs_query]
    if beside:
        left, right = st.columns([2, 3], gap="large")
        with left:
            picker_ui(ls)
        with right:
            _draw(ls, beside, guided)
    _draw(ls, [s.key for s in shown if not s.needs_query], guided)


def _present(ctx, L: int, H: int) -> None:
    """Presentation mode, one step at a time: the step's text and buttons on the left, its figure on the right
    (beside the patch picker when the step follows a query); layer, head and the walk-through switch folded."""
    left, right = st.columns([2, 3], gap="large")
    with left:
        step = walkthrough_ui(L, present=True)
        with st.expander("Layer, head and query patch", expanded=False):
            st.toggle("Guided walk-through, one step at a time", key="l_guided", help="Off: every step on one page.")
            c1, c2 = st.columns(2)
            layer = c1.slider("Layer", 0, L - 1, key="l_layer") if L > 1 else 0
            head = c2.selectbox("Head", list(range(H)), key="l_head", format_func=lambda h: f"head {h}")
            c1, c2 = st.columns(2)
            c1.number_input("Patch row", 0, ctx.capture.layout.rows - 1, step=1, key="l_row")
            c2.number_input("Patch column", 0, ctx.capture.layout.cols - 1, step=1, key="l_col")
    ls = None
    with right, guard("Taking the layer apart"), st.spinner("Taking the layer apart (one more model run)…"):
        an = layer_anatomy(ctx.digest, int(layer), ctx.adapter, ctx.capture.inputs)
        ls = Lesson(ctx, an, int(layer), int(head), int(st.session_state["l_row"]), int(st.session_state["l_col"]))
    if ls is None:
        return
    s = STEPS[step]
    with right:
        if s.needs_query:
            pick, fig = st.columns([2, 3])
            with pick:
                picker_ui(ls, inputs=False)
            with fig:
                _draw(ls, [s.key], True)
        else:
            _draw(ls, [s.key], True)


if __name__ == "__main__":
    main()
