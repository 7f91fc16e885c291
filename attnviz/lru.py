"""Least-recently-used trimming of an ordered mapping by entries and by bytes: what the app's capture cache
(``ui/cache.py``) and a Ray Serve replica's (``serve/ray_app.py``) both bound themselves with. No torch, no
threads: the caller holds its own lock."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional


def trim(data: OrderedDict, max_entries: int, max_bytes: Optional[int] = None,
         size: Optional[Callable[[Any], int]] = None) -> list[Hashable]:
    """Drop the oldest entries of ``data`` (least recently used first) until at most ``max_entries`` remain
    and, with ``max_bytes`` and ``size`` (a value's bytes, asked now: values may grow after they are put), their
    sizes add up to no more; the newest entry always stays. Returns the keys dropped."""
    dropped = []
    while len(data) > max(1, max_entries):
        dropped.append(data.popitem(last=False)[0])
    if max_bytes is None or size is None:
        return dropped
    sizes = [size(v) for v in data.values()]                               # oldest first
    total = sum(sizes)
    for n in sizes:
        if total <= max_bytes or len(data) <= 1:
            break
        dropped.append(data.popitem(last=False)[0])
        total -= n
    return dropped
