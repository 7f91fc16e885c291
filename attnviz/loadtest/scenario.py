"""What one student does, at the protocol level: open the app, upload an image, switch method twice,
change the display three times (opacity, colormap, normalisation), thinking between clicks."""
from __future__ import annotations

import asyncio
import io
import random
import time
from collections import defaultdict
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..images import MAX_BYTES

# "upload → first map": from the upload's first request to the first map element on the page (with a
# batching model in a burst, the forward's attention rollout, labelled as such); "upload → default map": to
# the end of that run, when the page's default method's map (relevance: it needs a backward) is drawn.
FIRST_MAP, DEFAULT_MAP = "upload → first map", "upload → default map"
ACTIONS = ("open", FIRST_MAP, DEFAULT_MAP, "method switch", "display change")
DEFAULT_METHODS = ("rollout", "attention")
DEFAULT_DISPLAY = (("alpha", 0.75), ("cmap", "viridis"), ("norm", "percentile"))
WAITING_MARK = "ahead of you"        # the app's queue notice ("2 requests ahead of you")


@dataclass(frozen=True)
class Plan:
    """The scenario's knobs. Sessions open evenly over ``ramp`` seconds; each pause is
    ``think`` × uniform(0.5, 1.5) seconds, drawn from ``seed``."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    display: tuple[tuple[str, object], ...] = DEFAULT_DISPLAY
    ramp: float = 30.0
    think: float = 2.0
    seed: int = 0
    timeout: float = 180.0
    fetch_media: bool = True


@dataclass
class Record:
    """Every action's latency, the runs' contents and the errors, gathered over all sessions."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    images: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    image_bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    kinds: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    errors: list[str] = field(default_factory=list)
    error_counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))   # per action
    waited: int = 0                       # runs that showed the queue notice
    widgets_found: set = field(default_factory=set)
    first_maps: dict[int, tuple[tuple[int, int], str]] = field(default_factory=dict)  # session -> (size, sha256)
    sessions_done: int = 0
    events: list[tuple[int, str, float, float]] = field(default_factory=list)   # session, action, end s, seconds
    t0: float = field(default_factory=time.monotonic)

    def add(self, action: str, run, *, session: int, need_image: bool) -> None:
        self.seconds[action].append(run.seconds)
        self.events.append((session, action, round(time.monotonic() - self.t0, 3), round(run.seconds, 3)))
        self.images[action] += len(run.images)
        self.image_bytes[action] += run.image_bytes
        self.kinds[action][run.kind] += 1
        if any(WAITING_MARK in t for t in run.texts):
            self.waited += 1
        for e in run.errors:
            self.error(session, action, e)
        if need_image and not run.images and not run.errors:
            self.error(session, action, "no map came back.")

    def add_seconds(self, action: str, seconds: float, *, session: int, ended_ago: float = 0.0) -> None:
        """A latency measured inside another action's run (the first map of an upload's run, which came
        ``ended_ago`` seconds before now)."""
        self.seconds[action].append(seconds)
        self.events.append((session, action, round(time.monotonic() - self.t0 - ended_ago, 3), round(seconds, 3)))

    def error(self, session: int, action: str, message) -> None:
        self.errors.append(f"session {session}, {action}: {message}")
        self.error_counts[action] += 1


def scene_images(n: int, seed: int = 0, size: int = 384) -> list[bytes]:
    """``n`` different PNG scenes (the demo models know these shapes), ``size`` pixels square."""
    from PIL import Image

    from ..scenes import make_scene
    out = []
    for i in range(n):
        scene = make_scene(seed * 100_003 + i, clutter=4)
        img = Image.fromarray(scene.image).resize((size, size), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def folder_images(folder: Path, n: int) -> list[bytes]:
    """``n`` images from a folder (reused in turn when it has fewer), each within the app's size cap."""
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
                   and p.is_file() and p.stat().st_size <= MAX_BYTES)
    if not files:
        from ..errors import UsageError
        raise UsageError(f"{folder} holds no image of at most {MAX_BYTES // 2**20} MB (PNG, JPEG, WebP, GIF, BMP).")
    return [files[i % len(files)].read_bytes() for i in range(n)]


