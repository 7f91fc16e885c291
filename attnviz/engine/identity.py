"""Which weights a batch run explains: a digest of the model's safetensors files, and its hub revision.

A run is resumed only by the same weights: a ``save_pretrained`` folder retrained in place, or a
hub repository that moved on, keeps its name but not its digest. The digest is SHA-256 over
each ``*.safetensors`` file's whole bytes (its JSON header, then every tensor), in file-name
order. Reading a ViT-B/16 file (346 MB) costs about a quarter of a second here; the digest is
kept in a small cache keyed by the file's path, size, modification time (ns) and inode, so a
resumed run on unchanged files reads nothing. A model with no files on disk (built in memory)
is identified by the same digest over its state dict.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

CHUNK = 1 << 22                      # 4 MiB reads


def cache_file() -> Path:
    root = os.environ.get("ATTNVIZ_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                           os.path.expanduser("~/.cache"), "attnviz")
    return Path(root) / "weight-digests.json"


def _stamp(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of one file's bytes, from the cache when its path, size, mtime and inode are unchanged."""
    p = Path(path).resolve()
    stamp = _stamp(p)
    cache = _read_cache()
    hit = cache.get(str(p))
    if hit and hit.get("stamp") == stamp:
        return hit["sha256"]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    digest = h.hexdigest()
    if _stamp(p) == stamp:                     # not rewritten while we read it
        cache = {k: v for k, v in cache.items() if os.path.exists(k)}     # forget files that are gone
        cache[str(p)] = {"stamp": stamp, "sha256": digest}
        _write_cache(cache)
    return digest


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict[str, Any]) -> None:
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, path)                  # whole or not at all; a lost entry only costs a re-read
    except OSError:
        pass                                   # a read-only home: digests are recomputed each run


def folder_digest(folder: str | os.PathLike) -> Optional[str]:
    """One SHA-256 over a folder's safetensors files (name and digest of each, sorted), or None if none."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{file_digest(f)}\n".encode())
    return h.hexdigest()


def state_dict_digest(model) -> str:
    """SHA-256 over a model's tensors (name, dtype, shape, bytes), for a model with no files."""
    import torch
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())     # the raw bytes, any dtype
    return h.hexdigest()


def _hub_snapshot(repo: str) -> Optional[Path]:
    """The HF cache folder holding a hub model's files (its name is the revision's commit), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
        got = try_to_load_from_cache(repo, "config.json")
    except Exception:                          # not a repo id, no cache: nothing to name
        return None
    return Path(got).parent if isinstance(got, str) else None


def model_identity(adapter) -> dict[str, Any]:
    """``{"weights": sha256}`` and, for a hub model, ``{"revision": commit}``: what run.json records."""
    source = str(getattr(adapter, "source", "") or "")
    folder = Path(source).expanduser() if source and Path(source).expanduser().is_dir() else None
    out: dict[str, Any] = {}
    if folder is None and source:
        snap = _hub_snapshot(source)
        if snap is not None:
            folder, out["revision"] = snap, snap.name
    digest = folder_digest(folder) if folder is not None else None
    out["weights"] = digest or state_dict_digest(adapter.model)
    return out
