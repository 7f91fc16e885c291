"""One model's batching line in the app process: sessions' forwards and backwards share batches.

:class:`ModelServer` is what the app's engine calls instead of ``adapter.capture`` for a family that
batches (``batched.batchable``). A capture request (a session's new image) waits in a
:class:`~attnviz.queue.Batcher` until it runs with other sessions' new images in one batched **forward**
(:func:`~.batched.run_forward`): the page gets its capture as soon as that forward is done, enough for
every class-agnostic view (attention rollout: the page's first map). The lane that ran the forward then
runs the batch's ONE backward for every image's top target, unless other sessions' new images are
waiting: those go first. The batch's graph then waits for its backward as a request in the same line,
behind every new image, while fewer than ``hold`` images' graphs wait (about 140 MB each for ViT-B/16);
beyond that the graph is given up, and a page's class-specific map (relevance, the default) becomes a
later request (:func:`~.batched.run_batch`: that image's forward and backward again, batched with
others). A capture keeps no graph in any case. A backward that has waited ``age`` seconds (10) may go ahead
of waiting new images for ``share`` (a tenth) of the model's time (:class:`~attnviz.queue.Share`), so a
steady stream of them (more students than the cores serve) cannot starve the class-specific maps, nor
those the new images' first maps.

The app reads the batch size and wait window from ``ATTNVIZ_BATCH`` and ``ATTNVIZ_BATCH_WINDOW_MS``
(``ui/settings.py``; README "Batching a burst").
"""
from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from ..queue import Batcher, TurnLock
from ..types import Capture
from .batched import Forward, Work, batch_key, batchable, run_batch, run_forward

MAX_BATCH = 4          # the app's default (ui/settings.py, measured: README "Batching a burst")
WINDOW_S = 0.05        # how long a lone request waits for batch-mates (README "Batching a burst")
HOLD = 8               # images whose forward graph may wait for its backward (ATTNVIZ_GRAPH_HOLD; see auto_hold)
# The share of available memory held graphs may take with ATTNVIZ_GRAPH_HOLD=auto (the default). An eighth: ViT-B/16
# then holds 30 graphs with 22 GB available; a quarter (64) measured worse first maps for 100 students over a
# minute (p95 15.1 s against 7.8 and 9.7 s with 30) and no less server CPU (216.9 against 194.8 and 221.2 s).
HOLD_MEMORY_SHARE = 0.125
HOLD_MAX = 64
AGE_S = 10.0           # a backward waiting this long may go ahead of new images, within SHARE (ATTNVIZ_BATCH_AGE_S)
SHARE = 0.1            # ... of the model's time while new images wait (queue.Share; ATTNVIZ_BACKWARD_SHARE)
ALONE_THREADS = 0      # threads for model work that runs alone (ATTNVIZ_ALONE_THREADS; 0: the lane's own)


class _Held:
    """A line request: the backward of a forward batch whose graph was kept (``Forward.hold``)."""

    forward = False

    def __init__(self, fw: Forward):
        self.fw = fw


