"""Evaluate the demo VLM on fresh shape scenes: answer accuracy per question type, and pointing.

    python -m attnviz.demo.evaluate_vlm [models/demo-vlm-shapes] [--n 1000] [--seed 20000] [--pointing N]

Loads the folder the way a user would (``AutoProcessor``, ``AutoModelForImageTextToText``,
eager attention, offline), asks every scene one question of each type
(:data:`attnviz.demo.vlm_questions.QUESTION_TYPES`, drawn with the scene's own seed), and
compares the greedy answer with the scene's ground truth.

Pointing (Zhang et al. 2016's pointing game): for questions that name one object
(colour, shape, where), the map of the answer's first word over the 8×8 image-token
grid; a hit when its hottest cell overlaps that object's mask. Two maps:

* ``image_attention``: the attention row of the position that predicts the answer word,
  read on the image tokens, averaged over heads and decoder layers;
* ``relevance``: Chefer et al. 2021 ("Generic attention-model explainability for
  interpreting bi-modal and encoder-decoder transformers", ICCV,
  https://arxiv.org/abs/2103.15679), rule for self-attention: R = I, then for every
  decoder layer Ā = E_h[(∇A ⊙ A)⁺] with gradients of the answer word's logit, R ← R + Ā·R;
  the predicting position's row of R read on the image tokens.

Both are written here against ``outputs.attentions`` (the project's own VLM methods
were being written on another branch when this model was trained).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from attnviz.demo.common import set_threads

DEFAULT_DIR = "models/demo-vlm-shapes"
POINTING_KINDS = ("colour", "shape", "where")


def load(folder: str):
    """(model, processor) through the Auto classes, eager attention, no remote code."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=False)
    model = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="eager", use_safetensors=True,
                                                        trust_remote_code=False).eval()
    return model, processor


def draw_questions(scene, rng: np.random.Generator) -> list:
    """One question of each type the scene allows (the shape question needs a colour only one object has)."""
    from attnviz.demo.vlm_questions import QUESTION_TYPES, questions_for

    qs = questions_for(scene)
    out = []
    for kind in QUESTION_TYPES:
        of_kind = [q for q in qs if q.kind == kind]
        if of_kind:
            out.append(of_kind[int(rng.integers(len(of_kind)))])
    return out


def asked(n: int, seed: int, first: int = 0) -> list[tuple]:
    """[(scene, question)] for scenes first..first+n-1 of dataset ``seed``."""
    from attnviz.scenes import make_scene, scene_rng

    out = []
    for i in range(first, first + n):
        rng = scene_rng(seed, i)
        scene = make_scene(rng)
        out += [(scene, q) for q in draw_questions(scene, rng)]
    return out


def accuracy(folder: str = DEFAULT_DIR, n: int = 1000, seed: int = 20_000, model=None, processor=None,
             batch: int = 200, first: int = 0) -> dict:
    """Share of right answers (whole answer, words compared by :func:`answer_key`), overall and per type."""
    from attnviz.demo.vlm_questions import QUESTION_TYPES, answer, answer_key
    from attnviz.scenes import scene_to_pil

    if model is None:
        model, processor = load(folder)
    items = asked(n, seed, first)
    right = np.zeros(len(items), bool)
    by_text: dict[str, list[int]] = {}
    for i, (_, q) in enumerate(items):                       # one prompt length per batch: no padding
        by_text.setdefault(q.text, []).append(i)
    for idx in by_text.values():
        for c in range(0, len(idx), batch):
            part = idx[c:c + batch]
            got = answer(model, processor, [scene_to_pil(items[i][0]) for i in part], [items[i][1].text for i in part])
            for i, g in zip(part, got):
                right[i] = answer_key(g) == answer_key(items[i][1].answer)
    kinds = np.array([q.kind for _, q in items])
    out = {"scenes": n, "first": first, "seed": seed, "questions": len(items), "accuracy": round(float(right.mean()), 4)}
    out["per_type"] = {k: {"n": int((kinds == k).sum()), "accuracy": round(float(right[kinds == k].mean()), 4)}
                       for k in QUESTION_TYPES if (kinds == k).any()}
    return out


# --------------------------------------------------------------------------- pointing

def answer_maps(model, processor, image, question: str, answer_text: str) -> dict:
    """The first answer word's maps over the image-token grid: {"image_attention", "relevance"}, each [rows, cols].

    Teacher forcing: the prompt plus the answer; the word is explained at the position that
    predicts it (the last prompt token), with its logit as the score.
    """
    import torch

    from attnviz.demo.vlm_questions import prompt

    tok = processor.tokenizer
    inputs = processor(images=[image], text=[prompt(question)], return_tensors="pt")
    a_ids = tok(answer_text, add_special_tokens=False)["input_ids"]
    ids = torch.cat([inputs["input_ids"], torch.tensor([a_ids])], 1)                   # [1, T]
    p = inputs["input_ids"].shape[1] - 1                                                # predicts a_ids[0]
    out = model(input_ids=ids, pixel_values=inputs["pixel_values"], attention_mask=torch.ones_like(ids),
                output_attentions=True, use_cache=False)
    atts = out.attentions                                                               # L × [1, H, T, T]
    score = out.logits[0, p, a_ids[0]]
    grads = torch.autograd.grad(score, atts)
    img = (ids[0] == model.config.image_token_index).nonzero()[:, 0]                    # [64] positions
    g = int(round(len(img) ** 0.5))
    T = ids.shape[1]
    R = torch.eye(T)
    with torch.no_grad():
        for A, dA in zip(atts, grads):
            Abar = (dA[0] * A[0]).clamp(min=0).mean(0)                                  # [T, T]
            R = R + Abar @ R
        att = torch.stack([A[0].mean(0)[p] for A in atts]).mean(0)                      # [T]
    return {"image_attention": att[img].reshape(g, g).numpy(), "relevance": R[p, img].reshape(g, g).numpy()}