def _option(options: Sequence[str], name: str) -> str:
    """The shown option for a registry name: method labels read 'rollout  (class-agnostic)'."""
    pretty = name.replace("_", " ")
    for o in options:
        if o == name or o == pretty or o.split("  (")[0] == pretty:
            return o
    raise LookupError(f"'{name}' is not among the options ({', '.join(options[:8])}…).")


async def student(i: int, url: str, image: bytes, plan: Plan, pool: Executor, rec: Record,
                  start_delay: float, deadline: float) -> None:
    """One session from opening the app to its last display change; errors are recorded, not raised."""
    from ..ui.protocol import ProtocolError, Session
    rng = random.Random(plan.seed * 7919 + i)

    async def think() -> None:
        await asyncio.sleep(max(0.0, min(plan.think * rng.uniform(0.5, 1.5), deadline - time.monotonic())))

    await asyncio.sleep(start_delay)
    s = Session(url, pool, timeout=plan.timeout, fetch_media=plan.fetch_media)
    step = "open"
    try:
        rec.add(step, await s.open(), session=i, need_image=False)
        await think()
        step = DEFAULT_MAP
        up = s.find(kind="file_uploader")
        rec.widgets_found.add("file_uploader")
        run = await s.upload(up, f"student-{i:02d}.png", image)
        if run.first_image_s is not None:
            rec.add_seconds(FIRST_MAP, run.first_image_s, session=i, ended_ago=run.seconds - run.first_image_s)
        rec.add(step, run, session=i, need_image=True)
        if run.images and plan.fetch_media:
            rec.first_maps[i] = await _png_size(s, run.images[-1])     # the default method's map
        step = "method switch"
        for name in plan.methods:
            await think()
            if time.monotonic() > deadline:
                raise TimeoutError("the load test's time limit was reached")
            w = s.find(key="method")
            rec.widgets_found.add("method")
            rec.add(step, await s.set(w, _option(s.options(w), name)), session=i, need_image=True)
        step = "display change"
        for key, value in plan.display:
            await think()
            if time.monotonic() > deadline:
                raise TimeoutError("the load test's time limit was reached")
            w = s.find(key=key)
            rec.widgets_found.add(key)
            if w.kind in ("selectbox", "radio"):
                value = _option(s.options(w), str(value))
            rec.add(step, await s.set(w, value), session=i, need_image=True)
        rec.sessions_done += 1
    except (ProtocolError, LookupError, TimeoutError, asyncio.TimeoutError, OSError) as exc:
        rec.error(i, step, exc)
    finally:
        try:
            await asyncio.wait_for(s.close(), 10)
        except Exception:   # noqa: BLE001  (closing a broken connection must not hide the real error)
            pass


async def _png_size(s, url: str) -> tuple[tuple[int, int], str]:
    """(width, height) of the PNG at ``url`` as Pillow decodes it, and its SHA-256."""
    import hashlib

    from PIL import Image
    data = await s.fetch(url)
    with Image.open(io.BytesIO(data)) as im:
        return im.size, hashlib.sha256(data).hexdigest()


async def run_sessions(url, images: Sequence[bytes], plan: Plan, *, limit: float) -> Record:
    """Every session at once (each opening at its ramp time); returns when all end or ``limit`` passes.

    ``url``: one app server, or a list of them: session i then stays on ``url[i % len(url)]`` (as a load
    balancer with sticky sessions would keep it)."""
    from concurrent.futures import ThreadPoolExecutor
    urls = [url] if isinstance(url, str) else list(url)
    n = len(images)
    rec = Record()
    deadline = time.monotonic() + limit
    with ThreadPoolExecutor(max_workers=min(64, 2 * n + 2), thread_name_prefix="loadtest-http") as pool:
        tasks = [asyncio.create_task(student(i, urls[i % len(urls)], images[i], plan, pool, rec,
                                             plan.ramp * i / max(n - 1, 1) if n > 1 else 0.0, deadline))
                 for i in range(n)]
        done, pending = await asyncio.wait(tasks, timeout=max(1.0, deadline - time.monotonic()))
        for t in pending:
            t.cancel()
        if pending:
            rec.errors.append(f"{len(pending)} sessions were still running at the {limit:.0f} s limit.")
            await asyncio.gather(*pending, return_exceptions=True)
    return rec


def one_session_images(seed: int, n: int, folder: Optional[Path]) -> list[bytes]:
    return folder_images(folder, n) if folder is not None else scene_images(n, seed)
