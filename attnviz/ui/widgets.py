"""``*_ui()`` functions: each draws a few controls and returns what they chose. No compute here."""
from __future__ import annotations

import os
import re
import time
from typing import Any, Callable, Optional, TypeVar

import streamlit as st

from .. import render
from ..images import MAX_BYTES
from ..methods.registry import MethodSpec, Param
from . import notes, state, urlstate
from .context import query_options
from .state import Choices, Display

UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "gif", "bmp"]
CMAPS = ["auto", "inferno", "viridis", "magma", "plasma", "turbo", "jet", "RdBu_r", "coolwarm", "gray"]
NORMS = ["auto", *render.NORMALIZATIONS]
T = TypeVar("T")
DEFAULT_METHOD = {"captioning": "caption_relevance"}    # per family; otherwise relevance


def markdown_literal(text: str) -> str:
    """User text (a typed caption) for st.markdown, shown as typed: not read as Markdown or LaTeX."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$])", r"\\\1", text)


def pretty(name: str) -> str:
    return name.replace("_", " ")


def method_label(spec: MethodSpec) -> str:
    tags = [] if spec.class_specific else ["class-agnostic"]
    if spec.slow:
        tags.append("slow")
    return pretty(spec.name) + (f"  ({', '.join(tags)})" if tags else "")


def page_header(title: str, page: str) -> None:
    st.title(title)
    with st.expander("About this page", expanded=False):
        st.markdown(notes.PAGES[page])


# --- long work on a click -------------------------------------------------------

PROGRESS_EVERY_S = 0.15   # at most this often a progress bar update goes to the browser


def progress_bar(label: str):
    """(bar, update(done, total)): a progress bar whose updates are throttled for the browser."""
    bar = st.progress(0.0, text=f"{label}: starting…")
    last = [0.0]

    def update(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < PROGRESS_EVERY_S:
            return
        last[0] = now
        bar.progress(min(1.0, done / max(total, 1)), text=f"{label}: {done}/{total} model evaluations")
    return bar, update


def run_on_click(button: str, key: str, run: Callable[[Callable[[int, int], None]], T], *, label: str,
                 note: str = "", help: Optional[str] = None, primary: bool = False) -> Optional[T]:
    """None (with ``note`` under the button) until the button is clicked; then ``run(progress)`` under a
    progress bar. The result replaces the button in the same run."""
    slot = st.empty()
    if not slot.button(button, key=key, help=help, type="primary" if primary else "secondary"):
        if note:
            st.caption(note)
        return None
    slot.empty()
    bar, update = progress_bar(label)
    out = run(update)
    bar.empty()
    return out


# --- clickable charts ----------------------------------------------------------

def chart_key(base: str) -> str:
    """The key a clickable chart is drawn under: it changes after every click it reports."""
    return f"{base}#{st.session_state.get('_gen:' + base, 0)}"


def clicked(base: str) -> Optional[list[int]]:
    """customdata of the point just clicked on the chart ``base``, once per click.

    A chart keeps its selection across reruns, so the same point clicked again (after a picker
    moved elsewhere) would look like no click at all. After each reported click the chart is drawn
    under a new key, with no selection, so every click is a new one.
    """
    event = st.session_state.get(chart_key(base))
    points = event.get("selection", {}).get("points", []) if event else []
    points = [p for p in points if p.get("customdata") is not None]
    if not points:
        return None
    data = points[0]["customdata"]
    # A numpy customdata row arrives as {"0": a, "1": b}; a list as [a, b].
    values = [data[k] for k in sorted(data, key=int)] if isinstance(data, dict) else list(data)
    st.session_state["_gen:" + base] = st.session_state.get("_gen:" + base, 0) + 1
    return [int(v) for v in values]


# --- state that outlives a page ------------------------------------------------

# Streamlit forgets a widget's value on any run that does not draw the widget: another page, or a
# page that stopped early (a rejected upload). Re-assigning the key at the start of every run keeps
# it; each page still checks the value against its current options before drawing.
KEEP_KEYS = ("method", "compare", "target", "pr_method", "pr_faith_prompt", "c_method", "c_layer", "c_head",
             "c_word", "h_layer", "h_head", "h_qkind", "h_row", "h_col", "h_shared",
             "l_layer", "l_head", "l_row", "l_col", "l_step", "l_guided", "l_share", "l_over")


def forget_on_new_capture(ctx, key: str) -> None:
    """Drop the choice under ``key`` when the image, texts or model change (an index means another
    target then)."""
    from .compute import model_key
    mark = (ctx.digest, model_key(ctx.adapter))
    if st.session_state.get(f"_for:{key}") != mark:
        st.session_state[f"_for:{key}"] = mark
        st.session_state.pop(key, None)


def keep_page_state() -> None:
    """Keep the pages' choices (and every method parameter, ``p:<method>:<name>``) across pages."""
    for key in [*KEEP_KEYS, *(k for k in st.session_state if str(k).startswith("p:"))]:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


