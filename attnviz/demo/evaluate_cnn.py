"""Check the demo CNN: accuracy on fresh scenes, Grad-CAM and CBAM pointing, excitation class-specificity by depth.

    python -m attnviz.demo.evaluate_cnn [MODEL_DIR] [--n 1000] [--pointing 200] [--per-class 40] [--faithfulness 50]

Everything goes through attnviz's public path (``load_model``: ``from_pretrained`` with safetensors,
the saved image processor; ``capture`` / ``explain``), so this also checks the shipped folder.

* exact-match accuracy: every one of the five labels right at sigmoid 0.5, on fresh scenes;
* Grad-CAM pointing (Zhang et al. 2016): two-object scenes, each object's class explained at the
  last stage (8×8, stride 8); a hit when the map's maximum lies on that object
  (:func:`attnviz.metrics.pointing_game_hit`, its three modes), and how often it lies on the other;
* CBAM gate pointing, per CBAM block: the spatial gate is class-agnostic, so a hit is its maximum on
  *any* object; ``chance`` is the hit rate of a cell drawn at random (the share of cells touching an object);
* excitation class-specificity by depth (Hu et al. 2018 §7.2): :func:`attnviz.excitation.class_profile`
  over one-object scenes per shape;
* deletion / insertion of the Grad-CAM map against a random order (Petsiuk et al. 2018).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

DEFAULT_MODEL_DIR = "models/demo-cnn-shapes"


def exact_match(adapter, n: int, seed: int, batch: int = 100) -> float:
    import torch

    from attnviz.scenes import make_dataset, scene_to_pil

    scenes = make_dataset(n, seed)
    hits = 0
    for i in range(0, n, batch):
        chunk = scenes[i:i + batch]
        pv = adapter.processor(images=[scene_to_pil(s) for s in chunk], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            pred = adapter.forward_scores(pv, {}).numpy() > 0
        hits += int((pred == (np.stack([s.labels for s in chunk]) > 0.5)).all(-1).sum())
    return hits / n


def pointing(adapter, n: int, seed: int) -> dict:
    """Grad-CAM (each object's class) and the last CBAM spatial gate (any object) on ``n`` two-object scenes."""
    import attnviz
    from attnviz.scenes import make_dataset, mask_for_class, scene_to_pil
    from attnviz.metrics import POINTING_MODES, pointing_game_hit

    cam = {m: 0 for m in POINTING_MODES}
    cam_other = gate_chance = 0.0
    n_cbam = len([g for g in adapter.gate_specs if g.kind == "spatial"])
    gate = [{m: 0 for m in POINTING_MODES} for _ in range(n_cbam)]
    explained = 0
    scenes = make_dataset(n, seed, n_objects=2)
    for scene in scenes:
        cap = attnviz.capture(adapter, scene_to_pil(scene))
        objects = scene.masks.any(0)
        for c in scene.class_indices:
            m = attnviz.explain(adapter, cap, "grad_cam", target=c).map
            mask = mask_for_class(scene, c)
            for mode in POINTING_MODES:
                cam[mode] += pointing_game_hit(m, mask, mode=mode)
            cam_other += pointing_game_hit(m, objects & ~mask, mode="cell")
            explained += 1
        for b in range(n_cbam):
            g = attnviz.explain(adapter, cap, "spatial_attention", block=b).map
            for mode in POINTING_MODES:
                gate[b][mode] += pointing_game_hit(g, objects, mode=mode)
        rows, cols = g.shape
        touched = [objects[r * objects.shape[0] // rows:(r + 1) * objects.shape[0] // rows,
                           c * objects.shape[1] // cols:(c + 1) * objects.shape[1] // cols].any()
                   for r in range(rows) for c in range(cols)]
        gate_chance += float(np.mean(touched))
    return {"scenes": n, "seed": seed, "explained": explained,
            "grad_cam": {m: cam[m] / explained for m in POINTING_MODES},
            "grad_cam_cell_on_other_object": cam_other / explained,
            "cbam_gate": [{m: g[m] / n for m in POINTING_MODES} for g in gate],     # per CBAM block
            "cbam_gate_chance_cell": gate_chance / n}


def faithfulness(adapter, n: int, seed: int) -> dict:
    import attnviz
    from attnviz.scenes import make_dataset, scene_to_pil
    from attnviz.metrics import deletion_insertion, deletion_summary

    rows = []
    for scene in make_dataset(n, seed, n_objects=2):
        cap = attnviz.capture(adapter, scene_to_pil(scene))
        rows.append(deletion_summary(deletion_insertion(adapter, cap, attnviz.explain(adapter, cap, "grad_cam"))))
    keys = ("deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc")
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out["beats_random_deletion"] = float(np.mean([r["deletion_auc"] < r["random_deletion_auc"] for r in rows]))
    out["beats_random_insertion"] = float(np.mean([r["insertion_auc"] > r["random_insertion_auc"] for r in rows]))
    return {"scenes": n, "seed": seed, **out}


def evaluate(model_dir: str = DEFAULT_MODEL_DIR, *, n: int = 1000, seed: int = 10_000, pointing_n: int = 200,
             pointing_seed: int = 54321, per_class: int = 40, profile_seed: int = 777, faithfulness_n: int = 50,
             faithfulness_seed: int = 60606) -> dict:
    import attnviz
    from attnviz.excitation import class_profile

    adapter = attnviz.load_model(model_dir)
    report: dict = {"model": model_dir}
    t = time.time()
    report["exact_match_accuracy"] = exact_match(adapter, n, seed)
    report["accuracy_n"], report["accuracy_seed"] = n, seed
    if pointing_n:
        report["pointing"] = pointing(adapter, pointing_n, pointing_seed)
    if per_class:
        report["excitation"] = class_profile(adapter, per_class=per_class, seed=profile_seed).to_dict()
    if faithfulness_n:
        report["grad_cam_faithfulness"] = faithfulness(adapter, faithfulness_n, faithfulness_seed)
    report["seconds"] = round(time.time() - t, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    from attnviz.demo.common import set_threads

    set_threads(2)
    ap = argparse.ArgumentParser(prog="python -m attnviz.demo.evaluate_cnn")
    ap.add_argument("model_dir", nargs="?", default=DEFAULT_MODEL_DIR)
    ap.add_argument("--n", type=int, default=1000, help="scenes for exact-match accuracy")
    ap.add_argument("--seed", type=int, default=10_000)
    ap.add_argument("--pointing", type=int, default=200, help="two-object scenes for the pointing games (0: skip)")
    ap.add_argument("--per-class", type=int, default=40, help="one-object scenes per shape for the excitations")
    ap.add_argument("--faithfulness", type=int, default=50, help="scenes for Grad-CAM deletion / insertion")
    args = ap.parse_args(argv)
    print(json.dumps(evaluate(args.model_dir, n=args.n, seed=args.seed, pointing_n=args.pointing,
                              per_class=args.per_class, faithfulness_n=args.faithfulness), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
