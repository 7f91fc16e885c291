"""Caption: which part of the image produced each word of a captioning model's caption.

The caption (generated, or typed in the sidebar) is shown as clickable words;
the chosen word's map is drawn over the image, and a strip shows every word's
map in caption order on one colour scale ("show, attend and tell").
Generation and the capture run once per image and caption (the shared
Engine); switching words, layers or heads re-reads them.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Optional

import numpy as np
import streamlit as st
from PIL import Image

from attnviz import catalog, render
from attnviz.methods import list_methods
from attnviz.methods.captioning import cross_attention_strip
from attnviz.methods.common import HEAD_FUSIONS
from attnviz.methods.registry import MethodSpec
from attnviz.ui import figures, mapview, notes, panels, state, urlstate
from attnviz.ui.context import first_content_word, load_context
from attnviz.ui.errors import guard
from attnviz.ui.faithfulness import faithfulness_ui
from attnviz.ui.widgets import (forget_on_new_capture, link_target, markdown_literal, page_header, params_ui,
                                pretty, run_on_click, shared_url_values)

DEMO_CAPTIONER = "demo-captioner-shapes"
WORD_METHODS = ("cross_attention", "caption_relevance")       # per-word maps the strip can show
IMAGE_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "smoothgrad")   # Captum, on the word's logit
STRIP_COLUMNS = 6
STRIP_SIDE = 192                 # strip overlays are drawn on a copy at most this big
WORD_PANEL, STRIP_PANEL = "caption-word", "caption-strip"   # map panels: a display change redraws only these


# --- not a captioner ----------------------------------------------------------

def _use_demo_captioner() -> None:
    st.session_state["model"] = DEMO_CAPTIONER        # a callback: runs before the sidebar's selectbox is drawn
    state.show_a_scene_for_the_demo()


def not_a_captioner_ui(adapter) -> None:
    """One sentence, and a button to the demo captioner when it is built."""
    st.info(f"{adapter.name} is not a captioning model: this page needs one that writes a caption "
            "(BLIP, ViT-GPT2, GIT or the offline demo captioner).")
    entry = catalog.load_catalog().get(DEMO_CAPTIONER)
    if entry is None or not catalog.is_available_offline(entry):
        st.caption("The offline demo captioner has not been built yet: run "
                   "`python -m attnviz.demo.train_captioner`.")
    else:
        st.button(f"Use the demo captioner ({DEMO_CAPTIONER})", key="c_use_demo", on_click=_use_demo_captioner,
                  type="primary", help="A tiny captioner trained on synthetic shape scenes; try a 'scene' sample.")


# --- controls -------------------------------------------------------------------

def _default_word(cap) -> int:
    """The first word that carries content (not "a", "and", …), else the first."""
    return first_content_word(cap)


def split_words_note(words: list[tuple[str, list[int]]], labels: list[str]) -> str:
    """A sentence naming the caption's words that the model reads in several pieces (each piece is a
    pill with a map of its own), or "" when every word is one token."""
    # a lone space before punctuation is the tokenizer's spacing, not a piece of a word
    split = [(w, pieces) for w, idx in words
             if len(pieces := [labels[i].strip() for i in idx if labels[i].strip()]) > 1]
    if not split:
        return ""
    shown = "; ".join(f"“{w}” as {' · '.join(pieces)}" for w, pieces in split[:5])
    more = f" (and {len(split) - 5} more)" if len(split) > 5 else ""
    return (f"Read in pieces, each with its own map: {shown}{more}. The model has no single token for "
            "these words (a word it never learned is spelt out).")


def _keep_a_word() -> None:
    """Clicking the chosen pill again unselects it: keep the word it was (a callback may set the value)."""
    if st.session_state.get("c_word") is None and st.session_state.get("_c_word_last") is not None:
        st.session_state["c_word"] = st.session_state["_c_word_last"]


def words_ui(ctx) -> int:
    """The caption as clickable words (tokens); returns the chosen token index."""
    cap, adapter = ctx.capture, ctx.adapter
    record = adapter.caption_record(cap)
    source = {"generated": "written by the model", "typed": "typed by you, scored by the model"}.get(
        record["source"], record["source"])
    st.markdown(f"**Caption** ({source}): {markdown_literal(record['text'])}")
    for note in cap.extras.get("notes", []):
        st.caption(note)
    pieces = split_words_note(adapter.caption_words(cap), [t.label for t in cap.targets])
    if pieces:
        st.caption(pieces)
    options = [t.index for t in cap.targets]
    if st.session_state.get("c_word") not in options:
        st.session_state["c_word"] = _default_word(cap)
    words = [t.label for t in cap.targets]      # not the capture: Streamlit keeps format_func (issue 13)
    picked = st.pills("Click a word", options, key="c_word", format_func=lambda i: words[i],
                      on_change=_keep_a_word, wrap=True,
                      help="Each token of the caption. Its map shows where the model looked to write it.")
    if picked is None:
        picked = _default_word(cap)
    st.session_state["_c_word_last"] = picked
    if record["source"] == "generated":
        st.caption("Type your own caption in the sidebar (*Caption to score*) to see where the model would look "
                   "for each of its words; leave it empty for the model's own caption.")
    return int(picked)


def probabilities_ui(ctx, word: int) -> None:
    cap = ctx.capture
    probs = ctx.adapter.probabilities(cap).detach().float().cpu().numpy()
    rows = [{"index": t.index, "label": f"{t.index}: {t.label}", "probability": float(probs[t.index])}
            for t in cap.targets]
    end = cap.extras.get("end_probability")
    with st.expander("Token probabilities", expanded=False):
        st.plotly_chart(figures.predictions_figure(rows, word, keep_order=True), key="c_probs",
                        config={"displayModeBar": False})
        if end is not None and np.isfinite(end):
            st.caption(f"Each word's probability where the model wrote it (softmax over the vocabulary). "
                       f"After the last word the model ends the caption with probability {end:.1%}.")


def method_specs(family: str) -> dict[str, MethodSpec]:
    names = WORD_METHODS + IMAGE_METHODS
    return {m.name: m for m in list_methods(family) if m.name in names}


def _clamp_cross_state(n_dec: int, n_heads: int) -> None:
    ss = st.session_state
    if not isinstance(ss.get("c_layer"), int) or not 0 <= ss["c_layer"] < n_dec:
        ss["c_layer"] = n_dec - 1
    if ss.get("c_head") not in (*HEAD_FUSIONS, *range(n_heads)):
        ss["c_head"] = "mean"


def controls_ui(ctx, specs: dict[str, MethodSpec]) -> tuple[str, dict[str, Any]]:
    """Method, and its settings: decoder layer and head for cross-attention; registry settings otherwise."""
    cap = ctx.capture
    if st.session_state.get("c_method") not in specs:
        st.session_state["c_method"] = "cross_attention"
    method = st.selectbox("Method", list(specs), key="c_method", format_func=pretty,
                          help="cross attention: where the decoder looked (free: read from the one model run). "
                               "caption relevance: attention weighted by gradients of the word's score. "
                               "The others are Captum attributions of the word's score to the pixels.")
    n_dec = len(cap.cross_attentions)
    n_heads = int(cap.cross_attentions[0].shape[0])
    _clamp_cross_state(n_dec, n_heads)
    if method == "cross_attention":
        c1, c2 = st.columns(2)
        layer = c1.selectbox("Decoder layer", list(range(n_dec)), key="c_layer",
                             help="Which decoder layer's attention to the image (0 = first).")
        head = c2.selectbox("Head", [*HEAD_FUSIONS, *range(n_heads)], key="c_head",
                            format_func=lambda h: f"head {h}" if isinstance(h, int) else f"{h} of heads",
                            help="One head, or all heads fused by mean, max or min.")
        return method, {"layer": int(layer), "head": str(head)}
    spec = specs[method]
    if not spec.params:
        st.caption("This method has no settings.")
        return method, {}
    with st.expander(f"{pretty(method)} settings", expanded=False):
        return method, params_ui(spec, ctx)


# --- maps -------------------------------------------------------------------------

def word_map_ui(ctx, spec: MethodSpec, params: dict[str, Any], word: int) -> Optional[Any]:
    """The chosen word's map: cached, computed, or (slow methods) waiting for the Run button."""
    eng = state.engine()
    cached = eng.peek(ctx.adapter, ctx.entry, ctx.digest, spec.name, word, params)
    if cached is not None:
        return cached
    if spec.slow:
        return run_on_click(
            f"Run {pretty(spec.name)}", f"c_run:{spec.name}",
            eng.explanation_key(ctx.adapter, ctx.entry, ctx.digest, spec.name, word, params),
            lambda update: eng.explain(ctx.adapter, ctx.entry, ctx.digest, spec.name, word, params, progress=update),
            label=pretty(spec.name), primary=True, help="This method runs the model many times.",
            note=f"{pretty(spec.name)} runs the model many times: press Run when the settings are right "
                 "(display changes while it runs do not stop it).")
    return eng.explain(ctx.adapter, ctx.entry, ctx.digest, spec.name, word, params)


