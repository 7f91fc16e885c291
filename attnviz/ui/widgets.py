"""``*_ui()`` functions: each draws a few controls and returns what they chose. No compute here."""
from __future__ import annotations

import os
from typing import Any, Callable, Optional, TypeVar

import streamlit as st

from .. import render
from ..images import MAX_BYTES
from ..methods.common import block_heads
from ..methods.hierarchy import is_hierarchical
from ..methods.registry import MethodSpec, Param
from . import input_size, notes, panels, state, urlstate
from .context import default_target, page_note, query_options, query_value, readout_token
from .state import Choices, Display
from .text import markdown_literal  # noqa: F401  (pages take it from here with the other widgets)

UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "gif", "bmp"]
CMAPS = ["auto", "inferno", "viridis", "magma", "plasma", "turbo", "jet", "RdBu_r", "coolwarm", "gray"]
NORMS = ["auto", *render.NORMALIZATIONS]
T = TypeVar("T")
DEFAULT_METHOD = {"captioning": "caption_relevance",    # per family; otherwise relevance
                  "backbone": "attention"}              # no classes: the last layer's CLS attention (issue 20)


def method_family(adapter) -> str:
    """The key of DEFAULT_METHOD for a model: its family, or "backbone" for one without classes."""
    return "backbone" if getattr(adapter, "headless", False) else adapter.family


def pretty(name: str) -> str:
    return name.replace("_", " ")


def method_label(spec: MethodSpec) -> str:
    tags = [] if spec.class_specific else ["class-agnostic"]
    if spec.slow:
        tags.append("slow")
    return pretty(spec.name) + (f"  ({', '.join(tags)})" if tags else "")


# The order a lesson meets the methods in: raw attention, then rollout, then class-specific
# attention methods, then gradients, then the slow perturbation methods.
LESSON_ORDER = ("attention", "rollout", "relevance", "grad_rollout", "attn_grad", "grad_cam", "cross_attention",
                "caption_relevance", "saliency", "smoothgrad", "input_x_gradient", "integrated_gradients",
                "gradient_shap", "occlusion", "feature_ablation", "lime", "kernel_shap")


def lesson_order(names) -> list[str]:
    """Method names in the order a lesson meets them (methods not listed keep their order, at the end)."""
    rank = {n: i for i, n in enumerate(LESSON_ORDER)}
    return sorted(names, key=lambda n: rank.get(n, len(rank)))


# A path through the app for a lesson: (page file, title, what to do there).
LESSON_PATH = (("heads", "Heads", "one head at a time"),
               ("explore", "Explore", "attention, rollout, then relevance"),
               ("explore", "Is the map faithful?", "under Explore's map"),
               ("caption", "Caption", "a word at a time"))


def lesson_path_md(page: str) -> str:
    """One line: the suggested order of a lesson, the current page in bold."""
    steps = []
    for i, (where, title, what) in enumerate(LESSON_PATH, 1):
        text = f"{i} · {title} ({what})"
        steps.append(f"**{text}**" if where == page and title != "Is the map faithful?" else text)
    return "A lesson path: " + " → ".join(steps)


def page_header(title: str, page: str) -> None:
    """The page's title; outside presentation mode also the lesson path and the page's notes. In presentation
    mode the picture comes first: the path and the notes (and other lines about the page) go to the sidebar."""
    if urlstate.presenting():
        present_style()
        st.title(title)
        with st.sidebar.expander("About this page", expanded=False):
            st.markdown(notes.PAGES[page])
        return
    st.title(title)
    if any(where == page for where, _, _ in LESSON_PATH):
        st.caption(lesson_path_md(page))
    with st.expander("About this page", expanded=False):
        st.markdown(notes.PAGES[page])


PRESENT_TEXT_PX = 18      # the smallest text on a projected page (captions, legends, figure labels)
PRESENT_CSS = """<style>
html { font-size: 20px; }
[data-testid="stMainBlockContainer"] { max-width: 100%; padding: 2.6rem 2rem 2rem 2rem; }
[data-testid="stMainBlockContainer"] h1 { font-size: 1.6rem; padding: 0 0 0.4rem 0; }
[data-testid="stMainBlockContainer"] [data-testid="stCaptionContainer"],
[data-testid="stMainBlockContainer"] [data-testid="stCaptionContainer"] *,
[data-testid="stMainBlockContainer"] [data-testid="stImageCaption"],
[data-testid="stMainBlockContainer"] .attnviz-legend { font-size: TEXT_PXpx !important; }
</style>""".replace("TEXT_PX", str(PRESENT_TEXT_PX))


