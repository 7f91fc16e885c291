"""``python -m attnviz.loadtest.batchcost [THREADS] [--lanes N]``: what a batch of the app's line costs per image.

CPU seconds (this process's, so other programs on the cores change them less than wall time) and wall
seconds on a ViT-B/16 with random weights, for batches of 1, 2, 4 and 8, with THREADS torch threads
(default 1, as each of the app's two lanes on two cores), of the three kinds of work the app's line runs
(``attnviz.serve``):

* ``forward``: :func:`~attnviz.serve.run_forward`, a new image's forward with the graph kept (what its
  first map, attention rollout, needs);
* ``+backward``: that batch's one backward for every image's top target (``Forward.finish``);
* ``one-shot``: :func:`~attnviz.serve.run_batch`, forward and backward at once (what a relevance map
  costs when its forward's graph was given up, and what every first map cost before).

``--forwards`` compares the forward alone four ways, batch 4: with the graph kept (``run_forward``), without
autograd (``graph=False``: what the line runs when the graph would be given up), and the model's own forward
without attention weights, SDPA and eager: how much of a forward is the arithmetic every forward pays.

``--lanes N`` runs N such one-shot batches at once in N threads (the app's lanes), and reports the CPU
seconds per image of all of them together: how much two lanes on two cores slow each other down.
"""
from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path


def _setup(threads: int, n: int, folder: str):
    import numpy as np
    import torch
    from PIL import Image

    import attnviz
    from attnviz.serve import Work, run_batch

    from .models import save_random_vit_b16
    torch.set_num_threads(threads)
    adapter = attnviz.load_model(str(save_random_vit_b16(Path(folder))))
    rng = np.random.default_rng(0)
    inputs = [adapter.prepare(Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)))
              for _ in range(n)]
    run_batch(adapter, [Work(inputs[0])])                 # warm
    return adapter, inputs


def measure(threads: int = 1, sizes=(1, 2, 4, 8), folder: str = "") -> list[dict]:
    """Per batch size: CPU s per image of the forward, of its backward after it, of forward + backward at
    once, and the wall s per one-shot batch."""
    from attnviz.serve import Work, run_batch, run_forward
    adapter, inputs = _setup(threads, max(sizes), folder)
    out = []
    for b in sizes:
        reps = max(1, max(sizes) // b)                    # the same number of images for every size
        fwd = bwd = one = wall = 0.0
        for _ in range(reps):
            works = [Work(x) for x in inputs[:b]]
            c0 = time.process_time()
            fw = run_forward(adapter, works)
            c1 = time.process_time()
            fw.finish(backward=True)
            c2 = time.process_time()
            w0 = time.perf_counter()
            run_batch(adapter, works)
            wall += time.perf_counter() - w0
            fwd, bwd, one = fwd + c1 - c0, bwd + c2 - c1, one + time.process_time() - c2
        n = reps * b
        out.append({"batch": b, "forward": fwd / n, "backward": bwd / n, "one_shot": one / n, "wall": wall / reps})
    return out


def lanes(n_lanes: int, threads: int = 1, batch: int = 4, folder: str = "") -> tuple[float, float]:
    """(CPU s per image, wall s) of ``n_lanes`` one-shot batches of ``batch`` run at once, one per thread."""
    from attnviz.serve import Work, run_batch
    adapter, inputs = _setup(threads, batch, folder)
    works = [Work(x) for x in inputs]
    c0, w0 = time.process_time(), time.perf_counter()
    ts = [threading.Thread(target=run_batch, args=(adapter, works)) for _ in range(n_lanes)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return (time.process_time() - c0) / (n_lanes * batch), time.perf_counter() - w0


def forwards(threads: int = 1, batch: int = 4, folder: str = "", reps: int = 3) -> dict[str, float]:
    """CPU s per image (best of ``reps``) of one batch's forward: with the graph, without, bare SDPA, bare eager."""
    import torch

    from attnviz.serve import Work, run_forward
    adapter, inputs = _setup(threads, batch, folder)
    works = [Work(x) for x in inputs]
    pixels = torch.cat([x["pixel_values"] for x in inputs])                   # [B, C, H, W]
    model, impl = adapter.model, adapter.model.config._attn_implementation

    def best(fn) -> float:
        t = []
        for _ in range(reps):
            c0 = time.process_time()
            fn()
            t.append(time.process_time() - c0)
        return min(t) / batch

    def bare(name: str):
        model.set_attn_implementation(name)
        try:
            with torch.no_grad():
                return best(lambda: model(pixel_values=pixels))
        finally:
            model.set_attn_implementation(impl)
    return {"with graph": best(lambda: run_forward(adapter, works).finish(backward=False)),
            "no graph": best(lambda: run_forward(adapter, works, graph=False)),
            "bare SDPA": bare("sdpa"), "bare eager": bare(impl)}


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    n_lanes = 0
    if "--lanes" in args:
        i = args.index("--lanes")
        n_lanes = int(args[i + 1])
        del args[i:i + 2]
    fw = "--forwards" in args
    args = [a for a in args if a != "--forwards"]
    threads = int(args[0]) if args else 1
    with tempfile.TemporaryDirectory(prefix="attnviz-batchcost-") as tmp:
        folder = str(Path(tmp) / "vit-b16")
        if fw:
            for name, cpu in forwards(threads, folder=folder).items():
                print(f"forward of a batch of 4, {name}: {cpu:.3f} CPU s per image ({threads} thread(s))", flush=True)
            return 0
        if n_lanes:
            for k in (1, n_lanes):
                cpu, wall = lanes(k, threads, folder=folder)
                print(f"{k} lane(s) at once, one-shot batches of 4: {cpu:.3f} CPU s per image, {wall:.2f} s wall "
                      f"({threads} thread(s) each)", flush=True)
            return 0
        for r in measure(threads, folder=folder):
            print(f"batch {r['batch']}: forward {r['forward']:.3f}, its backward {r['backward']:.3f}, one-shot "
                  f"forward + backward {r['one_shot']:.3f} CPU s per image; one-shot {r['wall']:.2f} s wall per batch "
                  f"({threads} thread(s))", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
