"""Which methods explain the demo classifier faithfully? One table over fresh scenes.

    python -m attnviz.demo.faithfulness [MODEL] [--n 40] [--seed 60606] [--methods a,b,...]

For each fresh two-object scene and each method, through attnviz's engine
(``capture`` once, ``explain`` per method, top class as the target):

* deletion and insertion AUC of the map (Petsiuk et al. 2018) and of one random
  order with the same settings (:func:`attnviz.metrics.deletion_insertion`), and
  how often the map beat the random order;
* the Spearman correlation of |map| with the map after every block is
  randomised (Adebayo et al. 2018; near 0 is what a method that depends on the
  learned weights gives);
* the pointing game on the explained object (cell reading: the map's hottest
  patch, or for a pixel map the patch holding its hottest pixel, overlaps it).

Prints one JSON object with a row per method (and a Markdown table on stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

DEFAULT_MODEL = "demo-vit-shapes"
DEFAULT_METHODS = ("relevance", "grad_rollout", "attn_grad", "rollout", "attention", "grad_cam", "saliency",
                   "input_x_gradient", "integrated_gradients", "occlusion")
LIGHT = {"integrated_gradients": {"n_steps": 32}}


def evaluate(model=DEFAULT_MODEL, n: int = 40, seed: int = 60_606, methods=DEFAULT_METHODS,
             progress: bool = False) -> dict:
    import attnviz
    from attnviz.scenes import make_dataset, mask_for_class, scene_to_pil
    from attnviz.metrics import cascading_randomisation, deletion_insertion, deletion_summary, pointing_game_hit

    adapter = attnviz.load_model(model) if isinstance(model, (str, os.PathLike)) else model
    rows = {m: {"deletion_auc": [], "random_deletion_auc": [], "insertion_auc": [], "random_insertion_auc": [],
                "randomised_spearman_abs": [], "pointing_cell": []} for m in methods}
    t0 = time.time()
    for k, scene in enumerate(make_dataset(n, seed, n_objects=2)):
        cap = attnviz.capture(adapter, scene_to_pil(scene))
        top = adapter.resolve_target(cap, None)
        mask = mask_for_class(scene, top.index)
        for name in methods:
            exp = attnviz.explain(adapter, cap, name, target=top.index, **LIGHT.get(name, {}))
            s = deletion_summary(deletion_insertion(adapter, cap, exp, target=top.index, seed=k))
            r = rows[name]
            for key in ("deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc"):
                r[key].append(s[key])
            r["randomised_spearman_abs"].append(cascading_randomisation(adapter, cap, exp)[-1].spearman_abs)
            m = exp.map if exp.over == "patches" else _pixel_to_patches(exp.map, cap.layout)
            r["pointing_cell"].append(pointing_game_hit(m, mask, mode="cell"))
        if progress and (k + 1) % 10 == 0:
            print(f"  {k + 1}/{n} scenes, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    table = {}
    for name, r in rows.items():
        a = {key: np.asarray(v, dtype=np.float64) for key, v in r.items()}
        table[name] = {
            "deletion_auc": float(a["deletion_auc"].mean()), "random_deletion_auc": float(a["random_deletion_auc"].mean()),
            "insertion_auc": float(a["insertion_auc"].mean()),
            "random_insertion_auc": float(a["random_insertion_auc"].mean()),
            "beats_random_deletion": float((a["deletion_auc"] < a["random_deletion_auc"]).mean()),
            "beats_random_insertion": float((a["insertion_auc"] > a["random_insertion_auc"]).mean()),
            "randomised_spearman_abs": float(np.nanmean(a["randomised_spearman_abs"])),
            "pointing_cell": float(a["pointing_cell"].mean()),
        }
    return {"model": getattr(adapter, "name", str(model)), "scenes": n, "seed": seed, "methods": table,
            "seconds": round(time.time() - t0, 1)}


def _pixel_to_patches(m: np.ndarray, layout) -> np.ndarray:
    """A pixel map as a patch grid whose hottest cell holds the map's hottest pixel (max per patch)."""
    ph, pw = layout.patch_size
    a = np.asarray(m)[: layout.rows * ph, : layout.cols * pw]
    return a.reshape(layout.rows, ph, layout.cols, pw).max(axis=(1, 3))              # [rows, cols]


def markdown(report: dict) -> str:
    lines = ["| method | deletion AUC ↓ (random) | insertion AUC ↑ (random) | beats random (del / ins) | "
             "Spearman after randomising all blocks | pointing (cell) |", "|---|---|---|---|---|---|"]
    for name, r in report["methods"].items():
        lines.append(f"| `{name}` | {r['deletion_auc']:.3f} ({r['random_deletion_auc']:.3f}) | "
                     f"{r['insertion_auc']:.3f} ({r['random_insertion_auc']:.3f}) | "
                     f"{r['beats_random_deletion']:.0%} / {r['beats_random_insertion']:.0%} | "
                     f"{r['randomised_spearman_abs']:.2f} | {r['pointing_cell']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from attnviz.demo.common import set_threads

    set_threads(2)
    ap = argparse.ArgumentParser(prog="python -m attnviz.demo.faithfulness", description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    ap.add_argument("--n", type=int, default=40, help="fresh two-object scenes (default 40)")
    ap.add_argument("--seed", type=int, default=60_606)
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    args = ap.parse_args(argv)
    report = evaluate(args.model, args.n, args.seed, tuple(m for m in args.methods.split(",") if m), progress=True)
    print(markdown(report), file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
