"""What every demo trainer and evaluator starts with: threads, seeds, a progress-bar style, a logger."""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Optional

import numpy as np


def set_threads(default: int = 2) -> None:
    """torch threads from ``ATTNVIZ_TRAIN_THREADS`` (the project's machines have 2 cores, often shared:
    two jobs of two threads each on them can run ten times slower than one thread each)."""
    import torch

    torch.set_num_threads(int(os.environ.get("ATTNVIZ_TRAIN_THREADS", str(default))))


def start_run(seed: int, stream: int, quiet: bool) -> tuple[np.random.Generator, dict, Callable[[str], None]]:
    """Seed torch with ``seed``; return (numpy generator for data stream ``stream``, tqdm kwargs, log)."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, stream])
    tqdm_kw = dict(disable=quiet, mininterval=2.0, file=sys.stdout, dynamic_ncols=True)

    def log(msg: str) -> None:
        if not quiet:
            print(msg, flush=True)
    return rng, tqdm_kw, log


def past_time_cap(deadline: Optional[float], minutes: Optional[float], step: int, steps: int,
                  log: Callable[[str], None]) -> bool:
    """True (and one log line) once a trainer's ``--minutes`` wall-clock cap has passed: stop early."""
    if deadline is None or time.time() <= deadline:
        return False
    log(f"time cap of {minutes} min reached at step {step + 1}/{steps}; stopping early")
    return True
