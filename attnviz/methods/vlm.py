"""Which image regions (and which question words) produced each word of a vision-language model's answer.

Every map is for one answer token ``j``, read at the decoder row ``p = P - 1 + j`` that predicts it
(``adapters/vlm.py``), on the image tokens laid out by ``ImageTokens``: the returned map is the canvas
(``[rows, cols]``; tiles in their places), ``meta["beside"]`` holds views shown beside it (Idefics3's global
view) and ``meta["image_tokens"]`` the raw per-image-token vector.

* ``image_attention``: row ``p`` of the softmax attention of one decoder layer (or the mean over layers,
  ``layer=mean``), one head or heads fused, at the image tokens. What the raw attention says; not
  class-specific in the sense of the gradient methods, but it is read at the answer token's own row.
* ``answer_relevance``: Chefer, Gur & Wolf, ICCV 2021 (https://arxiv.org/abs/2103.15679), eqs. 5–6 for
  self-attention carried through the decoder from the answer token's logit: R = I; for each layer
  Ā = E_h[(∇A ⊙ A)⁺], R ← R + Ā·R; the map is row ``p`` of R at the image tokens (>= 0). Computed as a row
  vector pulled down the layers (v ← v + v·Ā, last layer first), the same numbers as ``e_p·R``.
* ``question_relevance``: the same row at the question's tokens (over="tokens").
* ``answer_saliency`` (Simonyan et al. 2014: |∂ log p / ∂ x|), ``answer_integrated_gradients``
  (Sundararajan et al. 2017: (x − x₀)·mean ∂ log p / ∂ x along the straight path, Riemann midpoints; signed),
  ``answer_smoothgrad`` (Smilkov et al. 2017: mean |∂ log p / ∂ x| over noisy copies) and
  ``answer_occlusion`` (Zeiler & Fergus 2014: log p(original) − log p(region set to the baseline), one image
  token's pixels at a time; signed) explain the answer token's LOG-PROBABILITY, summed over the pixels each
  image token reads (the family's ``pixel_tokens``), so they work on any pixel layout (Qwen2-VL's flattened
  patches, Idefics3's tiles). Captum's helpers assume one ``[1, 3, H, W]`` image and a patch grid, which these
  families do not have.

``VLM_NAMES`` maps the generic names (``relevance``, ``attention``, ``saliency``, ...) to these, for the CLI's
``--method relevance`` and the Ask page.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UsageError
from ..tokens.attention import positive_grad_attention
from ..types import Capture, Target
from .attention import head_or_fusion
from .common import checked_index
from .registry import Param, explain, register

FAMILY = ("vlm",)
NONE: tuple = ()          # the VLM methods need nothing the registry names; ``families`` keeps them to VLMs

#: Generic method names -> the VLM's own.
VLM_NAMES = {"attention": "image_attention", "relevance": "answer_relevance", "text_relevance": "question_relevance",
             "saliency": "answer_saliency", "integrated_gradients": "answer_integrated_gradients",
             "smoothgrad": "answer_smoothgrad", "occlusion": "answer_occlusion"}


def vlm_method(name: str) -> str:
    """A VLM method's registered name from its own or a generic name."""
    return VLM_NAMES.get(str(name).strip().lower(), str(name).strip().lower())


def _finish(capture: Capture, values: torch.Tensor, **meta):
    """Per-image-token vector [N] -> (canvas map, meta with the views beside it and the raw vector)."""
    geo = capture.extras["image_tokens"]
    v = values.detach().float().cpu()
    beside = {k: m.tolist() for k, m in geo.beside(v).items()}
    return geo.to_canvas(v), {**meta, "beside": beside, "image_tokens": v.numpy().tolist()}


def _row(adapter, capture: Capture, target: Target) -> int:
    return adapter.predicting_position(capture, target.index)


def _image_positions(capture: Capture) -> torch.Tensor:
    return torch.tensor(capture.extras["image_tokens"].positions, dtype=torch.long)


