"""Deletion and insertion curves: does removing what a map calls important change the score?

Petsiuk, Das & Saenko 2018, "RISE", https://arxiv.org/abs/1806.07421. Deletion
replaces the input's features with a baseline, the map's most important first,
and records the explained quantity after each step: a faithful map makes it
fall fast (small area under the curve). Insertion starts from the baseline and
puts features back in the same order: a faithful map makes it rise fast (large
area). A random order gives the yardstick: a map is only informative where its
curves beat the random ones.

Conventions here:

* Features are the map's own units: whole patches for a patch-grid map, model
  input pixels for a pixel map. Order: by value, highest first (signed maps:
  positive evidence first); ties keep row-major order.
* Baselines live in the processor's normalised pixel space: "mean" (zeros,
  the dataset's mean colour: RISE's deletion substrate), "black", and "blur"
  (the image under a Gaussian blur, RISE's insertion substrate; sigma = 1/16 of
  the input's longer side, our choice: shapes at the patch scale are gone,
  colours stay).
* The quantity is the target's probability when the family defines one from
  the scores alone (softmax over classes or prompts, a per-label or per-prompt
  sigmoid), else the target's raw score (the scalar the methods explain).
* ``steps`` points after the start, at fractions 0, 1/steps, ..., 1 of the
  features (fewer when the map has fewer units); area by the trapezoid rule
  over the fraction, so it is the curve's mean height.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import UsageError
from ..types import Capture, Explanation

BASELINES = ("mean", "black", "blur")
_CACHE = "_random_curves"          # capture.extras key of the random-order curves shared by every map
KINDS = ("deletion", "insertion")


@dataclass(frozen=True)
class Curve:
    """One deletion or insertion curve."""

    kind: str                 # "deletion" | "insertion"
    order: str                # "map" | "random"
    baseline: str
    fractions: np.ndarray     # [S + 1] share of the features changed
    values: np.ndarray        # [S + 1] the quantity at each step
    quantity: str             # "probability" | "score"

    @property
    def auc(self) -> float:
        """Area under the curve over the fraction 0..1 (trapezoid rule)."""
        f, v = self.fractions, self.values
        return float(np.sum((f[1:] - f[:-1]) * (v[1:] + v[:-1]) / 2))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "order": self.order, "baseline": self.baseline, "quantity": self.quantity,
                "auc": self.auc, "fractions": [float(x) for x in self.fractions],
                "values": [float(x) for x in self.values]}


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [B, C, H, W], reflecting at the borders."""
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="reflect")
    h = torch.nn.functional.conv2d(pad, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)  # [B, C, H + 2r, W]
    return torch.nn.functional.conv2d(h, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)  # [B, C, H, W]


def baseline_image(adapter, x: torch.Tensor, kind: str) -> torch.Tensor:
    """The replacement for deleted features, same shape as ``x`` [1, C, H, W]."""
    if kind == "blur":
        return gaussian_blur(x, max(x.shape[-2:]) / 16)
    if kind in ("mean", "black"):
        from ..methods.captum_common import baseline_tensor
        return baseline_tensor(adapter, x, kind)
    raise UsageError(f"Baseline must be one of {', '.join(BASELINES)}.")


def feature_units(exp: Explanation, capture: Capture) -> tuple[np.ndarray, np.ndarray]:
    """(unit id per input pixel [H, W], importance per unit [n_units]) for a patch or pixel map.

    A patch map's units are the cells of its own grid: the capture's layout, or ``exp.grid`` (a CNN stage)."""
    lay = exp.grid or capture.layout
    h, w = lay.input_size
    m = np.asarray(exp.map, dtype=np.float64)
    if exp.over == "patches":
        if m.shape != (lay.rows, lay.cols):
            raise UsageError(f"The map's shape {m.shape} is not the patch grid {(lay.rows, lay.cols)}.")
        from ..methods.captum_common import patch_mask
        units = patch_mask(lay, "cpu")[0, 0].numpy()                                   # [H, W] patch ids
    elif exp.over == "pixels":
        if m.shape != (h, w):
            raise UsageError(f"The map's shape {m.shape} is not the model input {(h, w)}.")
        units = np.arange(h * w).reshape(h, w)
    else:
        raise UsageError("Deletion and insertion need a map over the image (patches or pixels), "
                         f"not over {exp.over}.")
    return units, m.ravel()


