"""Process-wide cached resources (models, the compute engine, samples) and the sidebar's choices.

``st.cache_resource`` holds one copy per process, shared by every session:
the model (its adapter carries the lock its forwards take), and the
``Engine`` whose bounded caches hold captures and maps. Nothing uploaded is
written to disk: image bytes stay in memory, keyed by their SHA-256.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import streamlit as st
import torch
from PIL import Image

from .. import catalog, memory, render
from ..errors import ModelUnavailable
from ..images import MAX_BYTES, image_digest, load_image
from ..loading import load_model  # noqa: F401  (tests patch attnviz.ui.state.load_model)
from ..precision import note as precision_note
from ..queue import TurnLock
from ..serve import attach_server
from ..serve.remote import RemoteModel
from ..tokens.budget import available_memory
from .cache import ResultCache
from .compute import Engine
# the server's settings from the environment (no Streamlit there: `attnviz bench --app` reads them too)
from .settings import SERVE_APP, BACKWARD_SHARE, BATCH_LOG, BATCH_SIZE, BATCH_WINDOW_S, CACHE_TTL, CAPTURE_ENTRIES, CAPTURE_MB, CORES, GRAPH_HOLD, BATCH_AGE_S, MODEL_LANES, ALONE_THREADS, RESULT_ENTRIES, TORCH_THREADS, _env_int  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets"
SAMPLE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"}
DISPLAY_MAX_SIDE = 1024          # overlays are drawn on a copy at most this big (the model sees the original)
ENV_MODEL = "$ATTNVIZ_MODEL"     # the model option that stands for the ATTNVIZ_MODEL folder or id
CUSTOM_MODEL = "$custom"         # the model option "a hub id I type" (ATTNVIZ_ALLOW_CUSTOM_MODELS=1)


def custom_models_allowed() -> bool:
    return os.environ.get("ATTNVIZ_ALLOW_CUSTOM_MODELS", "0").strip().lower() in ("1", "true", "yes", "on")


# --- process-wide resources ------------------------------------------------

@st.cache_resource(show_spinner=False)
def engine() -> Engine:
    """The one compute engine of this process (bounded caches of captures and maps)."""
    capture_bytes = CAPTURE_MB << 20 if CAPTURE_MB else available_memory() // 4      # captures' tensors
    return Engine(capture_entries=CAPTURE_ENTRIES, result_entries=RESULT_ENTRIES, ttl=CACHE_TTL,
                  capture_bytes=capture_bytes)


@st.cache_resource(show_spinner=False)
def _images() -> ResultCache:
    """Decoded images by digest (a few: a big photo is tens of MB once decoded)."""
    return ResultCache(8, CACHE_TTL)


@st.cache_resource(show_spinner=False, max_entries=3)
def _model(spec: str):
    memory.tune()                 # freed tensors' memory reused, given back when the server is idle
    t0 = time.perf_counter()
    adapter = load_model(spec or None)
    # Sessions share this model first come first served, MODEL_LANES forwards at a time where the family
    # allows it (one otherwise), and a waiting page can say how many requests are ahead of it
    # (panels.model_turn).
    lanes = MODEL_LANES if getattr(adapter, "concurrent_forwards", False) else 1
    adapter.lock = TurnLock(lanes)
    # Families that batch: sessions' captures and backwards run together, BATCH_SIZE per forward (issue 23).
    # ATTNVIZ_SERVE: the model work goes to that Ray Serve application instead (serve.remote).
    adapter.remote = RemoteModel(SERVE_APP) if SERVE_APP else None
    attach_server(adapter, max_batch=1 if SERVE_APP else BATCH_SIZE, window=BATCH_WINDOW_S, lanes=lanes,
                  log=BATCH_LOG, hold=GRAPH_HOLD, age=BATCH_AGE_S,
                  alone_threads=ALONE_THREADS, share=BACKWARD_SHARE)
    torch.set_num_threads(TORCH_THREADS)     # process-wide: script threads started from now on use it
    # One line per load in the server's log: a teacher (and `attnviz loadtest`) can see it happened once.
    server = getattr(adapter, "server", None)
    held = f"; up to {server.hold} forward graphs may wait for their backward" if server is not None else ""
    print(f"attnviz: loaded model {getattr(adapter, 'source', spec) or spec} in {time.perf_counter() - t0:.1f} s{held}; "
          f"{precision_note(adapter)}", file=sys.stderr, flush=True)
    return adapter


def get_model(spec: str):
    """The shared adapter for ``spec`` (loaded once per process); raises ModelUnavailable."""
    return _model(spec)


def clear_all() -> None:
    """Forget every cached model, capture and map (tests; the 'clear caches' button)."""
    st.cache_resource.clear()
    st.cache_data.clear()


@dataclass(frozen=True)
class DefaultModel:
    option: str            # the model option selected by default
    reason: str            # one line: why this model
    fallback: bool         # True when the offline demo model stands in for the real default
    missing: str = ""      # a sentence when the default model cannot be loaded at all


@st.cache_data(ttl=600, show_spinner=False)
def default_model() -> DefaultModel:
    """ATTNVIZ_MODEL when set; else the catalog default when cached or reachable; else the demo model."""
    env = os.environ.get("ATTNVIZ_MODEL", "").strip()
    if env:
        return DefaultModel(ENV_MODEL, f"{Path(env).name or env} (set by ATTNVIZ_MODEL)", False)
    res = catalog.default_model()
    cat = catalog.load_catalog()
    fallback = res.entry is not None and res.entry.name == cat.offline_default
    missing = ""
    if fallback and not catalog.is_available_offline(res.entry):
        real = cat.get(cat.default)
        missing = (f"No model is available: {real.hub} is not cached and the hub cannot be reached, and the "
                   f"offline demo model {res.entry.name} has not been built yet (run `make demo`).")
    return DefaultModel(res.name, res.reason, fallback, missing)


@st.cache_data(ttl=60, show_spinner=False)
def model_options() -> list[tuple[str, str]]:
    """(option, label) for the model picker: the env model, the catalog with offline availability, custom."""
    out = []
    env = os.environ.get("ATTNVIZ_MODEL", "").strip()
    if env:
        out.append((ENV_MODEL, f"{Path(env).name or env} · ATTNVIZ_MODEL"))
    for e in catalog.load_catalog().entries:
        try:
            ok = catalog.is_available_offline(e)
        except Exception:   # a broken HF cache must not break the picker
            ok = False
        out.append((e.name, f"{e.name} {'✓' if ok else '↓'}"))     # short: a cut label hides the mark
    if custom_models_allowed():
        out.append((CUSTOM_MODEL, "Another hub model (type its id)…"))
    return out


LAST_GOOD = "_last_good_model"        # session state: (option, custom id) of the last model that loaded
RESTORE = "_restore_model"            # session state: the picker goes back to this before it is drawn
FAILED = "_model_failed"              # session state: why the model picked last could not be used


def model_spec(option: str, custom_id: str = "") -> str:
    """What ``load_model`` is given for a picker option."""
    if option == ENV_MODEL:
        return os.environ.get("ATTNVIZ_MODEL", "").strip()
    if option == CUSTOM_MODEL:
        return validate_custom_id(custom_id)
    return option


def validate_custom_id(hub_id: str) -> str:
    """An 'owner/name' hub id, or ModelUnavailable with one sentence."""
    s = (hub_id or "").strip()
    if not custom_models_allowed():
        raise ModelUnavailable("Custom models are switched off (set ATTNVIZ_ALLOW_CUSTOM_MODELS=1 to allow them).")
    if not s:
        raise ModelUnavailable("Type a hub id such as owner/model-name.")
    if "/" not in s or not catalog.HUB_ID.match(s) or ".." in s:
        raise ModelUnavailable(f"'{s}' is not a valid hub id: use owner/model-name (letters, digits, - _ .).")
    return s


def missing_demo_sentence(option: str) -> str:
    """A sentence when ``option`` is a repo-local demo model that has not been built; else ''."""
    entry = catalog.load_catalog().get(option)
    if entry is not None and entry.path and not catalog.is_available_offline(entry):
        return (f"The offline demo model {entry.name} has not been built yet: run `make demo`, "
                "or pick a model marked ✓ (offline).")
    return ""


def is_scene_sample(name: str) -> bool:
    """Whether a sample is a synthetic shapes scene (what the demo models know)."""
    return name.startswith("scene")


def knows_only_shapes(adapter) -> bool:
    """Whether ``adapter`` is one of the repo's demo models, trained on the synthetic shape scenes only."""
    demos = {e.name for e in catalog.load_catalog().entries if e.path}
    return getattr(adapter, "name", "") in demos or Path(str(getattr(adapter, "source", "") or "")).name in demos


