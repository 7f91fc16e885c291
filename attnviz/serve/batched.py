"""The batched worker: one forward and one backward for requests from many sessions.

Each request is a prepared image and the target whose gradients it needs (None: its top target, what a
page's first, class-specific map explains). :func:`run_batch` runs them as one forward with the graph
kept, takes every image's gradient for its own target in ONE backward (``d(Σ_i s_i[t_i]) / dA`` has
``d s_i[t_i] / dA_i`` in row i: images of a batch do not interact, ``engine.capture``), then drops the
graph. Each capture it returns owns copies of its rows (not views that would keep the whole batch's
tensors alive), holds its attentions and its target's gradients, and nothing else: no autograd graph
outlives a batch, so a capture costs 2·L·H·T²·4 bytes (45 MB for ViT-B/16 at 224²) whatever the load.

The same function serves the app in-process (:mod:`.local`) and on a Ray Serve replica (:mod:`.ray_app`).
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Any, Hashable, Optional, Sequence

import torch

from ..engine.capture import batchable, capture_batch, grads_for_batch
from ..types import Capture

__all__ = ["Work", "batchable", "run_batch", "batch_key"]


@dataclass(frozen=True)
class Work:
    """One image's request: its prepared inputs and the target to differentiate (None: the top one)."""

    inputs: dict[str, Any]
    target: Optional[int] = None


def batch_key(inputs: dict[str, Any]) -> Hashable:
    """What may share a forward: the model input's shape (one image, channels, height, width)."""
    return tuple(inputs["pixel_values"].shape)


def _own(cap: Capture, target: int) -> Capture:
    """The capture with its own copies of its batch rows, its target's gradients, and no graph."""
    grads = {k: tuple(g.clone() for g in v) for k, v in cap._grads[target].items()}   # L × [H, T, T]
    # a batch row is a view of the batch's tensor: copied, so the batch is freed; a chunked capture's q, k rows
    # (large inputs, captured one image at a time) are its own already
    own = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in cap.attentions)
    return dataclasses.replace(cap, attentions=own, scores=cap.scores.clone(),
                               _grad_fn=None, _grads={target: grads}, _grad_lock=threading.Lock())


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
