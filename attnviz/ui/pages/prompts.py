"""Text prompts: where in the image does each prompt match (CLIP / SigLIP)?

Prompts one per line; the zero-shot probabilities; one map per prompt side by
side on one shared colour scale; each prompt's words shaded by their text-side
relevance. The model runs once per image and prompt list (the Engine caches the
capture); every map comes from that one run.
"""
from __future__ import annotations

import functools
import html
import time
from typing import Any, Sequence

import numpy as np
import streamlit as st

from attnviz import catalog, render
from attnviz.methods import list_methods
from attnviz.ui import figures, mapview, notes, panels, state, urlstate
from attnviz.ui.context import MAX_URL_PROMPTS_CHARS, load_context
from attnviz.ui.errors import guard
from attnviz.ui.faithfulness import faithfulness_ui
from attnviz.ui.widgets import page_header, params_ui, pretty, shared_url_values

DEMO_CLIP = "demo-clip-shapes"
PER_ROW = 3                       # maps per row
WORD_RGB = (228, 87, 46)          # the shading colour of relevant words
MAX_WORD_ALPHA = 0.85


# --- pure helpers (tested without Streamlit) -----------------------------------

def word_spans(prompt: str, words: Sequence[tuple[str, float]]) -> list[tuple[str, float | None]]:
    """The prompt cut into (text, value) pieces: each tokenizer word at its place in the prompt, with
    the prompt's own spacing and casing between them (value None). A word the prompt does not contain
    as typed (the tokenizer normalised it) is appended with a space before it."""
    lower = prompt.lower()
    hay = lower if len(lower) == len(prompt) else prompt   # lower() can change the length of a few letters
    out: list[tuple[str, float | None]] = []
    pos = 0
    for text, value in words:
        w = text.strip()
        if not w:
            continue
        j = hay.find(w.lower() if hay is lower else w, pos)
        if j < 0:
            out.append((" ", None))
            out.append((w, value))
            continue
        if j > pos:
            out.append((prompt[pos:j], None))
        out.append((prompt[j:j + len(w)], value))
        pos = j + len(w)
    if pos < len(prompt):
        out.append((prompt[pos:], None))    # e.g. words cut off by the model's token limit: not shaded
    return out


def words_html(prompt: str, words: Sequence[tuple[str, float]]) -> str:
    """HTML of the prompt with each word's background as strong as its relevance (this prompt's
    strongest word darkest). Every piece of user text is escaped."""
    top = max((max(v, 0.0) for _, v in words), default=0.0)
    parts = []
    for text, value in word_spans(prompt, words):
        safe = html.escape(text)
        if value is None:
            parts.append(safe)
            continue
        a = MAX_WORD_ALPHA * max(value, 0.0) / top if top > 0 else 0.0
        r, g, b = WORD_RGB
        parts.append(f'<span title="relevance {value:.3g}" style="background: rgba({r},{g},{b},{a:.2f}); '
                     f'border-radius: 3px; padding: 0 2px">{safe}</span>')
    return '<div class="attnviz-words" style="line-height: 1.9">' + "".join(parts) + "</div>"


def probability_note(kind: str) -> str:
    if kind == "siglip":
        return ("SigLIP: an independent sigmoid per prompt, so each bar stands on its own and several "
                "(or none) can be high.")
    return ("CLIP: a softmax over your prompts, so the bars add up to 100 % and only compare the prompts "
            "with each other; add or remove a prompt and they all change.")


# --- page parts ---------------------------------------------------------------

def _use_demo_clip() -> None:
    st.session_state["model"] = DEMO_CLIP
    state.show_a_scene_for_the_demo()


def not_image_text_ui(adapter) -> None:
    """One sentence, and a way to the demo CLIP model."""
    st.info(f"**{adapter.name}** is not an image–text model, so it cannot score text prompts: pick a CLIP "
            "or SigLIP model in the sidebar.")
    entry = catalog.load_catalog().get(DEMO_CLIP)
    if entry is None:
        return
    if catalog.is_available_offline(entry):
        st.button(f"Use the demo CLIP model ({DEMO_CLIP})", key="use_demo_clip", on_click=_use_demo_clip,
                  type="primary", help=entry.notes)
    else:
        st.caption("The offline demo CLIP model has not been built yet: run `python -m attnviz.demo.train_clip`.")


def probabilities_ui(ctx) -> None:
    cap, adapter = ctx.capture, ctx.adapter
    probs = adapter.probabilities(cap).detach().float().cpu().numpy()
    rows = [{"index": t.index, "label": t.label, "probability": float(probs[t.index])} for t in cap.targets]
    st.markdown("**Zero-shot match of each prompt**")
    st.plotly_chart(figures.predictions_figure(rows, keep_order=True), key="prompt_probs",
                    config={"displayModeBar": False})
    st.caption(probability_note(getattr(adapter, "kind", "clip")))
    for n in cap.extras.get("notes", ()):
        st.caption(n)


def map_method_ui(ctx):
    """The image-side method (fast, class-specific ones) and its settings."""
    specs = {m.name: m for m in list_methods(ctx.adapter)
             if m.over in ("patches", "pixels") and m.class_specific and not m.slow}
    names = list(specs)
    url = urlstate.consume("prompts")
    if url and "map_method" in url:
        if url["map_method"] in specs:
            st.session_state["pr_method"] = url["map_method"]
        else:
            urlstate.warn(f"The link's map method '{url['map_method']}' is not one of {', '.join(names)}; "
                          "using relevance.")
    if st.session_state.get("pr_method") not in names:
        st.session_state["pr_method"] = "relevance" if "relevance" in names else names[0]
    name = st.selectbox("Map method", names, key="pr_method", format_func=pretty,
                        help="How each prompt's map is computed from the one model run. Slower methods "
                             "are on the Explore page.")
    spec = specs[name]
    with st.expander(f"{pretty(name)} settings", expanded=False):
        params = params_ui(spec, ctx)
    return spec, params


