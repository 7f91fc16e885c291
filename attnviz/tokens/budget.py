"""What an input size costs before running it: memory and time of a capture from the model's shape and the
machine, so a size that would run out of memory is refused in one sentence (with the largest that fits) and the
app can show the expected cost of a high-resolution input.

The counts (float32, one image) are estimates, not measurements (``bench --highres`` measures):

* **activations a backward keeps** per dense layer: T·(10·D + 2·I) floats (LayerNorms, q/k/v, the head
  output, the MLP's hidden layer before and after its activation); a forward without gradients keeps
  about three layers' worth at once; with checkpointed blocks (on the chunked path the lowest blocks, as
  many as :func:`checkpointed_layers` says keep the rest within :data:`ACTIVATION_BUDGET`) the graph keeps
  each such block's input, T·D floats, and a backward recomputes one block's activations at a time;
* **the capture**: "full" keeps every layer's softmax weights, H·T² floats (and as much again for their
  gradients and the softmax's saved output with gradients); "rows" keeps q and k (and v and the head-output
  gradient with gradients), 2·T·D (4·T·D) floats per layer, and one block of rows (``chunked.BLOCK_BYTES``; a
  rollout's ``chunked.FUSED_BLOCK_BYTES``)
  at a time; window attention (Swin) keeps N·S·H floats per block (N tokens, S = window²);
* **time**: multiply-adds of the forward (linear layers 2·T·(4D² + 2·D·I), attention 4·T²·D per layer), a
  rollout recomputes q·kᵀ once more (2·T²·D), a relevance runs the backward (at its own measured rate) and
  recomputes q·kᵀ and dO·Vᵀ (4·T²·D), plus each checkpointed block's forward once more, at rates measured
  once on this machine (a transformer block's forward and backward, :func:`block_rates`).
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

import torch

from . import chunked

FLOAT = 4
#: The share of the machine's available memory a capture may plan to use.
MEMORY_SHARE = 0.8


def available_memory() -> int:
    """Bytes this process may still use: the kernel's MemAvailable, bounded by a cgroup limit when one is set."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                raw = f.read().strip()
            if raw.isdigit():
                avail = min(avail, int(raw))
        except OSError:
            continue
    return avail


