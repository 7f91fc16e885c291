"""``python -m attnviz.loadtest.servecost``: what a request costs over Ray Serve against in-process.

Starts a local Ray instance (2 CPUs) and the Serve application (``attnviz.serve.ray_app``) with two replicas of
one thread each on a ViT-B/16 with random weights, and times, against the same model in this process (one
thread): a map on a capture already made (rollout; relevance with its gradients cached), median of 5, and one
new image's first map (capture, then relevance), median of 5 images. The Serve side's extra is the handle
call, the input's 0.6 MB and the router's choice of the replica that holds the capture (README "More than one
machine"). Needs ``ray[serve]``'s runtime (``requirements.txt``); stops Ray at the end.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import ray
    import torch
    from PIL import Image
    from ray import serve

    import attnviz
    from attnviz.serve.ray_app import deploy
    from attnviz.serve.remote import RemoteModel

    from .models import save_random_vit_b16

    folder = str(save_random_vit_b16(Path(tempfile.gettempdir()) / "attnviz-servecost-vit-b16"))
    torch.set_num_threads(1)                               # as one replica: the same arithmetic on both sides
    t0 = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(proxy_location="Disabled")
        handle = deploy(folder, name="attnviz-servecost", replicas=2, cpus=1, batch=8, window_ms=50, threads=1)
        print(f"Ray, Serve and 2 replicas ready in {time.monotonic() - t0:.1f} s", flush=True)
        local = attnviz.load_model(folder)
        remote = RemoteModel("attnviz-servecost", handle=handle)
        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(6)]
        x = local.prepare(images[0])
        remote.explain(x, "relevance")                    # the image's capture and backward on a replica
        cap = attnviz.capture(local, images[0])
        attnviz.explain(local, cap, "relevance")
        for method in ("rollout", "relevance"):                 # warm-up, then the median of 5 calls
            over = statistics.median(timeit.repeat(lambda: remote.explain(x, method), number=1, repeat=6)[1:])
            here = statistics.median(timeit.repeat(lambda: attnviz.explain(local, cap, method), number=1, repeat=6)[1:])
            print(f"{method} on a ready capture: Serve {1000 * over:.1f} ms, in-process {1000 * here:.1f} ms "
                  f"(+{1000 * (over - here):.1f} ms a request)", flush=True)
        over, here = [], []
        for im in images[1:]:
            xi = local.prepare(im)
            t1 = time.perf_counter()
            remote.capture(xi)
            remote.explain(xi, "relevance")
            over.append(time.perf_counter() - t1)
            t1 = time.perf_counter()
            attnviz.explain(local, attnviz.capture(local, im), "relevance")
            here.append(time.perf_counter() - t1)
        print(f"a new image's first map (capture, then relevance), median of {len(over)}: "
              f"Serve {statistics.median(over):.2f} s, in-process {statistics.median(here):.2f} s", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
