"""Cascading model-parameter randomisation: does the map depend on what the model learned?

Adebayo et al. 2018, "Sanity Checks for Saliency Maps",
https://arxiv.org/abs/1810.03292. The learned weights are replaced by random
ones from the top of the network down, one block more at each step, and the
map is computed again for the same image and target. A map that explains the
model changes as its weights go; one that stays alike (high rank correlation
with the original) shows the input or the architecture rather than the model.

Conventions here:

* Randomised are the image tower's transformer blocks (``adapter.block``; a
  CNN's stages), last to first; the output head, the embeddings (a CNN's stem)
  and, for image–text models and captioners, the text side keep their weights
  (the target keeps its meaning: the same class, prompt or caption token).
* Re-initialisation at the scale of the weights it replaces: every weight
  matrix (ndim >= 2) of a randomised block ~ N(0, σ²) with σ the standard
  deviation of that matrix's own current entries, so a trained matrix becomes
  a random one of the same size and scale (its norm stays about the same and
  it moves by about √2 of its norm). A matrix whose entries are all equal
  (a zero-initialised position-bias table) takes σ of all the block's matrices
  together. Biases 0, LayerNorm scales 1 and shifts 0; a batch norm becomes a
  fresh one (scale 1, shift 0, running mean 0 and variance 1: the statistics
  of the weights it replaced would rescale the new ones' output arbitrarily);
  other vectors (BEiT's, DINOv2's and ConvNeXt's layer scales) keep their
  values; seeded.
  Why not the config's ``initializer_range``: it does not describe the
  weights being replaced, and ``BlipVisionConfig`` defaults it to 1e-10, which
  turned each "randomised" BLIP block into an identity (uniform attention,
  output = input).
* Everything runs on a deep copy of the model: the model the app shares is never
  touched. Step 0 recomputes the map on the unchanged copy (Spearman 1: the
  check that the comparison itself is exact).
* Cost: step i leaves blocks 0 … n−i−1 untouched, so on the ViT family, CLIP and SigLIP
  (``REUSE_FAMILIES``) its capture runs only the randomised blocks and takes the others'
  outputs and attention maps from step 0's forward, whose graph carries each step's
  backward down to them: (n + 1)·n / 2 block forwards instead of (n + 1)·n, the same
  numbers bit for bit (tests/test_randomisation_reuse.py). Other families recompute
  every step in full.
* Similarity: Spearman rank correlation of the maps' absolute values (the
  paper's main measure) and of the signed maps.
"""
from __future__ import annotations

import copy
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..adapters.hooks import this_thread
from ..errors import UsageError
from ..types import Capture, Explanation
from .rank import spearman


_COPIES = threading.BoundedSemaphore(max(1, int(os.environ.get("ATTNVIZ_MODEL_COPIES", "1"))))


@dataclass(frozen=True)
class RandomisationStep:
    blocks: tuple[int, ...]      # the blocks randomised so far (0-based, as outputs.attentions counts)
    spearman_abs: float
    spearman: float
    map: np.ndarray

    @property
    def label(self) -> str:
        if not self.blocks:
            return "none"
        lo, hi = min(self.blocks), max(self.blocks)
        return f"block {hi}" if lo == hi else f"blocks {lo}–{hi}"

    def to_dict(self) -> dict:
        return {"randomised": self.label, "blocks": list(self.blocks), "spearman_abs": self.spearman_abs,
                "spearman": self.spearman}


def copy_adapter(adapter):
    """A deep copy of ``adapter`` with its own model and lock, sharing the processor and tokenizer."""
    memo: dict[int, Any] = {id(adapter.lock): threading.RLock(), id(adapter.processor): adapter.processor}
    tok = getattr(adapter, "tokenizer", None)
    if tok is not None:
        memo[id(tok)] = tok
    return copy.deepcopy(adapter, memo)


def _spread(values: torch.Tensor) -> float:
    return float(values.detach().double().std()) if values.numel() > 1 else 0.0


