"""Ask: which regions of the image (and which words of the question) produced each word of a vision-language
model's answer.

The question box (with the model's suggested questions) sits on the page; the answer, the model's own or one
typed to check, is shown as clickable word pills (as on the Caption page). The chosen word's map is drawn over
the image as the model saw it (crop box; tiles in their places, the global view beside), the question's words
are coloured by their relevance for that word, and the methods can be laid side by side. One capture per
image, question and answer (the shared Engine); switching words, layers or heads re-reads it.
"""
from __future__ import annotations

import functools
import html
import io
import json
import time
from typing import Any

import numpy as np
import streamlit as st

from attnviz import render
from attnviz.methods import list_methods
from attnviz.methods.common import HEAD_FUSIONS
from attnviz.ui import mapview, panels, state, urlstate
from attnviz.ui.context import load_context
from attnviz.ui.errors import guard
from attnviz.ui.widgets import (forget_on_new_capture, params_ui, present_style, pretty, run_on_click,
                                shared_url_values)

FREE = ("image_attention", "answer_relevance")     # read from the one capture (relevance: one backward per word)
WORD_PANEL, SIDE_PANEL = "ask-word", "ask-side"
ABOUT = ("Ask a vision-language model a question about the image and see, for each word of its answer, which "
         "image regions it drew on. **image attention** is the raw attention of the position that predicted the "
         "word to the image tokens; **answer relevance** (Chefer et al. 2021) weights the decoder's attention by "
         "its gradient for the word's logit and accumulates it through the layers; the pixel methods explain the "
         "word's log-probability. The question's words are coloured by the same relevance row.")


def not_a_vlm_ui(adapter) -> None:
    st.info(f"{adapter.name} does not answer questions: this page needs a vision-language model (LLaVA, "
            "PaliGemma, Qwen2-VL, Idefics3 / SmolVLM, or the offline demo-vlm-shapes, which answers questions about "
            "the shape scenes): pick one in the sidebar.")


def _percent(p: float) -> str:
    return f"{p:.0%}" if p >= 0.01 else f"{p:.1e}"


def words_ui(ctx) -> int:
    """The answer as clickable word pills; returns the chosen answer-token index."""
    cap, adapter = ctx.capture, ctx.adapter
    src = {"generated": "the model's answer", "typed": "your answer, scored by the model"}.get(
        cap.inputs.get("source", ""), "answer")
    st.markdown(f"**Answer** ({src}): {html.escape(adapter.answer_text(cap))}")
    for note in cap.extras.get("notes", []):
        st.caption(note)
    options = [t.index for t in cap.targets]
    if st.session_state.get("ask_word") not in options:
        st.session_state["ask_word"] = adapter.resolve_target(cap, None).index
    labels = [t.label for t in cap.targets]
    probs = adapter.probabilities(cap).tolist()
    picked = st.pills("Click a word", options, key="ask_word", wrap=True,
                      format_func=lambda i: f"{labels[i]} · {_percent(probs[i])}",
                      help="Each token of the answer with its probability where the model wrote it.")
    return int(picked if picked is not None else adapter.resolve_target(cap, None).index)


def question_words_html(tokens: list[str], values: np.ndarray) -> str:
    """The question's tokens, each on a background as strong as its relevance (max = full colour)."""
    top = float(values.max()) if values.size and values.max() > 0 else 1.0
    spans = [f'<span title="{v:.3g}" style="background: rgba(230, 85, 13, {max(0.0, v) / top:.2f}); '
             f'padding: 1px 2px; border-radius: 3px">{html.escape(t)}</span>' for t, v in zip(tokens, values)]
    return "<div>" + " ".join(spans) + "</div>"


def method_controls_ui(ctx, specs) -> tuple[str, dict[str, Any]]:
    if st.session_state.get("ask_method") not in specs:
        st.session_state["ask_method"] = "answer_relevance"
    method = st.selectbox("Method", list(specs), key="ask_method", format_func=pretty,
                          help="image attention and answer relevance are read from the one model run; the pixel "
                               "methods run the model again (a Run button).")
    if method == "image_attention":
        n, h = ctx.capture.n_layers, ctx.capture.n_heads
        c1, c2 = st.columns(2)
        layer = c1.selectbox("Decoder layer", ["mean", *range(n)], key="ask_layer",
                             format_func=lambda v: "mean of layers" if v == "mean" else f"layer {v}")
        head = c2.selectbox("Head", [*HEAD_FUSIONS, *range(h)], key="ask_head",
                            format_func=lambda v: f"head {v}" if isinstance(v, int) else f"{v} of heads")
        return method, {"decoder_layer": str(layer), "head": str(head)}
    if not specs[method].params:
        return method, {}
    with st.expander(f"{pretty(method)} settings", expanded=False):
        return method, params_ui(specs[method], ctx)


def word_map(ctx, spec, params: dict[str, Any], word: int):
    eng = state.engine()
    cached = eng.peek(ctx.adapter, ctx.entry, ctx.digest, spec.name, word, params)
    if cached is not None or not spec.slow:
        return cached or eng.explain(ctx.adapter, ctx.entry, ctx.digest, spec.name, word, params)
    return run_on_click(
        f"Run {pretty(spec.name)}", f"ask_run:{spec.name}",
        eng.explanation_key(ctx.adapter, ctx.entry, ctx.digest, spec.name, word, params),
        lambda update: eng.explain(ctx.adapter, ctx.entry, ctx.digest, spec.name, word, params, progress=update),
        label=pretty(spec.name), primary=True, help="This method runs the model many times.",
        note=f"{pretty(spec.name)} runs the model many times: press Run when the settings are right.")