def present_style() -> None:
    """Presentation mode: larger text everywhere (every size on the page is relative to the root font; captions
    and legends at least :data:`PRESENT_TEXT_PX`), the title smaller and higher, so the picture starts high."""
    st.html(PRESENT_CSS)



# --- long work on a click -------------------------------------------------------

PROGRESS_EVERY_S = 0.25   # how often the page looks at a running job's progress


def run_on_click(button: str, key: str, job_key: Any, run: Callable[[Callable[[int, int], None]], T], *,
                 label: str, note: str = "", help: Optional[str] = None, primary: bool = False) -> Optional[T]:
    """None (with ``note`` under the button) until the button is clicked; then ``run(progress)`` as a
    background job under ``job_key`` (the key of its cached result), watched with a progress bar.

    A rerun (the user changed the opacity meanwhile) stops only the watching: the job goes on, and
    the next run finds it by its key, shows its progress again and then its result.
    """
    jobs = state.engine().jobs
    job = jobs.get(job_key)
    if job is None:
        slot = st.empty()
        if not slot.button(button, key=key, help=help, type="primary" if primary else "secondary"):
            if note:
                st.caption(note)
            return None
        slot.empty()
        job = jobs.start(job_key, run)
    bar = st.progress(0.0, text=f"{label}: starting…")
    while not job.wait(PROGRESS_EVERY_S):
        fraction, text = job.status(label)
        bar.progress(fraction, text=text)
    bar.empty()
    try:
        return job.result()
    finally:
        jobs.forget(job)      # a failure is shown once; the next click starts afresh


def map_or_run(adapter, entry, digest: str, spec: MethodSpec, target: Any, params: dict[str, Any], *,
               button: str, key: str, note: str, help: Optional[str] = None) -> Optional[Any]:
    """The map of ``spec``: cached; else, for a slow method, :func:`run_on_click` with ``button`` under
    ``key`` (None until clicked); else computed now. A class-specific map runs a backward through the
    model's graph: it takes its turn with the model, ahead of other sessions' new images (this
    session's forward pass is done and held in memory)."""
    eng = state.engine()
    cached = eng.peek(adapter, entry, digest, spec.name, target, params)
    if cached is not None:
        return cached
    if spec.slow:
        return run_on_click(button, key, eng.explanation_key(adapter, entry, digest, spec.name, target, params),
                            lambda update: eng.explain(adapter, entry, digest, spec.name, target, params,
                                                       progress=update),
                            label=pretty(spec.name), primary=True, help=help, note=note)
    turn = (lambda: panels.model_wait(adapter, priority=True)) if spec.class_specific else None
    return eng.explain(adapter, entry, digest, spec.name, target, params, turn=turn)


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
             "c_word", "h_layer", "h_head", "h_qkind", "h_row", "h_col", "h_shared", "h_over",
             "view_tab", "c_view_tab", "pr_view_tab", "h_hover", "faith_panel",
             "l_layer", "l_head", "l_row", "l_col", "l_step", "l_guided", "l_share", "l_over",
             "cmp_a", "cmp_b", "cmp_method", "cmp_label", "h_stage", "gate_block")


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
    if "sample" in url:
        names = list(state.sample_images())
        if url["sample"] in names:
            st.session_state["sample"] = url["sample"]
            _on_sample()
        else:
            urlstate.warn(f"The link's sample '{url['sample']}' is not one of this app's samples; "
                          "showing the first sample.")
    elif "image" in url:
        # The link was made on an upload, which it cannot carry: show no sample in its place (the page
        # says to upload the file), and remember which image the link's target belongs to.
        st.session_state["sample"] = None
        st.session_state["_link_image"] = str(url["image"]).lower()
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
    if "present" in url:           # presentation mode travels in the link (issue 20)
        st.session_state["present"] = str(url["present"]).lower() in urlstate.TRUE_WORDS
    if "size" in url:
        try:
            side = int(url["size"])
            if side not in input_size.SIDES:
                raise ValueError
            st.session_state[input_size.KEY] = side
        except ValueError:
            urlstate.warn(f"The link's input size '{url['size']}' is not one of "
                          f"{', '.join(map(str, input_size.SIDES[1:]))}; using the model's own.")
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


