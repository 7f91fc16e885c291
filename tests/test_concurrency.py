"""The app's compute layer under threads: same maps as a serial run; long methods never hog the model."""
import random
import threading
import time

import numpy as np
import pytest
from PIL import Image

from attnviz.images import image_digest
from attnviz.render import to_png_bytes
from attnviz.ui.cache import ResultCache
from attnviz.ui.compute import Engine

JOBS = [
    ("attention", {"layer": 0, "head": "1", "query": "cls"}),
    ("attention", {"layer": -1, "head": "mean", "query": "1,2"}),
    ("rollout", {}),
    ("relevance", {}),
    ("grad_rollout", {"discard_ratio": 0.2}),
    ("attn_grad", {}),
    ("grad_cam", {}),
    ("saliency", {}),
    ("input_x_gradient", {}),
    ("integrated_gradients", {"n_steps": 8, "internal_batch_size": 4}),
    ("occlusion", {"batch_size": 4}),
    ("kernel_shap", {"n_samples": 16, "batch_size": 8}),
]
TARGETS = (None, 3)


@pytest.fixture(scope="module")
def adapter(saved_models):
    import attnviz
    return attnviz.load_model(str(saved_models["vit"]))


@pytest.fixture(scope="module")
def images(photo):
    rng = np.random.default_rng(1)
    other = Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8))
    return [(image_digest(to_png_bytes(im)), im) for im in (photo, other)]


def _all_jobs(images):
    return [(d, im, m, p, t) for d, im in images for m, p in JOBS for t in TARGETS]


def _run(engine, adapter, jobs):
    out = {}
    for digest, image, method, params, target in jobs:
        entry = engine.capture(adapter, digest, image)
        exp = engine.explain(adapter, entry, digest, method, target, params)
        out[(digest, method, str(sorted(params.items())), target)] = exp.map
    return out


@pytest.fixture(scope="module")
def serial(adapter, images):
    return _run(Engine(), adapter, _all_jobs(images))


@pytest.mark.parametrize("entries", [256, 1], ids=["cached", "evicting"])
def test_eight_threads_match_a_serial_run(adapter, images, serial, entries):
    jobs = _all_jobs(images)

    # One engine shared by 8 threads; with 1 entry per cache nearly every request recomputes
    # (captures included), so forwards, backwards and Captum runs really overlap.
    shared = Engine(capture_entries=entries, result_entries=entries)
    results, errors = [None] * 8, []

    def worker(i):
        try:
            mine = list(jobs)
            random.Random(i).shuffle(mine)
            results[i] = _run(shared, adapter, mine)
        except Exception as exc:   # surfaced below with the thread's index
            errors.append((i, exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for i, res in enumerate(results):
        assert res is not None and res.keys() == serial.keys(), f"thread {i} did not finish"
        for key, m in serial.items():
            np.testing.assert_allclose(res[key], m, rtol=1e-4, atol=1e-6, err_msg=f"thread {i}: {key}")


def test_a_long_method_leaves_the_model_free_between_steps(adapter, images):
    """While occlusion runs one forward per step, another session's capture gets the model within a step."""
    digest, image = images[0]
    engine = Engine()
    entry = engine.capture(adapter, digest, image)
    state = {"done": 0, "total": None}
    started = threading.Event()

    def progress(done, total):
        state["done"], state["total"] = done, total
        started.set()
        time.sleep(0.02)          # a slow step: the model's lock is not held here

    t = threading.Thread(target=engine.explain,
                         args=(adapter, entry, digest, "occlusion", None, {"batch_size": 1}, progress))
    t.start()
    assert started.wait(30)
    t0 = time.perf_counter()
    adapter.capture(adapter.prepare(image), grads=False)          # a cheap request from "another session"
    waited = time.perf_counter() - t0
    done_then = state["done"]
    t.join(60)
    assert done_then < state["total"], "the cheap request had to wait for the whole long method"
    assert waited < 5.0


def test_result_cache_bounds_ttl_and_single_flight():
    now = [0.0]
    cache = ResultCache(max_entries=2, ttl=10, clock=lambda: now[0])
    calls = []
    for k in "abc":
        cache.get_or_compute(k, lambda k=k: calls.append(k) or k.upper())
    assert len(cache) == 2 and "a" not in cache and cache.peek("c") == "C"
    now[0] = 11.0
    assert cache.peek("c") is None and len(cache) == 0

    # Two callers of one missing key: computed once, both get the value.
    gate, n = threading.Event(), []

    def slow():
        n.append(1)
        gate.wait(5)
        return 42
    out = []
    threads = [threading.Thread(target=lambda: out.append(cache.get_or_compute("k", slow))) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join(5)
    assert out == [42] * 4 and len(n) == 1

    # A failure stores nothing, and the next caller computes again.
    with pytest.raises(ZeroDivisionError):
        cache.get_or_compute("bad", lambda: 1 / 0)
    assert cache.get_or_compute("bad", lambda: 7) == 7


def test_the_capture_cache_is_bounded_by_its_captures_memory(adapter, images):
    """``Capture.nbytes`` counts the attentions (L·H·T² floats, by the shapes) and grows by the gradients a
    backward adds; an engine whose captures may take 1.5 such captures keeps the newest one only, with room
    for three it keeps both (entries alone would allow 256)."""
    (d1, im1), (d2, im2) = images
    cap = Engine().capture(adapter, d1, im1).capture
    base = cap.nbytes()
    attn = sum(a.numel() * a.element_size() for a in cap.attentions)
    L, (H, T, _) = len(cap.attentions), cap.attentions[0].shape
    assert attn == L * H * T * T * 4 and base >= attn
    top = int(cap.scores.argmax())
    cap.attention_grads(top)
    added = sum(g.numel() * g.element_size() for gs in cap._grads[top].values() for g in gs)
    assert cap.nbytes() - base == added >= L * H * T * T * 4

    small = Engine(capture_entries=256, capture_bytes=int(1.5 * base))
    small.capture(adapter, d1, im1)
    small.capture(adapter, d2, im2)
    assert not small.has_capture(adapter, d1) and small.has_capture(adapter, d2)
    roomy = Engine(capture_entries=256, capture_bytes=3 * base)
    roomy.capture(adapter, d1, im1)
    roomy.capture(adapter, d2, im2)
    assert roomy.has_capture(adapter, d1) and roomy.has_capture(adapter, d2)


def test_lru_trim_by_entries_then_by_bytes_keeps_the_newest():
    """A hand-built line of five values (oldest first) of 5, 1, 4, 3, 2 bytes: at most four entries drops the
    oldest (5); at most 6 bytes then drops 1 and 4 (3 + 2 = 5 left); a bound below the newest keeps it alone."""
    from collections import OrderedDict

    from attnviz.lru import trim
    d = OrderedDict(zip("abcde", (5, 1, 4, 3, 2)))
    assert trim(d, 4, 6, size=lambda v: v) == ["a", "b", "c"] and list(d) == ["d", "e"]
    assert trim(d, 4, 1, size=lambda v: v) == ["d"] and list(d) == ["e"]
    assert trim(d, 4, 1, size=lambda v: v) == [] and list(d) == ["e"]
