"""Compare: two models side by side on the same image (issue 11, item 6).

By default the demo ViT and the demo CNN (when built); otherwise any two image classifiers, two ViTs
included. Each side shows its predictions, a map of the chosen method (the same method where both
models have it, or each model's own view: relevance for a transformer, spatial attention for a gated
CNN), the map's legend on its own scale, and the deletion / insertion AUC on a click. Which methods are
shared and which are a model's own comes from :mod:`attnviz.compare`. The URL keeps both models.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import streamlit as st

from attnviz import compare, render
from attnviz.errors import ModelUnavailable, UsageError
from attnviz.images import ImageRejected
from attnviz.methods.registry import get_method
from attnviz.metrics import deletion_summary
from attnviz.ui import figures, mapview, notes, panels, state, urlstate
from attnviz.ui.compute import model_key, top_k
from attnviz.ui.context import rejected_sentence
from attnviz.ui.errors import guard
from attnviz.ui.faithfulness import deletion_caption, verdict
from attnviz.ui.widgets import map_or_run, markdown_literal, page_header, pretty, run_on_click, shared_url_values

SIDES = ("a", "b")
DEFAULTS = {"a": "demo-vit-shapes", "b": "demo-cnn-shapes"}
OWN = "own"                          # the method choice "each model's own view"
TOP = 5


def _offline(option: str) -> bool:
    return not state.missing_demo_sentence(option)


def _options() -> dict[str, str]:
    """Model options a side may take (option -> label): the sidebar's, less a typed hub id."""
    return {v: label for v, label in state.model_options() if v != state.CUSTOM_MODEL}


def _default(side: str, options: dict[str, str]) -> str:
    """The demo ViT for A, the demo CNN for B when built; otherwise A's model again (two ViTs)."""
    want = DEFAULTS[side]
    if want in options and _offline(want):
        return want
    if side == "b" and st.session_state.get("cmp_a") in options:
        return st.session_state["cmp_a"]
    return next(iter(options))


def _apply_url(url: dict[str, str], options: dict[str, str]) -> None:
    for side in SIDES:
        raw = url.get(f"model_{side}")
        if raw is None:
            continue
        if raw in options:
            st.session_state[f"cmp_{side}"] = raw
        else:
            urlstate.warn(f"The link's model {side.upper()} '{raw}' is not one of this server's models; "
                          "using the default.")
    if "method" in url:
        st.session_state["cmp_method"] = url["method"]


def _models_ui(options: dict[str, str]) -> dict[str, str]:
    chosen = {}
    cols = st.columns(2)
    for side, col in zip(SIDES, cols):
        key = f"cmp_{side}"
        if st.session_state.get(key) not in options:
            st.session_state[key] = _default(side, options)
        chosen[side] = col.selectbox(f"Model {side.upper()}", list(options), key=key,
                                     format_func=lambda v: options.get(v, v))
    return chosen


def _load(option: str):
    """The shared adapter of an option, or one st.error sentence and None."""
    missing = state.missing_demo_sentence(option)
    if missing:
        st.error(missing)
        return None
    try:
        with st.spinner("Loading the model (once per server)…"):
            adapter = state.get_model(state.model_spec(option))
    except (ModelUnavailable, UsageError) as e:
        st.error(str(e))
        return None
    if adapter.family in ("clip", "captioning"):
        st.error(f"{adapter.name} is not an image classifier (its targets are texts): the Compare page compares "
                 "classifiers; pick another model for this side.")
        return None
    return adapter


def _method_ui(a, b) -> str:
    shared = compare.shared_methods(a, b)
    choices = [*shared, OWN]
    own = {ad.name: compare.own_methods(ad) for ad in (a, b)}
    if st.session_state.get("cmp_method") not in choices:
        st.session_state["cmp_method"] = "grad_cam" if "grad_cam" in shared else choices[0]
    own_words = " and ".join(f"{', '.join(pretty(m) for m in ms)} for {name}" for name, ms in own.items())
    return st.selectbox("Method", choices, key="cmp_method",
                        format_func=lambda m: f"each model's own ({own_words})" if m == OWN else pretty(m),
                        help="A method both models have, or each model's own view: relevance (Chefer et al. "
                             "2021) for a transformer, the CBAM spatial gate for a CNN with one.")


def _side_method(adapter, choice: str) -> tuple[str, list[str]]:
    """(the image map this side draws, the own views it has that are not over the image)."""
    if choice != OWN:
        return choice, []
    names = compare.own_methods(adapter)
    image = [n for n in names if get_method(n).over in compare.IMAGE_MAPS]
    return (image[0] if image else "grad_cam"), [n for n in names if n not in image]


