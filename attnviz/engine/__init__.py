"""Batch engines: explain many images, several per forward, in-process or on Ray Data.

* :mod:`.capture`: per-image captures from one batched forward, per-image gradients from one backward;
* :mod:`.pixels`: Captum's one-pass gradient methods over a whole batch;
* :mod:`.attention`: rollout and relevance over a whole batch of dense captures;
* :mod:`.worker`: files -> rows (decode, prepare, group by input size, explain);
* :mod:`.results`: the Parquet schema, part files, resumption, the run manifest;
* :mod:`.identity`: which weights a run explains (safetensors digests, hub revision);
* :mod:`.sources`: listing and reading a local folder or a pyarrow filesystem;
* :mod:`.local`: the in-process engine (the default); :mod:`.ray_engine`: the Ray Data engine.
"""
from .capture import capture_batch, grads_for_batch
from .job import Job
from .local import Summary, run_inprocess
from .results import SCHEMA, map_of, read_results
from .sources import Source
from .worker import Item, Worker

__all__ = ["capture_batch", "grads_for_batch", "Job", "Summary", "run_inprocess", "SCHEMA", "map_of",
           "read_results", "Source", "Item", "Worker"]