# --- sidebar ----------------------------------------------------------------

def _apply_sidebar_url(url: dict[str, str], options: list[str]) -> None:
    if "model" in url:
        v = url["model"]
        if v in options and v not in (state.ENV_MODEL, state.CUSTOM_MODEL):
            st.session_state["model"] = v
        elif state.custom_models_allowed():
            try:
                st.session_state["custom_id"] = state.validate_custom_id(v)
                st.session_state["model"] = state.CUSTOM_MODEL
            except Exception:
                urlstate.warn(f"The link names model '{v}', which is not a valid hub id; using the default model.")
        else:
            urlstate.warn(f"The link names model '{v}', which is not in the catalog; using the default model.")
    if "alpha" in url:
        try:
            a = float(url["alpha"])
            if not 0.0 <= a <= 1.0:
                raise ValueError
            st.session_state["alpha"] = round(a, 2)
        except ValueError:
            urlstate.warn(f"The link's opacity '{url['alpha']}' is not a number from 0 to 1; using the default.")
    for key, allowed, what in (("cmap", CMAPS, "colormap"), ("norm", NORMS, "normalisation"),
                               ("resample", list(render.RESAMPLES), "resampling")):
        if key in url:
            if url[key] in allowed:
                st.session_state[key] = url[key]
            else:
                urlstate.warn(f"The link's {what} '{url[key]}' is not one of {', '.join(allowed)}; using the default.")


def _on_upload() -> None:
    key = f"upload{st.session_state.get('_upload_gen', 0)}"
    if st.session_state.get(key) is not None:
        st.session_state["sample"] = None          # the upload is now the image: no sample looks chosen


def _on_sample() -> None:
    # A new uploader key empties the uploader, so exactly one image is ever shown as chosen.
    st.session_state["_upload_gen"] = st.session_state.get("_upload_gen", 0) + 1


def _first_sample(names: list[str]) -> str:
    """The sample shown first: a shapes scene when the model in use is a demo model (it knows shapes,
    not photos), else the first sample."""
    model = st.session_state.get("model") or state.default_model().option
    if str(model).startswith("demo-"):
        return next((n for n in names if state.is_scene_sample(n)), names[0])
    return names[0]


def image_input_ui() -> tuple[Optional[str], Optional[bytes]]:
    """Upload (validated later by content) or a one-click sample; returns (name, bytes)."""
    up = st.file_uploader(
        "Upload an image", type=UPLOAD_TYPES, key=f"upload{st.session_state.get('_upload_gen', 0)}",
        on_change=_on_upload, max_upload_size=MAX_BYTES // (1024 * 1024),
        help="PNG, JPEG, WebP, GIF or BMP, up to 10 MB. It stays in memory and is never written to disk.")
    samples = state.sample_images()
    pick = None
    if samples:
        names = list(samples)
        if "sample" not in st.session_state or st.session_state["sample"] not in (*names, None):
            st.session_state["sample"] = None if up is not None else _first_sample(names)
        pick = st.pills("…or a sample", names, key="sample", on_change=_on_sample)
    if up is not None:
        return up.name, up.getvalue()
    if pick is not None:
        return pick, samples[pick]
    return None, None


def model_ui() -> tuple[str, str]:
    """The model picker (catalog with offline availability; a hub id when allowed); returns (option, custom id)."""
    opts = state.model_options()
    values, labels = [v for v, _ in opts], dict(opts)
    default = state.default_model()
    if st.session_state.get("model") not in values:
        st.session_state["model"] = default.option if default.option in values else values[0]
    option = st.selectbox("Model", values, key="model", format_func=lambda v: labels.get(v, v),
                          help="Models marked offline ✓ load without a network. The model is loaded once "
                               "per server and shared by everyone using it.")
    custom = ""
    if option == state.CUSTOM_MODEL:
        custom = st.text_input("Hub id", key="custom_id", placeholder="owner/model-name",
                               help="A ViT-family image classifier or backbone on the Hugging Face hub. "
                                    "Only safetensors weights are loaded; no remote code.")
    entry = next((e for e in state.catalog.load_catalog().entries if e.name == option), None)
    if entry is not None and entry.notes:
        st.caption(entry.notes)
    return option, custom


