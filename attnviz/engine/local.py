"""The in-process engine (the default): one worker, images read in chunks, several per forward.

Each chunk of files is read, explained (grouped by input size, ``batch_size`` per
forward) and written as one Parquet part file, so an interrupted run loses at most
one chunk and resumes after the last one written. Besides Parquet it writes what
``batch`` always wrote: ``<file>.npy`` (the raw map), ``<file>.png`` (the overlay)
and ``results.jsonl``, unless ``files=False``. A chunk's files are written before its
part file; a run killed in between leaves lines in ``results.jsonl`` for images that
are not done, which the next run drops before it starts (with any half-written line).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

import numpy as np

from ..images import MAX_BYTES
from .faithfulness import COLUMNS as FAITHFULNESS
from .identity import model_identity
from .job import Job
from .results import done_paths, run_lock, start_run, write_part
from .sources import Source, check_out_dir
from .worker import ImageResult, Item, Worker


@dataclass
class Summary:
    """What a run did: images explained, files rejected, images skipped as already done, rows written."""

    explained: int = 0
    rejected: int = 0
    skipped: int = 0
    rows: list[dict] = field(default_factory=list)     # this run's result rows (maps included)
    seconds: float = 0.0


def run_key(worker: Worker) -> dict:
    """The job as run.json records it: the method's parameters as the worker runs them (defaults, the
    model's own, then the user's, parsed), so ``discard_ratio=0.0`` and the default are one run."""
    return {**worker.job.key(), "params": json.loads(json.dumps(worker.params, sort_keys=True, default=str))}


def check_places(source: Source, out) -> None:
    """The images' folder exists and the output is not inside it (before anything is written there)."""
    source.check()
    check_out_dir(source, out)


def pending_files(source: Source, out, worker: Worker) -> tuple[list[str], int]:
    """Files still to do (the run's manifest written or checked first) and how many are already done.
    The caller holds the folder (:func:`.results.run_lock`), taken after :func:`check_places`."""
    check_places(source, out)
    start_run(out, run_key(worker), source.root, model_identity(worker.adapter))
    done = done_paths(out)
    files = source.files()
    todo = [f for f in files if source.display(f) not in done]
    _keep_done_lines(Path(out) / "results.jsonl", source, done)
    return todo, len(files) - len(todo)


