"""The per-run context every page starts from: the decoded image, the shared model, one cached capture."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import streamlit as st
import torch

from ..errors import ModelUnavailable, UsageError
from ..images import ImageRejected
from ..methods.hierarchy import is_hierarchical, stage_info
from . import input_size, panels, state, urlstate
from .compute import CaptureEntry
from .text import markdown_literal

DEFAULT_PROMPTS = "a photo of a cat\na photo of a dog\na photo of a car\na drawing of shapes"
MAX_URL_PROMPTS_CHARS = 2000       # a link carries the prompts; longer ones stay out of the address bar


@dataclass
class Context:
    """Everything a page needs about the current image and model."""

    adapter: Any
    model_option: str
    image_name: str
    img: state.DecodedImage
    texts: Optional[tuple[str, ...]]
    entry: CaptureEntry
    display: state.Display
    timings: dict[str, float] = field(default_factory=dict)
    sample: Optional[str] = None       # the sample's name; None for an upload (a link cannot carry one)
    size: Optional[tuple[int, int]] = None   # the model input chosen (height, width); None: the processor's

    @property
    def capture(self):
        return self.entry.capture

    @property
    def digest(self) -> str:
        """Keys every cached map: the image digest, plus the prompts or caption when there are any."""
        sized = self.img.digest + (f"@{self.size[0]}x{self.size[1]}" if self.size else "")
        if not self.texts:
            return sized
        return sized + ":" + hashlib.sha256("\x1f".join(self.texts).encode()).hexdigest()[:16]

    @property
    def box(self):
        """The model's crop in display-image pixels (None: the whole image)."""
        b = self.capture.box
        if b is None:
            return None
        return tuple(v * self.img.scale for v in b)

    def map_box(self, shape, over: str = "patches"):
        """Where a map of ``shape`` lies on the display image: a CNN's grid where its cells truly lie (the last
        cell of an input that is not a multiple of the stride overhangs it: ``Capture.map_box``), else the crop."""
        b = self.capture.map_box(tuple(shape), self.img.image.size, over)
        return None if b is None else tuple(v * self.img.scale for v in b)


def default_prompts(adapter) -> str:
    """The model's example prompts (the demo models name theirs in their config), else generic ones."""
    demo = getattr(getattr(adapter, "config", None), "attnviz_demo", None)
    examples = demo.get("example_prompts") if isinstance(demo, dict) else None
    if examples and all(isinstance(e, str) and e.strip() for e in examples):
        return "\n".join(examples)
    return DEFAULT_PROMPTS


def texts_ui(adapter, slot) -> Optional[tuple[str, ...]]:
    """Prompts for image–text models, an optional caption to score for captioners; None otherwise."""
    box = slot if slot is not None else st.sidebar
    if adapter.family == "clip":
        default = default_prompts(adapter)
        # A new model brings its own example prompts, unless the user has typed some.
        current = st.session_state.get("prompts")
        if current in (None, st.session_state.get("_prompts_default")):
            current = default
        url = urlstate.consume("prompts_text")                  # a shared link's prompts, once
        if url and url.get("prompts"):
            if len(url["prompts"]) <= MAX_URL_PROMPTS_CHARS:
                current = url["prompts"]
            else:
                urlstate.warn(f"The link's prompts are longer than {MAX_URL_PROMPTS_CHARS} characters; "
                              "using the example prompts.")
        # Set every run: the box is a different widget on each page, which would otherwise start empty.
        st.session_state["prompts"] = current
        st.session_state["_prompts_default"] = default
        raw = box.text_area("Prompts, one per line", key="prompts", height=120,
                            help="The model scores the image against each prompt; each prompt is a target.")
        prompts = tuple(line.strip() for line in raw.splitlines() if line.strip())
        if not prompts:
            raise UsageError("Type at least one prompt, one per line.")
        return prompts
    if adapter.family == "vlm":               # a question (and an answer to check): ui/ask_inputs.py
        from .ask_inputs import question_ui
        return question_ui(adapter, box)
    if adapter.family == "captioning":
        caption = box.text_input("Caption to score (optional)", key="caption",
                                 help="Empty: the model writes its own caption. Each word is a target.")
        return (caption.strip(),) if caption.strip() else None
    return None


