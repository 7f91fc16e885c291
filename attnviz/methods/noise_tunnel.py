"""Noise tunnels over any pixel-gradient method: SmoothGrad, SmoothGrad², VarGrad (Captum's ``NoiseTunnel``).

SmoothGrad (Smilkov et al. 2017, https://arxiv.org/abs/1706.03825) averages a method's attributions over
``nt_samples`` copies of the input with Gaussian noise (σ = ``stdevs``, in the processor's normalised input
units); SmoothGrad² averages their squares; VarGrad (Adebayo et al. 2018,
https://arxiv.org/abs/1810.03307) takes their variance. The base method is integrated gradients (black
baseline), input × gradient or saliency (|gradient|).

Maps are [H, W] over the model input, reduced over channels as the base method is: saliency takes the max
over channels (Simonyan et al.'s convention, >= 0); the others sum the channels and keep the sign (SmoothGrad
over IG or input × gradient is signed; SmoothGrad² and VarGrad are >= 0). ``methods/gradients.py``'s
``smoothgrad`` is this tunnel over saliency.
"""
from __future__ import annotations

from ..types import Capture, Target
from .captum_common import ScoreFunction, baseline_tensor, pixel_input, seed_captum
from .registry import Param, register

BASES = ("integrated_gradients", "input_x_gradient", "saliency")
NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")


@register(
    "noise_tunnel",
    description="Noise tunnel (SmoothGrad / SmoothGrad² / VarGrad; Smilkov et al. 2017, Adebayo et al. 2018) over "
                "integrated gradients, input × gradient or saliency.",
    params=(
        Param("base", "integrated_gradients", "The gradient method averaged over noisy copies.", choices=BASES),
        Param("nt_type", "smoothgrad", "smoothgrad: mean; smoothgrad_sq: mean of squares; vargrad: variance.",
              choices=NT_TYPES),
        Param("nt_samples", 8, "Noisy copies.", min=1, max=512),
        Param("stdevs", 0.15, "Noise standard deviation (input units).", min=0.0, max=5.0),
        Param("n_steps", 16, "Integrated gradients: steps along the path from the black image.", min=2, max=2048),
        Param("batch_size", 8, "Noisy copies per forward (integrated gradients: path points per forward).",
              min=1, max=512),
        Param("seed", 0, "Random seed, for repeatable maps."),
    ),
    class_specific=True, over="pixels", signed=True, kind="gradient", slow=True,
)
def noise_tunnel(adapter, capture: Capture, target: Target, *, base: str, nt_type: str, nt_samples: int,
                 stdevs: float, n_steps: int, batch_size: int, seed: int, progress=None):
    from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency   # imported on use
    x = pixel_input(adapter, capture, grad=True)                                   # [1, 3, H, W]
    per_copy = n_steps if base == "integrated_gradients" else 1
    f = ScoreFunction(adapter, capture, nt_samples * per_copy, progress)
    kwargs: dict = {}
    if base == "integrated_gradients":
        method = IntegratedGradients(f)
        kwargs = {"baselines": baseline_tensor(adapter, x, "black"), "n_steps": n_steps,
                  "internal_batch_size": batch_size}
    elif base == "input_x_gradient":
        method = InputXGradient(f)
    else:
        method = Saliency(f)
        kwargs = {"abs": True}
    seed_captum(seed)
    attr = NoiseTunnel(method).attribute(x, nt_type=nt_type, nt_samples=nt_samples,
                                         nt_samples_batch_size=batch_size, stdevs=stdevs, target=target.index,
                                         **kwargs)                                  # [1, 3, H, W]
    a = attr[0].detach()
    return (a.amax(0) if base == "saliency" else a.sum(0)).cpu().numpy()          # [H, W]