def _keep_done_lines(log: Path, source: Source, done: set[str]) -> None:
    """results.jsonl keeps only whole lines of images with rows: a killed run may have written lines
    (the last one perhaps cut short) for images whose part file never appeared; they are done again."""
    if not log.is_file():
        return
    base = PurePosixPath(source.base)
    kept, dropped = [], 0
    for line in log.read_text(errors="replace").splitlines(keepends=True):
        try:
            rec = json.loads(line) if line.endswith("\n") else None
            ok = rec is not None and source.display(str(base / rec["file"])) in done
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = log.with_name(f".{log.name}.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, log)


def read_item(source: Source, fs_path: str) -> Item | tuple[Item, str]:
    item = Item(source.display(fs_path), source.label(fs_path), b"")
    try:
        return Item(item.path, item.label, source.read(fs_path, MAX_BYTES))
    except OSError as e:
        return item, f"The file could not be read ({e.strerror or type(e).__name__})."


def run_inprocess(job: Job, source: Source, out, *, adapter=None, files: bool = True, chunk: Optional[int] = None,
                  progress: Optional[Callable[[int], None]] = None) -> Summary:
    """Explain every pending image of ``source`` into ``out``; ``progress(n)`` after each chunk of n images."""
    t0 = time.perf_counter()
    out = Path(out)
    check_places(source, out)
    worker = Worker(job, adapter)
    with run_lock(out):
        summary = _run_locked(worker, source, out, files, chunk, progress)
    summary.seconds = time.perf_counter() - t0
    return summary


def _run_locked(worker: Worker, source: Source, out: Path, files: bool, chunk: Optional[int],
                progress: Optional[Callable[[int], None]]) -> Summary:
    job = worker.job
    todo, skipped = pending_files(source, out, worker)
    summary = Summary(skipped=skipped)
    chunk = chunk or 4 * job.batch_size
    log = open(out / "results.jsonl", "a") if files else None
    try:
        for s in range(0, len(todo), chunk):
            items, results = [], {}
            for f in todo[s:s + chunk]:
                got = read_item(source, f)
                if isinstance(got, tuple):
                    results[got[0].path] = worker.error_result(*got)
                else:
                    items.append(got)
            results.update({r.path: r for r in worker.run(items)})
            ordered = [results[source.display(f)] for f in todo[s:s + chunk]]
            rows = [row for r in ordered for row in r.rows]
            if files:
                for f, r in zip(todo[s:s + chunk], ordered):
                    _write_files(out, source.relative(f).as_posix(), r, log)
                log.flush()                              # every line of the chunk on disk before its part
            write_part(out, rows)
            summary.rows += rows
            summary.rejected += sum(r.error is not None for r in ordered)
            summary.explained += sum(r.error is None for r in ordered)
            if progress is not None:
                progress(len(ordered))
    finally:
        if log is not None:
            log.close()
    return summary


def _write_files(out: Path, rel: str, r: ImageResult, log) -> None:
    """``<file>.npy`` and ``<file>.png`` (the whole file name, so a.jpg and a.png differ) and one
    results.jsonl line per target; a map per target is ``<file>.t<index>.npy`` when there are several."""
    from .. import render
    if r.error is not None:
        log.write(json.dumps({"file": rel, "error": r.error}) + "\n")
        return
    methods = {row["method"] for row in r.rows}
    for row, exp in zip(r.rows, r.exps):
        stem = out / _stem(rel, row, len(methods) > 1, sum(x["method"] == row["method"] for x in r.rows) > 1)
        stem.parent.mkdir(parents=True, exist_ok=True)
        np.save(f"{stem}.npy", exp.map.astype(np.float32))
        if exp.over in ("patches", "pixels"):
            img = render.overlay(r.image, exp.map, norm=render.default_norm(exp.signed), box=row["box"])
            Path(f"{stem}.png").write_bytes(render.to_png_bytes(img))
        log.write(json.dumps({"file": rel, **_jsonl_record(row, exp)}) + "\n")
    log.flush()


def _stem(rel: str, row: dict, several_methods: bool, several_targets: bool) -> str:
    """``<file>``, ``<file>.<method>`` with several methods, then ``.t<index>`` with several targets."""
    return rel + (f".{row['method']}" if several_methods else "") + (f".t{row['target_index']}" if several_targets
                                                                      else "")


def _jsonl_record(row: dict, exp) -> dict:
    """The results.jsonl fields ``batch`` has always written, from a Parquet row."""
    rec = {
        "model": row["model"], "method": row["method"],
        "target": {"index": row["target_index"], "label": row["target_label"], "kind": row["target_kind"]},
        "score": row["score"], "class_specific": row["class_specific"], "map_shape": row["map_shape"],
        "over": row["over"], "signed": row["signed"], "params": exp.params,
        "meta": {k: v for k, v in exp.meta.items() if k != "seconds" and isinstance(v, (int, float, str, bool))},
        "predicted": {"index": row["predicted_index"], "label": row["predicted_label"]},
    }
    if row.get("label") is not None:
        rec["label"] = row["label"]
    if row.get("deletion_auc") is not None:
        rec["faithfulness"] = {k: row[k] for k in FAITHFULNESS if row.get(k) is not None}
    if row.get("_sanity") is not None:
        rec["sanity"] = row["_sanity"]
    return rec


def faithfulness_line(rows: list[dict]) -> Optional[str]:
    """One line over a run (one per method when it ran several): mean AUCs, how often the map beat its
    random order, and ROAD's means."""
    checked = [r for r in rows if r.get("deletion_auc") is not None]
    if not checked:
        return None
    methods = list(dict.fromkeys(r["method"] for r in checked))
    return "\n".join(_method_line([r for r in checked if r["method"] == m], m if len(methods) > 1 else None)
                     for m in methods)


def _method_line(checked: list[dict], method: Optional[str]) -> str:
    n = len(checked)
    images = len({c["path"] for c in checked})
    what = f"{n} images" if images == n else f"{n} maps of {images} images"
    mean = {k: float(np.mean([c[k] for c in checked])) for k in ("deletion_auc", "random_deletion_auc",
                                                                  "insertion_auc", "random_insertion_auc")}
    beat_del = sum(c["deletion_auc"] < c["random_deletion_auc"] for c in checked)
    beat_ins = sum(c["insertion_auc"] > c["random_insertion_auc"] for c in checked)
    road = ""
    if all(c.get("road_morf") is not None for c in checked):
        road = (f"; ROAD MoRF {np.mean([c['road_morf'] for c in checked]):.4g}, LeRF "
                f"{np.mean([c['road_lerf'] for c in checked]):.4g}")
    return (f"faithfulness{f' of {method}' if method else ''} over {what}: deletion AUC {mean['deletion_auc']:.4g} "
            f"(random {mean['random_deletion_auc']:.4g}), insertion AUC {mean['insertion_auc']:.4g} (random "
            f"{mean['random_insertion_auc']:.4g}); the map beat random on deletion in {beat_del}/{n}, "
            f"on insertion in {beat_ins}/{n}{road}")
