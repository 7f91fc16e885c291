"""The app's compute layer: cached captures and maps over a shared model. No Streamlit here.

One ``Engine`` serves every session of the app process. A capture (one
forward, attention gradients on demand) is cached by (image digest, model);
explanation maps by (image digest, model, method, parameters, target).
Changing layer, head or query re-reads the cached capture; opacity, colormap
and normalisation never reach this module at all.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from importlib import metadata
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Optional

import numpy as np

from .. import headstats
from ..methods import attention as attention_methods
from ..methods.registry import explain as explain_capture
from ..methods.registry import get_method, resolve_params
from ..metrics import cascading_randomisation, deletion_insertion
from ..errors import UsageError
from ..serve.remote import is_remote
from ..types import Capture, Explanation
from .cache import ResultCache
from .jobs import Jobs

Progress = Callable[[int, int], None]
Turn = Callable[[], ContextManager[Any]]     # waits for this session's turn with the model (panels.model_turn)



def model_key(adapter) -> str:
    """Identifies one loaded model object (two loads of the same folder never share captures)."""
    return f"{getattr(adapter, 'source', '?')}#{id(adapter):x}"


@dataclass
class CaptureEntry:
    """A cached capture and how long it took."""

    capture: Capture
    seconds: float


class Engine:
    """Cached captures and maps for any number of sessions and threads."""

    def __init__(self, *, capture_entries: int = 6, result_entries: int = 256, ttl: float = 3600.0,
                 capture_bytes: Optional[int] = None):
        # captures: at most ``capture_entries``, and their tensors within ``capture_bytes`` (None: no bound)
        self.captures = ResultCache(capture_entries, ttl, max_bytes=capture_bytes,
                                    size=lambda e: e.capture.nbytes())
        self.results = ResultCache(result_entries, ttl)
        self.jobs = Jobs()          # slow maps and checks, running in threads of their own (keyed like results)

    def clear(self) -> None:
        self.captures.clear()
        self.results.clear()

    # --- captures -----------------------------------------------------
    def capture(self, adapter, digest: str, image, texts: Optional[tuple[str, ...]] = None,
                turn: Optional[Turn] = None, size: Optional[tuple[int, int]] = None) -> CaptureEntry:
        """One forward of ``image`` (and prompts or a typed caption) through ``adapter``, cached.

        A capture is keyed by the image digest, the model and the texts, so
        ``digest`` below stands for all three wherever a map is keyed. ``turn()``
        (a context manager) is entered around the work only when it has to be done. ``size``:
        the model input (height, width), the whole image without a crop (None: the processor's).
        """
        server = getattr(adapter, "server", None)
        remote = getattr(adapter, "remote", None)
        kw = {"size": size} if size is not None else {}

        def run() -> CaptureEntry:
            if remote is not None and not texts:
                # ATTNVIZ_SERVE: the forward runs on a Serve replica, which keeps the tensors (serve.remote)
                t0 = time.perf_counter()
                return CaptureEntry(remote.capture(adapter.prepare(image, **kw)), time.perf_counter() - t0)
            if server is not None and not texts:
                # A family that batches: this session's forward (and its first map's backward) waits in
                # the model's batching line and runs with other sessions' (serve.local); ``turn`` only
                # shows the wait there.
                with turn() if turn is not None else nullcontext():
                    t0 = time.perf_counter()
                    cap = server.capture(adapter.prepare(image, **kw))        # a chosen size batches with its own
                    return CaptureEntry(cap, time.perf_counter() - t0)
            # The turn is taken inside the cache's per-key lock, never around it: whoever computes a
            # key holds that key's lock first and the model's line second, so two sessions cannot
            # each hold what the other waits for.
            with turn() if turn is not None else nullcontext():
                t0 = time.perf_counter()
                inputs = adapter.prepare(image, texts=list(texts), **kw) if texts else adapter.prepare(image, **kw)
                cap = adapter.capture(inputs, grads=True)
                return CaptureEntry(cap, time.perf_counter() - t0)
        return self.captures.get_or_compute(self._capture_key(adapter, digest, texts, size), run)

    def _capture_key(self, adapter, digest: str, texts: Optional[tuple[str, ...]] = None,
                     size: Optional[tuple[int, int]] = None) -> tuple:
        return ("capture", digest, model_key(adapter), texts or (), size)

    def has_capture(self, adapter, digest: str, texts: Optional[tuple[str, ...]] = None,
                    size: Optional[tuple[int, int]] = None) -> bool:
        return self._capture_key(adapter, digest, texts, size) in self.captures

    # --- explanations -------------------------------------------------
    def explanation_key(self, adapter, entry: CaptureEntry, digest: str, method: str, target: Any,
                        params: dict[str, Any]) -> tuple:
        """The cache key of a map: parameters canonicalised (defaults filled, types parsed)."""
        spec = get_method(method)
        values = resolve_params(spec, params, adapter.method_defaults(method))   # as the method will run
        tgt = adapter.resolve_target(entry.capture, target).index if spec.class_specific else None
        return ("explain", digest, model_key(adapter), method, tuple(sorted(values.items())), tgt)

    def peek(self, adapter, entry: CaptureEntry, digest: str, method: str, target: Any,
             params: dict[str, Any]) -> Optional[Explanation]:
        """The cached map, or None; never computes."""
        return self.results.peek(self.explanation_key(adapter, entry, digest, method, target, params))

    def explain(self, adapter, entry: CaptureEntry, digest: str, method: str, target: Any,
                params: dict[str, Any], progress: Optional[Progress] = None,
                turn: Optional[Turn] = None) -> Explanation:
        """A map from the cache, or computed once (a slow method reports ``progress(done, total)``;
        ``turn()`` is entered around the computation, as in :meth:`capture`)."""
        key = self.explanation_key(adapter, entry, digest, method, target, params)

        remote = getattr(adapter, "remote", None)
        if remote is not None and is_remote(entry.capture):
            # the map is made where the capture's tensors are; the app keeps it like any other map
            def run_remote() -> Explanation:
                exp = remote.explain(entry.capture.inputs, method, target, params)
                came = getattr(entry.capture._grad_fn, "came", None)
                if exp.target is not None and came is not None and get_method(method).kind == "attention":
                    came(exp.target.index)      # that target's attention backward is done on the replica
                return exp
            return self.results.get_or_compute(key, run_remote)

        def run() -> Explanation:
            # The engine handles sharing: forwards take the model's lock one batch at a time,
            # a capture's backward passes take turns, seeded methods take turns for the RNG.
            with turn() if turn is not None else nullcontext():
                return explain_capture(adapter, entry.capture, method, target, progress=progress, **params)
        return self.results.get_or_compute(key, run)

    # --- faithfulness checks --------------------------------------------
    def check_key(self, check: str, adapter, entry: CaptureEntry, digest: str, method: str, target: Any,
                   params: dict[str, Any]) -> tuple:
        # the target always counts here: a class-agnostic map is still judged on the chosen target's score
        key = self.explanation_key(adapter, entry, digest, method, target, params)
        return (check, *key[1:-1], adapter.resolve_target(entry.capture, target).index)

    def peek_faithfulness(self, adapter, entry, digest, method, target, params) -> Optional[dict]:
        return self.results.peek(self.check_key("deletion", adapter, entry, digest, method, target, params))

    def faithfulness(self, adapter, entry: CaptureEntry, digest: str, method: str, target: Any,
                     params: dict[str, Any], *, exp: Explanation, progress: Optional[Progress] = None) -> dict:
        """Deletion and insertion curves of ``exp`` (RISE) with one random order each, cached."""
        key = self.check_key("deletion", adapter, entry, digest, method, target, params)
        tgt = key[-1]
        return self.results.get_or_compute(key, lambda: deletion_insertion(
            adapter, entry.capture, exp, target=tgt, progress=progress))

    def peek_randomisation(self, adapter, entry, digest, method, target, params) -> Optional[list]:
        return self.results.peek(self.check_key("randomise", adapter, entry, digest, method, target, params))

    def randomisation(self, adapter, entry: CaptureEntry, digest: str, method: str, target: Any,
                      params: dict[str, Any], *, exp: Explanation, progress: Optional[Progress] = None) -> list:
        """The cascading weight-randomisation check of ``exp`` (on a copy of the model), cached."""
        key = self.check_key("randomise", adapter, entry, digest, method, target, params)
        return self.results.get_or_compute(key, lambda: cascading_randomisation(
            adapter, entry.capture, exp, progress=progress))

    # --- heads page ---------------------------------------------------
    def attention_grid(self, adapter, entry: CaptureEntry, digest: str, query: str) -> np.ndarray:
        """Every layer's and head's attention from ``query``: [L, H, rows, cols] (cached)."""
        _local_only(entry)
        key = ("grid", digest, model_key(adapter), str(query).strip().lower())
        return self.results.get_or_compute(key, lambda: attention_methods.attention_grid(entry.capture, query))

    def head_stats(self, adapter, entry: CaptureEntry, digest: str) -> tuple[np.ndarray, np.ndarray]:
        """(mean attention distance in input pixels, entropy in nats), each [L, H] (cached)."""
        _local_only(entry)
        key = ("headstats", digest, model_key(adapter))
        return self.results.get_or_compute(key, lambda: (headstats.mean_attention_distance(entry.capture),
                                                         headstats.attention_entropy(entry.capture)))


def _local_only(entry: CaptureEntry) -> None:
    if is_remote(entry.capture):
        raise UsageError("This view reads every head's attention weights, which stay on the Ray Serve replicas "
                         "(ATTNVIZ_SERVE): use the Explore page, or run this app without ATTNVIZ_SERVE.")


# --- helpers shared by the pages ---------------------------------------

def top_k(adapter, capture: Capture, k: int = 5) -> list[dict[str, Any]]:
    """The k highest-scoring targets with display probabilities, best first."""
    probs = adapter.probabilities(capture).detach().float().cpu().numpy()
    order = np.argsort(-capture.scores.detach().float().cpu().numpy())[:k]
    out = []
    for i in order:
        t = capture.targets[int(i)]
        p = float(probs[int(i)]) if int(i) < probs.shape[0] else float("nan")
        out.append({"index": t.index, "label": t.label, "probability": p, "score": float(t.score)})
    return out


@functools.lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    # Read once per process: importlib.metadata parses every package's METADATA file (30-60 ms a call).
    from .. import __version__
    out = {"attnviz": __version__}
    for dist in ("torch", "transformers", "captum", "streamlit", "plotly", "numpy", "pillow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return tuple(out.items())


def library_versions() -> dict[str, str]:
    return dict(_versions())


def export_record(*, adapter, capture: Capture, exp: Explanation, settings: dict[str, Any],
                  timings: dict[str, float], image_name: str, digest: str, k: int = 5) -> dict[str, Any]:
    """The JSON export: what was explained, how, the scores, timings and library versions."""
    tgt = exp.target or adapter.resolve_target(capture, None)
    meta = {k2: (float(v) if isinstance(v, (int, float, np.floating)) else str(v))
            for k2, v in exp.meta.items()}
    return {
        "model": adapter.name,
        "model_source": getattr(adapter, "source", ""),
        "device": str(adapter.device),
        "image": {"name": image_name, "sha256": digest},
        "method": exp.method,
        "params": {k2: v for k2, v in exp.params.items()},
        "class_specific": exp.target is not None,
        "target": {"index": tgt.index, "label": tgt.label, "kind": tgt.kind,
                   "score": float(capture.scores[tgt.index])},
        "top_k": top_k(adapter, capture, k),
        "map": {"shape": list(exp.map.shape), "over": exp.over, "signed": exp.signed,
                "min": float(exp.map.min()), "max": float(exp.map.max())},
        "meta": meta,
        "settings": settings,
        "timings_s": {k2: round(float(v), 4) for k2, v in timings.items()},
        "versions": library_versions(),
    }
