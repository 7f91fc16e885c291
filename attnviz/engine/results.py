"""Batch results on disk: a Parquet dataset with one row per image and target, and a run manifest.

Layout of an output folder::

    run.json                 what was run (model, method, parameters, targets) and from where
    results.parquet/         part files, each written whole (in-process: temp file, then rename)
    results.jsonl, *.npy, *.png   per-image files of the in-process engine (unless --no-files)

A row holds the map as float32 values with its shape (``map``, ``map_shape``), what it
is over, the target and its score, the model's top prediction, the folder label of a
labelled folder, the crop box and image size (to lay the map back on the image), the
faithfulness AUCs and ROAD means when asked, and ``error`` for a file that could not be read (then no map).

Resuming: every path with a row in readable part files is done. A part file that
cannot be read (a run killed while writing it) is renamed ``*.broken`` and its
images are done again. A run may be killed at any moment (SIGKILL included): part
files appear whole by rename, ``run.json`` too, and the next run ends with exactly the
rows of an uninterrupted one. Results are added to only by the run that made them:
same job (parameters compared after defaults), same images, same weights (see
:mod:`.identity`) and same attnviz version; a folder with parts but no ``run.json`` is
refused. One run at a time per folder: ``.attnviz.lock`` is held with ``flock``, which
the operating system lets go when its process ends, however it ends.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import OutDirBusy, UsageError

RESULTS = "results.parquet"
MANIFEST = "run.json"
LOCK = ".attnviz.lock"

SCHEMA = pa.schema([
    ("path", pa.string()),                 # the image as read: an absolute path or a filesystem URI
    ("label", pa.string()),                # the class subfolder of a labelled folder, else null
    ("model", pa.string()),
    ("method", pa.string()),
    ("target_index", pa.int32()),
    ("target_label", pa.string()),
    ("target_kind", pa.string()),          # class | prompt | token | embedding
    ("class_specific", pa.bool_()),        # false: the map is the same whatever the target
    ("score", pa.float64()),               # the target's score (the scalar class-specific methods explain)
    ("probability", pa.float64()),
    ("predicted_index", pa.int32()),       # the model's top target
    ("predicted_label", pa.string()),
    ("predicted_probability", pa.float64()),
    ("map", pa.list_(pa.float32())),       # row-major values of a map of shape map_shape
    ("map_shape", pa.list_(pa.int32())),   # [rows, cols] over patches, [H, W] over pixels, [n] over tokens
    ("over", pa.string()),
    ("signed", pa.bool_()),
    ("image_width", pa.int32()),
    ("image_height", pa.int32()),
    ("box", pa.list_(pa.int32())),         # (left, top, right, bottom) where the map lies on the image: the part
                                           # the model saw, or past it where a CNN's last cells overhang; null: all
    ("params", pa.string()),               # the method's parameters as JSON
    ("deletion_auc", pa.float64()),        # faithfulness (--faithfulness), else null
    ("random_deletion_auc", pa.float64()),
    ("insertion_auc", pa.float64()),
    ("random_insertion_auc", pa.float64()),
    ("road_morf", pa.float64()),           # ROAD (Rong et al. 2022), mean quantity, most relevant removed first
    ("road_lerf", pa.float64()),           # ... least relevant removed first (--faithfulness), else null
    ("sanity_spearman", pa.list_(pa.float64())),   # --sanity: Spearman |map| per randomisation step, else null
    ("seconds", pa.float64()),             # this image's share of its batch's compute
    ("error", pa.string()),                # why the file was not explained; null for a result
])


def to_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with any subset of the schema's fields) as a table of exactly :data:`SCHEMA`."""
    rows = list(rows)
    cols = {}
    for f in SCHEMA:
        values = [r.get(f.name) for r in rows]
        if f.name == "map":
            values = [None if v is None else np.asarray(v, dtype=np.float32) for v in values]
        cols[f.name] = pa.array(values, type=f.type)
    return pa.table(cols, schema=SCHEMA)


def map_of(row: dict[str, Any]) -> np.ndarray:
    """A row's map as a float32 array of its shape."""
    return np.asarray(row["map"], dtype=np.float32).reshape([int(x) for x in row["map_shape"]])


def results_dir(out: str | os.PathLike) -> Path:
    return Path(out) / RESULTS


def write_part(out: str | os.PathLike, rows: list[dict[str, Any]]) -> Optional[Path]:
    """Write rows as one new part file, whole or not at all (temp file, then rename)."""
    if not rows:
        return None
    folder = results_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"part-{uuid.uuid4().hex}.parquet"
    tmp = folder / f".{final.name}.tmp"
    pq.write_table(to_table(rows), tmp)
    os.replace(tmp, final)
    return final


