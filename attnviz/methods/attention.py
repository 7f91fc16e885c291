"""Raw attention: one layer, one head (or heads fused), from one query token."""
from __future__ import annotations

import numpy as np
import torch

from ..types import Capture, Target
from .common import HEAD_FUSIONS, QUERY_HELP, fuse_heads, layer_index, query_vector
from .hierarchy import block_attention_map, is_hierarchical
from .registry import Param, register


def head_or_fusion(a, head: str):
    """[H, T, T] -> [T, T]: a head index (negative from the end) or a fusion name."""
    from ..errors import UsageError
    h = str(head).strip().lower()
    if h in HEAD_FUSIONS:
        return fuse_heads(a, h)
    try:
        i = int(h)
    except ValueError:
        raise UsageError(f"Head must be an index or one of {', '.join(HEAD_FUSIONS)}, got '{head}'.") from None
    n = a.shape[0]
    if not -n <= i < n:
        raise UsageError(f"Head {i} is out of range: this layer has {n} heads (0–{n - 1}).")
    return a[i]


@register(
    "attention",
    description="Where one token looks in one layer: a row of the softmax attention matrix, per head or heads fused.",
    params=(
        Param("layer", -1, "Layer index (negative counts from the end)."),
        Param("head", "mean", "Head index, or mean / max / min over heads."),
        Param("query", "output", QUERY_HELP),
    ),
    class_specific=False, over="patches", kind="attention",
)
def attention(adapter, capture: Capture, target: Target, *, layer: int, head: str, query: str):
    if is_hierarchical(capture):     # Swin: one block's windows, on its stage's grid (methods/hierarchy.py)
        return block_attention_map(capture, layer_index(capture, layer), head, query)
    a = capture.attentions[layer_index(capture, layer)]          # [H, T, T]
    row = query_vector(capture, query) @ head_or_fusion(a, head)    # [T] @ [T, T] -> [T]
    return capture.layout.to_grid(row)


def attention_grid(capture: Capture, query: str = "output") -> np.ndarray:
    """Every layer's and head's attention from one query token at once: float32 [L, H, rows, cols].

    The heads page draws these as thumbnails; one tensor op, no per-map calls.
    """
    q = query_vector(capture, query)                                 # [T]
    rows = torch.stack([q @ a for a in capture.attentions])          # [L, H, T]
    return capture.layout.to_grid(rows)                              # [L, H, rows, cols]
