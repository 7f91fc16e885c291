"""The Ray Serve replica's line (issue 23): new images' forwards go before other model work; work that has
waited ``age`` seconds goes ahead. Plain asyncio: no Ray is started."""
import asyncio
import time

import pytest

pytest.importorskip("ray.serve")

from attnviz.serve.ray_app import _Line  # noqa: E402


def test_a_backward_waits_while_a_new_image_waits_for_its_forward():
    async def main():
        line, order = _Line(age=None), []
        await line.arrive()                                       # a new image's request is in
        backward = asyncio.create_task(line.run(order.append, "backward"))
        await asyncio.sleep(0.3)
        assert order == []                                        # it waits although nothing runs
        await line.run(order.append, "forward", forward=True)
        await line.leave()
        await asyncio.wait_for(backward, 5)
        return order
    assert asyncio.run(main()) == ["forward", "backward"]


def test_one_piece_of_work_at_a_time():
    async def main():
        line, running, most = _Line(age=None), [0], [0]

        def work():
            running[0] += 1
            most[0] = max(most[0], running[0])
            time.sleep(0.05)
            running[0] -= 1
        await asyncio.gather(*(line.run(work, forward=i % 2 == 0) for i in range(6)))
        return most[0]
    assert asyncio.run(main()) == 1


def test_a_backward_that_waited_its_age_takes_its_share_of_a_stream_of_forwards():
    """New images' forwards keep coming (one always waits): without ``age`` a backward waits for the whole
    stream; with it, once it has waited ``age`` seconds and new images' work has earned it credit
    (``share`` 0.25: a third of their run time), it goes ahead of the forwards still waiting."""
    async def main(age):
        line, order = _Line(age=age, share=0.25), []
        await line.arrive()                                       # a new image always waits from here on

        async def stream():
            for i in range(12):
                await line.arrive()
                await line.run(lambda i=i: (time.sleep(0.1), order.append(f"f{i}")), forward=True)
                await line.leave()
        backward = asyncio.create_task(line.run(order.append, "backward"))
        await stream()
        await line.leave()
        await asyncio.wait_for(backward, 5)
        return order
    assert asyncio.run(main(None))[-1] == "backward"
    order = asyncio.run(main(0.3))
    # aged after 0.3 s (three forwards), credit from the next forward on: ahead of the rest of the stream
    assert 3 <= order.index("backward") <= 6, order


def test_many_pages_at_once_on_one_replica_without_ray(saved_models, monkeypatch):
    """The replica's class driven directly on an event loop whose shared thread pool has 2 threads (Ray not
    started; the multiplexed claim is Serve's routing and is left out): 12 new images' relevance maps asked
    at once all come back (pages waiting for their batch's backward take no thread it needs) and equal the
    model's own one-shot captures; the forwards ran first, in batches, and every top target came from its
    batch's own backward."""
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    import numpy as np
    from ray import serve

    import attnviz
    from attnviz.serve.ray_app import AttnvizModel

    # @serve.batch reads the deployment's max_ongoing_requests (for a warning) from the replica context
    monkeypatch.setattr(serve, "get_replica_context", lambda: SimpleNamespace(
        _deployment_config=SimpleNamespace(max_ongoing_requests=32)))
    folder = str(saved_models["vit"])
    rng = np.random.default_rng(5)
    local = attnviz.load_model(folder)
    inputs = [local.prepare(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(12)]

    async def main():
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(2))
        replica = AttnvizModel(folder, cache=32, max_batch=4, window=0.05, hold=64)

        async def no_claim(digest):
            return digest
        replica._claim = no_claim
        maps = await asyncio.wait_for(asyncio.gather(*(replica.explain(x, "relevance") for x in inputs)), 120)
        return maps, replica
    maps, replica = asyncio.run(main())
    for x, exp in zip(inputs, maps):
        ref = attnviz.explain(local, local.capture(x, grads=True), "relevance")
        assert exp.target.index == ref.target.index
        np.testing.assert_allclose(exp.map, ref.map, atol=1e-5)
    forwards = [n for n, k in zip(replica.batches, replica.kinds) if k == "forward"]
    assert sum(forwards) == 12 and max(forwards) > 1
    assert "again" not in replica.kinds and replica.kinds.count("backward") == len(forwards)
    assert replica.held == 0
    # the replica's cache is bounded by its captures' bytes too: room for the three most recently used
    keys = list(replica.cache)                                    # least recently used first
    sizes = [replica.cache[k].nbytes() for k in keys]
    assert len(keys) == 12 and min(sizes) > 0
    replica.cache_bytes = sum(sizes[-3:])
    replica._bound_cache()
    assert list(replica.cache) == keys[-3:] and set(replica._pending) <= set(keys[-3:])


