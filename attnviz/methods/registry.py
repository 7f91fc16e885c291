"""The method registry: one uniform call for every explanation method.

A method is a function ``fn(adapter, capture, target, **params)`` returning a
raw map (``np.ndarray``) or ``(map, meta)``; ``explain`` wraps the result in
an ``Explanation`` (a ``meta["grid"]`` TokenLayout becomes its ``grid``: a patch
map over another grid than the capture's layout, e.g. a CNN stage's). A new method is one file that decorates its function with
``@register(...)`` plus one import line in ``methods/__init__.py``.

A method says what it needs from a capture (``needs``, keys of ``NEEDS``):
attention weights, a CNN's stage maps or gates, or only pixels to perturb and
differentiate. A model says what it provides (``ModelAdapter.provides``), and
``explain`` refuses, in one sentence, a method whose needs a model does not
meet. (``families`` remains for the few methods that read one family's own
outputs: a text tower's prompts, a decoder's caption.)
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


#: What a method may need from a capture, as the refusal names it.
NEEDS = {
    "pixels": "a pixel input",
    "attentions": "attention weights",
    "stages": "convolutional feature maps",
    "channel_gates": "channel attention gates (squeeze-and-excitation or ECA blocks)",
    "spatial_gates": "spatial attention gates (CBAM blocks)",
}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: Callable
    params: tuple[Param, ...]
    class_specific: bool
    over: str            # "patches" or "pixels"
    signed: bool
    description: str
    kind: str            # "attention", "gradient", "perturbation", "gate" (read off a CNN's gates) or "feature" (a layer's activations)
    slow: bool = False   # long enough to want a progress bar
    families: tuple[str, ...] = field(default=())  # empty: every family
    needs: tuple[str, ...] = ("pixels",)            # keys of NEEDS

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def applies_to(self, provides: frozenset, family: Optional[str] = None) -> bool:
        return set(self.needs) <= provides and (not self.families or family is None or family in self.families)


METHODS: dict[str, MethodSpec] = {}
_SEEDED = threading.Lock()


def register(name: str, *, description: str, params: tuple[Param, ...] = (), class_specific: bool,
             over: str, signed: bool = False, kind: str, slow: bool = False, families: tuple[str, ...] = (),
             needs: Optional[tuple[str, ...]] = None):
    """``needs`` (keys of ``NEEDS``) defaults to attention weights for ``kind="attention"``, else pixels only."""
    needs = needs if needs is not None else (("attentions",) if kind == "attention" else ("pixels",))
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"Method '{name}' needs unknown capture parts {sorted(unknown)}; known: {', '.join(NEEDS)}.")

    def deco(fn):
        METHODS[name] = MethodSpec(name, fn, params, class_specific, over, signed, description, kind, slow, families,
                                   tuple(needs))
        return fn
    return deco


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise UsageError(f"Unknown method '{name}'; choose one of: {', '.join(METHODS)}.")
    return METHODS[name]


def list_methods(model: Any = None) -> list[MethodSpec]:
    """Every method, or those that apply to ``model``: an adapter (exactly: what it provides), or a family
    name (what that family's models may provide: a ResNet and a RegNet-Y are both "cnn", only one has gates)."""
    if not model:
        return list(METHODS.values())
    if isinstance(model, str):
        from ..adapters import ADAPTERS
        cls = ADAPTERS.get(model)
        provides = (cls.PROVIDES | cls.MAY_PROVIDE) if cls is not None else frozenset(NEEDS)
        return [m for m in METHODS.values() if m.applies_to(provides, model)]
    return [m for m in METHODS.values() if m.applies_to(model.provides, model.family)]


def _refusal(spec: MethodSpec, adapter) -> Optional[str]:
    """One sentence when ``adapter``'s model lacks what ``spec`` needs, naming the methods that do apply."""
    missing = [n for n in spec.needs if n not in adapter.provides]
    if not missing:
        return None
    fits = [m.name for m in list_methods(adapter)]
    shown = ", ".join(fits[:8]) + (", …" if len(fits) > 8 else "")
    return (f"Method '{spec.name}' needs {NEEDS[missing[0]]}, which {adapter.name} does not have "
            f"(methods for this model: {shown}).")


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
    refusal = _refusal(spec, adapter)
    if refusal:
        raise UsageError(refusal)
    tgt: Target = adapter.resolve_target(capture, target)
    values = resolve_params(spec, params, adapter.method_defaults(method))
    kwargs = dict(values)
    if progress is not None and "progress" in inspect.signature(spec.fn).parameters:
        kwargs["progress"] = progress
    t0 = time.perf_counter()
    if "seed" in values:
        # Seeded methods (LIME, KernelSHAP, SmoothGrad, GradientSHAP) reseed torch's and numpy's process-wide
        # generators and draw from them inside Captum; in threads they take turns, or one run's
        # draws would land in another's and the same seed would give different maps.
        with _SEEDED:
            out = spec.fn(adapter, capture, tgt, **kwargs)
    else:
        out = spec.fn(adapter, capture, tgt, **kwargs)
    elapsed = time.perf_counter() - t0
    m, meta = out if isinstance(out, tuple) else (out, {})
    meta = {"seconds": elapsed, **meta}
    grid = meta.pop("grid", None)        # a patch map over another grid than the capture's layout (a CNN stage)
    return explanation(spec, m, tgt, values, meta, grid)


def explanation(spec: MethodSpec, m, target: Target, params: dict[str, Any], meta: dict[str, Any],
                grid=None) -> Explanation:
    """Method ``spec``'s raw map ``m`` for ``target`` as an Explanation (float32, checked finite; a
    class-agnostic method's has no target). ``explain`` and the batch engine's batched methods end here."""
    m = np.asarray(m, dtype=np.float32)
    if not np.all(np.isfinite(m)):
        raise RuntimeError(f"Method '{spec.name}' produced a non-finite map.")
    return Explanation(map=m, over=spec.over, signed=spec.signed, method=spec.name,
                       target=target if spec.class_specific else None, params=params, meta=meta, grid=grid)
