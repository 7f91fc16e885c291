"""Long computations (slow methods, faithfulness checks) as background jobs that outlive a script run.

Streamlit stops a running script as soon as the user touches any widget (an opacity change
included) and runs it again. Work done inside the script would be thrown away with it, so a
long computation runs in a thread of its own, keyed like its cached result: the script that
started it, or any later run that finds it by its key, only watches its progress. No Streamlit
here: the thread never touches the page.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Hashable, Optional

Progress = Callable[[int, int], None]


class Job:
    """One computation ``fn(progress)`` running in a daemon thread."""

    def __init__(self, key: Hashable, fn: Callable[[Progress], Any]):
        self.key = key
        self.done = self.total = 0
        self.started = time.monotonic()
        self._fn = fn
        self._finished = threading.Event()
        self._result: Any = None
        self._error: Optional[BaseException] = None

    def update(self, done: int, total: int) -> None:
        """The computation's progress callback (called from its thread)."""
        self.done, self.total = int(done), int(total)

    def _run(self) -> None:
        try:
            self._result = self._fn(self.update)
        except BaseException as exc:   # noqa: BLE001  (handed to whoever reads the result)
            self._error = exc
        finally:
            self._finished.set()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    @property
    def failed(self) -> bool:
        return self.finished and self._error is not None

    def wait(self, timeout: Optional[float] = None) -> bool:
        """True once the job has finished (waits at most ``timeout`` seconds)."""
        return self._finished.wait(timeout)

    def result(self) -> Any:
        """The computation's value; its exception is raised here."""
        self._finished.wait()
        if self._error is not None:
            raise self._error
        return self._result

    def status(self, label: str) -> tuple[float, str]:
        """(fraction done, one line) for a progress bar; the seconds keep moving before the first batch."""
        seconds = time.monotonic() - self.started
        if self.total <= 0:
            return 0.0, f"{label}: first batch running · {seconds:.0f} s"
        return (min(1.0, self.done / self.total),
                f"{label}: {self.done}/{self.total} model evaluations · {seconds:.0f} s")


class Jobs:
    """The running jobs of one process, by key: at most one per key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[Hashable, Job] = {}

    def get(self, key: Hashable) -> Optional[Job]:
        with self._lock:
            return self._jobs.get(key)

    def start(self, key: Hashable, fn: Callable[[Progress], Any]) -> Job:
        """The job under ``key``: the one already running, or a new one started now."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and not job.failed:
                return job
            job = self._jobs[key] = Job(key, fn)
        thread = threading.Thread(target=self._run, args=(job,), name=f"attnviz-job-{id(job):x}", daemon=True)
        thread.start()
        return job

    def _run(self, job: Job) -> None:
        job._run()
        if not job.failed:       # its value sits in the result cache now; a failure waits to be read
            self.forget(job)

    def forget(self, job: Job) -> None:
        with self._lock:
            if self._jobs.get(job.key) is job:
                del self._jobs[job.key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)
