"""Spatial attention: CBAM's spatial gate, a weight in [0, 1] per location of a block's feature map.

Woo, Park, Lee & Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018
(https://arxiv.org/abs/1807.06521), eq. 3: M_s(F) = σ(f^{7×7}([AvgPool_c(F); MaxPool_c(F)])), pooled
across channels after the channel gate. Read straight from the forward (``Capture.gates``);
class-agnostic. The map is over that block's own grid (its stage's cells and stride:
``Explanation.grid``), so it overlays the image like any patch map; ``meta["blocks"]`` summarises
every CBAM block.
"""
from __future__ import annotations

import numpy as np

from ..types import Capture, Target
from .gates import describe_gate, gates_of, pick_gate
from .registry import Param, register


@register(
    "spatial_attention",
    description="CBAM spatial attention: a block's gate per location, σ(7×7 convolution of the channel-mean and "
                "channel-max maps), over the image.",
    params=(Param("block", -1, "CBAM block (0 = the first; negative counts from the end)."),),
    class_specific=False, over="patches", kind="gate", needs=("spatial_gates",),
)
def spatial_attention(adapter, capture: Capture, target: Target, *, block: int):
    i, g = pick_gate(capture, "spatial", block)
    blocks = []
    for j, x in enumerate(gates_of(capture, "spatial")):
        v = x.value.float().cpu().numpy()
        r, c = np.unravel_index(int(np.argmax(v)), v.shape)
        blocks.append({**describe_gate(j, x), "mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
                       "peak": [int(r), int(c)]})
    return g.value.float().cpu().numpy(), {**describe_gate(i, g), "blocks": blocks, "grid": g.grid}
