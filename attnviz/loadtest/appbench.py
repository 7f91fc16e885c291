"""``python -m attnviz bench --app``: the server CPU each interaction costs, one session at a time.

For the offline demo model and a ViT-B/16 with random weights, the app is
started, opened once (the model loads), and then one session repeats each
action several times on fresh state: uploads of new images, switches to
methods not yet computed for the image, display settings not yet drawn. The
server's CPU seconds (its whole process tree, from /proc) are read around a
block of the same action and divided by its count, so the 10 ms tick of
/proc averages out. A method's own compute is timed here, in this process,
on the same model and image, to separate it from the page's overhead.

Targets (issue 13): a display change <= 30 ms of server CPU; a method switch
<= 80 ms plus the method's own compute; upload -> first map on ViT-B/16
<= 1.2 s wall for one session.
"""
from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from . import procstats
from .models import save_random_vit_b16
from .scenario import _option, scene_images
from .server import AppServer

METHODS = ("rollout", "attention", "grad_rollout", "attn_grad")   # cheap, each new to an image
DISPLAYS = [("alpha", 0.55), ("cmap", "viridis"), ("norm", "percentile"), ("alpha", 0.65), ("cmap", "magma"),
            ("norm", "minmax")]                                  # every step a display not drawn before
TARGET_DISPLAY_MS, TARGET_SWITCH_MS, TARGET_UPLOAD_S = 30.0, 80.0, 1.2
SETTLE_S = 0.15                                                  # let the server finish after the last message


def _method_compute_ms(folder: Optional[str], image: bytes) -> dict[str, float]:
    """CPU ms of each method on a ready capture of ``image`` (relevance's backward already done),
    in this process, with the app's number of torch threads."""
    import torch

    import attnviz
    from attnviz.images import load_image
    from attnviz.ui.settings import TORCH_THREADS
    torch.set_num_threads(TORCH_THREADS)                    # as many threads as the app gives the model
    adapter = attnviz.load_model(folder)
    cap = attnviz.capture(adapter, load_image(image))
    attnviz.explain(adapter, cap, "relevance")              # the page's first map: the backward is done
    out = {}
    for name in METHODS:
        attnviz.explain(adapter, cap, name)                 # warm
        t0 = time.process_time()
        for _ in range(3):
            attnviz.explain(adapter, cap, name)
        out[name] = (time.process_time() - t0) / 3 * 1000
    return out


async def _measure(url: str, pid: int, images: list[bytes]) -> dict[str, list]:
    from ..ui.protocol import Session
    out: dict[str, list] = {"upload_cpu": [], "upload_wall": [], "switch_cpu": [], "display_cpu": [],
                            "open_cpu": [], "fragment": [], "images": []}
    with ThreadPoolExecutor(4) as pool:
        for img in images:
            s = Session(url, pool, timeout=300)
            c0 = procstats.cpu_seconds(pid)
            await s.open()
            await asyncio.sleep(SETTLE_S)
            c1 = procstats.cpu_seconds(pid)
            out["open_cpu"].append(c1 - c0)
            run = await s.upload(s.find(kind="file_uploader"), "bench.png", img)
            await asyncio.sleep(SETTLE_S)
            c2 = procstats.cpu_seconds(pid)
            out["upload_cpu"].append(c2 - c1)
            out["upload_wall"].append(run.seconds)
            out["images"].append(len(run.images))
            for name in METHODS:
                w = s.find(key="method")
                run = await s.set(w, _option(s.options(w), name))
                out["images"].append(len(run.images))
            await asyncio.sleep(SETTLE_S)
            c3 = procstats.cpu_seconds(pid)
            out["switch_cpu"].append((c3 - c2) / len(METHODS))
            for key, value in DISPLAYS:
                w = s.find(key=key)
                v = _option(s.options(w), str(value)) if w.kind in ("selectbox", "radio") else value
                run = await s.set(w, v)
                out["fragment"].append(run.kind == "fragment")
                out["images"].append(len(run.images))
            await asyncio.sleep(SETTLE_S)
            out["display_cpu"].append((procstats.cpu_seconds(pid) - c3) / len(DISPLAYS))
            await s.close()
    return out