def maps_ui(ctx, spec, params: dict[str, Any]) -> None:
    """One overlay per prompt, one shared colour scale, the prompt's words shaded underneath: the maps are
    computed here, drawn in the page's map panel (a display change reruns only the drawing)."""
    eng = state.engine()
    cap = ctx.capture
    probs = ctx.adapter.probabilities(cap).detach().float().cpu().numpy()
    exps = []
    for t in cap.targets:
        exps.append(eng.explain(ctx.adapter, ctx.entry, ctx.digest, spec.name, t.index, params))
    words = {}
    for t in cap.targets:
        with guard(f"Text relevance of prompt {t.index + 1}"):
            words[t.index] = eng.explain(ctx.adapter, ctx.entry, ctx.digest, "text_relevance", t.index, {})
    panels.map_panel(functools.partial(draw_maps, panels.light(ctx), spec.name, exps, words, probs), ctx.display)


def draw_maps(ctx, method: str, exps, words: dict, probs: np.ndarray, d) -> None:
    """The overlays (or hover figures), legend and caption of :func:`maps_ui` for display ``d``."""
    cap = ctx.capture
    signed = any(e.signed for e in exps)
    # One method, one unit: one scale for every prompt, so a weak match also looks weak.
    scale = mapview.shared_scale([e.map for e in exps], signed, d)
    cmap, norm, vmin, vmax = scale.cmap, scale.norm, scale.lo, scale.hi
    t0 = time.perf_counter()
    tab_img, tab_hover = st.tabs(["Overlays", "Hover for values"], key="pr_view_tab", on_change="rerun")
    for tab, hover in ((tab_img, False), (tab_hover, True)):
        if tab.open is False:
            continue
        with tab:
            for start in range(0, len(exps), PER_ROW):
                cols = st.columns(PER_ROW)
                for col, t, exp in zip(cols, cap.targets[start:start + PER_ROW], exps[start:start + PER_ROW]):
                    with col, guard(f"Drawing prompt {t.index + 1}"):
                        label = f"{t.label} · {probs[t.index]:.1%}"
                        if hover:
                            fig = render.heatmap_figure(ctx.img.display, exp.map, title=label, cmap=cmap, norm=norm,
                                                        alpha=d.alpha, resample=d.resample, box=ctx.box, vmin=vmin,
                                                        vmax=vmax, compact=True, over=exp.over)
                            st.plotly_chart(fig, key=f"pr_fig:{t.index}")
                        else:
                            st.image(panels.overlay_image(ctx.img.digest, ctx.img.display, exp.map, scale, d,
                                                          ctx.box), caption=label, width="stretch",
                                     output_format="JPEG")
                        if t.index in words:
                            st.markdown(words_html(t.label, words[t.index].meta["words"]), unsafe_allow_html=True)
    ctx.timings["render"] = time.perf_counter() - t0
    st.markdown(mapview.legend_html(scale, "every prompt on this one scale: " + mapview.legend_title(method, scale)),
                unsafe_allow_html=True)
    st.caption(f"{pretty(method)} for each prompt, all on one colour scale ({vmin:.3g} to {vmax:.3g}): "
               "a brighter map leans harder on that region. Words are shaded by their text relevance, "
               "each prompt's strongest word darkest; hover a word for its value.")


def faithfulness_prompt_ui(ctx, spec, params: dict[str, Any]) -> None:
    """The faithfulness checks for one prompt's map (the user picks the prompt inside the panel)."""
    targets = ctx.capture.targets

    def pick():
        options = [t.index for t in targets]
        if st.session_state.get("pr_faith_prompt") not in options:
            st.session_state["pr_faith_prompt"] = options[0]
        i = st.selectbox("Check the map of", options, key="pr_faith_prompt",
                         format_func=lambda j: targets[j].label)
        return state.engine().explain(ctx.adapter, ctx.entry, ctx.digest, spec.name, i, params), i
    faithfulness_ui(ctx, spec, None, params, None, label="Are these maps faithful?", pick=pick)


def main() -> None:
    t_start = time.perf_counter()
    page_header("Where in the image does the text match?", "prompts")
    left, right = st.columns([1, 2], gap="large")
    prompts_box = left.container()
    ctx = None
    with guard("Preparing the image and model"):
        ctx = load_context(texts_slot=prompts_box)
    if ctx is None:
        return
    if ctx.adapter.family != "clip":
        with right:
            not_image_text_ui(ctx.adapter)
        return
    spec = params = None
    with left:
        with guard("Drawing the zero-shot chart"):
            probabilities_ui(ctx)
        with guard("The method picker"):
            spec, params = map_method_ui(ctx)
    if spec is None:
        return
    with right:
        with guard(f"{pretty(spec.name)}"):
            maps_ui(ctx, spec, params)
            t = ctx.timings
            parts = [f"model run {t['capture']:.2f} s" if t.get("capture") else "model run cached",
                     f"drawing {t.get('render', 0):.2f} s"]
            st.caption(f"This view took {time.perf_counter() - t_start:.2f} s ({', '.join(parts)}).")
        with guard("The faithfulness checks"):
            faithfulness_prompt_ui(ctx, spec, params)
        with st.expander("About these maps"):
            st.markdown(notes.method_note(spec.name, spec.description))
            st.markdown(notes.method_note("text_relevance"))
    prompts = "\n".join(ctx.texts or ())
    urlstate.sync({**shared_url_values(ctx), "map_method": spec.name,
                   "prompts": prompts if len(prompts) <= MAX_URL_PROMPTS_CHARS else None})


if __name__ == "__main__":
    main()
