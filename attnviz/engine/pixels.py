"""Captum's single-pass gradient attributions for a whole batch of images at once.

Saliency (Simonyan et al. 2014) and input × gradient (Shrikumar et al. 2016)
need one forward and one backward. Given a batch and a target per image,
Captum differentiates ``Σ_i score_i[t_i]``; images are independent in a
vision transformer's batch, so row i of the gradient is image i's own. The
reductions are those of :mod:`attnviz.methods.gradients` (saliency: max
|gradient| over channels; input × gradient: channels summed, signed); a test
holds the two paths to the same maps.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..types import Capture

BATCHED_PIXEL_METHODS = ("saliency", "input_x_gradient")


def pixel_gradient_maps(adapter, method: str, caps: Sequence[Capture], targets: Sequence[int]) -> list[np.ndarray]:
    """[H, W] maps over the model input, one per capture, from one Captum call over the batch."""
    from captum.attr import InputXGradient, Saliency
    x = torch.cat([c.inputs["pixel_values"] for c in caps]).to(adapter.device).detach().clone()   # [B, C, H, W]
    x.requires_grad_(True)

    def scores(pixel_values: torch.Tensor) -> torch.Tensor:                  # [B, n_targets]
        return adapter.forward_scores(pixel_values, caps[0].inputs)

    if method == "saliency":
        attr = Saliency(scores).attribute(x, target=list(targets), abs=True)
        per_image = attr.amax(1)                                             # [B, H, W]
    elif method == "input_x_gradient":
        attr = InputXGradient(scores).attribute(x, target=list(targets))
        per_image = attr.sum(1)                                              # [B, H, W]
    else:
        raise ValueError(f"No batched path for '{method}'.")
    return [m.detach().cpu().numpy().astype(np.float32) for m in per_image]