def load_context(texts_slot=None) -> Optional[Context]:
    """Decode the image, load the model and run it once; every failure is one st.error sentence.

    ``texts_slot``: where the prompts / caption box goes (default: the sidebar's slot).
    """
    c = state.choices()
    if c.image_bytes is None:
        if st.session_state.get("_link_image"):
            st.info("This link was made on an uploaded image, which a link cannot carry: upload the same file "
                    "in the sidebar to see its view (the link's method and settings are already set).")
        else:
            st.info("Upload an image in the sidebar, or pick one of the samples.")
        return None
    timings: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        img = state.decode(c.image_bytes)
        timings["decode"] = time.perf_counter() - t0
    except ImageRejected as e:
        st.error(rejected_sentence(e, c))
        return None
    missing = state.missing_demo_sentence(c.model_option)
    if missing:
        st.error(missing)
        return None
    try:
        spec = state.model_spec(c.model_option, c.custom_id)
        t0 = time.perf_counter()
        with st.spinner("Loading the model (once per server)…"):
            adapter = state.get_model(spec)
        timings["model_load"] = time.perf_counter() - t0
        texts = texts_ui(adapter, texts_slot if texts_slot is not None else c.texts_slot)
    except (ModelUnavailable, UsageError) as e:
        last = st.session_state.get(state.LAST_GOOD)
        if (isinstance(e, ModelUnavailable) and last is not None and last != (c.model_option, c.custom_id)
                and c.model_option != state.CUSTOM_MODEL):   # a hub id being typed keeps its box
            # Keep the page on the last model that worked, with the picker back on it (issue 20).
            st.session_state[state.FAILED] = str(e)
            st.session_state[state.RESTORE] = last
            st.rerun()
        st.error(str(e))
        return None
    st.session_state[state.LAST_GOOD] = (c.model_option, c.custom_id)
    failed = st.session_state.pop(state.FAILED, None)
    if failed:
        st.error(f"{failed} The page stays on {adapter.name}, the last model that loaded.")
    eng = state.engine()
    size = None
    if c.input_side:              # the whole image at the chosen long side, in whole patches (issue 20)
        patch = getattr(adapter, "patch_size", None)
        patch = tuple(patch) if isinstance(patch, (tuple, list)) else (int(patch or 1),) * 2
        size = input_size.size_for(img.image.size, c.input_side, patch)
    cached = eng.has_capture(adapter, img.digest, texts, size)
    t0 = time.perf_counter()
    try:
        with st.spinner("Running the model on your image…"):
            # While other sessions' work holds the model, the page says how many requests are ahead of it.
            entry = eng.capture(adapter, img.digest, img.image, texts, turn=lambda: panels.model_wait(adapter),
                                size=size)
    except UsageError as e:       # a size this model cannot take: say so, and use its own
        st.error(f"{e} The page uses the model's own input size.")
        size, cached = None, eng.has_capture(adapter, img.digest, texts)
        entry = eng.capture(adapter, img.digest, img.image, texts, turn=lambda: panels.model_wait(adapter))
    timings["capture"] = 0.0 if cached else time.perf_counter() - t0
    cap = entry.capture
    input_size.remember(adapter, cap, img.image.size, c.input_side if size else 0, entry.seconds)
    prefix = ", ".join(cap.layout.prefix_names) or "no prefix tokens"
    heads = f"{cap.n_layers} layers × {cap.n_heads} heads"
    if not cap.attentions and not is_hierarchical(cap):     # a CNN: stages, no heads
        heads = f"{cap.n_layers} stages, no attention heads"
    if is_hierarchical(cap):         # Swin: heads grow by stage (n_heads is 0)
        heads = f"{cap.n_layers} blocks, heads by stage " + "/".join(str(i["heads"]) for i in stage_info(cap))
    # the model's passes in bfloat16 (ATTNVIZ_PRECISION): said where the model is named
    half = " in **bfloat16**" if getattr(adapter, "precision", torch.float32) != torch.float32 else ""
    st.sidebar.caption(f"**{adapter.name}** on **{state.device_label(adapter)}**{half} · {heads} · "
                       f"{cap.layout.rows}×{cap.layout.cols} patches + {prefix}")
    ctx = Context(adapter, c.model_option, c.image_name or "image", img, texts, entry, c.display, timings,
                  sample=c.image_name if c.is_sample else None, size=size)
    page_note("caption", on_what(ctx))
    return ctx


