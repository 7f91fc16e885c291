"""Start the app on a free loopback port for a measurement, or find a running one on this machine."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

from ..errors import UsageError
from . import procstats

ROOT = Path(__file__).resolve().parents[2]      # the repository: app.py and .streamlit/config.toml
LOADED_LINE = "attnviz: loaded model"           # the app prints this once per model it loads


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class AppServer:
    """``streamlit run app.py`` on 127.0.0.1 in its own process group, its output in a temporary log.

    ``env`` adds to this process's environment (e.g. ``ATTNVIZ_MODEL``). The
    server is the app as a teacher runs it (``make app``), only bound to
    loopback on a free port.
    """

    def __init__(self, env: Optional[dict[str, str]] = None, *, start_timeout: float = 90.0,
                 extra_args: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), **(env or {})}
        self.start_timeout = start_timeout
        self.extra_args = extra_args
        self.proc: Optional[subprocess.Popen] = None
        self.log = tempfile.NamedTemporaryFile("w+", prefix="attnviz-loadtest-", suffix=".log", delete=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> "AppServer":
        cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.address", "127.0.0.1",
               "--server.port", str(self.port), "--server.headless", "true",
               "--browser.gatherUsageStats", "false", *self.extra_args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UsageError(f"The app exited while starting (code {self.proc.returncode}); "
                                 f"its output is in {self.log.name}.")
            if _healthy(self.url):
                return self
            time.sleep(0.25)
        self.__exit__()
        raise UsageError(f"The app did not answer on {self.url} within {self.start_timeout:.0f} s; "
                         f"its output is in {self.log.name}.")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)      # its own group: only what it started
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.log.flush()

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def model_loads(self) -> int:
        """How many times the app loaded a model (its log lines)."""
        return self.output().count(LOADED_LINE)


def running_server_pid(url: str, port: int) -> int:
    """The pid of the app already serving ``url`` on this machine; UsageError when there is none."""
    if not _healthy(url.rstrip("/")):
        raise UsageError(f"No Streamlit app answers on {url}; start it (make app) or leave out --url.")
    pid = procstats.pid_listening_on(port)
    if pid is None:
        raise UsageError(f"Something answers on port {port} but its process is not visible to this user; "
                         "run the load test as the user who started the app.")
    return pid
