"""Grad-CAM (Selvaraju et al., ICCV 2017) on a transformer block's patch tokens or a CNN stage.

On a CNN (a capture with ``stages``) the layer is a stage: its feature map A [C, h, w] and the
gradient of the target's score with respect to it come from the capture (one backward per target
gives every stage's); channel weights α_c = the spatial mean of ∂score/∂A_c (eq. 1), the map is
ReLU(Σ_c α_c A_c) (eq. 2) over that stage's own grid (``Explanation.grid``). Default: the last stage.

The block's output [B, T, D] is split into prefix and patch tokens; the
patch tokens are reshaped to a [B, D, rows, cols] feature map by the token
layout (never a hard-coded 14×14) and passed through an identity module so
Captum's ``LayerGradCam`` sees an ordinary CNN-style layer. Channel weights
are the spatial mean of the gradients; the map is ReLU(Σ_c w_c·A_c), >= 0.

Default layer from the model's pooling (``tokens/readout.py``): the last
block when the output reads its patch tokens (BEiT's patch mean, DINOv2's
CLS + mean, SigLIP's probe, a captioner's cross-attention); otherwise -2,
since after the last block patch tokens no longer reach a CLS output and
their gradient there is zero (the usual ViT Grad-CAM uses the input of the
last block, which is the output of the one before).
"""
from __future__ import annotations

import torch

from ..adapters.hooks import this_thread
from ..tokens.readout import describe
from ..errors import UsageError
from ..types import Capture, Target
from .captum_common import ScoreFunction, pixel_input
from .common import checked_index, layer_index
from .hierarchy import hierarchy, is_hierarchical, to_first_grid
from .registry import Param, register


class TokenGrid(torch.nn.Module):
    """Identity on a [B, D, rows, cols] map: the layer Captum hooks."""

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return grid


def _reshape_hook(grid_module: TokenGrid, n_prefix: int, rows: int, cols: int):
    # The model is shared between app sessions: only rewire this thread's forward.
    @this_thread
    def hook(module, args, out):
        tokens = out[0] if isinstance(out, tuple) else out                  # [B, T, D]
        b, t, d = tokens.shape
        prefix, patches = tokens[:, :n_prefix], tokens[:, n_prefix:]
        grid = grid_module(patches.transpose(1, 2).reshape(b, d, rows, cols))  # [B, D, rows, cols]
        new = torch.cat([prefix, grid.flatten(2).transpose(1, 2)], dim=1)      # [B, T, D]
        return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new
    return hook


@register(
    "grad_cam",
    description="Grad-CAM on one block's patch tokens: feature maps weighted by their mean gradient.",
    params=(Param("layer", -2, "Block whose output patch tokens are used (negative counts from the end; the model's "
                  "default is the last block when its output reads patch tokens, else the one before)."),),
    class_specific=True, over="patches", kind="gradient",
)
def grad_cam(adapter, capture: Capture, target: Target, *, layer: int):
    if capture.stages:
        return _stage_grad_cam(capture, target, layer)
    li = layer_index(capture, layer)
    if li == capture.n_layers - 1 and not adapter.reads_last_patches:
        raise UsageError("Grad-CAM needs a block before the last for this model: its output reads only "
                         f"{describe(adapter.pooling)}, so the last block's patch tokens do not reach the score.")
    lay = capture.layout
    rows, cols, stage = lay.rows, lay.cols, 0
    if is_hierarchical(capture):     # Swin: the block's tokens lie on its own stage's grid
        h = hierarchy(capture)
        stage = h.blocks[li].stage
        rows, cols = h.grids[stage]
    grid = TokenGrid()
    handle = adapter.token_block(li).register_forward_hook(
        _reshape_hook(grid, lay.n_prefix, rows, cols))
    try:
        from captum.attr import LayerGradCam    # imported on use: keeps the CLI's start-up light
        cam = LayerGradCam(ScoreFunction(adapter, capture, 1, None), grid).attribute(
            pixel_input(adapter, capture, grad=True), target=target.index, relu_attributions=True)    # [1, 1, rows, cols]
    finally:
        handle.remove()
    # a coarser Swin stage is drawn on the first grid, each token over the patches it covers
    return to_first_grid(capture, h, cam[0, 0].detach().reshape(-1), stage) if stage else cam[0, 0].detach().cpu().numpy()


def stage_index(capture: Capture, layer: int) -> int:
    """A CNN stage index (negative counts from the end), checked."""
    return checked_index(layer, len(capture.stages), "Stage", "stages")


def _stage_grad_cam(capture: Capture, target: Target, layer: int):
    si = stage_index(capture, layer)
    a = capture.stages[si]                                              # [C, h, w]
    g = capture.grads(target.index, "stages")[si]                       # [C, h, w]
    alpha = g.mean(dim=(1, 2))                                          # [C]
    cam = torch.relu((alpha[:, None, None] * a).sum(0))                # [h, w]
    return cam.cpu().numpy(), {"stage": si, "grid": capture.stage_grids[si]}
