"""Attention rollout and relevance for a whole batch of dense captures at once.

Per image, ``methods/rollout.py`` and ``methods/relevance.py`` pull the query's row down through the
layers (``methods/hierarchy.py``): a few small tensor operations per layer, whose Python overhead over
12 layers × B images costs as much as the arithmetic. On the captures of one batched forward of a dense
ViT (``capture.CaptureBatch``: every layer's attention as one [B, H, T, T] tensor) the same steps run on
the batch, one row per image:

* rollout (Abnar & Zuidema 2020): heads fused, the weakest ``discard_ratio`` of each image's
  off-diagonal links dropped (its own threshold), ``v ← v·Â`` with Â = ½A + ½I rows renormalised;
* relevance (Chefer, Gur & Wolf 2021, eqs. 5–6): Ā = E_h[(∇A ⊙ A)⁺] from the batch's gradients
  (``grads_for_batch``), ``v ← v + v·Ā``.

Both are the single-image methods' own steps (``tokens.chunked.rollout_row`` / ``relevance_row``, which
broadcast over a leading batch dimension): one implementation for one image, a batch, and the chunked path.

The query vectors are the per-image methods' own (``query_vector`` / ``target_query_vector``), the
layers those from ``start_layer``. A test holds the maps to ``explain``'s, image by image. Anything else
(Swin's windows, a captioner's cross-attention, captures not from one batch) is not batched here:
:func:`batched_attention_maps` returns None and the worker explains image by image.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..methods.common import layer_index, query_vector, target_query_vector
from ..methods.hierarchy import is_hierarchical
from ..tokens.chunked import Dense, Fused, GradWeighted, relevance_row, rollout_row
from ..types import Capture, Target
from .capture import CaptureBatch

BATCHED_ATTENTION_METHODS = ("rollout", "relevance")


def _rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The batch rows ``rows`` of ``x`` [B, ...]; ``x`` itself when they are all of it, in order."""
    if rows.numel() == x.shape[0] and bool((rows == torch.arange(x.shape[0])).all()):
        return x
    return x[rows.to(x.device)]


def batched_attention_maps(adapter, method: str, batch: Sequence[Capture], idx: Sequence[int],
                           targets: Sequence[Target], params: dict[str, Any],
                           grads: Optional[tuple[torch.Tensor, ...]] = None) -> Optional[list[np.ndarray]]:
    """[rows, cols] maps of ``method`` for the captures ``batch[i]``, ``i`` in ``idx`` (``targets`` in the
    same order; ``params`` resolved), computed on the batch's tensors; None when it cannot be batched.

    ``grads`` (relevance): the batch gradients of :func:`~.capture.grads_for_batch` for these targets.
    """
    if method not in BATCHED_ATTENTION_METHODS or not isinstance(batch, CaptureBatch) or not idx:
        return None
    caps = [batch[i] for i in idx]
    if any(is_hierarchical(c) or c.cross_attentions is not None or not c.attentions for c in caps):
        return None
    rows = torch.as_tensor(list(idx))
    start = layer_index(caps[0], params["start_layer"])
    query = params["query"]
    with torch.no_grad():
        if method == "rollout":
            v = torch.stack([query_vector(c, query) for c in caps])                 # [B, T]
            for li in range(len(batch.attentions) - 1, start - 1, -1):
                a = Fused(Dense(_rows(batch.attentions[li], rows)), params["head_fusion"])   # [B, T, T] rows
                v = rollout_row(v, a, params["discard_ratio"])
        else:
            if grads is None:
                return None
            v = torch.stack([target_query_vector(adapter, c, t, query) for c, t in zip(caps, targets)])  # [B, T]
            for li in range(len(batch.attentions) - 1, start - 1, -1):
                a = Dense(_rows(batch.attentions[li], rows))                           # [B, H, T, T]
                g = Dense(_rows(grads[li], rows))
                v = relevance_row(v, GradWeighted(a, g))                               # Ā: [B, T, T] rows
    return [c.layout.to_grid(v[k]) for k, c in enumerate(caps)]
