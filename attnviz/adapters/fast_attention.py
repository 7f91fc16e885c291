"""Eager attention that returns its weights, with fewer passes over the [B, H, T, T] scores.

Every method here reads the softmax attention weights, so models run "eager" attention (SDPA and flash
kernels return none). transformers' eager function (``eager_attention_forward`` of ViT, DeiT, BEiT, DINOv2,
CLIP, SigLIP, Swin, GIT's vision tower) computes ``softmax(q·kᵀ · scaling + mask)`` in separate passes:
the product, the scaling, the mask, a float32 softmax into a new tensor, a cast, dropout. ``fast_eager``
computes the same numbers in fewer passes:

* the scaling is BLAS's ``alpha`` of the batched product (``baddbmm``), applied as the product is written
  (float32);
* without autograd on CPU the mask is added and the softmax taken in place (``out=`` the scores);
* float32 inputs skip the float32 round trip (a no-op cast); other dtypes keep it, as transformers does.

Dropout is transformers' own call (training only), and the weights returned are the ones multiplied
with the values (after dropout), so ``output_attentions`` and d score / d attention are unchanged.

Forwards that read only the scores without autograd (``ModelAdapter.forward_scores`` under no_grad /
inference_mode: perturbation metrics, occlusion, ablation, LIME, Score-CAM) need no weights: under
:func:`scores_only` the same families run PyTorch's fused ``scaled_dot_product_attention`` instead (on
ViT-B/16, 2 CPU threads, 0.41 → 0.29 s per image at batch 8). Gradient methods keep the eager arithmetic:
a HiResCAM map that is a sum of products cancelling to 1e-7 moved by 2 % through the fused backward.

Only families whose attention modules call ``ALL_ATTENTION_FUNCTIONS.get_interface`` and whose own eager
function is this arithmetic use it: :data:`FAST_EAGER_TYPES` (read from transformers 5's modelling code).
Not on it: BLIP (its vision and text attention are their own modules, eager only), GIT (its text
self-attention classes are picked from a table keyed by "eager"/"sdpa"), GPT-2 (ViT-GPT2's decoder
special-cases ``_attn_implementation == "eager"``), Swin V2 (scaled cosine attention, its own module).
They keep plain "eager" (:func:`use_fast_eager`).
"""
from __future__ import annotations

import threading
from types import MethodType
from typing import Optional

import torch
import transformers
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.masking_utils import eager_mask

from ..precision import kept
from ..threadlocal import setting

#: The implementation name the attention and mask interfaces know ``fast_eager`` by.
NAME = "attnviz_eager"

#: Model types whose every attention module dispatches through the attention interface to an eager function
#: equal to ``fast_eager``: matmul · scaling, + additive mask, softmax in float32 then cast, dropout in
#: training, matmul with the values. The value says for which parameter dtypes: DINOv2's softmax runs in the
#: input dtype (no float32 upcast), the same numbers only for float32 models.
FAST_EAGER_TYPES: dict[str, Optional[tuple[torch.dtype, ...]]] = {
    "vit": None, "deit": None, "beit": None, "swin": None,
    "dinov2": (torch.float32,), "dinov2_with_registers": (torch.float32,),
    "clip": None, "siglip": None,
}


