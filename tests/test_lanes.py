"""Two sessions' forwards at once on one model (issue 13): every family that says its forward allows it
(``ModelAdapter.concurrent_forwards``) gives, under two threads running captures and backward passes
side by side, exactly what a serial run gives. Hooks on the shared model act only for their own thread
(``adapters.hooks.this_thread``); without that, a CNN's stage maps or SigLIP's probe would record the
other thread's forward."""
import threading

import numpy as np
import pytest
import torch

import attnviz
from attnviz.adapters.captioning import CaptionAdapter
from attnviz.adapters.classifier import ClassifierAdapter
from attnviz.adapters.clip import ClipAdapter
from attnviz.adapters.cnn import CnnAdapter
from attnviz.adapters.hooks import this_thread
from attnviz.adapters.swin import SwinAdapter
from attnviz.queue import TurnLock

from .conftest import CAPTION_KINDS, CLASSIFIER_KINDS, CLIP_KINDS, CNN_KINDS

FAMILIES = {"classifier": (ClassifierAdapter, CLASSIFIER_KINDS), "clip": (ClipAdapter, CLIP_KINDS),
            "captioning": (CaptionAdapter, CAPTION_KINDS), "cnn": (CnnAdapter, CNN_KINDS),
            "swin": (SwinAdapter, ("swin", "swinv2"))}
# Families that say two forwards may run at once (Swin does not: the app gives it one lane, checked below).
CONCURRENT = [(fam, kind) for fam, (cls, kinds) in FAMILIES.items() if cls.concurrent_forwards for kind in kinds]
ROUNDS = 6


def _images(n, size=40):
    from PIL import Image
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)) for _ in range(n)]


def _fingerprint(adapter, image):
    """What a session reads off one image: scores, attentions or stage maps, and a class-specific map
    (a backward pass through the capture's graph)."""
    cap = attnviz.capture(adapter, image, texts=["a red circle", "a cat"] if adapter.family == "clip" else None)
    method = "grad_cam" if cap.stages else "relevance"
    exp = attnviz.explain(adapter, cap, method)
    parts = [cap.scores, *cap.attentions, *cap.stages, *(g.value for g in cap.gates), torch.as_tensor(exp.map)]
    return [p.detach().float().clone() for p in parts]


@pytest.mark.parametrize("family,kind", CONCURRENT)
def test_concurrent_forwards_match_a_serial_run(family, kind):
    cls, _ = FAMILIES[family]
    adapter = cls.tiny(kind)
    adapter.lock = TurnLock(lanes=2)
    images = _images(2)
    serial = [_fingerprint(adapter, im) for im in images]
    got: dict[int, list] = {0: [], 1: []}
    start = threading.Barrier(2)
    errors = []

    def work(i):
        try:
            for _ in range(ROUNDS):
                start.wait(10)                                   # both threads enter their forward together
                with adapter.lock:
                    got[i].append(_fingerprint(adapter, images[i]))
        except Exception as e:                                   # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for i in (0, 1):
        assert len(got[i]) == ROUNDS
        for fp in got[i]:
            assert len(fp) == len(serial[i])
            for a, b in zip(fp, serial[i]):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_hook_made_in_one_thread_ignores_another_threads_forward():
    """The wrapper by hand: the registering thread's forward is seen (and can be rewired), another's not."""
    lin = torch.nn.Linear(3, 3)
    seen = []

    def hook(m, args, out):
        seen.append(threading.get_ident())
        return out * 0
    handle = lin.register_forward_hook(this_thread(hook))
    try:
        x = torch.ones(1, 3)
        mine = lin(x)
        other = []
        t = threading.Thread(target=lambda: other.append(lin(x)))
        t.start()
        t.join()
    finally:
        handle.remove()
    assert seen == [threading.get_ident()]
    assert torch.equal(mine, torch.zeros(1, 3)) and torch.equal(other[0], torch.nn.functional.linear(x, lin.weight, lin.bias))


def test_the_app_gives_lanes_only_to_models_that_allow_them(monkeypatch):
    import types

    from attnviz.ui import state
    monkeypatch.setattr(state, "MODEL_LANES", 2)
    for allowed, lanes in ((True, 2), (False, 1)):
        monkeypatch.setattr(state, "load_model", lambda spec, allowed=allowed: types.SimpleNamespace(
            source="tiny", concurrent_forwards=allowed))
        state._model.clear()
        try:
            assert state._model("tiny").lock.lanes == lanes
        finally:
            state._model.clear()
    assert SwinAdapter.concurrent_forwards is False and ClassifierAdapter.concurrent_forwards is True
