"""``python -m attnviz bench --precision``: what bfloat16 passes cost and what they change, beside float32.

Cost: ViT-B/16 (random weights, 224², 1,000 classes), one fresh process per precision (its peak resident
memory is its own), one thread (what an app lane runs on), CPU seconds an image, median of ``repeats``
after a warm-up, and as a ratio to a float32 bare SDPA forward (the unit): a bare SDPA forward in the
precision, a capture (forward with attentions, no
graph), a batch of 4 such forwards, a capture with its graph plus one backward and the relevance map
(what a student's first class-specific map costs), and deletion + insertion (20 steps, one random order:
78 forwards without attentions).

Agreement: the trained demo ViT (``models/demo-vit-shapes``) on the scene images in ``assets/``, and the
random ViT-B/16 on noise: the same top class, and Pearson r between the float32 and the bfloat16 map of
rollout, relevance, gradient rollout, Grad-CAM and one layer's attention (their minimum over the images).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
AGREEMENT_METHODS = ("rollout", "relevance", "grad_rollout", "grad_cam", "attention")


def _cpu(fn, repeats: int) -> float:
    """Median CPU seconds of ``repeats`` runs after a warm-up (``bench._wall_cpu``)."""
    from .bench import _wall_cpu
    return _wall_cpu(fn, repeats)[1]


def cost_probe(precision_name: str, repeats: int = 3, quick: bool = False) -> dict:
    """One precision's costs in this process (run it in a fresh one)."""
    import resource

    from . import precision
    from .bench import _models
    from .methods.registry import explain
    from .metrics import deletion_insertion
    from .metrics.deletion import forget_random_curves
    torch.set_num_threads(1)
    adapter, bare = _models(quick)
    adapter.precision = precision.parse(precision_name)
    size = adapter.model.config.image_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, size, size, generator=g)
    inputs = {"pixel_values": x, "box": None}
    batch = [{"pixel_values": torch.randn(1, 3, size, size, generator=g), "box": None} for _ in range(4)]

    def unit():
        with torch.no_grad():
            bare(pixel_values=x)

    precision.shadow(bare)

    def own_unit():
        with torch.no_grad(), precision.computing(x.device, adapter.precision):
            bare(pixel_values=x)

    def relevance():
        cap = adapter.capture(inputs, grads=True)
        explain(adapter, cap, "relevance")

    def batch4():
        from .engine.capture import capture_batch
        capture_batch(adapter, batch, grads=False)

    cap = adapter.capture(inputs, grads=True)
    exp = explain(adapter, cap, "relevance")

    def first_map_checks():
        forget_random_curves(cap)                 # an image's first map pays for its random yardstick too
        deletion_insertion(adapter, cap, exp, steps=20, random_orders=1)
    out = {"precision": precision_name,
           "unit": _cpu(unit, repeats),
           "own_unit": _cpu(own_unit, repeats),
           "capture": _cpu(lambda: adapter.capture(inputs, grads=False), repeats),
           "batch4": _cpu(batch4, repeats) / 4,
           "relevance": _cpu(relevance, repeats),
           "deletion_insertion": _cpu(first_map_checks, max(1, repeats // 3))}
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _r(a, b) -> float:
    a, b = (np.asarray(v, dtype=np.float64).ravel() for v in (a, b))
    return float(np.corrcoef(a, b)[0, 1])


def agreement(adapter, images) -> dict:
    """Over ``images``: how many keep their top class, the largest probability change, and per method the
    smallest Pearson r between the float32 and the bfloat16 map (the top class's)."""
    import copy

    from . import capture
    from .methods.registry import explain
    bf = copy.copy(adapter)
    bf.precision = torch.bfloat16
    same, dprob, rs = 0, 0.0, {m: 1.0 for m in AGREEMENT_METHODS}
    for img in images:
        c32, c16 = capture(adapter, img), capture(bf, img)
        t = int(c32.scores.argmax())
        same += int(c16.scores.argmax()) == t
        dprob = max(dprob, float((torch.softmax(c16.scores, -1) - torch.softmax(c32.scores, -1)).abs().max()))
        for m in AGREEMENT_METHODS:
            rs[m] = min(rs[m], _r(explain(bf, c16, m, t).map, explain(adapter, c32, m, t).map))
    return {"images": len(images), "same_top": same, "max_dprob": dprob, "min_r": rs}


def run_precision_bench(repeats: int = 3, quick: bool = False) -> int:
    from PIL import Image

    from . import load_model
    from .bench import _models, in_fresh_process
    from .precision import fast_bfloat16
    costs = {}
    for name in ("float32", "bfloat16"):
        costs[name] = in_fresh_process(f"attnviz.bench_precision.cost_probe({name!r}, {repeats}, {quick})", name)
        if costs[name] is None:
            return 1
    load = os.getloadavg()
    print(f"attnviz bench --precision: {'tiny ViT' if quick else 'ViT-B/16'} random weights, torch "
          f"{torch.__version__}, one thread, CPU seconds an image (median of {repeats}); AMX bfloat16 on this "
          f"CPU: {'yes' if fast_bfloat16() else 'no'}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    rows = (("bare SDPA forward, float32 (unit)", "unit"), ("bare SDPA forward in the precision", "own_unit"),
            ("capture (forward with attentions)", "capture"),
            ("  the same in a batch of 4, an image", "batch4"),
            ("capture with graph + backward + relevance", "relevance"),
            ("deletion + insertion (78 forwards)", "deletion_insertion"))
    f32, b16 = costs["float32"], costs["bfloat16"]
    print(f"{'':44} {'float32':>16} {'bfloat16':>16} {'bf16/fp32':>9}")
    for label, key in rows:
        print(f"{label:44} {f32[key]:7.3f} s {f32[key] / f32['unit']:5.2f}× {b16[key]:7.3f} s "
              f"{b16[key] / b16['unit']:5.2f}× {b16[key] / f32[key]:8.2f}×")
    print(f"{'peak resident memory of the process':44} {f32['peak_mb']:9.0f} MB {b16['peak_mb']:12.0f} MB")
    torch.set_num_threads(2)
    scenes = sorted((ROOT / "assets").glob("scene_*.png"))
    sets = []
    demo = ROOT / "models" / "demo-vit-shapes"
    if demo.is_dir() and scenes:
        sets.append(("trained demo ViT, scenes", load_model(str(demo)), [Image.open(p).convert("RGB") for p in scenes]))
    adapter, _ = _models(quick)
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)) for _ in range(3)]
    sets.append(("random ViT-B/16, noise" if not quick else "tiny random ViT, noise", adapter, noise))
    print(f"{'maps, bfloat16 against float32':32} {'top class':>9} {'max Δp':>7} " +
          " ".join(f"{m:>12}" for m in AGREEMENT_METHODS) + "   (smallest Pearson r)")
    for label, ad, images in sets:
        a = agreement(ad, images)
        print(f"{label:32} {a['same_top']:>4}/{a['images']:<4} {a['max_dprob']:7.4f} " +
              " ".join(f"{a['min_r'][m]:12.5f}" for m in AGREEMENT_METHODS))
    return 0