# What the uploader lets through to the app. Larger than the 10 MB image limit on purpose: a file
# over the limit then reaches attnviz.images, which rejects it with one sentence on the page,
# instead of the uploader's own silent rejection (a red mark whose message is a hover tooltip).
UPLOAD_TRANSPORT_MB = 50


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
        f"Upload an image ({MAX_BYTES // (1024 * 1024)} MB at most)", type=UPLOAD_TYPES, key=f"upload{st.session_state.get('_upload_gen', 0)}",
        on_change=_on_upload, max_upload_size=UPLOAD_TRANSPORT_MB,
        help=f"PNG, JPEG, WebP, GIF or BMP, up to {MAX_BYTES // (1024 * 1024)} MB. It stays in memory and is "
             "never written to disk.")
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
    back = st.session_state.pop(state.RESTORE, None)
    if back is not None:      # the model picked last could not be loaded: back to the last one that could
        st.session_state["model"], st.session_state["custom_id"] = back
    if st.session_state.get("model") not in values:
        st.session_state["model"] = default.option if default.option in values else values[0]
    option = st.selectbox("Model", values, key="model", format_func=lambda v: labels.get(v, v),
                          help="✓: loads without a network; ↓: needs a download first (`make models`). The model "
                               "is loaded once per server and shared by everyone using it.")
    custom = ""
    if option == state.CUSTOM_MODEL:
        custom = st.text_input("Hub id", key="custom_id", placeholder="owner/model-name",
                               help="A ViT-family image classifier or backbone on the Hugging Face hub. "
                                    "Only safetensors weights are loaded; no remote code.")
    entry = next((e for e in state.catalog.load_catalog().entries if e.name == option), None)
    if entry is not None and entry.notes:
        st.caption(entry.notes)
    return option, custom


DISPLAY_DEFAULTS = {"alpha": 0.5, "cmap": "auto", "norm": "auto", "resample": "bilinear", "present": False}


def display_ui() -> Display:
    """Opacity, colormap, normalisation, resampling: these never run the model."""
    for k, v in DISPLAY_DEFAULTS.items():   # defaults via session state only (a link may have set them)
        st.session_state.setdefault(k, v)
    # A change reruns only the page's map panels (panels.map_panel), or the whole page when it has none.
    panels.new_page_run()
    redraw = panels.display_changed
    alpha = st.slider("Opacity", 0.0, 1.0, step=0.05, key="alpha", on_change=redraw)
    cmap = st.selectbox("Colormap", CMAPS, key="cmap", on_change=redraw,
                        help="auto: inferno for maps ≥ 0, red-blue (RdBu_r) for signed maps.")
    norm = st.selectbox("Normalisation", NORMS, key="norm", on_change=redraw,
                        help="auto: robust for maps ≥ 0 (lowest value to the 99th percentile; the few values "
                             "above it are shown at the top colour, so one extreme patch cannot take the whole "
                             "scale), signed-robust for signed maps (0 = white, ±the 99th percentile of |value| at "
                             "the ends). minmax: lowest to highest value; percentile clips the top and bottom 1 %; "
                             "signed: ±the largest |value|.")
    resample = st.radio("Upsampling", list(render.RESAMPLES), key="resample", horizontal=True, on_change=redraw,
                        help="nearest shows each patch as a block; bilinear smooths between patches.")
    present = st.toggle("Presentation mode", key="present",
                        help="For a projector: large maps and text, the controls folded into one box. Collapse "
                             "the sidebar (the « at its top) for the most room.")
    return Display(alpha=alpha, cmap=cmap, norm=norm, resample=resample, present=present)


IMAGE_KEY_CHARS = 16       # an upload is named in a link by the start of its SHA-256


