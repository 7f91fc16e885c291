"""Cross-session batching (issue 23): batched captures equal single-image ones, no image depends on its
batch-mates, first maps go ahead of later requests, and the app's engine routes through the line."""
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import attnviz
from attnviz.queue import Batcher, TurnLock, notices
from attnviz.serve import ModelServer, Work, attach_server, run_batch


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (30 + 5 * i, 40 + 3 * i, 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def deit(saved_models):
    """Distilled DeiT (CLS + distillation readout), its lock as the app gives it."""
    adapter = attnviz.load_model(str(saved_models["deit-teacher"]))
    adapter.lock = TurnLock(1)
    return adapter


def _concurrently(fns):
    """Run each fn in its own thread at once; their results in order."""
    out, errors = [None] * len(fns), []

    def go(i, fn):
        try:
            out[i] = fn()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=go, args=(i, f)) for i, f in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return out


def test_batched_captures_equal_single_image_captures(deit):
    """Three sessions' uploads run as ONE batch; each image's scores, attentions, top-target gradients and
    relevance map equal the model run on that image alone, and a later target's gradients (a new request
    through the line) equal that image's own backward."""
    images = _images(3)
    server = ModelServer(deit, max_batch=3, window=5.0)     # a long window: the batch fills before it runs
    caps = _concurrently([lambda im=im: server.capture(deit.prepare(im)) for im in images])
    assert server.batcher.batch_sizes == [3]
    for im, cap in zip(images, caps):
        alone = attnviz.capture(deit, im)                      # the adapter's own single-image forward
        assert cap._grad_fn is not None and len(cap._grads) == 1
        top = deit.resolve_target(alone, None).index
        assert list(cap._grads) == [top]                       # the first map's backward came with it
        torch.testing.assert_close(cap.scores, alone.scores, atol=1e-5, rtol=1e-4)
        for a, b in zip(cap.attentions, alone.attentions):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        for a, b in zip(cap.attention_grads(top), alone.attention_grads(top)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        ref = attnviz.explain(deit, alone, "relevance", top).map
        np.testing.assert_allclose(attnviz.explain(deit, cap, "relevance", top).map, ref, atol=1e-5)
        assert all(a.untyped_storage().size() == a.numel() * a.element_size() for a in cap.attentions)  # own rows
    other = (deit.resolve_target(caps[0], None).index + 1) % len(caps[0].targets)
    got = caps[0].attention_grads(other)                       # not computed yet: through the batcher
    assert server.batcher.batch_sizes == [3, 1]
    for a, b in zip(got, attnviz.capture(deit, images[0]).attention_grads(other)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_no_image_depends_on_its_batch_mates(deit):
    """Image A's capture and map are the same whichever image shares its batch (and whichever target
    that image asks for)."""
    a, b, c = (deit.prepare(im) for im in _images(3, seed=7))
    with_b = run_batch(deit, [Work(a), Work(b, 0)])[0]
    with_c = run_batch(deit, [Work(a), Work(c, 2)])[0]
    t = deit.resolve_target(with_b, None).index
    assert list(with_b._grads) == list(with_c._grads) == [t]
    for x, y in zip(with_b.attentions + with_b.attention_grads(t), with_c.attentions + with_c.attention_grads(t)):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(attnviz.explain(deit, with_b, "relevance", t).map,
                               attnviz.explain(deit, with_c, "relevance", t).map, atol=1e-6)
    assert not np.allclose(attnviz.explain(deit, run_batch(deit, [Work(b)])[0], "relevance", None).map,
                           attnviz.explain(deit, with_b, "relevance", t).map)       # b's own map differs


def test_first_maps_go_ahead_of_later_requests():
    """A fake slow model: while a batch runs, three sessions' second requests and then two sessions'
    first maps arrive; the first maps run in the next batch, the second requests after them, and a
    waiter sees how many requests are ahead of it."""
    ran, started = [], threading.Event()

    def slow(payloads):
        started.set()
        time.sleep(0.3)
        ran.append(list(payloads))
        return [p.upper() for p in payloads]
    batcher = Batcher(slow, max_batch=2, window=0.0)
    busy = batcher.submit("x0", first=True)
    assert started.wait(5)
    later = [batcher.submit(f"later{i}") for i in range(3)]
    firsts = [batcher.submit(f"first{i}", first=True) for i in range(2)]
    assert [batcher.ahead(r) for r in firsts] == [1, 2]      # the running one, then the other first map
    assert batcher.ahead(later[0]) == 3
    seen = []
    with notices(seen.append):
        assert batcher.wait(later[2]) == "LATER2"
    assert ran == [["x0"], ["first0", "first1"], ["later0", "later1"], ["later2"]]
    assert seen and seen[0] == 5 and seen == sorted(seen, reverse=True)      # counted down as the line moved
    assert [r.batch_size for r in firsts + later] == [2, 2, 2, 2, 1] and busy.batch_size == 1
    s = batcher.stats()
    assert s["batches"] == 4 and s["requests"] == 6 and s["max_batch"] == 2
    assert later[2].queue_wait >= 0.8 and s["wait_max_s"] == pytest.approx(later[2].queue_wait)


def test_a_lone_request_waits_at_most_the_window_and_errors_reach_every_waiter():
    def failing(payloads):
        raise ValueError(f"bad batch of {len(payloads)}")
    batcher = Batcher(failing, max_batch=8, window=0.2)
    t0 = time.monotonic()
    reqs = [batcher.submit(i) for i in range(2)]
    for r in reqs:
        with pytest.raises(ValueError, match="bad batch of 2"):
            batcher.wait(r)
    assert 0.19 <= time.monotonic() - t0 < 2.0


def test_app_engine_routes_captures_through_the_line(deit):
    """The app's engine with a batching adapter: two sessions' captures share one batch and equal
    captures made alone; a page already holding the model's lane runs its request itself (no deadlock
    on a one-lane model); a family that does not batch keeps the adapter's own capture."""
    from attnviz.ui.compute import Engine
    eng = Engine()
    attach_server(deit, max_batch=2, window=5.0)
    try:
        images = _images(3, seed=3)
        entries = _concurrently([lambda i=i: eng.capture(deit, f"d{i}", images[i]) for i in range(2)])
        assert deit.server.batcher.batch_sizes == [2]
        for im, e in zip(images, entries):
            for a, b in zip(e.capture.attentions, attnviz.capture(deit, im).attentions):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        with deit.lock:                                  # as a page that took its turn first
            e = eng.capture(deit, "d2", images[2])
        assert deit.server.batcher.batch_sizes == [2] and len(e.capture._grads) == 1
    finally:
        deit.server = None


def test_families_that_do_not_batch_get_no_server(clip_dirs):
    clip = attnviz.load_model(str(clip_dirs["clip"]))
    assert attach_server(clip) is None and clip.server is None


def test_a_copy_of_a_served_adapter_has_no_server(deit):
    """The randomisation check deep-copies the adapter; the copy runs on its own weights, outside the line."""
    from attnviz.metrics.randomisation import copy_adapter
    attach_server(deit, max_batch=2)
    try:
        twin = copy_adapter(deit)
        assert twin.server is None and twin.model is not deit.model
    finally:
        deit.server = None


def test_serve_named_but_unreachable_is_one_sentence(monkeypatch):
    """ATTNVIZ_SERVE without a Ray cluster: the app's model load fails with one sentence naming what to do."""
    pytest.importorskip("ray.serve")
    import ray

    from attnviz.errors import ModelUnavailable
    from attnviz.serve.remote import RemoteModel

    def no_cluster(*a, **kw):
        raise ConnectionError("Could not find any running Ray instance.")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(ModelUnavailable, match="'classroom'.*could not be reached.*unset ATTNVIZ_SERVE"):
        RemoteModel("classroom")