def samples_for(adapter) -> dict[str, bytes]:
    """The samples a model is meant for: the shape scenes for a demo model, the photos for any other
    (all samples when there are none of that kind)."""
    shapes = knows_only_shapes(adapter)
    out = {n: b for n, b in sample_images().items() if is_scene_sample(n) == shapes}
    return out or sample_images()


def first_scene_sample() -> Optional[str]:
    return next((n for n in sample_images() if is_scene_sample(n)), None)


def show_a_scene_for_the_demo() -> None:
    """A callback for the "use the demo model" buttons: a photo sample gives way to a scene (an upload stays)."""
    current = st.session_state.get("sample")
    if current is not None and not is_scene_sample(current):
        scene = first_scene_sample()
        if scene is not None:
            st.session_state["sample"] = scene


@st.cache_data(show_spinner=False)
def sample_images() -> dict[str, bytes]:
    """name -> bytes: every image in assets/ (not the README screenshot), in file-name order.

    A scene's name is its file name in words ("scene red triangle yellow cross"): the objects
    from left to right, as assets/README.md lists them.
    """
    out: dict[str, bytes] = {}
    if ASSETS.is_dir():
        files = [p for p in sorted(ASSETS.iterdir())
                 if p.suffix.lower() in SAMPLE_SUFFIXES and p.is_file() and not p.name.startswith("screenshot")]
        for p in files:
            if p.stat().st_size <= MAX_BYTES:
                out[p.stem.replace("_", " ").replace("-", " ")] = p.read_bytes()
    return out


