"""Ray Serve (issue 23): a local Ray instance, the model deployed with 2 replicas and @serve.batch; maps
that come back over Serve equal the model run in this process. One Ray start for the whole file
(~40 s on a busy 2-core machine)."""
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import attnviz

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
pytestmark = pytest.mark.ray_serve          # `-m "not ray_serve"` leaves out the Ray start (conftest registers it)


@pytest.fixture(scope="module")
def served(saved_models):
    from attnviz.serve.ray_app import deploy
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(proxy_location="Disabled")                     # handles only: no HTTP proxy to start
        handle = deploy(str(saved_models["deit-teacher"]), name="attnviz-test", replicas=2, cpus=0.5,
                        batch=3, window_ms=300)
        yield handle
    finally:
        serve.shutdown()
        ray.shutdown()


def _images(n, seed=11):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40 + 4 * i, 36, 3), dtype=np.uint8)) for i in range(n)]


def _every_replica(handle, replicas=2, digest=""):
    """pid -> stats of every replica (about ``digest``'s capture; requests without a multiplexed id go to any
    replica: asked until each answered)."""
    seen = {}
    for _ in range(200):
        st = handle.stats.remote(digest).result()
        seen[st["pid"]] = st
        if len(seen) == replicas:
            return seen
    raise AssertionError(f"only {len(seen)} of {replicas} replicas answered")


def test_maps_over_serve_equal_in_process_maps(served, saved_models):
    """Three images sent at once to a 2-replica deployment: each image's relevance and rollout maps and
    its capture's scores equal the in-process model's; the capture's attentions did not cross over
    (placeholders without storage); and the application runs two replicas."""
    from attnviz.serve.ray_app import digest_of
    from attnviz.serve.remote import RemoteModel, is_remote
    t0 = time.monotonic()
    local = attnviz.load_model(str(saved_models["deit-teacher"]))
    remote = RemoteModel("attnviz-test", handle=served)
    images = _images(3)
    inputs = [local.prepare(im) for im in images]
    pending = [served.explain.remote(x, "relevance", None, {}) for x in inputs]    # all three in flight
    maps = [p.result() for p in pending]
    for im, x, exp in zip(images, inputs, maps):
        alone = attnviz.capture(local, im)
        ref = attnviz.explain(local, alone, "relevance")
        assert exp.target.index == ref.target.index
        np.testing.assert_allclose(exp.map, ref.map, atol=1e-5)
        np.testing.assert_allclose(remote.explain(x, "rollout").map, attnviz.explain(local, alone, "rollout").map,
                                   atol=1e-5)
        other = (ref.target.index + 1) % len(alone.targets)           # another target: a new backward there
        np.testing.assert_allclose(remote.explain(x, "relevance", other).map,
                                   attnviz.explain(local, alone, "relevance", other).map, atol=1e-5)
        cap = remote.capture(x)
        assert is_remote(cap) and cap.n_layers == alone.n_layers and cap.n_heads == alone.n_heads
        torch.testing.assert_close(cap.scores, alone.scores, atol=1e-5, rtol=1e-4)
        assert all(a.untyped_storage().size() <= 4 for a in cap.attentions)
        # the image's later requests went where its capture is (its digest is the multiplexed model id)
        assert remote._to(x).stats.remote(digest_of(x)).result()["holds"]
    # forward first: each new image's capture came from a forward batch, its top target's gradients from that
    # batch's own backward run after it, and the other targets' from forwards and backwards made again
    kinds = {k for st in _every_replica(served).values() for k in st["kinds"]}
    assert {"forward", "backward", "again"} <= kinds
    status = serve.status().applications["attnviz-test"].deployments["AttnvizModel"]
    assert status.replica_states.get("RUNNING") == 2
    assert time.monotonic() - t0 < 60


