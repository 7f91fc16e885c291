"""Dense image–text similarity of CLIP-style models, without gradients (MaskCLIP / clip-cam's view).

Each patch token of the vision tower's last block is sent through the same head that turns the pooled
token into the image embedding, and compared with the prompt's text embedding by cosine similarity:

* CLIP: ``post_layernorm`` then ``visual_projection`` (the head the CLS token goes through);
* SigLIP: ``post_layernorm`` then the attention-pooling head with the patch as its only key (the probe's
  attention is then 1 on it, so the head's output is out_proj(v_proj(x)) plus its MLP residual: the
  embedding the image would have if the pooling read that patch alone; Zhou et al. 2022's MaskCLIP trick).

CLIP's raw similarity maps are known to be inverted or noisy (foreground often lower than background: the
patches share a large class-independent component). ``surgery=true`` applies CLIP Surgery's feature surgery
(Li et al. 2023, https://arxiv.org/abs/2304.05653): each patch's similarity to the prompt minus its mean
similarity over all the prompts given, which removes what every prompt shares (needs two prompts or more;
the architecture half of CLIP Surgery, v–v attention, is not applied). Maps are signed, over the patch grid.
"""
from __future__ import annotations

import torch

from .. import precision
from ..adapters.hooks import this_thread
from ..errors import UsageError
from ..types import Capture, Target
from .registry import Param, register


def patch_embeddings(adapter, capture: Capture) -> torch.Tensor:
    """[N, E] unit-norm image embeddings of each patch token (module docstring), one forward, no gradients."""
    model, kept = adapter.model, []
    vision = model.vision_model
    hook = adapter.token_block(adapter.n_layers - 1).register_forward_hook(
        this_thread(lambda m, a, out: kept.append(precision.kept(out[0] if isinstance(out, tuple) else out))))
    try:
        with torch.no_grad():          # forward_scores takes the model's lock
            adapter.forward_scores(capture.inputs["pixel_values"].to(adapter.device), capture.inputs)
    finally:
        hook.remove()
    lay = capture.layout
    with torch.no_grad():
        x = vision.post_layernorm(kept[0][0, lay.n_prefix:])                   # [N, D]
        if adapter.kind == "siglip":
            attn = vision.head.attention
            d = x.shape[-1]
            v = torch.nn.functional.linear(x, attn.in_proj_weight[2 * d:], attn.in_proj_bias[2 * d:])   # [N, D]
            h = attn.out_proj(v)
            e = h + vision.head.mlp(vision.head.layernorm(h))                  # [N, D]
        else:
            e = model.visual_projection(x)                                    # [N, E]
    return e / e.norm(dim=-1, keepdim=True)


def text_embeddings(adapter, capture: Capture) -> torch.Tensor:
    """[P, E] unit-norm text embeddings of the prompts, as the model's forward computes them."""
    ids = capture.inputs["input_ids"].to(adapter.device)
    mask = None if adapter.kind == "siglip" else capture.inputs["attention_mask"].to(adapter.device)
    with torch.no_grad(), adapter.lock, precision.computing(adapter.device, adapter.precision):
        t = adapter.model.get_text_features(input_ids=ids, attention_mask=mask)
    t = precision.kept(getattr(t, "pooler_output", t))                         # transformers 5: an output object
    return t / t.norm(dim=-1, keepdim=True)


@register(
    "clip_similarity",
    description="Dense image–text similarity (MaskCLIP line; CLIP Surgery's feature surgery, Li et al. 2023, as "
                "an option): each patch's projected embedding against the prompt's. No gradients.",
    params=(Param("surgery", False, "Subtract each patch's mean similarity over all the prompts (CLIP Surgery's "
                                    "feature surgery; needs two prompts or more)."),),
    class_specific=True, over="patches", signed=True, kind="feature", families=("clip",),
)
def clip_similarity(adapter, capture: Capture, target: Target, *, surgery: bool):
    sims = patch_embeddings(adapter, capture) @ text_embeddings(adapter, capture).T   # [N, P]
    if surgery:
        if sims.shape[1] < 2:
            raise UsageError("CLIP Surgery compares prompts with each other: give two prompts or more.")
        sims = sims - sims.mean(dim=1, keepdim=True)
    lay = capture.layout
    return sims[:, target.index].reshape(lay.rows, lay.cols).float().cpu().numpy()   # [rows, cols]
