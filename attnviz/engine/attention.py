"""Attention rollout and relevance for a whole batch of dense captures at once.

Per image, ``methods/rollout.py`` and ``methods/relevance.py`` pull the query's row down through the
layers (``methods/hierarchy.py``): a few small tensor operations per layer, whose Python overhead over
12 layers × B images costs as much as the arithmetic. On the captures of one batched forward of a dense
ViT (``capture.CaptureBatch``: every layer's attention as one [B, H, T, T] tensor) the same steps run on
the batch, one row per image:

* rollout (Abnar & Zuidema 2020): heads fused (``fuse_heads`` over the head dimension), the weakest
  ``discard_ratio`` of each image's off-diagonal links dropped (its own threshold), ``v ← v·Â`` with
  Â = ½A + ½I rows renormalised: ``tokens.mixing.rollout_step`` on one dense window, per image;
* relevance (Chefer, Gur & Wolf 2021, eqs. 5–6): Ā = E_h[(∇A ⊙ A)⁺] from the batch's gradients
  (``grads_for_batch``), ``v ← v + v·Ā``: ``tokens.mixing.relevance_step``.

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
from ..tokens.attention import fuse_heads, positive_grad_attention
from ..types import Capture, Target
from .capture import CaptureBatch

BATCHED_ATTENTION_METHODS = ("rollout", "relevance")


def _discard(a: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero each image's weakest ``ratio`` of off-diagonal entries (``a`` [B, T, T]; per image as
    ``hierarchy._discard`` on one dense window: the k-th smallest off-diagonal value is the threshold)."""
    t = a.shape[-1]
    off = ~torch.eye(t, dtype=torch.bool, device=a.device)                          # [T, T]
    k = int(t * (t - 1) * ratio)
    if k == 0:
        return a
    thresh = a[:, off].kthvalue(k, dim=1).values                                     # [B]
    return a.masked_fill(off & (a <= thresh[:, None, None]), 0.0)


def rollout_rows(v: torch.Tensor, a: torch.Tensor, discard_ratio: float = 0.0) -> torch.Tensor:
    """v·Â per image with Â = ½A + ½I, rows renormalised: ``v`` [B, T], ``a`` [B, T, T] heads fused."""
    v = v.to(a)
    if discard_ratio > 0:
        a = _discard(a, discard_ratio)
    rows = 0.5 * a.sum(-1) + 0.5                                                     # [B, T] row sums of Â
    v = v / rows.clamp_min(1e-12)
    return 0.5 * torch.bmm(v[:, None], a)[:, 0] + 0.5 * v                            # [B, T]


def relevance_rows(v: torch.Tensor, a_bar: torch.Tensor) -> torch.Tensor:
    """v + v·Ā per image (Chefer et al. eq. 6 as a row): ``v`` [B, T], ``a_bar`` [B, T, T]."""
    v = v.to(a_bar)
    return v + torch.bmm(v[:, None], a_bar)[:, 0]


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
                a = fuse_heads(_rows(batch.attentions[li], rows).transpose(0, 1), params["head_fusion"])  # [B, T, T]
                v = rollout_rows(v, a, params["discard_ratio"])
        else:
            if grads is None:
                return None
            v = torch.stack([target_query_vector(adapter, c, t, query) for c, t in zip(caps, targets)])  # [B, T]
            for li in range(len(batch.attentions) - 1, start - 1, -1):
                a = _rows(batch.attentions[li], rows).transpose(0, 1)                  # [H, B, T, T]
                g = _rows(grads[li], rows).transpose(0, 1)
                v = relevance_rows(v, positive_grad_attention(a, g))                   # Ā: [B, T, T]
    return [c.layout.to_grid(v[k]) for k, c in enumerate(caps)]
