"""Train the offline demo CNN: a small residual CNN with SE, ECA and CBAM gates that names the shapes in a scene.

    python -m attnviz.demo.train cnn [--out models/demo-cnn-shapes] [--steps N] [--minutes M] [--fast]

The project's own ``GatedCnnForImageClassification`` (:mod:`attnviz.gated_cnn`, registered with the
Auto classes, so the folder loads with ``from_pretrained``, safetensors, no remote code): a stride-2
stem, then three stages at strides 4, 8 and 8 (16², 8², 8² on the 64² scenes; the last grid is the
demo ViT's 8×8 patch grid) gated by squeeze-and-excitation (1 block), ECA (1) and CBAM (channel +
spatial, 2), a global average pool and one linear layer (0.19 M parameters, about 0.17 CPU-seconds
per step of 64 on one core); multi-label BCE on :mod:`attnviz.scenes`, the same
data stream, image processor and held-out scenes as the demo ViT (:mod:`attnviz.demo.train`).
No teacher: a CNN learns this task from scratch in a few hundred steps.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from attnviz.demo.common import past_time_cap, set_threads, start_run
from attnviz.demo.train import ScenePool, _exact_match, evaluate_arrays, make_image_processor

DEFAULT_OUT = "models/demo-cnn-shapes"


def make_config(**overrides):
    from attnviz.scenes import SHAPES
    from attnviz.gated_cnn import GatedCnnConfig

    kw = dict(stem_channels=16, stem_stride=2, hidden_sizes=[24, 48, 64], depths=[1, 1, 2], strides=[2, 2, 1],
              gates=["se", "eca", "cbam"], problem_type="multi_label_classification",
              id2label={i: s for i, s in enumerate(SHAPES)}, label2id={s: i for i, s in enumerate(SHAPES)})
    kw.update(overrides)
    return GatedCnnConfig(**kw)


def train(out: str = DEFAULT_OUT, *, seed: int = 0, steps: int = 1200, batch: int = 64, lr: float = 2e-3,
          pool_size: int = 12000, refresh: int = 16, minutes: float | None = None, eval_n: int = 1000,
          eval_seed: int = 10_000, quiet: bool = False, save: bool = True, **config) -> dict:
    """Train (and save into ``out``) the demo CNN; returns the metrics dict, with wall and CPU seconds."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from attnviz.scenes import make_dataset, to_arrays
    from attnviz.gated_cnn import GatedCnnForImageClassification

    set_threads(2)
    t_start, cpu_start = time.time(), time.process_time()
    rng, tqdm_kw, log = start_run(seed, 1, quiet)
    log(f"generating {pool_size} training scenes (dataset seed {seed})...")
    pool = ScenePool(pool_size, seed, refresh, rng)
    eval_images, eval_labels = to_arrays(make_dataset(eval_n, eval_seed))

    model = GatedCnnForImageClassification(make_config(**config))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr)
    warmup = max(1, min(100, steps // 10))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    deadline = None if minutes is None else t_start + 60 * minutes
    model.train()
    ema = None
    step = 0
    bar = tqdm(range(steps), desc="CNN", **tqdm_kw)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x, y = pool.batch(batch)
        logits = model(pixel_values=x).logits
        loss = F.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc = _exact_match(logits.detach(), y)
        ema = acc if ema is None else 0.98 * ema + 0.02 * acc
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{ema:.3f}", refresh=False)
        if past_time_cap(deadline, minutes, step, steps, log):
            break
    bar.close()
    model.eval()
    train_wall, train_cpu = time.time() - t_start, time.process_time() - cpu_start
    accuracy = evaluate_arrays(model, eval_images, eval_labels)
    metrics = {"exact_match_accuracy": accuracy, "eval_n": eval_n, "eval_seed": eval_seed, "train_seed": seed,
               "steps": step + 1, "batch": batch, "train_wall_seconds": round(train_wall, 1),
               "train_cpu_seconds": round(train_cpu, 1), "threads": torch.get_num_threads(),
               "scenes_seen_distinct": pool.next_index, "params": sum(p.numel() for p in model.parameters())}
    if save:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.config.attnviz_demo = {"generator": "attnviz.scenes", "train_seed": seed}
        model.config.architectures = [type(model).__name__]
        model.save_pretrained(out_dir, safe_serialization=True)
        make_image_processor().save_pretrained(out_dir)
        metrics["folder_bytes"] = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file())
    metrics["model"] = model
    log(json.dumps({k: v for k, v in metrics.items() if k != "model"}, indent=2))
    return metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m attnviz.demo.train cnn", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default 1200; 20 with --fast)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock cap; training stops early when reached")
    ap.add_argument("--fast", action="store_true", help="a few steps on a tiny dataset (for tests; not a useful model)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.fast:
        kw = dict(steps=args.steps or 20, batch=min(args.batch, 16), pool_size=128, refresh=0, eval_n=32)
    else:
        kw = dict(steps=args.steps or 1200, batch=args.batch)
    train(args.out, seed=args.seed, lr=args.lr, minutes=args.minutes, quiet=args.quiet, **kw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
