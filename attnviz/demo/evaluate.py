"""Check a demo classifier: accuracy on fresh scenes, and whether its explanations
point at the right object.

    python -m attnviz.demo.evaluate [MODEL_DIR] [--n 500] [--seed 12345]
                                    [--pointing 200] [--ig 0]

Everything loads through the public path (``from_pretrained`` with safetensors,
the saved ``ViTImageProcessor``), so this also checks the shipped folder. The
relevance here is a small self-contained copy of Chefer et al.'s rule, kept so
the demo model can be judged without the rest of attnviz.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

DEFAULT_MODEL_DIR = "models/demo-vit-shapes"


def load(model_dir: str):
    """(model, processor) from a demo folder, eager attention, eval mode."""
    from transformers import ViTForImageClassification, ViTImageProcessor

    model = ViTForImageClassification.from_pretrained(
        model_dir, use_safetensors=True, attn_implementation="eager")
    model.eval()
    processor = ViTImageProcessor.from_pretrained(model_dir)
    return model, processor


def _pixel_values(processor, scenes):
    from attnviz.scenes import scene_to_pil

    return processor(images=[scene_to_pil(s) for s in scenes], return_tensors="pt")["pixel_values"]


def exact_match_accuracy(model_dir: str = DEFAULT_MODEL_DIR, n: int = 500, seed: int = 12345,
                         batch: int = 100, threshold: float = 0.5) -> float:
    """Share of ``n`` fresh scenes (``make_dataset(n, seed)``) whose every label is
    right when each class's sigmoid is thresholded at ``threshold``."""
    import torch

    from attnviz.scenes import make_dataset

    model, processor = load(model_dir)
    scenes = make_dataset(n, seed)
    hits = 0
    with torch.no_grad():
        for i in range(0, n, batch):
            chunk = scenes[i:i + batch]
            probs = torch.sigmoid(model(pixel_values=_pixel_values(processor, chunk)).logits)
            pred = (probs > threshold).numpy()
            truth = np.stack([s.labels for s in chunk]) > 0.5
            hits += int((pred == truth).all(-1).sum())
    return hits / n


def chefer_relevance(model, pixel_values, class_index: int) -> np.ndarray:
    """Gradient-weighted attention relevance of the CLS token over the patch grid.

    Chefer, Gur, Wolf 2021, "Generic Attention-model Explainability for
    Interpreting Bi-Modal and Encoder-Decoder Transformers",
    https://arxiv.org/abs/2103.15679 (rule for self-attention): R = I, then for
    each layer R += mean_heads((dA ⊙ A)^+) @ R; the map is R[CLS, patches].
    Non-negative; returned as ``float32 [rows, cols]``.
    """
    import torch

    pixel_values = pixel_values[:1]
    out = model(pixel_values=pixel_values, output_attentions=True)
    attentions = out.attentions  # L × [1, H, T, T]
    if not attentions:
        raise RuntimeError("no attention weights returned; load with attn_implementation='eager'")
    grads = torch.autograd.grad(out.logits[0, class_index], attentions)
    T = attentions[0].shape[-1]
    R = torch.eye(T)
    for A, G in zip(attentions, grads):
        cam = (G[0] * A[0]).clamp(min=0).mean(0)  # [T, T]
        R = R + cam @ R
    rows = model.config.image_size // model.config.patch_size
    n_prefix = T - rows * rows  # the CLS token
    return R[0, n_prefix:].reshape(rows, rows).detach().numpy().astype(np.float32)


def integrated_gradients_map(model, pixel_values, class_index: int, steps: int = 128) -> np.ndarray:
    """Captum integrated gradients, summed over channels, positive part: ``[H, W]``.

    Sundararajan et al. 2017, https://arxiv.org/abs/1703.01365; baseline is a zero
    model input (mid-grey under this model's normalisation).
    """
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(lambda x: model(pixel_values=x).logits)
    attr = ig.attribute(pixel_values[:1], target=class_index, n_steps=steps, internal_batch_size=64)
    return attr[0].sum(0).clamp(min=0).detach().numpy().astype(np.float32)


def pointing_rate(model_dir: str = DEFAULT_MODEL_DIR, n: int = 200, seed: int = 54321,
                  method: str = "chefer", ig_steps: int = 128) -> dict:
    """Pointing game over ``n`` fresh two-object scenes, explaining each object's class.

    A hit: the map's argmax (:func:`attnviz.metrics.pointing_game_hit`) lies in the
    explained object's mask. Reports both of its modes ("pixel": the first argmax
    pixel of the nearest-upsampled map; "cell": the argmax cell touches the mask)
    and how often the argmax cell touches the *other* object instead.
    """
    from attnviz.scenes import make_dataset, mask_for_class
    from attnviz.metrics import pointing_game_hit

    model, processor = load(model_dir)
    scenes = make_dataset(n, seed, n_objects=2)
    hits = cell_hits = other_hits = total = 0
    for scene in scenes:
        pv = _pixel_values(processor, [scene])
        for c in scene.class_indices:
            if method == "chefer":
                m = chefer_relevance(model, pv, c)
            elif method == "ig":
                m = integrated_gradients_map(model, pv, c, steps=ig_steps)
            else:
                raise ValueError(f"unknown method {method!r}")
            mask = mask_for_class(scene, c)
            other = scene.masks.any(0) & ~mask
            hits += pointing_game_hit(m, mask)
            cell_hits += pointing_game_hit(m, mask, mode="cell")
            other_hits += pointing_game_hit(m, other, mode="cell")
            total += 1
    return {"method": method, "scenes": n, "seed": seed, "explained": total,
            "pointing_rate": hits / total,  # mode="pixel": argmax pixel of the upsampled map
            "cell_pointing_rate": cell_hits / total,  # mode="cell": argmax cell touches the object
            "cell_on_other_object": other_hits / total}


def main(argv: list[str] | None = None) -> int:
    from attnviz.demo.common import set_threads

    set_threads(2)
    ap = argparse.ArgumentParser(prog="python -m attnviz.demo.evaluate")
    ap.add_argument("model_dir", nargs="?", default=DEFAULT_MODEL_DIR)
    ap.add_argument("--n", type=int, default=500, help="scenes for exact-match accuracy")
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--pointing", type=int, default=200, help="two-object scenes for the pointing game (0: skip)")
    ap.add_argument("--pointing-seed", type=int, default=54321)
    ap.add_argument("--ig", type=int, default=0, help="scenes for the integrated-gradients pointing game (0: skip)")
    ap.add_argument("--ig-steps", type=int, default=128)
    args = ap.parse_args(argv)

    report = {}
    t = time.time()
    report["exact_match_accuracy"] = exact_match_accuracy(args.model_dir, args.n, args.seed)
    report["accuracy_n"], report["accuracy_seed"] = args.n, args.seed
    if args.pointing:
        report["chefer"] = pointing_rate(args.model_dir, args.pointing, args.pointing_seed, "chefer")
    if args.ig:
        report["integrated_gradients"] = pointing_rate(
            args.model_dir, args.ig, args.pointing_seed, "ig", ig_steps=args.ig_steps)
    report["seconds"] = round(time.time() - t, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