class ModelServer:
    """Batched captures of one adapter for every session and thread of the process."""

    def __init__(self, adapter, *, max_batch: int = MAX_BATCH, window: float = WINDOW_S, lanes: int = 1,
                 log: Optional[str] = None, hold: int = HOLD, age: Optional[float] = AGE_S,
                 alone_threads: int = ALONE_THREADS, share: float = SHARE):
        self.adapter, self.log, self.hold = adapter, log, int(hold)
        self.alone_threads = max(0, int(alone_threads))
        self._log_lock = threading.Lock()
        self._held = 0                     # images whose graph waits in the line for its backward
        self._held_lock = threading.Lock()
        lock = adapter.lock if isinstance(getattr(adapter, "lock", None), TurnLock) else None
        self.batcher = Batcher(self._run_batch, max_batch=max_batch, window=window,
                               lanes=lanes, lock=lock, name=f"attnviz-batch-{getattr(adapter, 'name', 'model')}",
                               on_batch=self._write_log if log else None, after=self._after, age=age,
                               share=share)

    @contextmanager
    def _threads(self) -> Iterator[None]:
        """The lane's torch threads for the work it starts now: ``alone_threads`` when that work is the only
        model work running and nothing waits (a lone student: every core on their forward and backward,
        instead of one lane's share), else the lane's own. ``torch.set_num_threads`` holds for the calling
        thread once its pool has started, so the other lane and the pages keep theirs; it is put back after."""
        lock = self.batcher.lock
        n = self.alone_threads
        if not n or (lock is not None and lock.waiting() > 1) or self.batcher.in_line():
            yield
            return
        import torch
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _run_batch(self, works: list) -> list:
        """A batch of one kind (``batch_key``): forwards alone -> (capture, its Forward, its row); a held
        graph's backward -> its Forward; else captures with their target's gradients."""
        with self._threads():
            return self._run_kind(works)

    def _run_kind(self, works: list) -> list:
        if isinstance(works[0], _Held):
            fw = works[0].fw
            try:
                fw.finish(backward=True)
            finally:
                with self._held_lock:
                    self._held -= len(fw.targets)
            return [fw]
        if works[0].forward:
            fw = run_forward(self.adapter, works, graph=self._graph_useful(len(works)))
            return [(c, fw, i) for i, c in enumerate(fw.captures)]
        return run_batch(self.adapter, works)

    def _graph_useful(self, n: int) -> bool:
        """Whether a forward batch of ``n`` images should keep its graph: room to hold it, or no new image
        waiting (its backward may then run at once). Else the graph would be given up unused (``_after``)
        and the forward runs without one (cheaper; the captures are the same)."""
        with self._held_lock:
            if self._held + n <= self.hold:
                return True
        return self.batcher.new_waiting() == 0

    def _after(self, values: list, idle: bool) -> None:
        """After a forward batch is handed out: its backward now if no new image waits; else, while fewer
        than ``hold`` images' graphs wait, the graph is kept and its backward queued behind the new images;
        else the graph goes (a page's gradients are then a new forward and backward)."""
        if not (values and isinstance(values[0], tuple) and isinstance(values[0][1], Forward)):
            return
        fw = values[0][1]
        if not fw.graph:
            return                                # nothing to run later: its pages' gradients are new requests
        try:
            if idle:
                with self._threads():
                    fw.finish(backward=True)
                return
            n = len(fw.targets)
            with self._held_lock:
                keep = self._held + n <= self.hold
                if keep:
                    self._held += n
            if keep:
                fw.hold(self.batcher.submit(_Held(fw), key=("held", id(fw))))
        finally:
            if fw.request is None:
                fw.finish(backward=False)        # undecided (given up, or an error above): the graph goes

    def _write_log(self, batch: list, seconds: float) -> None:
        """One JSON line per batch in ``log`` (``ATTNVIZ_BATCH_LOG``): what ``attnviz loadtest`` reads for
        the batch sizes and queue waits. Appended whole, so several app servers may share one file."""
        payload = batch[0].payload
        kind = "held" if isinstance(payload, _Held) else "forward" if payload.forward else "backward"
        line = json.dumps({"t": time.time(), "pid": os.getpid(), "model": getattr(self.adapter, "name", ""),
                           "size": len(batch), "first": sum(1 for r in batch if r.first and not r.promoted),
                           "promoted": sum(1 for r in batch if r.promoted),
                           "images": len(payload.fw.targets) if kind == "held" else len(batch),
                           "kind": kind,
                           "graph": bool(kind != "forward" or not isinstance(batch[0].value, tuple)
                                         or batch[0].value[1].graph),
                           "followed": bool(kind == "forward" and isinstance(batch[0].value, tuple)
                                            and batch[0].value[1].ran_backward),
                           "held": bool(kind == "forward" and isinstance(batch[0].value, tuple)
                                        and batch[0].value[1].request is not None),
                           "waits_s": [round(r.queue_wait, 4) for r in batch], "run_s": round(seconds, 4),
                           "run_cpu_s": round(batch[0].run_cpu_s, 4), "after_cpu_s": round(batch[0].after_cpu_s, 4)})
        with self._log_lock, open(self.log, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def __deepcopy__(self, memo) -> None:
        # A copy of the adapter (the randomisation check's) is not served by this line: it has no server.
        return None

    def _inline(self) -> bool:
        """Whether this thread already holds the model (a page that took its turn first): then it runs
        its own request at once; waiting for a batch would wait for the lane it holds."""
        lock = self.batcher.lock
        return lock is not None and lock.holds()

    def _run(self, work: Work, first: bool) -> Capture:
        if self._inline():
            return run_batch(self.adapter, [work])[0]
        return self.batcher(work, key=batch_key(work.inputs, "backward"), first=first)

    def capture(self, inputs: dict[str, Any], *, first: bool = True) -> Capture:
        """One image's capture as soon as its (batched) forward is done; its gradients for any target come
        when first asked for (the top target's from the batch's own backward when that ran, else through the
        line, behind every new image). A page that already holds the model's lane gets forward and
        backward at once, as before."""
        if self._inline():
            cap = run_batch(self.adapter, [Work(inputs)])[0]
            fw, i = None, 0
        else:
            cap, fw, i = self.batcher(Work(inputs, forward=True), key=batch_key(inputs, "forward"), first=first)
        cap._grad_fn = _CaptureGrads(self, inputs, fw, i)
        return cap

    def stats(self) -> dict[str, Any]:
        return self.batcher.stats()


class _CaptureGrads:
    """A served capture's gradient function: its batch's own backward when that gives the target, else
    that image's forward and backward again, batched with others at the back of the line."""

    def __init__(self, server: ModelServer, inputs: dict[str, Any], fw: Optional[Forward], i: int):
        self.server, self.inputs, self.fw, self.i = server, inputs, fw, i

    def waits(self, target: int) -> bool:
        """Whether ``target``'s gradients wait for a request in the line (its batch's held backward, or a new
        forward and backward) rather than come from its batch's backward running now: a page shows the
        forward's own map meanwhile."""
        fw = self.fw
        return (fw is None or not fw.coming(self.i, int(target))
                or (fw.request is not None and not fw.request.done.is_set()))

    def __call__(self, target: int) -> dict[str, Any]:
        fw = self.fw
        if fw is not None and fw.coming(self.i, int(target)):
            if fw.request is not None:      # its batch's backward waits in the line: the page sees its place
                self.server.batcher.wait(fw.request, withdraw=False)
            got = fw.gradients(self.i, int(target))
            if got is not None:
                return got
        return self.server._run(Work(self.inputs, int(target)), False)._grads[int(target)]


def auto_hold(adapter, available: Optional[int] = None) -> int:
    """How many images' forward graphs the line may hold with ``ATTNVIZ_GRAPH_HOLD=auto``: an eighth of
    the memory available now (``available``, bytes) over one image's graph at the model's native input size,
    as its ``estimate`` puts it (``Cost.graph_bytes``: the tensors autograd saves, checked against a measurement
    in tests/test_serve.py; before session 11 the relevance's peak less the weights, about 2× that), between
    :data:`HOLD` and :data:`HOLD_MAX`; :data:`HOLD` where the family has no estimate. ViT-B/16 (89 MB a graph)
    with 22 GB available: 30; with 5 GB: 8. Measured (README "Batching a burst"): in 5-s bursts of 30, holding
    every graph cut the server CPU by 4–19 % and the relevance maps' p95 by 6–28 % against 8, for 1.3–1.4 GB more
    memory, but the first maps' p95 was the same or later (forwards that keep a graph cost more); with 100
    students over a minute 8 gave 61 of 100 graphs up (made again at twice the cost), 30 about 30, 64 about 12
    but with later first maps (:data:`HOLD_MEMORY_SHARE`).

    None in bfloat16 (``ATTNVIZ_PRECISION``): a held graph saves one forward when its backward comes, and a
    bfloat16 forward costs less than the fresh memory the graph holds (session 12, 5-s bursts of 30 on ViT-B/16:
    holding none, first map p95 4.0–5.5 → 1.5–1.7 s, relevance 7.5–9.6 → 4.8–5.5 s, server CPU 21–25 → 18–19 s;
    100 students over a minute: the same within a run's spread). In float32 holding none there gave first maps
    sooner (4.8 → 2.9 s) but relevance later (9.5 → 13.1 s) and 28 → 36 CPU s, so float32 keeps the memory rule."""
    import torch

    from ..tokens.budget import available_memory

    if getattr(adapter, "precision", torch.float32) != torch.float32:
        return 0

    side = getattr(adapter, "native_size", None)
    cost = adapter.estimate(side) if side else None
    if cost is None:
        return HOLD
    weights = sum(p.numel() * p.element_size() for p in adapter.model.parameters())
    per = max(1, cost.graph_bytes or cost.relevance_bytes - weights)             # one image's graph, bytes
    avail = available_memory() if available is None else int(available)
    return int(min(HOLD_MAX, max(HOLD, HOLD_MEMORY_SHARE * avail // per)))


def attach_server(adapter, *, max_batch: int = MAX_BATCH, window: float = WINDOW_S, lanes: int = 1,
                  log: Optional[str] = None, hold: Optional[int] = HOLD, age: Optional[float] = AGE_S,
                  alone_threads: int = ALONE_THREADS, share: float = SHARE) -> Optional[ModelServer]:
    """Give ``adapter`` its :class:`ModelServer` (``adapter.server``) when its family batches and
    ``max_batch`` is above 1; else None (the app keeps its one-image path). ``hold`` None: :func:`auto_hold`."""
    if not (batchable(adapter) and max_batch > 1):
        adapter.server = None
        return None
    adapter.server = ModelServer(adapter, max_batch=max_batch, window=window, lanes=lanes, log=log,
                                 hold=auto_hold(adapter) if hold is None else hold,
                                 age=age, alone_threads=alone_threads, share=share)
    return adapter.server