def _ranks(importance: np.ndarray, order: str, seed: int) -> np.ndarray:
    """Rank of each unit (0 = changed first)."""
    if order == "map":
        by = np.argsort(-importance, kind="stable")
    else:
        by = np.random.default_rng(seed).permutation(len(importance))
    ranks = np.empty(len(importance), dtype=np.int64)
    ranks[by] = np.arange(len(importance))
    return ranks


def _quantity(adapter, scores: torch.Tensor, target: int) -> tuple[torch.Tensor, str]:
    probs = adapter.probabilities_from_scores(scores)
    if probs is None:
        return scores[:, target], "score"
    return probs[:, target], "probability"


@dataclass(frozen=True)
class _Plan:
    """One curve's images: step s changes the features ranked below ``counts[s]`` (``rank_map`` [H, W])."""

    kind: str
    order: str
    baseline: str
    counts: np.ndarray        # [S + 1]
    n: int
    rank_map: torch.Tensor    # [H, W]

    def key(self, s: int):
        """Images that are the input itself or the baseline itself are the same for every curve: one forward."""
        changed_all = self.counts[s] >= self.n
        if self.counts[s] == 0:
            return ("input",) if self.kind == "deletion" else ("baseline", self.baseline)
        if changed_all:
            return ("baseline", self.baseline) if self.kind == "deletion" else ("input",)
        return None


def _check(kind: str, order: str, steps) -> None:
    if kind not in KINDS:
        raise UsageError(f"Kind must be one of {', '.join(KINDS)}.")
    if order not in ("map", "random"):
        raise UsageError("Order must be 'map' or 'random'.")
    if not isinstance(steps, int) or steps < 1:
        raise UsageError("Steps must be a whole number of at least 1.")


def curves(adapter, capture: Capture, exp: Explanation, jobs: list[tuple], *, steps: int = 20,
           target: Optional[int] = None, batch_size: int = 8,
           progress: Optional[Callable[[int, int], None]] = None) -> list[Curve]:
    """Several curves of ``exp`` (``jobs``: (kind, order, seed[, baseline]) each; baseline None or left out: "mean"
    for deletion, "blur" for insertion) from one pool of images:
    every curve's steps go through the model together, ``batch_size`` images per forward, and the images shared
    by several curves (the input itself, an all-baseline image) go through once. Random-order curves are kept in
    ``capture.extras``: a second method explained on the same capture reuses them (no forwards)."""
    jobs = [tuple(j) + (None,) * (4 - len(j)) for j in jobs]
    for kind, order, _, _ in jobs:
        _check(kind, order, steps)
    jobs = [(k, o, sd, b or ("mean" if k == "deletion" else "blur")) for k, o, sd, b in jobs]
    if target is None:
        target = (exp.target or adapter.resolve_target(capture, None)).index
    units, importance = feature_units(exp, capture)
    n = len(importance)
    steps = min(steps, n)
    # A random order's curve depends on the image, the target and the units, never on the map's values: every
    # method explained on this capture with the same units shares it (kept with the capture, computed once).
    lay = exp.grid or capture.layout
    unit_key = (exp.over, lay.rows, lay.cols, tuple(lay.input_size))
    cache = capture.extras.setdefault(_CACHE, {})
    keys = [("random", kind, sd, baseline, steps, int(target), unit_key) if order == "random" else None
            for kind, order, sd, baseline in jobs]
    todo_jobs = [j for j, k in zip(jobs, keys) if k is None or k not in cache]
    fresh = iter(_curves(adapter, capture, todo_jobs, units, importance, n, steps, target, batch_size, progress)
                 if todo_jobs else [])
    out = [cache[k] if k is not None and k in cache else next(fresh) for k in keys]
    for k, c in zip(keys, out):
        if k is not None:
            cache[k] = c
    return out


def forget_random_curves(capture: Capture) -> None:
    """Drop the random-order curves kept with ``capture`` (benchmarks time the first map of an image with it)."""
    capture.extras.pop(_CACHE, None)