DISPLAY_DEFAULTS = {"alpha": 0.5, "cmap": "auto", "norm": "auto", "resample": "bilinear"}


def display_ui() -> Display:
    """Opacity, colormap, normalisation, resampling: these never run the model."""
    for k, v in DISPLAY_DEFAULTS.items():   # defaults via session state only (a link may have set them)
        st.session_state.setdefault(k, v)
    alpha = st.slider("Opacity", 0.0, 1.0, step=0.05, key="alpha")
    cmap = st.selectbox("Colormap", CMAPS, key="cmap",
                        help="auto: inferno for maps ≥ 0, red-blue (RdBu_r) for signed maps.")
    norm = st.selectbox("Normalisation", NORMS, key="norm",
                        help="auto: min–max for maps ≥ 0, signed (0 = white) for signed maps; "
                             "percentile clips the top and bottom 1 % (robust to a few extreme patches).")
    resample = st.radio("Upsampling", list(render.RESAMPLES), key="resample", horizontal=True,
                        help="nearest shows each patch as a block; bilinear smooths between patches.")
    return Display(alpha=alpha, cmap=cmap, norm=norm, resample=resample)


def shared_url_values(model_option: str, display: Display) -> dict[str, Any]:
    """The link parameters every page writes: the model (not an ATTNVIZ_MODEL folder) and non-default display."""
    out: dict[str, Any] = {}
    if model_option == state.CUSTOM_MODEL:
        out["model"] = st.session_state.get("custom_id")
    elif model_option != state.ENV_MODEL:
        out["model"] = model_option
    for k, default in DISPLAY_DEFAULTS.items():
        v = getattr(display, k)
        out[k] = None if v == default else v
    return out


def sidebar_ui() -> Choices:
    """Image, model and display controls shared by every page; stored for the pages to read."""
    url = urlstate.consume("sidebar")
    if url:
        _apply_sidebar_url(url, [v for v, _ in state.model_options()])
    with st.sidebar:
        st.markdown("#### 1 · Image")
        name, data = image_input_ui()
        st.markdown("#### 2 · Model")
        option, custom = model_ui()
        slot = st.container()          # prompts (image–text models) or a caption (captioners) go here
        st.markdown("#### 3 · Display")
        display = display_ui()
        if os.environ.get("ATTNVIZ_SHOW_CLEAR", "0") == "1":   # off by default: it evicts models for everyone
            if st.button("Clear caches", help="Forget loaded models and computed maps (frees memory)."):
                state.clear_all()
    ch = Choices(name, data, option, custom, display, slot)
    st.session_state["_choices"] = ch
    default = state.default_model()
    if option == default.option and default.fallback and not default.missing:
        st.info(f"Using {default.reason}. It knows synthetic shapes, not photos: try a 'shapes' sample.")
    return ch


# --- explore page controls -------------------------------------------------------

def _n_layers(spec_name: str, cap) -> int:
    """Layers a method's layer counts over: the decoder's for cross-attention, else the image encoder's."""
    if spec_name == "cross_attention" and cap.cross_attentions:
        return len(cap.cross_attentions)
    return cap.n_layers


def _param_widget(spec: MethodSpec, p: Param, key: str, ctx) -> Any:
    cap = ctx.capture
    label = pretty(p.name)
    if p.name in ("layer", "start_layer"):
        n = _n_layers(spec.name, cap)
        return st.number_input(label, min_value=-n, max_value=n - 1, step=1, key=key, help=p.help)
    if p.name == "head":
        return st.selectbox(label, _head_options(ctx), key=key, help=p.help)
    if p.name == "query":
        return st.selectbox(label, query_options(cap), key=key, format_func=_query_format,
                            help=p.help + " Type to search, e.g. 3,4.")
    if p.choices is not None:
        return st.selectbox(label, list(p.choices), key=key, help=p.help)
    if isinstance(p.default, bool):
        return st.checkbox(label, key=key, help=p.help)
    if isinstance(p.default, int):
        return st.number_input(label, min_value=None if p.min is None else int(p.min),
                               max_value=None if p.max is None else int(p.max), step=1, key=key, help=p.help)
    if isinstance(p.default, float):
        return st.number_input(label, min_value=p.min, max_value=p.max, step=0.05, key=key, help=p.help,
                               format="%.3g")
    return st.text_input(label, key=key, help=p.help)