def draw_word_map(ctx, exp, word_label: str, d) -> None:
    """The chosen word's map for display ``d`` (in the panel :data:`WORD_PANEL`: a ``panels.light`` context)."""
    scale = mapview.scale_for(exp.map, exp.signed, d)
    tab_img, tab_hover = st.tabs(["Overlay", "Hover for values"], key="c_view_tab", on_change="rerun")
    if tab_img.open is not False:
        with tab_img, guard("Drawing the map"):
            panels.show_map(ctx.img, exp.map, scale, d, ctx.box, method=exp.method,
                            caption=f"{pretty(exp.method)} for “{word_label}”")
    if tab_hover.open is not False:
        with tab_hover, guard("Drawing the hover figure"):
            fig = render.heatmap_figure(ctx.img.display, exp.map, title=f"{pretty(exp.method)}: {word_label}",
                                        cmap=scale.cmap, norm=scale.norm, alpha=d.alpha, resample=d.resample,
                                        box=ctx.box, hover_label=notes.units(exp.method), over=exp.over)
            st.plotly_chart(fig, key="c_fig")
    bits = [f"{exp.meta.get('seconds', 0.0):.2f} s", f"map {'×'.join(map(str, exp.map.shape))} over {exp.over}"]
    if "image_share" in exp.meta and exp.meta["image_share"] < 0.999:
        bits.append(f"{exp.meta['image_share']:.0%} of this word's attention went to the image")
    st.caption(" · ".join(bits))


