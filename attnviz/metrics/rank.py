"""Rank statistics for comparing two maps (pure numpy).

Spearman's rank correlation, as Adebayo et al. 2018 ("Sanity Checks for
Saliency Maps", https://arxiv.org/abs/1810.03292) compare a map with the map
of a randomised model: Pearson correlation of the ranks, ties sharing their
average rank.
"""
from __future__ import annotations

import numpy as np


def average_ranks(values) -> np.ndarray:
    """Ranks 1..n of a flat array; tied values share the mean of the ranks they span."""
    v = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    # runs of equal values: [start, end) in sorted order
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], len(v)]
    ranks = np.empty(len(v), dtype=np.float64)
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = 0.5 * (s + e - 1) + 1.0
    return ranks


def spearman(a, b) -> float:
    """Spearman's rho between two maps of the same shape (NaN when either is constant)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")
