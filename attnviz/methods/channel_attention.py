"""Channel attention: the excitation vector of each squeeze-and-excitation / ECA / CBAM channel gate.

Hu, Shen & Sun, "Squeeze-and-Excitation Networks", CVPR 2018 (https://arxiv.org/abs/1709.01507):
a block's gate s = σ(W₂ δ(W₁ z)) from its channel means z scales channel c of its feature map by
s_c ∈ [0, 1]. ECA (Wang et al., CVPR 2020) computes s from a 1-D convolution over neighbouring
channel means; CBAM's channel half (Woo et al., ECCV 2018) from average- and max-pooled features.
Read straight from the forward (``Capture.gates``): nothing is recomputed, nothing differentiated;
class-agnostic (a gate does not know the class it will serve).

The map is one block's excitation vector ([C], over "channels"); ``meta["blocks"]`` summarises every
gated block (mean, spread, the channels it passes most and suppresses most), JSON-ready, so the CLI's
``--json`` lists them all.
"""
from __future__ import annotations

import numpy as np

from ..types import Capture, Gate, Target
from .gates import describe_gate, gates_of, pick_gate
from .registry import Param, register


def block_summary(i: int, g: Gate, top_k: int = 5) -> dict:
    """One channel gate as numbers: its statistics and the ``top_k`` channels it passes / suppresses most."""
    v = g.value.float().cpu().numpy()
    order = np.argsort(-v, kind="stable")
    k = min(top_k, len(v))
    return {**describe_gate(i, g), "channels": int(len(v)), "mean": float(v.mean()), "std": float(v.std()),
            "min": float(v.min()), "max": float(v.max()), "share_above_half": float((v > 0.5).mean()),
            "emphasised": [{"channel": int(c), "gate": float(v[c])} for c in order[:k]],
            "suppressed": [{"channel": int(c), "gate": float(v[c])} for c in order[::-1][:k]]}


@register(
    "channel_attention",
    description="Channel attention (SE / ECA / CBAM): each gated block's weight in [0, 1] per channel for this "
                "image; the map is one block's excitation vector.",
    params=(Param("block", -1, "Gated block (0 = the first with a channel gate; negative counts from the end)."),
            Param("top_k", 5, "Channels listed as most emphasised / most suppressed in each block's summary.",
                  min=1, max=64)),
    class_specific=False, over="channels", kind="gate", needs=("channel_gates",),
)
def channel_attention(adapter, capture: Capture, target: Target, *, block: int, top_k: int):
    i, g = pick_gate(capture, "channel", block)
    blocks = [block_summary(j, x, top_k) for j, x in enumerate(gates_of(capture, "channel"))]
    return g.value.float().cpu().numpy(), {**describe_gate(i, g), "blocks": blocks}