def cell_hit(cell_map: np.ndarray, mask: np.ndarray) -> bool:
    """Does the hottest cell of a [rows, cols] map overlap the (bool [H, W]) mask?"""
    rows, cols = cell_map.shape
    r, c = np.unravel_index(int(np.argmax(cell_map)), cell_map.shape)
    h, w = mask.shape[0] // rows, mask.shape[1] // cols
    return bool(mask[r * h:(r + 1) * h, c * w:(c + 1) * w].any())


def pointing(folder: str = DEFAULT_DIR, n: int = 1000, seed: int = 20_000, model=None, processor=None,
             first: int = 0) -> dict:
    """Pointing-game hit rates of both maps, per question type, for the questions naming one object."""
    from attnviz.scenes import scene_to_pil

    if model is None:
        model, processor = load(folder)
    hits: dict[str, dict[str, list[bool]]] = {m: {k: [] for k in POINTING_KINDS}
                                              for m in ("image_attention", "relevance")}
    for scene, q in asked(n, seed, first):
        if q.kind not in POINTING_KINDS or q.target is None:
            continue
        maps = answer_maps(model, processor, scene_to_pil(scene), q.text, q.answer)
        for m, cmap in maps.items():
            hits[m][q.kind].append(cell_hit(cmap, scene.masks[q.target]))
    return hit_table(hits, {"scenes": n, "first": first, "seed": seed})


def hit_table(hits: dict[str, dict[str, list[bool]]], out: dict) -> dict:
    """{method: {hit_rate, n, per_type: {kind: rate}, hits: {kind: [hits, maps]}}} added to ``out``."""
    for m, per in hits.items():
        allh = sum(per.values(), [])
        out[m] = {"hit_rate": round(float(np.mean(allh)), 4), "n": len(allh),
                  "per_type": {k: round(float(np.mean(v)), 4) for k, v in per.items() if v},
                  "hits": {k: [int(sum(v)), len(v)] for k, v in per.items() if v}}
    return out


def pointing_with_attnviz(folder: str = DEFAULT_DIR, n: int = 1000, seed: int = 20_000,
                          methods: tuple[str, ...] = ("image_attention", "answer_relevance"), first: int = 0) -> dict:
    """The same pointing game through attnviz's own VLM adapter and methods (``attnviz.load_model``,
    ``capture`` with ``texts=[question, answer]``, ``explain(..., target=0)``: the answer's first token),
    where this attnviz has them; the map is on the image-token grid (8×8 here)."""
    import attnviz
    from attnviz.scenes import scene_to_pil

    adapter = attnviz.load_model(folder)
    hits: dict[str, dict[str, list[bool]]] = {m: {k: [] for k in POINTING_KINDS} for m in methods}
    for scene, q in asked(n, seed, first):
        if q.kind not in POINTING_KINDS or q.target is None:
            continue
        cap = attnviz.capture(adapter, scene_to_pil(scene), texts=[q.text, q.answer])
        for m in methods:
            cmap = np.asarray(attnviz.explain(adapter, cap, m, target=0).map)
            hits[m][q.kind].append(cell_hit(cmap, scene.masks[q.target]))
    return hit_table(hits, {"scenes": n, "first": first, "seed": seed, "through": "attnviz.explain"})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m attnviz.demo.evaluate_vlm", description=__doc__.split("\n")[0])
    ap.add_argument("folder", nargs="?", default=DEFAULT_DIR)
    ap.add_argument("--n", type=int, default=1000, help="fresh scenes for the answers (default 1000)")
    ap.add_argument("--seed", type=int, default=20_000, help="dataset seed (default 20000; training used 0)")
    ap.add_argument("--first", type=int, default=0,
                    help="first scene's index (default 0; chunks of one evaluation can run side by side)")
    ap.add_argument("--pointing", type=int, default=None, help="scenes for pointing (default: --n; 0: skip)")
    ap.add_argument("--attnviz", action="store_true",
                    help="pointing through attnviz's own VLM adapter and methods instead (needs them)")
    args = ap.parse_args(argv)
    set_threads(1)
    t0, c0 = time.time(), time.process_time()
    model, processor = load(args.folder)
    result = {"answers": accuracy(args.folder, args.n, args.seed, model, processor,
                                              first=args.first)} if args.n else {}
    n_point = args.n if args.pointing is None else args.pointing
    if n_point and args.attnviz:
        result["pointing_attnviz"] = pointing_with_attnviz(args.folder, n_point, args.seed, first=args.first)
    elif n_point:
        result["pointing"] = pointing(args.folder, n_point, args.seed, model, processor, first=args.first)
    result["wall_seconds"] = round(time.time() - t0, 1)
    result["cpu_seconds"] = round(time.process_time() - c0, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
