"""The public Python API: load a model, capture an image once, explain it many ways."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from PIL import Image

from .loading import load_model  # noqa: F401  (re-exported)
from .methods import list_methods  # noqa: F401  (re-exported)
from .methods.registry import explain as _explain_capture
from .types import Capture, Explanation


def capture(adapter, image: Image.Image, *, texts: Optional[Sequence[str]] = None,
            size: Optional[tuple[int, int]] = None, grads: bool = True) -> Capture:
    """One forward of ``image`` (RGB) through the adapter's model; feeds every attention view."""
    return adapter.capture(adapter.prepare(image, texts=texts, size=size), grads=grads)


def explain(adapter, image_or_capture: Image.Image | Capture, method: str = "rollout", target: Any = None, *,
            progress: Optional[Callable[[int, int], None]] = None, **params) -> Explanation:
    """Explain an image (or an existing capture) with a registered method; ``target``: index, label or None (top)."""
    cap = image_or_capture if isinstance(image_or_capture, Capture) else capture(adapter, image_or_capture)
    return _explain_capture(adapter, cap, method, target, progress=progress, **params)
