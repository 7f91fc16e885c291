"""The precision a model's forward and backward passes compute in.

``float32`` (the default) is the arithmetic every test compares with its reference (the papers' formulas,
Captum, the model's own eager attentions) to 1e-5. ``bfloat16`` runs the model under ``torch.autocast``:
PyTorch's CPU autocast policy computes matrix products, linear layers and convolutions in bfloat16 and
keeps reductions such as the softmax in float32 (transformers' eager attention softmaxes in float32 and
rounds the weights to bfloat16). A CPU with AMX tiles (Intel Sapphire Rapids and later: ``amx_bf16`` in
``/proc/cpuinfo``) multiplies bfloat16 matrices about 9× faster than float32 (one core here: 1,244
against 134 GFLOP/s), so a ViT-B/16 capture costs about a third and a capture with its backward and relevance
about 0.4 of float32's (``bench --precision``): what a classroom server needs when thirty students upload.

Autocast casts a layer's float32 weight to bfloat16 at every call (ViT-B/16: 344 MB read, 172 MB written per
forward, and each autograd graph keeps its own copies). :func:`shadow` gives every linear layer and
convolution one bfloat16 copy of its weight and bias instead, made once and used only while autocast to that
dtype is on (made again if the weight changes, as the randomisation check's re-initialisation does); float32
passes use the float32 weights as before. One model then serves both precisions: ViT-B/16 keeps 172 MB more.

What a capture keeps is float32 either way (:func:`kept`): the methods' own arithmetic (rollout's
products, relevance's sums, normalisation) stays float32, only the model's passes are rounded. Measured
against float32 on the trained demo ViT and a random ViT-B/16 (``bench --precision``; ``tests/test_precision.py``
checks every family that allows it): Pearson r ≥ 0.9997 for rollout, relevance, gradient rollout and Grad-CAM,
≥ 0.994 for one layer's raw attention, also with a high-norm outlier patch token as real ViTs grow (the test
builds one); probabilities move by up to ~0.015, so where two classes are closer than that the top class may
differ.

Families that generate text (captioners, vision-language models) keep float32: their answer comes from
``generate``, and a map must explain the tokens it produced (``ModelAdapter.REDUCED_PRECISION``).
Large inputs: a pass that returns every layer's dense T×T weights runs float32 above :data:`MAX_TOKENS`;
in bfloat16 the "auto" attention path takes the chunked path there instead (``ModelAdapter.rows_path``),
whose forward and backward run bfloat16 through PyTorch's CPU flash kernel and keep q, k, v and the
kernel's float32 log-sum-exp, widened to float32, from which the views recompute attention rows in
float32 (DINOv2-S, CPU time over a float32 bare forward, float32 -> bfloat16: 518² rollout 1.33 -> 0.67×,
relevance 3.44 -> 2.13×; 896² 1.45 -> 0.76×, 4.91 -> 2.97×; ``bench --highres`` with ``ATTNVIZ_PRECISION``).
Window attention (Swin) and CNNs hold no T×T and run bfloat16 at any size (``ModelAdapter.DENSE_ATTENTION``).
"""
from __future__ import annotations

import os
import types
from contextlib import nullcontext
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from .errors import UsageError

#: Passes that return dense attention weights over more tokens than this run float32 whatever the precision
#: (bfloat16 captures of that size take the chunked path instead: module docstring). Their cost is the
#: attention's T² work and memory, not matrix products: a ViT-B/16 capture with its backward and relevance (2
#: threads, warm, full path) took
#: 0.67 -> 0.34 CPU s at 197 tokens and 1.06 -> 0.53 s at 325, but 2.52 -> 2.51 s at 577 and 3.39 -> 3.47 s at
#: 785, while bfloat16's graph keeps the attention twice (the softmax's float32 output and its bfloat16 copy)
#: and the capture a float32 copy: peak +481 MB at 577 tokens and +665 MB at 785 (+154 MB at 197).
MAX_TOKENS = 400

