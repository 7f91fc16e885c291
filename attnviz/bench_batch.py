"""``python -m attnviz bench --batch [--ray]``: batch throughput in images per second.

ViT-B/16 with random weights (no download), 224×224 JPEG images of random
smooth content. In the same run, on the same images:

* the unit: a bare batched SDPA forward (no attentions, no gradients) over
  already-prepared pixel tensors, ``batch_size`` images per forward;
* the batch engine from JPEG bytes to rows (decode, prepare, eager forward
  with attentions, the method, the rows): rollout must reach >= 0.9× the
  unit's images/s, relevance (one backward per batch) >= 0.45×;
* with ``--ray``: the in-process engine and the Ray engine (local, one worker
  per core, one torch thread each) over the same folder of files, results to
  Parquet; Ray's throughput counts from its workers being ready (start-up,
  reported apart: Ray itself, then the workers loading the model) and must be
  within 20 % of in-process.

Each measurement is repeated and interleaved with the unit; the ratios are
medians of paired runs, so load from other processes mostly cancels out.
"""
from __future__ import annotations

import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TARGETS = {"rollout": 0.9, "relevance": 0.45, "ray": 0.8}


def _images(n: int, size: int, seed: int = 0) -> list[bytes]:
    """JPEG bytes of smooth random images (upsampled noise: decodes like a photo, not like static)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        buf = io.BytesIO()
        small.resize((size, size), Image.BILINEAR).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def _bare_rate(bare, batches: list[torch.Tensor]) -> tuple[float, float]:
    """(images/s on the wall clock, images per CPU second) of bare batched forwards."""
    def run():
        with torch.no_grad():
            for x in batches:
                bare(pixel_values=x)
    wall, cpu = _timed(run)
    n = sum(len(x) for x in batches)
    return n / wall, n / cpu


def _engine_rate(worker, items) -> tuple[float, float]:
    def run():
        assert all(r.error is None for r in worker.run(items))
    wall, cpu = _timed(run)
    return len(items) / wall, len(items) / cpu


class _StampReady:
    """Called by each Ray worker once its model is loaded: writes the time to a file the driver reads."""

    def __init__(self, folder: str):
        self.folder = folder

    def __call__(self, pid: int, t: float) -> None:
        Path(self.folder, f"ready-{pid}").write_text(repr(t))


def run_batch_bench(images: int | None = None, ray: bool = False, batch: bool = True, quick: bool = False,
                    repeats: int = 3, batch_size: int = 8) -> int:
    from .bench import _models
    from .engine.job import Job
    from .engine.worker import Item, Worker
    torch.set_grad_enabled(True)
    adapter, bare = _models(quick)
    size = adapter.model.config.image_size
    if not batch:
        return 0 if _ray_bench(adapter, images or (16 if quick else 200), batch_size, size, quick) else 1
    n = images or (8 if quick else 16)
    data = _images(n, size)
    items = [Item(f"img{i}.jpg", None, d) for i, d in enumerate(data)]
    from .images import load_image
    pixels = torch.cat([adapter.prepare(load_image(d))["pixel_values"] for d in data])        # [N, 3, H, W]
    batches = list(pixels.split(batch_size))
    workers = {m: Worker(Job(model="<bench>", method=m, batch_size=batch_size), adapter)
               for m in ("rollout", "relevance")}
    _engine_rate(workers["rollout"], items[:batch_size])                   # warm-up
    _bare_rate(bare, batches[:1])
    rates: dict[str, list[float]] = {"bare": [], "rollout": [], "relevance": []}
    ratios: dict[str, list[float]] = {"rollout": [], "relevance": []}
    cpu_ratios: dict[str, list[float]] = {"rollout": [], "relevance": []}
    for i in range(1 if quick else repeats):
        for m, w in workers.items():
            unit, unit_cpu = _bare_rate(bare, batches)
            r, r_cpu = _engine_rate(w, items)
            rates["bare"].append(unit)
            rates[m].append(r)
            ratios[m].append(r / unit)
            cpu_ratios[m].append(r_cpu / unit_cpu)
            print(f"  run {i + 1}: bare {unit:.2f} images/s, {m} {r:.2f} images/s ({r / unit:.2f}×; "
                  f"per CPU second {r_cpu / unit_cpu:.2f}×)", flush=True)
    unit = statistics.median(rates["bare"])
    print(f"attnviz bench --batch: {'tiny ViT' if quick else 'ViT-B/16'} random weights, {size}×{size} JPEG, "
          f"{n} images, {batch_size} per forward, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'what':58} {'images/s':>9} {'× bare':>7} {'CPU ×':>6}  target (on × bare)")
    print(f"{'bare batched SDPA forward, prepared tensors (unit)':58} {unit:9.2f} {1.0:7.2f} {1.0:6.2f}")
    failed = False
    for m, label in (("rollout", "batch rollout: JPEG bytes -> rows (eager + attentions)"),
                     ("relevance", "batch relevance: + one backward per batch")):
        ratio = statistics.median(ratios[m])
        ok = ratio >= TARGETS[m]
        failed |= not ok
        print(f"{label:58} {statistics.median(rates[m]):9.2f} {ratio:7.2f} {statistics.median(cpu_ratios[m]):6.2f}"
              f"  >= {TARGETS[m]:.2f} {'ok' if ok else 'MISSED'}")
    print("(CPU ×: images per CPU second of this process against the unit's; on a machine shared with other "
          "jobs it is steadier than the wall clock)")
    if ray:
        failed |= not _ray_bench(adapter, images or (16 if quick else 200), batch_size, size, quick)
    return 0 if (quick or not failed) else 1


def _ray_bench(adapter, n: int, batch_size: int, size: int, quick: bool) -> bool:
    """In-process against Ray Data on the same folder of files; True when within the target."""
    import os
    from .engine.job import Job
    from .engine.local import run_inprocess
    from .engine.ray_engine import run_ray
    from .engine.sources import Source
    with tempfile.TemporaryDirectory(prefix="attnviz-bench-") as tmp:
        tmp = Path(tmp)
        model_dir, src = tmp / "model", tmp / "images"
        adapter.model.save_pretrained(model_dir, safe_serialization=True)   # the workers load it by path
        adapter.processor.save_pretrained(model_dir)
        src.mkdir()
        for i, d in enumerate(_images(n, size, seed=1)):
            (src / f"img{i:04d}.jpg").write_bytes(d)
        job = Job(model=str(model_dir), method="rollout", batch_size=batch_size)
        source = Source(str(src))
        s = run_inprocess(job, source, tmp / "out-inprocess", adapter=adapter, files=False)
        inproc = s.explained / s.seconds
        workers = os.cpu_count() or 1
        stamps = tmp / "stamps"
        stamps.mkdir()
        todo = source.files()
        t0 = time.time()
        timing = run_ray(job, source, tmp / "out-ray", todo, workers=workers, threads=1,
                         on_ready=_StampReady(str(stamps)))
        end = time.time()
        ready = [float(p.read_text()) for p in stamps.iterdir()]
        # Workers start one after another; from the mean ready time on, the pool is (on average) all there.
        started = statistics.mean(ready) if ready else t0 + timing["startup"]
        ray_rate = n / max(1e-9, end - started)
        ratio = ray_rate / inproc
        ok = ratio >= TARGETS["ray"]
        print(f"{f'in-process rollout, {n} files -> Parquet':58} {inproc:9.2f}")
        print(f"{f'Ray Data rollout, {workers} workers × 1 thread, same files':58} {ray_rate:9.2f} {ratio:7.2f}  "
              f">= {TARGETS['ray']:.2f} of in-process {'ok' if ok else 'MISSED'}")
        workers_up = (max(ready) - (t0 + timing["startup"])) if ready else float("nan")
        print(f"Ray start-up (not in the rate): ray.init {timing['startup']:.1f} s, workers ready "
              f"(model loaded) {workers_up:.1f} s after the run began; end to end with start-up "
              f"{n / (end - t0):.2f} images/s")
        import ray as _ray
        _ray.shutdown()
    return ok or quick