def strip_maps(ctx, method: str, params: dict[str, Any]) -> np.ndarray:
    """Every word's map [n, rows, cols]: cross-attention read at once; relevance one backward per word (cached)."""
    cap = ctx.capture
    if method == "cross_attention":
        return cross_attention_strip(cap, params["layer"], params["head"])
    eng = state.engine()
    n = len(cap.targets)
    todo = [t for t in range(n) if eng.peek(ctx.adapter, ctx.entry, ctx.digest, method, t, params) is None]
    bar = st.progress(0.0, text=f"{pretty(method)} for every word…") if len(todo) > 2 else None
    maps = []
    for t in range(n):
        maps.append(eng.explain(ctx.adapter, ctx.entry, ctx.digest, method, t, params).map)
        if bar is not None:
            bar.progress((t + 1) / n, text=f"{pretty(method)} for every word: {t + 1}/{n}")
    if bar is not None:
        bar.empty()
    return np.stack(maps)


def _small(ctx) -> tuple[Image.Image, Optional[tuple]]:
    """A small copy of the display image for the strip, and the model's crop box scaled to it."""
    img = ctx.img.display.copy()
    img.thumbnail((STRIP_SIDE, STRIP_SIDE), Image.Resampling.LANCZOS)
    box = ctx.box
    if box is not None:
        s = img.width / ctx.img.display.width
        box = tuple(v * s for v in box)
    return img, box


def strip_ui(ctx, method: str, params: dict[str, Any], word: int) -> None:
    """Small multiples, one per word in caption order, on one colour scale."""
    cap = ctx.capture
    if method not in WORD_METHODS:
        method, params = "cross_attention", {"layer": len(cap.cross_attentions) - 1, "head": "mean"}
        note = "cross-attention (last decoder layer, mean of heads): the gradient methods run once per word"
    elif method == "cross_attention":
        which = f"head {params['head']}" if params["head"].isdigit() else f"{params['head']} of heads"
        note = f"cross-attention, decoder layer {params['layer']}, {which}"
    else:
        note = "caption relevance"
    st.markdown("**Every word, in order**")
    maps = strip_maps(ctx, method, params)                                     # [n, rows, cols]
    panels.map_panel(functools.partial(draw_strip, panels.light(ctx), method, note, maps, word), ctx.display,
                     key=STRIP_PANEL)


def draw_strip(ctx, method: str, note: str, maps: np.ndarray, word: int, d) -> None:
    """The strip's small maps on one scale for display ``d`` (in the panel :data:`STRIP_PANEL`)."""
    scale = mapview.shared_scale(list(maps), False, d)       # one method, one unit: one scale for every word
    small, box = _small(ctx)
    labels = [t.label for t in ctx.capture.targets]
    for start in range(0, len(labels), STRIP_COLUMNS):
        cols = st.columns(STRIP_COLUMNS)
        for col, t in zip(cols, range(start, min(start + STRIP_COLUMNS, len(labels)))):
            mark = " ◀" if t == word else ""
            col.image(panels.overlay_image(f"{ctx.img.digest}:strip", small, maps[t], scale, d, box),
                      caption=f"{t}: {labels[t]}{mark}", width="stretch", output_format="JPEG")
    st.markdown(mapview.legend_html(scale, "every word on this one scale: " + mapview.legend_title(method, scale)),
                unsafe_allow_html=True)
    st.caption(f"Strip: {note}; one colour scale for all words ({scale.describe()}).")