def shared_url_values(ctx) -> dict[str, Any]:
    """The link parameters every page writes: the image (a sample's name; an upload's digest, so the link
    knows the image when it comes back), the model (not an ATTNVIZ_MODEL folder) and non-default display."""
    out: dict[str, Any] = {}
    if ctx.sample is not None:
        out["sample"] = ctx.sample
    else:
        out["image"] = ctx.img.digest[:IMAGE_KEY_CHARS]
    if ctx.model_option == state.CUSTOM_MODEL:
        out["model"] = st.session_state.get("custom_id")
    elif ctx.model_option != state.ENV_MODEL:
        out["model"] = ctx.model_option
    for k, default in DISPLAY_DEFAULTS.items():
        v = getattr(ctx.display, k)
        out[k] = None if v == default else v
    out["size"] = st.session_state.get(input_size.KEY) or None     # the model input's long side, when chosen
    return out


def link_target(ctx, raw: Optional[str], scope: str) -> Optional[str]:
    """A link's value that belongs to its image (Explore's target, Caption's word), or None while the
    image on screen is not the link's.

    ``raw`` is the link's value when the page first opened. A link made on an upload cannot carry the
    image, so its value waits (per page, ``scope``) until an upload with the link's digest arrives.
    """
    ss = st.session_state
    want = ss.get("_link_image")
    if not want:
        return raw
    key = f"_link_pending:{scope}"
    if raw is not None:
        ss[key] = raw
    if key not in ss:
        return None
    if ctx.sample is None and ctx.img.digest.startswith(want):
        return ss.pop(key)
    st.caption("This is not the image the link was made on, so the link's choice for it waits: upload that "
               "file to see it.")
    return None


def _image_size(data: Optional[bytes]) -> Optional[tuple[int, int]]:
    """The chosen image's (width, height), or None (no image, or one the page will reject)."""
    if data is None:
        return None
    try:
        return state.decode(data).image.size
    except Exception:   # noqa: BLE001  (the page says what is wrong with the file)
        return None


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
        side = input_size.input_size_ui(_image_size(data))
        slot = st.container()          # prompts (image–text models) or a caption (captioners) go here
        st.markdown("#### 3 · Display")
        display = display_ui()
        if os.environ.get("ATTNVIZ_SHOW_CLEAR", "0") == "1":   # off by default: it evicts models for everyone
            if st.button("Clear caches", help="Forget loaded models and computed maps (frees memory)."):
                state.clear_all()
    ch = Choices(name, data, option, custom, display, slot,
                 is_sample=data is not None and st.session_state.get("sample") == name and name is not None,
                 input_side=side)
    st.session_state["_choices"] = ch
    default = state.default_model()
    if option == default.option and default.fallback and not default.missing:
        page_note("info", f"Using {default.reason}. It knows synthetic shapes, not photos: try a 'scene' sample.")
    return ch


# --- explore page controls -------------------------------------------------------

LAYER_PARAMS = ("layer", "start_layer")


def _n_layers(spec_name: str, cap) -> int:
    """Layers a method's layer counts over: the decoder's for cross-attention, else the image encoder's."""
    if spec_name == "cross_attention" and cap.cross_attentions:
        return len(cap.cross_attentions)
    return cap.n_layers


