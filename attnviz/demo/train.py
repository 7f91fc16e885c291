"""Train the offline demo classifier: a small ViT that names the shapes in a scene.

    python -m attnviz.demo.train [--out models/demo-vit-shapes] [--fast] [--seed 0]
                                 [--steps N] [--minutes M]

A plain ``transformers.ViTForImageClassification`` (64×64 input, 8×8 patches, so
an 8×8 grid plus one CLS token) trained on :mod:`attnviz.scenes` with
multi-label BCE, classifying from its own CLS token.

Why a teacher: trained from scratch with BCE alone, a ViT this small sits at
chance on cluttered scenes for minutes. So a throw-away CNN is trained first
(about a minute); its 8×8 feature map, aligned with the patch grid and built to
carry *localised* class evidence (per-cell class scores, max-pooled), is a
"hint" (FitNets, Romero et al. 2015, https://arxiv.org/abs/1412.6550) that the
ViT's middle-layer patch tokens regress onto during the first part of training,
with the hint weight fading to zero. The hint regressor and the teacher are
discarded; the saved model is a stock ViT checkpoint (safetensors) plus its
image-processor config.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from attnviz.demo.common import past_time_cap, set_threads, start_run

DEFAULT_OUT = "models/demo-vit-shapes"
IMAGE_MEAN = [0.5, 0.5, 0.5]
IMAGE_STD = [0.5, 0.5, 0.5]


# --------------------------------------------------------------------------- data

class ScenePool:
    """A pool of generated scenes, partly replaced by fresh ones every step.

    Scene ``k`` of the run is ``make_scene(scene_rng(seed, k))``: the pool starts
    with scenes 0..size-1 and each refresh draws the next indices, so a run sees
    a stream of distinct scenes without paying for a whole new batch each step.
    """

    def __init__(self, size: int, seed: int, refresh: int, rng: np.random.Generator):
        from attnviz.scenes import make_dataset, to_arrays

        self.seed, self.refresh, self.rng = seed, refresh, rng
        self.images, self.labels = to_arrays(make_dataset(size, seed))
        self.next_index = size

    def _refresh(self) -> None:
        from attnviz.scenes import make_scene, scene_rng

        slots = self.rng.choice(len(self.images), size=self.refresh, replace=False)
        for slot in slots:
            s = make_scene(scene_rng(self.seed, self.next_index))
            self.next_index += 1
            self.images[slot], self.labels[slot] = s.image, s.labels

    def batch(self, n: int):
        import torch

        if self.refresh:
            self._refresh()
        idx = self.rng.integers(len(self.images), size=n)
        x = self.images[idx]  # [B, H, W, 3] uint8
        flip = self.rng.random(n) < 0.5  # every shape class is mirror-symmetric
        x[flip] = x[flip, :, ::-1]
        return to_pixel_values(x), torch.from_numpy(self.labels[idx])


def to_pixel_values(images_uint8: np.ndarray):
    """uint8 [B, H, W, 3] -> float [B, 3, H, W], the same as the saved ViTImageProcessor."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------- models

def make_teacher(n_classes: int, width: int = 64):
    """Small CNN whose 8×8 output cells are exactly the ViT's 8×8 patches.

    Each cell gets class scores; the image score is their spatial max, so a cell's
    features must say *which shape is here*, the localised signal we want the
    ViT's patch tokens to carry.
    """
    from torch import nn

    def block(cin, cout, k=3, stride=1):
        pad = 1 if stride == 2 else k // 2
        return [nn.Conv2d(cin, cout, k, stride=stride, padding=pad), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    class Teacher(nn.Module):
        def __init__(self):
            super().__init__()
            # 4×4 stride-2 convolutions: output cell k covers input pixels 2k-1..2k+2,
            # centred on its own 2×2 block, so after three of them each 8×8 cell is
            # centred on one ViT patch; strided rather than pooled to stay cheap on CPU
            self.features = nn.Sequential(
                *block(3, 16, 4, 2),  # 32×32
                *block(16, 32, 4, 2),  # 16×16
                *block(32, width, 4, 2),  # 8×8
                *block(width, width), *block(width, width),
            )
            self.cell_head = nn.Conv2d(width, n_classes, 1)

        def forward(self, x):
            f = self.features(x)  # [B, C, 8, 8]
            cell_logits = self.cell_head(f)  # [B, K, 8, 8]
            return cell_logits.flatten(2).amax(-1), f

    return Teacher()


def make_vit_config(hidden: int = 128, layers: int = 6, heads: int = 4, mlp: int = 256):
    from transformers import ViTConfig

    from attnviz.scenes import IMAGE_SIZE, SHAPES

    return ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,
        num_channels=3,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=mlp,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        problem_type="multi_label_classification",
        id2label={i: s for i, s in enumerate(SHAPES)},
        label2id={s: i for i, s in enumerate(SHAPES)},
    )