@lru_cache(maxsize=4)
def block_rates(dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """What this machine computes of a transformer block, in the FLOPs :func:`dense_cost` counts (FLOP/s), for
    its forward and for its backward (the input's gradient only: the parameters take none): one ViT block
    (width 384, 6 heads, MLP 1,536, 1,024 tokens, SDPA attention, LayerNorms, GELU; random weights) in
    ``dtype`` (a half-precision dtype under ``torch.autocast``, as the model's passes run: LayerNorms and the
    residual stream stay float32), best of three after a warm-up, in this process's threads. A bare matrix
    product's rate (used until session 13) leaves out what a block does besides its products: estimates from it were
    1.6-2.1× below the measured float32 times (DINOv2-S, 2 threads: a 518² forward 0.27 s estimated, 0.45 s
    measured; a 1792² relevance 79 s, 164 s), and a bfloat16 backward is slower against its forward than a
    float32 one (PyTorch's CPU flash backward: 0.40 against 0.56 s at 4,097 tokens, its forward 0.08 against
    0.23)."""
    from torch import nn
    d, heads, hidden, t = 384, 6, 1536, 1024
    gen = torch.Generator().manual_seed(0)
    layers = nn.ModuleDict({"ln1": nn.LayerNorm(d), "qkv": nn.Linear(d, 3 * d), "proj": nn.Linear(d, d),
                            "ln2": nn.LayerNorm(d), "fc1": nn.Linear(d, hidden), "fc2": nn.Linear(hidden, d)})
    layers = layers.requires_grad_(False)
    x = torch.randn(1, t, d, generator=gen)

    def block(x):
        q, k, v = layers["qkv"](layers["ln1"](x)).view(1, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        o = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, t, d)    # [1, T, D]
        h = x + layers["proj"](o)
        return h + layers["fc2"](nn.functional.gelu(layers["fc1"](layers["ln2"](h))))

    def half():
        return torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    def forward():
        with torch.no_grad(), half():
            block(x)

    xg = x.clone().requires_grad_()

    def backward():
        with half():
            y = block(xg)
        t0 = time.perf_counter()
        torch.autograd.grad(y.float().sum(), xg)
        return time.perf_counter() - t0

    def best(fn):
        fn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            got = fn()
            times.append(got if got is not None else time.perf_counter() - t0)
        return max(min(times), 1e-6)
    flops = 2 * t * (4 * d * d + 2 * d * hidden) + 4 * t * t * d
    return flops / best(forward), flops / best(backward)


#: Bytes of activations a chunked capture with gradients may keep for its backward outside checkpointed blocks
#: (``checkpointed_layers``): each block kept whole saves its recomputation, about 1/L of a forward. 128 MB (2 of
#: DINOv2-S's 12 blocks checkpointed at 518², 9 at 896²) measured +403 MB and +999 MB over a bare forward for
#: one relevance, at the issue's memory targets (+400 MB, +1 GB): 96 MB keeps a margin.
ACTIVATION_BUDGET = 96 << 20


def block_activation_bytes(width: int, hidden: int, tokens: int, hidden_itemsize: int = FLOAT) -> int:
    """Bytes a token block kept whole holds for the backward beyond what the chunked capture keeps anyway
    (q, k, v, the head output): its LayerNorms' inputs and the MLP's hidden layer, T·(2D + I) floats (the
    linear layers keep no input: the parameters take no gradient). Measured on DINOv2-S at 518²: 117 MB for
    12 blocks (this says 151 MB). ``hidden_itemsize`` 2: a bfloat16 pass (autocast keeps the LayerNorms and the
    residual stream float32, the MLP's hidden layer comes out of a linear layer in bfloat16), and the flash
    kernel keeps its own bfloat16 q, k, v beside the capture's float32 ones, 3·T·D more halves."""
    half = 3 * width * hidden_itemsize if hidden_itemsize != FLOAT else 0
    return tokens * (2 * width * FLOAT + hidden * hidden_itemsize + half)


def checkpointed_layers(layers: int, width: int, hidden: int, tokens: int, budget: Optional[int] = None,
                        hidden_itemsize: int = FLOAT) -> int:
    """How many of ``layers`` token blocks a capture with gradients checkpoints: the fewest that keep the other
    blocks' activations (``block_activation_bytes``) within ``budget`` bytes (:data:`ACTIVATION_BUDGET`).
    DINOv2-S: 5 of 12 at 518², 10 at 896², all 12 at 1792² (bfloat16: 4, 10, 12)."""
    per = block_activation_bytes(width, hidden, tokens, hidden_itemsize)
    whole = (ACTIVATION_BUDGET if budget is None else budget) // max(1, per)
    return max(0, layers - int(whole))


@dataclass(frozen=True)
class Cost:
    """Estimated cost of one capture and its views at one input size."""

    tokens: int
    path: str                       # "full", "rows" or "windows"
    forward_s: float                # a bare forward
    rollout_s: float                # capture without gradients + rollout
    relevance_s: float              # capture with gradients + backward + relevance
    rollout_bytes: int              # peak memory of the rollout
    relevance_bytes: int            # peak memory of the relevance (the larger)
    available_bytes: int
    graph_bytes: int = 0            # what autograd keeps of one forward for its backward (0: not estimated)

    @property
    def fits(self) -> bool:
        return self.relevance_bytes <= MEMORY_SHARE * self.available_bytes

    def describe(self) -> str:
        gb = 1 << 30
        return (f"{self.tokens:,} tokens ({self.path} attention): about {self.forward_s:.1f} s for a forward, "
                f"{self.rollout_s:.1f} s and {self.rollout_bytes / gb:.1f} GB for rollout, "
                f"{self.relevance_s:.1f} s and {self.relevance_bytes / gb:.1f} GB for relevance "
                f"({self.available_bytes / gb:.1f} GB available)")


def dense_cost(layers: int, heads: int, width: int, hidden: int, tokens: int, path: str,
               weights_bytes: int = 0, checkpointed: int = 0, pixels: int = 0,
               dtype: torch.dtype = torch.float32) -> Cost:
    """Cost of a plain ViT-style tower: ``layers`` × (``heads``, ``width`` D, MLP ``hidden`` I) on ``tokens``;
    ``checkpointed``: how many blocks a capture with gradients checkpoints (the backward recomputes them;
    True: all); ``pixels``: the input's values (3·h·w); ``dtype``: what the model's passes compute in (the
    views' own recomputation is float32 either way)."""
    checkpointed = layers if checkpointed is True else int(checkpointed)
    t, d = tokens, width
    act = t * (10 * d + 2 * hidden) * FLOAT                                     # per layer, kept for backward
    if path == "full":
        kept, kept_grads = heads * t * t * FLOAT, 3 * heads * t * t * FLOAT    # + grads, saved softmax
        block = 0
    else:
        kept, kept_grads = 2 * t * d * FLOAT, 4 * t * d * FLOAT
        block = 2 * chunked.block_rows_for(t, heads) * heads * t * FLOAT        # a block of A (and ∇A)
    # rollout's fused blocks (chunked.FUSED_BLOCK_BYTES), the product's output beside each
    fused = block if path == "full" else 2 * chunked.block_rows_for(t, heads, FLOAT, chunked.FUSED_BLOCK_BYTES) \
        * heads * t * FLOAT
    rollout_b = weights_bytes + layers * kept + 3 * act + fused
    if checkpointed:
        # per layer: q, k, v, dO kept, the block's input, and what autograd holds around a checkpointed block
        # (its output and the gradients in flight): 12·T·D floats a layer, fitted to peak RSS measured on
        # DINOv2-S (docs/measurements.md, quiet cold runs: +437 MB / +970 MB / +3.96 GB at 518² / 896² / 1792², where 5·T·D gave half that)
        # with every block checkpointed); a block kept whole holds its activations on top of that
        relevance_b = (weights_bytes + layers * (kept_grads + 8 * t * d * FLOAT) + act + 2 * block
                       + (layers - checkpointed) * block_activation_bytes(d, hidden, t))
    else:
        relevance_b = weights_bytes + layers * (kept_grads + act) + 2 * block
    linear = 2 * t * (4 * d * d + 2 * d * hidden)
    attn = 4 * t * t * d
    rate = block_rates()[0]                         # the views' own products: float32
    fwd_rate, bwd_rate = block_rates(dtype)         # the model's passes
    fwd = layers * (linear + attn) / fwd_rate
    bwd = layers * (linear + attn) / bwd_rate
    roll = fwd + layers * (2 * t * t * d) / rate * (1 if path == "rows" else 0.2)
    rel = (1 + checkpointed / layers) * fwd + bwd + layers * (4 * t * t * d) / rate * (1 if path == "rows" else 0.3)
    if path == "full":
        # What autograd saves of one forward for its backward, the parameters taking no gradient (the linear
        # layers then keep no input): per layer the two LayerNorms' inputs, q, k, v, the attention (softmax
        # output, also the A·V product's operand) and the GELU's input, T·(5D + I) + H·T² floats, and each
        # LayerNorm's mean and 1/std (2T); plus the embeddings' output, the last LayerNorm's input and the pixels
        # (the input takes a gradient). Measured with saved-tensor hooks (tests/test_serve.py): ViT-B/16 at 224²,
        # 88.96 MB saved, 88.96 estimated.
        graph_b = (layers * (t * (5 * d + hidden) + heads * t * t + 4 * t) + 2 * t * d + 2 * t + pixels) * FLOAT
    else:
        graph_b = relevance_b - weights_bytes          # checkpointed blocks: the relevance peak bounds it
    return Cost(t, path, fwd, roll, rel, int(rollout_b), int(relevance_b), available_memory(), int(graph_b))


def window_cost(blocks: Sequence[tuple[int, int, int, int]], weights_bytes: int = 0) -> Cost:
    """Cost of a windowed (Swin) model: per block (tokens N, heads H, window² S, width D)."""
    kept = sum(n * s * h for n, h, s, _ in blocks) * FLOAT
    act = sum(n * 18 * d for n, _, _, d in blocks) * FLOAT                     # MLP ratio 4
    linear = sum(2 * n * 12 * d * d for n, _, _, d in blocks)
    attn = sum(4 * n * s * d for n, _, s, d in blocks)
    rate = block_rates()[0]
    fwd = (linear + attn) / rate
    peak_block = max(n * 18 * d for n, _, _, d in blocks) * FLOAT
    return Cost(blocks[0][0], "windows", fwd, 1.2 * fwd, 3 * fwd, int(weights_bytes + kept + 3 * peak_block),
                int(weights_bytes + 3 * kept + act), available_memory())


def largest_square(cost_at, patch: int, start: int, limit: Optional[int] = None) -> Optional[int]:
    """The largest square side (a multiple of ``patch``, from ``start``) whose ``cost_at(side)`` fits."""
    lo, hi = None, max(patch, start // patch)
    top = (limit or 1 << 16) // patch
    while hi <= top and cost_at(hi * patch).fits:
        lo, hi = hi, hi * 2
    if lo is None:
        return None
    hi = min(hi, top + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost_at(mid * patch).fits else (lo, mid)
    return lo * patch
