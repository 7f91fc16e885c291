"""The report's comparison of methods over a batch run's images (``attnviz batch --method a,b --faithfulness``).

For each faithfulness metric of :mod:`attnviz.engine.faithfulness` (deletion and insertion AUC, Petsiuk et
al. 2018; ROAD MoRF and LeRF means, Rong et al. 2022): each method's mean ± standard deviation (ddof 1) over
its rows, the method with the best mean (lowest for deletion and MoRF, highest for insertion and LeRF), and
how often each method was the best one on the same image and target (only (image, target) pairs that every
method explained count). A bar plot shows the means with their standard deviations.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from . import report_html as H
from .engine.faithfulness import COLUMNS, COMPARED

NAMES = {"deletion_auc": "deletion AUC", "insertion_auc": "insertion AUC", "road_morf": "ROAD MoRF",
         "road_lerf": "ROAD LeRF"}


def comparison(rows: list[dict]) -> dict:
    """{metric: {"stats": {method: (mean, sd, n)}, "best": method, "wins": {method: count}, "pairs": n}}
    over the rows that carry the metric; metrics no row carries are left out."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    out = {}
    for metric in COMPARED:
        vals: dict[str, dict[tuple, float]] = defaultdict(dict)
        for r in rows:
            if r.get(metric) is not None:
                vals[r["method"]][(r["path"], r["target_index"])] = float(r[metric])
        if not vals:
            continue
        higher = COLUMNS[metric]
        stats = {}
        for m in methods:
            v = np.array(list(vals[m].values()), dtype=np.float64)
            stats[m] = (float(v.mean()) if v.size else float("nan"),
                        float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size))
        measured = [m for m in methods if stats[m][2]]
        best = (max if higher else min)(measured, key=lambda m: stats[m][0])
        common = set.intersection(*(set(vals[m]) for m in methods)) if len(measured) == len(methods) else set()
        wins = dict.fromkeys(methods, 0)
        for key in common:
            pick = (max if higher else min)(methods, key=lambda m: vals[m][key])
            wins[pick] += 1
        out[metric] = {"stats": stats, "best": best, "wins": wins, "pairs": len(common), "higher": higher}
    return out


def methods_section(rows: list[dict]) -> str:
    """The HTML section, or "" when the run has fewer than two methods with faithfulness numbers."""
    measured = [r for r in rows if any(r.get(k) is not None for k in COMPARED)]
    methods = list(dict.fromkeys(r["method"] for r in measured))
    if len(methods) < 2:
        return ""
    comp = comparison(measured)
    header = ["metric (better)"] + methods + ["best mean", "best on the same image"]
    body = []
    for metric, c in comp.items():
        cells = [f"{c['stats'][m][0]:.4g} ± {c['stats'][m][1]:.2g} (n={c['stats'][m][2]})" for m in methods]
        wins = ", ".join(f"{m} {c['wins'][m]}/{c['pairs']}" for m in methods) if c["pairs"] else "no common pairs"
        body.append([f"{NAMES[metric]} ({'higher' if c['higher'] else 'lower'})"] + cells + [c["best"], wins])
    fig, axes = H.new_figure(2.6 * len(comp), 3.2)
    fig.clf()
    for j, (metric, c) in enumerate(comp.items()):
        ax = fig.add_subplot(1, len(comp), j + 1)
        means = [c["stats"][m][0] for m in methods]
        sds = [c["stats"][m][1] for m in methods]
        ax.bar(range(len(methods)), means, yerr=sds, capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{NAMES[metric]} ({'↑' if c['higher'] else '↓'})", fontsize=9)
    text = ("<p>Each method's maps of the same images, measured from the same capture: deletion and insertion AUC "
            "(Petsiuk et al. 2018) and ROAD's mean quantity with the most (MoRF) or least (LeRF) relevant pixels "
            "removed by noisy linear imputation (Rong et al. 2022). Mean ± standard deviation over the (image, "
            "target) rows; the last column counts, over the pairs every method explained, which method was "
            "best on each.</p>")
    return "<h2>Methods compared</h2>" + text + H.table(header, body) + H.plot(fig, "methods compared")
