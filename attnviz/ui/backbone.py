"""What a backbone without classes opens on (issue 20): the last layer's CLS attention, head by head, each
with its DINO mask (Caron et al. 2021: the smallest set of patches holding 60 % of the head's CLS attention
to the patches; the rest dimmed). That is what self-supervised backbones such as DINO / DINOv2 are looked
at for; class-specific methods have no class to explain here (the page says what they explain instead)."""
from __future__ import annotations

import streamlit as st

from ..headstats import dino_masks
from . import mapview, panels, state
from .errors import guard

DINO_SHARE = 0.6
PER_ROW = 3                # large: three heads across (six heads of a ViT-S in two rows)


def is_backbone(adapter) -> bool:
    """A ViT-family model without a classifier head (its only target is its CLS embedding)."""
    return bool(getattr(adapter, "headless", False))


def target_sentence(label: str, value: float) -> str:
    """One line: what the target of a class-specific method is on a model without classes."""
    return (f"This backbone has no classes: class-specific methods (relevance, gradients, occlusion…) explain "
            f"**{label}** ({value:.3g}), the length of its last-layer CLS vector — which patches make that "
            f"vector long, not where an object of some class is. Its attention, below, is what it is looked at for.")


def heads_ui(ctx) -> None:
    """The last layer's CLS attention of every head, large, each with its DINO mask."""
    cap = ctx.capture
    if not cap.attentions or "cls" not in cap.layout.prefix_names:
        return
    layer = cap.n_layers - 1
    with guard("Drawing the heads of the last layer"):
        masks = dino_masks(cap, layer=layer, share=DINO_SHARE, query="cls")             # [H, rows, cols]
        st.markdown(f"**Where the CLS token looks in the last layer (layer {layer}), head by head.** Bright: "
                    f"more attention; dimmed: outside the smallest set of patches holding {DINO_SHARE:.0%} of "
                    "the head's attention to the patches (DINO's masks, Caron et al. 2021).")
        n_heads = masks.shape[0]
        for start in range(0, n_heads, PER_ROW):
            for col, h in zip(st.columns(PER_ROW), range(start, min(start + PER_ROW, n_heads))):
                m = state.engine().explain(ctx.adapter, ctx.entry, ctx.digest, "attention", None,
                                           {"layer": layer, "head": str(h), "query": "cls"}).map   # [rows, cols]
                scale = mapview.scale_for(m, False, ctx.display)
                key = ("backbone", ctx.digest, panels.map_digest(m), scale, ctx.display.alpha,
                       ctx.display.resample, None if ctx.box is None else tuple(ctx.box))
                img = panels.figure(key, lambda m=m, h=h, scale=scale: mapview.masked_picture(
                    ctx.img.display, m, masks[h], scale, ctx.display, ctx.box))
                col.image(img, width="stretch",
                          caption=f"head {h}: {DINO_SHARE:.0%} of its attention in {int(masks[h].sum())} of "
                                  f"{masks[h].size} patches")
        st.caption("Each head on its own colour scale (lowest to the 99th percentile). The Heads page has every "
                   "layer; the Lesson's last steps take one apart.")
