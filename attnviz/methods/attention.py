"""Raw attention: one layer, one head (or heads fused), from one query token."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UsageError
from ..tokens.chunked import Fused, Head, Rows, pull
from ..tokens.mixing import block_rows
from ..types import Capture, Target
from .common import HEAD_FUSIONS, QUERY_HELP, fuse_heads, layer_index, query_vector
from .hierarchy import block_attentions, hierarchy, is_hierarchical, layer_rows, stage_grid, to_first_grid
from .registry import Param, register


def head_choice(head: str, n: int):
    """A fusion name, or a head index (negative from the end) checked against ``n`` heads."""
    h = str(head).strip().lower()
    if h in HEAD_FUSIONS:
        return h
    try:
        i = int(h)
    except ValueError:
        raise UsageError(f"Head must be an index or one of {', '.join(HEAD_FUSIONS)}, got '{head}'.") from None
    if not -n <= i < n:
        raise UsageError(f"Head {i} is out of range: this layer has {n} heads (0–{n - 1}).")
    return i % n


def head_or_fusion(a, head: str):
    """[H, T, T] -> [T, T]: a head index (negative from the end) or a fusion name."""
    h = head_choice(head, a.shape[0])
    return fuse_heads(a, h) if isinstance(h, str) else a[h]


def head_rows(rows: Rows, head: str) -> Rows:
    """``head_or_fusion`` on an [H, T, T] attention given by rows (``tokens/chunked.py``)."""
    h = head_choice(head, rows.lead[-1])
    return Fused(rows, h) if isinstance(h, str) else Head(rows, h)


def block_attention_map(capture: Capture, li: int, head: str, query: str) -> np.ndarray:
    """Block ``li``'s attention from ``query``, one head or heads fused (``head_or_fusion``), on its
    stage's grid drawn on the first grid: zero outside the query's window, the shift undone."""
    h = hierarchy(capture)
    win = h.blocks[li]
    a = head_or_fusion(block_attentions(capture)[li].transpose(0, 1), head)          # [n_windows, S, S]
    return to_first_grid(capture, h, win.pull(query_vector(capture, query, stage=win.stage), a), win.stage)


def swin_head_grid(capture: Capture, stage: int, query: str = "output") -> np.ndarray:
    """Every block × head of one stage, as the query's attention on that stage's grid:
    float32 [blocks_in_stage, heads, rows_s, cols_s] (the Heads page's thumbnails for a hierarchical model).

    ``query``: "output" or a first-grid patch "row,col" (on this stage: the token that contains it; the
    stage's own token (r, c) is the patch f"{r << stage},{c << stage}"). Each map is zero outside the query's
    window; shifted blocks are drawn with the shift undone. ``stage_info`` labels the stages.
    """
    if not is_hierarchical(capture):
        raise UsageError("This model has no stages: use attention_grid for its layers × heads.")
    h = hierarchy(capture)
    if not 0 <= stage < h.n_stages:
        raise UsageError(f"Stage {stage} is out of range: this model has {h.n_stages} stages (0–{h.n_stages - 1}).")
    q = query_vector(capture, query, stage=stage)                                  # [N_stage]
    windows = capture.extras["windows"]
    rows = torch.stack([block_rows(h, li, q, windows[li]) for li in h.stage_blocks(stage)])   # [B_s, H, N_s]
    return stage_grid(h, rows, stage)


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
    if is_hierarchical(capture):     # Swin: one block's windows, on its stage's grid (block_attention_map)
        return block_attention_map(capture, layer_index(capture, layer), head, query)
    a = layer_rows(capture, layer_index(capture, layer))          # [H, T, T] as rows
    row = pull(query_vector(capture, query), head_rows(a, head))    # [T] @ [T, T] -> [T]
    return capture.layout.to_grid(row)


def attention_grid(capture: Capture, query: str = "output") -> np.ndarray:
    """Every layer's and head's attention from one query token at once: float32 [L, H, rows, cols].

    The heads page draws these as thumbnails; one product per layer (block by block on the chunked path).
    """
    q = query_vector(capture, query)                                 # [T]
    rows = torch.stack([pull(q.expand(capture.attentions[li].shape[0], -1), layer_rows(capture, li))
                        for li in range(capture.n_layers)])          # [L, H, T]
    return capture.layout.to_grid(rows)                              # [L, H, rows, cols]
