"""Attention arithmetic shared by adapters and methods: head fusion, Chefer et al.'s positive gradient-weighted
attention, and Abnar & Zuidema's rollout as a matrix product (the reference the row-vector form is tested against)."""
from __future__ import annotations

import torch

from ..errors import UsageError

HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(a: torch.Tensor, how: str, dim: int = 0) -> torch.Tensor:
    """[H, T, T] -> [T, T] by mean, max or min over heads (the head dimension ``dim``)."""
    if how == "mean":
        return a.mean(dim)
    if how == "max":
        return a.amax(dim)
    if how == "min":
        return a.amin(dim)
    raise UsageError(f"Head fusion must be one of {', '.join(HEAD_FUSIONS)}.")


def positive_grad_attention(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Chefer et al. 2021, eq. 5 head average: E_h[(∇A ⊙ A)^+], [H, T, T] -> [T, T]."""
    return (g * a).clamp_(min=0).mean(0)        # in place on the fresh product: one [H, T, T] pass less


def rollout_product(mats: list[torch.Tensor], discard_ratio: float = 0.0) -> torch.Tensor:
    """Abnar & Zuidema 2020 rollout of per-layer [T, T] matrices (earliest first), as a T×T matrix.

    The methods pull the query's row down instead (``mixing.rollout_step``: T² per layer, not T³, the
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
