"""How one self-attention layer computes its map, from the model's own tensors (the teaching page).

Scaled dot-product attention (Vaswani et al. 2017, https://arxiv.org/abs/1706.03762), as a ViT runs it
(Dosovitskiy et al. 2021): for head h and query token i,

    score_h[i, j] = q_h[i] · k_h[j] / √d  (+ bias_h[i, j] where the family adds one: BEiT's relative
                                            position bias, Bao et al. 2022)
    a_h[i, :]     = softmax_j(score_h[i, :])
    out_h[i]      = Σ_j a_h[i, j] v_h[j]

q, k and v come from the layer's own projections applied to the exact hidden states its attention module
received in one extra forward (a pre-hook; no gradients; every layer the lesson may show in that one
forward: ``attention_anatomies``), and any additive bias is the tensor the model
passed to that module. Nothing here re-implements the model: the check that matters for a lesson,
``softmax(q·k/√d + bias)`` against the attention the model itself returned, is ``Anatomy.max_difference``.

Attention modules are found by their projections: separate ``q_proj``/``k_proj``/``v_proj`` (ViT, DeiT,
BEiT, DINOv2, CLIP / SigLIP / GIT vision towers, transformers 5 naming) or one fused ``qkv`` (BLIP).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from .adapters.hooks import this_thread
from .errors import UsageError
from .methods.common import checked_index


@dataclass(frozen=True)
class Anatomy:
    """One layer's attention, taken apart. ``T`` tokens, ``H`` heads, ``d`` per-head width; all float32, CPU."""

    layer: int
    q: torch.Tensor                    # [H, T, d]
    k: torch.Tensor                    # [H, T, d]
    v: torch.Tensor                    # [H, T, d]
    scale: float                       # the 1/√d the module uses
    bias: Optional[torch.Tensor]       # [H, T, T] additive bias before the softmax, or None
    model_attention: torch.Tensor      # [H, T, T] what the model's module returned in the same forward

    @property
    def n_heads(self) -> int:
        return self.q.shape[0]

    def dot(self, query: int) -> torch.Tensor:
        """[H, T] q_i · k_j / √d: the content term, before any bias."""
        return torch.einsum("hd,htd->ht", self.q[:, query], self.k) * self.scale

    def bias_row(self, query: int) -> Optional[torch.Tensor]:
        """[H, T] the position term (BEiT), or None."""
        return None if self.bias is None else self.bias[:, query]

    def scores(self, query: int) -> torch.Tensor:
        """[H, T] logits the softmax sees: content term plus bias."""
        s = self.dot(query)
        b = self.bias_row(query)
        return s if b is None else s + b

    def softmax(self, query: int) -> torch.Tensor:
        """[H, T] the attention row recomputed here."""
        return torch.softmax(self.scores(query), dim=-1)

    def output(self, query: int) -> torch.Tensor:
        """[H, d] each head's output for the query: the attention-weighted sum of the values."""
        return torch.einsum("ht,htd->hd", self.softmax(query), self.v)

    def max_difference(self, query: Optional[int] = None) -> float:
        """Largest |recomputed − model| attention over one query's row (or every row)."""
        rows = range(self.q.shape[1]) if query is None else [query]
        return max(float((self.softmax(i) - self.model_attention[:, i]).abs().max()) for i in rows)


def attention_module(block: torch.nn.Module) -> torch.nn.Module:
    """The module inside a transformer block that projects q, k and v."""
    for m in block.modules():
        if all(hasattr(m, n) for n in ("q_proj", "k_proj", "v_proj")) or isinstance(getattr(m, "qkv", None), torch.nn.Linear):
            return m
    raise UsageError("This model's attention layers are not of a kind the attention walk-through can take apart.")


def _heads(m: torch.nn.Module) -> int:
    for name in ("num_heads", "num_attention_heads"):
        if isinstance(getattr(m, name, None), int):
            return getattr(m, name)
    cfg = getattr(m, "config", None)
    if cfg is not None:
        return cfg.num_attention_heads
    raise UsageError("Cannot tell how many heads this attention layer has.")


def _project(m: torch.nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(q, k, v) [H, T, d] and the scale, from the module's own weights."""
    h = _heads(m)
    x = hidden[0]                                                                 # [T, D]
    if hasattr(m, "q_proj"):
        q, k, v = m.q_proj(x), m.k_proj(x), m.v_proj(x)                           # [T, H·d] each
    else:
        q, k, v = m.qkv(x).chunk(3, dim=-1)                                       # fused [T, 3·H·d]
    t = x.shape[0]
    q, k, v = (y.view(t, h, -1).transpose(0, 1) for y in (q, k, v))               # [H, T, d]
    scale = getattr(m, "scaling", None) or getattr(m, "scale", None) or q.shape[-1] ** -0.5
    return q, k, v, float(scale)


def attention_anatomy(adapter, inputs: dict[str, Any], layer: int) -> Anatomy:
    """Take layer ``layer`` of the image tower apart for ``inputs`` (one forward without gradients)."""
    return attention_anatomies(adapter, inputs, [layer])[checked_index(layer, adapter.n_layers, "Layer", "layers")]


def attention_anatomies(adapter, inputs: dict[str, Any], layers=None) -> dict[int, Anatomy]:
    """Take several layers (default: every one) apart for ``inputs`` in ONE forward without gradients:
    layer index (from 0) -> ``Anatomy``. A lesson that moves through the layers pays one forward, not one
    per layer."""
    layers = range(adapter.n_layers) if layers is None else layers
    idx = sorted({checked_index(li, adapter.n_layers, "Layer", "layers") for li in layers})
    modules = {li: attention_module(adapter.token_block(li)) for li in idx}
    seen: dict[int, dict[str, Any]] = {li: {} for li in idx}

    def hooks_for(li):
        def before(mod, args, kwargs):
            seen[li]["hidden"] = args[0] if args else kwargs["hidden_states"]
            seen[li]["mask"] = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)

        def after(mod, args, kwargs, out):
            seen[li]["weights"] = out[1] if isinstance(out, tuple) and len(out) > 1 else None
        return before, after

    handles = []
    for li, module in modules.items():
        before, after = hooks_for(li)
        handles += [module.register_forward_pre_hook(this_thread(before), with_kwargs=True),
                    module.register_forward_hook(this_thread(after), with_kwargs=True)]
    try:
        with torch.no_grad(), adapter.lock:
            # float32 whatever the adapter's precision: the lesson recomputes the model's attention from q and k
            adapter.run(inputs, inputs["pixel_values"].to(adapter.device), attentions=True, reduced=False)
    finally:
        for h in handles:
            h.remove()
    return {li: _anatomy(li, modules[li], seen[li]) for li in idx}


def _anatomy(layer: int, module: torch.nn.Module, seen: dict[str, Any]) -> Anatomy:
    """One layer's ``Anatomy`` from what its attention module received and returned in the forward."""
    if seen.get("weights") is None:
        raise UsageError("This model did not return its attention weights (it is not running eager attention).")
    with torch.no_grad():
        q, k, v, scale = _project(module, seen["hidden"].float())
    mask = seen["mask"]
    bias = None
    if mask is not None:
        t = q.shape[1]
        bias = mask.float()[0].expand(q.shape[0], t, t).clone()                  # [H, T, T] (broadcast heads)
    cpu = dict(dtype=torch.float32, device="cpu")
    return Anatomy(layer=layer, q=q.to(**cpu), k=k.to(**cpu), v=v.to(**cpu), scale=scale,
                   bias=None if bias is None else bias.to(**cpu),
                   model_attention=seen["weights"][0].detach().to(**cpu))