# --- per-session context ---------------------------------------------------

@dataclass(frozen=True)
class Display:
    alpha: float = 0.5
    cmap: str = "auto"
    norm: str = "auto"
    resample: str = "bilinear"
    present: bool = False     # presentation mode: large maps and text, controls folded away

    def cmap_for(self, signed: bool) -> str:
        return ("RdBu_r" if signed else "inferno") if self.cmap == "auto" else self.cmap

    def norm_for(self, signed: bool) -> str:
        # auto: robust to a few outlier patches (real trained ViTs have them; issue 20)
        return render.default_norm(signed) if self.norm == "auto" else self.norm


@dataclass(frozen=True)
class Choices:
    """What the sidebar chose this run."""

    image_name: Optional[str]
    image_bytes: Optional[bytes]
    model_option: str
    custom_id: str
    display: Display
    texts_slot: Any = None    # a sidebar container for the prompts / caption box, filled once the model is known
    is_sample: bool = False   # the image is one of the samples (a link can name it), not an upload
    input_side: int = 0       # the model input's long side in pixels, the whole image uncropped (0: the processor's)


@dataclass
class DecodedImage:
    digest: str
    image: Image.Image        # what the model sees (the original, RGB)
    display: Image.Image      # what overlays are drawn on (at most DISPLAY_MAX_SIDE)
    scale: float              # display size / original size


def decode(data: bytes) -> DecodedImage:
    """Validated, decoded image (cached by digest); raises ImageRejected."""
    digest = image_digest(data)

    def run() -> DecodedImage:
        img = load_image(data)
        disp = img.copy()
        disp.thumbnail((DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE), Image.Resampling.LANCZOS)
        return DecodedImage(digest, img, disp, disp.width / img.width)
    return _images().get_or_compute(digest, run)


def choices() -> Choices:
    """What the sidebar chose in this run (empty before the sidebar has run)."""
    c = st.session_state.get("_choices")
    return c if c is not None else Choices(None, None, "", "", Display())


def device_label(adapter) -> str:
    kind = getattr(getattr(adapter, "device", None), "type", "cpu")
    return {"cpu": "CPU", "cuda": "CUDA", "mps": "MPS"}.get(kind, str(kind).upper())