def make_image_processor():
    from transformers import ViTImageProcessor

    from attnviz.scenes import IMAGE_SIZE

    return ViTImageProcessor(
        do_resize=True,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
    )


# --------------------------------------------------------------------------- training

def _exact_match(logits, labels) -> float:
    return float(((logits > 0) == (labels > 0.5)).all(-1).float().mean())


def train_teacher(pool: ScenePool, n_classes: int, steps: int, batch: int, log, tqdm_kw):
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    teacher = make_teacher(n_classes)
    # constant 1e-3 (higher stalls longer on the plateau), cosine over the last 40 %
    opt = torch.optim.AdamW(teacher.parameters(), lr=1e-3, weight_decay=1e-4)
    hold = int(0.6 * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 if s < hold else 0.5 * (1 + math.cos(math.pi * (s - hold) / max(1, steps - hold))))
    teacher.train()
    ema = None
    bar = tqdm(range(steps), desc="teacher CNN", **tqdm_kw)
    for _ in bar:
        x, y = pool.batch(batch)
        logits, _ = teacher(x)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        acc = _exact_match(logits.detach(), y)
        ema = acc if ema is None else 0.95 * ema + 0.05 * acc
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{ema:.3f}", refresh=False)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    log(f"teacher: train exact-match (ema) {ema:.3f}")
    return teacher


def evaluate_arrays(model, images: np.ndarray, labels: np.ndarray, batch: int = 250) -> float:
    import torch

    model.eval()
    hits = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            logits = model(pixel_values=to_pixel_values(images[i:i + batch])).logits
            hits += int(((logits > 0) == torch.from_numpy(labels[i:i + batch] > 0.5)).all(-1).sum())
    return hits / len(images)