def page_note(write: str, *args: Any, **kwargs: Any) -> None:
    """A line about the page (which model, which image, a note about the model): above the picture, or in the
    sidebar in presentation mode (the audience looks at the picture). ``write`` names the element, e.g. "info"."""
    where = st.sidebar if urlstate.presenting() else st
    getattr(where, write)(*args, **kwargs)


def rejected_sentence(exc: ImageRejected, c) -> str:
    """The page's one sentence for a rejected image: the file, what is wrong, and that none is shown."""
    from ..images import MAX_BYTES
    size = len(c.image_bytes or b"")
    if size > MAX_BYTES:
        return (f"{c.image_name or 'The file'} is {size / 2 ** 20:.1f} MB, over the {MAX_BYTES // 2 ** 20} MB "
                "limit: shrink it or save it as JPEG and upload it again (no image is shown until then).")
    return str(exc)


FAMILY_WORDS = {"classifier": "image classifier", "clip": "image–text model", "captioning": "captioner",
                "cnn": "convolutional classifier", "swin": "Swin transformer"}


def on_what(ctx: Context) -> str:
    """One line: which model this page is on, and which image (a link carries a sample, not an upload)."""
    family = FAMILY_WORDS.get(ctx.adapter.family, ctx.adapter.family)
    if getattr(ctx.adapter, "headless", False):
        family = "backbone without classes"
    w, h = ctx.img.image.size
    if ctx.sample is not None:
        image = f"the sample **{markdown_literal(ctx.sample)}**"
    else:
        image = (f"your upload **{markdown_literal(ctx.image_name)}** (a link cannot carry an uploaded image: "
                 "whoever opens it uploads the same file)")
    return f"Model **{markdown_literal(ctx.adapter.name)}** ({family}) · {image}, {w}×{h} px"


def readout_token(capture) -> Optional[str]:
    """The prefix token the output reads when it reads exactly one (CLS for ViT), else None.

    Then "output" and that token are one query, offered once under the token's name."""
    r = capture.readout
    if r is None:
        return None
    w = np.asarray(r.detach().float().cpu()) if hasattr(r, "detach") else np.asarray(r, dtype=float)   # [T]
    nonzero = np.flatnonzero(np.abs(w) > 1e-6)
    if len(nonzero) == 1 and nonzero[0] < capture.layout.n_prefix and abs(w[nonzero[0]] - 1.0) < 1e-6:
        return capture.layout.prefix_names[int(nonzero[0])]
    return None


def token_queries(capture) -> list[str]:
    """Query tokens besides the patches: "output" (when the output reads more than one token) and the
    prefix tokens (CLS, distillation, registers)."""
    same = readout_token(capture)
    return (["output"] if capture.readout is not None and same is None else []) + list(capture.layout.prefix_names)


def query_options(capture) -> list[str]:
    """Query tokens a user can pick: the token queries, then every patch as "row,col"."""
    lay = capture.layout
    return token_queries(capture) + [f"{r},{c}" for r in range(lay.rows) for c in range(lay.cols)]


def query_value(capture, query: str) -> Optional[str]:
    """``query`` as an option of :func:`query_options` ("output" becomes the token it reads), or None."""
    q = str(query)
    if q == "output":
        q = readout_token(capture) or q
    return q if q in query_options(capture) else None


SKIP_WORDS = {"a", "an", "the", "and", "of", "on", "in", "with", "at", ",", "."}


def first_content_word(capture) -> int:
    """The first caption word that carries content (not "a", "and", …), else the first."""
    return next((t.index for t in capture.targets
                 if t.label.strip().lower() not in SKIP_WORDS and any(ch.isalnum() for ch in t.label)), 0)


def default_target(adapter, capture) -> int:
    """What a page explains first: the top class, the best-matching prompt, the first content word."""
    kind = capture.targets[0].kind
    if kind in ("class", "prompt"):
        scores = np.asarray(capture.scores.detach().float().cpu())
        return int(capture.targets[int(np.argmax(scores))].index)
    if kind == "token":
        return first_content_word(capture)
    return adapter.resolve_target(capture, None).index


def query_label(query: str, capture=None) -> str:
    q = str(query)
    if q == "output":
        return "the output token(s)"
    if capture is not None and q == readout_token(capture):
        return f"{q} (the token the prediction reads)"
    if "," in q:
        return f"patch ({q})"
    return q
