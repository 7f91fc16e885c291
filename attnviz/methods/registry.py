"""The method registry: one uniform call for every explanation method.

A method is a function ``fn(adapter, capture, target, **params)`` returning a
raw map (``np.ndarray``) or ``(map, meta)``; ``explain`` wraps the result in
an ``Explanation``. A new method is one file that decorates its function with
``@register(...)`` plus one import line in ``methods/__init__.py``.
"""
from __future__ import annotations

import inspect
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ..errors import UsageError
from ..types import Capture, Explanation, Target


@dataclass(frozen=True)
class Param:
    """One tunable parameter: its default fixes its type; choices or bounds are checked."""

    name: str
    default: Any
    help: str
    choices: Optional[tuple] = None
    min: Optional[float] = None
    max: Optional[float] = None

    def parse(self, value: Any) -> Any:
        """Coerce a CLI/URL string (or a value) to this parameter's type and check it."""
        kind = type(self.default)
        try:
            if isinstance(value, str) and kind is not str:
                v = {"true": True, "false": False}[value.lower()] if kind is bool else kind(float(value) if kind is int else value)
            else:
                v = kind(value) if not isinstance(value, kind) else value
        except (ValueError, KeyError, TypeError):
            what = {"int": "a whole number", "float": "a number", "bool": "true or false"}.get(kind.__name__, "text")
            raise UsageError(f"Parameter '{self.name}' expects {what}, got '{value}'.") from None
        if kind is int and isinstance(value, str) and float(value) != int(float(value)):
            raise UsageError(f"Parameter '{self.name}' expects a whole number, got '{value}'.")
        if self.choices is not None and v not in self.choices:
            raise UsageError(f"Parameter '{self.name}' must be one of {', '.join(map(str, self.choices))}.")
        if self.min is not None and v < self.min or self.max is not None and v > self.max:
            raise UsageError(f"Parameter '{self.name}' must be between {self.min} and {self.max}.")
        return v


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: Callable
    params: tuple[Param, ...]
    class_specific: bool
    over: str            # "patches" or "pixels"
    signed: bool
    description: str
    kind: str            # "attention", "gradient" or "perturbation"
    slow: bool = False   # long enough to want a progress bar
    families: tuple[str, ...] = field(default=())  # empty: every family

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}


METHODS: dict[str, MethodSpec] = {}
_SEEDED = threading.Lock()


def register(name: str, *, description: str, params: tuple[Param, ...] = (), class_specific: bool,
             over: str, signed: bool = False, kind: str, slow: bool = False, families: tuple[str, ...] = ()):
    def deco(fn):
        METHODS[name] = MethodSpec(name, fn, params, class_specific, over, signed, description, kind, slow, families)
        return fn
    return deco


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise UsageError(f"Unknown method '{name}'; choose one of: {', '.join(METHODS)}.")
    return METHODS[name]


def list_methods(family: Optional[str] = None) -> list[MethodSpec]:
    return [m for m in METHODS.values() if not family or not m.families or family in m.families]


def resolve_params(spec: MethodSpec, params: dict[str, Any], family_defaults: Optional[dict[str, Any]] = None
                   ) -> dict[str, Any]:
    """Defaults, then the model's own (CLIP's start layer; a checkpoint's declared ones), then the user's values."""
    known = {p.name: p for p in spec.params}
    unknown = set(params) - set(known)
    if unknown:
        names = ", ".join(known) or "none"
        raise UsageError(f"Method '{spec.name}' has no parameter {', '.join(sorted(unknown))} (it takes: {names}).")
    out = spec.defaults()
    # the family's and the checkpoint's own defaults pass the same checks as a user's value
    out.update({k: known[k].parse(v) for k, v in (family_defaults or {}).items() if k in known and k not in params})
    out.update({k: known[k].parse(v) for k, v in params.items()})
    return out


def explain(adapter, capture: Capture, method: str, target: Any = None, *,
            progress: Optional[Callable[[int, int], None]] = None, **params) -> Explanation:
    """Run one registered method on a capture and wrap its map in an Explanation."""
    spec = get_method(method)
    if spec.families and adapter.family not in spec.families:
        raise UsageError(f"Method '{method}' does not apply to {adapter.family} models.")
    tgt: Target = adapter.resolve_target(capture, target)
    values = resolve_params(spec, params, adapter.method_defaults(method))
    kwargs = dict(values)
    if progress is not None and "progress" in inspect.signature(spec.fn).parameters:
        kwargs["progress"] = progress
    t0 = time.perf_counter()
    if "seed" in values:
        # Seeded methods (LIME, KernelSHAP, SmoothGrad, GradientSHAP) reseed torch's process-wide
        # generator and draw from it inside Captum; in threads they take turns, or one run's
        # draws would land in another's and the same seed would give different maps.
        with _SEEDED:
            out = spec.fn(adapter, capture, tgt, **kwargs)
    else:
        out = spec.fn(adapter, capture, tgt, **kwargs)
    elapsed = time.perf_counter() - t0
    m, meta = out if isinstance(out, tuple) else (out, {})
    m = np.asarray(m, dtype=np.float32)
    if not np.all(np.isfinite(m)):
        raise RuntimeError(f"Method '{method}' produced a non-finite map.")
    meta = {"seconds": elapsed, **meta}
    return Explanation(map=m, over=spec.over, signed=spec.signed, method=method,
                       target=tgt if spec.class_specific else None, params=values, meta=meta)