def _curves(adapter, capture: Capture, jobs: list[tuple], units: np.ndarray, importance: np.ndarray, n: int,
            steps: int, target: int, batch_size: int, progress) -> list[Curve]:
    """The curves of ``jobs`` (kind, order, seed, baseline) computed from one pool of batched forwards."""
    counts = np.round(np.arange(steps + 1) * n / steps).astype(np.int64)              # features changed
    x = capture.inputs["pixel_values"].detach().to(adapter.device)                     # [1, C, H, W]
    bases: dict[str, torch.Tensor] = {}
    plans = []
    for kind, order, sd, baseline in jobs:
        if baseline not in bases:
            bases[baseline] = baseline_image(adapter, x, baseline)
        rank_map = torch.from_numpy(_ranks(importance, order, sd)[units]).to(adapter.device)  # [H, W] when each goes
        plans.append(_Plan(kind, order, baseline, counts, n, rank_map))
    # one row per distinct image: (plan, step) of its first use; every (plan, step) points at its row
    rows: list[tuple[int, int]] = []
    where: dict = {}
    at = np.empty((len(plans), len(counts)), dtype=np.int64)
    for j, p in enumerate(plans):
        for s in range(len(counts)):
            key = p.key(s)
            if key is None or key not in where:
                rows.append((j, s))
                if key is not None:
                    where[key] = len(rows) - 1
                at[j, s] = len(rows) - 1
            else:
                at[j, s] = where[key]
    # the input itself is the capture's own image: its scores are the capture's (no forward)
    own = where.get(("input",))
    todo = [r for i, r in enumerate(rows) if i != own]
    values, quantity = [], "score"
    for start in range(0, len(todo), batch_size):
        batch = []
        for j, s in todo[start:start + batch_size]:
            p = plans[j]
            changed = (p.rank_map < int(p.counts[s]))[None, None]                      # [1, 1, H, W]
            base = bases[p.baseline]
            batch.append(torch.where(changed, base, x) if p.kind == "deletion" else torch.where(changed, x, base))
        with torch.inference_mode():
            q, quantity = _quantity(adapter, adapter.forward_scores(torch.cat(batch), capture.inputs).float(), target)
        values.append(q.cpu().numpy())                                                  # [b]
        if progress is not None:
            progress(min(start + batch_size, len(todo)), len(todo))
    flat = np.concatenate(values).astype(np.float64) if values else np.zeros(0)
    if own is not None:
        q, quantity = _quantity(adapter, capture.scores[None].float(), target)          # [1]
        flat = np.insert(flat, own, float(q[0]))                                        # back at its row
    return [Curve(kind=p.kind, order=p.order, baseline=p.baseline, fractions=counts / n, values=flat[at[j]],
                  quantity=quantity) for j, p in enumerate(plans)]


def curve(adapter, capture: Capture, exp: Explanation, kind: str = "deletion", *, baseline: Optional[str] = None,
          steps: int = 20, order: str = "map", seed: int = 0, batch_size: int = 8, target: Optional[int] = None,
          progress: Optional[Callable[[int, int], None]] = None) -> Curve:
    """One deletion or insertion curve of ``exp`` (a patch or pixel map of ``capture``) for its target.

    ``baseline``: default "mean" for deletion, "blur" for insertion (RISE's choices). ``order``: "map" or
    "random" (a permutation drawn with ``seed``: the yardstick). ``target``: the target index whose
    quantity is followed; default the map's own target (the top one for a class-agnostic map).
    """
    return curves(adapter, capture, exp, [(kind, order, seed, baseline)], steps=steps, target=target,
                  batch_size=batch_size, progress=progress)[0]


def deletion_insertion(adapter, capture: Capture, exp: Explanation, *, steps: int = 20, random_orders: int = 1,
                       seed: int = 0, target: Optional[int] = None, batch_size: int = 8,
                       progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Deletion and insertion for the map's order, and for ``random_orders`` random orders as the yardstick,
    all from one pool of batched forwards (:func:`curves`).

    Returns {"deletion": Curve, "insertion": Curve, "random_deletion": [Curve], "random_insertion": [Curve]}.
    """
    jobs = [(k, "map", seed) for k in KINDS] + [(k, "random", seed + i) for i in range(random_orders) for k in KINDS]
    got = curves(adapter, capture, exp, jobs, steps=steps, target=target, batch_size=batch_size, progress=progress)
    out: dict = {"random_deletion": [], "random_insertion": []}
    for (kind, order, _), c in zip(jobs, got):
        if order == "map":
            out[kind] = c
        else:
            out[f"random_{kind}"].append(c)
    return out


def summary(result: dict) -> dict:
    """AUCs of a :func:`deletion_insertion` result (random ones averaged), JSON-ready."""
    def mean_auc(curves):
        return float(np.mean([c.auc for c in curves])) if curves else None
    d, i = result["deletion"], result["insertion"]
    return {"quantity": d.quantity, "deletion_auc": d.auc, "insertion_auc": i.auc,
            "random_deletion_auc": mean_auc(result["random_deletion"]),
            "random_insertion_auc": mean_auc(result["random_insertion"]),
            "deletion_baseline": d.baseline, "insertion_baseline": i.baseline, "steps": len(d.values) - 1}
