"""Grad-CAM (Selvaraju et al., ICCV 2017) and the machinery every CAM variant shares.

A CAM reads one layer's feature map A [C, h, w] (and, for the gradient variants, G = ∂score/∂A for
the target), turns it into *weighted activations* W [C, h, w] (Grad-CAM: α_c·A_c with α_c the
spatial mean of G_c, eq. 1) and draws ReLU(Σ_c W_c) (eq. 2). The variants in ``cam_variants.py``
only say how W is made; this module finds the feature map, runs the forward (and backward), and
applies the shared options, as pytorch-grad-cam's base class does:

* **where the feature map is**: a transformer block's output tokens [B, T, D] split into prefix and
  patch tokens, the patch tokens reshaped by the token layout (never a hard-coded 14×14) to
  [B, D, rows, cols]; a Swin block's tokens on its own stage's grid; a CNN stage's output
  [B, C, h, w] as it is. The hook rebuilds the block's output from that grid, so the grid is on the
  path to the score and ∂score/∂grid is the gradient at the layer.
* **several layers** (``layers="-2,-3"``): each layer's map is min–max scaled to [0, 1] on the first
  grid (Swin: each coarse token over the patches it covers; CNN: bilinear to the finest stage), then
  averaged (pytorch-grad-cam's multi-layer aggregation).
* **aug_smooth**: the mean map over test-time augmentations of the input tensor (horizontal flip ×
  intensity factor 0.9 / 1.0 / 1.1, pytorch-grad-cam's ttach set), each map flipped back.
* **eigen_smooth**: the first principal component of the weighted activations (positions × channels,
  centred over positions) instead of their channel sum; the sign makes it agree with the sum.

Default layer from the model's pooling (``tokens/readout.py``, applied by ``ModelAdapter.method_defaults`` to every ``*_cam``): the last
block when the output reads its patch tokens (BEiT's patch mean, DINOv2's CLS + mean, SigLIP's probe,
a CNN's average pool); otherwise -2, since after the last block patch tokens no longer reach a CLS
output and their gradient there is zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..adapters.hooks import this_thread
from ..precision import kept
from ..errors import UsageError
from ..tokens.readout import describe
from ..types import Capture, Target
from .captum_common import pixel_input
from .common import checked_index, layer_index
from .hierarchy import hierarchy, is_hierarchical, to_first_grid
from .registry import Param, register

#: pytorch-grad-cam's test-time augmentations: (horizontal flip, intensity factor).
AUGMENTATIONS = tuple((flip, f) for flip in (False, True) for f in (0.9, 1.0, 1.1))


@dataclass(frozen=True)
class Site:
    """Where a CAM reads its feature map: block (or CNN stage) ``layer``, its grid, its prefix tokens."""

    layer: int          # checked index into capture.n_layers
    stage: int          # Swin / CNN stage of that layer (0 for a plain ViT)
    n_prefix: int
    rows: int
    cols: int
    cnn: bool           # the module outputs [B, C, h, w] itself


def stage_index(capture: Capture, layer: int) -> int:
    """A CNN stage index (negative counts from the end), checked."""
    return checked_index(layer, len(capture.stages), "Stage", "stages")


def cam_site(capture: Capture, layer: int) -> Site:
    if capture.stages:
        si = stage_index(capture, layer)
        g = capture.stage_grids[si]
        return Site(si, si, 0, g.rows, g.cols, True)
    li = layer_index(capture, layer)
    lay = capture.layout
    if is_hierarchical(capture):     # Swin: the block's tokens lie on its own stage's grid
        h = hierarchy(capture)
        stage = h.blocks[li].stage
        rows, cols = h.grids[stage]
        return Site(li, stage, lay.n_prefix, rows, cols, False)
    return Site(li, 0, lay.n_prefix, lay.rows, lay.cols, False)


def check_reaches_score(adapter, capture: Capture, site: Site, method: str) -> None:
    """Refuse the last block of a model whose output reads only its prefix tokens: its patch tokens never
    reach the score, so every gradient (and every ablation) there is zero."""
    if not site.cnn and site.layer == capture.n_layers - 1 and not adapter.reads_last_patches:
        raise UsageError(f"{method} needs a block before the last for this model: its output reads only "
                         f"{describe(adapter.pooling)}, so the last block's patch tokens do not reach the score.")


def _grid_hook(site: Site, store: dict, scale: Optional[torch.Tensor]):
    """Forward hook: record the site's feature map [B, C, h, w] (times ``scale`` [B, C, 1, 1] if given) and
    rebuild the module's output from it, so the recorded grid is what the rest of the model reads."""
    # The model is shared between app sessions: only rewire this thread's forward.
    @this_thread
    def hook(module, args, out):
        t = out[0] if isinstance(out, tuple) else out
        if site.cnn:
            grid = t                                                           # [B, C, h, w]
        else:
            b, _, d = t.shape                                                  # [B, T, D]
            grid = t[:, site.n_prefix:].transpose(1, 2).reshape(b, d, site.rows, site.cols)  # [B, D, rows, cols]
        if scale is not None:
            grid = grid * scale
        store[site.layer] = grid
        new = grid if site.cnn else torch.cat([t[:, :site.n_prefix], grid.flatten(2).transpose(1, 2)], 1)  # [B, T, D]
        return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new
    return hook


