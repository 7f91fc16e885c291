"""The CAM variants of pytorch-grad-cam, on a transformer block's patch tokens, a Swin block or a CNN stage.

Each says only how it weighs one layer's feature map A [C, h, w] (G = ∂score/∂A for the target); the
map is ReLU(Σ_c W_c), and the layer, several layers, ``aug_smooth`` and ``eigen_smooth`` are shared
(``gradcam.run_cam``):

* Grad-CAM++ (Chattopadhay et al. 2018, https://arxiv.org/abs/1710.11063): α_c = Σ_ij relu(G)·a_ij with
  a_ij = G² / (2G² + Σ_ab A_ab · G³) (eq. 19, the exponential-score closed form; 0 where G = 0); W = α_c·A_c.
* HiResCAM (Draelos & Carin 2020, https://arxiv.org/abs/2011.08891): W = G ⊙ A (no spatial averaging).
* LayerCAM (Jiang et al. 2021, IEEE TIP): W = relu(G) ⊙ A.
* XGrad-CAM (Fu et al. 2020, https://arxiv.org/abs/2008.02312): α_c = Σ_ij G·A / Σ_ij A; W = α_c·A_c.
* Score-CAM (Wang et al. 2020, https://arxiv.org/abs/1910.01279): each channel, bilinearly upsampled to the
  input and min–max scaled to [0, 1] (a constant channel: 0), masks the input tensor; α = softmax over the
  channels of the target's score on the masked inputs (Algorithm 1); W = α_c·A_c. No gradients.
* Ablation-CAM (Desai & Ramaswamy 2020, WACV): α_c = (y − y_c) / y, y the target's score and y_c the score
  with channel c of the feature map set to zero (transformers: in the patch tokens only); W = α_c·A_c.
* Eigen-CAM (Muhammad & Yeasin 2020, https://arxiv.org/abs/2008.00299): the first principal component of
  A (positions × channels, centred), signed to agree with the channel sum; class-agnostic, no gradients.

Score-CAM and Ablation-CAM run one forward per channel (batched: ``batch_size``), so they are slow on a
wide model (768 forwards on ViT-B).
"""
from __future__ import annotations

import torch

from ..types import Capture, Target
from .gradcam import CAM_PARAMS, CamContext, feature_maps, run_cam
from .registry import Param, register

EPS = 1e-7
BATCH = Param("batch_size", 32, "Masked (or ablated) copies of the image per forward.", min=1, max=512)


