"""Ray Serve (issue 23): a local Ray instance, the model deployed with 2 replicas and @serve.batch; maps
that come back over Serve equal the model run in this process. One Ray start for the whole file
(~40 s on a busy 2-core machine)."""
import time

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


def test_maps_over_serve_equal_in_process_maps(served, saved_models):
    """Three images sent at once to a 2-replica deployment: each image's relevance and rollout maps and
    its capture's scores equal the in-process model's; the capture's attentions did not cross over
    (placeholders without storage); and the application runs two replicas."""
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
    status = serve.status().applications["attnviz-test"].deployments["AttnvizModel"]
    assert status.replica_states.get("RUNNING") == 2
    assert time.monotonic() - t0 < 60