def fast_eager(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: Optional[torch.Tensor], scaling: Optional[float] = None, dropout: float = 0.0,
               **kwargs):
    """transformers' attention-interface signature: q, k, v [B, H, T, d] -> (output [B, T, H, d] contiguous,
    weights [B, H, T_q, T_k]), the numbers of the standard eager function."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    rec = getattr(_LOCAL, "recorder", None)
    if rec is not None and module in rec.layer_of:
        return rec.attend(module, query, key, value, attention_mask, scaling)
    if getattr(_LOCAL, "scores_only", False) and key.shape[1] == query.shape[1]:
        # nobody reads the weights (``scores_only``): PyTorch's fused kernel, the same softmax(q·kᵀ·s + mask)·v
        out = nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, scale=scaling,
            dropout_p=dropout if module.training else 0.0)                             # [B, H, Tq, d]
        return out.transpose(1, 2).contiguous(), None                                  # [B, Tq, H, d]
    b, h, tq, d = query.shape
    tk = key.shape[-2]
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (query, key, value, attention_mask))
    if query.dtype == torch.float32 and key.shape[:2] == (b, h):
        # alpha scales the float32 accumulator as the product is written: the same rounding as scaling the
        # float32 product afterwards, without a second pass over [B, H, T, T]. (In half precision the
        # product is rounded before transformers scales it: that path keeps its two steps.)
        qf, kf = query.reshape(b * h, tq, d), key.reshape(b * h, tk, d)                    # [BH, T, d]
        w = torch.baddbmm(query.new_zeros(()).expand(1, 1, 1), qf, kf.transpose(1, 2),
                          beta=0, alpha=scaling).view(b, h, tq, tk)                          # [B, H, Tq, Tk]
    else:
        w = torch.matmul(query, key.transpose(-1, -2)) * scaling
    in_place = not grad and w.device.type == "cpu"
    if attention_mask is not None:
        if (in_place and torch.result_type(w, attention_mask) == w.dtype
                and torch.broadcast_shapes(w.shape, attention_mask.shape) == w.shape):
            w.add_(attention_mask)
        else:
            w = w + attention_mask
    if query.dtype != torch.float32 or w.dtype != torch.float32:
        w = nn.functional.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)    # transformers' own steps
    elif in_place:
        torch.softmax(w, -1, out=w)
    else:
        w = torch.softmax(w, -1)
    if module.training and dropout > 0:
        w = nn.functional.dropout(w, p=dropout, training=True)
    out = torch.matmul(w, value).transpose(1, 2).contiguous()                              # [B, Tq, H, d]
    return out, w


_LOCAL = threading.local()


class Recorder:
    """The chunked path's capture (``tokens/chunked.py``): for the attention modules it is given (module ->
    layer), attention runs as SDPA (no [T, T] weights kept, nor returned) and the recorder keeps what the
    views recompute it from, O(T·d) per layer: q, k, the scaling, the additive mask (BEiT's relative
    position bias, as the model built it), and with ``grads`` the values and the head output [B, H, T, d]
    itself, in the graph, to differentiate (∇A = dO·Vᵀ). Acts only in the thread that entered
    :func:`recording` (one model serves every session).

    ``blocks`` (with ``grads``): token blocks whose forward is checkpointed (Chen et al. 2016, "Training deep
    nets with sublinear memory cost"; ``torch.utils.checkpoint``, non-reentrant): the graph keeps each block's
    input instead of its activations, and a backward recomputes one block at a time (:func:`checkpointed`).
    The recorder keeps what the first run of a block saw; the recomputation replays the block through
    SDPA without recording (``replay``), so every layer is recorded once."""

    def __init__(self, layer_of: dict, grads: bool, blocks=(), replay: bool = False):
        self.layer_of, self.grads, self.replay = layer_of, grads, replay
        self.blocks = frozenset(blocks) if grads else frozenset()
        self.layers: dict[int, dict] = {}

    def attend(self, module, query, key, value, mask, scaling):
        mask = kernel_mask(query, mask)                                # the bias the views recompute with
        out, lse = sdpa(query, key, value, mask, scaling)
        if not self.replay:
            # kept float32 as they come (precision.kept: widened from bfloat16, the same tensor in float32), so
            # a bfloat16 pass never holds a layer's q, k twice
            self.layers[self.layer_of[module]] = {                                         # [B, H, T, d] each
                "q": kept(query), "k": kept(key), "scaling": float(scaling),
                "lse": None if lse is None else kept(lse),                                # [B, H, T]
                "bias": None if mask is None else kept(mask),
                "v": kept(value) if self.grads else None, "out": out if self.grads else None}
        return out.transpose(1, 2).contiguous(), None                                     # [B, T, H, d]


def scores_only():
    """While the block runs, this thread's ``fast_eager`` attention computes its output with PyTorch's
    ``scaled_dot_product_attention`` and returns no weights: for forwards that read only the scores
    (perturbation metrics, Captum's forward function). The same arithmetic up to float rounding (the
    fused kernel's order of summation); a Recorder in force still takes precedence."""
    return setting(_LOCAL, "scores_only", True, default=False)


def sdpa(query, key, value, mask, scaling):
    """(softmax(q·kᵀ·s + mask)·v [B, H, T, d], each row's log-sum-exp [B, H, T] (float32) or None): PyTorch's
    CPU flash-attention kernel (the one ``scaled_dot_product_attention`` runs on CPU, its logsumexp kept) for
    float32 and bfloat16 on CPU; elsewhere ``scaled_dot_product_attention`` (no log-sum-exp). Under bfloat16
    autocast q, k, v arrive in bfloat16 and a float mask (BEiT's relative position bias) is rounded to it, as
    autocast rounds every input of ``scaled_dot_product_attention`` (``kernel_mask``, which the caller applies:
    the recorder keeps the mask the kernel got)."""
    if (query.device.type == "cpu" and query.dtype in (torch.float32, torch.bfloat16)
            and key.dtype == value.dtype == query.dtype and (mask is None or mask.dtype == query.dtype)):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, False, attn_mask=mask, scale=scaling)
        return out, lse
    return nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling), None