@register(
    "image_attention",
    description="Where the answer word's position looked among the image tokens: one decoder layer's attention "
                "(or the mean over layers), per head or heads fused.",
    # "decoder_layer", not "layer": the pages' layer widget is a whole number, this one may be "mean"
    params=(Param("decoder_layer", "mean", "Decoder layer (negative counts from the end), or mean over layers."),
            Param("head", "mean", "Head index, or mean / max / min over heads.")),
    class_specific=True, over="patches", kind="attention", families=FAMILY, needs=NONE,
)
def image_attention(adapter, capture: Capture, target: Target, *, decoder_layer: str, head: str):
    p = _row(adapter, capture, target)
    img = _image_positions(capture)
    layer = decoder_layer
    if str(layer).strip().lower() == "mean":
        rows = torch.stack([head_or_fusion(a, head)[p] for a in capture.attentions]).mean(0)        # [T]
    else:
        try:
            li = int(str(layer).strip())
        except ValueError:
            raise UsageError(f"Layer must be a decoder layer index or 'mean', got '{layer}'.") from None
        li = checked_index(li, len(capture.attentions), "Layer", "decoder layers")
        rows = head_or_fusion(capture.attentions[li], head)[p]                                      # [T]
    values = rows[img]                                                                              # [N]
    return _finish(capture, values, token=target.label, image_share=float(values.sum()))


def _relevance(capture: Capture, target: Target, start_layer: int) -> torch.Tensor:
    """e_p · (I + Ā_{L-1}) ⋯ (I + Ā_start): relevance of every token for the row predicting ``target``, [T]."""
    atts = capture.attentions
    start = checked_index(start_layer, len(atts), "Layer", "decoder layers")
    grads = capture.attention_grads(target.index)
    t = atts[0].shape[-1]
    v = torch.zeros(t, dtype=torch.float64)
    v[capture.inputs["prompt_len"] - 1 + target.index] = 1.0
    for li in range(len(atts) - 1, start - 1, -1):
        a_bar = positive_grad_attention(atts[li], grads[li]).double()                                # [T, T]
        v = v + v @ a_bar
    return v


START = Param("start_layer", 0, "First decoder layer accumulated (negative counts from the end).")


def vision_tower_relevance(adapter, capture: Capture, target: Target, values: torch.Tensor) -> torch.Tensor:
    """Image-token relevance [N] carried through the projector and down the vision tower's layers that feed it.

    The projector maps each image token from its vision tokens without mixing other tokens: one vision token
    (LLaVA, PaliGemma) or the scale² patches that Idefics3's pixel shuffle concatenates. Each of those patches gets
    an equal share of the token's relevance (the total is kept). Then, per view (Idefics3's tiles are separate
    images to the tower), Chefer's rule u ← u + u·Ā, last used layer first; the result is read on the patches and
    summed back over each image token's patches, so the map stays on the image-token grid [N]."""
    if adapter.spec.vision_map is None:
        raise UsageError(f"Relevance into the vision tower is not available for {adapter.kind} models "
                         "(transformers does not return their vision tower's attention weights).")
    if "vision_attentions" not in capture.extras:
        gb = adapter.vision_attention_bytes(capture.inputs["pixel_values"]) / 2 ** 30
        raise UsageError(f"The vision tower's attentions were not kept for this image ({gb:.1f} GB); set the "
                         "adapter's keep_vision_attentions = True before capturing to carry relevance into the tower.")
    _, used = adapter.spec.vision_map
    atts = capture.extras["vision_attentions"]                                        # L_v × [B, H, S, S]
    grads = capture.grads(target.index, "vision_attentions")
    b, s = atts[0].shape[0], atts[0].shape[-1]
    n = len(values)
    index = adapter.spec.vision_token_index(adapter.model, n, b, s)                    # [B, S], -1: feeds none
    keep = index >= 0
    share = torch.bincount(index[keep], minlength=n).double()                          # [N] patches per token
    u = torch.zeros(b, s, dtype=torch.float64)
    u[keep] = values.double()[index[keep]] / share[index[keep]]
    for li in range(used - 1, -1, -1):
        for v in range(b):
            u[v] = u[v] + u[v] @ positive_grad_attention(atts[li][v], grads[li][v]).double()   # [S]
    return torch.zeros(n, dtype=torch.float64).index_add_(0, index[keep], u[keep])


