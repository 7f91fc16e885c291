"""A small thread-safe LRU cache with a size bound and a time-to-live.

Used for objects ``st.cache_data`` cannot hold (captures keep tensors and an
autograd closure, so they cannot be pickled) and for maps whose computation
reports progress to the page (``st.cache_data`` would replay or refuse
elements drawn into containers made outside the cached function). No
Streamlit import: the concurrency tests use it directly.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional

from ..lru import trim


class ResultCache:
    """``get_or_compute(key, fn)``: at most ``max_entries`` values, each kept ``ttl`` seconds, and with
    ``max_bytes`` and ``size`` (a value's bytes, asked again at each put: a capture grows as gradients are
    added) the least recently used go while the values' sizes add up to more (the newest always stays).

    Two callers asking for the same missing key compute it once: the second
    waits for the first (a per-key lock), while other keys go ahead. A failed
    computation (an exception, or Streamlit stopping the script) stores
    nothing.
    """

    def __init__(self, max_entries: int, ttl: float, clock: Callable[[], float] = time.monotonic,
                 max_bytes: Optional[int] = None, size: Optional[Callable[[Any], int]] = None):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries, self.ttl, self._clock = int(max_entries), float(ttl), clock
        self.max_bytes, self._size = (int(max_bytes), size) if max_bytes is not None and size is not None else (None, None)
        self._data: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, tuple[threading.Lock, int]] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._data)

    def _expire(self) -> None:
        now = self._clock()
        for k in [k for k, (t, _) in self._data.items() if now - t > self.ttl]:
            del self._data[k]

    def peek(self, key: Hashable, default: Any = None) -> Any:
        """The cached value or ``default``; never computes."""
        with self._lock:
            item = self._data.get(key)
            if item is None or self._clock() - item[0] > self.ttl:
                return default
            self._data.move_to_end(key)
            return item[1]

    def __contains__(self, key: Hashable) -> bool:
        sentinel = object()
        return self.peek(key, sentinel) is not sentinel

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = (self._clock(), value)
            self._data.move_to_end(key)
            self._expire()
            trim(self._data, self.max_entries, self.max_bytes,
                 None if self._size is None else (lambda item: self._size(item[1])))

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def _key_lock(self, key: Hashable, delta: int) -> threading.Lock:
        with self._lock:
            lock, users = self._key_locks.get(key, (None, 0))
            if lock is None:
                lock = threading.Lock()
            users += delta
            if users > 0:
                self._key_locks[key] = (lock, users)
            else:
                self._key_locks.pop(key, None)
            return lock

    def get_or_compute(self, key: Hashable, fn: Callable[[], Any]) -> Any:
        sentinel = object()
        value = self.peek(key, sentinel)
        if value is not sentinel:
            self.hits += 1
            return value
        lock = self._key_lock(key, +1)
        try:
            with lock:
                value = self.peek(key, sentinel)   # someone else may have finished it meanwhile
                if value is not sentinel:
                    self.hits += 1
                    return value
                self.misses += 1
                value = fn()
                self.put(key, value)
                return value
        finally:
            self._key_lock(key, -1)
