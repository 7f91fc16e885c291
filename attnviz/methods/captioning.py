"""Per-word maps for captioning models: which image regions produced caption token t.

Row ``t`` of every decoder attention is the position that predicts caption
token ``t`` (see ``adapters/captioning.py``); maps are over the image
encoder's patch grid, prefix (CLS) tokens dropped.

``cross_attention``: that row of one decoder layer's cross-attention (GIT:
of the caption-to-image slice of its joint self-attention), one head or
heads fused. Class-agnostic in what it computes, but it is the chosen
token's row, so it is per token. ``meta["image_share"]`` is the row's mass
on the image tokens (1 for cross-attention; GIT's share of attention spent
on the image rather than on the text).

``caption_relevance``: Chefer, Gur & Wolf, "Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers",
ICCV 2021 (https://arxiv.org/abs/2103.15679), section 3, with the token's
logit as the score and Ā = E_h[(∇A ⊙ A)^+] (eq. 5) for every attention map:

* initialisation (eqs. 3–4): R^ii = I, R^tt = I, R^ti = 0;
* image encoder self-attention (eq. 6): R^ii ← R^ii + Ā^ii R^ii;
* decoder self-attention (eqs. 6, 7): R^tt ← R^tt + Ā^tt R^tt and
  R^ti ← R^ti + Ā^tt R^ti;
* decoder cross-attention (eq. 10): R^ti ← R^ti + (R̄^tt)ᵀ Ā^ti R̄^ii, with
  eqs. 8–9: R̄ = row-normalised (R − I) + I (rows of R − I that are all zero
  stay zero). Eq. 11 adds Ā^ti R^it to R^tt, and R^it = 0 here (the image
  encoder never sees the text), so it adds nothing;
* map = row t of R^ti over the patches.

GIT has one joint self-attention (image tokens first, then the text) on top
of a ViT image encoder: eq. 6 over the whole joint sequence, composed with
the image encoder's R^ii (what eq. 6 gives when the encoder layers are read
as the first layers of the same stack: R = R_joint · diag(R^ii, I)); map =
row (T_image + t) of R_joint restricted to the image tokens, times R^ii.
Maps are >= 0.
"""
from __future__ import annotations

import numpy as np
import torch

from ..types import Capture, Target
from .attention import head_or_fusion
from ..tokens.attention import positive_grad_attention
from .common import checked_index
from .registry import Param, register

FAMILY = ("captioning",)


def decoder_layer_index(capture: Capture, layer: int) -> int:
    return checked_index(layer, len(capture.cross_attentions or ()), "Decoder layer", "decoder layers")


@register(
    "cross_attention",
    description="Where the decoder looked when it produced this word: one decoder layer's attention to the image, "
                "per head or heads fused.",
    params=(Param("layer", -1, "Decoder layer (negative counts from the end)."),
            Param("head", "mean", "Head index, or mean / max / min over heads.")),
    class_specific=True, over="patches", kind="attention", families=FAMILY,
)
def cross_attention(adapter, capture: Capture, target: Target, *, layer: int, head: str):
    a = capture.cross_attentions[decoder_layer_index(capture, layer)]        # [H, Q, T_image]
    row = head_or_fusion(a, head)[target.index]                              # [T_image]
    return capture.layout.to_grid(row), {"token": target.label, "image_share": float(row.sum())}


def cross_attention_strip(capture: Capture, layer: int = -1, head: str = "mean") -> np.ndarray:
    """Every caption token's cross-attention map at once, float32 [n_tokens, rows, cols] (no model call)."""
    a = head_or_fusion(capture.cross_attentions[decoder_layer_index(capture, layer)], head)   # [Q, T_image]
    return capture.layout.to_grid(a[: len(capture.targets)])                                 # [n, rows, cols]


def _normalised(r: torch.Tensor) -> torch.Tensor:
    """Chefer et al. eqs. 8–9: R̄ = (R − I) with rows scaled to sum 1, plus I."""
    eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device)
    rest = r - eye
    return rest / rest.sum(-1, keepdim=True).clamp_min(1e-12) + eye


def _a_bar(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Eq. 5 in float64: eqs. 8–9 subtract I from R, whose diagonal is 1 + (small), so float32 would
    keep only a few digits of what the normalisation divides."""
    return positive_grad_attention(a, g).double()


def encoder_relevance(capture: Capture, target: Target) -> torch.Tensor:
    """R^ii [T_image, T_image] of the image encoder (eq. 6 from R^ii = I)."""
    a0 = capture.attentions[0]
    r = torch.eye(capture.layout.n_tokens, dtype=torch.float64, device=a0.device)
    for a, g in zip(capture.attentions, capture.attention_grads(target.index)):
        r = r + _a_bar(a, g) @ r
    return r


@register(
    "caption_relevance",
    description="Chefer et al. 2021 encoder–decoder relevance: gradient-weighted self- and cross-attention, "
                "propagated from this word's logit to the image patches.",
    class_specific=True, over="patches", kind="attention", families=FAMILY,
)
def caption_relevance(adapter, capture: Capture, target: Target):
    t = target.index
    r_ii = encoder_relevance(capture, target)                                            # [T, T]
    dec = capture.extras["decoder_attentions"]                                           # L × [H, Q, Q] (GIT: joint)
    dec_g = [g[0] for g in capture.grads(t, "decoder_attentions")]
    n_img = capture.layout.n_tokens
    if adapter.kind == "git":
        # GIT: one joint self-attention over [image tokens, text tokens].
        n = dec[0].shape[-1]
        r = torch.eye(n, dtype=torch.float64, device=dec[0].device)
        for a, g in zip(dec, dec_g):
            r = r + _a_bar(a, g) @ r                                   # eq. 6
        row = r[n_img + t, :n_img] @ r_ii                                                # [T]
        return capture.layout.to_grid(row)
    cross = capture.cross_attentions                                                     # L × [H, Q, T]
    cross_g = [g[0] for g in capture.grads(t, "cross_attentions")]
    q = dec[0].shape[-1]
    like = dict(dtype=torch.float64, device=dec[0].device)
    r_tt = torch.eye(q, **like)                                                          # eq. 3
    r_ti = torch.zeros(q, n_img, **like)                                                 # eq. 4
    r_ii_bar = _normalised(r_ii)                                                         # eqs. 8–9
    for a, g, c, cg in zip(dec, dec_g, cross, cross_g):
        a_tt = _a_bar(a, g)                                             # eq. 5, [Q, Q]
        r_tt, r_ti = r_tt + a_tt @ r_tt, r_ti + a_tt @ r_ti                               # eqs. 6, 7
        a_ti = _a_bar(c, cg)                                            # eq. 5, [Q, T]
        r_ti = r_ti + _normalised(r_tt).T @ a_ti @ r_ii_bar                              # eq. 10
    return capture.layout.to_grid(r_ti[t])