def _param_widget(spec: MethodSpec, p: Param, key: str, ctx) -> Any:
    cap = ctx.capture
    label = pretty(p.name)
    if p.name in LAYER_PARAMS:
        # One numbering on every page: 0 is the first layer (the Heads slider's); a method's negative
        # default ("the last layer") is shown as its positive number.
        n = _n_layers(spec.name, cap)
        return st.number_input(f"{label} (0–{n - 1})", min_value=0, max_value=n - 1, step=1, key=key,
                               help=f"{p.help} Layers count from 0, the first layer, to {n - 1}, the last.")
    if p.name == "head":
        return st.selectbox(label, _head_options(ctx), key=key, help=p.help)
    if p.name == "query":
        token = readout_token(cap)          # once, not once per option (a ViT-B/16 has 197)
        return st.selectbox(label, query_options(cap), key=key, format_func=lambda q: _query_format(q, token),
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
    cap = ctx.capture
    n = cap.n_heads
    if is_hierarchical(cap):     # Swin's heads grow by stage (n_heads is 0): offer those every block has
        n = min(block_heads(cap, li) for li in range(cap.n_layers))
    return ["mean", "max", "min", *[str(h) for h in range(n)]]


def _query_format(q: str, readout: Optional[str] = None) -> str:
    """A query option as shown; ``readout`` is the one token the prediction reads, if there is one."""
    if q == "output":
        return "output (what the prediction reads)"
    if readout is not None and q == readout:
        return f"{q} (what the prediction reads)"
    return q


def widget_value(p: Param, value: Any, ctx, spec_name: str = "") -> Any:
    """``value`` as the widget holds it, or None when the widget cannot show it (e.g. after a model change)."""
    cap = ctx.capture
    if p.name in LAYER_PARAMS:
        n = _n_layers(spec_name, cap)
        return value % n if isinstance(value, int) and not isinstance(value, bool) and -n <= value < n else None
    if p.name == "head":
        return str(value) if str(value) in _head_options(ctx) else None
    if p.name == "query":
        return query_value(cap, value)
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


def is_default(p: Param, value: Any, ctx, spec_name: str, family_defaults: dict) -> bool:
    """Whether ``value`` is what the widget starts on (a link need not carry it)."""
    start = family_defaults.get(p.name, p.default)
    return str(widget_value(p, start, ctx, spec_name)) == str(value)


def default_method(family: str, names: list[str]) -> str:
    m = DEFAULT_METHOD.get(family, "relevance")
    return m if m in names else ("relevance" if "relevance" in names else names[0])


MAX_COMPARE = 3


def _limit_compare() -> None:
    """At most three maps beside the main one: a fourth click is undone, with a sentence saying why."""
    ss = st.session_state
    chosen = list(ss.get("compare") or [])
    if len(chosen) > MAX_COMPARE:
        before = ss.get("_compare_before", [])
        added = [n for n in chosen if n not in before]
        ss["compare"] = [n for n in chosen if n in before][:MAX_COMPARE]
        ss["_compare_note"] = (f"At most {MAX_COMPARE} maps beside the main one: remove one before adding "
                               f"{', '.join(pretty(n) for n in added)}.")


def method_ui(specs: dict[str, MethodSpec], family: str = "") -> tuple[str, list[str]]:
    """The method, and up to three more to compare side by side (every choice visible, none cut off)."""
    names = sorted(lesson_order(specs), key=lambda n: specs[n].slow)      # slow ones last, in lesson order
    if st.session_state.get("method") not in names:
        st.session_state["method"] = default_method(family, names)
    method = st.selectbox("Method", names, key="method", format_func=lambda n: method_label(specs[n]),
                          help="In lesson order: attention and rollout first, then class-specific attention "
                               "methods, then gradients; slow perturbation methods last (they run the model "
                               "many times).")
    others = [n for n in names if n != method]
    st.session_state["compare"] = [n for n in st.session_state.get("compare") or [] if n in others][:MAX_COMPARE]
    st.session_state["_compare_before"] = list(st.session_state["compare"])
    compare = st.pills(f"Compare side by side with (up to {MAX_COMPARE})", others, key="compare",
                       selection_mode="multi", on_change=_limit_compare, wrap=True,
                       format_func=lambda n: pretty(n) + (" (slow)" if specs[n].slow else ""),
                       help="Each map keeps its own colour scale and legend: methods measure different things "
                            "in different units. Slow ones wait for a Run click.")
    note = st.session_state.pop("_compare_note", None)
    if note:
        st.caption(note)
    return method, list(compare or [])


def target_ui(ctx) -> Any:
    """What to explain: a class (any, searchable, top-1 by default), a prompt (the best match by default),
    or a caption word (the first content word by default)."""
    cap = ctx.capture
    probs = ctx.adapter.probabilities(cap).detach().float().cpu().numpy()
    kind = cap.targets[0].kind
    if kind in ("class", "prompt"):
        order = sorted(range(len(cap.targets)), key=lambda i: -float(cap.scores[i]))
    else:
        order = list(range(len(cap.targets)))
    if st.session_state.get("target") not in order:
        st.session_state["target"] = default_target(ctx.adapter, cap)

    targets = cap.targets      # not the capture: Streamlit keeps format_func with the session (issue 13)

    def fmt(i: int) -> str:
        t = targets[i]
        p = f" · {probs[i]:.1%}" if i < len(probs) and kind != "embedding" else ""
        return f"{i}: {t.label}{p}" if kind == "token" else f"{t.label} (#{t.index}){p}"
    label = {"class": "Target class", "prompt": "Target prompt", "token": "Caption word"}.get(kind, "Target")
    return st.selectbox(label, order, key="target", format_func=fmt,
                        help="Class-specific methods explain this target's score. Type to search.")
