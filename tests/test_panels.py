"""The app's map panel helpers (issue 13): overlays rendered once, the model queue notice, light contexts."""
import dataclasses
import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnviz import render
from attnviz.queue import TurnLock
from attnviz.ui import mapview, panels
from attnviz.ui.state import Display


def _counting(fn, calls: dict, name: str):
    """``fn``, counting its calls in ``calls[name]``."""
    def counted(*a, **kw):
        calls[name] += 1
        return fn(*a, **kw)
    return counted


def _overlay_by_hand(image, m, alpha, vmax=None):
    """The overlay computed here, not with render's helpers: [min, vmax] (default the max) to [0, 1] with values
    above vmax at the top colour, torch's bilinear upsampling (pixel centres aligned), matplotlib's inferno,
    then (1 − α)·image + α·colours, rounded."""
    import matplotlib
    import torch
    top = float(m.max()) if vmax is None else float(vmax)
    m01 = np.clip((m - m.min()) / (top - m.min()), 0.0, 1.0)
    up = torch.nn.functional.interpolate(torch.from_numpy(m01)[None, None], size=image.size[::-1], mode="bilinear",
                                         align_corners=False)[0, 0].numpy()                          # [H, W]
    colours = np.round(matplotlib.colormaps["inferno"](up)[..., :3] * 255)                           # [H, W, 3]
    out = np.round((1 - alpha) * np.asarray(image, dtype=np.float64) + alpha * colours)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def test_overlay_image_is_the_drawn_overlay_and_is_drawn_once_per_display(monkeypatch):
    panels._pngs.clear()
    panels._layers.clear()
    y, x = np.mgrid[0:48, 0:64]                   # a smooth picture, as photos mostly are
    image = Image.fromarray(np.stack([x * 4, y * 5, (x + y) * 2], -1).astype(np.uint8))
    m = np.random.default_rng(0).random((3, 4)).astype(np.float32)
    calls = {"n": 0}
    monkeypatch.setattr(mapview, "colours", _counting(mapview.colours, calls, "n"))
    d = Display(alpha=0.6)
    scale = mapview.scale_for(m, False, d)
    jpeg = panels.overlay_image("img-a", image, m, scale, d)
    # the default scale: lowest value to the 99th percentile (issue 20)
    want = _overlay_by_hand(image, m, 0.6, vmax=np.percentile(m, 99))
    shown = Image.open(io.BytesIO(jpeg))
    assert shown.format == "JPEG" and shown.size == image.size
    diff = np.abs(np.asarray(shown.convert("RGB"), dtype=int) - np.asarray(want, dtype=int))
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 8      # JPEG quality 95, no chroma subsampling
    assert panels.overlay_image("img-a", image, m.copy(), scale, d) == jpeg and calls["n"] == 1   # same map, cached
    d2 = dataclasses.replace(d, alpha=0.3)
    again = panels.overlay_image("img-a", image, m, scale, d2)        # a new opacity: blended, not recoloured
    assert again != jpeg and calls["n"] == 1
    diff = np.abs(np.asarray(Image.open(io.BytesIO(again)).convert("RGB"), dtype=int)
                  - np.asarray(_overlay_by_hand(image, m, 0.3, vmax=np.percentile(m, 99)), dtype=int))
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 8
    viridis = mapview.scale_for(m, False, dataclasses.replace(d, cmap="viridis"))
    panels.overlay_image("img-a", image, m, viridis, d)                                        # new colours
    panels.overlay_image("img-a", image, m + 1e-3, scale, d)                                   # new map
    panels.overlay_image("img-b", image, m, scale, d)                                          # new image
    assert calls["n"] == 4
    panels._pngs.clear()
    panels._layers.clear()


class _Slot:
    """Stands in for an st.empty(): records what the page would show."""

    def __init__(self):
        self.calls = []

    def info(self, text, **kw):
        self.calls.append(("info", text))

    def empty(self):
        self.calls.append(("empty", None))


def test_model_turn_says_how_many_are_ahead_then_clears_and_holds_the_model():
    adapter = type("A", (), {})()
    adapter.lock = TurnLock()
    held, done = threading.Event(), threading.Event()

    def other_session():                       # two requests: one running, one waiting before us
        with adapter.lock:
            held.set()
            done.wait(5)
    threads = [threading.Thread(target=other_session)]
    threads[0].start()
    held.wait(5)
    second = adapter.lock.take()
    threads.append(threading.Thread(target=lambda: (adapter.lock.wait(second), adapter.lock.release())))
    threads[1].start()
    slot = _Slot()
    threading.Timer(0.4, done.set).start()
    t0 = time.monotonic()
    with panels.model_turn(adapter, slot):
        inside = adapter.lock.holds()
    assert inside and time.monotonic() - t0 >= 0.3
    infos = [t for k, t in slot.calls if k == "info"]
    assert infos and infos[0] == panels.ahead_sentence(2) and "2 requests ahead of you" in infos[0]
    assert slot.calls[-1] == ("empty", None)
    for t in threads:
        t.join(5)