def _compute(adapter, entry, digest: str, method: str, target: int, side: str):
    """The cached map, or computed (a slow method waits for its Run button)."""
    return map_or_run(adapter, entry, digest, get_method(method), target, {},
                      button=f"Run {pretty(method)} on {adapter.name}", key=f"cmp_run:{side}:{method}",
                      note=f"{pretty(method)} runs the model many times: press Run.")


def _side_ui(side: str, adapter, entry, img, method: str, extra: list[str], label: str, display) -> dict[str, Any]:
    """One column: predictions, the map with its legend, deletion / insertion on a click."""
    cap = entry.capture
    out: dict[str, Any] = {"model": adapter.name}
    st.markdown(f"#### {side.upper()} · {markdown_literal(adapter.name)}")
    tgt = compare.target_by_label(adapter, cap, label)
    rows = top_k(adapter, cap, min(TOP, len(cap.targets)))
    out["top"] = rows[0]["label"] if rows else None
    st.markdown(f"**Top {len(rows)} predictions** · top class **{markdown_literal(str(out['top']))}**")
    font = figures.PRESENT_FONT if display.present else None
    fig = panels.figure(("cmp_predictions", img.digest, model_key(adapter), tgt.index, len(rows), font),
                        lambda: figures.predictions_figure(rows, tgt.index, font_size=font))
    st.plotly_chart(figures.presented(fig) if font else fig, key=f"cmp_pred_{side}", config={"displayModeBar": False})
    if tgt.label.lower() != str(label).lower():
        st.caption(f"{adapter.name} has no class '{label}': it explains its top class '{tgt.label}'.")
    with guard(f"{pretty(method)} on {adapter.name}"):
        exp = _compute(adapter, entry, img.digest, method, tgt.index, side)
        if exp is None:
            return out
        box = cap.map_box(exp.map.shape, img.image.size, exp.over)        # a CNN grid where its cells lie
        box = None if box is None else tuple(v * img.scale for v in box)
        caption = (f"{pretty(method)} {'for ' + tgt.label if exp.target is not None else '(class-agnostic)'} · "
                   f"map {'×'.join(map(str, exp.map.shape))} over {exp.over}")
        # the map and its legend: a display change redraws only these (one map panel per side)
        panels.map_panel(functools.partial(_draw_map, img, exp.map, exp.signed, method, caption, box), display,
                         key=f"compare-{side}")
        out.update(method=method, units=notes.units(method),
                   export=(exp.map, exp.signed, method, f"{side.upper()} · {adapter.name}: {caption}",
                           cap.map_box(exp.map.shape, img.image.size, exp.over)))
        for name in extra:
            st.caption(f"{pretty(name)} is over channels, not the image: the Explore page shows it for "
                       f"{adapter.name}.")
        eng = state.engine()
        args = (adapter, entry, img.digest, method, tgt.index, {})
        curves = eng.peek_faithfulness(*args) or run_on_click(
            "Deletion / insertion AUC", f"cmp_di:{side}:{method}", eng.check_key("deletion", *args),
            lambda update: eng.faithfulness(*args, exp=exp, progress=update), label="Deletion and insertion",
            note="Deletes (and inserts) the map's patches most important first and follows the score: runs the "
                 "model many times.")
        if curves is not None:
            summary = deletion_summary(curves)
            out["deletion_auc"] = summary["deletion_auc"]
            st.caption(deletion_caption(summary))
            st.caption(verdict(curves, summary)[0])
    return out


def _draw_map(img, m, signed: bool, method: str, caption: str, box, display) -> None:
    scale = mapview.scale_for(m, signed, display)
    panels.show_map(img, m, scale, display, box, method=method, caption=caption)


def both_maps_picture(image, shown, display):
    """The compared maps side by side, each over the image at slide size with its legend and title (what it is,
    on which model), on the scale the page shows it."""
    pictures = []
    for m, signed, method, title, box in shown:
        scale = mapview.scale_for(m, signed, display)
        pictures.append(mapview.picture(image, m, scale, display, box,
                                        f"{title} · {mapview.legend_title(method, scale)}"))
    return render.side_by_side(pictures)


def _scale_sentence(results: list[dict[str, Any]]) -> str:
    shown = [r for r in results if "units" in r]          # the sides that drew a map
    if len(shown) < 2:
        return ""
    units = {r["units"] for r in shown}
    what = (f"both in {next(iter(units))}, but two models' scores differ in size" if len(units) == 1 else
            " and ".join(f"{r['model']} in {r['units']}" for r in shown) + ": different units")
    return (f"Each map keeps its own colour scale, shown in its legend ({what}). Compare where each map is bright, "
            "not how bright.")