def grad_cam_pp_weights(ctx: CamContext, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    g2, g3 = g ** 2, g ** 3
    aij = g2 / (2 * g2 + a.sum(dim=(1, 2))[:, None, None] * g3 + EPS)         # [C, h, w]
    aij = torch.where(g != 0, aij, torch.zeros_like(aij))
    alpha = (torch.relu(g) * aij).sum(dim=(1, 2))                             # [C]
    return alpha[:, None, None] * a


def hires_cam_weights(ctx: CamContext, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return g * a


def layer_cam_weights(ctx: CamContext, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.relu(g) * a


def xgrad_cam_weights(ctx: CamContext, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    alpha = (g * a).sum(dim=(1, 2)) / (a.sum(dim=(1, 2)) + EPS)              # [C]
    return alpha[:, None, None] * a


def activations(ctx: CamContext, a: torch.Tensor, g) -> torch.Tensor:
    return a


def score_cam_weights(ctx: CamContext, a: torch.Tensor, g) -> torch.Tensor:
    size = ctx.x.shape[-2:]
    up = torch.nn.functional.interpolate(a[:, None].float(), size=size, mode="bilinear", align_corners=False)  # [C, 1, H, W]
    lo = up.amin(dim=(2, 3), keepdim=True)
    span = up.amax(dim=(2, 3), keepdim=True) - lo
    masks = torch.where(span > 0, (up - lo) / span.clamp_min(1e-12), torch.zeros_like(up))              # [C, 1, H, W]
    scores = []
    with torch.no_grad():
        for s in range(0, a.shape[0], ctx.batch_size):
            xb = ctx.x * masks[s:s + ctx.batch_size].to(ctx.x)                                          # [b, 3, H, W]
            scores.append(ctx.adapter.forward_scores(xb, ctx.capture.inputs)[:, ctx.target.index].double())
    alpha = torch.softmax(torch.cat(scores), dim=0)                                                      # [C]
    return alpha[:, None, None] * a


def ablation_cam_weights(ctx: CamContext, a: torch.Tensor, g) -> torch.Tensor:
    c = a.shape[0]
    t = ctx.target.index
    with torch.no_grad():
        y = float(ctx.adapter.forward_scores(ctx.x, ctx.capture.inputs)[0, t])
        ablated = []
        for s in range(0, c, ctx.batch_size):
            ks = torch.arange(s, min(c, s + ctx.batch_size))
            scale = torch.ones(len(ks), c, 1, 1, dtype=ctx.x.dtype, device=ctx.x.device)              # [b, C, 1, 1]
            scale[torch.arange(len(ks)), ks] = 0.0                                                      # copy i drops channel ks[i]
            scores, _, _ = feature_maps(ctx.adapter, ctx.capture, [ctx.site], ctx.x.expand(len(ks), -1, -1, -1),
                                        scale={ctx.site.layer: scale})
            ablated.append(scores[:, t].double())
    yk = torch.cat(ablated)                                                                             # [C]
    denom = y if abs(y) > 1e-12 else 1e-12
    alpha = (y - yk) / denom
    return alpha[:, None, None] * a


def _gradient_cam(name: str, label: str, weigh, description: str):
    @register(name, description=description, params=CAM_PARAMS, class_specific=True, over="patches",
              kind="gradient", needs=("pixels",))
    def method(adapter, capture: Capture, target: Target, *, layer: int, layers: str, aug_smooth: bool,
               eigen_smooth: bool):
        return run_cam(adapter, capture, target, weigh, name=label, layer=layer, layers=layers,
                       aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
    method.__name__ = name
    return method


grad_cam_pp = _gradient_cam("grad_cam_pp", "Grad-CAM++", grad_cam_pp_weights,
                            "Grad-CAM++ (Chattopadhay et al. 2018): channel weights from positive gradients with "
                            "second- and third-order terms.")
hires_cam = _gradient_cam("hires_cam", "HiResCAM", hires_cam_weights,
                          "HiResCAM (Draelos & Carin 2020): gradient × activation at each position, summed over "
                          "channels (no averaging: faithful to the score).")
layer_cam = _gradient_cam("layer_cam", "LayerCAM", layer_cam_weights,
                          "LayerCAM (Jiang et al. 2021): positive gradient × activation at each position.")
xgrad_cam = _gradient_cam("xgrad_cam", "XGrad-CAM", xgrad_cam_weights,
                          "XGrad-CAM (Fu et al. 2020): channel weights Σ G·A / Σ A (axiom-based).")


def _perturbation_cam(name: str, label: str, weigh, description: str, *, reads_score: bool):
    """A CAM whose channel weights come from forwards on changed inputs or features (no gradients)."""
    @register(name, description=description, params=CAM_PARAMS + (BATCH,), class_specific=True, over="patches",
              kind="perturbation", slow=True, needs=("pixels",))
    def method(adapter, capture: Capture, target: Target, *, layer: int, layers: str, aug_smooth: bool,
               eigen_smooth: bool, batch_size: int):
        return run_cam(adapter, capture, target, weigh, name=label, layer=layer, layers=layers,
                       aug_smooth=aug_smooth, eigen_smooth=eigen_smooth, grads=False, reads_score=reads_score,
                       batch_size=batch_size)
    method.__name__ = name
    return method


score_cam = _perturbation_cam("score_cam", "Score-CAM", score_cam_weights,
                              "Score-CAM (Wang et al. 2020): each channel masks the image; channel weights are the "
                              "softmax of the target's score on the masked images. No gradients.", reads_score=False)
ablation_cam = _perturbation_cam("ablation_cam", "Ablation-CAM", ablation_cam_weights,
                                 "Ablation-CAM (Desai & Ramaswamy 2020): channel weights are the target's relative "
                                 "score drop when that channel is zeroed. No gradients.", reads_score=True)


@register(
    "eigen_cam",
    description="Eigen-CAM (Muhammad & Yeasin 2020): the first principal component of a block's (CNN: a "
                "stage's) feature maps. Class-agnostic, no gradients.",
    params=CAM_PARAMS[:3],
    class_specific=False, over="patches", kind="feature", needs=("pixels",),
)
def eigen_cam(adapter, capture: Capture, target: Target, *, layer: int, layers: str, aug_smooth: bool):
    return run_cam(adapter, capture, None, activations, name="Eigen-CAM", layer=layer, layers=layers,
                   aug_smooth=aug_smooth, eigen_smooth=True, grads=False, reads_score=False)