def part_files(out: str | os.PathLike) -> list[Path]:
    folder = results_dir(out)
    return sorted(p for p in folder.glob("*.parquet") if p.is_file()) if folder.is_dir() else []


def read_results(out: str | os.PathLike, columns: Optional[list[str]] = None, *, set_aside: bool = False
                 ) -> pa.Table:
    """Every readable part file of a results folder as one table. An unreadable one is skipped with a
    warning; ``set_aside`` (a run resuming) also renames it ``*.broken``, so its images are done again."""
    tables = []
    for p in part_files(out):
        try:
            tables.append(pq.read_table(p, columns=columns, schema=SCHEMA if columns is None else None))
        except (pa.ArrowInvalid, OSError) as e:
            what = "skipped"
            if set_aside:
                broken = p.with_name(p.name + ".broken")
                os.replace(p, broken)
                what = f"renamed to {broken.name}, its images will be done again"
            print(f"attnviz: {p.name} could not be read ({type(e).__name__}); {what}.", file=sys.stderr)
    if not tables:
        schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(tables, promote_options="permissive")


def done_paths(out: str | os.PathLike) -> set[str]:
    """Paths with a row already (a result or a reported error): skipped when a run resumes."""
    return set(read_results(out, ["path"], set_aside=True).column("path").to_pylist())


def start_run(out: str | os.PathLike, key: dict[str, Any], source: str,
              identity: Optional[dict[str, Any]] = None) -> None:
    """Write the manifest, or check that an existing one describes the same run (resumption).

    ``identity``: which weights (:func:`.identity.model_identity`); a run that wrote rows is resumed
    only by the same job, source, weights and attnviz version, and rows with no manifest by none.
    """
    from .. import __version__
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / MANIFEST
    for tmp in results_dir(folder).glob(".*.tmp") if results_dir(folder).is_dir() else ():
        tmp.unlink(missing_ok=True)                   # a part a killed run was writing: never renamed in
    if part_files(folder):                            # a run that wrote nothing yet binds nothing
        why = _other_run(folder, key, source, identity, __version__)
        if why:
            raise UsageError(f"'{folder}' {why}; choose another --out-dir or remove that folder.")
        return
    text = json.dumps({"job": key, "source": source, "model": identity, "attnviz": __version__}, indent=1) + "\n"
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(text)
    os.replace(tmp, manifest)                         # whole or not at all


def _other_run(folder: Path, key: dict[str, Any], source: str, identity: Optional[dict[str, Any]],
               version: str) -> Optional[str]:
    """Why the results in ``folder`` are not this run's (a phrase), or None when they are."""
    try:
        old = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return f"holds results but no {MANIFEST}, so the run that made them is unknown"
    except ValueError:
        return f"holds results whose {MANIFEST} cannot be read, so the run that made them is unknown"
    job = old.get("job") or {}
    if job != key or old.get("source") != source:
        diff = sorted(k for k in set(key) | set(job) if key.get(k) != job.get(k))
        return f"holds results of another run (different {', '.join(diff) or 'source'})"
    was = old.get("model") or {}
    if identity is not None:
        if was.get("revision") != identity.get("revision"):
            return (f"holds results of another hub revision of the model ({was.get('revision') or 'none recorded'} "
                    f"there, {identity.get('revision') or 'none'} now)")
        if was.get("weights") != identity.get("weights"):
            return (f"holds results of other weights under the same model name (sha256 "
                    f"{str(was.get('weights') or 'not recorded')[:12]} there, {identity['weights'][:12]} now)")
    if old.get("attnviz") != version:
        return (f"holds results of attnviz {old.get('attnviz') or 'of an unknown version'}, and this is "
                f"attnviz {version}, whose maps may differ")
    return None


@contextlib.contextmanager
def run_lock(out: str | os.PathLike):
    """Hold the output folder for one run (an exclusive ``flock`` on ``.attnviz.lock``): a second run on
    it at once is refused in one sentence (:class:`~attnviz.errors.OutDirBusy`). The lock belongs to the
    open file, so a killed run leaves nothing stuck."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)     # not inherited by child processes
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            who = f" (process {holder})" if holder.isdigit() else ""
            raise OutDirBusy(f"'{folder}' is being written by another attnviz batch run{who}; wait for it to "
                             f"end or choose another --out-dir.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)                                  # closing lets go of the lock


def read_manifest(out: str | os.PathLike) -> dict[str, Any]:
    p = Path(out) / MANIFEST
    return json.loads(p.read_text()) if p.is_file() else {}
