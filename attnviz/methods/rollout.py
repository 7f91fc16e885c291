"""Attention rollout (Abnar & Zuidema, ACL 2020, https://arxiv.org/abs/2005.00928).

Convention: residual added as 0.5·A + 0.5·I, rows renormalised, layers
multiplied from ``start_layer`` to the last. Class-agnostic: the map is the
same whatever class is chosen.

Computed as the query's row pulled down through the layers, ``v ← v·Â`` from the last layer to
``start_layer``: the same numbers as the matrix product ``q·Â_L···Â_1``, at T² per dense layer
(``tokens/chunked.py``: block by block from q and k on the chunked path) and tokens × window² per Swin
block (``tokens/mixing.py``), with Swin's patch merges in between.
"""
from __future__ import annotations

from ..tokens.chunked import Fused, rollout_row
from ..tokens.mixing import pull_down, rollout_step
from ..types import Capture, Target
from .common import HEAD_FUSIONS, QUERY_HELP, fuse_heads, layer_index, query_vector
from .hierarchy import block_attentions, hierarchy, is_hierarchical, layer_rows
from .registry import Param, register


@register(
    "rollout",
    description="Attention rollout: attention multiplied through the layers with the residual; class-agnostic.",
    params=(
        Param("head_fusion", "mean", "How heads are combined in each layer.", choices=HEAD_FUSIONS),
        Param("discard_ratio", 0.0, "Fraction of the weakest attention links dropped per layer.", min=0.0, max=0.99),
        Param("start_layer", 0, "First layer multiplied in (negative counts from the end)."),
        Param("query", "output", QUERY_HELP),
    ),
    class_specific=False, over="patches", kind="attention",
)
def rollout(adapter, capture: Capture, target: Target, *, head_fusion: str, discard_ratio: float,
            start_layer: int, query: str):
    start = layer_index(capture, start_layer)
    if not is_hierarchical(capture):
        v = query_vector(capture, query)                                            # [T]
        for li in range(capture.n_layers - 1, start - 1, -1):
            v = rollout_row(v, Fused(layer_rows(capture, li), head_fusion), discard_ratio)
        return capture.layout.to_grid(v)
    mats = [fuse_heads(a.transpose(0, 1), head_fusion) if li >= start else None     # each [n_windows, S, S]
            for li, a in enumerate(block_attentions(capture))]
    v = pull_down(hierarchy(capture), query_vector(capture, query), mats,
                  lambda v, a, win: rollout_step(v, a, win, discard_ratio))
    return capture.layout.to_grid(v)
