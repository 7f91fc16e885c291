"""One model's batching line in the app process: sessions' captures and backwards share batches.

:class:`ModelServer` is what the app's engine calls instead of ``adapter.capture`` for a family that
batches (``batched.batchable``): a capture request (a session's first map: forward, and the backward
for its top target) waits in a :class:`~attnviz.queue.Batcher` until it runs with other sessions'
requests in one batch (:func:`~.batched.run_batch`). The capture it returns keeps no graph: a later
backward for another target (a session choosing another class) is a new request in the same line,
recomputing that image's forward with the others of its batch. First maps go before such later requests.

The app reads the batch size and wait window from ``ATTNVIZ_BATCH`` and ``ATTNVIZ_BATCH_WINDOW_MS``
(``ui/settings.py``; README "Batching a burst").
"""
from __future__ import annotations

import functools
import json
import os
import threading
import time
from typing import Any, Optional

from ..queue import Batcher, TurnLock
from ..types import Capture
from .batched import Work, batch_key, batchable, run_batch

MAX_BATCH = 4          # the app's default (ui/settings.py, measured: README "Batching a burst")
WINDOW_S = 0.05        # how long a lone request waits for batch-mates (README "Batching a burst")


class ModelServer:
    """Batched captures of one adapter for every session and thread of the process."""

    def __init__(self, adapter, *, max_batch: int = MAX_BATCH, window: float = WINDOW_S, lanes: int = 1,
                 log: Optional[str] = None):
        self.adapter, self.log = adapter, log
        self._log_lock = threading.Lock()
        lock = adapter.lock if isinstance(getattr(adapter, "lock", None), TurnLock) else None
        self.batcher = Batcher(functools.partial(run_batch, adapter), max_batch=max_batch, window=window,
                               lanes=lanes, lock=lock, name=f"attnviz-batch-{getattr(adapter, 'name', 'model')}",
                               on_batch=self._write_log if log else None)

    def _write_log(self, batch: list, seconds: float) -> None:
        """One JSON line per batch in ``log`` (``ATTNVIZ_BATCH_LOG``): what ``attnviz loadtest`` reads for
        the batch sizes and queue waits. Appended whole, so several app servers may share one file."""
        line = json.dumps({"t": time.time(), "pid": os.getpid(), "model": getattr(self.adapter, "name", ""),
                           "size": len(batch), "first": sum(1 for r in batch if r.first),
                           "waits_s": [round(r.queue_wait, 4) for r in batch], "run_s": round(seconds, 4)})
        with self._log_lock, open(self.log, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def __deepcopy__(self, memo) -> None:
        # A copy of the adapter (the randomisation check's) is not served by this line: it has no server.
        return None

    def _inline(self) -> bool:
        """Whether this thread already holds the model (a page that took its turn first): then it runs
        its own request at once; waiting for a batch would wait for the lane it holds."""
        lock = self.batcher.lock
        return lock is not None and lock.holds()

    def _run(self, work: Work, first: bool) -> Capture:
        if self._inline():
            return run_batch(self.adapter, [work])[0]
        return self.batcher(work, key=batch_key(work.inputs), first=first)

    def capture(self, inputs: dict[str, Any], *, first: bool = True) -> Capture:
        """One image's capture with its top target's gradients; later targets come through the line too."""
        cap = self._run(Work(inputs), first)
        cap._grad_fn = functools.partial(self._grads, inputs)
        return cap

    def _grads(self, inputs: dict[str, Any], target: int) -> dict[str, Any]:
        """A capture's gradient function: that image's forward and backward again, batched with others."""
        return self._run(Work(inputs, int(target)), False)._grads[int(target)]

    def stats(self) -> dict[str, Any]:
        return self.batcher.stats()


def attach_server(adapter, *, max_batch: int = MAX_BATCH, window: float = WINDOW_S,
                  lanes: int = 1, log: Optional[str] = None) -> Optional[ModelServer]:
    """Give ``adapter`` its :class:`ModelServer` (``adapter.server``) when its family batches and
    ``max_batch`` is above 1; else None (the app keeps its one-image path)."""
    adapter.server = (ModelServer(adapter, max_batch=max_batch, window=window, lanes=lanes, log=log)
                      if batchable(adapter) and max_batch > 1 else None)
    return adapter.server