def randomise_module(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Re-initialise ``module`` in place: each matrix N(0, its own std), biases 0, LayerNorm scales 1.

    A matrix with no spread of its own (all entries equal) takes the spread of all the
    module's matrices together. Other vectors (BEiT's and DINOv2's layer scales) keep
    their values: zeroing them would turn the block into an identity rather than a
    random function.
    """
    params = list(module.named_parameters())
    batch_norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    norms = {id(m.weight) for m in module.modules()
             if isinstance(m, (torch.nn.LayerNorm, torch.nn.modules.batchnorm._BatchNorm)) and m.weight is not None}
    spreads = {id(p): _spread(p) for _, p in params if p.ndim >= 2}       # before any is replaced
    # the spread of all the matrices together, needed only by a matrix without one of its own
    pooled = (_spread(torch.cat([p.detach().reshape(-1) for _, p in params if p.ndim >= 2]))
              if spreads and min(spreads.values()) == 0 else 0.0)
    with torch.no_grad():
        for name, p in params:
            if id(p) in norms:
                p.fill_(1.0)
            elif p.ndim >= 2:
                std = spreads[id(p)] or pooled
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p) * std)
            elif name.endswith("bias"):
                p.zero_()
        for m in batch_norms:
            if m.track_running_stats:
                m.reset_running_stats()


def cascading_randomisation(adapter, capture: Capture, exp: Explanation, *, seed: int = 0,
                            max_blocks: Optional[int] = None,
                            progress: Optional[Callable[[int, int], None]] = None) -> list[RandomisationStep]:
    """Recompute ``exp``'s method (same params, same target) as blocks are randomised from the top.

    Returns one step per state: none randomised (the check), then the last block, the last two, ...,
    down to block 0 (or ``max_blocks`` of them).
    """
    if exp.over not in ("patches", "pixels", "tokens", "channels"):
        raise UsageError(f"Cannot compare maps over {exp.over}.")
    # Each run holds a whole copy of the model: in a shared app (thirty students clicking at once)
    # runs take turns instead of holding thirty copies.
    with _COPIES:
        return _cascade(adapter, capture, exp, seed=seed, max_blocks=max_blocks, progress=progress)


#: Families whose step captures may reuse the untouched blocks' activations (``_LowerBlocks``): their
#: attentions come back from ``_run`` one per block in order, recorded inside each block, and nothing else
#: of the capture is read off the vision tower's lower blocks (tests/test_metrics.py compares both paths).
REUSE_FAMILIES = ("classifier", "clip")


class _LowerBlocks:
    """Step i of the cascade leaves blocks 0 … n−i−1 as they were, so their outputs and attention maps are
    those of step 0's forward (same weights, same input: the same numbers). Step 0's capture keeps its graph
    and every block's output; a later step's capture runs only the randomised top blocks: each untouched
    block hands back step 0's output without computing (an instance ``forward``), and ``_run``'s attentions
    (the top blocks' only) are prefixed with step 0's. Gradients of a step's score then flow through the
    top blocks into step 0's graph, down to the untouched blocks' attention maps, exactly as a full forward
    and backward would give them."""

    def __init__(self, clone, inputs: dict):
        self.clone, self.inputs = clone, inputs
        self.outputs: dict[int, Any] = {}
        self.attentions: tuple = ()

    @staticmethod
    def applies(clone, capture: Capture) -> bool:
        return (clone.family in REUSE_FAMILIES and not clone.rows_path(capture.layout.n_tokens)
                and len(capture.attentions) == clone.n_layers)

    def _capture(self, attentions_of: Callable[[tuple], tuple]):
        """The copy's capture, ``_run``'s attentions passed through ``attentions_of`` on the way."""
        clone = self.clone
        run = clone._run

        def wrapped(inputs, x, *, attentions):
            scores, atts, extras = run(inputs, x, attentions=attentions)
            return scores, attentions_of(tuple(atts or ())), extras
        clone._run = wrapped
        try:
            return clone.capture(dict(self.inputs), grads=True)
        finally:
            del clone._run

    def first(self):
        """Step 0: a full capture that records each block's output and the forward's attentions."""
        clone = self.clone
        hooks = [clone.block(j).register_forward_hook(this_thread(self._keep(j))) for j in range(clone.n_layers)]

        def keep(atts: tuple) -> tuple:
            self.attentions = atts
            return atts
        try:
            return self._capture(keep)
        finally:
            for h in hooks:
                h.remove()

    def _keep(self, j: int):
        def hook(module, args, out):
            self.outputs[j] = out
        return hook

    def step(self, first_random: int):
        """A capture with blocks ``first_random`` … n−1 computed and the ones below taken from step 0."""
        n, lower = self.clone.n_layers, [self.clone.block(j) for j in range(first_random)]

        def with_lower(atts: tuple) -> tuple:
            if len(atts) != n - first_random:
                raise RuntimeError(f"expected the {n - first_random} top blocks' attentions, got {len(atts)}")
            return self.attentions[:first_random] + atts
        for j, block in enumerate(lower):
            block.forward = (lambda out: lambda *a, **k: out)(self.outputs[j])     # step 0's output, no compute
        try:
            return self._capture(with_lower)
        finally:
            for block in lower:
                del block.forward


def _cascade(adapter, capture: Capture, exp: Explanation, *, seed: int, max_blocks: Optional[int],
             progress: Optional[Callable[[int, int], None]]) -> list[RandomisationStep]:
    from ..methods.registry import explain

    n = adapter.n_layers
    k = n if max_blocks is None else max(0, min(int(max_blocks), n))
    target = exp.target.index if exp.target is not None else None
    clone = copy_adapter(adapter)
    g = torch.Generator(device="cpu").manual_seed(seed)
    original = np.asarray(exp.map, dtype=np.float64)
    reuse = _LowerBlocks(clone, capture.inputs) if _LowerBlocks.applies(clone, capture) and REUSE else None
    steps: list[RandomisationStep] = []
    done: list[int] = []
    first = None
    try:
        for i in range(k + 1):
            if i > 0:
                layer = n - i
                randomise_module(clone.block(layer), g)
                done.append(layer)
            if reuse is None:
                cap = clone.capture(dict(capture.inputs), grads=True)
            else:
                cap = reuse.first() if i == 0 else reuse.step(n - i)
            m = explain(clone, cap, exp.method, target, **exp.params).map.astype(np.float64)
            if reuse is not None and i == 0:
                first = cap                                  # its graph serves every later step
            else:
                cap.release_graph()
            steps.append(RandomisationStep(blocks=tuple(sorted(done)), spearman_abs=spearman(np.abs(original), np.abs(m)),
                                           spearman=spearman(original, m), map=m))
            if progress is not None:
                progress(i + 1, k + 1)
    finally:
        if first is not None:
            first.release_graph()
    return steps


#: Whether steps reuse the untouched blocks' activations where the family allows (tests switch it off to
#: compare with full recomputation).
REUSE = True
