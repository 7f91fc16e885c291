"""Dense attention views without a T×T matrix in memory: rows pulled through matrices given block by block.

Rollout (Abnar & Zuidema 2020) and relevance (Chefer, Gur & Wolf 2021) read the query's row of a
product of per-layer matrices, so each layer only has to pull a row vector down, ``v ← v·M``. A
dense layer's M (the attention A = softmax(q·kᵀ·s + bias), its head fusion, or Chefer's
Ā = E_h[(∇A ⊙ A)⁺]) is given here as a :class:`Rows` source: ``rows(lo, hi)`` returns the rows
``lo:hi`` of M, ``[..., hi - lo, T]``. ``v·M`` is the sum over blocks of rows of ``v[lo:hi]·M[lo:hi]``,
so only one block of rows exists at a time (the arithmetic of memory-efficient attention).

Two kinds of source, one implementation of every step:

* :class:`Dense`: a matrix already in memory (the exact path: a capture of ``output_attentions``; a
  batch's [B, T, T]); one block, the whole matrix.
* :class:`QK`: one layer's queries and keys (and values, head-output gradients), O(T·d): the block of
  rows is recomputed as attention itself computes it, ``softmax(q[lo:hi]·kᵀ·s + bias[lo:hi])`` per
  head (as ``exp(… − lse)`` when the forward's row log-sum-exp was kept: one pass, no softmax);
  ``∇A = dO·Vᵀ`` (O = A·V, so d score / dA = d score / dO · Vᵀ) block by block likewise.

A mean over heads (mean fusion, Chefer's E_h) is taken after the product with the row vector,
v·mean_h(M_h) = Σ_h (v/H)·M_h (``head_rows``), and a rollout over rows that sum to 1 (a softmax, mean
fused) skips adding them up.

Leading dimensions (heads, a batch) broadcast: ``v`` [..., T] against rows [..., c, T].

Conventions (the same as :mod:`attnviz.tokens.mixing` on one dense window, and ``rollout_product``):

* rollout step: Â = ½A + ½I with each row renormalised (``v ← (v / rowsum(Â))·Â``);
* ``discard_ratio``: the weakest ``int(T·(T-1)·ratio)`` off-diagonal entries (``<=`` the k-th smallest)
  are zeroed before the residual is added, per matrix (per image of a batch). With more than one block
  the k-th smallest value is found exactly in two more passes over the blocks: a radix select on the
  float32 bit patterns (non-negative floats order as their bits), high 16 bits then low 16 bits;
* relevance step (Chefer et al. eq. 6 as a row): ``v ← v + v·Ā``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from .attention import fuse_heads

#: Bytes one block of rows may take (all heads): the chunked path's working memory per step. Blocks that stay
#: in the cache measured fastest: DINOv2-S at 518² (1,370 tokens, one thread, CPU time over a bare forward),
#: the rollout method 0.49 / 0.45 / 0.36 / 0.45 and the relevance method 0.98 / 0.83 / 0.68 / 0.92 with
#: 32 / 4 / 2 / 1 MB blocks (1,020 / 127 / 63 / 31 rows); 2 MB also keeps a relevance ~90 MB lower. Session 13
#: (AMX host, 2 threads, one relevance step of 6 heads, CPU s a layer): at 1,370 tokens 1 / 1.5 / 2 / 3 / 4 MB
#: blocks 0.046 / 0.042 / 0.041 / 0.039 / 0.041; at 4,097 tokens 1.5 / 3 / 4.5 / 6 MB 0.48 / 0.38 / 0.36 /
#: 0.57 (2 MB, 21 rows: 0.44); at 16,385 tokens 5 / 10 / 21 / 32 / 48 rows 15.6 / 10.9 / 8.8 / 8.3 / 8.0: a
#: block of few rows makes thin matrix products, so a block has at least :data:`MIN_BLOCK_ROWS` rows.
BLOCK_BYTES = 4 << 20

#: The fewest rows a block has, whatever its bytes (above).
MIN_BLOCK_ROWS = 32

#: Bytes one block of rows may take when heads are fused (rollout, one layer's fused attention) from q and k: no
#: gradient block sits beside it, and on two threads bigger blocks measured faster. DINOv2-S, the rollout method on
#: a ready capture, CPU over a bare forward, 2 threads (session 10): 518², 0.5 / 1 / 2 / 4 / 8 / 16 / 32 MB blocks
#: 0.57 / 0.43 / 0.37 / 0.33 / 0.31 / 0.47 / 0.42 (a second run: 2 MB 0.41, 8 MB 0.38); 896², 2 / 8 / 32 MB
#: 0.89 / 0.72 / 0.74. Relevance's blocks (A and ∇A at once) keep :data:`BLOCK_BYTES`.
FUSED_BLOCK_BYTES = 8 << 20


class Rows:
    """A [..., T, T] matrix given by blocks of rows. Subclasses set ``n`` (T), ``lead`` (leading shape)
    and ``rows``; ``block`` is how many rows one call gives. ``stochastic``: every row sums to 1 by
    construction (a softmax), so a rollout step need not add the rows up."""

    n: int
    lead: tuple[int, ...] = ()
    block: int = 0
    stochastic: bool = False
    mean_of_heads: bool = False

    def rows(self, lo: int, hi: int) -> torch.Tensor:      # [..., hi - lo, T]
        raise NotImplementedError

    def head_rows(self, lo: int, hi: int) -> Optional[torch.Tensor]:
        """[..., H, hi - lo, T] whose mean over heads is ``rows(lo, hi)``, where ``mean_of_heads`` (a product
        with it then needs no [c, T] mean: v·mean_h(M_h) = Σ_h (v/H)·M_h)."""
        raise NotImplementedError

    def prepared(self) -> "Rows":
        """This source ready for a pass over all its blocks: what every block shares made once (a :class:`QK`
        with its row log-sum-exp: keys with a column of ones, so a block is one product, below). A new object:
        the capture's own, which threads share, is never changed."""
        return self

    def spans(self):
        step = max(1, self.block or self.n)
        for lo in range(0, self.n, step):
            yield lo, min(self.n, lo + step)


