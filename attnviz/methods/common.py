"""Helpers shared by the attention-family methods."""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import UsageError
from ..types import Capture, TokenLayout

HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(a: torch.Tensor, how: str) -> torch.Tensor:
    """[H, T, T] -> [T, T] by mean, max or min over heads."""
    if how == "mean":
        return a.mean(0)
    if how == "max":
        return a.amax(0)
    if how == "min":
        return a.amin(0)
    raise UsageError(f"Head fusion must be one of {', '.join(HEAD_FUSIONS)}.")


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
    from .hierarchy import is_hierarchical, stage_query
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


def positive_grad_attention(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Chefer et al. 2021, eq. 5 head average: E_h[(∇A ⊙ A)^+], [H, T, T] -> [T, T]."""
    return (g * a).clamp_(min=0).mean(0)        # in place on the fresh product: one [H, T, T] pass less


def rollout_product(mats: list[torch.Tensor], discard_ratio: float = 0.0) -> torch.Tensor:
    """Abnar & Zuidema 2020 rollout of per-layer [T, T] matrices (earliest first), as a T×T matrix.

    The methods pull the query's row down instead (``hierarchy.rollout_step``: T² per layer, not T³, the
    same numbers); this matrix form is the reference they are tested against.

    Each layer: optionally zero the lowest ``discard_ratio`` fraction of the
    off-diagonal entries (a noise filter popularised by pytorch-grad-cam's
    ViT examples, not in the paper), add the residual as 0.5·A + 0.5·I,
    renormalise rows to sum to 1, and multiply: R = Â_L ··· Â_1.
    """
    t = mats[0].shape[-1]
    eye = torch.eye(t, dtype=mats[0].dtype, device=mats[0].device)
    result = eye.clone()
    for a in mats:
        a = a.clone()
        if discard_ratio > 0:
            off = ~eye.bool()
            vals = a[off]
            k = int(vals.numel() * discard_ratio)
            if k > 0:
                thresh = vals.kthvalue(k).values
                a[off & (a <= thresh)] = 0
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
        result = a @ result
    return result
