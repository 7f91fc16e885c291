"""The batched worker: one forward and one backward for requests from many sessions.

Each request is a prepared image and the target whose gradients it needs (None: its top target, what a
page's first, class-specific map explains). :func:`run_batch` runs them as one forward with the graph
kept, takes every image's gradient for its own target in ONE backward (``d(Σ_i s_i[t_i]) / dA`` has
``d s_i[t_i] / dA_i`` in row i: images of a batch do not interact, ``engine.capture``), then drops the
graph. Each capture it returns owns copies of its rows (not views that would keep the whole batch's
tensors alive), holds its attentions and its target's gradients, and nothing else: no autograd graph
outlives a batch, so a capture costs 2·L·H·T²·4 bytes (45 MB for ViT-B/16 at 224²) whatever the load.

:func:`run_forward` splits the same work in two (issue 23, a classroom burst): the forward alone, whose
captures (attentions and scores: every class-agnostic view, such as attention rollout) are handed out at
once, and a :class:`Forward` that keeps the batch's graph until its owner either runs the ONE backward
for every image's top target (:meth:`Forward.finish` with ``backward=True``) or gives the graph up; a
capture's gradients then come from a new :func:`run_batch` request. Either way they are the gradients
of that image's own forward: the same numbers as the one-shot capture.

The same functions serve the app in-process (:mod:`.local`) and on a Ray Serve replica (:mod:`.ray_app`).
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Any, Hashable, Optional, Sequence

import torch

from ..engine.capture import batchable, capture_batch, grads_for_batch
from ..types import Capture

__all__ = ["Work", "Forward", "batchable", "run_batch", "run_forward", "batch_key"]


@dataclass(frozen=True)
class Work:
    """One image's request: its prepared inputs and the target to differentiate (None: the top one);
    ``forward``: the forward alone for now (:func:`run_forward`)."""

    inputs: dict[str, Any]
    target: Optional[int] = None
    forward: bool = False


def batch_key(inputs: dict[str, Any], kind: str = "capture") -> Hashable:
    """What may share a batch: the kind of work (a forward alone, or forward and backward) and the model
    input's shape (one image, channels, height, width)."""
    return (kind, tuple(inputs["pixel_values"].shape))


def _own(cap: Capture, target: Optional[int]) -> Capture:
    """The capture with its own copies of its batch rows, its target's gradients (none for None), and no
    graph."""
    grads = {} if target is None else {target: _own_grads(cap, target)}
    # a batch row is a view of the batch's tensor: copied, so the batch is freed; a chunked capture's q, k rows
    # (large inputs, captured one image at a time) are its own already
    own = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in cap.attentions)
    return dataclasses.replace(cap, attentions=own, scores=cap.scores.clone(),
                               _grad_fn=None, _grads=grads, _grad_lock=threading.Lock())


def _own_grads(cap: Capture, target: int) -> dict[str, tuple[torch.Tensor, ...]]:
    """Copies of the capture's gradients for ``target`` (its rows of the batch's, L × [H, T, T] each)."""
    return {k: tuple(g.clone() for g in v) for k, v in cap._grads[target].items()}


