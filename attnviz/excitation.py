"""Channel excitations by class and depth: Hu et al.'s view of squeeze-and-excitation (§7.2).

Hu, Shen, Albanie, Sun & Wu, "Squeeze-and-Excitation Networks" (TPAMI 2019 / CVPR 2018,
https://arxiv.org/abs/1709.01507), section 7.2 ("Role of excitation"): averaged over the images of
each class, early SE blocks excite nearly the same channels whatever the class (class-agnostic
features), later blocks differently per class (class-specific). Here the images are the project's
synthetic scenes with **one** object each (:mod:`attnviz.scenes`), grouped by that object's
shape, so the classes are known exactly for any model (for an ImageNet model they are just five
shapes it was never trained on).

Class-specificity of a block, one number: the share of the excitations' variance over images that
lies between the class means, pooled over channels,
η² = Σ_c Σ_k n_k (m_kc − m_c)² / Σ_c Σ_i (s_ic − m_c)²  (the correlation ratio of an ANOVA):
0 when every class has the same mean excitation, 1 when the class fixes it. With K classes and N
images, a block whose excitations ignore the class still scores about (K − 1) / (N − 1) by chance;
``chance`` reports it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClassProfile:
    """Mean excitation per class at every channel-gated block, and how class-specific each block is."""

    blocks: tuple[str, ...]            # gate module paths, forward order
    modules: tuple[str, ...]           # "SE" | "ECA" | "CBAM"
    stages: tuple[int, ...]
    classes: tuple[str, ...]
    means: tuple[np.ndarray, ...]      # per block: [K, C] mean excitation of each class
    specificity: tuple[float, ...]     # per block: η² (see the module docstring)
    per_class: int                     # images per class
    chance: float                      # η² expected with no class dependence, (K − 1) / (N − 1)

    def to_dict(self) -> dict:
        return {"classes": list(self.classes), "per_class": self.per_class, "chance": self.chance,
                "blocks": [{"block": i, "name": n, "module": m, "stage": s, "specificity": float(e)}
                           for i, (n, m, s, e) in enumerate(zip(self.blocks, self.modules, self.stages,
                                                                 self.specificity))]}


def correlation_ratio(values: np.ndarray, labels: np.ndarray) -> float:
    """η² of ``values`` [N, C] grouped by ``labels`` [N], pooled over the C columns."""
    v = np.asarray(values, dtype=np.float64)
    mean = v.mean(0)                                                                   # [C]
    total = ((v - mean) ** 2).sum()
    between = sum((labels == k).sum() * ((v[labels == k].mean(0) - mean) ** 2).sum() for k in np.unique(labels))
    return float(between / total) if total > 0 else 0.0


def class_profile(adapter, *, per_class: int = 40, seed: int = 777, batch: int = 50) -> ClassProfile:
    """Excitations of every channel gate over ``per_class`` one-object demo scenes of each shape."""
    import torch

    from .scenes import SHAPES, make_scene, scene_rng, scene_to_pil
    from .errors import UsageError

    sites = [g for g in adapter.gate_specs if g.kind == "channel"] if hasattr(adapter, "gate_specs") else []
    if not sites:
        raise UsageError(f"{adapter.name} has no channel attention gates (squeeze-and-excitation or ECA blocks).")
    scenes, labels = [], []
    for k, shape in enumerate(SHAPES):
        for i in range(per_class):
            scenes.append(make_scene(scene_rng(seed, k * per_class + i), shapes=[shape]))
            labels.append(k)
    labels = np.asarray(labels)
    chunks: list[list[torch.Tensor]] = []
    for i in range(0, len(scenes), batch):
        pv = adapter.processor(images=[scene_to_pil(s) for s in scenes[i:i + batch]], return_tensors="pt")["pixel_values"]
        chunks.append(adapter.channel_excitations(pv))
    per_block = [torch.cat([c[b] for c in chunks]).numpy() for b in range(len(sites))]    # each [N, C]
    means = tuple(np.stack([v[labels == k].mean(0) for k in range(len(SHAPES))]) for v in per_block)
    specificity = tuple(correlation_ratio(v, labels) for v in per_block)
    return ClassProfile(blocks=tuple(g.name for g in sites), modules=tuple(g.module for g in sites),
                        stages=tuple(g.stage for g in sites),
                        classes=tuple(SHAPES), means=means, specificity=specificity, per_class=per_class,
                        chance=(len(SHAPES) - 1) / (len(scenes) - 1))


def compare(capture, profile: ClassProfile) -> list[dict]:
    """This image's excitations against each class's mean, block by block: Pearson r with every class mean and
    the nearest class (JSON-ready)."""
    from .methods.gates import gates_of

    gates = gates_of(capture, "channel")
    out = []
    for i, (g, means) in enumerate(zip(gates, profile.means)):
        v = g.value.float().cpu().numpy()
        rs = [float(np.corrcoef(v, m)[0, 1]) if v.std() > 0 and m.std() > 0 else 0.0 for m in means]
        out.append({"block": i, "name": g.name, "r": dict(zip(profile.classes, rs)),
                    "nearest": profile.classes[int(np.argmax(rs))], "specificity": profile.specificity[i]})
    return out


def profile_figure(profile: ClassProfile, capture=None, *, height_per_block: int = 170):
    """Hu et al.'s Fig. 6 as a Plotly figure: for each gated block (top: the first), the mean excitation of
    every channel per class (a line each), this image's excitations dashed when ``capture`` is given; the
    title of each row names the block and its class-specificity η²."""
    from plotly.subplots import make_subplots

    from .methods.gates import gates_of

    n = len(profile.blocks)
    titles = [f"block {i} · {m} · stage {s} · η² {e:.2f}" for i, (m, s, e) in
              enumerate(zip(profile.modules, profile.stages, profile.specificity))]
    fig = make_subplots(rows=n, cols=1, subplot_titles=titles, vertical_spacing=0.35 / max(n, 1))
    mine = gates_of(capture, "channel") if capture is not None else []
    for b, means in enumerate(profile.means):
        for k, cls in enumerate(profile.classes):
            fig.add_scatter(y=means[k], mode="lines", name=cls, legendgroup=cls, showlegend=b == 0,
                            line={"width": 1.5, "color": f"hsl({int(360 * k / len(profile.classes))},70%,45%)"},
                            row=b + 1, col=1)
        if b < len(mine):
            fig.add_scatter(y=mine[b].value.float().cpu().numpy(), mode="lines", name="this image",
                            legendgroup="image", showlegend=b == 0, line={"width": 2, "dash": "dash", "color": "black"},
                            row=b + 1, col=1)
        fig.update_yaxes(range=[0, 1], row=b + 1, col=1)
    fig.update_xaxes(title_text="channel", row=n, col=1)
    fig.update_layout(height=height_per_block * n + 80, margin={"l": 40, "r": 10, "t": 40, "b": 40})
    return fig