@register(
    "answer_relevance",
    description="Chefer et al. 2021: decoder attention weighted by its gradient for this answer word, accumulated "
                "through the layers, read on the image tokens (or carried on into the vision tower's patches).",
    params=(START, Param("into_vision", False, "Carry the relevance on through the projector and the vision "
                                              "tower's layers to the patches (LLaVA, PaliGemma, Idefics3).")),
    class_specific=True, over="patches", kind="attention", families=FAMILY, needs=NONE,
)
def answer_relevance(adapter, capture: Capture, target: Target, *, start_layer: int, into_vision: bool):
    v = _relevance(capture, target, start_layer)
    values = v[_image_positions(capture)]
    share = float(values.sum() / v.sum())
    if into_vision:
        values = vision_tower_relevance(adapter, capture, target, values)
    return _finish(capture, values, token=target.label, image_share=share)


@register(
    "question_relevance",
    description="Which words of the question mattered for this answer word: the same relevance row, on the "
                "question's tokens.",
    params=(START,), class_specific=True, over="tokens", kind="attention", families=FAMILY, needs=NONE,
)
def question_relevance(adapter, capture: Capture, target: Target, *, start_layer: int):
    v = _relevance(capture, target, start_layer)
    pos = adapter.question_positions(capture)
    ids = capture.inputs["encoding"]["input_ids"][0]
    return v[pos].float().numpy(), {"tokens": [adapter.token_text(int(ids[p])) for p in pos], "positions": pos,
                                    "token": target.label}


# --- pixel methods on the answer token's log-probability ---------------------------------------------------


def _per_token(adapter, capture: Capture, attr: torch.Tensor) -> torch.Tensor:
    """Pixel attributions shaped like pixel_values -> [N] sums over the pixels each image token reads."""
    geo = capture.extras["image_tokens"]
    index, channel = adapter.spec.pixel_tokens(capture.inputs["encoding"], geo)
    a = attr.detach().double().sum(channel).reshape(-1)                                             # [pixels]
    idx = index.reshape(-1)
    keep = idx >= 0
    return torch.zeros(geo.n_tokens, dtype=torch.float64).index_add_(0, idx[keep], a[keep])         # [N]


