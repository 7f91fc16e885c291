"""The map panel as a fragment, cached overlay PNGs, and the model queue notice (issue 13).

A display change (opacity, colormap, normalisation, upsampling) reruns only
the page's map panels: the sidebar's display widgets call
:func:`display_changed`, which asks Streamlit for a rerun of the fragments
the page drew in its last full run (:data:`MAP_PANEL` by default; a page
may draw more, each under its own key; a page without one reruns whole). The
panel draws from session state's display values, and each (map, display)
overlay is rendered and encoded once per process (:func:`overlay_image`),
so a change back to an earlier setting, or a second student on the same
image, costs a dictionary look-up.

What a panel keeps between its reruns must not hold the model's activations:
Streamlit stores the fragment's arguments per session, so a capture passed
to it would outlive the engine's bounded cache. :func:`light` strips a page
context down to what drawing needs.

When the model is busy with other sessions' work, :func:`model_turn` waits
for this session's turn in the adapter's :class:`~attnviz.queue.TurnLock`
and says how many requests are ahead, instead of a frozen page.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import numpy as np
import streamlit as st
import torch
from streamlit.errors import StreamlitAPIException

from .. import render
from ..queue import TurnLock, notices
from . import figures, mapview, state
from .cache import ResultCache

MAP_PANEL = "maps"                                   # the fragment key of a page's (first) map panel
PANELS_DRAWN = "_map_panels"                         # session state: the panel keys of this page's last full run
DISPLAY_KEYS = ("alpha", "cmap", "norm", "resample")  # the display widgets whose change reruns only the panel
PNG_ENTRIES = state._env_int("ATTNVIZ_OVERLAY_CACHE", 512)   # encoded overlays kept (tens to hundreds of kB)
LAYER_ENTRIES = 48                                               # coloured maps / RGB images (up to 3 MB each)
FIGURE_ENTRIES = 128                                             # plotly figures and thumbnail mosaics (small)


# --- a display change reruns only the map panel -----------------------------------

def display_changed() -> None:
    """on_change of the display widgets: rerun just the map panels this page drew (the whole page when it
    drew none)."""
    keys = list(st.session_state.get(PANELS_DRAWN) or ())
    if not keys:
        return                         # the callback returns: Streamlit reruns the whole page
    try:
        st.rerun(keys)
    except StreamlitAPIException:      # a key this run does not know: the page reruns whole
        pass


def new_page_run() -> None:
    """Called once per full run, before any panel (the sidebar's display widgets do it): forget the last
    run's panels, so a display change reruns exactly the panels this run draws."""
    st.session_state[PANELS_DRAWN] = []


def current_display(base: state.Display) -> state.Display:
    """``base`` with the display values the widgets hold now (the panel's rerun reads them here)."""
    ss = st.session_state
    return dataclasses.replace(base, **{k: ss[k] for k in DISPLAY_KEYS if k in ss})


_FRAGMENTS: dict[str, Callable[..., None]] = {}


def _fragment(key: str) -> Callable[..., None]:
    """The fragment function of panel ``key`` (one per key, made once)."""
    if key not in _FRAGMENTS:
        @st.fragment(key=key)
        def panel(draw: Callable[[Any], None], base: state.Display) -> None:
            draw(current_display(base))
        _FRAGMENTS[key] = panel
    return _FRAGMENTS[key]


def map_panel(draw: Callable[[Any], None], display: state.Display, key: str = MAP_PANEL) -> None:
    """Call ``draw(display)`` inside the map panel ``key``; on a display change only the page's panels rerun.

    ``draw`` is kept by Streamlit between reruns: it must close over :func:`light` contexts,
    maps and small values, never a capture.
    """
    drawn = st.session_state.setdefault(PANELS_DRAWN, [])
    if key not in drawn:
        drawn.append(key)
    _fragment(key)(draw, display)


# --- what the panel may keep ------------------------------------------------------------

def _slim_capture(cap):
    """The capture without its activations, attention tensors and autograd graph (scores, targets,
    layout, readout and small extras stay)."""
    extras = {k: v for k, v in cap.extras.items()
              if not (isinstance(v, tuple) and v and isinstance(v[0], torch.Tensor))}
    return dataclasses.replace(cap, attentions=(), cross_attentions=None, stages=(), inputs={}, extras=extras,
                               _grad_fn=None, _grads={})


def light(ctx):
    """A copy of a page context safe to keep in a fragment: the capture slimmed, the rest shared."""
    from .compute import CaptureEntry
    return dataclasses.replace(ctx, entry=CaptureEntry(_slim_capture(ctx.entry.capture), ctx.entry.seconds))


# --- overlays rendered once ----------------------------------------------------------------

@st.cache_resource(show_spinner=False)
def _pngs() -> ResultCache:
    """Encoded overlays by (image, map, scale, display): shared by every session of this process."""
    return ResultCache(PNG_ENTRIES, state.CACHE_TTL)


def map_digest(m: np.ndarray) -> str:
    a = np.ascontiguousarray(m, dtype=np.float32)
    return hashlib.blake2b(a.tobytes() + str(a.shape).encode(), digest_size=16).hexdigest()


def _jpeg(img) -> bytes:
    # JPEG as st.image sends an RGB picture, at quality 95 without chroma subsampling (thin colour edges
    # stay sharp): 10x faster to encode than PNG and a third of quality 100's bytes (1 MP: 180 kB, not
    # 570). Passed on with output_format="JPEG", the bytes reach the browser as they are (st.image would
    # otherwise decode and encode them again).
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


@st.cache_resource(show_spinner=False)
def _layers() -> ResultCache:
    """Coloured maps and RGB copies of display images (a few MB each at most): an opacity change only blends."""
    return ResultCache(LAYER_ENTRIES, state.CACHE_TTL)


def overlay_image(image_key: str, image, m: np.ndarray, scale: mapview.Scale, display, box=None) -> bytes:
    """JPEG bytes of ``m`` over ``image`` (``image_key`` names the image) in ``scale``'s colours, made once
    per process; show them with ``st.image(..., output_format="JPEG")``. The same pixels as
    :func:`mapview.draw`; its coloured layer is kept, so a new opacity costs one blend."""
    base = (image_key, image.size, map_digest(m), scale, display.resample, tuple(box) if box is not None else None)

    def make() -> bytes:
        layer, px_box = _layers().get_or_compute(("colours", *base),
                                                 lambda: mapview.colours(image.size, m, scale, display, box))
        rgb = _layers().get_or_compute(("rgb", image_key, image.size),
                                       lambda: np.asarray(image.convert("RGB"), dtype=np.uint8))
        return _jpeg(render.blend(rgb, layer, px_box, display.alpha))
    return _pngs().get_or_compute(("overlay", *base, float(display.alpha)), make)


def show_map(img, m: np.ndarray, scale: mapview.Scale, display, box, *, method: str, caption: str,
             width: Any = "stretch") -> None:
    """``m`` over the page's image (``img``: a decoded image, its digest and display copy) and its legend:
    the cached :func:`overlay_image` bytes, sent to the browser as they are."""
    st.image(overlay_image(img.digest, img.display, m, scale, display, box), caption=caption, width=width,
             output_format="JPEG")
    # the legend as wide as the picture (a picture of a fixed width: presentation mode)
    st.markdown(mapview.legend_html(scale, mapview.legend_title(method, scale)), unsafe_allow_html=True,
                width=width if isinstance(width, int) else "stretch")


PRESENT_MAP_PX = 380      # a map's height in presentation mode: with the title, tabs and legend it fits 720 px


def present_width(size: tuple[int, int], height: int = PRESENT_MAP_PX) -> int:
    """The width (px) at which a picture of ``size`` (w, h) is ``height`` tall: in presentation mode a picture
    is sized to fit the screen's height, not stretched to the page's width (below the fold)."""
    w, h = size
    return max(1, round(height * w / h))


def drawn_overlay(image_key: str, image, m: np.ndarray, **kw) -> bytes:
    """JPEG bytes of ``render.overlay(image, m, **kw)``, made once per process for the same image, map and
    arguments (the Lesson page's per-head pictures: a rerun that changes something else redraws none)."""
    args = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in kw.items()))
    return _pngs().get_or_compute(("drawn", image_key, image.size, map_digest(m), args),
                                  lambda: _jpeg(render.overlay(image, m, **kw)))


