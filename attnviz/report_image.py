"""A single image's HTML report: what the app's export offers beside the PNG, the .npy and the JSON.

One self-contained file (see :mod:`attnviz.report_html`): the overlay with its
colour key, the bare map, the target and the top predictions, the method's
parameters, the faithfulness curves when they were run (deletion / insertion
beside a random order, Petsiuk et al. 2018) and the randomisation check
(Adebayo et al. 2018), and the settings and library versions of the JSON export.
"""
from __future__ import annotations

import json
from typing import Any, Optional, Sequence

from PIL import Image

from . import report_html as H
from .types import Explanation


def image_report_html(image: Image.Image, exp: Explanation, *, record: Optional[dict[str, Any]] = None,
                      box: Optional[tuple[int, int, int, int]] = None, faithfulness: Optional[dict] = None,
                      sanity: Optional[Sequence[Any]] = None, title: Optional[str] = None,
                      cmap: str = "inferno", norm: Optional[str] = None, vmin: Optional[float] = None,
                      vmax: Optional[float] = None, alpha: float = 0.5) -> str:
    """The report as an HTML string.

    ``record``: the app's JSON export (``ui.compute.export_record``) or the CLI's ``--json`` record:
    model, target, top predictions, settings and versions are read from it when present. ``box``: the
    region of ``image`` the model saw (``capture.box``). ``faithfulness``: a
    :func:`attnviz.metrics.deletion_insertion` result; ``sanity``: the steps of
    :func:`attnviz.metrics.cascading_randomisation` (objects or their ``to_dict()``). ``cmap``, ``norm``
    (default: :func:`attnviz.render.default_norm`, robust to outliers), ``vmin``/``vmax`` and ``alpha``: the overlay's
    look, as :func:`attnviz.render.overlay` takes them (the app passes the scale it shows).
    """
    from . import render
    record = record or {}
    target = exp.target
    tgt = record.get("target") or ({"index": target.index, "label": target.label} if target else {})
    heading = title or f"{record.get('model', 'attnviz')} · {exp.method}" + (f" · {tgt.get('label')}" if tgt else "")
    parts = []
    if exp.over in ("patches", "pixels"):
        norm = norm or render.default_norm(exp.signed)
        shown = render.overlay(image, exp.map, norm=norm, box=box, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha)
        lo, hi = render.value_range(exp.map, norm, vmin=vmin, vmax=vmax)
        parts.append("<h2>Map</h2>" + H.grid([H.card(shown, "overlay on the image", max_side=512),
                                               H.card(H.map_image(exp.map, signed=exp.signed, side=256),
                                                      f"raw map {'×'.join(map(str, exp.map.shape))} over {exp.over}",
                                                      max_side=512)])
                     + _colour_key(lo, hi, f"{exp.method} ({'signed' if exp.signed else '>= 0'})", cmap))
    else:
        parts.append("<h2>Map</h2><p class='note'>This map is over prompt tokens: see the values below.</p>")
    facts = [("method", exp.method), ("map", f"{'×'.join(map(str, exp.map.shape))} over {exp.over}"),
             ("min / max", f"{float(exp.map.min()):.4g} / {float(exp.map.max()):.4g}")]
    if tgt:
        facts.insert(0, ("target", f"{tgt.get('label')} (index {tgt.get('index')})"
                                   + (f", score {tgt['score']:.4g}" if "score" in tgt else "")))
    if record.get("model"):
        facts.insert(0, ("model", record["model"]))
    if record.get("image", {}).get("name"):
        facts.insert(0, ("image", record["image"]["name"]))
    parts.append("<h2>What was explained</h2>" + H.table(["", ""], facts))
    if record.get("top_k"):
        parts.append("<h2>Top predictions</h2>" + H.table(
            ["index", "label", "probability", "score"],
            [(t["index"], t["label"], f"{t['probability']:.4g}", f"{t['score']:.4g}") for t in record["top_k"]]))
    if exp.params:
        parts.append("<h2>Parameters</h2>" + H.table(["parameter", "value"], sorted(exp.params.items())))
    if faithfulness:
        parts.append(_curves(faithfulness))
    if sanity:
        steps = [s if isinstance(s, dict) else s.to_dict() for s in sanity]
        parts.append("<h2>Weight randomisation</h2><p class='note'>Adebayo et al. 2018: blocks re-initialised from "
                     "the top; a map that explains the model changes (Spearman |map| falls).</p>"
                     + H.table(["randomised", "Spearman |map|"],
                               [(s["randomised"], f"{s['spearman_abs']:.3f}") for s in steps]))
    extra = {k: record[k] for k in ("settings", "versions", "timings_s") if k in record}
    if extra:
        parts.append("<h2>Settings and versions</h2><pre>" + H.esc(json.dumps(extra, indent=1, default=str))
                     + "</pre>")
    return H.page(heading, "".join(parts))


def _colour_key(lo: float, hi: float, title: str, cmap: str) -> str:
    """The overlay's colour scale, from the value shown darkest to the brightest."""
    import matplotlib as mpl
    fig, ax = H.new_figure(5, 0.45)
    mpl.colorbar.ColorbarBase(ax, cmap=cmap, norm=mpl.colors.Normalize(lo, hi), orientation="horizontal")
    ax.set_title(title, fontsize=9)
    return "<p>" + H.plot(fig, "colour key") + "</p>"


def _curves(result: dict) -> str:
    """Deletion and insertion curves beside their random-order yardsticks."""
    fig, axes = H.new_figure(9, 3.4)
    fig.clf()
    rows = []
    for i, kind in enumerate(("deletion", "insertion")):
        ax = fig.add_subplot(1, 2, i + 1)
        c = result[kind]
        ax.plot(c.fractions, c.values, label=f"map order (AUC {c.auc:.3f})", lw=2)
        for j, r in enumerate(result.get(f"random_{kind}", [])):
            ax.plot(r.fractions, r.values, color="grey", ls="--", lw=1,
                    label=f"random order (AUC {r.auc:.3f})" if j == 0 else None)
            rows.append((kind, "random", f"{r.auc:.4f}"))
        rows.append((kind, "map", f"{c.auc:.4f}"))
        ax.set_title(kind)
        ax.set_xlabel("fraction of features changed")
        ax.set_ylabel(c.quantity)
        ax.legend(fontsize=8)
    note = ("<p class='note'>Deletion: a faithful map's curve falls faster than random (lower AUC); insertion: it "
            "rises faster (higher AUC).</p>")
    return "<h2>Is the map faithful?</h2>" + note + H.plot(fig, "deletion and insertion curves") + H.table(
        ["curve", "order", "AUC"], sorted(rows))