def _grad(adapter, capture: Capture, j: int, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        lp = adapter.answer_log_probs(capture.inputs, x)[j]
        (g,) = torch.autograd.grad(lp, x)
    return g


def _pixels(adapter, capture: Capture) -> torch.Tensor:
    return capture.inputs["pixel_values"].to(adapter.device).detach()


def _baseline(adapter, x: torch.Tensor, kind: str) -> torch.Tensor:
    """'mean': zeros (the processor's mean colour); 'black': black after the processor's normalisation."""
    if kind == "mean":
        # Not exactly zero: Idefics3 drops an all-zero image as batch padding.
        return torch.full_like(x, 1e-6)
    if kind != "black":
        raise UsageError("Baseline must be black or mean.")
    ip = getattr(adapter.processor, "image_processor", adapter.processor)
    mean = torch.tensor(ip.image_mean, dtype=x.dtype)
    std = torch.tensor(ip.image_std, dtype=x.dtype)
    black = -mean / std                                                                             # [3]
    if x.dim() == 2:          # Qwen2-VL's flattened patches: channel-major within each row [C·T·p·p]
        return black.repeat_interleave(x.shape[1] // 3).expand_as(x).clone()
    shape = [1] * x.dim()
    shape[-3] = 3
    return black.view(shape).expand_as(x).clone()


BASELINE = Param("baseline", "mean", "Reference image: mean (the processor's mean colour) or black.",
                 choices=("mean", "black"))


@register("answer_saliency", description="Gradient magnitude of the answer word's log-probability, summed over the "
          "pixels of each image token.", class_specific=True, over="patches", kind="gradient", families=FAMILY,
          needs=NONE)
def answer_saliency(adapter, capture: Capture, target: Target):
    g = _grad(adapter, capture, target.index, _pixels(adapter, capture))
    return _finish(capture, _per_token(adapter, capture, g.abs()), token=target.label)


@register("answer_integrated_gradients", description="Integrated gradients of the answer word's log-probability "
          "from a baseline image, summed per image token (signed).",
          params=(Param("steps", 16, "Path steps.", min=1, max=256), BASELINE),
          class_specific=True, over="patches", signed=True, kind="gradient", slow=True, families=FAMILY, needs=NONE)
def answer_integrated_gradients(adapter, capture: Capture, target: Target, *, steps: int, baseline: str,
                                progress=None):
    x = _pixels(adapter, capture)
    x0 = _baseline(adapter, x, baseline)
    total = torch.zeros_like(x)
    for k in range(steps):
        total += _grad(adapter, capture, target.index, x0 + (k + 0.5) / steps * (x - x0))
        if progress is not None:
            progress(k + 1, steps)
    attr = (x - x0) * total / steps
    with torch.no_grad():
        gap = float(adapter.answer_log_probs(capture.inputs, x)[target.index]
                    - adapter.answer_log_probs(capture.inputs, x0)[target.index])
    return _finish(capture, _per_token(adapter, capture, attr), token=target.label,
                   completeness={"sum": float(attr.sum()), "log_prob_difference": gap})


@register("answer_smoothgrad", description="SmoothGrad: gradient magnitude of the answer word's log-probability "
          "averaged over noisy copies of the image, summed per image token.",
          params=(Param("samples", 8, "Noisy copies.", min=1, max=64),
                  Param("sigma", 0.15, "Noise level (fraction of the input's range).", min=0.0, max=1.0),
                  Param("seed", 0, "Random seed.")),
          class_specific=True, over="patches", kind="gradient", slow=True, families=FAMILY, needs=NONE)
def answer_smoothgrad(adapter, capture: Capture, target: Target, *, samples: int, sigma: float, seed: int,
                      progress=None):
    x = _pixels(adapter, capture)
    gen = torch.Generator().manual_seed(seed)
    scale = sigma * float(x.max() - x.min())
    total = torch.zeros_like(x)
    for k in range(samples):
        noise = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device) * scale
        total += _grad(adapter, capture, target.index, x + noise).abs()
        if progress is not None:
            progress(k + 1, samples)
    return _finish(capture, _per_token(adapter, capture, total / samples), token=target.label)


@register("answer_occlusion", description="Occlusion: how much the answer word's log-probability drops when one "
          "image token's pixels are set to the baseline (signed).", params=(BASELINE,),
          class_specific=True, over="patches", signed=True, kind="perturbation", slow=True, families=FAMILY,
          needs=NONE)
def answer_occlusion(adapter, capture: Capture, target: Target, *, baseline: str, progress=None):
    x = _pixels(adapter, capture)
    x0 = _baseline(adapter, x, baseline)
    geo = capture.extras["image_tokens"]
    index, channel = adapter.spec.pixel_tokens(capture.inputs["encoding"], geo)
    index = index.to(x.device).unsqueeze(channel)                                  # broadcast over channels
    with torch.no_grad():
        base = adapter.answer_log_probs(capture.inputs, x)[target.index]
        drops = torch.zeros(geo.n_tokens, dtype=torch.float64)
        for k in range(geo.n_tokens):
            hide = (index == k).expand_as(x)
            drops[k] = float(base - adapter.answer_log_probs(capture.inputs, torch.where(hide, x0, x))[target.index])
            if progress is not None:
                progress(k + 1, geo.n_tokens)
    return _finish(capture, drops, token=target.label)


def word_maps(adapter, capture: Capture, method: str = "answer_relevance", **params) -> list[np.ndarray]:
    """Every answer token's canvas map for one method (the Ask page's strip)."""
    return [explain(adapter, capture, vlm_method(method), t.index, **params).map for t in capture.targets]
