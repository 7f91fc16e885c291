"""Load a model by catalog name, hub id or local folder, safely.

Safetensors only (``use_safetensors=True``), no remote code
(``trust_remote_code=False``), eager attention set once at load (SDPA
returns no attention weights in transformers 5), ``eval()``, weights frozen.
Every failure becomes ``ModelUnavailable`` with one sentence.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import adapters  # noqa: F401  (registers the families)
from .adapters.base import ModelAdapter, adapter_for_config
from .catalog import Resolved, offline, resolve
from .errors import ModelUnavailable


def _explain_failure(res: Resolved, exc: Exception) -> str:
    text = str(exc)
    low = text.lower()
    if "safetensors" in low or "model.safetensors" in low:
        return f"Model '{res.name}' has no safetensors weights, and attnviz does not load pickle checkpoints."
    if res.local:
        return f"Model folder '{res.source}' could not be loaded ({type(exc).__name__})."
    if offline() or "offline" in low or "couldn't connect" in low or "cannot find the requested files" in low \
            or "connection" in low or "local_files_only" in low:
        return f"Model '{res.name}' is not available: it is not in the local cache and the hub cannot be reached."
    if "not a valid model identifier" in low or "repository not found" in low or "404" in low:
        return f"Model '{res.name}' was not found on the hub."
    return f"Model '{res.name}' could not be loaded ({type(exc).__name__})."


def load_model(spec: Optional[str] = None, *, device: Optional[torch.device] = None) -> ModelAdapter:
    """An adapter for a catalog name, hub id or ``save_pretrained`` folder (None: the default)."""
    res = resolve(spec)
    import transformers
    try:
        config = transformers.AutoConfig.from_pretrained(res.source, trust_remote_code=False,
                                                         local_files_only=res.local or offline())
    except Exception as exc:   # OSError, HTTP errors, JSON errors: all mean "not loadable"
        raise ModelUnavailable(_explain_failure(res, exc)) from exc
    cls = adapter_for_config(config)
    try:
        adapter = cls.load(res.source, config, name=res.name, local_only=res.local or offline())
    except ModelUnavailable:
        raise
    except Exception as exc:
        raise ModelUnavailable(_explain_failure(res, exc)) from exc
    if device is not None:
        adapter.model.to(device)
        adapter.device = device
    adapter.resolved = res
    return adapter
