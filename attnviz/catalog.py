"""The model catalog (models/catalog.toml) and resolution of what a user typed.

A user may name a catalog entry, a Hugging Face hub id ("owner/name"), or a
local folder written by ``save_pretrained``.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

from .errors import ModelUnavailable

ROOT = Path(__file__).resolve().parent.parent
if not (ROOT / "models" / "catalog.toml").is_file():   # installed from a wheel: models/ ships as attnviz/models
    ROOT = Path(__file__).resolve().parent
CATALOG_PATH = ROOT / "models" / "catalog.toml"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95})?$")
REQUIRED_FILES = ("config.json", "model.safetensors")


@dataclass(frozen=True)
class Entry:
    name: str
    family: str
    task: str
    notes: str = ""
    hub: Optional[str] = None
    path: Optional[str] = None

    @property
    def source(self) -> str:
        """What ``from_pretrained`` is given: the repo folder for demo models, else the hub id."""
        return str(ROOT / self.path) if self.path else str(self.hub)


@dataclass(frozen=True)
class Catalog:
    entries: tuple[Entry, ...]
    default: str
    offline_default: str

    def get(self, name: str) -> Optional[Entry]:
        return next((e for e in self.entries if name in (e.name, e.hub)), None)


@lru_cache(maxsize=4)
def load_catalog(path: Path = CATALOG_PATH) -> Catalog:
    data = tomllib.loads(Path(path).read_text())
    entries = tuple(Entry(**m) for m in data.get("model", []))
    return Catalog(entries, data["default"], data["offline_default"])


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def is_cached(hub_id: str) -> bool:
    """True when config and safetensors weights of ``hub_id`` are in the local HF cache."""
    from huggingface_hub import try_to_load_from_cache
    return all(isinstance(try_to_load_from_cache(hub_id, f), str) for f in REQUIRED_FILES)


def is_available_offline(entry: Entry) -> bool:
    if entry.path:
        return all((ROOT / entry.path / f).is_file() for f in REQUIRED_FILES)
    return is_cached(entry.hub)


def is_reachable(hub_id: str, timeout: float = 3.0) -> bool:
    """Whether the hub answers for ``hub_id`` within ``timeout`` seconds (never when offline)."""
    if offline():
        return False
    try:
        from huggingface_hub import HfApi
        HfApi().model_info(hub_id, timeout=timeout)
        return True
    except Exception:   # no network, DNS failure, 404, rate limit: all mean "not reachable now"
        return False


@dataclass(frozen=True)
class Resolved:
    source: str            # a hub id or a folder path
    name: str              # what to show the user
    entry: Optional[Entry]
    local: bool            # a folder on disk (no network involved)
    reason: str = ""       # why this model was chosen, when it was chosen for the user


def resolve(spec: Optional[str]) -> Resolved:
    """Turn what the user typed (or nothing) into something ``from_pretrained`` accepts."""
    cat = load_catalog()
    if not spec:
        return default_model(cat)
    entry = cat.get(spec)
    if entry is not None:
        return Resolved(entry.source, entry.name, entry, local=bool(entry.path))
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelUnavailable(f"The folder '{spec}' has no config.json, so it is not a saved model.")
        # a catalog model's own folder is that model, however it is named (one name in results and caches)
        shipped = next((e for e in cat.entries if e.path and Path(e.source).resolve() == p.resolve()), None)
        if shipped is not None:
            return Resolved(shipped.source, shipped.name, shipped, local=True)
        return Resolved(str(p.resolve()), p.name, None, local=True)
    if not HUB_ID.match(spec) or ".." in spec:
        raise ModelUnavailable(f"'{spec}' is neither a catalog name, a model folder, nor a valid hub id (owner/name).")
    return Resolved(spec, spec, None, local=False)


def default_model(cat: Optional[Catalog] = None) -> Resolved:
    """The catalog default when cached or reachable, else the offline demo model."""
    cat = cat or load_catalog()
    real, demo = cat.get(cat.default), cat.get(cat.offline_default)
    if is_cached(real.hub):
        return Resolved(real.source, real.name, real, local=False, reason=f"{real.hub} (found in the local cache)")
    if is_reachable(real.hub):
        return Resolved(real.source, real.name, real, local=False, reason=f"{real.hub} (downloaded from the hub)")
    why = "offline mode is on" if offline() else "the hub is not reachable"
    return Resolved(demo.source, demo.name, demo, local=True,
                    reason=f"the offline demo model {demo.name}, because {real.hub} is not cached and {why}")