def test_a_light_context_keeps_no_activations():
    import attnviz
    from attnviz.adapters.classifier import ClassifierAdapter
    from attnviz.ui.compute import CaptureEntry
    adapter = ClassifierAdapter.tiny("vit")
    image = Image.fromarray(np.zeros((32, 32, 3), np.uint8))
    cap = attnviz.capture(adapter, image)
    attnviz.explain(adapter, cap, "relevance")                  # grads cached on the capture
    ctx = dataclasses.make_dataclass("Ctx", [("entry", object), ("name", str)])(CaptureEntry(cap, 0.1), "x")
    slim = panels.light(ctx).entry.capture
    assert slim.attentions == () and slim._grad_fn is None and slim._grads == {} and slim.inputs == {}
    assert slim.targets == cap.targets and slim.scores is cap.scores and slim.layout == cap.layout
    assert len(cap.attentions) == adapter.n_layers and cap._grad_fn is not None   # the cached capture is untouched


def test_a_loaded_model_waits_in_line_and_uses_the_apps_thread_count(monkeypatch, capfd):
    """The app's model: a TurnLock (sessions queue, first come first served) and ATTNVIZ_TORCH_THREADS
    threads for the script threads that run it; one log line per load."""
    import types

    import torch

    from attnviz.ui import state
    monkeypatch.setattr(state, "load_model", lambda spec: types.SimpleNamespace(source="tiny", lock=threading.RLock()))
    monkeypatch.setattr(state, "TORCH_THREADS", 1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)                    # so that one thread below can only come from the app
    state._model.clear()
    try:
        adapter = state._model("tiny")
        assert isinstance(adapter.lock, TurnLock)
        seen = []
        t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))   # a script thread
        t.start()
        t.join()
        assert seen == [1]
        assert state._model("tiny") is adapter and capfd.readouterr().err.count("attnviz: loaded model tiny") == 1
    finally:
        torch.set_num_threads(before)
        state._model.clear()


def test_heads_thumbnails_and_predictions_are_drawn_once_per_capture(saved_models, monkeypatch):
    """A head switch on the Heads page does not redraw the L × H thumbnails; a method switch on Explore
    does not rebuild the predictions chart (both counted where they are made)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from attnviz.ui import figures
    monkeypatch.setenv("ATTNVIZ_MODEL", str(saved_models["vit"]))
    st.cache_resource.clear()
    st.cache_data.clear()
    calls = {"mosaic_image": 0, "predictions_figure": 0}
    for name in calls:
        monkeypatch.setattr(figures, name, _counting(getattr(figures, name), calls, name))
    try:
        at = AppTest.from_file(str(Path(__file__).parents[1] / "app.py"), default_timeout=120)
        at.run()
        assert not at.exception and calls["predictions_figure"] == 1
        at.selectbox(key="method").set_value("rollout").run()
        assert not at.exception and calls["predictions_figure"] == 1 and len(at.get("image")) == 1
        at.switch_page("attnviz/ui/pages/heads.py").run()
        assert not at.exception and calls["mosaic_image"] == 1
        at.selectbox(key="h_head").set_value(1).run()
        assert not at.exception and calls["mosaic_image"] == 1 and "head 1" in " ".join(
            c for im in at.get("image") for c in im.captions)
        at.slider(key="h_layer").set_value(0).run()                # same thumbnails, another selection
        assert calls["mosaic_image"] == 1
    finally:
        st.cache_resource.clear()
        st.cache_data.clear()


@pytest.mark.parametrize("page", ["explore", "heads"])
def test_a_session_keeps_no_capture_once_the_cache_lets_it_go(saved_models, monkeypatch, page):
    """Streamlit keeps each widget's format_func and each fragment's arguments with the session; none
    may hold a capture (its activations: ~140 MB for ViT-B/16), or every open session pins one and the
    capture cache no longer bounds memory. Measured before the fix: +140 MB per session, kept."""
    import gc
    import weakref

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from attnviz.ui import state
    monkeypatch.setenv("ATTNVIZ_MODEL", str(saved_models["vit"]))
    st.cache_resource.clear()
    st.cache_data.clear()
    try:
        at = AppTest.from_file(str(Path(__file__).parents[1] / "app.py"), default_timeout=120)
        at.run()
        if page == "heads":
            at.switch_page("attnviz/ui/pages/heads.py").run()
        assert not at.exception and not at.error
        eng = state.engine()
        refs = [weakref.ref(entry.capture) for entry in (v for _, v in eng.captures._data.values())]
        assert refs
        eng.clear()
        gc.collect()
        assert [r() is None for r in refs] == [True] * len(refs)
        at.run()                                    # the session goes on (the capture is made again)
        assert not at.exception and not at.error
    finally:
        st.cache_resource.clear()
        st.cache_data.clear()
