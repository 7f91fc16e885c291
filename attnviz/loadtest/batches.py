"""The app servers' batch log (``ATTNVIZ_BATCH_LOG``, one JSON line per batch: ``serve.local``) read
back for a load test: how many requests each batch held and how long they waited in line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np


def read(path: Optional[str], since: float, until: float) -> list[dict]:
    """The batches logged in ``path`` between the wall-clock times ``since`` and ``until``."""
    if not path or not Path(path).is_file():
        return []
    out = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            b = json.loads(line)
        except ValueError:
            continue                 # a line still being written when the test ended
        if isinstance(b, dict) and since <= b.get("t", -1) <= until:
            out.append(b)
    return out


def summary(batches: list[dict]) -> dict:
    """Batches, requests, batch size mean / max and a histogram, queue waits p50 / p95 / max (seconds),
    the model's seconds per batch (p50), how many requests were first maps, and per kind of batch
    (``forward``: new images, handed out after the forward; ``backward``: a forward and backward for a
    target whose gradients were not ready; ``held``: the backward of a forward batch whose graph waited
    in line) the batches, images and the lane's CPU seconds per image; for forwards, how many images
    were followed by their batch's backward at once (the line had
    no new image waiting) with that backward's CPU seconds per image, and how many kept their graph."""
    if not batches:
        return {"batches": 0, "requests": 0}
    sizes = np.array([b["size"] for b in batches])
    waits = np.array([w for b in batches for w in b.get("waits_s", [])] or [0.0])
    runs = np.array([b.get("run_s", 0.0) for b in batches])
    hist: dict[int, int] = {}
    for s in sizes.tolist():
        hist[int(s)] = hist.get(int(s), 0) + 1
    kinds = {}
    for kind in ("forward", "backward", "held"):
        bs = [b for b in batches if b.get("kind") == kind]
        if bs:
            images = sum(b.get("images", b["size"]) for b in bs)
            followed = [b for b in bs if b.get("followed")]
            kinds[kind] = {"batches": len(bs), "images": images,
                           "cpu_per_image_s": sum(b.get("run_cpu_s", 0.0) for b in bs) / images,
                           "held_images": sum(b["size"] for b in bs if b.get("held")),
                           "followed_images": sum(b["size"] for b in followed),
                           "no_graph_images": sum(b["size"] for b in bs if b.get("graph") is False),
                           "after_cpu_per_image_s": (sum(b.get("after_cpu_s", 0.0) for b in followed)
                                                     / max(1, sum(b["size"] for b in followed)))}
    return {"batches": int(len(sizes)), "requests": int(sizes.sum()), "first_maps": int(sum(b.get("first", 0) for b in batches)),
            "mean_size": float(sizes.mean()), "max_size": int(sizes.max()), "sizes": dict(sorted(hist.items())),
            "wait_p50_s": float(np.percentile(waits, 50)), "wait_p95_s": float(np.percentile(waits, 95)),
            "wait_max_s": float(waits.max()), "run_p50_s": float(np.percentile(runs, 50)),
            "servers": len({b.get("pid") for b in batches}), "kinds": kinds}


def lines(s: dict) -> list[str]:
    """The report's lines for :func:`summary`."""
    if not s.get("batches"):
        return ["batching: no batch log (the model does not batch, ATTNVIZ_BATCH=1, or --batch-log was not given "
                "for an app started elsewhere with ATTNVIZ_BATCH_LOG)"]
    hist = ", ".join(f"{k}×{v}" for k, v in s["sizes"].items())
    out = [f"batching: {s['requests']} requests ({s['first_maps']} first maps) in {s['batches']} batches on "
           f"{s['servers']} server(s); size mean {s['mean_size']:.1f}, max {s['max_size']} (size×count: {hist}); "
           f"model time per batch p50 {s['run_p50_s']:.2f} s",
           f"queue wait before a batch: p50 {s['wait_p50_s']:.3f} s, p95 {s['wait_p95_s']:.3f} s, "
           f"max {s['wait_max_s']:.3f} s"]
    k = s.get("kinds", {})
    if "forward" in k:
        f = k["forward"]
        out.append(f"  new images' forwards: {f['images']} images in {f['batches']} batches, "
                   f"{f['cpu_per_image_s']:.2f} CPU s per image; {f['followed_images']} followed at once by their "
                   f"batch's backward ({f['after_cpu_per_image_s']:.2f} CPU s per image); while new images "
                   f"waited, {f['held_images']} kept their graph for a backward later, "
                   f"{f['images'] - f['followed_images'] - f['held_images']} gave it up"
                   + (f" ({f['no_graph_images']} of them ran without one)" if f.get("no_graph_images") else ""))
    if "held" in k:
        h = k["held"]
        out.append(f"  held graphs' backwards (backward only): {h['images']} images in {h['batches']} batches, "
                   f"{h['cpu_per_image_s']:.2f} CPU s per image")
    if "backward" in k:
        b = k["backward"]
        out.append(f"  later backwards (forward + backward again): {b['images']} images in {b['batches']} batches, "
                   f"{b['cpu_per_image_s']:.2f} CPU s per image")
    return out
