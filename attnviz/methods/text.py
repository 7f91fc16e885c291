"""Text-side views for image–text models: which prompt tokens mattered.

``text_relevance``: Chefer, Gur & Wolf, ICCV 2021, on the text tower with
the image–text logit as the score: R = I; R ← R + E_h[(∇A ⊙ A)^+]·R per
layer; the map is the row of the token the text embedding is read from
(CLIP: the first end-of-text token; SigLIP: the last position), over the
prompt's real tokens. ``text_attention``: that row of one layer's raw
attention. Maps are over="tokens", one value per prompt token, >= 0;
``meta["tokens"]`` names them and ``meta["words"]`` groups byte pieces into
whole characters with summed values.
"""
from __future__ import annotations

import torch

from ..errors import UsageError
from ..types import Capture, Target
from .attention import head_or_fusion
from ..tokens.attention import positive_grad_attention
from .registry import Param, register


def _text_layer(n: int, layer: int) -> int:
    """A text-tower layer index (negative counts from the end), refused when out of range.

    The text tower may have a different depth from the image tower, so the image side's
    check (``layer_index``, against the capture's image layers) cannot be reused as is.
    """
    if not -n <= layer < n:
        raise UsageError(f"Layer {layer} is out of range: this model's text tower has {n} layers (0–{n - 1}).")
    return layer % n


def _finish(adapter, capture: Capture, p: int, row: torch.Tensor):
    pos = adapter.text_positions(capture.inputs, p)
    values = row[pos].float().cpu().numpy()                                    # [S_prompt]
    words = [(text, float(values[idx].sum())) for text, idx in adapter.text_words(capture.inputs, p)]
    return values, {"tokens": adapter.text_tokens(capture.inputs, p), "words": words, "prompt": capture.targets[p].label}


@register(
    "text_relevance",
    description="Which words of the prompt mattered: Chefer et al. 2021 relevance on the text tower.",
    params=(Param("start_layer", 0, "First text layer accumulated (negative counts from the end)."),),
    class_specific=True, over="tokens", kind="attention", families=("clip",),
)
def text_relevance(adapter, capture: Capture, target: Target, *, start_layer: int):
    p = target.index
    atts = capture.extras["text_attentions"]                                    # L × [P, H, S, S]
    grads = capture.grads(p, "text_attentions")
    start = _text_layer(len(atts), start_layer)
    s = atts[0].shape[-1]
    r = torch.eye(s, dtype=atts[0].dtype)                                      # [S, S]
    for a, g in zip(atts[start:], grads[start:]):
        r = r + positive_grad_attention(a[p], g[p]) @ r
    read = adapter.text_readout_index(capture.inputs["input_ids"])[p]
    return _finish(adapter, capture, p, r[read])


@register(
    "text_attention",
    description="Raw attention of the prompt's embedding token over the prompt, one text layer and head.",
    params=(Param("layer", -1, "Text layer (negative counts from the end)."),
            Param("head", "mean", "Head index, or mean / max / min over heads.")),
    class_specific=True, over="tokens", kind="attention", families=("clip",),
)
def text_attention(adapter, capture: Capture, target: Target, *, layer: int, head: str):
    p = target.index
    atts = capture.extras["text_attentions"]
    a = atts[_text_layer(len(atts), layer)][p]                                  # [H, S, S]
    read = adapter.text_readout_index(capture.inputs["input_ids"])[p]
    return _finish(adapter, capture, p, head_or_fusion(a, head)[read])
