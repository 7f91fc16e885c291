"""The Ray Data engine: the same work as the in-process engine, spread over Ray workers.

``read_binary_files`` reads the pending files (a local folder or any pyarrow
filesystem), ``map_batches`` hands batches to :class:`RayExplainer` actors (each
loads the model once and keeps it), and each actor writes its batch's rows as one part
file of the run's ``results.parquet`` folder the way the in-process engine does (a temp
file, then a rename: whole or absent, so a run killed at any moment resumes exactly; Ray's
own ``write_parquet`` writes in place, leaving a cut-short file to a killed run). The
actors need ``out`` on a filesystem they share (one machine, or a shared mount). ``ray.init()`` starts a local instance unless ``RAY_ADDRESS`` names a
cluster to join.

Threads: Ray sets ``OMP_NUM_THREADS`` to an actor's CPUs; the actor also sets
torch's own thread count to the same number, explicitly, so two workers on two
cores never oversubscribe them.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import UsageError
from .job import Job
from .sources import Source

#: Environment passed on to the workers (a remote cluster's workers do not share ours).
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "ATTNVIZ_DEVICE", "TRANSFORMERS_VERBOSITY")


class RayExplainer:
    """A Ray Data actor: loads the model once, then explains each batch of files it is handed."""

    def __init__(self, job: Job, root: str, out: str, threads: int = 1,
                 on_ready: Optional[Callable[[int, float], None]] = None):
        import torch
        torch.set_num_threads(threads)                 # explicit: not whatever the worker inherited
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:                           # already set in this process
            pass
        import transformers
        transformers.logging.set_verbosity_error()     # one notice per worker would flood the driver's log
        from .worker import Worker
        self.source = Source(root)
        self.out = out
        self.worker = Worker(job)
        if on_ready is not None:
            on_ready(os.getpid(), time.time())

    def __call__(self, batch):
        """A pyarrow batch of files (``bytes``, ``path``) -> one part file of rows; returns how many."""
        import pyarrow as pa
        from .results import write_part
        from .worker import Item
        paths = batch.column("path").to_pylist()
        data = batch.column("bytes").to_pylist()
        items = [Item(self.source.display(p), self.source.label(p), d) for p, d in zip(paths, data)]
        rows = [row for r in self.worker.run(items) for row in r.rows]
        write_part(self.out, rows)
        return pa.table({"rows": [len(rows)]})


def _init_ray(workers: Optional[int], threads: int):
    try:
        import ray
    except ImportError:
        raise UsageError("The Ray engine needs Ray: pip install 'attnviz[ray]' (or ray[data]).") from None
    if not ray.is_initialized():
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        kw: dict[str, Any] = dict(logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False,
                                  runtime_env={"env_vars": env} if env else None)
        if not os.environ.get("RAY_ADDRESS") and workers:
            kw["num_cpus"] = max(os.cpu_count() or 1, workers * threads)   # a local instance: room for the workers
        ray.init(**kw)
    import ray.data
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ray


def run_ray(job: Job, source: Source, out, todo: list[str], *, workers: Optional[int] = None, threads: int = 1,
            on_ready: Optional[Callable[[int, float], None]] = None) -> dict[str, Any]:
    """Explain the files ``todo`` (paths inside ``source.fs``) on Ray; rows appended to ``out``.

    ``workers``: actors (default: the cluster's CPUs / ``threads``); ``threads``: CPUs and torch
    threads per actor. Returns the start-up seconds (Ray up) and the run's wall seconds.
    """
    t0 = time.perf_counter()
    ray = _init_ray(workers, threads)
    startup = time.perf_counter() - t0
    if not todo:
        return {"startup": startup, "seconds": 0.0}
    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
    workers = max(1, min(workers, len(todo)))
    t1 = time.perf_counter()
    ds = ray.data.read_binary_files(todo, include_paths=True, filesystem=source.fs,
                                    num_cpus=0,                # reading is I/O: leave the CPUs to the actors
                                    override_num_blocks=max(1, -(-len(todo) // job.batch_size)))
    ds = ds.map_batches(RayExplainer, batch_size=job.batch_size, batch_format="pyarrow",
                        compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=threads,
                        fn_constructor_kwargs={"job": job, "root": source.root, "out": str(Path(out).resolve()),
                                               "threads": threads, "on_ready": on_ready})
    ds.materialize()                                    # the actors write the parts; the driver waits
    return {"startup": startup, "seconds": time.perf_counter() - t1, "workers": workers}


def rows_for(out, paths: set[str]) -> list[dict]:
    """This run's rows (for the summary) read back from the results folder."""
    from .results import read_results
    table = read_results(out)
    return [r for r in table.to_pylist() if r["path"] in paths]
