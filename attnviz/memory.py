"""How a server process's C allocator keeps and gives back memory (glibc; elsewhere nothing is done).

A model pass allocates its tensors fresh: a ViT-B/16 forward that keeps its graph for a later backward asks
for about 120 MB, most of it in tensors of 0.1–4 MB. On this project's virtual machine a page fault costs
8–10 µs (4 kB zeroed and mapped: ~2.5 s of system CPU per GB), so memory that glibc hands back to the
system at each free and maps again at the next allocation is paid for again and again. Measured (32
bfloat16 forwards in batches of 4, two threads, ``/tmp``-free script in the session notes): with a fixed
1 MB mmap threshold (what the app used from issue 13 on, to return evicted captures' memory) 2.07 M page
faults and 3.0 s of system CPU, 0.17 CPU s an image; with the policy below 0.28 M faults, 0.4 s, 0.09 CPU s.

The policy (:func:`tune`): tensors under 32 MB come from two arenas (``M_MMAP_THRESHOLD``, ``M_ARENA_MAX``)
and their memory is reused after a free instead of being unmapped; the arenas keep up to 512 MB free at
their top (``M_TRIM_THRESHOLD``). What issue 13 wanted stays true: when the process has been idle for
``IDLE_S`` (under ``IDLE_CPU`` CPU seconds used in that time) after work, :func:`release` (``malloc_trim``)
gives every free page back (after the forwards above: 3.4 GB resident -> 1.0 GB, as low as the 1 MB
threshold left it).
"""
from __future__ import annotations

import ctypes
import threading
import time
from typing import Optional

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 512 << 20
ARENAS = 2
IDLE_S = 5.0
IDLE_CPU = 0.25

_libc: Optional[ctypes.CDLL] = None
_started = False
_lock = threading.Lock()


def _glibc() -> Optional[ctypes.CDLL]:
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL("libc.so.6")
            lib.mallopt, lib.malloc_trim      # noqa: B018  (both exist: glibc)
            _libc = lib
        except (OSError, AttributeError):
            return None
    return _libc


def tune(idle_release: bool = True) -> bool:
    """Set the policy (module docstring) and start the idle release thread once; False where the C library
    is not glibc."""
    global _started
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    libc.mallopt(M_ARENA_MAX, ARENAS)
    with _lock:
        if idle_release and not _started:
            _started = True
            threading.Thread(target=_watch, name="attnviz-memory", daemon=True).start()
    return True


def release() -> bool:
    """Give the arenas' free pages back to the system now (``malloc_trim(0)``); True if any was."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def _watch() -> None:
    """Every ``IDLE_S``: if the process worked since the last release and has now been idle, release."""
    worked, last = False, time.process_time()
    while True:
        time.sleep(IDLE_S)
        now = time.process_time()
        if now - last >= IDLE_CPU:
            worked = True
        elif worked:
            release()
            worked = False
        last = time.process_time()
