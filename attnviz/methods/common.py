"""Helpers shared by the attention-family methods."""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import UsageError
from ..tokens.attention import HEAD_FUSIONS, fuse_heads  # noqa: F401  (the methods' head fusions)
from ..types import Capture, TokenLayout
from .hierarchy import block_attentions, is_hierarchical, stage_query

def checked_index(i: int, n: int, what: str, plural: str) -> int:
    """Python-style index ``i`` into ``n`` things (negative counts from the end), checked; ``what`` / ``plural``
    name them in the message ("Layer" / "layers")."""
    if not -n <= i < n:
        raise UsageError(f"{what} {i} is out of range: this model has {n} {plural} (0–{n - 1}).")
    return i % n


def layer_index(capture: Capture, layer: int) -> int:
    """Python-style layer index (negative counts from the end), checked. A hierarchical model (Swin)
    counts its attention blocks across every stage, in forward order."""
    return checked_index(layer, capture.n_layers, "Layer", "layers")


def query_index(layout: TokenLayout, query: str) -> int:
    """Token index of a query: a prefix name (cls, distillation, register0, ...), 'row,col' of a patch, or 'tN'."""
    q = str(query).strip().lower()
    if q in layout.prefix_names:
        return layout.prefix_names.index(q)
    if "," in q:
        try:
            r, c = (int(x) for x in q.split(","))
        except ValueError:
            raise UsageError(f"Query '{query}' is not 'row,col'.") from None
        return layout.patch_token(r, c)
    if q.startswith("t") and q[1:].isdigit() and int(q[1:]) < layout.n_tokens:
        return int(q[1:])
    names = ", ".join(("output",) + layout.prefix_names)
    raise UsageError(f"Unknown query '{query}': use {names}, or a patch as 'row,col'.")


def is_output(query: str) -> bool:
    return str(query).strip().lower() == "output"


def query_vector(capture: Capture, query: str, readout: Optional[torch.Tensor] = None,
                 stage: Optional[int] = None) -> torch.Tensor:
    """[T] weights over query tokens: "output" (how the model's output reads its tokens: ``readout``,
    by default the capture's class-agnostic one) or one token.

    A hierarchical model (Swin) asks for the query on one ``stage`` (default: the last, which the output
    reads): the readout pulled down through the patch merges, or the token containing patch "row,col"
    of the first grid (``methods/hierarchy.py``)."""
    dtype = capture.attentions[0].dtype if capture.attentions else torch.float32
    if is_output(query):
        readout = capture.readout if readout is None else readout
        if readout is None:
            raise UsageError("This model has no single output token; choose a patch 'row,col' as the query.")
        readout = readout.to(dtype)
    qi = None if is_output(query) else query_index(capture.layout, query)
    if is_hierarchical(capture):
        h = capture.extras["hierarchy"]
        return stage_query(capture, qi, readout, h.n_stages - 1 if stage is None else stage)
    if qi is None:
        return readout
    v = torch.zeros(capture.layout.n_tokens, dtype=dtype)
    v[qi] = 1.0
    return v


def target_query_vector(adapter, capture: Capture, target, query: str, stage: Optional[int] = None) -> torch.Tensor:
    """``query_vector`` for a class-specific method: "output" reads the tokens as the model does for
    ``target`` (an attention pooling weighted by its gradient for it: ``ModelAdapter.target_readout``)."""
    return query_vector(capture, query, adapter.target_readout(capture, target) if is_output(query) else None, stage)


QUERY_HELP = ("Query: output (the token(s) the prediction reads: CLS; CLS + distillation for distilled DeiT; the patch "
              "mean for BEiT; CLS + patch mean for DINOv2; the last stage's token mean for Swin; the pooling "
              "attention for SigLIP and captioners), "
              "a prefix token (cls, distillation, registerN) or a patch 'row,col'.")


def block_heads(capture: Capture, layer: int) -> int:
    """How many heads block ``layer`` has (Swin's grow stage by stage; a ViT's are all ``capture.n_heads``)."""
    if not is_hierarchical(capture):
        return int(capture.attentions[layer_index(capture, layer)].shape[0])
    return int(block_attentions(capture)[layer_index(capture, layer)].shape[1])
