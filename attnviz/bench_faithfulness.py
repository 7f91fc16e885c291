"""``python -m attnviz bench --faithfulness``: what the perturbation metrics' forwards cost, in CPU seconds.

ViT-B/16 with random weights at 224² (a tiny ViT with ``--quick``), one thread by default. CPU time
(``time.process_time``) of the whole process, so load from other processes does not inflate it the way it
does wall time (with two threads on shared cores it does: OpenMP's waiting threads spin, and a loaded
machine made one image cost 2.0 CPU-s alone and 0.77 per image in batches of 8); every ratio is over the
median CPU time of one bare SDPA forward of one image measured in the same run.

Prints: the per-image cost of bare SDPA forwards at several batch sizes and of the eager attention that
returns weights (what the perturbation metrics ran before ``scores_only``); deletion + insertion (20 steps,
one random order, as ``bench``) the way it ran before (eager attention, batches of 16) and now (fused
attention, batches of 8, the capture's own image not forwarded again), and for a further map of the same image
(the random curves kept with the capture), with the number of images each forwards and the floor that number
sets (images × batched s/img ÷ single s/img); ROAD the same two ways.
"""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from unittest import mock

import torch

BATCHES = (1, 4, 8, 16)


def _cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def _per_image(fn, x: torch.Tensor, batch: int, repeats: int) -> float:
    xb = x.expand(batch, -1, -1, -1).contiguous()                        # [B, C, H, W]
    with torch.inference_mode():
        fn(xb)                                                           # warm-up
        return statistics.median(_cpu(lambda: fn(xb)) for _ in range(repeats)) / batch


def run_faithfulness_bench(quick: bool = False, threads: int = 1, repeats: int = 3) -> int:
    """Print the table described in the module docstring; 0 when deletion + insertion meets ``bench``'s target."""
    import attnviz.adapters.base as base
    from .bench import FAITHFULNESS_TARGETS, _models
    from .methods.registry import explain
    from .metrics import deletion_insertion
    from .metrics.deletion import forget_random_curves
    from .metrics.road import road
    torch.set_num_threads(threads)
    torch.set_grad_enabled(True)
    adapter, bare = _models(quick)
    size = adapter.model.config.image_size
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    cap = adapter.capture({"pixel_values": x, "box": None}, grads=True)
    exp = explain(adapter, cap, "relevance")
    other = explain(adapter, cap, "rollout")         # a second method on the same image
    inputs = cap.inputs

    def before():
        """The metrics' forwards as they ran before: fast_eager keeping its weights."""
        return mock.patch.object(base, "scores_only", nullcontext)

    print(f"attnviz bench --faithfulness: {'tiny ViT' if quick else 'ViT-B/16'} random weights, {size}², "
          f"{threads} threads, CPU seconds of the process (median of {repeats})")
    unit = _per_image(lambda xb: bare(pixel_values=xb), x, 1, max(repeats, 5))
    print(f"  bare SDPA forward, 1 image (unit)      {unit:.3f} s")
    per = {}
    for b in BATCHES:
        per[b] = _per_image(lambda xb: bare(pixel_values=xb), x, b, repeats)
        print(f"  bare SDPA, batch {b:2d}                   {per[b]:.3f} s/img  {per[b] / unit:.2f}×")
    with before():
        eager8 = _per_image(lambda xb: adapter.forward_scores(xb, inputs), x, 8, repeats)
    fused8 = _per_image(lambda xb: adapter.forward_scores(xb, inputs), x, 8, repeats)
    print(f"  forward_scores, batch 8, eager weights {eager8:.3f} s/img  {eager8 / unit:.2f}×")
    print(f"  forward_scores, batch 8, fused         {fused8:.3f} s/img  {fused8 / unit:.2f}×")

    images = []
    real = adapter.forward_scores

    def counted(pixel_values, inp):
        images.append(int(pixel_values.shape[0]))
        return real(pixel_values, inp)

    def timed(fn, old: bool, keep: bool = False) -> float:
        if not keep:
            forget_random_curves(cap)             # an image's first map: its random yardstick is paid for
        with before() if old else nullcontext(), mock.patch.object(adapter, "forward_scores", counted):
            images.clear()
            return _cpu(fn)

    target = FAITHFULNESS_TARGETS["  deletion + insertion (20 steps, 1 random)"]
    rows = [("deletion + insertion, before (eager, batch 16)", lambda: deletion_insertion(adapter, cap, exp,
                                                                                         batch_size=16), True),
            ("deletion + insertion, now (fused, batch 8)", lambda: deletion_insertion(adapter, cap, exp), False),
            ("  the image's further maps (random reused)", lambda: deletion_insertion(adapter, cap, other), False),
            ("ROAD 2 × 9 fractions, before (eager, batch 16)", lambda: road(adapter, cap, exp, batch_size=16), True),
            ("ROAD 2 × 9 fractions, now (fused, batch 8)", lambda: road(adapter, cap, exp), False)]
    ratio_now = None
    for name, fn, old in rows:
        t = timed(fn, old, keep=name.startswith("  the image"))
        n = sum(images)
        print(f"  {name:46} {t:7.2f} s  {t / unit:6.1f}×  {n} images forwarded")
        if not old and not name.startswith("ROAD"):
            ratio_now = t / unit if ratio_now is None else ratio_now
            floor = n * per[8] / unit
            print(f"    floor: {n} images × {per[8]:.3f} / {unit:.3f} = {floor:.1f}× (bare SDPA batch 8 per image "
                  f"over one image); target <= {target:.0f}×")
    return 0 if quick or ratio_now <= target else 1
