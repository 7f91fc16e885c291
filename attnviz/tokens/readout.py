"""How a model's output reads the last block's tokens: the *pooling*, declared once per family.

Every map with the query "output" is read as ``readout @ M``, where ``readout`` ([T]) weights the
tokens the prediction is computed from. The weights follow from the pooling:

=====================  ==============================================================  =====================
pooling                what the head reads                                             readout weights
=====================  ==============================================================  =====================
``cls``                the CLS token (ViT, plain DeiT, BEiT without mean pooling,      1 on CLS
                       CLIP's vision tower, headless backbones' CLS-norm target)
``cls+distillation``   logits = mean of a CLS head and a distillation head (DeiT       ½ CLS, ½ distillation
                       distilled, Touvron et al. 2021)
``mean``               the mean of the patch tokens (BEiT fine-tuned,                  1/N on each patch
                       ``use_mean_pooling=True``; Bao et al. 2022)
``cls+mean``           concat(CLS, mean of the patch tokens) into one linear layer     ½ CLS, ½/N each patch
                       (DINOv2's classifier; registers are read by neither half)
``attention``          attention over the tokens: SigLIP's attention-pooling probe,    measured per image
                       a captioner's decoder cross-attention                            (see the adapter)
=====================  ==============================================================  =====================

Convention for ``cls+mean``: the two halves of the concatenated feature enter one linear layer,
so each half gets half the weight; within the mean every patch counts 1/N. Weights sum to 1.

For class-specific methods (Chefer et al. 2021 relevance, gradient rollout, attn_grad) a static
pooling reads the same tokens whatever the target; an ``attention`` pooling is itself an attention
and is weighted like every other one, E_h[(∇A ⊙ A)⁺] for the target (``ModelAdapter.target_readout``).

``tests/test_readout.py`` checks every family's declaration against the model itself: the tokens
whose gradient of the score (after the last block) is non-zero are exactly those with non-zero weight.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..types import TokenLayout

POOLINGS = {
    "cls": "the CLS token",
    "cls+distillation": "the mean of its CLS head and its distillation head",
    "mean": "the mean of the patch tokens",
    "cls+mean": "CLS together with the mean of the patch tokens",
    "attention": "attention over all image tokens",
}

#: Poolings whose output reads the patch tokens after the last block directly (Grad-CAM may use that block).
READS_PATCHES = {"mean", "cls+mean", "attention"}


def static_readout(pooling: str, layout: TokenLayout) -> Optional[torch.Tensor]:
    """[T] readout weights of a static pooling; None for ``attention`` (measured per image)."""
    if pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling '{pooling}'; one of {', '.join(POOLINGS)}.")
    if pooling == "attention":
        return None
    r = torch.zeros(layout.n_tokens)
    names = layout.prefix_names
    if pooling in ("cls", "cls+distillation", "cls+mean") and "cls" not in names:
        raise ValueError(f"Pooling '{pooling}' needs a CLS token; this layout has {names or 'none'}.")
    if pooling == "cls":
        r[names.index("cls")] = 1.0
    elif pooling == "cls+distillation":
        r[names.index("cls")] = 0.5
        r[names.index("distillation")] = 0.5
    elif pooling == "mean":
        r[layout.n_prefix:] = 1.0 / layout.n_patches
    else:  # cls+mean
        r[names.index("cls")] = 0.5
        r[layout.n_prefix:] = 0.5 / layout.n_patches
    return r


def describe(pooling: str) -> str:
    """One phrase for the UI and the CLI: what "output" means for this model."""
    return POOLINGS[pooling]
