"""Is attention always better than convolution? The demo ViT and the demo CNN, trained on the same scenes.

    python -m attnviz.demo.attention_vs_convolution [--sizes 500 2000 8000] [--steps 800] [--out FILE.json]

For each training-set size N (a fixed pool of N scenes, dataset seed 0, no fresh scenes during
training; horizontal flips only), both models get the same budget: ``steps`` optimisation steps at
batch 64 on that pool, AdamW, their own schedules (:mod:`attnviz.demo.train` for the ViT,
:mod:`attnviz.demo.train_cnn` for the CNN). The ViT's recipe includes its throw-away CNN teacher
(FitNets hints for the first half, see ``train.py``: without it a ViT this small stays at chance for
minutes); the teacher's ``teacher_steps`` come on top, on the same pool, and are reported.

Recorded per run: exact-match accuracy on 1,000 fresh scenes (dataset seed 10000), parameters, training
CPU seconds, and the forward time of one image (batch 1) and of a batch of 32 at 64² and at 4× the
pixels (128²: the ViT then has 16×16 patches, position embeddings interpolated; the CNN's grid simply
grows), as the best of several repeats and in CPU seconds (this machine is shared; CPU time is the
steadier measure), one thread.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

from attnviz.demo.common import set_threads


def forward_seconds(model, size: int, batch: int, repeats: int = 5) -> dict:
    """Best wall and CPU seconds of ``repeats`` forwards of a [batch, 3, size, size] input, no autograd."""
    import torch

    x = torch.randn(batch, 3, size, size)
    kw = {"interpolate_pos_encoding": True} if getattr(model.config, "model_type", "") == "vit" else {}
    walls, cpus = [], []
    with torch.no_grad():
        model(pixel_values=x, **kw)
        for _ in range(repeats):
            w, c = time.perf_counter(), time.process_time()
            model(pixel_values=x, **kw)
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
    return {"wall": min(walls), "cpu": min(cpus)}


def timings(model) -> dict:
    return {f"{s}px_batch{b}": forward_seconds(model, s, b) for s in (64, 128) for b in (1, 32)}


def _cnn_row(n: int, steps: int, seed: int, eval_n: int, quiet: bool) -> dict:
    import torch

    from attnviz.demo import train_cnn

    t = time.process_time()
    cnn = train_cnn.train(save=False, seed=seed, steps=steps, pool_size=n, refresh=0, eval_n=eval_n, quiet=quiet)
    cpu = round(time.process_time() - t, 1)
    torch.set_num_threads(1)
    return {"model": "CNN (SE, ECA, CBAM)", "train_scenes": n, "steps": cnn["steps"],
            "accuracy": cnn["exact_match_accuracy"], "params": cnn["params"], "train_cpu_seconds": cpu,
            "forward": timings(cnn["model"])}


def _vit_row(n: int, steps: int, teacher_steps: int, seed: int, eval_n: int, quiet: bool) -> dict:
    import torch
    from transformers import ViTForImageClassification

    from attnviz.demo import train as vit_train

    with tempfile.TemporaryDirectory() as out:
        t = time.process_time()
        vit = vit_train.train(out, seed=seed, steps=steps, teacher_steps=teacher_steps, pool_size=n, refresh=0,
                              eval_n=eval_n, quiet=quiet)
        cpu = round(time.process_time() - t, 1)
        model = ViTForImageClassification.from_pretrained(out, use_safetensors=True).eval()
    torch.set_num_threads(1)
    return {"model": "ViT (+ CNN-teacher hints)", "train_scenes": n, "steps": vit["steps"],
            "teacher_steps": teacher_steps, "accuracy": vit["exact_match_accuracy"], "params": vit["params"],
            "train_cpu_seconds": cpu, "forward": timings(model)}


def run(sizes=(500, 2000, 8000), steps: int = 800, teacher_steps: int = 200, seed: int = 0, eval_n: int = 1000,
        quiet: bool = True, models=("cnn", "vit")) -> list[dict]:
    """One row per model and training-set size (``models``: "cnn", "vit" or both)."""
    rows = []
    for n in sizes:
        if "cnn" in models:
            rows.append(_cnn_row(n, steps, seed, eval_n, quiet))
        if "vit" in models:
            rows.append(_vit_row(n, steps, teacher_steps, seed, eval_n, quiet))
        if not quiet:
            print(json.dumps(rows[-len(models):], indent=2), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    """The table for the model cards and the Compare page's teaching note."""
    head = ("| model | training scenes | accuracy (1,000 fresh) | parameters | forward 64² (1 / 32 images) | "
            "forward 128² (1 / 32 images) | training CPU |\n|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        f = r["forward"]
        ms = lambda k: f"{1000 * f[k]['cpu']:.1f}"                                   # noqa: E731
        lines.append(f"| {r['model']} | {r['train_scenes']:,} | {100 * r['accuracy']:.1f} % | {r['params']:,} | "
                     f"{ms('64px_batch1')} / {ms('64px_batch32')} ms | {ms('128px_batch1')} / {ms('128px_batch32')} ms "
                     f"| {r['train_cpu_seconds']:.0f} s |")
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m attnviz.demo.attention_vs_convolution", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 8000])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--teacher-steps", type=int, default=200)
    ap.add_argument("--eval-n", type=int, default=1000)
    ap.add_argument("--models", nargs="+", default=["cnn", "vit"], choices=["cnn", "vit"])
    ap.add_argument("--out", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    set_threads(1)
    rows = run(args.sizes, args.steps, args.teacher_steps, eval_n=args.eval_n, quiet=False, models=tuple(args.models))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
