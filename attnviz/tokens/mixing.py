"""Token mixing as row vectors: dense attention, shifted windows and patch merging (no model, no capture).

Rollout (Abnar & Zuidema 2020, https://arxiv.org/abs/2005.00928) and relevance (Chefer, Gur & Wolf 2021,
https://arxiv.org/abs/2103.15679) only need the query's row of a product of per-block matrices, so the
row is pulled down from the output through each token-mixing step instead of multiplying T×T matrices:

* rollout: ``v ← v·Â`` with Â = ½A + ½I, rows renormalised over the real tokens;
* relevance: ``v ← v + v·Ā`` with Ā = E_h[(∇A ⊙ A)⁺] (Chefer et al. eq. 5);

taken over the blocks from the last to the first; a map is the vector that reaches the first grid.

A block's attention is block-diagonal over its windows. ``Windows`` holds where each window slot sits
on the block's token grid; a plain ViT layer is one window holding every token. The conventions, which
follow the model's own forward (transformers' ``SwinLayer``):

* **Padding**: a grid that is not a multiple of the window is padded at the bottom and the right with
  zero vectors before attention. Padding slots hold no token of the image (their values are a constant
  bias), so attention that flows to them is dropped: the columns of padding slots are not part of the
  block's token-mixing matrix, and rollout renormalises each row over the real tokens.
* **Shift**: shifted blocks roll the padded grid by ``-shift`` in both directions before cutting windows
  (and roll back after). A slot's token is the one the roll brought there, so every map is drawn
  with the shift undone: it lines up with the image. Windows are numbered row-major over the rolled
  grid, slots row-major inside a window, as ``window_partition`` orders them.
* **Patch merging** (between stages) concatenates the 2×2 children of a merged token, in the order
  (0,0), (1,0), (0,1), (1,1), after zero-padding an odd grid at the bottom / right. Pulling a vector
  down, a merged token hands its value to its children in **equal shares among the children that
  exist**: quarters inside the grid, halves on a padded odd edge, all of it at a padded corner. Shares
  of a merged token sum to 1, so a merge conserves a vector's total mass.
* **Readout**: Swin's classifier reads the mean of the last stage's tokens (``pooling`` "mean"): the
  output's vector is 1/N on each of them.
* **Queries**: a patch ``row,col`` names a token of the first grid (the capture's ``layout``); on a
  coarser stage it is the token that contains it. "output" at an earlier stage is the readout pulled
  down through the merges only (no attention): for a mean pooling, the mean over that stage's tokens.

Cost: a windowed block costs tokens × window² (one einsum over windows), a dense layer T², against T³
for a matrix product. For display (per-block attention, Grad-CAM at a stage) a coarse stage's map is
drawn on the first grid by repeating each token's value over the patches it covers (``expand``).

The capture side (which blocks a capture holds, its stage views) is :mod:`attnviz.methods.hierarchy`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch


@dataclass(frozen=True, eq=False)
class Windows:
    """Where one attention block's window slots sit on its token grid.

    ``slots[w, k]`` is the token index (row-major over the block's grid, after any prefix tokens) held
    by slot ``k`` of window ``w``, or -1 for a padding slot. Every real token sits in exactly one slot.
    """

    slots: torch.Tensor          # [n_windows, S] long
    n_tokens: int
    stage: int = 0
    grid: Optional[tuple[int, int]] = None   # (rows, cols) of a windowed block's grid; None for a dense layer
    window: int = 0
    shift: int = 0

    @property
    def real(self) -> torch.Tensor:
        """[n_windows, S] bool: slots that hold a token."""
        return self.slots >= 0

    @property
    def where(self) -> torch.Tensor:
        """[N] flat slot position of each token (inverse of ``slots``)."""
        flat = self.slots.reshape(-1)
        pos = torch.empty(self.n_tokens, dtype=torch.long)
        keep = flat >= 0
        pos[flat[keep]] = torch.arange(flat.numel())[keep]
        return pos

    def gather(self, v: torch.Tensor) -> torch.Tensor:
        """[..., N] per token -> [..., n_windows, S] per slot, 0 on padding slots."""
        padded = torch.cat([v, v.new_zeros(*v.shape[:-1], 1)], dim=-1)           # [..., N + 1]: index -1 -> 0
        idx = self.slots.reshape(-1).to(v.device)
        return padded[..., idx].reshape(*v.shape[:-1], *self.slots.shape)         # [..., nW, S]

    def scatter(self, u: torch.Tensor) -> torch.Tensor:
        """[..., n_windows, S] per slot -> [..., N] per token (padding slots dropped)."""
        return u.reshape(*u.shape[:-2], -1)[..., self.where.to(u.device)]           # [..., N]

    def pull(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """v·A for the block-diagonal matrix A: ``v`` [N], ``a`` [n_windows, S, S] -> [N]."""
        return self.scatter(torch.einsum("wi,wij->wj", self.gather(v.to(a)), a))


def dense(n_tokens: int) -> Windows:
    """A plain ViT layer: one window holding every token, in sequence order."""
    return Windows(slots=torch.arange(n_tokens)[None], n_tokens=n_tokens)


def shifted_windows(grid: tuple[int, int], window: int, shift: int, stage: int = 0) -> Windows:
    """Slots of a Swin block on a rows × cols grid: pad to whole windows, roll by ``-shift``, cut windows."""
    rows, cols = grid
    pr, pc = -(-rows // window) * window, -(-cols // window) * window
    idx = torch.full((pr, pc), -1, dtype=torch.long)
    idx[:rows, :cols] = torch.arange(rows * cols).view(rows, cols)                 # [Hp, Wp], -1 = padding
    if shift:
        idx = torch.roll(idx, shifts=(-shift, -shift), dims=(0, 1))
    slots = idx.view(pr // window, window, pc // window, window).transpose(1, 2)   # [nH, nW, w, w]
    return Windows(slots=slots.reshape(-1, window * window), n_tokens=rows * cols, stage=stage,
                   grid=(rows, cols), window=window, shift=shift)


@dataclass(frozen=True, eq=False)
class Merge:
    """Patch merging from a ``fine`` rows × cols grid to ``((rows + 1) // 2, (cols + 1) // 2)``."""

    fine: tuple[int, int]

    @property
    def coarse(self) -> tuple[int, int]:
        return ((self.fine[0] + 1) // 2, (self.fine[1] + 1) // 2)

    @property
    def parent(self) -> torch.Tensor:
        """[N_fine] index of each fine token's merged token."""
        r, c = torch.meshgrid(torch.arange(self.fine[0]), torch.arange(self.fine[1]), indexing="ij")
        return ((r // 2) * self.coarse[1] + c // 2).reshape(-1)

    @property
    def share(self) -> torch.Tensor:
        """[N_fine] the share of its parent's value a fine token receives: 1 / (children that exist)."""
        n = torch.bincount(self.parent, minlength=self.coarse[0] * self.coarse[1]).to(torch.float32)
        return 1.0 / n[self.parent]

    def pull(self, v: torch.Tensor) -> torch.Tensor:
        """[..., N_coarse] -> [..., N_fine], each merged token's value split equally among its children."""
        return v[..., self.parent.to(v.device)] * self.share.to(v)


@dataclass(frozen=True, eq=False)
class Hierarchy:
    """The token mixing of one capture: every block's ``Windows`` in forward order, and the stage grids.

    A plain ViT is one stage (``grids[0]`` None: its tokens are the layout's, prefix included); Swin has
    one grid per stage and a merge between consecutive stages.
    """

    blocks: tuple[Windows, ...]
    grids: tuple[Optional[tuple[int, int]], ...]

    @property
    def n_stages(self) -> int:
        return len(self.grids)

    def merge(self, stage: int) -> Merge:
        """The merge from ``stage`` to ``stage + 1``."""
        return Merge(self.grids[stage])

    def stage_blocks(self, stage: int) -> list[int]:
        return [i for i, b in enumerate(self.blocks) if b.stage == stage]

    def ancestor(self, stage: int) -> torch.Tensor:
        """[N_0] index of the stage-``stage`` token containing each first-grid token."""
        idx = torch.arange(self.blocks[0].n_tokens)
        for s in range(stage):
            idx = self.merge(s).parent[idx]
        return idx

    def expand(self, v: torch.Tensor, stage: int) -> torch.Tensor:
        """[..., N_stage] -> [..., N_0]: each token's value repeated over the first-grid patches it covers."""
        return v[..., self.ancestor(stage).to(v.device)]

    def pull_merges(self, v: torch.Tensor, stage: int, to: int = 0) -> torch.Tensor:
        """A vector on ``stage`` pulled down through the merges to stage ``to`` (equal shares, mass kept)."""
        for s in range(stage - 1, to - 1, -1):
            v = self.merge(s).pull(v)
        return v


def _discard(a: torch.Tensor, win: Windows, ratio: float) -> torch.Tensor:
    """Zero the weakest ``ratio`` of the links a block has: off-diagonal entries between real tokens of a
    window (pytorch-grad-cam's noise filter; on a dense layer, every off-diagonal entry of the T×T matrix)."""
    s = a.shape[-1]
    real = win.real.to(a.device)
    links = real[:, :, None] & real[:, None, :] & ~torch.eye(s, dtype=torch.bool, device=a.device)  # [nW, S, S]
    vals = a[links]
    k = int(vals.numel() * ratio)
    if k == 0:
        return a
    thresh = vals.kthvalue(k).values
    return a.masked_fill(links & (a <= thresh), 0.0)


def rollout_step(v: torch.Tensor, a: torch.Tensor, win: Windows, discard_ratio: float = 0.0) -> torch.Tensor:
    """v·Â with Â = ½A + ½I, each row renormalised over the real tokens (``a`` [n_windows, S, S] fused)."""
    v = v.to(a)
    if discard_ratio > 0:
        a = _discard(a, win, discard_ratio)
    real_keys = win.real.to(a.device)[:, None, :]                                  # [nW, 1, S]
    rows = 0.5 * (a * real_keys).sum(-1) + 0.5                                     # [nW, S] row sums of ½A + ½I
    v = v / win.scatter(rows).clamp_min(1e-12)                                     # [N]
    return 0.5 * win.pull(v, a) + 0.5 * v


def relevance_step(v: torch.Tensor, a_bar: torch.Tensor, win: Windows) -> torch.Tensor:
    """v + v·Ā (Chefer et al. 2021, eq. 6 as a row: R ← R + Ā·R read from the left)."""
    v = v.to(a_bar)
    return v + win.pull(v, a_bar)


def pull_down(h: Hierarchy, v: torch.Tensor, mats: Sequence[Optional[torch.Tensor]], step) -> torch.Tensor:
    """Pull ``v`` (on the last stage) down to the first grid: ``step(v, mats[l], h.blocks[l])`` for each
    block from the last to the first (a block whose matrix is None is skipped: before ``start_layer``),
    and the merge in front of each stage."""
    for li in range(len(h.blocks) - 1, -1, -1):
        if mats[li] is not None:
            v = step(v, mats[li], h.blocks[li])
        if li > 0 and h.blocks[li - 1].stage != h.blocks[li].stage:
            v = h.merge(h.blocks[li - 1].stage).pull(v)
    return v


def block_rows(h: Hierarchy, li: int, q: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Attention rows of block ``li`` read by query ``q`` [N_stage] per head: ``a`` [n_windows, H, S, S]
    -> [H, N_stage], zero outside the query's (shifted) window, the shift undone."""
    win = h.blocks[li]
    u = torch.einsum("wi,whij->hwj", win.gather(q.to(a.dtype)), a)                # [H, nW, S]
    return win.scatter(u)                                                          # [H, N_stage]