def draw_word_map(ctx, exp, label: str, d) -> None:
    scale = mapview.scale_for(exp.map, exp.signed, d)
    panels.show_map(ctx.img, exp.map, scale, d, ctx.box, method=exp.method,
                    caption=f"{pretty(exp.method)} for “{label}”")
    for name, m in exp.meta.get("beside", {}).items():
        m = np.asarray(m, dtype=np.float32)
        st.image(panels.overlay_image(f"{ctx.img.digest}:{name}", ctx.img.display, m,
                                      mapview.scale_for(m, exp.signed, d), d, None),
                 caption=f"{name} view (the whole image at tile size), same word", width=240, output_format="JPEG")
    bits = [f"{exp.meta.get('seconds', 0.0):.2f} s", f"map {'×'.join(map(str, exp.map.shape))} image tokens"]
    if "image_share" in exp.meta:
        bits.append(f"image share {exp.meta['image_share']:.0%}")
    st.caption(" · ".join(bits))


def draw_side_by_side(ctx, maps: list[tuple[str, np.ndarray, bool]], label: str, d) -> None:
    cols = st.columns(len(maps))
    for col, (name, m, signed) in zip(cols, maps):
        with col:
            panels.show_map(ctx.img, m, mapview.scale_for(m, signed, d), d, ctx.box, method=name,
                            caption=f"{pretty(name)}: “{label}”")


def export_ui(ctx, exp, word: int) -> None:
    record = {**ctx.adapter.answer_record(ctx.capture), "method": exp.method, "params": exp.params,
              "target": word, "map": exp.map.tolist(), "beside": exp.meta.get("beside", {})}
    stem = f"attnviz-ask-{exp.method}-{ctx.digest[:8]}-w{word}"
    buf = io.BytesIO()
    np.save(buf, exp.map.astype(np.float32))
    c1, c2, c3 = st.columns(3)
    c1.download_button("Raw map .npy", buf.getvalue(), file_name=f"{stem}.npy", key="ask_dl_npy",
                       mime="application/octet-stream", on_click="ignore", width="stretch",
                       help="float32 [rows, cols] on the image-token canvas (tiles in place).")
    c2.download_button("Record .json", json.dumps(record, default=str), file_name=f"{stem}.json", key="ask_dl_json",
                       mime="application/json", on_click="ignore", width="stretch",
                       help="Question and answer tokens with probabilities, the image geometry, the map.")
    png = render.to_png_bytes(render.overlay(ctx.img.image, exp.map, norm="signed" if exp.signed else "minmax",
                                             box=ctx.box))
    c3.download_button("Overlay PNG", png, file_name=f"{stem}.png", key="ask_dl_png", mime="image/png",
                       on_click="ignore", width="stretch")


def _apply_url(url: dict[str, str], specs, n_words: int) -> None:
    if url.get("ask_method") in specs:
        st.session_state["ask_method"] = url["ask_method"]
    elif "ask_method" in url:
        urlstate.warn(f"The link's method '{url['ask_method']}' is not offered on this page; using relevance.")
    if url.get("word", "").isdigit() and int(url["word"]) < n_words:
        st.session_state["ask_word"] = int(url["word"])


def main() -> None:
    if st.session_state.get("present"):
        present_style()
    st.title("Which regions produced each word of the answer?")
    with st.expander("About this page", expanded=False):
        st.markdown(ABOUT)
    ctx = None
    with guard("Preparing the image, question and model"):
        ctx = load_context(texts_slot=st.container())
    if ctx is None:
        return
    if ctx.adapter.family != "vlm":
        not_a_vlm_ui(ctx.adapter)
        return
    specs = {m.name: m for m in list_methods(ctx.adapter)}
    forget_on_new_capture(ctx, "ask_word")
    url = urlstate.consume("ask")
    if url:
        _apply_url(url, specs, len(ctx.capture.targets))
    t0 = time.perf_counter()
    left, right = st.columns([2, 3], gap="large")
    with left:
        with guard("Drawing the answer"):
            word = words_ui(ctx)
        label = ctx.capture.targets[word].label
        with guard("The question's words"):
            q = state.engine().explain(ctx.adapter, ctx.entry, ctx.digest, "question_relevance", word, {})
            st.markdown(f"**Question words for “{html.escape(label)}”** (relevance)")
            st.markdown(question_words_html(q.meta["tokens"], q.map), unsafe_allow_html=True)
        with guard("The method picker"):
            method, params = method_controls_ui(ctx, {k: v for k, v in specs.items() if k != "question_relevance"})
        side = st.toggle("Methods side by side", key="ask_side",
                         help="image attention and answer relevance for this word, next to each other.")
    exp = None
    with right, guard(pretty(method)):
        exp = word_map(ctx, specs[method], params, word)
        if exp is not None:
            panels.map_panel(functools.partial(draw_word_map, panels.light(ctx), exp, label), ctx.display,
                             key=WORD_PANEL)
    if side:
        with guard("Methods side by side"):
            eng = state.engine()
            maps = [(m, eng.explain(ctx.adapter, ctx.entry, ctx.digest, m, word, {}).map, False) for m in FREE]
            panels.map_panel(functools.partial(draw_side_by_side, panels.light(ctx), maps, label), ctx.display,
                             key=SIDE_PANEL)
    if exp is not None:
        with guard("Exports"):
            export_ui(ctx, exp, word)
    st.caption(f"This view took {time.perf_counter() - t0:.2f} s.")
    urlstate.sync({**shared_url_values(ctx), "ask_method": method, "word": word})


if __name__ == "__main__":
    main()