def train(out: str = DEFAULT_OUT, *, seed: int = 0, steps: int = 3000, teacher_steps: int = 800,
          batch: int = 64, lr: float = 1e-3, hint_fraction: float = 0.5, hint_weight: float = 1.0,
          hint_layer: int | None = None, pool_size: int = 12000, refresh: int = 16,
          hidden: int = 128, layers: int = 6, heads: int = 4, mlp: int = 256,
          minutes: float | None = None, eval_n: int = 1000, eval_seed: int = 10_000,
          quiet: bool = False) -> dict:
    """Train and save the demo ViT into ``out``; returns the metrics dict."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from tqdm import tqdm
    from transformers import ViTForImageClassification

    from attnviz.scenes import SHAPES, make_dataset, to_arrays

    set_threads(2)
    t_start = time.time()
    rng, tqdm_kw, log = start_run(seed, 1, quiet)

    log(f"generating {pool_size} training scenes (dataset seed {seed})...")
    pool = ScenePool(pool_size, seed, refresh, rng)
    log(f"  done in {time.time() - t_start:.1f}s")

    log(f"preparing {eval_n} held-out scenes (dataset seed {eval_seed})...")
    eval_images, eval_labels = to_arrays(make_dataset(eval_n, eval_seed))

    teacher = None
    if teacher_steps:
        teacher = train_teacher(pool, len(SHAPES), teacher_steps, batch, log, tqdm_kw)
        with torch.no_grad():
            t_logits = teacher(to_pixel_values(eval_images))[0]
        log(f"teacher: held-out exact-match {_exact_match(t_logits, torch.from_numpy(eval_labels)):.3f}")

    config = make_vit_config(hidden, layers, heads, mlp)
    model = ViTForImageClassification(config)
    model.set_attn_implementation("eager")
    hint_layer = layers // 2 if hint_layer is None else hint_layer
    t_width = teacher.cell_head.in_channels if teacher is not None else 1
    regressor = nn.Linear(hidden, t_width)  # discarded after training
    params = list(model.parameters()) + list(regressor.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
    warmup = max(1, min(200, steps // 10))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        p = (step - warmup) / max(1, steps - warmup)
        return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p)))

    hint_steps = int(hint_fraction * steps) if teacher is not None else 0
    deadline = None if minutes is None else t_start + 60 * minutes
    model.train()
    ema_acc = ema_bce = None
    bar = tqdm(range(steps), desc="ViT", **tqdm_kw)
    step = 0
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x, y = pool.batch(batch)
        w_hint = hint_weight * max(0.0, 1.0 - step / hint_steps) if hint_steps else 0.0
        out_ = model(pixel_values=x, output_hidden_states=w_hint > 0)
        bce = F.binary_cross_entropy_with_logits(out_.logits, y)
        loss = bce
        if w_hint > 0:
            with torch.no_grad():
                _, feats = teacher(x)  # [B, C, 8, 8]
                target = feats.flatten(2).transpose(1, 2)  # [B, 64, C], row-major like the patches
                target = (target - target.mean((0, 1))) / (target.std((0, 1)) + 1e-5)
            tokens = out_.hidden_states[hint_layer][:, 1:]  # [B, 64, hidden], drop CLS
            hint = F.mse_loss(regressor(tokens), target)
            loss = loss + w_hint * hint
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        acc = _exact_match(out_.logits.detach(), y)
        ema_acc = acc if ema_acc is None else 0.98 * ema_acc + 0.02 * acc
        ema_bce = bce.item() if ema_bce is None else 0.98 * ema_bce + 0.02 * bce.item()
        bar.set_postfix(bce=f"{ema_bce:.3f}", acc=f"{ema_acc:.3f}", hint=f"{w_hint:.2f}", refresh=False)
        if past_time_cap(deadline, minutes, step, steps, log):
            break
    bar.close()
    train_seconds = time.time() - t_start

    log(f"evaluating on {eval_n} held-out scenes (dataset seed {eval_seed})...")
    accuracy = evaluate_arrays(model, eval_images, eval_labels)

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.attnviz_demo = {"generator": "attnviz.scenes", "train_seed": seed}
    model.save_pretrained(out_dir, safe_serialization=True)
    make_image_processor().save_pretrained(out_dir)
    size_bytes = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file())
    metrics = {
        "exact_match_accuracy": accuracy,
        "eval_n": eval_n,
        "eval_seed": eval_seed,
        "train_seed": seed,
        "steps": step + 1,
        "batch": batch,
        "train_seconds": round(train_seconds, 1),
        "scenes_seen_distinct": pool.next_index,
        "params": sum(p.numel() for p in model.parameters()),
        "folder_bytes": size_bytes,
    }
    log(json.dumps(metrics, indent=2))
    return metrics


def main(argv: list[str] | None = None) -> int:
    # `python -m attnviz.demo.train clip|captioner|cnn|vlm [...]` trains the other demo models.
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in and args_in[0] in ("clip", "captioner", "cnn", "vlm"):
        import importlib
        return importlib.import_module(f"attnviz.demo.train_{args_in[0]}").main(args_in[1:])
    argv = args_in
    ap = argparse.ArgumentParser(prog="python -m attnviz.demo.train", description=__doc__.split("\n")[0],
                                 epilog="`python -m attnviz.demo.train clip ...` / `... captioner ...` / `... cnn ...` / "
                                        "`... vlm ...` train the image–text, captioning, CNN and question-answering "
                                        "demo models (their own options follow).")
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--seed", type=int, default=0, help="training data and init seed (default 0)")
    ap.add_argument("--steps", type=int, default=None, help="ViT steps (default 3000; 40 with --fast)")
    ap.add_argument("--teacher-steps", type=int, default=None, help="CNN teacher steps (default 800)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--minutes", type=float, default=None,
                    help="wall-clock cap for the whole run; training stops early when reached")
    ap.add_argument("--fast", action="store_true",
                    help="a few dozen steps on a tiny dataset (for tests; the model is not useful)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    if args.fast:
        kw = dict(steps=args.steps or 30, teacher_steps=args.teacher_steps if args.teacher_steps is not None else 10,
                  batch=min(args.batch, 16), pool_size=128, refresh=0, eval_n=32,
)
    else:
        kw = dict(steps=args.steps or 3000,
                  teacher_steps=args.teacher_steps if args.teacher_steps is not None else 800,
                  batch=args.batch)
    train(args.out, seed=args.seed, lr=args.lr, minutes=args.minutes, quiet=args.quiet, **kw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
