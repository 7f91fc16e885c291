"""The load generator (issue 13): Streamlit's protocol without a browser, against the real app server."""
import asyncio
import os
import time

import pytest

from attnviz.loadtest import procstats
from attnviz.loadtest.scenario import DEFAULT_MAP, FIRST_MAP, Plan, run_sessions, scene_images
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
    assert n == {"open": 2, FIRST_MAP: 2, DEFAULT_MAP: 2, "method switch": 4, "display change": 6}
    # one overlay per click (the explore page shows one method): as many images as clicks
    assert rec.images[DEFAULT_MAP] >= 2 and rec.images["method switch"] >= 4 and rec.images["display change"] >= 6
    # the first map came with or before the end of the upload's run, which drew the default method's map
    first = {e[0]: e[3] for e in rec.events if e[1] == FIRST_MAP}
    full = {e[0]: e[3] for e in rec.events if e[1] == DEFAULT_MAP}
    assert sorted(first) == [0, 1] and all(0 < first[i] <= full[i] + 1e-3 for i in first)
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


def test_batch_log_summary_from_hand_written_lines(tmp_path):
    """The batch log read back: only the run's time span, a half-written last line skipped, sizes and
    waits summarised as counted by hand."""
    import json

    from attnviz.loadtest import batches
    log = tmp_path / "b.jsonl"
    rows = [{"t": 5.0, "pid": 1, "size": 9, "first": 9, "waits_s": [9.0] * 9, "run_s": 9.0},   # before the run
            {"t": 10.0, "pid": 1, "size": 1, "first": 1, "waits_s": [0.05], "run_s": 0.4},
            {"t": 11.0, "pid": 2, "size": 3, "first": 2, "waits_s": [0.0, 0.1, 0.2], "run_s": 1.0},
            {"t": 12.0, "pid": 1, "size": 4, "first": 0, "waits_s": [1.0, 1.0, 1.0, 2.0], "run_s": 1.2}]
    log.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"t": 12.5, "si')
    s = batches.summary(batches.read(str(log), 8.0, 13.0))
    assert s["batches"] == 3 and s["requests"] == 8 and s["first_maps"] == 3 and s["servers"] == 2
    assert s["sizes"] == {1: 1, 3: 1, 4: 1} and s["max_size"] == 4 and s["mean_size"] == pytest.approx(8 / 3)
    # eight waits sorted: 0, .05, .1, .2, 1, 1, 1, 2 -> median between .2 and 1
    assert s["wait_p50_s"] == pytest.approx(0.6) and s["wait_max_s"] == 2.0 and s["run_p50_s"] == 1.0
    assert batches.summary(batches.read(str(tmp_path / "none.jsonl"), 0, 1)) == {"batches": 0, "requests": 0}
    # kinds: two forward batches (one followed by its backward) and one backward batch, CPU per image by hand
    rows[1].update(kind="forward", followed=True, run_cpu_s=0.5, after_cpu_s=0.4)
    rows[2].update(kind="forward", followed=False, run_cpu_s=1.5, after_cpu_s=0.0, graph=False)
    rows[3].update(kind="backward", run_cpu_s=4.0)
    log.write_text("\n".join(json.dumps(r) for r in rows))
    k = batches.summary(batches.read(str(log), 8.0, 13.0))["kinds"]
    assert k["forward"] == {"batches": 2, "images": 4, "cpu_per_image_s": pytest.approx(0.5), "followed_images": 1,
                            "after_cpu_per_image_s": pytest.approx(0.4), "held_images": 0, "no_graph_images": 3}
    assert k["backward"]["images"] == 4 and k["backward"]["cpu_per_image_s"] == pytest.approx(1.0)
    text = batches.lines(batches.summary(batches.read(str(log), 8, 13)))
    assert any("followed at once" in line and "3 gave it up (3 of them ran without one)" in line for line in text)


def test_url_repeated_drives_two_servers_with_sticky_sessions(tmp_path, capsys):
    """Two app servers writing one batch log, two sessions over `--url` twice: each server serves one
    session (its own batches in the log, its model loaded once), the report counts per action with no
    errors."""
    import json

    from attnviz.loadtest import run_loadtest
    log, out = tmp_path / "batches.jsonl", tmp_path / "res.json"
    with AppServer({"ATTNVIZ_BATCH_LOG": str(log)}) as a, AppServer({"ATTNVIZ_BATCH_LOG": str(log)}) as b:
        code = run_loadtest(sessions=2, url=[a.url, b.url], ramp=0.0, think=0.0, timeout=60, limit=90,
                            batch_log=str(log), json_path=str(out))
        loads = (a.model_loads(), b.model_loads())
        pids = {a.pid, b.pid}
    assert code == 0 and loads == (1, 1)
    res = json.loads(out.read_text())
    assert res["errors"] == [] and res["servers"] == [a.url, b.url]
    assert res["actions"][DEFAULT_MAP]["n"] == 2 and res["actions"][DEFAULT_MAP]["errors"] == 0
    assert res["actions"][FIRST_MAP]["n"] == 2
    logged = [json.loads(x) for x in log.read_text().splitlines()]
    assert {x["pid"] for x in logged} <= pids
    # each server ran at least its own session's first map (the teacher's warm-up visit came before the run)
    assert res["batching"]["servers"] == 2 and res["batching"]["first_maps"] >= 2
    assert "batching:" in capsys.readouterr().out