def block_rows_for(n: int, heads: int, itemsize: int = 4, budget: Optional[int] = None) -> int:
    """How many query rows of an n-token attention with ``heads`` heads fit in ``budget`` bytes
    (default :data:`BLOCK_BYTES`), at least :data:`MIN_BLOCK_ROWS` (and at most n)."""
    return max(1, min(n, max(MIN_BLOCK_ROWS, (budget or BLOCK_BYTES) // max(1, heads * n * itemsize))))


@dataclass(eq=False)
class Dense(Rows):
    """A matrix in memory, ``m`` [..., T, T]: one block (``block`` may split it, for tests)."""

    m: torch.Tensor
    block: int = 0

    def __post_init__(self):
        self.n = self.m.shape[-1]
        self.lead = tuple(self.m.shape[:-2])

    def rows(self, lo, hi):
        return self.m[..., lo:hi, :]


@dataclass(eq=False)
class QK(Rows):
    """One dense attention layer from what it computes attention with, O(T·d):

    ``q``, ``k`` [H, T, d] (as the model's attention function received them), ``scaling`` (the
    model's, usually d^-½), ``bias`` [H, T, T] or None (an additive mask: BEiT's relative position
    bias, built by the model itself), ``v`` [H, T, d] and ``dout`` [H, T, d] (d score / d head output)
    when gradients are asked for; ``lse`` [H, T] or None: each row's log-sum-exp of the scores, as the
    forward's attention kernel computed it, so a row block is exp(scores − lse) with no softmax passes.
    """

    q: torch.Tensor
    k: torch.Tensor
    scaling: float
    bias: Optional[torch.Tensor] = None
    v: Optional[torch.Tensor] = None
    dout: Optional[torch.Tensor] = None
    block: int = 0
    lse: Optional[torch.Tensor] = None
    stochastic = True
    #: [H, d + 1, T]: the keys with a row of ones below (``prepared``), so that [q·s, −lse]·[k; 1] is a block's
    #: exponent in one product: no pass writing the −lse shift into the block before the product (baddbmm
    #: copies its input first). One 6-head block, 2 threads, the product and exp: 3.14 -> 2.37 ms at 1,370
    #: tokens (255 rows), 1.81 -> 1.18 ms at 4,097 (42 rows).
    kaug: Optional[torch.Tensor] = field(default=None, repr=False)

    def __post_init__(self):
        self.n = self.q.shape[-2]
        self.lead = (self.q.shape[0],)
        if not self.block:
            self.block = block_rows_for(self.n, self.q.shape[0], self.q.element_size())

    # tensor-like facts the methods read off an attention ([H, T, T])
    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.q.shape[0], self.n, self.n))

    @property
    def dtype(self) -> torch.dtype:
        return self.q.dtype

    @property
    def device(self) -> torch.device:
        return self.q.device

    def prepared(self) -> "QK":
        if self.lse is None or self.bias is not None or self.kaug is not None:
            return self
        ones = self.k.new_ones(self.k.shape[:-1] + (1,))                               # [H, T, 1]
        return replace(self, kaug=torch.cat([self.k, ones], -1).transpose(1, 2).contiguous())   # [H, d + 1, T]

    def rows(self, lo, hi):
        """softmax(q[lo:hi]·kᵀ·s + bias[lo:hi]) per head: [H, hi - lo, T] (the model's own arithmetic)."""
        ql = self.q[:, lo:hi]                                                          # [H, c, d]
        if self.kaug is not None:
            # exp([q·s, −lse]·[k; 1]) = exp(q·kᵀ·s − lse): the shift inside the product
            qa = torch.cat([ql * self.scaling, -self.lse[:, lo:hi, None]], -1)         # [H, c, d + 1]
            return torch.bmm(qa, self.kaug).exp_()                                     # [H, c, T]
        if self.lse is not None:
            # exp(q·kᵀ·s + bias − lse): the softmax with the forward's row normaliser, in one pass
            # (baddbmm broadcasts a [H, c, 1] shift as it writes; an expanded [H, c, T] view of it measured 3×
            # slower, 0.09 s against 0.03 s for 1,020 rows at 1,370 tokens)
            shift = -self.lse[:, lo:hi, None]                                          # [H, c, 1]
            if self.bias is not None:
                shift = self.bias[:, lo:hi] + shift                                    # [H, c, T]
            w = torch.baddbmm(shift, ql, self.k.transpose(1, 2), alpha=self.scaling)  # [H, c, T]
            return w.exp_()
        if self.bias is not None:
            w = torch.baddbmm(self.bias[:, lo:hi], ql, self.k.transpose(1, 2), alpha=self.scaling)   # [H, c, T]
        else:
            # the scaling as BLAS's alpha while the product is written (as fast_eager does)
            w = torch.baddbmm(ql.new_zeros(()).expand(1, 1, 1), ql, self.k.transpose(1, 2), beta=0,
                              alpha=self.scaling)                                      # [H, c, T]
        if w.requires_grad:
            return torch.softmax(w, -1)
        return torch.softmax(w, -1, out=w)                                             # in place: one block less

    def grad_rows(self, lo, hi, dout: Optional[torch.Tensor] = None) -> torch.Tensor:
        """∇A rows: d score / dA[lo:hi] = dO[lo:hi]·Vᵀ, [H, hi - lo, T]."""
        dout = self.dout if dout is None else dout
        if dout is None or self.v is None:
            raise RuntimeError("This capture kept no values or head-output gradients: capture with grads=True.")
        return torch.bmm(dout[:, lo:hi], self.v.transpose(1, 2))

    def full(self) -> torch.Tensor:
        """The whole [H, T, T] attention (T² memory: for small inputs and tests)."""
        return self.rows(0, self.n)


@dataclass(eq=False)
class Fused(Rows):
    """Heads fused (mean / max / min) block by block: [H, T, T] source -> [T, T]."""

    src: Rows
    how: str

    def __post_init__(self):
        self.n, self.lead, self.block = self.src.n, self.src.lead[:-1], self.src.block
        if isinstance(self.src, QK):      # rows recomputed from q, k: blocks of FUSED_BLOCK_BYTES
            self.block = block_rows_for(self.n, self.src.q.shape[0], self.src.q.element_size(), FUSED_BLOCK_BYTES)
        self.stochastic = self.mean_of_heads = self.src.stochastic and self.how == "mean"

    def prepared(self):
        return replace(self, src=self.src.prepared())

    def rows(self, lo, hi):
        return fuse_heads(self.src.rows(lo, hi), self.how, dim=-3)                      # [..., c, T]

    def head_rows(self, lo, hi):
        return self.src.rows(lo, hi)                                                   # [..., H, c, T]


@dataclass(eq=False)
class Head(Rows):
    """One head ``h`` of an [H, T, T] source."""

    src: Rows
    h: int

    def __post_init__(self):
        self.n, self.lead, self.block = self.src.n, self.src.lead[:-1], self.src.block

    def prepared(self):
        return replace(self, src=self.src.prepared())

    def rows(self, lo, hi):
        return self.src.rows(lo, hi).select(-3, self.h)                                # [..., c, T]


@dataclass(eq=False)
class GradWeighted(Rows):
    """Chefer et al. 2021 eq. 5, Ā = E_h[(∇A ⊙ A)⁺], block by block: from an attention ``a`` and its
    gradient ``g`` (sources of [..., H, T, T]; ``g`` None: ``a`` is a :class:`QK` holding dO and V)."""

    a: Rows
    g: Optional[Rows] = None
    mean_of_heads = True

    def __post_init__(self):
        self.n, self.lead, self.block = self.a.n, self.a.lead[:-1], self.a.block

    def prepared(self):
        return replace(self, a=self.a.prepared())

    def rows(self, lo, hi):
        return self.head_rows(lo, hi).mean(-3)                                         # [..., c, T]

    def head_rows(self, lo, hi):
        """(∇A ⊙ A)⁺ per head, [..., H, c, T]: in place on a freshly computed ∇A block."""
        a = self.a.rows(lo, hi)
        prod = self.a.grad_rows(lo, hi).mul_(a) if self.g is None else self.g.rows(lo, hi) * a
        return prod.clamp_(min=0)


def _times(w: torch.Tensor, m: Rows, lo: int, hi: int, heads: bool) -> torch.Tensor:
    """w·M[lo:hi]: ``w`` [..., c] -> [..., 1, T]; with ``heads`` through ``head_rows`` (the mean of the
    heads taken after the product, Σ_h (w/H)·M_h, not as a [c, T] matrix)."""
    if heads:
        h = m.head_rows(lo, hi)                                                        # [..., H, c, T]
        return ((w.to(h.dtype) / h.shape[-3])[..., None, None, :] @ h).sum(-3)         # [..., 1, T]
    a = m.rows(lo, hi)                                                                 # [..., c, T]
    return w.to(a.dtype)[..., None, :] @ a


def pull(v: torch.Tensor, m: Rows) -> torch.Tensor:
    """v·M: ``v`` [..., T], M's rows [..., c, T] block by block -> [..., T]."""
    m = m.prepared()
    out = None
    heads = m.mean_of_heads
    for lo, hi in m.spans():
        live = _live(v, lo, hi)
        if live is None:
            continue
        part = _times(v[..., live[0]:live[1]], m, *live, heads)                        # [..., 1, T]
        out = part if out is None else out.add_(part)
    return v.new_zeros(v.shape) if out is None else out[..., 0, :]


def _live(v: torch.Tensor, lo: int, hi: int) -> Optional[tuple[int, int]]:
    """The rows of ``lo:hi`` that a row vector ``v`` [..., T] weighs, narrowed to its first and last
    non-zero entry (None: all zero). Rows weighed by 0 add nothing to v·M, so they are not computed:
    the top layer of a rollout or relevance pulled down from one query computes that query's row only."""
    nz = v[..., lo:hi].reshape(-1, hi - lo).ne(0).any(0).nonzero()                    # [k, 1]
    if not len(nz):
        return None
    return lo + int(nz[0, 0]), lo + int(nz[-1, 0]) + 1


def _offdiag(a: torch.Tensor, lo: int) -> torch.Tensor:
    """[..., c, T] bool: entries of rows ``lo:lo+c`` off the diagonal."""
    c, t = a.shape[-2:]
    return torch.arange(t, device=a.device)[None, :] != torch.arange(lo, lo + c, device=a.device)[:, None]


def kth_offdiagonal(m: Rows, k: int) -> torch.Tensor:
    """The k-th smallest off-diagonal entry of M (1-based, per leading index): [*lead].

    One block: ``kthvalue``. Several: an exact radix select over the float32 bits of the non-negative
    entries (high 16 bits, then low 16 bits among the entries in the chosen high bin): two passes.
    """
    spans = list(m.spans())
    if len(spans) == 1:
        a = m.rows(0, m.n)
        off = _offdiag(a, 0)
        vals = a[..., off]                                                             # [..., T(T-1)]
        return vals.kthvalue(k, dim=-1).values
    lead = int(torch.Size(m.lead).numel())
    ks = torch.full((lead,), k, dtype=torch.long)
    prefix, dtype = None, torch.float32
    for shift in (16, 0):
        counts = torch.zeros(lead, 1 << 16, dtype=torch.long)
        for lo, hi in spans:
            a = m.rows(lo, hi)
            dtype = a.dtype
            a = a.float()
            bits = (a + 0.0).reshape(lead, -1).view(torch.int32)                      # -0.0 -> +0.0; [lead, c·T]
            keep = _offdiag(a, lo).reshape(-1)[None, :].expand_as(bits)
            if prefix is not None:
                keep = keep & ((bits >> 16) == prefix[:, None])
            digit = (bits >> shift) & 0xFFFF
            idx = (torch.arange(lead)[:, None] * (1 << 16) + digit)[keep]
            counts += torch.bincount(idx, minlength=lead << 16).view(lead, 1 << 16)
        cum = counts.cumsum(1)
        d = (cum < ks[:, None]).sum(1)                                                 # the bin holding the k-th
        ks = ks - torch.where(d > 0, cum.gather(1, (d - 1).clamp_min(0)[:, None])[:, 0], 0)
        prefix = d if prefix is None else (prefix << 16) | d
    return prefix.to(torch.int32).view(torch.float32).reshape(m.lead).to(dtype)


def rollout_row(v: torch.Tensor, m: Rows, discard_ratio: float = 0.0) -> torch.Tensor:
    """v·Â with Â = ½A + ½I, rows renormalised; A = M (heads fused), after the discard (module doc)."""
    m = m.prepared()
    thresh = None
    if discard_ratio > 0:
        k = int(m.n * (m.n - 1) * discard_ratio)
        if k > 0:
            thresh = kth_offdiagonal(m, k)[..., None, None]                             # [..., 1, 1]
    out, self_part = None, []
    if thresh is None and m.stochastic:
        # rows summing to 1: Â's rows already do (½·1 + ½), and the heads' mean comes after the product
        heads = m.mean_of_heads
        for lo, hi in m.spans():
            live = _live(v, lo, hi)
            if live is not None:
                part = _times(v[..., live[0]:live[1]], m, *live, heads)                # [..., 1, T]
                out = part if out is None else out.add_(part)
        if out is None:
            return 0.5 * v
        return 0.5 * out[..., 0, :] + 0.5 * v.to(out.dtype)
    for lo, hi in m.spans():
        live = _live(v, lo, hi)
        if live is None:                       # rows weighed by 0: nothing to add, and 0 on the diagonal
            self_part.append(v[..., lo:hi])
            continue
        lo2, hi2 = live
        a = m.rows(lo2, hi2)                                                           # [..., c, T]
        if thresh is not None:
            a = a.masked_fill(_offdiag(a, lo2) & (a <= thresh), 0.0)
        w = v[..., lo2:hi2].to(a.dtype) / (0.5 * a.sum(-1) + 0.5).clamp_min(1e-12)    # [..., c]
        part = w[..., None, :] @ a                                                     # [..., 1, T]
        out = part if out is None else out.add_(part)
        self_part += [v[..., lo:lo2].to(a.dtype), w, v[..., hi2:hi].to(a.dtype)]
    return 0.5 * (v.new_zeros(v.shape) if out is None else out[..., 0, :]) + 0.5 * torch.cat(self_part, -1)


def relevance_row(v: torch.Tensor, m: Rows) -> torch.Tensor:
    """v + v·Ā (Chefer et al. 2021, eq. 6 read as a row); ``m`` gives Ā."""
    r = pull(v, m)
    return v.to(r.dtype) + r
