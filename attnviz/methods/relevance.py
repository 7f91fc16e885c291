"""Gradient-weighted attention methods.

``relevance``: Chefer, Gur & Wolf, "Generic Attention-model Explainability for
Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021
(https://arxiv.org/abs/2103.15679), eqs. 5–6 for self-attention: R starts as
I; for each layer Ā = E_h[(∇A ⊙ A)^+] and R ← R + Ā·R. The map is the query
token's row over the patches: by default the output's readout (``tokens/readout.py``: the CLS row; the
mean of the CLS and distillation rows for distilled DeiT; the mean of the patch rows for BEiT; for an
attention pooling, its attention weighted by its gradient for the target). On a captioner (a decoder
reading the image by cross-attention) the output's relevance is the encoder–decoder rule,
``caption_relevance``. Class-specific, >= 0.

``grad_rollout``: rollout (Abnar & Zuidema 2020) of Ā instead of raw
attention, with the same 0.5·A + 0.5·I residual and row normalisation.

``attn_grad``: Ā of a single layer (default: the last), the simplest
gradient-weighted view.

Relevance and gradient rollout pull the query's row down through the layers, ``v ← v + v·Ā`` from
the last layer to ``start_layer``: the same numbers as ``q·R``, without T×T products. A dense layer's
Ā is formed block of rows by block (``tokens/chunked.py``; on the chunked path from q, k, v and the
head-output gradient, ∇A = dO·Vᵀ); on Swin, through its shifted windows and patch merges.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..tokens.attention import positive_grad_attention
from ..tokens.chunked import pull, relevance_row, rollout_row
from ..tokens.mixing import pull_down, relevance_step, rollout_step
from ..types import Capture, Target
from .captioning import caption_relevance
from .common import QUERY_HELP, is_output, layer_index, target_query_vector
from .hierarchy import (block_attention_grads, block_attentions, hierarchy, is_hierarchical, to_first_grid,
                        weighted_rows)
from .registry import Param, register

QUERY = Param("query", "output", QUERY_HELP)


def weighted_attentions(capture: Capture, target: Target, start: int) -> list[Optional[torch.Tensor]]:
    """Per block Ā = E_h[(∇A ⊙ A)⁺], [n_windows, S, S] (a dense layer is one window); None before ``start``."""
    grads = block_attention_grads(capture, target.index)
    return [positive_grad_attention(a.transpose(0, 1), g.transpose(0, 1)) if li >= start else None
            for li, (a, g) in enumerate(zip(block_attentions(capture), grads))]


@register(
    "relevance",
    description="Chefer et al. 2021: attention weighted by its gradient for the target, accumulated through the layers.",
    params=(Param("start_layer", 0, "First layer accumulated (negative counts from the end)."), QUERY),
    class_specific=True, over="patches", kind="attention",
)
def relevance(adapter, capture: Capture, target: Target, *, start_layer: int, query: str):
    if capture.cross_attentions is not None and is_output(query):
        # A decoder reads the image through cross-attention: the output's relevance is the encoder–decoder
        # rule (Chefer et al. eqs. 6–10), not a fixed readout of the encoder's R (which barely depends on the word).
        out = caption_relevance(adapter, capture, target)
        return out, {"rule": "encoder–decoder (caption_relevance)"}
    start = layer_index(capture, start_layer)
    v = target_query_vector(adapter, capture, target, query)
    if not is_hierarchical(capture):
        for li in range(capture.n_layers - 1, start - 1, -1):
            v = relevance_row(v, weighted_rows(capture, target.index, li))
        return capture.layout.to_grid(v)
    v = pull_down(hierarchy(capture), v, weighted_attentions(capture, target, start), relevance_step)
    return capture.layout.to_grid(v)


@register(
    "grad_rollout",
    description="Gradient-weighted rollout: rollout of attention × its positive gradient for the target.",
    params=(
        Param("discard_ratio", 0.0, "Fraction of the weakest links dropped per layer.", min=0.0, max=0.99),
        Param("start_layer", 0, "First layer multiplied in (negative counts from the end)."),
        QUERY,
    ),
    class_specific=True, over="patches", kind="attention",
)
def grad_rollout(adapter, capture: Capture, target: Target, *, discard_ratio: float, start_layer: int, query: str):
    start = layer_index(capture, start_layer)
    v = target_query_vector(adapter, capture, target, query)
    if not is_hierarchical(capture):
        for li in range(capture.n_layers - 1, start - 1, -1):
            v = rollout_row(v, weighted_rows(capture, target.index, li), discard_ratio)
        return capture.layout.to_grid(v)
    v = pull_down(hierarchy(capture), v, weighted_attentions(capture, target, start),
                  lambda v, a, win: rollout_step(v, a, win, discard_ratio))
    return capture.layout.to_grid(v)


@register(
    "attn_grad",
    description="One layer's attention × its positive gradient for the target, heads averaged.",
    params=(Param("layer", -1, "Layer index (negative counts from the end)."), QUERY),
    class_specific=True, over="patches", kind="attention",
)
def attn_grad(adapter, capture: Capture, target: Target, *, layer: int, query: str):
    li = layer_index(capture, layer)
    if not is_hierarchical(capture):
        return capture.layout.to_grid(pull(target_query_vector(adapter, capture, target, query),
                                           weighted_rows(capture, target.index, li)))
    a_bar = weighted_attentions(capture, target, li)[li]                                    # [n_windows, S, S]
    h = hierarchy(capture)
    win = h.blocks[li]
    # on Swin: the block's own stage grid, drawn on the first grid (each token over the patches it covers)
    return to_first_grid(capture, h, win.pull(target_query_vector(adapter, capture, target, query, win.stage), a_bar),
                         win.stage)
