"""Check the demo image–text model on fresh scenes, through attnviz's own engine.

    python -m attnviz.demo.evaluate_clip [MODEL_DIR] [--n 200] [--seed 20000]

Everything goes the way the app and the CLI go: ``attnviz.load_model(dir)``,
``attnviz.capture(model, image, texts=[...])``, ``attnviz.explain(...)``.
On ``n`` fresh two-object scenes (``make_dataset(n, seed, n_objects=2)``; the
training scenes use other dataset seeds):

* zero-shot caption accuracy: the scene's caption scores highest among it and
  ``distractors`` captions with one object's colour or shape changed (chance
  1 / (1 + distractors));
* zero-shot object accuracy: the two highest of the 35 object phrases
  ("a red circle", ...) are exactly the scene's two objects;
* pointing game (Zhang et al. 2016, https://arxiv.org/abs/1608.00507) for each
  object's phrase: the image-side ``relevance`` map's maximum lies in that
  object's mask (:func:`attnviz.metrics.pointing_game_hit`), at CLIP's usual
  ``start_layer`` (-1: the last layer only, Chefer et al.'s CLIP setting) and at
  ``start_layer=0`` (all layers); ``default_start_layer`` says which one the
  model uses when none is given (the demo model declares 0). "pixel" is the
  metric's default mode, "cell" counts the argmax patch as a hit when it
  touches the object, "bilinear" looks up the hottest pixel of the map as the
  overlay draws it; ``on_other`` is how often the argmax patch touches the
  *other* object instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

DEFAULT_MODEL_DIR = "models/demo-clip-shapes"
EVAL_SEED = 20_000
START_LAYERS = {"start_layer_-1": -1, "start_layer_0": 0}


def distractor_captions(scene, k: int, rng: np.random.Generator) -> list[str]:
    """``k`` distinct captions, each the scene's caption with one object's colour or shape changed."""
    from attnviz.scenes import hard_negative_caption

    out: list[str] = []
    for _ in range(50 * k):
        c = hard_negative_caption(scene.objects, rng)
        if c != scene.caption and c not in out:
            out.append(c)
            if len(out) == k:
                break
    return out


def evaluate(model_or_dir=DEFAULT_MODEL_DIR, n: int = 200, seed: int = EVAL_SEED, distractors: int = 9,
             progress: bool = False) -> dict:
    """Zero-shot accuracies and pointing-game rates on ``n`` fresh two-object scenes (see the module doc)."""
    import attnviz
    from attnviz.scenes import make_dataset, scene_to_pil
    from attnviz.scenes import all_phrases, phrase
    from attnviz.metrics import POINTING_MODES, pointing_game_hit

    t0 = time.time()
    model = attnviz.load_model(model_or_dir) if isinstance(model_or_dir, (str, os.PathLike)) else model_or_dir
    phrases = all_phrases()
    rng = np.random.default_rng([seed, 2])
    scenes = make_dataset(n, seed, n_objects=2)
    caption_hits = object_hits = 0
    point = {name: {**{mode: 0 for mode in POINTING_MODES}, "on_other": 0} for name in START_LAYERS}
    explained = 0
    for k, scene in enumerate(scenes):
        img = scene_to_pil(scene)
        candidates = [scene.caption, *distractor_captions(scene, distractors, rng)]
        cap = attnviz.capture(model, img, texts=candidates, grads=False)
        caption_hits += int(int(cap.scores.argmax()) == 0)

        cap = attnviz.capture(model, img, texts=phrases, grads=False)
        truth = [phrases.index(phrase(o.colour, o.shape)) for o in scene.objects]
        top2 = set(cap.scores.detach().topk(2).indices.tolist())
        object_hits += int(top2 == set(truth))
        # the maps: one prompt per object (a prompt's logit does not depend on the other prompts)
        cap = attnviz.capture(model, img, texts=[phrases[p] for p in truth])
        for i, mask in enumerate(scene.masks):
            other = np.delete(scene.masks, i, axis=0).any(0)
            for name, start in START_LAYERS.items():
                m = attnviz.explain(model, cap, "relevance", target=i, start_layer=start).map
                for mode in POINTING_MODES:
                    point[name][mode] += pointing_game_hit(m, mask, mode=mode)
                point[name]["on_other"] += pointing_game_hit(m, other, mode="cell")
            explained += 1
        if progress and (k + 1) % 25 == 0:
            print(f"  {k + 1}/{n} scenes", file=sys.stderr, flush=True)
    return {
        "scenes": n, "seed": seed,
        "zero_shot_caption_accuracy": caption_hits / n, "caption_candidates": 1 + distractors,
        "zero_shot_object_accuracy": object_hits / n, "object_candidates": len(phrases),
        "default_start_layer": attnviz.explain(model, cap, "relevance", target=0).params["start_layer"],
        "pointing": {name: {k2: v / explained for k2, v in d.items()} for name, d in point.items()},
        "pointing_explained": explained,
        "seconds": round(time.time() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    from attnviz.demo.common import set_threads

    set_threads(2)
    ap = argparse.ArgumentParser(prog="python -m attnviz.demo.evaluate_clip", description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", nargs="?", default=DEFAULT_MODEL_DIR)
    ap.add_argument("--n", type=int, default=200, help="fresh two-object scenes (default 200)")
    ap.add_argument("--seed", type=int, default=EVAL_SEED, help=f"their dataset seed (default {EVAL_SEED})")
    ap.add_argument("--distractors", type=int, default=9, help="wrong captions per scene (default 9)")
    args = ap.parse_args(argv)
    print(json.dumps(evaluate(args.model_dir, args.n, args.seed, args.distractors, progress=True), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