def main() -> None:
    page_header("Two models, one image", "compare")
    c = state.choices()
    options = _options()
    url = urlstate.consume("compare")
    if url:
        _apply_url(url, options)
    chosen = _models_ui(options)
    if c.image_bytes is None:
        st.info("Upload an image in the sidebar, or pick one of the samples.")
        return
    try:
        img = state.decode(c.image_bytes)
    except ImageRejected as e:
        st.error(rejected_sentence(e, c))
        return
    adapters = {side: _load(opt) for side, opt in chosen.items()}
    if any(a is None for a in adapters.values()):
        return
    shapes = [a.name for a in adapters.values() if state.knows_only_shapes(a)]
    if shapes and not (c.is_sample and state.is_scene_sample(c.image_name or "")):
        many = len(set(shapes)) > 1
        st.info(f"{' and '.join(dict.fromkeys(shapes))} {'know' if many else 'knows'} synthetic shapes, not "
                f"photos: on this image {'their' if many else 'its'} predictions and maps say little about "
                f"{'them' if many else 'it'}. Pick a 'scene' sample.")
    eng = state.engine()
    entries = {}
    with st.spinner("Running the models on your image…"):
        for side, ad in adapters.items():
            entries[side] = eng.capture(ad, img.digest, img.image, None, turn=lambda ad=ad: panels.model_turn(ad))
    choice = _method_ui(adapters["a"], adapters["b"])
    cap_a = entries["a"].capture
    labels = [t.label for t in cap_a.targets]
    top_a = adapters["a"].resolve_target(cap_a, None).label
    if st.session_state.get("cmp_label") not in labels:
        st.session_state["cmp_label"] = top_a
    label = st.selectbox("Class to explain", labels, key="cmp_label",
                         help="Both models explain this class when both know it (matched by name); a model "
                              "without it explains its own top class.")
    display = c.display
    results = []
    for side, col in zip(SIDES, st.columns(2, gap="large")):
        method, extra = _side_method(adapters[side], choice)
        with col:
            results.append(_side_ui(side, adapters[side], entries[side], img, method, extra, label, display))
    sentence = _scale_sentence(results)
    if sentence:
        st.caption(sentence)
    shown = [r["export"] for r in results if "export" in r]
    if len(shown) == 2:
        st.download_button("Both maps PNG", lambda: render.to_png_bytes(both_maps_picture(img.image, shown, display)),
                           file_name=f"attnviz-compare-{img.digest[:8]}.png", mime="image/png", on_click="ignore",
                           key="dl_compare", help="The two maps side by side in one picture, slide-sized, each with "
                                                  "its own legend, on the scales shown.")
    st.caption("Deletion AUC: lower is better (the score falls sooner as the map's most important parts go); "
               "insertion AUC: higher is better.")
    _attention_vs_convolution_note()
    # shared_url_values reads these four fields of a page context; this page has no single context
    ctx_like = SimpleNamespace(sample=c.image_name if c.is_sample else None, img=img,
                               model_option=c.model_option, display=display)
    urlstate.sync({**shared_url_values(ctx_like), "model_a": chosen["a"], "model_b": chosen["b"],
                   "method": choice})


AVC_PATH = Path(__file__).resolve().parents[3] / "models" / "demo-cnn-shapes" / "attention_vs_convolution.json"


@functools.lru_cache(maxsize=2)
def _avc_rows(mtime_ns: int) -> list[dict[str, Any]]:
    # Parsed once per version of the file (keyed by its mtime), not on every rerun of the page.
    return json.loads(AVC_PATH.read_text())


def _attention_vs_convolution_note() -> None:
    """The teaching note: this project's own small-data / large-data numbers (python -m
    attnviz.demo.attention_vs_convolution), read from the demo CNN's folder, not typed here."""
    try:
        rows = _avc_rows(AVC_PATH.stat().st_mtime_ns)
    except FileNotFoundError:
        return
    with st.expander("Is attention always better than convolution? (this project's own numbers)"):
        st.markdown(
            "Not always. Convolution builds in locality and translation equivariance and tends to win with little "
            "data and small images; self-attention sees the whole image from the first layer and needs more data "
            "(and costs more as the number of patches grows). The demo CNN and the demo ViT's architecture, "
            "trained here with the same budget on synthetic scenes, then tested on fresh ones:")
        st.table([{"model": r["model"], "training scenes": r["train_scenes"], "steps": r["steps"],
                   "accuracy on fresh scenes": f"{100 * r['accuracy']:.1f} %", "parameters": f"{r['params']:,}",
                   "forward, 32 images at 64² (s)": round(r["forward"]["64px_batch32"]["cpu"], 4),
                   "at 4× the pixels (s)": round(r["forward"]["128px_batch32"]["cpu"], 4)} for r in rows])
        st.caption("One seed per row; runs at 800 steps vary a lot. The shipped demo ViT reaches 99 % with about 4× "
                   "the steps and fresh scenes throughout.")


if __name__ == "__main__":
    main()