class Forward:
    """A batch's forward whose captures are already handed out, and the backward it may still give them.

    ``captures[i]`` is image i's capture without gradients; ``targets[i]`` its top target. The batch's graph
    is kept until :meth:`finish`: with ``backward=True`` ONE backward gives every image its top target's
    gradients (``gradients(i, t)``), then the graph goes; with False the graph just goes. The owner decides
    right after handing the captures out: the backward now (in the same lane), later (:meth:`hold`: a
    request in its line, the graph kept meanwhile), or never. A page that asks before the backward ran
    waits for it; a page that asks for another target, or after the graph was given up, gets None.
    """

    def __init__(self, batch: Sequence[Capture], captures: list[Capture], targets: list[int], graph: bool = True):
        self._batch, self.captures, self.targets, self.graph = list(batch), captures, targets, bool(graph)
        self._grads: list[Optional[dict]] = [None] * len(captures)
        self._done = threading.Event()
        self._decided = threading.Event()
        self.ran_backward = self.planned = False
        self.request: Any = None          # the line's request that will run the backward later (``hold``)
        if not self.graph:                # a forward without a graph: no backward will come from it
            self._batch = []
            self._decided.set()
            self._done.set()

    def hold(self, request: Any) -> None:
        """The backward runs later, as ``request`` in the owner's line; the graph is kept until then."""
        if not self._decided.is_set():
            self.request, self.planned = request, True
            self._decided.set()

    def finish(self, backward: bool) -> None:
        """Run the batch's backward (``backward``, or as planned by :meth:`hold`) or not; then drop the graph.
        Once; never raises."""
        if self._done.is_set():
            return
        if not self._decided.is_set():
            self.planned = bool(backward)
            self._decided.set()
        backward = self.planned
        try:
            if backward:
                with torch.enable_grad():
                    grads_for_batch(self._batch, self.targets, last=True)     # one backward; graph released
                for i, (c, t) in enumerate(zip(self._batch, self.targets)):
                    self._grads[i] = _own_grads(c, t)                         # own copies of the batch's rows
                self.ran_backward = True
        except Exception:   # noqa: BLE001  (the pages then ask for a new request, which reports any error)
            self._grads = [None] * len(self.captures)
        finally:
            for c in self._batch:
                c.release_graph()
            # each capture's gradient function keeps this object: it keeps no batch-mate's capture
            self._batch, self.captures = [], []
            self._done.set()

    def coming(self, i: int, target: int, timeout: float = 1.0) -> bool:
        """Whether this batch's backward gives (or gave) image ``i``'s gradients for ``target``: the owner
        decides right after handing the captures out (waited for up to ``timeout`` seconds)."""
        if target != self.targets[i] or not self._decided.wait(timeout) or not self.planned:
            return False
        return not self._done.is_set() or self._grads[i] is not None

    def gradients(self, i: int, target: int, timeout: Optional[float] = None) -> Optional[dict]:
        """Image ``i``'s gradients for ``target`` from this batch's backward, or None (not its top target,
        or the graph was given up)."""
        if target != self.targets[i]:
            return None
        self._done.wait(timeout)
        if not self._done.is_set():
            return None
        got, self._grads[i] = self._grads[i], None        # the capture keeps them now (Capture.grads)
        return got


def run_forward(adapter, works: Sequence[Work], graph: bool = True) -> Forward:
    """The forward of ``works`` (all of one input size) with the batch's graph kept: a :class:`Forward`
    whose captures hold attentions and scores but no gradients yet (each its own rows, no graph).

    ``graph=False``: the forward without autograd (its graph would be given up at once: no room to hold it
    and new images waiting; it saves the graph's bookkeeping, ~10 % of a ViT-B/16 forward on one CPU
    thread). The captures hold the same numbers; their gradients come from a later :func:`run_batch`."""
    caps = capture_batch(adapter, [w.inputs for w in works], grads=graph)
    targets = [w.target if w.target is not None else adapter.resolve_target(c, None).index
               for w, c in zip(works, caps)]
    return Forward(caps, [_own(c, None) for c in caps], targets, graph=graph)


def run_batch(adapter, works: Sequence[Work]) -> list[Capture]:
    """Captures of ``works`` (all of one input size) from one forward and one backward, in their order.

    For a family :func:`batchable` does not cover, each image runs alone (the adapter's own capture),
    with the same result: its target's gradients cached and its graph dropped.
    """
    if not batchable(adapter):
        out = []
        for w in works:
            cap = adapter.capture(w.inputs, grads=True)
            t = w.target if w.target is not None else adapter.resolve_target(cap, None).index
            cap.attention_grads(t)
            cap.release_graph()
            out.append(cap)
        return out
    caps = capture_batch(adapter, [w.inputs for w in works], grads=True)
    targets = [w.target if w.target is not None else adapter.resolve_target(c, None).index
               for w, c in zip(works, caps)]
    with torch.enable_grad():
        grads_for_batch(caps, targets, last=True)       # one backward; the batch's graph is released
    return [_own(c, t) for c, t in zip(caps, targets)]
