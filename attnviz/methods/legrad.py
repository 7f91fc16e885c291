"""LeGrad (Bousselham et al. 2024, "LeGrad: An Explainability Method for Vision Transformers via Feature
Formation Sensitivity", https://arxiv.org/abs/2404.03214).

Every block's output tokens z^l are read as if they were the last block's: through the model's own final
norm, pooling and head, s^l = head(norm(z^l)), a score per target at every depth. For block l,

    E^l = mean over heads h and query rows i of ( ∂ s^l_target / ∂ A^l_{h,i,j} )⁺        (a vector over keys j)

is read at the patch columns j; the map is Σ_l E^l over the chosen layers, min–max normalised to [0, 1]
(the paper's Eq. 3–5). The gradient is taken through block l's own MLP and residual only: s^l does not see
the blocks after l.

What "the model's own head" is, per family (it is exactly what the model computes after its last block,
so at the last layer s^l is the model's score; tests/test_legrad.py checks both against a hand-built head):

* ViT / DeiT / BEiT / DINOv2 classifiers: final LayerNorm, the family's pooling (CLS; CLS + distillation;
  the patch mean; CLS ⊕ patch mean), the classifier's logit for the target class; headless backbones: the
  norm of the CLS token (their one target, see ``adapters/classifier.py``);
* CLIP: post-LayerNorm of the CLS token, the visual projection, cosine similarity with the prompt's text
  embedding times the logit scale (the image–text logit);
* SigLIP: post-LayerNorm, the attention-pooling head, the image–text logit. By default (``readout="self"``)
  every family differentiates its self-attention maps, the paper's general formula. ``readout="probe"``
  (SigLIP only) is the authors' SigLIP variant: z^l goes through the attention-pooling head as above and
  the gradient is taken w.r.t. that head's probe attention over z^l's tokens, [H, 1, T] per layer,

      E^l = mean over heads h of ( ∂ s^l_target / ∂ P^l_{h,0,j} )⁺,

  summed over layers and min–max normalised. (Their code follows the cosine similarity, not the logit: a
  positive multiple plus a constant, the same map after min–max. It also zeroes the patches where the map
  of an "empty" prompt, "a photo of a", exceeds 0.8 after min–max; not done here.)

Conventions: the authors' OpenCLIP wrapper averages all tokens before the head for CLIP and starts at the
second-to-last block by default (``start_layer=-2``); this module follows the paper's text (the pooled
token the model's head reads; all layers by default). Maps are >= 0, over the patch grid.
"""
from __future__ import annotations

import torch

from ..adapters.hooks import this_thread
from ..errors import UsageError
from ..types import Capture, Target
from .common import layer_index
from .registry import Param, register


def layer_scores(adapter, capture: Capture) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], dict]:
    """One forward in the graph: ([L, n_targets] scores s^l of every block's tokens through the model's own
    head, L × [1, H, T, T] attention maps, the forward's extras: SigLIP's "probe_attention" is ([L, H, 1, T],),
    the pooling head's attention over each z^l). The last block's output is replaced by all blocks' outputs
    stacked on the batch dimension, so whatever the model does after its last block (norm, pooling, head,
    the image–text logit) runs on each z^l as it would on the real last output."""
    n, kept = adapter.n_layers, []

    def keep(m, args, out):
        z = out[0] if isinstance(out, tuple) else out                  # [1, T, D]
        kept.append(z)
        if len(kept) < n:
            return None
        stacked = torch.cat(kept)                                      # [L, T, D]: z^0 … z^{L-1}
        return (stacked,) + tuple(out[1:]) if isinstance(out, tuple) else stacked

    hooks = [adapter.token_block(i).register_forward_hook(this_thread(keep)) for i in range(n)]
    try:
        with torch.enable_grad(), adapter.lock:
            x = capture.inputs["pixel_values"].to(adapter.device).detach().clone().requires_grad_()
            scores, attentions, extras = adapter.run(capture.inputs, x, attentions=True,
                                                     reduced=adapter.reduced_for(capture.layout.n_tokens, recorded=False))
    finally:
        for h in hooks:
            h.remove()
    attentions = tuple(attentions or ())
    if getattr(adapter, "headless", False):
        # a headless backbone's one target is the norm of its last CLS token before the final norm (read
        # off the model's recorded hidden states, which the hook does not reach): the same of every z^l
        scores = torch.cat(kept)[:, 0].norm(dim=-1, keepdim=True)      # [L, 1]
    if len(attentions) != n or scores.shape[0] != n:
        raise RuntimeError(f"LeGrad expected {n} attention maps and {n} layer scores, got {len(attentions)} "
                           f"and {scores.shape[0]}.")
    return scores, attentions, extras


@register(
    "legrad",
    description="LeGrad (Bousselham et al. 2024): positive gradient of each layer's own score (its tokens "
                "through the model's head) w.r.t. that layer's attention, averaged over heads and queries, "
                "summed over layers.",
    params=(Param("start_layer", 0, "First block summed (negative counts from the end; the authors' CLIP code "
                                    "uses -2)."),
            Param("readout", "self", "Which attention is differentiated: 'self' (every block's, the paper's "
                                     "formula) or 'probe' (SigLIP's attention-pooling probe over each layer's "
                                     "tokens, the authors' SigLIP variant).", choices=("self", "probe"))),
    class_specific=True, over="patches", kind="gradient", families=("classifier", "clip"),
    needs=("attentions",),
)
def legrad(adapter, capture: Capture, target: Target, *, start_layer: int, readout: str):
    first = layer_index(capture, start_layer)
    scores, attentions, extras = layer_scores(adapter, capture)
    probe = extras.get("probe_attention") if readout == "probe" else None
    if readout == "probe" and not probe:
        raise UsageError("LeGrad's readout='probe' needs an attention-pooling head (SigLIP); this model has none: "
                         "use readout='self'.")
    lay = capture.layout
    total = torch.zeros(lay.n_patches, dtype=torch.float32, device=scores.device)
    for layer in range(first, adapter.n_layers):
        if probe:
            g, = torch.autograd.grad(scores[layer, target.index], probe[0], retain_graph=True)       # [L, H, 1, T]
            g = g[layer:layer + 1]                                                                   # [1, H, 1, T]
        else:
            g, = torch.autograd.grad(scores[layer, target.index], attentions[layer], retain_graph=True)  # [1, H, T, T]
        total += g[0].float().clamp(min=0).mean(dim=(0, 1))[lay.n_prefix:]                         # [N] keys
    span = total.max() - total.min()
    total = (total - total.min()) / span if span > 0 else torch.zeros_like(total)
    return total.reshape(lay.rows, lay.cols).detach().cpu().numpy()                                  # [rows, cols]
