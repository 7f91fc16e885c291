"""The app server's settings, read from the environment once (no Streamlit here: the load tools read them too).

``ATTNVIZ_CAPTURE_CACHE`` / ``ATTNVIZ_RESULT_CACHE`` / ``ATTNVIZ_CACHE_TTL`` bound the shared caches;
``ATTNVIZ_MODEL_LANES`` model computations run at once (for a model that allows it) with
``ATTNVIZ_TORCH_THREADS`` threads each. The README's "Running a classroom" lists them all.
"""
from __future__ import annotations

import os


def _env_int(name: str, default: int, least: int = 1) -> int:
    try:
        return max(least, int(os.environ.get(name, default)))
    except ValueError:
        return default


RESULT_ENTRIES = _env_int("ATTNVIZ_RESULT_CACHE", 256)     # maps are small: [rows, cols] or [H, W] float32
CACHE_TTL = float(_env_int("ATTNVIZ_CACHE_TTL", 3600))     # seconds
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
# Model computations that may run at once (for a model whose forward allows it: queue.TurnLock), and
# the threads each uses. Two lanes of one thread on two cores: two students' forwards run side by side
# and no thread waits at another's barrier; two threads on two busy cores spin against each other (a
# ViT-B/16 capture took 2.3 s of CPU with two threads on this 2-core machine under load, 0.48 s with
# one: issue 13). One core is left for the pages' own Python where there are more.
MODEL_LANES = _env_int("ATTNVIZ_MODEL_LANES", 2 if CORES >= 2 else 1)
TORCH_THREADS = _env_int("ATTNVIZ_TORCH_THREADS", max(1, (CORES - 1) // MODEL_LANES))
# Cross-session batching (serve.local.ModelServer) for families that batch: at most BATCH_SIZE requests per
# forward + backward, a lone request waiting BATCH_WINDOW_S for batch-mates. ATTNVIZ_BATCH=1 turns it off.
BATCH_SIZE = _env_int("ATTNVIZ_BATCH", 4)
BATCH_WINDOW_S = _env_int("ATTNVIZ_BATCH_WINDOW_MS", 50) / 1000
# A new image's forward is handed out before its backward; while other new images wait, up to GRAPH_HOLD
# images' forward graphs (about 0.2 GB each for ViT-B/16) wait for their backward instead of being given up
# and computed again (serve.local). 0: never kept; "auto" (None here): an eighth of the available memory over
# one graph's size, 8 to 64 (serve.local.auto_hold). Holding more lowers a burst's server CPU and its relevance
# maps' wait but delays its first maps (forwards that keep a graph cost more): measured, README "Batching a burst".
# Default "auto" since session 11: 100 students over a minute gave up 61 of 100 graphs with 8 and made them again
# (1.05 CPU s an image against 0.49 for a held graph's backward; README "Batching a burst").
_hold = os.environ.get("ATTNVIZ_GRAPH_HOLD", "auto").strip().lower()
GRAPH_HOLD = None if _hold == "auto" else _env_int("ATTNVIZ_GRAPH_HOLD", 8, least=0)
# A backward (a class-specific map) that has waited this long may go ahead of new images, within its share of the
# model's time (percent, queue.Share): with more students than the cores serve, neither side starves.
BATCH_AGE_S = float(_env_int("ATTNVIZ_BATCH_AGE_S", 10))
BACKWARD_SHARE = min(90, _env_int("ATTNVIZ_BACKWARD_SHARE", 10, least=0)) / 100
# Threads for model work that runs alone (no other lane busy, no request waiting): a lone student's forward and
# backward then use every core instead of one lane's share (0: the lane's own; README "Running a classroom").
ALONE_THREADS = _env_int("ATTNVIZ_ALONE_THREADS", min(CORES, TORCH_THREADS * MODEL_LANES + 1) if MODEL_LANES > 1 else 0,
                         least=0)
# A capture of a family that does not batch keeps its autograd graph (~140 MB for ViT-B/16); a batched one
# keeps its attentions and one target's gradients (45 MB), so the same memory holds 3× as many. A class's
# burst uploads 30 images within seconds: with fewer entries than students, the first ones' captures
# left the cache before their next click and were made again, in line behind the burst (issue 23's load
# test: 47 forwards for 31 images with 18 entries). With 40 entries, 100 students over a minute lost their
# capture before their next click and waited behind the new images for a forward again (method switch p95 25.7 s,
# 147 forwards for 100 images; session 11). So the cache is bounded by memory: its captures' tensors
# (``Capture.nbytes``) within ATTNVIZ_CAPTURE_MEMORY_MB, by default a quarter of the memory available at start
# (~130 ViT-B/16 captures with 24 GB), and at most ATTNVIZ_CAPTURE_CACHE entries (256 when batching; 6
# otherwise: those captures keep their autograd graph, which the byte count does not see).
CAPTURE_ENTRIES = _env_int("ATTNVIZ_CAPTURE_CACHE", 256 if BATCH_SIZE > 1 else 6)
# None: a quarter of the memory available when the engine is made (ui/state.py).
CAPTURE_MB = _env_int("ATTNVIZ_CAPTURE_MEMORY_MB", 0, least=0) or None
BATCH_LOG = os.environ.get("ATTNVIZ_BATCH_LOG", "").strip() or None   # a JSON line per batch (attnviz loadtest)
SERVE_APP = os.environ.get("ATTNVIZ_SERVE", "").strip() or None   # a Ray Serve application doing the model work