def feature_maps(adapter, capture: Capture, sites: Sequence[Site], x: torch.Tensor, *,
                 target: Optional[int] = None, scale: Optional[dict] = None):
    """One forward of the batch ``x`` [B, 3, H, W] recording every site's feature map; with ``target`` also one
    backward of that target's score (summed over the batch: each image gets its own gradient).

    Returns (scores [B, n_targets] detached, {layer: A [B, C, h, w]}, {layer: G [B, C, h, w]} or None).
    ``scale``: {layer: [B, C, 1, 1]} multipliers applied to the feature map as the forward runs (ablation)."""
    store: dict = {}
    handles = [adapter.token_block(s.layer).register_forward_hook(
        _grid_hook(s, store, None if scale is None else scale.get(s.layer))) for s in sites]
    try:
        with torch.set_grad_enabled(target is not None):
            xin = x.detach().clone().requires_grad_(target is not None)
            scores = adapter.forward_scores(xin, capture.inputs)               # [B, n_targets]
            grads = None
            if target is not None:
                gs = torch.autograd.grad(scores[:, target].sum(), [store[s.layer] for s in sites], allow_unused=True)
                grads = {s.layer: kept(torch.zeros_like(store[s.layer]) if g is None else g)
                         for s, g in zip(sites, gs)}
    finally:
        for h in handles:
            h.remove()
    return scores.detach(), {k: kept(v) for k, v in store.items()}, grads


def eigen_projection(w: torch.Tensor) -> torch.Tensor:
    """[C, h, w] -> [h, w]: the positions' projection on the first principal component of the channels
    (positions centred), signed so it agrees with the channel sum (SVD leaves the sign open)."""
    c, h, wd = w.shape
    flat = w.reshape(c, h * wd).T.double()                                     # [h·w, C]
    centred = flat - flat.mean(0, keepdim=True)
    _, _, vt = torch.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt[0]                                                     # [h·w]
    if float(proj @ (flat.sum(1) - flat.sum(1).mean())) < 0:
        proj = -proj
    return proj.reshape(h, wd).to(w.dtype)


@dataclass
class CamContext:
    """What a weighting function may use besides A and G: the model, the input it saw, the target."""

    adapter: object
    capture: Capture
    target: Optional[Target]
    site: Site
    x: torch.Tensor                 # [1, 3, H, W] the (augmented) input
    batch_size: int = 32