# --- URL ----------------------------------------------------------------------------

def _apply_url(url: dict[str, str], specs: dict[str, MethodSpec], ctx) -> None:
    ss = st.session_state
    # Keys of their own ("caption_method", "dec_layer", …): the other pages' "method" and "layer" mean other things.
    if "caption_method" in url:
        if url["caption_method"] in specs:
            ss["c_method"] = url["caption_method"]
        else:
            urlstate.warn(f"The link's caption method '{url['caption_method']}' is not offered on this page; "
                          "using cross attention.")
    n = len(ctx.capture.targets)
    if url.get("word") is not None:
        try:
            w = int(url["word"])
            if not 0 <= w < n:
                raise ValueError
            ss["c_word"] = w
        except ValueError:
            urlstate.warn(f"The link's word '{url['word']}' is not a position in this caption (0–{n - 1}); "
                          "using the first content word.")
    n_dec = len(ctx.capture.cross_attentions)
    if "dec_layer" in url:
        try:
            li = int(url["dec_layer"])
            if not -n_dec <= li < n_dec:
                raise ValueError
            ss["c_layer"] = li % n_dec
        except ValueError:
            urlstate.warn(f"The link's decoder layer '{url['dec_layer']}' is not between 0 and {n_dec - 1}; "
                          "using the last one.")
    if "dec_head" in url:
        v, h = url["dec_head"], int(ctx.capture.cross_attentions[0].shape[0])
        if v in HEAD_FUSIONS:
            ss["c_head"] = v
        elif v.isdigit() and int(v) < h:
            ss["c_head"] = int(v)
        else:
            urlstate.warn(f"The link's head '{v}' is not 0–{h - 1} or one of {', '.join(HEAD_FUSIONS)}; using mean.")


def main() -> None:
    page_header("Which part of the image produced each word?", "caption")
    ctx = None
    with guard("Preparing the image and model"):
        ctx = load_context()
    if ctx is None:
        return
    if ctx.adapter.family != "captioning" or not ctx.capture.cross_attentions:
        not_a_captioner_ui(ctx.adapter)
        return
    specs = method_specs(ctx.adapter.family)
    forget_on_new_capture(ctx, "c_word")
    url = urlstate.consume("caption")
    if url:
        _apply_url({k: v for k, v in url.items() if k != "word"}, specs, ctx)
    word_link = link_target(ctx, url.get("word") if url else None, "caption")      # a word belongs to its image's caption
    if word_link is not None:
        _apply_url({"word": word_link}, specs, ctx)

    t0 = time.perf_counter()
    word, method, params = 0, None, {}
    left, right = st.columns([2, 3], gap="large")
    with left:
        with guard("Drawing the caption"):
            word = words_ui(ctx)
            probabilities_ui(ctx, word)
        with guard("The method picker"):
            method, params = controls_ui(ctx, specs)
        if method is not None:
            with st.expander(f"About {pretty(method)}"):
                st.markdown(notes.method_note(method, specs[method].description))
    if method is None:
        return
    label = ctx.capture.targets[word].label
    with right, guard(pretty(method)):
        exp = word_map_ui(ctx, specs[method], params, word)
        if exp is not None:
            panels.map_panel(functools.partial(draw_word_map, panels.light(ctx), exp, label), ctx.display,
                             key=WORD_PANEL)
            with guard("The faithfulness checks"):
                faithfulness_ui(ctx, specs[method], exp, params, word,
                                label=f"Is the {pretty(method)} map for “{label}” faithful?")
    with guard("The strip of every word"):
        strip_ui(ctx, method, params, word)
    st.caption(f"This view took {time.perf_counter() - t0:.2f} s "
               f"({'model run cached' if not ctx.timings.get('capture') else 'caption and model run included'}).",
               help="Switching words, layers or heads never runs the model again.")
    values: dict[str, Any] = {**shared_url_values(ctx), "caption_method": method,
                             "word": word}
    if method == "cross_attention":
        values.update(dec_layer=params["layer"], dec_head=params["head"])
    urlstate.sync(values)


if __name__ == "__main__":
    main()
