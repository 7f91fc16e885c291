"""``python -m attnviz.loadtest.batchcost [THREADS]``: what a batch of the app's line costs per image.

CPU seconds (this process's, so other programs on the cores change them less than wall time) and wall
seconds of :func:`attnviz.serve.run_batch` (one forward and one backward, as a first map needs) on a
ViT-B/16 with random weights, for batches of 1, 2, 4 and 8, with THREADS torch threads (default 1, as
each of the app's two lanes on two cores). The app's ``ATTNVIZ_BATCH`` default comes from this.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path


def measure(threads: int = 1, sizes=(1, 2, 4, 8), folder: str = "") -> list[tuple[int, float, float]]:
    """(batch size, CPU s per image, wall s per batch) for each size."""
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
              for _ in range(max(sizes))]
    run_batch(adapter, [Work(inputs[0])])                 # warm
    out = []
    for b in sizes:
        reps = max(1, max(sizes) // b)                    # the same number of images for every size
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(reps):
            run_batch(adapter, [Work(x) for x in inputs[:b]])
        out.append((b, (time.process_time() - c0) / (reps * b), (time.perf_counter() - w0) / reps))
    return out


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    threads = int(args[0]) if args else 1
    with tempfile.TemporaryDirectory(prefix="attnviz-batchcost-") as tmp:
        for b, cpu, wall in measure(threads, folder=str(Path(tmp) / "vit-b16")):
            print(f"batch {b}: {cpu:.3f} CPU s per image, {wall:.2f} s wall per batch ({threads} thread(s))",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