# --- figures and thumbnails built once per capture ------------------------------------------------

@st.cache_resource(show_spinner=False)
def _figures() -> ResultCache:
    """Plotly figures and Heads thumbnails by what they show (st.plotly_chart copies a figure, never
    changes it, so sessions share them)."""
    return ResultCache(FIGURE_ENTRIES, state.CACHE_TTL)


def figure(key: tuple, build: Callable[[], Any]) -> Any:
    """The figure ``build()`` makes, made once per ``key`` (which must name everything it shows):
    plotly's validation costs 20-40 ms per figure, on every run that draws it."""
    return _figures().get_or_compute(("figure", *key), build)


def thumbnails(key: tuple) -> Callable[..., Any]:
    """A drop-in for :func:`figures.mosaic_image` whose result is kept under ``key`` (the capture and
    the query) plus its own arguments: the Heads page's L × H thumbnails are drawn once per capture
    and display, not on every click."""
    def make(maps, cell, gap, **kw):
        args = tuple(sorted((k, v) for k, v in kw.items() if k != "image"))
        full = ("thumbnails", *key, tuple(cell), gap, kw.get("image") is not None, args)
        return _figures().get_or_compute(full, lambda: figures.mosaic_image(maps, cell, gap, **kw))
    return make


# --- waiting for the model ---------------------------------------------------------------