def bench_model(label: str, folder: Optional[str], repeats: int = 3) -> dict:
    images = scene_images(repeats + 1, seed=42)
    env = {"ATTNVIZ_MODEL": folder} if folder else {}
    with AppServer(env) as server:
        from ..ui.protocol import Session

        async def warm() -> None:   # the teacher opens it once: imports, the model load, one capture
            with ThreadPoolExecutor(2) as pool:
                s = Session(server.url, pool, timeout=300)
                await s.open()
                await s.upload(s.find(kind="file_uploader"), "warm.png", images[-1])
                await s.close()
        asyncio.run(warm())
        res = asyncio.run(_measure(server.url, server.pid, images[:repeats]))
        res["model_loads"] = server.model_loads()
    res["method_ms"] = _method_compute_ms(folder, images[0])
    res["label"] = label
    return res


def _line(what: str, value: str, target: str = "", ok: Optional[bool] = None) -> None:
    mark = "" if ok is None else ("ok" if ok else "MISSED")
    print(f"  {what:46} {value:>14}  {target:24} {mark}")


def report(res: dict) -> bool:
    ms = lambda xs: 1000 * statistics.mean(xs)   # noqa: E731
    print(f"{res['label']}: {len(res['upload_cpu'])} sessions, model loads {res['model_loads']}, "
          f"fragment reruns {sum(res['fragment'])}/{len(res['fragment'])} display changes, "
          f"maps received {sum(res['images'])}")
    ok_all = True
    disp = ms(res["display_cpu"])
    ok = disp <= TARGET_DISPLAY_MS
    ok_all &= ok
    _line("display change (server CPU)", f"{disp:.0f} ms", f"<= {TARGET_DISPLAY_MS:.0f} ms", ok)
    method = statistics.mean(res["method_ms"].values())
    sw = ms(res["switch_cpu"])
    ok = sw - method <= TARGET_SWITCH_MS
    ok_all &= ok
    _line("method switch (server CPU)", f"{sw:.0f} ms", f"<= {TARGET_SWITCH_MS:.0f} + {method:.0f} ms compute", ok)
    _line("  methods' own compute (this process)",
          ", ".join(f"{k} {v:.0f}" for k, v in res["method_ms"].items()) + " ms")
    up = statistics.median(res["upload_wall"])
    is_b16 = "ViT-B/16" in res["label"]
    ok = up <= TARGET_UPLOAD_S if is_b16 else None
    ok_all &= ok is not False
    _line("upload -> first map (wall, median)", f"{up:.2f} s", f"<= {TARGET_UPLOAD_S} s" if is_b16 else "", ok)
    _line("upload -> first map (server CPU)", f"{ms(res['upload_cpu']):.0f} ms")
    _line("open the app, warm (server CPU)", f"{ms(res['open_cpu']):.0f} ms")
    return ok_all


def run_app_bench(repeats: int = 3) -> int:
    """Both models; 0 when every target is met."""
    load = procstats.machine_load()
    print(f"attnviz bench --app: server CPU per interaction (whole server process tree, from /proc), "
          f"load average {load[0]:.2f} when it started")
    ok = report(bench_model("demo model (models/demo-vit-shapes)", None, repeats))
    with tempfile.TemporaryDirectory(prefix="attnviz-bench-") as tmp:
        print("building a ViT-B/16 with random weights…", file=sys.stderr)
        folder = str(save_random_vit_b16(Path(tmp) / "vit-b16"))
        ok &= report(bench_model("ViT-B/16, random weights", folder, repeats))
    print(f"load average {procstats.machine_load()[0]:.2f} when it ended (wall-clock numbers depend on it; "
          "CPU seconds much less)")
    return 0 if ok else 1
