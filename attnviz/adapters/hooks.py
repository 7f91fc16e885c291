"""Module hooks that see only their own thread's forward.

One model object serves every session of the app, and two sessions may run
it at once (``ModelAdapter.concurrent_forwards``, ``queue.TurnLock`` lanes).
A hook registered on a shared module fires for every thread's forward, so a
capture that records stage maps or rewires an output with a hook would also
record (or rewire) the other session's forward. :func:`this_thread` wraps a
hook so it acts only for the thread that registered it and leaves every
other forward untouched (a forward hook returning None keeps the output).
"""
from __future__ import annotations

import threading
from typing import Callable


def this_thread(hook: Callable) -> Callable:
    """``hook``, acting only when called from the thread that is wrapping it now."""
    owner = threading.get_ident()

    def wrapped(*args, **kwargs):
        if threading.get_ident() != owner:
            return None
        return hook(*args, **kwargs)
    return wrapped