def ahead_sentence(n: int) -> str:
    return (f"The model is working for other users: {n} request{'s' if n != 1 else ''} ahead of you. "
            "Your map comes next; this page updates by itself.")


@contextmanager
def model_wait(adapter, *, priority: bool = False) -> Iterator[None]:
    """What a page wraps around model work that may batch with other sessions': for a model with a
    batching line (``adapter.server``) the wait notice of :func:`queue.notices` (the line itself takes the
    model's turn for its batches); otherwise :func:`model_turn`."""
    if getattr(adapter, "server", None) is None:
        with model_turn(adapter, priority=priority):
            yield
        return
    box = st.empty()
    last = [-1]

    def on_wait(ahead: int) -> None:
        if ahead != last[0]:
            box.info(ahead_sentence(ahead), icon=":material/hourglass_top:")
            last[0] = ahead
    try:
        with notices(on_wait):
            yield
    finally:
        if last[0] >= 0:
            box.empty()


@contextmanager
def model_turn(adapter, slot: Optional[Any] = None, *, priority: bool = False) -> Iterator[None]:
    """Hold the model for the block; while others are ahead, say how many (updated as the line moves).

    ``priority``: a session's follow-up on an image whose forward pass it already has (its first map's
    backward) goes before new images, so that it finishes and frees that pass's memory."""
    lock = getattr(adapter, "lock", None)
    if not isinstance(lock, TurnLock):
        yield
        return
    box = slot if slot is not None else st.empty()
    shown = [False]
    last = [-1]

    def on_wait(ahead: int) -> None:
        if ahead != last[0]:      # a message to the browser only when the count changes
            box.info(ahead_sentence(ahead), icon=":material/hourglass_top:")
            last[0] = ahead
        shown[0] = True
    try:
        with lock.turn(on_wait, priority=priority):
            if shown[0]:
                box.empty()
            yield
    finally:
        if shown[0] and slot is None:
            box.empty()