#: The names ``ATTNVIZ_PRECISION`` (and ``--precision``) accept.
PRECISIONS: dict[str, torch.dtype] = {"float32": torch.float32, "fp32": torch.float32,
                                      "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse(value: Any) -> torch.dtype:
    """A precision by name (or a dtype): float32 / fp32, bfloat16 / bf16."""
    if isinstance(value, torch.dtype) and value in PRECISIONS.values():
        return value
    got = PRECISIONS.get(str(value).strip().lower())
    if got is None:
        raise UsageError(f"Precision must be float32 or bfloat16, got '{value}'.")
    return got


def from_env() -> torch.dtype:
    """``ATTNVIZ_PRECISION`` (float32 unless set)."""
    return parse(os.environ.get("ATTNVIZ_PRECISION", "float32"))


def name(dtype: torch.dtype) -> str:
    return "bfloat16" if dtype == torch.bfloat16 else "float32"


def computing(device: torch.device, dtype: torch.dtype):
    """The context a model pass runs in: autocast to ``dtype``, or nothing for float32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def kept(t: torch.Tensor) -> torch.Tensor:
    """A tensor a capture keeps: detached, and float32 if the pass rounded it to half precision (a float32
    tensor is returned as it is, no copy)."""
    t = t.detach()
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


@lru_cache(maxsize=1)
def fast_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in AMX tiles (Linux ``/proc/cpuinfo``'s ``amx_bf16``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


def note(adapter) -> str:
    """One line for a server's log: what the passes compute in, and where bfloat16 would be faster."""
    dtype = getattr(adapter, "precision", torch.float32)
    if dtype != torch.float32:
        return f"its passes compute in {name(dtype)} (ATTNVIZ_PRECISION)"
    if getattr(adapter, "REDUCED_PRECISION", False) and fast_bfloat16():
        return ("its passes compute in float32; this CPU has AMX: ATTNVIZ_PRECISION=bfloat16 makes them take "
                "about 2.5-3x less CPU (maps within r > 0.999)")
    return "its passes compute in float32"


#: The modules autocast computes in half precision whose weights :func:`shadow` copies.
SHADOWED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def shadow(model: nn.Module) -> None:
    """Give every linear layer and convolution of ``model`` a half-precision copy of its weight and bias for
    autocast (module docstring), made at its first such call. Idempotent."""
    for m in model.modules():
        if isinstance(m, SHADOWED) and "_attnviz_shadow" not in m.__dict__:
            m._attnviz_shadow = {}
            m.forward = types.MethodType(_linear if isinstance(m, nn.Linear) else _conv, m)


def _stamp(p: torch.Tensor | None):
    return None if p is None else (p.data_ptr(), p._version)


def _shadow_weights(m: nn.Module, x: torch.Tensor):
    """(weight, bias) in autocast's dtype while autocast is on for ``x``'s device and the weights are frozen
    float32; else None (the module's own weights)."""
    kind = x.device.type
    if not torch.is_autocast_enabled(kind) or m.weight.requires_grad or m.weight.dtype != torch.float32:
        return None
    dtype = torch.get_autocast_dtype(kind)
    key = (_stamp(m.weight), _stamp(m.bias))
    got = m._attnviz_shadow.get(dtype)
    if got is None or got[0] != key:
        with torch.no_grad():
            got = (key, m.weight.to(dtype), None if m.bias is None else m.bias.to(dtype))
        m._attnviz_shadow[dtype] = got
    return got[1], got[2]


def _linear(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    w = _shadow_weights(self, x)
    if w is None:
        return nn.functional.linear(x, self.weight, self.bias)
    return nn.functional.linear(x.to(w[0].dtype), w[0], w[1])


def _conv(self, x: torch.Tensor) -> torch.Tensor:
    w = _shadow_weights(self, x)
    if w is None:
        return self._conv_forward(x, self.weight, self.bias)
    return self._conv_forward(x.to(w[0].dtype), w[0], w[1])