def _head_options(ctx) -> list[str]:
    return ["mean", "max", "min", *[str(h) for h in range(ctx.capture.n_heads)]]


def _query_format(q: str) -> str:
    return "output (what the prediction reads)" if q == "output" else q


def widget_value(p: Param, value: Any, ctx, spec_name: str = "") -> Any:
    """``value`` as the widget holds it, or None when the widget cannot show it (e.g. after a model change)."""
    cap = ctx.capture
    if p.name in ("layer", "start_layer"):
        n = _n_layers(spec_name, cap)
        return value if isinstance(value, int) and -n <= value < n else None
    if p.name == "head":
        return str(value) if str(value) in _head_options(ctx) else None
    if p.name == "query":
        return value if value in query_options(cap) else None
    if p.choices is not None:
        return value if value in p.choices else None
    return value


def params_ui(spec: MethodSpec, ctx) -> dict[str, Any]:
    """One control per registry parameter; values persist per method while other methods are shown."""
    store = st.session_state.setdefault("_params", {}).setdefault(spec.name, {})
    family_defaults = getattr(ctx.adapter, "method_defaults", lambda m: {})(spec.name)
    out = {}
    for p in spec.params:
        key = f"p:{spec.name}:{p.name}"
        if key not in st.session_state or widget_value(p, st.session_state[key], ctx, spec.name) is None:
            for candidate in (store.get(p.name), family_defaults.get(p.name), p.default):
                value = None if candidate is None else widget_value(p, candidate, ctx, spec.name)
                if value is not None:
                    break
            else:   # e.g. the "output" query on a model without an output token: its first option
                value = query_options(ctx.capture)[0] if p.name == "query" else p.default
            st.session_state[key] = value
        else:
            # Re-bind the value: the same key on another page is another widget, which would start
            # from its default instead of the value chosen there.
            st.session_state[key] = st.session_state[key]
        out[p.name] = _param_widget(spec, p, key, ctx)
        store[p.name] = out[p.name]
    return out


def default_method(family: str, names: list[str]) -> str:
    m = DEFAULT_METHOD.get(family, "relevance")
    return m if m in names else ("relevance" if "relevance" in names else names[0])


def method_ui(specs: dict[str, MethodSpec], family: str = "") -> tuple[str, list[str]]:
    """The method, and up to three more to compare side by side."""
    names = list(specs)
    if st.session_state.get("method") not in names:
        st.session_state["method"] = default_method(family, names)
    method = st.selectbox("Method", names, key="method", format_func=lambda n: method_label(specs[n]),
                          help="Attention methods reuse the one model run; gradient methods add a backward "
                               "pass; slow perturbation methods run the model many times.")
    others = [n for n in names if n != method]
    st.session_state["compare"] = [n for n in st.session_state.get("compare", []) if n in others]
    compare = st.multiselect("Compare side by side with", others, key="compare", max_selections=3,
                             format_func=lambda n: method_label(specs[n]))
    return method, compare


def target_ui(ctx) -> Any:
    """What to explain: a class (any, searchable, top-1 by default), a prompt, or a caption word."""
    cap = ctx.capture
    probs = ctx.adapter.probabilities(cap).detach().float().cpu().numpy()
    kind = cap.targets[0].kind
    if kind in ("class", "prompt"):
        order = sorted(range(len(cap.targets)), key=lambda i: -float(cap.scores[i]))
    else:
        order = list(range(len(cap.targets)))
    if st.session_state.get("target") not in order:
        st.session_state["target"] = ctx.adapter.resolve_target(cap, None).index

    def fmt(i: int) -> str:
        t = cap.targets[i]
        p = f" · {probs[i]:.1%}" if i < len(probs) and kind != "embedding" else ""
        return f"{i}: {t.label}{p}" if kind == "token" else f"{t.label} (#{t.index}){p}"
    label = {"class": "Target class", "prompt": "Target prompt", "token": "Caption word"}.get(kind, "Target")
    return st.selectbox(label, order, key="target", format_func=fmt,
                        help="Class-specific methods explain this target's score. Type to search.")