def test_a_remote_capture_knows_which_targets_gradients_came(saved_models):
    """On the app's side of Serve (no Ray: the remote's explain is a stand-in that computes here): a new image's
    capture summary lists no ready target, so the page would show the forward's map first for relevance; once a
    class-specific attention map for the top target came back, that target no longer waits (a later switch to
    another gradient view of it shows no first view), while another target still does and a Captum map (no
    attention backward) marks nothing."""
    import numpy as np

    import attnviz
    from attnviz.serve.remote import RemoteModel
    from attnviz.ui.compute import CaptureEntry, Engine

    adapter = attnviz.load_model(str(saved_models["vit"]))
    x = adapter.prepare(np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    local = adapter.capture(x, grads=True)

    class Handle:                                  # what RemoteModel calls, answered by the local model
        def options(self, **kw):
            return self

        class _Call:
            def __init__(self, fn):
                self.fn = fn

            def remote(self, *a):
                return type("R", (), {"result": lambda _s: self.fn(*a)})()

        @property
        def capture(self):
            from attnviz.serve.ray_app import summary
            return self._Call(lambda inputs: {**summary(local), "ready": []})

        @property
        def explain(self):
            return self._Call(lambda inputs, m, t, p: attnviz.explain(adapter, local, m, t, **p))
    adapter.remote = RemoteModel("stand-in", handle=Handle())
    eng = Engine()
    entry = CaptureEntry(adapter.remote.capture(x), 0.0)
    top = adapter.resolve_target(local, None).index
    other = (top + 1) % len(local.targets)
    waits = entry.capture._grad_fn.waits
    assert waits(top) and waits(other)
    eng.explain(adapter, entry, "digest", "integrated_gradients", top, {"n_steps": 4})
    assert waits(top)                                    # Captum ran no attention backward
    rel = eng.explain(adapter, entry, "digest", "relevance", None, {})
    # plumbing only (the stand-in computes with the same code): the engine passed the method and target through
    np.testing.assert_allclose(rel.map, attnviz.explain(adapter, local, "relevance").map, atol=1e-6)
    assert not waits(top) and waits(other)


def test_a_bfloat16_replica_holds_no_graph_unless_told(saved_models, monkeypatch):
    """A replica's default ``hold``: 8 graphs in float32, none in bfloat16 (as the app's ``auto_hold``); an
    explicit ``hold`` wins; the replica's passes run in the precision it was given."""
    from types import SimpleNamespace

    import torch
    from ray import serve

    from attnviz.serve.ray_app import AttnvizModel

    monkeypatch.setattr(serve, "get_replica_context", lambda: SimpleNamespace(
        _deployment_config=SimpleNamespace(max_ongoing_requests=32)))
    folder = str(saved_models["vit"])
    plain, half = AttnvizModel(folder), AttnvizModel(folder, precision="bfloat16")
    told = AttnvizModel(folder, precision="bfloat16", hold=5)
    assert (plain.hold, half.hold, told.hold) == (8, 0, 5)
    assert (plain.adapter.precision, half.adapter.precision) == (torch.float32, torch.bfloat16)
