"""Glue between adapters and Captum: the score function, baselines, patch masks, progress."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image

from ..errors import UsageError
from ..types import Capture, TokenLayout

BASELINES = ("black", "mean")


class ScoreFunction:
    """``f(pixel_values [B,3,H,W]) -> scores [B, n_targets]`` that counts the samples it saw.

    Captum calls it many times; counting rows gives an honest progress figure.
    """

    def __init__(self, adapter, capture: Capture, total: int, progress: Optional[Callable[[int, int], None]]):
        self.adapter, self.inputs = adapter, capture.inputs
        self.done, self.total, self.progress = 0, max(1, total), progress

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.adapter.forward_scores(pixel_values, self.inputs)
        self.done += pixel_values.shape[0]
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)
        return out


def seed_captum(seed: int) -> None:
    """Seed the process-wide generators Captum draws from: torch (NoiseTunnel's noise, LIME / KernelSHAP
    samples) and numpy (GradientShap's baseline choice and path points). The registry runs seeded methods
    one at a time, so a seed gives the same map."""
    torch.manual_seed(seed)
    np.random.seed(seed)


def pixel_input(adapter, capture: Capture, *, grad: bool = False) -> torch.Tensor:
    x = capture.inputs["pixel_values"].to(adapter.device).detach().clone()  # [1, 3, H, W]
    return x.requires_grad_(grad)


def baseline_tensor(adapter, x: torch.Tensor, kind: str) -> torch.Tensor:
    """'black': an all-black image as the model's processor turns it into pixel values (every step it
    takes: rescaling, an offset, normalisation, and EfficientNet's second division by the standard
    deviation); 'mean': zeros (the dataset mean colour)."""
    if kind == "mean":
        return torch.zeros_like(x)
    if kind == "black":
        return black_pixel(adapter.processor).to(device=x.device, dtype=x.dtype).expand_as(x).clone()
    raise UsageError(f"Baseline must be one of {', '.join(BASELINES)}.")


def black_pixel(processor) -> torch.Tensor:
    """[1, 3, 1, 1]: what ``processor`` makes of a black pixel (a small black image, not resized or
    cropped); a processor that cannot say gives (0 − mean) / std from its configuration."""
    try:
        out = processor(images=Image.new("RGB", (16, 16)), do_resize=False, do_center_crop=False,
                        return_tensors="pt")["pixel_values"]
    except (TypeError, ValueError, KeyError):
        out = None
    if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[1] == 3:
        return out[:1, :, :1, :1].float()                                                  # [1, 3, 1, 1]
    mean = torch.tensor(getattr(processor, "image_mean", None) or [0.0] * 3, dtype=torch.float32)
    std = torch.tensor(getattr(processor, "image_std", None) or [1.0] * 3, dtype=torch.float32)
    return ((0 - mean) / std).view(1, 3, 1, 1)


def patch_mask(layout: TokenLayout, device) -> torch.Tensor:
    """Feature mask [1, 1, H, W]: one feature id per patch (row-major), broadcast over channels.

    When the input is not a whole number of patches (a processor size or crop that the patch
    does not divide), the patch embedding never reads the leftover bottom rows / right columns;
    they join the last patch row / column, so hiding a patch hides everything beside it.
    """
    ph, pw = layout.patch_size
    h, w = layout.input_size
    row = (torch.arange(h, device=device) // ph).clamp(max=layout.rows - 1)                 # [H] patch row of each pixel row
    col = (torch.arange(w, device=device) // pw).clamp(max=layout.cols - 1)                 # [W]
    return (row[:, None] * layout.cols + col[None, :]).view(1, 1, h, w)                     # [1, 1, H, W]


def per_patch(attr: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """[1, C, H, W] pixel attributions -> [rows, cols] by summing channels and averaging each patch.

    A CNN's grid may reach past the input (a padded stride-s convolution makes ⌈H / s⌉ cells): its
    last row / column of cells averages the pixels they do hold."""
    ph, pw = layout.patch_size
    a = attr[0].sum(0)[: layout.rows * ph, : layout.cols * pw]                            # [≤ rows·ph, ≤ cols·pw]
    a = torch.nn.functional.pad(a, (0, layout.cols * pw - a.shape[1], 0, layout.rows * ph - a.shape[0]),
                                value=float("nan"))                                     # [rows·ph, cols·pw]
    return a.reshape(layout.rows, ph, layout.cols, pw).nanmean(dim=(1, 3))                  # [rows, cols]
