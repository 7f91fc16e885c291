"""Two models side by side on one image (the data a Compare view draws; no UI here).

Which methods to show follows from what each model provides (``methods.registry.list_methods``):
the **shared** ones apply to both (Grad-CAM, the Captum pixel methods, occlusion, …, whatever the
two families have in common), and each model's **own** view is what only its kind has: attention
relevance (Chefer et al. 2021) for a transformer, channel and spatial attention for a CNN with
gates, Grad-CAM for a CNN without. A target is matched by label, so two models trained on the same
classes (the demo ViT and the demo CNN) explain the same class; otherwise each explains its own top.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .methods.registry import list_methods

#: Maps a Compare view can draw over the image, in the order they are offered.
IMAGE_MAPS = ("patches", "pixels")


def shared_methods(a, b) -> list[str]:
    """Image-map methods that apply to both adapters, in registry order."""
    theirs = {m.name for m in list_methods(b)}
    return [m.name for m in list_methods(a) if m.name in theirs and m.over in IMAGE_MAPS]


def own_methods(adapter) -> list[str]:
    """The view only this kind of model has: relevance for attention models; channel / spatial attention for a
    CNN with gates (its channel view is over channels, not the image), else Grad-CAM at its last stage."""
    have = adapter.provides
    if "attentions" in have:
        return ["relevance"]
    own = [n for n, need in (("spatial_attention", "spatial_gates"), ("channel_attention", "channel_gates"))
           if need in have]
    return own or ["grad_cam"]


@dataclass
class Side:
    """One model's half: its capture, top predictions, the explanation and (optionally) its deletion summary."""

    adapter: Any
    capture: Any
    target: Any
    explanation: Any
    top: list[tuple[str, float]]
    faithfulness: Optional[dict] = None
    notes: list[str] = field(default_factory=list)


def target_by_label(adapter, cap, label: Optional[str]):
    """The capture's target named ``label`` (case-insensitive), else the model's top one: two models explain
    the same class when both know it by name."""
    if label is not None:
        hit = [t for t in cap.targets if t.label.lower() == str(label).lower()]
        if hit:
            return hit[0]
    return adapter.resolve_target(cap, None)


def side_by_side(adapters, image, method: str, *, target: Optional[str] = None, faithfulness: bool = False,
                 top_k: int = 5, **params) -> list[Side]:
    """Explain ``image`` with ``method`` on each adapter (the same class by label when both have it)."""
    import attnviz
    from .metrics import deletion_insertion, deletion_summary

    out = []
    for ad in adapters:
        cap = attnviz.capture(ad, image)
        probs = ad.probabilities(cap).tolist()
        top = sorted(((t.label, probs[t.index]) for t in cap.targets), key=lambda x: -x[1])[:top_k]
        tgt = target_by_label(ad, cap, target)
        notes = [] if target is None or tgt.label.lower() == str(target).lower() else [
            f"{ad.name} has no class '{target}'; it explains its top class '{tgt.label}'."]
        exp = attnviz.explain(ad, cap, method, target=tgt.index, **params)
        faith = None
        if faithfulness and exp.over in IMAGE_MAPS:
            faith = deletion_summary(deletion_insertion(ad, cap, exp, target=tgt.index))
        out.append(Side(ad, cap, tgt, exp, top, faith, notes))
    return out
