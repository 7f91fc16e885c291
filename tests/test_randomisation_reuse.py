"""The randomisation cascade's steps reuse the untouched blocks' activations (ViT family, CLIP, SigLIP): every
step's map equals the one a full forward and backward on the same weights gives, and the untouched blocks
really are not run again."""
import numpy as np
import pytest
import torch

import attnviz
import attnviz.metrics.randomisation as R
from attnviz.adapters.classifier import ClassifierAdapter
from attnviz.adapters.clip import ClipAdapter

CASES = [("vit", "relevance"), ("deit-teacher", "attn_grad"), ("dinov2-registers", "relevance"),
         ("clip", "relevance"), ("siglip", "relevance"), ("vit", "rollout"), ("clip", "legrad")]


@pytest.mark.parametrize("kind,method", CASES)
def test_reused_steps_equal_full_recomputation(kind, method, photo, monkeypatch):
    if kind in ("clip", "siglip"):
        adapter, kw = ClipAdapter.tiny(kind), {"texts": ["a red circle", "a cat"]}
    else:
        adapter, kw = ClassifierAdapter.tiny(kind), {}
    cap = attnviz.capture(adapter, photo, **kw)
    exp = attnviz.explain(adapter, cap, method, target=1)
    monkeypatch.setattr(R, "REUSE", False)
    full = R.cascading_randomisation(adapter, cap, exp, seed=3)
    monkeypatch.setattr(R, "REUSE", True)
    calls = []
    real_copy = R.copy_adapter

    def counted(a):                         # count the copy's block forwards
        clone = real_copy(a)
        for j in range(clone.n_layers):        # a module inside the block runs only when the block computes
            inner = next(m for m in clone.block(j).modules() if isinstance(m, torch.nn.Linear))
            inner.register_forward_pre_hook(lambda m, args, j=j: calls.append(j))
        return clone
    monkeypatch.setattr(R, "copy_adapter", counted)
    reused = R.cascading_randomisation(adapter, cap, exp, seed=3)
    assert [s.blocks for s in reused] == [s.blocks for s in full]
    for a, b in zip(reused, full):
        np.testing.assert_array_equal(a.map, b.map)
        assert a.spearman_abs == b.spearman_abs
    # step 0 runs every block; step i (block n-i and up randomised) only those, in the captures; methods
    # that run their own forwards (LeGrad) run all of them each step
    n = adapter.n_layers
    in_captures = n + sum(i for i in range(1, n + 1))
    assert len(calls) == in_captures + (n * (n + 1) if method == "legrad" else 0)
    assert in_captures < n * (n + 1)              # fewer than a full forward per step


def test_rows_path_and_other_families_recompute(photo):
    """A capture on the chunked path (no dense attention maps kept) is not reused: it recomputes."""
    adapter = ClassifierAdapter.tiny("vit")
    adapter.attention_path = "rows"
    cap = attnviz.capture(adapter, photo)
    clone = R.copy_adapter(adapter)
    assert not R._LowerBlocks.applies(clone, cap)
    adapter.attention_path = clone.attention_path = "full"
    assert R._LowerBlocks.applies(clone, attnviz.capture(adapter, photo))
