"""A worker turns image files into result rows: decode, prepare, group by input size, explain in batches.

The in-process engine runs one :class:`Worker`; the Ray engine runs one per actor (the model is
loaded once per worker). Rows follow :data:`attnviz.engine.results.SCHEMA`: one per image and
target, or one with ``error`` set for a file that could not be read.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .. import precision
from ..errors import UsageError
from ..images import ImageRejected, load_image
from ..methods.registry import explain, explanation, get_method, resolve_params
from ..types import Capture, Explanation, Target
from .attention import BATCHED_ATTENTION_METHODS, batched_attention_maps
from .capture import batchable, capture_batch, grads_for_batch
from .faithfulness import measure
from .job import Job
from .pixels import BATCHED_PIXEL_METHODS, pixel_gradient_maps


@dataclass(frozen=True)
class Item:
    """One file to explain: where it came from, its class when the folder is labelled, its bytes."""

    path: str
    label: Optional[str]
    data: bytes


@dataclass
class ImageResult:
    """What one image left behind: its rows, and for the writers its image, capture box and maps."""

    path: str
    rows: list[dict[str, Any]]
    image: Optional[Image.Image] = None
    exps: list[Explanation] = field(default_factory=list)
    box: Optional[tuple[int, int, int, int]] = None
    error: Optional[str] = None


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread for a while: an attention method on a ready capture is many small ops
    (T×T at most), which a second thread does not speed up, and whose every parallel region waits on a
    barrier: on a busy machine that wait cost 15× the work (rollout of 8 ViT-B/16 captures: 2.4 s on 2
    threads, 0.16 s on 1, while other jobs shared the cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def needs_attention_grads(spec) -> bool:
    """Class-specific attention methods read d score / d attention (Chefer et al.'s relevance and kin)."""
    return spec.kind == "attention" and spec.class_specific


class Worker:
    """Holds one loaded model and explains lists of :class:`Item` with it."""

    def __init__(self, job: Job, adapter=None):
        from .. import load_model
        self.job = job
        self.adapter = adapter if adapter is not None else load_model(job.model)
        if self.adapter.REDUCED_PRECISION:
            self.adapter.precision = precision.parse(job.precision)
        self.specs = [get_method(m) for m in job.methods]
        if not self.specs or len(set(job.methods)) != len(job.methods):
            raise UsageError(f"--method needs one method or several different ones, got '{job.method}'.")
        self.spec = self.specs[0]
        # Bad parameters fail here, once, in one sentence, before any image is read.
        self.user_params = {s.name: self._user_params(s) for s in self.specs}
        self.resolved = {s.name: resolve_params(s, self.user_params[s.name], self.adapter.method_defaults(s.name))
                         for s in self.specs}
        # what run.json records: one method's parameters, or each method's
        self.params = self.resolved[self.spec.name] if len(self.specs) == 1 else self.resolved

    def _user_params(self, spec) -> dict:
        """The user's parameters ``spec`` takes: with several methods each goes to the methods that have it
        (one that none has is refused), with one method all of them (the registry names the unknown)."""
        given = dict(self.job.params)
        if len(self.specs) == 1:
            return given
        unknown = set(given) - {p.name for s in self.specs for p in s.params}
        if unknown:
            raise UsageError(f"No method of {', '.join(self.job.methods)} has the parameter "
                             f"{', '.join(sorted(unknown))}.")
        return {k: v for k, v in given.items() if k in {p.name for p in spec.params}}

    # --- the whole pipeline for a list of files -------------------------
    def run(self, items: Sequence[Item]) -> list[ImageResult]:
        """Results in the order of ``items``; an unreadable file gives one error row, the rest go on."""
        out: list[Optional[ImageResult]] = [None] * len(items)
        groups: dict[tuple[int, ...], list[int]] = {}
        prepared: dict[int, tuple[Image.Image, dict]] = {}
        for i, item in enumerate(items):
            try:
                image = load_image(item.data)
            except ImageRejected as e:
                out[i] = self.error_result(item, str(e))
                continue
            inputs = self.adapter.prepare(image, texts=list(self.job.texts) or None, size=self.job.size)
            prepared[i] = (image, inputs)
            groups.setdefault(tuple(inputs["pixel_values"].shape), []).append(i)   # same input size, one forward
        for idxs in groups.values():
            for s in range(0, len(idxs), self.job.batch_size):
                chunk = idxs[s:s + self.job.batch_size]
                t0 = time.perf_counter()
                results = self.explain_images([items[i] for i in chunk], [prepared[i][0] for i in chunk],
                                              [prepared[i][1] for i in chunk])
                share = (time.perf_counter() - t0) / len(chunk)
                for i, r in zip(chunk, results):
                    for row in r.rows:
                        row["seconds"] = share
                    out[i] = r
        return out                                                # type: ignore[return-value]

    def error_result(self, item: Item, message: str) -> ImageResult:
        row = {"path": item.path, "label": item.label, "model": self.adapter.name, "method": self.job.method,
               "error": message}
        return ImageResult(item.path, [row], error=message)

    # --- one forward's worth of images ------------------------------------
    def explain_images(self, items: Sequence[Item], images: Sequence[Image.Image],
                       inputs: Sequence[dict]) -> list[ImageResult]:
        """Explain images of one input size: one batched capture, then each method in turn on it (one
        backward per target rank, shared by the methods that read attention gradients)."""
        adapter = self.adapter
        batched = batchable(adapter)
        grad_specs = [s for s in self.specs if needs_attention_grads(s)]
        # Per-image captures (other families) keep their graph as the CLI always did: their methods
        # may differentiate towers and tokens this module does not know about.
        caps = capture_batch(adapter, inputs, grads=bool(grad_specs) if batched else True)
        exps: list[list[Explanation]] = [[] for _ in caps]
        # the checks run after the maps may take more gradients through the captures' graph
        checks = self.job.faithfulness or self.job.sanity
        shared: dict[tuple, Optional[tuple]] = {}          # one backward per (images, targets), for every method
        for spec in self.specs:
            targets = [self.targets(c, spec) for c in caps]
            ranks = max(len(t) for t in targets)
            for k in range(ranks):
                idx = [i for i, t in enumerate(targets) if k < len(t)]
                ks = [targets[i][k] for i in idx]
                batch_grads = None
                if needs_attention_grads(spec):
                    key = tuple((i, t.index) for i, t in zip(idx, ks))
                    if key not in shared:
                        # the backward here, on every thread, not inside a method's one-thread stretch below
                        last = spec is grad_specs[-1] and k == ranks - 1 and not checks
                        shared[key] = grads_for_batch([caps[i] for i in idx], [t.index for t in ks], last=last)
                    batch_grads = shared[key]
                self.explain_rank(spec, caps, idx, ks, batch_grads, exps)
        results = []
        for item, image, cap, es in zip(items, images, caps, exps):
            rows = [self.row(item, image, cap, e) for e in es]
            results.append(ImageResult(item.path, rows, image=image, exps=es, box=cap.box))
            cap.release_graph()
        return results

    def explain_rank(self, spec, caps, idx: list[int], ks: list[Target], batch_grads, exps) -> None:
        """``spec``'s maps of the captures ``caps[i]``, ``i`` in ``idx``, for the targets ``ks``: batched
        where the method allows, else image by image; appended to ``exps[i]``."""
        adapter, params = self.adapter, self.resolved[spec.name]
        batched = batchable(adapter)
        t0 = time.perf_counter()
        maps = None
        if batched and spec.name in BATCHED_PIXEL_METHODS:
            maps = pixel_gradient_maps(adapter, spec.name, [caps[i] for i in idx], [t.index for t in ks])
        elif batched and spec.name in BATCHED_ATTENTION_METHODS:
            with one_thread():
                # None (then image by image below) for captures it does not batch
                maps = batched_attention_maps(adapter, spec.name, caps, idx, ks, params, batch_grads)
        if maps is not None:
            seconds = (time.perf_counter() - t0) / len(idx)
            for i, t, m in zip(idx, ks, maps):
                exps[i].append(explanation(spec, m, t, dict(params), {"seconds": seconds}))
            return
        with one_thread() if spec.kind == "attention" else contextlib.nullcontext():
            for i, t in zip(idx, ks):
                exps[i].append(explain(adapter, caps[i], spec.name, t, **self.user_params[spec.name]))

    def targets(self, cap: Capture, spec=None) -> list[Target]:
        """The targets explained for one image: the user's, else the top k (the top one for a
        class-agnostic method, whose map is the same whatever the class)."""
        if self.job.target is not None:
            return [self.adapter.resolve_target(cap, self.job.target)]
        top = self.adapter.resolve_target(cap, None)
        if not (spec or self.spec).class_specific or self.job.top_k <= 1 or top.kind not in ("class", "prompt"):
            return [top]
        ranked = sorted(cap.targets, key=lambda t: -t.score)
        return ranked[: self.job.top_k]

    def row(self, item: Item, image: Image.Image, cap: Capture, exp: Explanation) -> dict[str, Any]:
        adapter = self.adapter
        tgt = exp.target or adapter.resolve_target(cap, None)
        top = adapter.resolve_target(cap, None)
        probs = adapter.probabilities(cap)
        prob = (lambda t: float(probs[t]) if t < probs.shape[0] else None)
        row = {
            "path": item.path, "label": item.label, "model": adapter.name, "method": exp.method,
            "target_index": tgt.index, "target_label": tgt.label, "target_kind": tgt.kind,
            "class_specific": exp.target is not None,
            "score": float(cap.scores[tgt.index]), "probability": prob(tgt.index),
            "predicted_index": top.index, "predicted_label": top.label, "predicted_probability": prob(top.index),
            "map": np.asarray(exp.map, dtype=np.float32).ravel(), "map_shape": list(exp.map.shape),
            "over": exp.over, "signed": exp.signed,
            "image_width": image.width, "image_height": image.height,
            "box": None if (box := cap.map_box(exp.map.shape, image.size, exp.over)) is None else list(box),
            "params": json.dumps(exp.params, sort_keys=True, default=str),
            "error": None,
        }
        if self.job.faithfulness and exp.over in ("patches", "pixels"):
            row.update(measure(adapter, cap, exp, tgt.index))
        if self.job.sanity and exp.over in ("patches", "pixels"):
            from ..metrics import cascading_randomisation
            steps = [s.to_dict() for s in cascading_randomisation(adapter, cap, exp)]
            row["sanity_spearman"] = [s["spearman_abs"] for s in steps]
            row["_sanity"] = steps                     # the step names too, for results.jsonl (not in Parquet)
        return row
