"""The load generator (issue 13): Streamlit's protocol without a browser, against the real app server."""
import asyncio
import os
import time

import pytest

from attnviz.loadtest import procstats
from attnviz.loadtest.scenario import Plan, run_sessions, scene_images
from attnviz.loadtest.server import AppServer
from attnviz.ui.protocol import ProtocolError, check_loopback


def test_two_sessions_find_the_widgets_and_get_their_own_maps():
    """Two students on the demo model: every click came back with a map, each upload's map is drawn at
    the uploaded image's size, and the two students' maps differ (different images)."""
    size = 320
    images = scene_images(2, seed=5, size=size)
    plan = Plan(ramp=0.0, think=0.05, timeout=60)
    t0 = time.monotonic()
    with AppServer() as server:
        cpu0 = procstats.cpu_seconds(server.pid)
        rec = asyncio.run(run_sessions(server.url, images, plan, limit=50))
        cpu = procstats.cpu_seconds(server.pid) - cpu0
        loads = server.model_loads()
        rss = procstats.rss_bytes(server.pid)
    assert rec.errors == [] and rec.sessions_done == 2
    assert rec.widgets_found == {"file_uploader", "method", "alpha", "cmap", "norm"}
    n = {a: len(v) for a, v in rec.seconds.items()}
    assert n == {"open": 2, "upload → map": 2, "method switch": 4, "display change": 6}
    # one overlay per click (the explore page shows one method): as many images as clicks
    assert rec.images["upload → map"] >= 2 and rec.images["method switch"] >= 4 and rec.images["display change"] >= 6
    assert sorted(rec.first_maps) == [0, 1]
    assert [m[0] for m in rec.first_maps.values()] == [(size, size)] * 2   # the display copy of a 320² upload
    assert rec.first_maps[0][1] != rec.first_maps[1][1]
    assert loads == 1                                          # one model for both sessions
    assert cpu > 0 and rss > 50 * 2**20                        # a server with torch loaded, seen through /proc
    assert time.monotonic() - t0 < 60


def test_only_loopback_urls_are_accepted():
    assert check_loopback("http://127.0.0.1:8501") == ("127.0.0.1", 8501)
    assert check_loopback("http://localhost:9") == ("localhost", 9)
    assert check_loopback("http://[::1]:8501/") == ("::1", 8501)
    for url in ("http://10.0.0.2:8501", "http://example.org", "https://127.0.0.1:8501", "http://0.0.0.0:1"):
        with pytest.raises(ProtocolError):
            check_loopback(url)


def test_proc_readings_match_this_process():
    """/proc's CPU seconds and resident size of this process against the interpreter's own counters."""
    import resource
    t0 = time.process_time()
    while time.process_time() - t0 < 0.3:       # burn some CPU so the tick resolution is small beside it
        sum(range(10_000))
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    own = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime   # reaped children count too
    assert abs(procstats.cpu_seconds(os.getpid()) - own) < 0.05 + 4 / procstats.TICK
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024    # kB on Linux
    assert 0 < procstats.rss_bytes(os.getpid()) <= peak * 1.05
