"""The model work on Ray Serve: one deployment per model, ``@serve.batch`` around the batched worker.

Each replica loads the model once and keeps the captures it made (attentions and gradients, the heavy
tensors) in its own bounded cache, keyed by the image's digest, and claims that digest as a multiplexed
model id; the app names it in an image's later requests, so Serve's router sends them to the replica
that holds the capture. A new image's capture request names no id: Serve waits up to a second for a
replica holding an id it has not seen, which would hand new images to ``@serve.batch`` one by one. What crosses the network is small: the
app sends the prepared model input (one image's pixel tensor) and asks for a capture's summary (scores,
targets, token layout: no attention tensor) or a map; the replica answers with that summary or with the
:class:`~attnviz.types.Explanation` (the raw map). Requests that need a forward (a new image, or one
that left this replica's cache) or a backward for a new target wait for ``@serve.batch`` to gather up to
``max_batch`` of them, across all the app servers, and run :func:`~.batched.run_batch`: the same worker
as the in-process line (``serve.local``), so a map is the same wherever it is computed.

Run it with Ray's CLI (``serve run attnviz.serve.ray_app:app model=random-vit-b16 replicas=2``) or
:func:`deploy`; the app uses it when ``ATTNVIZ_SERVE`` names the application (``serve.remote``).
"""
from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from typing import Any, Optional

from ray import serve

from .batched import Work, run_batch

APP_NAME = "attnviz"
MAX_BATCH, WINDOW_S, CACHE = 8, 0.05, 18


def summary(cap) -> dict[str, Any]:
    """What the app needs of a capture besides its maps: scores, targets, the token layout, the readout
    and the crop box, plus the attention's shape (layers, heads, tokens) but none of its values."""
    return {"scores": cap.scores, "targets": cap.targets, "layout": cap.layout, "box": cap.box,
            "readout": cap.readout, "pooling": cap.pooling,
            "shape": (len(cap.attentions), *tuple(cap.attentions[0].shape[:2])) if cap.attentions else (0, 0, 0)}


def digest_of(inputs: dict[str, Any]) -> str:
    """The cache key of a prepared input on a replica: the SHA-256 of its pixel tensor's bytes."""
    return hashlib.sha256(inputs["pixel_values"].contiguous().numpy().tobytes()).hexdigest()


class AttnvizModel:
    """One model on one replica: batched captures, a bounded capture cache, maps on request."""

    def __init__(self, model: Optional[str] = None, cache: int = CACHE, threads: int = 1,
                 max_batch: int = MAX_BATCH, window: float = WINDOW_S):
        import torch

        from ..loading import load_model
        torch.set_num_threads(max(1, int(threads)))
        self._run.set_max_batch_size(int(max_batch))           # this replica's @serve.batch settings
        self._run.set_batch_wait_timeout_s(float(window))
        self.adapter = load_model(model or None)
        self.cache: OrderedDict[str, Any] = OrderedDict()
        self.size = max(1, int(cache))
        self.batches: list[int] = []

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=WINDOW_S)
    async def _run(self, works: list[Work]) -> list[Any]:
        self.batches.append(len(works))
        # the model runs in a thread: the replica's event loop goes on gathering the next batch
        return await asyncio.to_thread(run_batch, self.adapter, works)

    @serve.multiplexed(max_num_models_per_replica=CACHE)
    async def _claim(self, digest: str) -> str:
        """Tell Serve's router this replica holds the image ``digest`` (a multiplexed "model" id): later
        requests that name it go to this replica, where its capture is. Nothing is computed here, since
        Serve loads one multiplexed model at a time per replica and captures must batch."""
        return digest

    async def _capture(self, inputs: dict[str, Any]):
        key = digest_of(inputs)
        cap = self.cache.get(key)
        if cap is None:
            cap = await self._run(Work(inputs))
            adapter = self.adapter
            # another target's gradients, should a method ask for one not fetched below: this image alone
            cap._grad_fn = lambda t, inputs=inputs: run_batch(adapter, [Work(inputs, int(t))])[0]._grads[int(t)]
            self.cache[key] = cap
            while len(self.cache) > self.size:
                self.cache.popitem(last=False)
        self.cache.move_to_end(key)
        # after the capture, not before: the multiplexer claims one id at a time per replica, which would
        # hand new images to the batch one by one
        await self._claim(key)
        return cap

    async def capture(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The capture's summary (no tensor bigger than the scores)."""
        return summary(await self._capture(inputs))

    async def explain(self, inputs: dict[str, Any], method: str, target: Any = None,
                      params: Optional[dict[str, Any]] = None):
        """The map of ``method`` on this image (an :class:`~attnviz.types.Explanation`)."""
        from ..methods.registry import explain, get_method
        cap = await self._capture(inputs)
        spec = get_method(method)
        if spec.kind == "attention" and spec.class_specific:
            t = self.adapter.resolve_target(cap, target).index
            if t not in cap._grads:            # a new target: its backward batched with others' requests
                cap._grads[t] = (await self._run(Work(inputs, t)))._grads[t]
        return await asyncio.to_thread(explain, self.adapter, cap, method, target, **(params or {}))

    async def stats(self, digest: str = "") -> dict[str, Any]:
        """This replica's batch sizes so far, how many captures it holds, and whether it holds ``digest``'s."""
        return {"batches": list(self.batches), "captures": len(self.cache), "holds": digest in self.cache}


def app(args: dict[str, str]):
    """The application builder for ``serve run attnviz.serve.ray_app:app model=NAME replicas=2 batch=8
    window_ms=50 cache=18 threads=1 cpus=1``."""
    batch = int(args.get("batch", MAX_BATCH))
    dep = serve.deployment(AttnvizModel, name="AttnvizModel", num_replicas=int(args.get("replicas", 2)),
                           ray_actor_options={"num_cpus": float(args.get("cpus", 1))},
                           max_ongoing_requests=4 * batch)
    return dep.bind(args.get("model"), int(args.get("cache", CACHE)), int(args.get("threads", 1)), batch,
                    float(args.get("window_ms", WINDOW_S * 1000)) / 1000)


def deploy(model: Optional[str], *, name: str = APP_NAME, **kw):
    """Start the application ``name`` serving ``model`` on the Ray instance this process is connected to
    (no HTTP route: the app servers call it through Serve handles). Returns its handle."""
    args = {"model": model, **{k: str(v) for k, v in kw.items()}}
    return serve.run(app(args), name=name, route_prefix=None)
