"""Per-head summaries of one capture's attention: how far each head looks, how spread out it is.

Both return float64 ``[L, H]`` arrays (layer, head) and never run the model.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import UsageError
from .types import Capture, TokenLayout


def patch_centres(layout: TokenLayout) -> np.ndarray:
    """(y, x) centre of every patch in model-input pixels, row-major: ``[rows·cols, 2]``."""
    ph, pw = layout.patch_size
    r, c = np.meshgrid(np.arange(layout.rows), np.arange(layout.cols), indexing="ij")   # [rows, cols] each
    return np.stack([(r.ravel() + 0.5) * ph, (c.ravel() + 0.5) * pw], axis=1).astype(np.float64)


def mean_attention_distance(capture: Capture) -> np.ndarray:
    """Mean attention distance per head, in model-input pixels: ``[L, H]``.

    For every head and every *patch* query, the attention-weighted mean
    Euclidean distance between the query patch's centre and each key patch's
    centre, averaged over the patch queries. Only attention to patch keys is
    used, renormalised to sum to 1 over the patches (attention to CLS,
    distillation or register tokens has no position, so it is left out
    rather than counted as distance 0). This is the "attention distance" of
    the ViT paper (Dosovitskiy et al. 2021, Fig. 7, https://arxiv.org/abs/2010.11929),
    computed for one image: small values mean a local head, large values a
    head that integrates information from across the image.
    """
    from .methods.hierarchy import layer_rows
    lay = capture.layout
    p = lay.n_prefix
    xy = torch.from_numpy(patch_centres(lay))                                  # [N, 2]
    dist = torch.cdist(xy, xy)                                                 # [N, N] query × key, pixels
    out = []
    for li in range(len(capture.attentions)):
        m = layer_rows(capture, li).prepared()            # [H, T, T] in blocks of rows (the chunked path too)
        total = 0.0
        for lo, hi in m.spans():
            lo_q = max(lo, p)                                                  # patch queries only
            if lo_q >= hi:
                continue
            pp = m.rows(lo_q, hi)[:, :, p:].double().cpu()                     # [H, b, N] patch → patch
            pp = pp / pp.sum(-1, keepdim=True).clamp_min(1e-12)                # renormalise over patch keys
            total = total + (pp * dist[lo_q - p:hi - p]).sum(-1).sum(-1)       # [H] summed over the block
        out.append(total / lay.rows / lay.cols)                                # [H] mean over the patch queries
    return torch.stack(out).numpy()                                            # [L, H]


def attention_entropy(capture: Capture) -> np.ndarray:
    """Mean attention entropy per head, in nats: ``[L, H]``.

    For every query token (prefix and patch tokens alike), −Σ_k a_k log a_k
    over all T keys of its softmax row, averaged over the queries. 0 means
    each query looks at a single token; log T means uniform attention.
    """
    from .methods.hierarchy import layer_rows
    out = []
    for li in range(len(capture.attentions)):
        m = layer_rows(capture, li).prepared()            # [H, T, T] in blocks of rows (the chunked path too)
        total = 0.0
        for lo, hi in m.spans():
            a = m.rows(lo, hi).double().cpu()                                  # [H, b, T]
            ent = -(torch.where(a > 0, a * torch.log(a.clamp_min(1e-300)), torch.zeros_like(a))).sum(-1)  # [H, b]
            total = total + ent.sum(-1)
        out.append(total / capture.layout.n_tokens)                            # [H] mean over the queries
    return torch.stack(out).numpy()                                            # [L, H]


def mass_mask(row: torch.Tensor, share: float) -> torch.Tensor:
    """Boolean mask [N] of the smallest set of entries that holds ``share`` of the row's mass.

    DINO's thresholded attention (Caron et al. 2021, Fig. 3 and its visualisation code,
    https://arxiv.org/abs/2104.14294): sort the weights from largest down, keep entries while the
    cumulative share before them is below ``share``. Ties at the boundary are broken by position.
    """
    if not 0.0 < share <= 1.0:
        from .errors import UsageError
        raise UsageError(f"The share of attention to keep must be in (0, 1], got {share}.")
    w = row.double().clamp_min(0)
    w = w / w.sum().clamp_min(1e-300)
    order = torch.argsort(w, descending=True, stable=True)
    before = torch.cumsum(w[order], 0) - w[order]                                # mass kept before each entry
    keep = torch.zeros_like(w, dtype=torch.bool)
    keep[order[before < share - 1e-7]] = True           # float sums: a share reached within 1e-7 counts
    return keep


def dino_masks(capture: Capture, layer: int = -1, share: float = 0.6, query: str = "output") -> np.ndarray:
    """Per head, the patches holding ``share`` of a query's attention to the patches: bool [H, rows, cols].

    The query is the output's readout by default (CLS for a CLS-pooled model, as in DINO), or any query
    the attention method takes. Attention to prefix tokens (CLS, registers) is left out and the patch part
    renormalised, as DINO's visualisation drops the CLS column.
    """
    from .methods.common import layer_index, query_vector
    from .methods.hierarchy import is_hierarchical, layer_rows
    from .tokens.chunked import pull
    if is_hierarchical(capture) or not capture.attentions:
        raise UsageError("DINO-style head masks need attention from one token to every patch; this model "
                         "has none (Swin attends within windows, a CNN has no attention): pick a ViT-family model.")
    li = layer_index(capture, layer)
    heads = capture.attentions[li].shape[0]
    rows = pull(query_vector(capture, query).expand(heads, -1), layer_rows(capture, li))   # [H, T]
    lay = capture.layout
    patches = rows[:, lay.n_prefix:]                                              # [H, N]
    masks = torch.stack([mass_mask(r, share) for r in patches])                   # [H, N]
    return masks.reshape(-1, lay.rows, lay.cols).numpy()                          # [H, rows, cols]
