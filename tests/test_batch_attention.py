"""Rollout and relevance on a whole batch (engine/attention.py) against the per-image methods.

The reference is ``explain`` run on each image's own capture (methods/rollout.py, methods/relevance.py,
themselves tested against the T×T matrix product and the model's own gradients), on the captures of the
same batched forward, so that only the batched arithmetic is compared.
"""
import numpy as np
import pytest
import torch
from PIL import Image

import attnviz
import attnviz.engine.worker as worker_mod
from attnviz.adapters.classifier import ClassifierAdapter
from attnviz.adapters.swin import SwinAdapter
from attnviz.engine import Item, Job, Worker, capture_batch, grads_for_batch
from attnviz.engine.attention import batched_attention_maps
from attnviz.engine.capture import CaptureBatch
from attnviz.engine.results import map_of
from attnviz.methods.registry import get_method, resolve_params

from .test_batch import _images, _png

_adapters = {}


def tiny(kind):
    if kind not in _adapters:
        cls = SwinAdapter if kind.startswith("swin") else ClassifierAdapter
        _adapters[kind] = cls.tiny(kind)
    return _adapters[kind]


def _reference(adapter, caps, idx, targets, method, params):
    return [attnviz.explain(adapter, caps[i], method, t.index, **params).map for i, t in zip(idx, targets)]


ROLLOUT = [{}, {"head_fusion": "max", "discard_ratio": 0.3}, {"head_fusion": "min", "start_layer": 1},
           {"query": "cls"}, {"query": "1,2", "discard_ratio": 0.9, "start_layer": -1}]
RELEVANCE = [{}, {"start_layer": 1}, {"query": "cls"}, {"query": "2,3"}]
CASES = [("rollout", p) for p in ROLLOUT] + [("relevance", p) for p in RELEVANCE]
# distilled DeiT reads CLS + distillation, BEiT the patch mean, DINOv2 CLS + patch mean
KINDS = ("deit-teacher", "beit", "dinov2")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method,params", CASES, ids=[f"{m}-{p}" for m, p in CASES])
def test_batched_maps_equal_per_image_explain(kind, method, params):
    adapter = tiny(kind)
    images = _images(4, seed=2)
    caps = capture_batch(adapter, [adapter.prepare(im) for im in images], grads=method == "relevance")
    assert isinstance(caps, CaptureBatch)
    resolved = resolve_params(get_method(method), params, adapter.method_defaults(method))
    for idx in ([0, 1, 2, 3], [3, 1]):                          # the whole batch, and some of its rows
        targets = [caps[i].targets[(i + 1) % len(caps[i].targets)] for i in idx]   # not always the top class
        grads = grads_for_batch([caps[i] for i in idx], [t.index for t in targets]) if method == "relevance" else None
        got = batched_attention_maps(adapter, method, caps, idx, targets, resolved, grads)
        ref = _reference(adapter, caps, idx, targets, method, params)
        assert got is not None and len(got) == len(ref)
        for g, r in zip(got, ref):
            assert g.shape == r.shape == (caps[0].layout.rows, caps[0].layout.cols) and g.dtype == np.float32
            assert np.abs(r).max() > 0
            np.testing.assert_allclose(g, r, rtol=0, atol=1e-6 * float(np.abs(r).max()))
        if method == "relevance":
            for c in caps:
                c._grads.clear()                                 # the subset takes its own backward


@pytest.mark.parametrize("method,params", [("rollout", {"discard_ratio": 0.2, "query": "distillation"}),
                                           ("relevance", {"query": "cls"})])
def test_worker_takes_the_batched_path_with_the_same_maps(method, params, monkeypatch):
    adapter = tiny("deit-teacher")
    used = []
    real = worker_mod.batched_attention_maps
    monkeypatch.setattr(worker_mod, "batched_attention_maps", lambda *a, **kw: used.append(r := real(*a, **kw)) or r)
    images = _images(5)
    worker = Worker(Job(model="x", method=method, top_k=2, batch_size=3, params=params), adapter)
    results = worker.run([Item(f"img{i}", None, _png(im)) for i, im in enumerate(images)])
    assert used and all(m is not None for m in used)
    for im, r in zip(images, results):
        cap = attnviz.capture(adapter, im)
        for row in r.rows:
            ref = attnviz.explain(adapter, cap, method, row["target_index"], **params).map
            np.testing.assert_allclose(map_of(row), ref, rtol=1e-4, atol=1e-6 * float(np.abs(ref).max()))
        assert all(row["class_specific"] == (method == "relevance") for row in r.rows)


def test_swin_falls_back_to_per_image_explain(monkeypatch):
    """Swin's windows and merges are not a dense [B, H, T, T] batch: no batched path, the per-image one."""
    adapter = tiny("swin")
    images = [Image.fromarray(im) for im in (np.asarray(i.resize((24, 24))) for i in _images(3))]
    caps = [adapter.capture(adapter.prepare(im), grads=False) for im in images]
    params = resolve_params(get_method("rollout"), {}, adapter.method_defaults("rollout"))
    targets = [adapter.resolve_target(c, None) for c in caps]
    assert batched_attention_maps(adapter, "rollout", CaptureBatch(caps, ()), [0, 1, 2], targets, params) is None
    used = []
    real = worker_mod.batched_attention_maps
    monkeypatch.setattr(worker_mod, "batched_attention_maps", lambda *a, **kw: used.append(r := real(*a, **kw)) or r)
    explained = []
    real_explain = worker_mod.explain
    monkeypatch.setattr(worker_mod, "explain", lambda *a, **kw: explained.append(a[2]) or real_explain(*a, **kw))
    results = Worker(Job(model="x", method="rollout", batch_size=3), adapter).run(
        [Item(f"i{k}", None, _png(im)) for k, im in enumerate(images)])
    assert explained == ["rollout"] * 3 and all(m is None for m in used)
    for im, r in zip(images, results):
        np.testing.assert_allclose(map_of(r.rows[0]), attnviz.explain(adapter, im, "rollout").map, rtol=1e-5, atol=1e-7)


def test_per_image_backward_runs_outside_the_one_thread_stretch(monkeypatch):
    """Swin relevance (not batched): each capture's backward through the model runs with the process's torch
    threads, before the one-thread stretch the small attention ops get, and the maps are explain's."""
    adapter = tiny("swin")
    images = [Image.fromarray(im) for im in (np.asarray(i.resize((24, 24))) for i in _images(2))]
    seen = []
    real = worker_mod.capture_batch

    def recording(*a, **kw):
        caps = real(*a, **kw)
        for c in caps:
            c._grad_fn = lambda t, fn=c._grad_fn: seen.append(torch.get_num_threads()) or fn(t)
        return caps
    monkeypatch.setattr(worker_mod, "capture_batch", recording)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = Worker(Job(model="x", method="relevance", batch_size=2), adapter).run(
            [Item(f"i{k}", None, _png(im)) for k, im in enumerate(images)])
    finally:
        torch.set_num_threads(threads)
    assert seen == [2, 2]
    for im, r in zip(images, results):
        ref = attnviz.explain(adapter, im, "relevance", r.rows[0]["target_index"]).map
        np.testing.assert_allclose(map_of(r.rows[0]), ref, rtol=1e-5, atol=1e-7 * float(np.abs(ref).max()))
