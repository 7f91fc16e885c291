"""Check the demo captioner through attnviz's own engine: captions on fresh scenes, and per-word pointing.

    python -m attnviz.demo.evaluate_captioner [MODEL_DIR] [--n 200] [--seed 31337] [--layer ...]

Every scene goes the way a user's image goes: ``attnviz.load_model`` (the
captioning adapter), ``attnviz.capture`` (greedy generation, then one
teacher-forced pass with attentions), ``attnviz.explain`` per caption token.

* exact-caption accuracy: the generated caption equals the scene's caption;
* object accuracy: the share of objects whose "colour shape" the caption names;
* per-word pointing game (Zhang et al. 2016, https://arxiv.org/abs/1608.00507):
  for each generated SHAPE word that names an object of the scene (shapes are
  distinct within a scene), whether the argmax of that word's map lies in the
  object's mask (:func:`attnviz.metrics.pointing_game_hit`), read three ways:
  "pixel" (its default: the patch map upsampled by nearest neighbour, so the
  point is the top-left pixel of the argmax patch), "bilinear" (the map
  upsampled bilinearly to the image first, as the app draws it by default, so
  the point is the brightest pixel of the overlay) and "cell" (the argmax
  patch overlaps the mask); and how often the argmax cell touches another
  object instead. Colour words are scored the same way where the colour is unique in
  the scene. Maps: ``cross_attention`` (heads averaged) at every decoder layer,
  and ``caption_relevance``.

Scenes come from ``make_dataset(n, seed)`` with a seed the training never used
(training draws dataset seed 0, its held-out check seed 20000).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict

DEFAULT_MODEL_DIR = "models/demo-captioner-shapes"
DEFAULT_SEED = 31337


def evaluate(model_dir: str = DEFAULT_MODEL_DIR, n: int = 200, seed: int = DEFAULT_SEED,
             layers=None, relevance: bool = True, adapter=None) -> dict:
    """Caption accuracy and per-word pointing rates on ``n`` fresh scenes (see the module docstring)."""
    import attnviz
    from attnviz.scenes import COLOUR_NAMES, SHAPES, make_dataset, scene_to_pil
    from attnviz.metrics import pointing_game_hit
    from attnviz.render import upsample

    t0 = time.time()
    adapter = adapter or attnviz.load_model(model_dir)
    scenes = make_dataset(n, seed)
    n_dec = adapter.n_decoder_layers
    layers = list(range(n_dec)) if layers is None else [int(li) % n_dec for li in layers]
    methods = {f"cross_attention[layer {li}, mean of heads]": ("cross_attention", {"layer": li, "head": "mean"})
               for li in layers}
    if relevance:
        methods["caption_relevance"] = ("caption_relevance", {})
    counts = {kind: {m: defaultdict(int) for m in methods} for kind in ("shape", "colour")}
    exact = named = objects = 0
    examples = []
    for scene in scenes:
        cap = attnviz.capture(adapter, scene_to_pil(scene))
        text = adapter.caption_text(cap)
        exact += text == scene.caption
        words = text.replace(",", " ").split()
        pairs = set(zip(words, words[1:]))
        for o in scene.objects:
            named += (o.colour, o.shape) in pairs
            objects += 1
        if len(examples) < 8:
            examples.append({"true": scene.caption, "generated": text})
        colours = [o.colour for o in scene.objects]
        for word, token_indices in adapter.caption_words(cap):
            if word in SHAPES:
                kind = "shape"
                hit_obj = [i for i, o in enumerate(scene.objects) if o.shape == word]
            elif word in COLOUR_NAMES and colours.count(word) == 1:
                kind = "colour"
                hit_obj = [colours.index(word)]
            else:
                continue
            if not hit_obj:          # a shape the scene does not hold: a caption error, nothing to point at
                continue
            mask = scene.masks[hit_obj[0]]
            size = (mask.shape[1], mask.shape[0])
            others = scene.masks.any(0) & ~mask
            for name, (method, params) in methods.items():
                exp = attnviz.explain(adapter, cap, method, target=token_indices[0], **params)
                c = counts[kind][name]
                c["words"] += 1
                c["pixel"] += pointing_game_hit(exp.map, mask, cap.box)
                c["cell"] += pointing_game_hit(exp.map, mask, cap.box, mode="cell")
                c["bilinear"] += pointing_game_hit(upsample(exp.map, size, "bilinear"), mask, cap.box)
                c["cell_on_other_object"] += pointing_game_hit(exp.map, others, cap.box, mode="cell")
    pointing = {}
    for kind, per_method in counts.items():
        pointing[kind] = {}
        for name, c in per_method.items():
            w = max(c["words"], 1)
            pointing[kind][name] = {"words": c["words"], "pointing_rate": c["pixel"] / w,
                                    "cell_pointing_rate": c["cell"] / w,
                                    "bilinear_pointing_rate": c["bilinear"] / w,
                                    "cell_on_other_object": c["cell_on_other_object"] / w}
    return {"model": model_dir, "scenes": n, "seed": seed,
            "exact_caption_accuracy": exact / n, "object_accuracy": named / max(objects, 1),
            "pointing": pointing, "examples": examples, "seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    from attnviz.demo.common import set_threads

    set_threads(2)
    ap = argparse.ArgumentParser(prog="python -m attnviz.demo.evaluate_captioner",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", nargs="?", default=DEFAULT_MODEL_DIR)
    ap.add_argument("--n", type=int, default=200, help="fresh scenes (default 200)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"dataset seed (default {DEFAULT_SEED})")
    ap.add_argument("--layer", type=int, nargs="*", default=None,
                    help="decoder layers for cross_attention (default: every layer)")
    ap.add_argument("--no-relevance", action="store_true", help="skip caption_relevance")
    args = ap.parse_args(argv)
    report = evaluate(args.model_dir, args.n, args.seed, args.layer, relevance=not args.no_relevance)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
