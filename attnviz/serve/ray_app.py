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

Forward first, as in the app's own line (``serve.local``, issue 23): a new image's capture request waits
only for its batch's **forward** (``_forwards``: :func:`~.batched.run_forward`), so the page can draw the
forward's own attention rollout at once; the batch's ONE backward for every image's top target (the page's
class-specific map) runs next, unless other new images' forwards wait: those go first (:class:`_Line`),
while at most ``hold`` images' graphs wait for their backward; beyond that a forward keeps no graph and its
image's gradients are a later forward and backward (``_run``). A backward that has waited ``age`` seconds
goes ahead of forwards arriving after that.

Run it with Ray's CLI (``serve run attnviz.serve.ray_app:app model=random-vit-b16 replicas=2``) or
:func:`deploy`; the app uses it when ``ATTNVIZ_SERVE`` names the application (``serve.remote``).
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

from ray import serve

from ..lru import trim
from ..queue import Share
from ..types import Capture
from .batched import Forward, Work, run_batch, run_forward
from .local import AGE_S, HOLD, SHARE

APP_NAME = "attnviz"
MAX_BATCH, WINDOW_S, CACHE = 8, 0.05, 64
#: The share of the memory available when a replica starts that its captures' tensors may take (``Capture.nbytes``;
#: ``cache_mb`` fixes it): ViT-B/16 captures are 45 MB, so an eighth of 22 GB holds the 64 of CACHE. With 18 (session
#: 10) both replicas' caches were full within a 5-s burst of 30 and 38 forwards ran for 30 images.
CACHE_MEMORY_SHARE = 0.125


def summary(cap) -> dict[str, Any]:
    """What the app needs of a capture besides its maps: scores, targets, the token layout, the readout
    and the crop box, plus the attention's shape (layers, heads, tokens) but none of its values."""
    return {"scores": cap.scores, "targets": cap.targets, "layout": cap.layout, "box": cap.box,
            "readout": cap.readout, "pooling": cap.pooling,
            "shape": (len(cap.attentions), *tuple(cap.attentions[0].shape[:2])) if cap.attentions else (0, 0, 0)}


def digest_of(inputs: dict[str, Any]) -> str:
    """The cache key of a prepared input on a replica: the SHA-256 of its pixel tensor's bytes."""
    return hashlib.sha256(inputs["pixel_values"].contiguous().numpy().tobytes()).hexdigest()


class _Line:
    """One piece of model work at a time on a replica, new images' forwards first: other work (a held
    graph's backward, a forward and backward made again) starts only while no new image waits for its
    forward, or, once it has waited ``age`` seconds, within its ``share`` of the replica's time
    (:class:`~attnviz.queue.Share`, the app's own line's rule). ``forwards`` counts the new images waiting
    (from their request's arrival, before ``@serve.batch`` gathers them) or running."""

    def __init__(self, age: Optional[float], share: float = SHARE):
        self.age = age
        self.share = Share(share)
        self.forwards = 0
        self._others: list[float] = []    # when each piece of other work waiting now arrived
        self._busy = False
        self._cond: Optional[asyncio.Condition] = None
        # its own thread: model work never waits for a thread of the event loop's shared pool
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="attnviz-line")

    @property
    def cond(self) -> asyncio.Condition:
        if self._cond is None:            # made on the replica's event loop, at first use
            self._cond = asyncio.Condition()
        return self._cond

    async def arrive(self) -> None:
        async with self.cond:
            self.forwards += 1

    async def leave(self, n: int = 1) -> None:
        async with self.cond:
            self.forwards -= n
            self.cond.notify_all()

    async def run(self, fn: Callable, *args, forward: bool = False):
        """``fn(*args)`` in a thread once it is this work's turn (the event loop goes on gathering batches)."""
        t0 = time.monotonic()

        def aged(since: float) -> bool:
            return self.age is not None and time.monotonic() - since >= self.age

        def turn() -> bool:
            if self._busy:
                return False
            if forward:                   # unless aged other work is due its share
                return not (self.share.may_go_ahead() and any(aged(t) for t in self._others))
            return self.forwards == 0 or (aged(t0) and self.share.may_go_ahead())
        async with self.cond:
            if not forward:
                self._others.append(t0)
            try:
                while not turn():
                    try:                      # woken when work ends; at most every 0.5 s to see the age rule
                        await asyncio.wait_for(self.cond.wait(), 0.5)
                    except asyncio.TimeoutError:
                        pass
            finally:
                if not forward:
                    self._others.remove(t0)
            self._busy = True
            ahead = not forward and self.forwards > 0                  # in its share, ahead of new images
            contended = forward and any(aged(t) for t in self._others)  # new images while aged work waits
        t1 = time.monotonic()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            async with self.cond:
                self._busy = False
                self.share.ran(time.monotonic() - t1, ahead=ahead, contended=contended)
                self.cond.notify_all()


