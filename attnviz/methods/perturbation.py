"""Captum perturbation attributions over patches (one feature per ViT patch).

Maps are [rows, cols] over the patch grid, signed: positive = hiding this
patch lowers the target's score. The reference ("baseline") fill is a black
image by default.
"""
from __future__ import annotations

from ..types import Capture, Target
from .captum_common import (BASELINES, ScoreFunction, baseline_tensor, patch_mask, per_patch, pixel_input,
                             seed_captum)
from .registry import Param, register

BASELINE = Param("baseline", "black", "What a hidden patch is replaced with.", choices=BASELINES)
BATCH = Param("batch_size", 8, "Perturbed images per forward pass (8: the cheapest per image measured on ViT-B/16, CPU).",
              min=1, max=512)


@register(
    "occlusion",
    description="Occlusion (Zeiler & Fergus 2014): slide a patch-aligned window, record the score drop.",
    params=(Param("window", 1, "Window side in patches (stride is one patch).", min=1, max=8), BASELINE, BATCH),
    class_specific=True, over="patches", signed=True, kind="perturbation", slow=True,
)
def occlusion(adapter, capture: Capture, target: Target, *, window: int, baseline: str, batch_size: int, progress=None):
    lay = capture.layout
    x = pixel_input(adapter, capture)
    ph, pw = lay.patch_size
    n_windows = max(1, lay.rows - window + 1) * max(1, lay.cols - window + 1)
    f = ScoreFunction(adapter, capture, n_windows + 1, progress)
    from captum.attr import Occlusion      # imported on use: keeps the CLI's start-up light
    attr = Occlusion(f).attribute(
        x, sliding_window_shapes=(3, min(window * ph, lay.input_size[0]), min(window * pw, lay.input_size[1])),
        strides=(3, ph, pw), baselines=baseline_tensor(adapter, x, baseline), target=target.index,
        perturbations_per_eval=batch_size)
    return per_patch(attr, lay).cpu().numpy() / 3                         # channels summed; undo the ×3


def _patch_features(cls, adapter, capture, target, baseline, batch_size, progress, total, init=None, **kw):
    lay = capture.layout
    x = pixel_input(adapter, capture)
    f = ScoreFunction(adapter, capture, total, progress)
    attr = cls(f, **(init or {})).attribute(x, baselines=baseline_tensor(adapter, x, baseline), target=target.index,
                            feature_mask=patch_mask(lay, x.device), perturbations_per_eval=batch_size, **kw)
    return per_patch(attr, lay).cpu().numpy() / 3                         # every channel carries the patch value


@register(
    "feature_ablation",
    description="Feature ablation: replace one patch at a time with the baseline, record the score drop.",
    params=(BASELINE, BATCH),
    class_specific=True, over="patches", signed=True, kind="perturbation", slow=True,
)
def feature_ablation(adapter, capture: Capture, target: Target, *, baseline: str, batch_size: int, progress=None):
    from captum.attr import FeatureAblation
    return _patch_features(FeatureAblation, adapter, capture, target, baseline, batch_size, progress,
                           capture.layout.n_patches + 1)


@register(
    "lime",
    description="LIME (Ribeiro et al. 2016): a linear surrogate fit on random patch subsets.",
    params=(Param("n_samples", 256, "Random patch subsets evaluated.", min=8, max=20000), BASELINE, BATCH,
            Param("surrogate", "ridge", "Surrogate model: ridge (as the original lime package) or lasso (sparse).",
                  choices=("ridge", "lasso")),
            Param("alpha", 1.0, "Regularisation strength of the surrogate.", min=0.0, max=100.0),
            Param("seed", 0, "Random seed, for repeatable maps.")),
    class_specific=True, over="patches", signed=True, kind="perturbation", slow=True,
)
def lime(adapter, capture: Capture, target: Target, *, n_samples: int, baseline: str, batch_size: int,
         surrogate: str, alpha: float, seed: int, progress=None):
    seed_captum(seed)
    from captum._utils.models.linear_model import SkLearnLasso, SkLearnRidge
    from captum.attr import Lime
    model = SkLearnRidge(alpha=alpha) if surrogate == "ridge" else SkLearnLasso(alpha=alpha)
    return _patch_features(Lime, adapter, capture, target, baseline, batch_size, progress, n_samples + 1,
                           init={"interpretable_model": model}, n_samples=n_samples)


@register(
    "kernel_shap",
    description="Kernel SHAP (Lundberg & Lee 2017): Shapley values of patches from a weighted linear fit.",
    params=(Param("n_samples", 256, "Random patch coalitions evaluated.", min=8, max=20000), BASELINE, BATCH,
            Param("seed", 0, "Random seed, for repeatable maps.")),
    class_specific=True, over="patches", signed=True, kind="perturbation", slow=True,
)
def kernel_shap(adapter, capture: Capture, target: Target, *, n_samples: int, baseline: str, batch_size: int, seed: int,
                progress=None):
    seed_captum(seed)
    from captum.attr import KernelShap
    return _patch_features(KernelShap, adapter, capture, target, baseline, batch_size, progress, n_samples + 1,
                           n_samples=n_samples)
