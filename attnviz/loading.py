"""Load a model by catalog name, hub id or local folder, safely.

Safetensors only (``use_safetensors=True``), no remote code
(``trust_remote_code=False``), eager attention set once at load (SDPA
returns no attention weights in transformers 5), ``eval()``, weights frozen.
Every failure becomes ``ModelUnavailable`` with one sentence.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

import torch

from . import adapters  # noqa: F401  (registers the families)
from .adapters.base import ModelAdapter, adapter_for_config
from .catalog import Resolved, offline, resolve
from .errors import ModelUnavailable


# Files from which transformers can build a tokenizer (one is enough): the fast tokenizer's own file, or a
# slow tokenizer's vocabulary (byte-level BPE, WordPiece, SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "spiece.model", "tokenizer.model",
                   "sentencepiece.bpe.model")


def _missing_file(res: Resolved, cls: Optional[type[ModelAdapter]]) -> Optional[str]:
    """What a local folder lacks besides config and weights, as one sentence (None: nothing we can name)."""
    if not res.local:
        return None
    folder = Path(res.source)
    if not (folder / "preprocessor_config.json").is_file():
        return (f"Model folder '{res.source}' has no preprocessor_config.json (how images are resized and "
                f"normalised): save the image processor into it too (processor.save_pretrained(folder)) or copy "
                f"that file from the checkpoint the model came from.")
    reads_text = cls is not None and "tokenizer" in inspect.signature(cls.__init__).parameters
    if reads_text and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        return _no_tokenizer(res)
    return None


def _no_tokenizer(res: Resolved) -> str:
    where = f"Model folder '{res.source}'" if res.local else f"Model '{res.name}'"
    return (f"{where} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])} or spiece.model): save the "
            f"tokenizer with the model (tokenizer.save_pretrained(folder)) or copy those files from the "
            f"checkpoint it came from.")


def _check_tokenizer(res: Resolved, adapter: ModelAdapter) -> None:
    """Refuse a tokenizer that holds only its special tokens: transformers 5 builds one, silently, for a
    CLIP or BERT folder without tokenizer files, and every word of a prompt would then read as unknown."""
    tok = getattr(adapter, "tokenizer", None)
    if tok is not None and len(tok) <= len(set(tok.all_special_ids)):
        raise ModelUnavailable(_no_tokenizer(res))


def _catalog_lookalike(spec: str) -> str:
    """The catalog model a hub-id-shaped name that is no folder here ends with (``models/demo-vit-shapes``
    typed outside the repository root), or ""."""
    from .catalog import load_catalog
    entry = load_catalog().get(Path(spec).name)
    return entry.name if entry is not None and not Path(spec).exists() else ""


def _explain_failure(res: Resolved, exc: Exception, cls: Optional[type[ModelAdapter]] = None) -> str:
    text = str(exc)
    low = text.lower()
    if "safetensors" in low or "model.safetensors" in low:
        return f"Model '{res.name}' has no safetensors weights, and attnviz does not load pickle checkpoints."
    missing = _missing_file(res, cls)
    if missing:
        return missing
    if res.local:
        return f"Model folder '{res.source}' could not be loaded ({type(exc).__name__})."
    if offline() or "offline" in low or "couldn't connect" in low or "cannot find the requested files" in low \
            or "connection" in low or "local_files_only" in low:
        lookalike = _catalog_lookalike(res.name)
        if lookalike and lookalike != res.name:
            return (f"There is no model folder '{res.name}' here and the hub cannot be reached: use the catalog "
                    f"name '{lookalike}', which loads from any directory.")
        if lookalike:        # the catalog name itself, not downloaded yet: say what to run (issue 20)
            return (f"Model '{res.name}' is not downloaded yet and the hub cannot be reached from here: run "
                    f"`make models` (`python -m attnviz.download`: every catalog model) where the hub can be "
                    f"reached, or pick a model marked ✓ (offline).")
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
        raise ModelUnavailable(_explain_failure(res, exc, cls)) from exc
    _check_tokenizer(res, adapter)
    if device is not None:
        adapter.model.to(device)
        adapter.device = device
    adapter.resolved = res
    return adapter
