"""Token mixing of a capture: its ``Hierarchy`` (Swin's own, else one dense window per layer), its block
attentions and their gradients, and the stage / grid views drawn from them.

The arithmetic (``Windows``, ``Merge``, ``Hierarchy``, the rollout and relevance steps and their
conventions: padding, shift, merge shares, readout) lives in :mod:`attnviz.tokens.mixing`, below both the
adapters that build a hierarchy and the methods that pull vectors through it.

Capture layout of a hierarchical model (``SwinAdapter``): ``extras["hierarchy"]`` is a ``Hierarchy``
(stage grids and every block's ``Windows``); ``extras["windows"]`` is the per-block softmax attention,
L × ``[n_windows, heads, window², window²]`` in the model's window and slot order; ``grads(t,
"windows")`` their gradients; ``attentions`` is empty; ``readout`` is over the last stage's tokens.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import numpy as np
import torch

from ..tokens.chunked import QK, Dense, GradWeighted, Rows
from ..tokens.mixing import Hierarchy, dense
from ..types import Capture


def is_hierarchical(capture: Capture) -> bool:
    return "hierarchy" in capture.extras


def hierarchy(capture: Capture) -> Hierarchy:
    """The capture's token mixing: its own (Swin), else one dense window per attention layer."""
    if is_hierarchical(capture):
        return capture.extras["hierarchy"]
    win = dense(capture.layout.n_tokens)
    return Hierarchy(blocks=(win,) * len(capture.attentions), grids=(None,))


def block_attentions(capture: Capture) -> tuple[torch.Tensor, ...]:
    """L × [n_windows, H, S, S] softmax attention per block (a dense layer is one window)."""
    if is_hierarchical(capture):
        return capture.extras["windows"]
    return tuple(a[None] for a in capture.attentions)


def block_attention_grads(capture: Capture, target: int) -> tuple[torch.Tensor, ...]:
    """L × [n_windows, H, S, S] d score[target] / d attention, as ``block_attentions``."""
    if is_hierarchical(capture):
        return capture.grads(target, "windows")
    return tuple(g[None] for g in capture.attention_grads(target))


def layer_rows(capture: Capture, li: int) -> Rows:
    """Dense layer ``li``'s attention [H, T, T] as rows: the capture's own tensor (full path) or its
    q, k (chunked path, ``tokens/chunked.py``)."""
    a = capture.attentions[li]
    return a if isinstance(a, QK) else Dense(a)


def weighted_rows(capture: Capture, target: int, li: int) -> Rows:
    """Chefer et al.'s Ā = E_h[(∇A ⊙ A)⁺] of dense layer ``li`` for ``target``, as rows [T, T]: from the
    attention gradient (full path) or ∇A = dO·Vᵀ block by block (chunked path)."""
    a = capture.attentions[li]
    if isinstance(a, QK):
        return GradWeighted(replace(a, dout=capture.grads(target, "head_outputs")[li]))
    return GradWeighted(Dense(a), Dense(capture.attention_grads(target)[li]))


def is_rows(capture: Capture) -> bool:
    """Whether the capture took the chunked path (attentions held as q, k per layer)."""
    return bool(capture.attentions) and isinstance(capture.attentions[0], QK)


def stage_query(capture: Capture, query_index: Optional[int], readout: Optional[torch.Tensor],
                stage: int) -> torch.Tensor:
    """[N_stage] the query on a stage: the readout (on the last stage) pulled down through the merges, or a
    one-hot on the token containing first-grid token ``query_index``."""
    h = hierarchy(capture)
    if query_index is None:
        return h.pull_merges(readout, h.n_stages - 1, stage)
    n = h.blocks[h.stage_blocks(stage)[0]].n_tokens
    v = torch.zeros(n, dtype=readout.dtype if readout is not None else torch.float32)
    v[int(h.ancestor(stage)[query_index])] = 1.0
    return v


def to_first_grid(capture: Capture, h: Hierarchy, v: torch.Tensor, stage: int) -> np.ndarray:
    """A stage vector drawn on the capture's layout ([..., rows, cols])."""
    return capture.layout.to_grid(h.expand(v, stage) if stage else v)


def stage_grid(h: Hierarchy, v: torch.Tensor, stage: int) -> np.ndarray:
    """A stage vector on that stage's own grid, float32 [..., rows_s, cols_s]."""
    rows, cols = h.grids[stage]
    return v.detach().float().cpu().numpy().reshape(*v.shape[:-1], rows, cols).astype(np.float32)


def stage_info(capture: Capture) -> list[dict]:
    """One dict per stage for labels: stage, grid (rows, cols), blocks (global indices), window, shifts, heads."""
    h = hierarchy(capture)
    windows = capture.extras.get("windows", ())
    out = []
    for s in range(h.n_stages):
        ids = h.stage_blocks(s)
        out.append({"stage": s, "grid": h.grids[s], "blocks": ids, "window": h.blocks[ids[0]].window,
                    "shifts": [h.blocks[i].shift for i in ids],
                    "heads": int(windows[ids[0]].shape[1]) if windows else 0})
    return out
