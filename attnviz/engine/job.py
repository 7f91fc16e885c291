"""What a batch run computes: one frozen description shared by every engine and worker.

The in-process engine and each Ray worker build their :class:`~attnviz.engine.worker.Worker`
from the same :class:`Job`, so the same image gives the same rows whatever the engine.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from ..precision import from_env, name as precision_name


@dataclass(frozen=True)
class Job:
    """One batch run: which model, which method with which parameters, for which targets.

    ``model``: what :func:`attnviz.load_model` is given (a catalog name, hub id or folder).
    ``target``: one target for every image (index or label), or None for the top one;
    ``top_k``: explain each image's k highest-scoring targets instead (class-specific methods).
    ``params``: method parameters as the user typed them (strings are parsed by the registry).
    ``method``: one method, or several joined by commas ("rollout,relevance"): each image is captured once
    and explained by each in turn, one row per method (and target); the list is part of the run's identity.
    ``precision``: what the model's passes compute in (``attnviz.precision``): "float32" or "bfloat16"
    (default: ``ATTNVIZ_PRECISION``, else float32); part of the run's identity when not float32.
    """

    model: str
    method: str = "rollout"
    params: dict[str, Any] = field(default_factory=dict)
    target: Optional[str] = None
    top_k: int = 1
    texts: tuple[str, ...] = ()
    size: Optional[tuple[int, int]] = None
    faithfulness: bool = False
    sanity: bool = False
    batch_size: int = 8
    precision: str = field(default_factory=lambda: precision_name(from_env()))   # ATTNVIZ_PRECISION's

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods of ``method``, in order."""
        return tuple(m.strip() for m in self.method.split(",") if m.strip())

    def key(self) -> dict[str, Any]:
        """What must match for a run to resume another's results (not the batch size)."""
        d = asdict(self)
        d.pop("batch_size")
        if d["precision"] == "float32":
            d.pop("precision")          # runs from before precision was a choice resume as they were
        d["texts"] = list(self.texts)
        d["size"] = list(self.size) if self.size else None
        return json.loads(json.dumps(d, sort_keys=True, default=str))