class AttnvizModel:
    """One model on one replica: batched captures (forward first), a bounded capture cache, maps on request."""

    def __init__(self, model: Optional[str] = None, cache: int = CACHE, threads: int = 1,
                 max_batch: int = MAX_BATCH, window: float = WINDOW_S, hold: Optional[int] = None,
                 age: Optional[float] = AGE_S, cache_mb: Optional[int] = None, precision: Optional[str] = None):
        import torch

        from ..tokens.budget import available_memory

        from .. import memory
        from ..loading import load_model
        memory.tune()                                  # freed tensors reused, given back when idle
        torch.set_num_threads(max(1, int(threads)))
        for batched in (self._run, self._forwards):             # this replica's @serve.batch settings
            batched.set_max_batch_size(int(max_batch))
            batched.set_batch_wait_timeout_s(float(window))
        self.adapter = load_model(model or None)
        if precision and self.adapter.REDUCED_PRECISION:          # else ATTNVIZ_PRECISION where the replica runs
            from ..precision import parse
            self.adapter.precision = parse(precision)
        self.cache: OrderedDict[str, Any] = OrderedDict()
        self.size = max(1, min(CACHE, int(cache)))     # Serve's router tracks at most CACHE claimed ids
        self.cache_bytes = (int(cache_mb) << 20) if cache_mb else int(CACHE_MEMORY_SHARE * available_memory())
        if hold is None:           # none in bfloat16 (as serve.local.auto_hold: a forward made again is cheaper)
            hold = HOLD if self.adapter.precision == torch.float32 else 0
        self.hold, self.held = max(0, int(hold)), 0
        self.line = _Line(age)
        self.batches: list[int] = []
        self.kinds: list[str] = []             # per batch: "forward", "backward" (a held graph's), "again"
        self._tasks: set = set()
        self._pending: dict[str, tuple[Forward, int]] = {}     # digest -> its forward batch, its row there

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=WINDOW_S)
    async def _run(self, works: list[Work]) -> list[Any]:
        """Forward and backward together (a target the batch's own backward did not give, or a forward that
        kept no graph): behind new images' forwards."""
        self.batches.append(len(works))
        self.kinds.append("again")
        return await self.line.run(run_batch, self.adapter, works)

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=WINDOW_S)
    async def _forwards(self, works: list[Work]) -> list[Any]:
        """New images' forward: their captures at once; the batch's backward queued behind new images while
        fewer than ``hold`` images' graphs wait (else no graph is kept)."""
        self.batches.append(len(works))
        self.kinds.append("forward")
        graph = self.held + len(works) <= self.hold
        if graph:
            self.held += len(works)
        try:
            fw = await self.line.run(run_forward, self.adapter, works, graph, forward=True)
        except BaseException:
            self.held -= len(works) if graph else 0
            raise
        if fw.graph:
            task = asyncio.get_running_loop().create_task(self._backward(fw))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            fw.hold(task)
        return [(c, fw, i) for i, c in enumerate(fw.captures)]

    async def _backward(self, fw: Forward) -> None:
        """A forward batch's ONE backward for every image's top target, when it is its turn; the graph goes."""
        try:
            self.batches.append(len(fw.targets))
            self.kinds.append("backward")
            await self.line.run(fw.finish, True)
        finally:
            fw.finish(False)                      # a no-op after the backward ran; else the graph goes
            self.held -= len(fw.targets)

    @serve.multiplexed(max_num_models_per_replica=CACHE)
    async def _claim(self, digest: str) -> str:
        """Tell Serve's router this replica holds the image ``digest`` (a multiplexed "model" id): later
        requests that name it go to this replica, where its capture is. Nothing is computed here, since
        Serve loads one multiplexed model at a time per replica and captures must batch."""
        return digest

    def _bound_cache(self) -> None:
        """At most ``size`` captures, their tensors within ``cache_bytes`` (the newest always stays): least
        recently used first out, with their pending backwards."""
        for key in trim(self.cache, self.size, self.cache_bytes, Capture.nbytes):
            self._pending.pop(key, None)

    async def _capture(self, inputs: dict[str, Any]):
        key = digest_of(inputs)
        cap = self.cache.get(key)
        if cap is None:
            await self.line.arrive()
            try:
                cap, fw, i = await self._forwards(Work(inputs, forward=True))
            finally:
                await self.line.leave()
            self._pending[key] = (fw, i)
            adapter = self.adapter
            # another target's gradients, should a method ask for one not fetched below: this image alone
            cap._grad_fn = lambda t, inputs=inputs: run_batch(adapter, [Work(inputs, int(t))])[0]._grads[int(t)]
            self.cache[key] = cap
            self._bound_cache()
        self.cache.move_to_end(key)
        # after the capture, not before: the multiplexer claims one id at a time per replica, which would
        # hand new images to the batch one by one
        await self._claim(key)
        return cap

    async def capture(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The capture's summary (no tensor bigger than the scores), as soon as its forward is done; ``ready``
        lists the targets whose gradients are there already (none for a new image: the page shows the
        forward's own map while its backward runs or waits)."""
        cap = await self._capture(inputs)
        return {**summary(cap), "ready": sorted(cap._grads)}

    async def _gradients(self, key: str, inputs: dict[str, Any], cap, t: int) -> None:
        """Target ``t``'s gradients into ``cap``: from its forward batch's own backward when that gives them
        (waiting for it), else a forward and backward made again, batched with others."""
        fw, i = self._pending.get(key, (None, 0))
        got = None
        if fw is not None and fw.coming(i, t, timeout=0):
            # awaited, not waited for in a thread: pages asking at once must not take the threads it needs
            await asyncio.shield(fw.request)
            got = fw.gradients(i, t, timeout=0)
            self._pending.pop(key, None)
        if got is None:
            got = (await self._run(Work(inputs, t)))._grads[t]
        cap._grads.setdefault(t, got)

    async def explain(self, inputs: dict[str, Any], method: str, target: Any = None,
                      params: Optional[dict[str, Any]] = None):
        """The map of ``method`` on this image (an :class:`~attnviz.types.Explanation`)."""
        from ..methods.registry import explain, get_method
        cap = await self._capture(inputs)
        spec = get_method(method)
        if spec.kind == "attention" and spec.class_specific:
            t = self.adapter.resolve_target(cap, target).index
            if t not in cap._grads:            # its batch's backward, or a new one batched with others' requests
                await self._gradients(digest_of(inputs), inputs, cap, t)
        return await asyncio.to_thread(explain, self.adapter, cap, method, target, **(params or {}))

    async def stats(self, digest: str = "") -> dict[str, Any]:
        """This replica's batch sizes so far and their kinds ("forward": new images; "backward": a forward
        batch's own, later; "again": forward and backward made again), how many captures it holds, how
        many graphs wait, whether it holds ``digest``'s capture and for which targets it has its gradients."""
        return {"batches": list(self.batches), "kinds": list(self.kinds), "captures": len(self.cache),
                "held": self.held, "holds": digest in self.cache, "pid": os.getpid(),
                "ready": sorted(self.cache[digest]._grads) if digest in self.cache else None}


def app(args: dict[str, str]):
    """The application builder for ``serve run attnviz.serve.ray_app:app model=NAME replicas=2 batch=8
    window_ms=50 cache=64 cache_mb=… threads=1 cpus=1 hold=8 age_s=10 precision=bfloat16`` (``cache_mb`` unset: an
    eighth of the memory available when each replica starts; ``precision`` unset: ATTNVIZ_PRECISION there; ``hold``
    unset: 8, none in bfloat16)."""
    batch = int(args.get("batch", MAX_BATCH))
    dep = serve.deployment(AttnvizModel, name="AttnvizModel", num_replicas=int(args.get("replicas", 2)),
                           ray_actor_options={"num_cpus": float(args.get("cpus", 1))},
                           max_ongoing_requests=4 * batch)
    return dep.bind(args.get("model"), int(args.get("cache", CACHE)), int(args.get("threads", 1)), batch,
                    float(args.get("window_ms", WINDOW_S * 1000)) / 1000, int(args["hold"]) if "hold" in args else None,
                    float(args.get("age_s", AGE_S)), int(args["cache_mb"]) if args.get("cache_mb") else None,
                    args.get("precision"))


def deploy(model: Optional[str], *, name: str = APP_NAME, **kw):
    """Start the application ``name`` serving ``model`` on the Ray instance this process is connected to
    (no HTTP route: the app servers call it through Serve handles). Returns its handle."""
    args = {"model": model, **{k: str(v) for k, v in kw.items()}}
    return serve.run(app(args), name=name, route_prefix=None)
