"""Captum gradient attributions on input pixels, explaining the target's score.

Maps are [H, W] over the model input. Integrated gradients, input × gradient
and gradient SHAP sum the channels and keep the sign (positive = evidence
for the target). Saliency and SmoothGrad take the max |gradient| over
channels (Simonyan et al. 2014's convention) and are >= 0.
"""
from __future__ import annotations

import torch

from ..types import Capture, Target
from .captum_common import BASELINES, ScoreFunction, baseline_tensor, pixel_input, seed_captum
from .registry import Param, register

BASELINE = Param("baseline", "black", "Reference input: a black image or the dataset mean (zeros).", choices=BASELINES)


@register(
    "integrated_gradients",
    description="Integrated gradients (Sundararajan et al. 2017): path integral of gradients from a baseline image.",
    params=(
        Param("n_steps", 64, "Riemann / Gauss–Legendre steps along the path.", min=2, max=2048),
        Param("internal_batch_size", 16, "Path points per forward pass.", min=1, max=512),
        BASELINE,
    ),
    class_specific=True, over="pixels", signed=True, kind="gradient", slow=True,
)
def integrated_gradients(adapter, capture: Capture, target: Target, *, n_steps: int, internal_batch_size: int,
                         baseline: str, progress=None):
    x = pixel_input(adapter, capture, grad=True)
    base = baseline_tensor(adapter, x, baseline)
    f = ScoreFunction(adapter, capture, n_steps + 2, progress)
    from captum.attr import IntegratedGradients    # imported on use: keeps the CLI's start-up light
    attr, delta = IntegratedGradients(f).attribute(
        x, baselines=base, target=target.index, n_steps=n_steps,
        internal_batch_size=internal_batch_size, return_convergence_delta=True)
    with torch.no_grad():
        gap = float((f(x) - f(base))[0, target.index])
    d = float(delta.abs().sum())
    meta = {"convergence_delta": d, "score_gap": gap, "relative_delta": d / max(abs(gap), 1e-12),
            "attribution_sum": float(attr.detach().sum())}
    return attr[0].sum(0).detach().cpu().numpy(), meta                       # [H, W]


@register(
    "saliency",
    description="Vanilla gradient saliency (Simonyan et al. 2014): |∂score/∂pixel|, max over channels.",
    class_specific=True, over="pixels", kind="gradient",
)
def saliency(adapter, capture: Capture, target: Target):
    x = pixel_input(adapter, capture, grad=True)
    from captum.attr import Saliency
    attr = Saliency(ScoreFunction(adapter, capture, 1, None)).attribute(x, target=target.index, abs=True)
    return attr[0].amax(0).detach().cpu().numpy()                            # [H, W]


@register(
    "input_x_gradient",
    description="Input × gradient (Shrikumar et al. 2016), channels summed; signed.",
    class_specific=True, over="pixels", signed=True, kind="gradient",
)
def input_x_gradient(adapter, capture: Capture, target: Target):
    x = pixel_input(adapter, capture, grad=True)
    from captum.attr import InputXGradient
    attr = InputXGradient(ScoreFunction(adapter, capture, 1, None)).attribute(x, target=target.index)
    return attr[0].sum(0).detach().cpu().numpy()


@register(
    "gradient_shap",
    description="Gradient SHAP (Lundberg & Lee 2017): expected gradients from noisy baselines; signed.",
    params=(
        Param("n_samples", 32, "Random baseline/path samples.", min=1, max=1024),
        Param("stdevs", 0.1, "Gaussian noise added to each sample (input units).", min=0.0, max=5.0),
        Param("seed", 0, "Random seed, for repeatable maps."),
    ),
    class_specific=True, over="pixels", signed=True, kind="gradient", slow=True,
)
def gradient_shap(adapter, capture: Capture, target: Target, *, n_samples: int, stdevs: float, seed: int, progress=None):
    x = pixel_input(adapter, capture, grad=True)
    g = torch.Generator(device="cpu").manual_seed(seed)
    black = baseline_tensor(adapter, x, "black")
    bases = torch.cat([black, torch.zeros_like(x), (torch.rand(x.shape, generator=g) * 2 - 1).to(x.device)])
    seed_captum(seed)
    from captum.attr import GradientShap
    attr = GradientShap(ScoreFunction(adapter, capture, n_samples, progress)).attribute(
        x, baselines=bases, n_samples=n_samples, stdevs=stdevs, target=target.index)
    return attr[0].sum(0).detach().cpu().numpy()


@register(
    "smoothgrad",
    description="SmoothGrad (Smilkov et al. 2017): saliency averaged over noisy copies of the image.",
    params=(
        Param("nt_samples", 16, "Noisy copies.", min=1, max=512),
        Param("stdevs", 0.15, "Noise standard deviation (input units).", min=0.0, max=5.0),
        Param("seed", 0, "Random seed, for repeatable maps."),
    ),
    class_specific=True, over="pixels", kind="gradient", slow=True,
)
def smoothgrad(adapter, capture: Capture, target: Target, *, nt_samples: int, stdevs: float, seed: int, progress=None):
    x = pixel_input(adapter, capture, grad=True)
    seed_captum(seed)
    from captum.attr import NoiseTunnel, Saliency
    nt = NoiseTunnel(Saliency(ScoreFunction(adapter, capture, nt_samples, progress)))
    attr = nt.attribute(x, nt_type="smoothgrad", nt_samples=nt_samples, nt_samples_batch_size=8,
                        stdevs=stdevs, target=target.index, abs=True)
    return attr[0].amax(0).detach().cpu().numpy()