def test_the_app_explores_through_serve(served, saved_models, monkeypatch):
    """The app with ATTNVIZ_SERVE naming the application: the Explore page draws the forward's rollout first,
    then its relevance map and a method switch from Serve (the engine holds only capture summaries), the maps equal the in-process ones, a
    display change reruns without a new request, and a page that needs the attention weights says why not."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from attnviz.errors import UsageError
    from attnviz.serve.remote import RemoteModel, is_remote
    from attnviz.ui import state
    from attnviz.ui import panels
    monkeypatch.setenv("ATTNVIZ_MODEL", str(saved_models["deit-teacher"]))
    monkeypatch.setattr(state, "SERVE_APP", "attnviz-test")
    drawn = []
    real_show = panels.show_map

    def spy(img, m, scale, display, box, *, method, caption, **kw):
        drawn.append((method, caption))
        return real_show(img, m, scale, display, box, method=method, caption=caption, **kw)
    monkeypatch.setattr(panels, "show_map", spy)
    calls = {"capture": 0, "explain": 0}                          # requests that crossed to Serve
    for name in calls:
        def counted(self, *a, _name=name, _orig=getattr(RemoteModel, name), **kw):
            calls[_name] += 1
            return _orig(self, *a, **kw)
        monkeypatch.setattr(RemoteModel, name, counted)
    st.cache_resource.clear()
    st.cache_data.clear()
    try:
        at = AppTest.from_file(str(Path(__file__).parents[1] / "app.py"), default_timeout=120).run()
        assert not at.exception and not at.error, [e.value for e in at.exception]
        # forward first over Serve too: the capture came back before its backward, so the page drew the
        # forward's rollout (labelled) and then the relevance map that replaced it
        assert [m for m, _ in drawn[:2]] == ["rollout", "relevance"] and "shown first" in drawn[0][1]
        at.selectbox(key="method").set_value("rollout").run()
        assert not at.exception and not at.error
        eng = state.engine()
        entries = [v for _, v in eng.captures._data.values()]
        assert entries and all(is_remote(e.capture) for e in entries)
        maps = {k[3]: v for k, (_, v) in eng.results._data.items() if k[0] == "explain"}
        assert set(maps) >= {"relevance", "rollout"}
        local = attnviz.load_model(str(saved_models["deit-teacher"]))
        alone = local.capture(entries[0].capture.inputs)
        for method, exp in maps.items():
            np.testing.assert_allclose(exp.map, attnviz.explain(local, alone, method, exp.target).map, atol=1e-5)
        before = dict(calls)
        at.slider(key="alpha").set_value(0.7).run()                  # a display change
        assert not at.exception and not at.error
        assert calls == before and calls["explain"] >= 2 and calls["capture"] >= 1
        with pytest.raises(UsageError, match="stay on the Ray Serve replicas"):
            eng.head_stats(local, entries[0], "d")
    finally:
        st.cache_resource.clear()
        st.cache_data.clear()


def test_a_new_image_comes_back_after_its_forward_and_its_relevance_after_the_backward(served, saved_models):
    """A new image's capture summary comes back with no target's gradients ready (its backward comes after
    the forward: the page shows the forward's rollout meanwhile); the relevance asked next comes from a forward
    batch's own backward (no forward and backward made again on any replica) and equals the in-process map; a
    replica holding the image's capture then has its top target's gradients, and none had any before. Read from
    every replica: Serve's router may send a request naming the image to a replica that does not hold it yet
    (which then makes its own capture), so no single request's replica is assumed."""
    from attnviz.serve.ray_app import digest_of
    from attnviz.serve.remote import RemoteModel
    local = attnviz.load_model(str(saved_models["deit-teacher"]))
    remote = RemoteModel("attnviz-test", handle=served)
    image = _images(1, seed=23)[0]
    x = local.prepare(image)
    cap = remote.capture(x)
    alone = attnviz.capture(local, image)
    top = local.resolve_target(alone, None).index
    assert cap._grad_fn.waits(top) and not cap._grads
    key = digest_of(x)
    before = _every_replica(served, digest=key)
    assert any(st["holds"] for st in before.values())
    assert all(st["ready"] in (None, []) for st in before.values())
    exp = remote.explain(x, "relevance")
    np.testing.assert_allclose(exp.map, attnviz.explain(local, alone, "relevance").map, atol=1e-5)
    after = _every_replica(served, digest=key)
    again = lambda stats: sum(st["kinds"].count("again") for st in stats.values())   # noqa: E731
    assert again(after) == again(before), (before, after)
    assert any(st["ready"] == [top] for st in after.values())
