"""A per-thread setting for the length of a ``with`` block (fast attention's recorder and score-only switch,
the batch line's wait notices)."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def setting(local: threading.local, name: str, value: Any, default: Any = None) -> Iterator[Any]:
    """``local.<name>`` is ``value`` in this thread while the block runs, then what it was before (``default``
    when it was unset); yields ``value``."""
    prev = getattr(local, name, default)
    setattr(local, name, value)
    try:
        yield value
    finally:
        setattr(local, name, prev)
