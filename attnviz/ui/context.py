"""The per-run context every page starts from: the decoded image, the shared model, one cached capture."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import streamlit as st

from ..errors import ModelUnavailable, UsageError
from ..images import ImageRejected
from . import state, urlstate
from .compute import CaptureEntry

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

    @property
    def capture(self):
        return self.entry.capture

    @property
    def digest(self) -> str:
        """Keys every cached map: the image digest, plus the prompts or caption when there are any."""
        if not self.texts:
            return self.img.digest
        return self.img.digest + ":" + hashlib.sha256("\x1f".join(self.texts).encode()).hexdigest()[:16]

    @property
    def box(self):
        """The model's crop in display-image pixels (None: the whole image)."""
        b = self.capture.box
        if b is None:
            return None
        return tuple(v * self.img.scale for v in b)


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
        st.info("Upload an image in the sidebar, or pick one of the samples.")
        return None
    timings: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        img = state.decode(c.image_bytes)
        timings["decode"] = time.perf_counter() - t0
    except ImageRejected as e:
        st.error(str(e))
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
        st.error(str(e))
        return None
    eng = state.engine()
    cached = eng.has_capture(adapter, img.digest, texts)
    t0 = time.perf_counter()
    with st.spinner("Running the model on your image…"):
        entry = eng.capture(adapter, img.digest, img.image, texts)
    timings["capture"] = 0.0 if cached else time.perf_counter() - t0
    cap = entry.capture
    prefix = ", ".join(cap.layout.prefix_names) or "no prefix tokens"
    st.sidebar.caption(f"**{adapter.name}** on **{state.device_label(adapter)}** · {cap.n_layers} layers × "
                       f"{cap.n_heads} heads · {cap.layout.rows}×{cap.layout.cols} patches + {prefix}")
    return Context(adapter, c.model_option, c.image_name or "image", img, texts, entry, c.display, timings)


def query_options(capture) -> list[str]:
    """Query tokens a user can pick: output (when the model has one), the prefix tokens, then every patch."""
    lay = capture.layout
    head = (["output"] if capture.readout is not None else []) + list(lay.prefix_names)
    return head + [f"{r},{c}" for r in range(lay.rows) for c in range(lay.cols)]


def query_label(query: str) -> str:
    q = str(query)
    if q == "output":
        return "the output token(s)"
    if "," in q:
        return f"patch ({q})"
    return q
