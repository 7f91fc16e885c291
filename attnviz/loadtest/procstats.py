"""A server's memory and CPU time read from /proc (Linux): the process and all its descendants.

CPU seconds are what the server itself used (user + system, children
included), so they do not change when other programs share the cores;
wall-clock latencies do. Resident memory is summed over the tree and its
peak is kept by a sampler thread.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Optional

PROC = Path("/proc")
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _stat(pid: int) -> Optional[list[str]]:
    """/proc/<pid>/stat fields after the command name (field 3 onwards), or None when it is gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()     # the name may hold spaces and parentheses


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            f = _stat(int(entry.name))
            if f is not None:
                children.setdefault(int(f[1]), []).append(int(entry.name))   # f[1]: ppid
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(root: int) -> float:
    """User + system CPU seconds of the tree, including its reaped children."""
    total = 0.0
    for pid in descendants(root):
        f = _stat(pid)
        if f is not None:   # utime, stime, cutime, cstime are fields 14-17 (here 11-14)
            total += sum(int(x) for x in f[11:15]) / TICK
    return total


def rss_bytes(root: int) -> int:
    """Resident memory of the tree now."""
    total = 0
    for pid in descendants(root):
        try:
            total += int((PROC / str(pid) / "statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def machine_load() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (how busy the cores were while latencies were measured)."""
    try:
        return tuple(float(x) for x in (PROC / "loadavg").read_text().split()[:3])   # type: ignore[return-value]
    except OSError:
        return (float("nan"),) * 3   # type: ignore[return-value]


def machine_busy_seconds() -> float:
    """CPU seconds every program on the machine spent busy (not idle / iowait), all cores."""
    try:
        fields = [int(x) for x in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return float("nan")
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK   # user nice system idle iowait irq softirq steal


def pid_listening_on(port: int) -> Optional[int]:
    """The process (of this user) with a TCP socket listening on ``port``, or None."""
    inodes = set()
    for table in ("net/tcp", "net/tcp6"):
        try:
            lines = (PROC / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in targets:
                    return int(entry.name)
        except OSError:
            continue
    return None


class Sampler:
    """Samples the resident memory of one tree (or the sum over several: ``root`` a list of pids) every
    ``every`` seconds in a thread; keeps the peak."""

    def __init__(self, root, every: float = 0.25):
        self.roots = list(root) if isinstance(root, (list, tuple)) else [root]
        self.every = every
        self.peak = self._rss()
        self.t0 = time.monotonic()
        self.timeline: list[tuple[float, int]] = []     # (seconds since start, bytes), one per sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            rss = self._rss()
            self.peak = max(self.peak, rss)
            self.timeline.append((round(time.monotonic() - self.t0, 2), rss))

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, self._rss())

    def _rss(self) -> int:
        return sum(rss_bytes(r) for r in self.roots)