def kernel_mask(query: torch.Tensor, mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The additive mask as the attention kernel gets it: rounded to q's dtype under half-precision autocast
    (autocast rounds every floating input of ``scaled_dot_product_attention``), else as it is."""
    if (mask is not None and mask.is_floating_point() and mask.dtype != query.dtype
            and query.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(query.device.type)):
        return mask.to(query.dtype)
    return mask


def recording(rec: Optional[Recorder]):
    """Route this thread's attention of ``rec``'s modules through ``rec`` while the block runs (yields ``rec``)."""
    return setting(_LOCAL, "recorder", rec)


def checkpointed(self: nn.Module, *args, **kwargs):
    """A token block's forward (installed per instance by :func:`install_checkpointing`): the class's own
    forward, checkpointed while this thread records a capture with gradients that lists the block.

    The first run records (the recorder in force); a backward's recomputation of the block (once per
    backward, ``torch.utils.checkpoint`` frees what it recomputes as the backward uses it) replays it
    through SDPA without recording, so q, k, v and the head output kept are the first run's."""
    forward = type(self).forward
    rec = getattr(_LOCAL, "recorder", None)
    if rec is None or self not in rec.blocks or not torch.is_grad_enabled():
        return forward(self, *args, **kwargs)
    replay = Recorder(rec.layer_of, rec.grads, replay=True)
    # The autograd graph keeps ``run`` for the recomputation, and the recorder keeps head outputs that are in
    # that graph: a cycle through autograd's C++ nodes, which Python's collector cannot see, so every capture's
    # graph leaked (~230 MB each at 518², session 10). ``run`` lets go of the recorder after the first run.
    first = [rec]

    def run(*a, **kw):
        with recording(first.pop() if first else replay):
            return forward(self, *a, **kw)
    return checkpoint(run, *args, use_reentrant=False, **kwargs)


def install_checkpointing(blocks) -> None:
    """Give each block :func:`checkpointed` as its forward (idempotent; inert unless a recorder lists the block).
    A bound method of the instance: a deep copy of the model rebinds it to the copy."""
    for b in blocks:
        f = b.__dict__.get("forward")
        if getattr(f, "__func__", None) is not checkpointed:
            b.forward = MethodType(checkpointed, b)


transformers.AttentionInterface.register(NAME, fast_eager)
# Text towers (CLIP, SigLIP) build their causal / padding masks per implementation name: the same additive
# float mask as "eager" (an unknown name would get no mask at all).
transformers.AttentionMaskInterface.register(NAME, eager_mask)


def fast_eager_applies(model: nn.Module) -> bool:
    """Whether ``model``'s own eager attention is ``fast_eager``'s arithmetic (model type and dtype)."""
    config = getattr(model, "config", None)
    if config is None or config.model_type not in FAST_EAGER_TYPES:
        return False
    dtypes = FAST_EAGER_TYPES[config.model_type]
    param = next(model.parameters(), None)
    return dtypes is None or param is None or param.dtype in dtypes


def use_fast_eager(model: nn.Module) -> str:
    """Switch a model that runs eager attention to :func:`fast_eager` where that is the same arithmetic
    (:data:`FAST_EAGER_TYPES`); any other model keeps what it runs. Returns the implementation in use."""
    current = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if current == "eager" and fast_eager_applies(model):
        model.set_attn_implementation(NAME)
        return NAME
    return current
