"""Serving model work for many sessions: cross-session batching in-process, or on Ray Serve.

* :mod:`.batched`: the batched worker: captures (forward + one backward for each image's target) of
  requests from different sessions in one batch, each image's own and with no graph kept, or the forward
  first and its backward later;
* :mod:`.local`: :class:`ModelServer`, one model's batching line in the app process;
* :mod:`.remote`: the app's side of a Ray Serve application (``ATTNVIZ_SERVE``): maps over the network;
* :mod:`.ray_app`: the Ray Serve deployment, one per model, ``@serve.batch`` around the same worker.
"""
from .batched import Forward, Work, batchable, run_batch, run_forward
from .local import ModelServer, attach_server

__all__ = ["Forward", "Work", "batchable", "run_batch", "run_forward", "ModelServer", "attach_server"]