#: weigh(ctx, A [C, h, w], G [C, h, w] or None) -> weighted activations [C, h, w]
Weigh = Callable[[CamContext, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def layers_of(layer: int, layers: str) -> list[int]:
    """``layers`` ("-2,-3", blank: just ``layer``) as a list of indices."""
    if not str(layers).strip():
        return [layer]
    try:
        return [int(v) for v in str(layers).replace(" ", "").split(",") if v]
    except ValueError:
        raise UsageError(f"Layers must be whole numbers separated by commas, e.g. '-2,-3'; got '{layers}'.") from None


def _on_first_grid(capture: Capture, site: Site, cam: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """A site's [h, w] map on the grid the method returns: the patch grid (Swin: expanded from its stage) or a
    CNN's chosen stage grid (bilinear)."""
    if site.cnn:
        if tuple(cam.shape) == tuple(grid_hw):
            return cam
        return torch.nn.functional.interpolate(cam[None, None], size=grid_hw, mode="bilinear",
                                               align_corners=False)[0, 0]      # [rows, cols]
    if site.stage:
        return torch.from_numpy(to_first_grid(capture, hierarchy(capture), cam.reshape(-1), site.stage)).double()
    return cam


def _minmax(m: torch.Tensor) -> torch.Tensor:
    m = m - m.min()
    top = m.max()
    return m / top if top > 0 else m


def run_cam(adapter, capture: Capture, target: Optional[Target], weigh: Weigh, *, name: str, layer: int,
            layers: str = "", aug_smooth: bool = False, eigen_smooth: bool = False, grads: bool = True,
            reads_score: bool = True, batch_size: int = 32):
    """The CAM ``name`` whose weighted activations ``weigh`` makes, with the shared options (module docstring).

    ``grads``: the variant needs ∂score/∂A; ``reads_score``: it measures the score through the layer (gradient
    or ablation), so the last block of a CLS-reading model is refused."""
    sites = [cam_site(capture, li) for li in layers_of(layer, layers)]
    if reads_score:
        for s in sites:
            check_reaches_score(adapter, capture, s, name)
    tindex = target.index if (grads and target is not None) else None
    augs = AUGMENTATIONS if aug_smooth else ((False, 1.0),)
    x0 = pixel_input(adapter, capture)                                         # [1, 3, H, W]
    per_site: dict[int, list[torch.Tensor]] = {s.layer: [] for s in sites}
    if capture.stages and not aug_smooth:
        # a CNN's capture already holds every stage's map and (one backward per target) its gradient
        acts = {s.layer: capture.stages[s.layer][None] for s in sites}
        gmap = ({s.layer: capture.grads(tindex, "stages")[s.layer][None] for s in sites}
                if tindex is not None else None)
        xs = x0
    else:
        xs = torch.cat([(x0.flip(-1) if flip else x0) * f for flip, f in augs])    # [n_aug, 3, H, W]
        _, acts, gmap = feature_maps(adapter, capture, sites, xs, target=tindex)
    for s in sites:
        for b, (flip, _) in enumerate(augs):
            # float64: a random model's gradients are tiny and Σ_c G·A cancels
            a = acts[s.layer][b].double()                                      # [C, h, w]
            g = gmap[s.layer][b].double() if gmap is not None else None
            w = weigh(CamContext(adapter, capture, target, s, xs[b:b + 1], batch_size), a, g)   # [C, h, w]
            cam = torch.relu(eigen_projection(w) if eigen_smooth else w.sum(0))  # [h, w]
            per_site[s.layer].append(cam.flip(-1) if flip else cam)
    maps = {li: torch.stack(v).mean(0) for li, v in per_site.items()}
    meta: dict = {"layers": [s.layer for s in sites]}
    if capture.stages:
        finest = max(sites, key=lambda s: s.rows * s.cols)
        grid_hw = (finest.rows, finest.cols)
        meta.update(stage=finest.layer, grid=capture.stage_grids[finest.layer])
    else:
        grid_hw = (capture.layout.rows, capture.layout.cols)
    on_grid = [_on_first_grid(capture, s, maps[s.layer], grid_hw) for s in sites]
    out = on_grid[0] if len(on_grid) == 1 else torch.stack([_minmax(m) for m in on_grid]).mean(0)
    return out.detach().cpu().numpy().astype(np.float32), meta


#: The parameters every CAM takes.
CAM_PARAMS = (
    Param("layer", -2, "Block (CNN: stage) whose output feature map is used (negative counts from the end; the "
          "model's default is the last when its output reads patch tokens, else the one before)."),
    Param("layers", "", "Several blocks combined, e.g. '-2,-3' (each map scaled to [0, 1], then averaged); "
          "blank: just 'layer'."),
    Param("aug_smooth", False, "Average over horizontal flip × intensity 0.9/1.0/1.1 of the input (6 passes)."),
    Param("eigen_smooth", False, "First principal component of the weighted activations instead of their sum."),
)


def grad_cam_weights(ctx: CamContext, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Selvaraju et al. eq. 1: α_c = mean over positions of ∂score/∂A_c; W = α_c·A_c."""
    return g.mean(dim=(1, 2))[:, None, None] * a


@register(
    "grad_cam",
    description="Grad-CAM (Selvaraju et al. 2017): a block's (CNN: a stage's) feature maps weighted by their "
                "mean gradient.",
    params=CAM_PARAMS,
    class_specific=True, over="patches", kind="gradient", needs=("pixels",),
)
def grad_cam(adapter, capture: Capture, target: Target, *, layer: int, layers: str, aug_smooth: bool,
             eigen_smooth: bool):
    return run_cam(adapter, capture, target, grad_cam_weights, name="Grad-CAM", layer=layer, layers=layers,
                   aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
