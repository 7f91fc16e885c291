"""``python -m attnviz loadtest``: many students on one app server, driven at the protocol level.

Starts the app (``streamlit run app.py`` on a free loopback port) or targets
one or more already running on this machine (``--url`` repeated: each session
stays on one of them), and runs N sessions of
:func:`scenario.student` at once: each opens the app, uploads its own image,
switches method twice and changes the display three times. It prints p50 /
p95 / max and errors per action, every error, the batches the app ran
(their sizes and how long requests waited in line, from its ``ATTNVIZ_BATCH_LOG``), the server's peak resident memory and the
CPU seconds the server used (robust to other programs on the cores, unlike
the latencies), the machine's load while it ran, and how many times the app
loaded a model. Loopback only; every wait and the whole run are bounded.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import batches, procstats
from .scenario import ACTIONS, Plan, Record, one_session_images, run_sessions


def summary(rec: Record) -> dict[str, dict[str, float]]:
    """Per action: n, p50, p95, max (seconds), images received and errors."""
    out = {}
    for action in ACTIONS:
        xs = rec.seconds.get(action, [])
        if xs:
            a = np.asarray(xs)
            out[action] = {"n": len(xs), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
                           "max": float(a.max()), "images": rec.images.get(action, 0),
                           "fragment_runs": rec.kinds.get(action, {}).get("fragment", 0),
                           "errors": rec.error_counts.get(action, 0)}
    return out


def warm_up(url: str, image: bytes, timeout: float) -> float:
    """The teacher opens the app once before the class: imports, the model load, one capture.
    Returns its seconds (not part of the measurement)."""
    from concurrent.futures import ThreadPoolExecutor

    from ..ui.protocol import Session

    async def go() -> None:
        with ThreadPoolExecutor(2) as pool:
            s = Session(url, pool, timeout=timeout)
            try:
                await s.open()
                await s.upload(s.find(kind="file_uploader"), "teacher.png", image)
            finally:
                await s.close()
    t0 = time.monotonic()
    asyncio.run(go())
    return time.monotonic() - t0


def measure(servers: Sequence[tuple[str, int]], images, plan: Plan, limit: float,
            batch_log: Optional[str] = None) -> dict:
    """Run the sessions against the servers (``(url, pid)`` each; session i on server i mod n); the
    measurements as a dict. CPU seconds and resident memory are summed over the servers."""
    urls, pids = [u for u, _ in servers], [p for _, p in servers]
    warm = sum(warm_up(u, one_session_images(plan.seed + 1, 1, None)[0], plan.timeout) for u in urls)
    cpu = (lambda: sum(procstats.cpu_seconds(p) for p in pids))
    cpu0, busy0, load0 = cpu(), procstats.machine_busy_seconds(), procstats.machine_load()
    rss0 = sum(procstats.rss_bytes(p) for p in pids)
    client0 = time.process_time()
    t0, wall0 = time.monotonic(), time.time()
    with procstats.Sampler(pids) as sampler:
        rec = asyncio.run(run_sessions(urls, images, plan, limit=limit))
    wall = time.monotonic() - t0
    return {
        "record": rec, "actions": summary(rec), "wall_s": wall, "servers": urls,
        "server_cpu_s": cpu() - cpu0,
        "server_rss_start_mb": rss0 / 2**20, "server_rss_peak_mb": sampler.peak / 2**20,
        "server_rss_end_mb": sum(procstats.rss_bytes(p) for p in pids) / 2**20,
        "machine_busy_s": procstats.machine_busy_seconds() - busy0, "cores": os.cpu_count() or 1,
        "load_before": load0, "load_after": procstats.machine_load(),
        "client_cpu_s": time.process_time() - client0, "warm_up_s": warm,
        "batching": batches.summary(batches.read(batch_log, wall0, time.time())),
        "rss_mb_timeline": [(t, round(b / 2**20)) for t, b in sampler.timeline],
    }


def print_report(res: dict, *, sessions: int, url: str, model: str, plan: Plan, loads: Optional[int]) -> None:
    rec: Record = res["record"]
    print(f"attnviz loadtest: {sessions} sessions on {url} · model {model} · sessions open over {plan.ramp:g} s, "
          f"think {plan.think:g} s (×0.5–1.5) between clicks")
    print(f"(the teacher's first visit, not measured: {res['warm_up_s']:.1f} s)")
    print(f"{'action':16} {'n':>4} {'p50 s':>8} {'p95 s':>8} {'max s':>8} {'maps':>5} {'fragment':>9} {'errors':>7}")
    for action, s in res["actions"].items():
        print(f"{action:16} {s['n']:4d} {s['p50']:8.3f} {s['p95']:8.3f} {s['max']:8.3f} {s['images']:5d} "
              f"{s['fragment_runs']:9d} {s['errors']:7d}")
    n_actions = sum(s["n"] for s in res["actions"].values())
    print(f"errors: {len(rec.errors)}" + ("" if not rec.errors else "  (first ones below)"))
    for e in rec.errors[:10]:
        print(f"  - {e}")
    print(f"sessions completed: {rec.sessions_done}/{sessions}; runs that showed the queue notice: {rec.waited}")
    for line in batches.lines(res.get("batching", {})):
        print(line)
    print(f"server{'s' if len(res.get('servers', [])) > 1 else ''}: {res['server_cpu_s']:.1f} CPU s over "
          f"{res['wall_s']:.1f} s wall "
          f"({res['server_cpu_s'] / max(n_actions, 1) * 1000:.0f} ms per action), resident memory "
          f"{res['server_rss_start_mb']:.0f} MB at start, peak {res['server_rss_peak_mb']:.0f} MB"
          + (f", model loads: {loads}" if loads is not None else ""))
    grown = max(0.0, res["server_rss_peak_mb"] - res["server_rss_start_mb"])
    print(f"memory per session: peak − start = {grown:.0f} MB over {sessions} sessions = {grown / sessions:.1f} MB "
          f"a session (the caches are bounded: ATTNVIZ_CAPTURE_CACHE etc.); at the end "
          f"{res.get('server_rss_end_mb', 0):.0f} MB")
    busy, avail = res["machine_busy_s"], res["wall_s"] * res["cores"]
    print(f"machine: {res['cores']} cores, busy {busy:.0f} of {avail:.0f} core-seconds "
          f"({busy - res['server_cpu_s'] - res['client_cpu_s']:.0f} by other programs); load average "
          f"{res['load_before'][0]:.2f} before, {res['load_after'][0]:.2f} after; "
          f"this load generator used {res['client_cpu_s']:.1f} CPU s")


def run_loadtest(*, sessions: int = 30, model: Optional[str] = None, url=None,
                 ramp: float = 30.0, think: float = 2.0, seed: int = 0, timeout: float = 180.0,
                 limit: float = 900.0, images_dir: Optional[str] = None, json_path: Optional[str] = None,
                 app_args: tuple[str, ...] = (), batch_log: Optional[str] = None,
                 app_env: Optional[dict[str, str]] = None) -> int:
    """The CLI entry: 0 when every session finished without an error, 1 otherwise.

    ``url``: one running app or a list of them (sessions spread over them, each staying on its own);
    ``batch_log``: the ATTNVIZ_BATCH_LOG file those apps write (an app started here gets its own)."""
    from ..errors import UsageError
    from ..ui.protocol import check_loopback
    from .models import RANDOM_VIT_B16, save_random_vit_b16
    from .server import AppServer, running_server_pid
    urls = [url] if isinstance(url, str) else list(url or [])
    if not 1 <= sessions <= 200:
        raise UsageError("--sessions must be between 1 and 200.")
    if ramp < 0 or think < 0 or timeout <= 0 or limit <= 0:
        raise UsageError("--ramp and --think must be >= 0, --timeout and --limit > 0 (seconds).")
    plan = Plan(ramp=ramp, think=think, seed=seed, timeout=timeout)
    # A kill (timeout, Ctrl-C) still stops the app this test started: SIGTERM unwinds like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    images = one_session_images(seed, sessions, Path(images_dir) if images_dir else None)
    if urls:
        if model:
            raise UsageError("--model applies only to an app the load test starts; leave it out with --url.")
        servers = []
        for u in urls:
            _, port = check_loopback(u)
            servers.append((u, running_server_pid(u, port)))
        if len({p for _, p in servers}) != len(servers):
            raise UsageError("Two --url values reach the same app server; give each server once.")
        res = measure(servers, images, plan, limit, batch_log)
        print_report(res, sessions=sessions, url=" + ".join(urls), model="(as the running apps serve)", plan=plan,
                     loads=None)
        loads = None
    else:
        with tempfile.TemporaryDirectory(prefix="attnviz-loadtest-") as tmp:
            log = str(Path(tmp) / "batches.jsonl")
            env = {"ATTNVIZ_BATCH_LOG": log, **(app_env or {})}
            if model == RANDOM_VIT_B16:
                print("attnviz loadtest: building a ViT-B/16 with random weights…", file=sys.stderr)
                env["ATTNVIZ_MODEL"] = str(save_random_vit_b16(Path(tmp) / "vit-b16"))
            elif model:
                env["ATTNVIZ_MODEL"] = model
            with AppServer(env, extra_args=app_args) as server:
                res = measure([(server.url, server.pid)], images, plan, limit, log)
                loads = server.model_loads()
                print_report(res, sessions=sessions, url=server.url, model=model or "the app's default",
                             plan=plan, loads=loads)
    if json_path:
        out = {k: v for k, v in res.items() if k != "record"}
        out.update(errors=res["record"].errors, sessions=sessions, model_loads=loads,
                   plan={"ramp": ramp, "think": think, "seed": seed},
                   events=[dict(zip(("session", "action", "end_s", "seconds"), e)) for e in res["record"].events])
        Path(json_path).write_text(json.dumps(out, indent=2))
    return 0 if not res["record"].errors and res["record"].sessions_done == sessions else 1
