"""ROAD (Remove And Debias) and the confidence kept by a map's top pixels.

ROAD: Rong, Leemann, Borisov, Kasneci & Kasneci 2022, "A Consistent and Efficient Evaluation Strategy for
Attribution Methods", https://arxiv.org/abs/2202.00449. Removing pixels by painting them black leaks the
removal's shape to the model (the mask itself carries class information); ROAD instead fills each removed
pixel by *noisy linear imputation*: its value is the weighted mean of its 8 neighbours (weight 1/6 for the
4 direct ones, 1/12 for the diagonals, normalised over the neighbours inside the image), solved jointly for
all removed pixels as one sparse linear system per image, plus Gaussian noise of standard deviation
``noise`` (in the processor's normalised input units) on the imputed pixels. Two orders: MoRF (most
relevant first: a faithful map makes the quantity fall fast, low mean) and LeRF (least relevant first: it
stays high, high mean), at fractions of the pixels removed (default 10 %, 20 %, ..., 90 %).

Confidence kept (pytorch-grad-cam's confidence-change metrics, in the "keep" form): the map's top fraction
of pixels is kept and every other pixel set to the baseline (the dataset mean: zeros after normalisation);
the change of the quantity from the full image. Close to 0 (or above): the kept pixels carry the evidence.

Conventions shared with :mod:`.deletion`: pixels are ranked by the map's value (a patch map gives each pixel
its patch's value), highest first, ties in row-major order; the quantity is the target's probability when
the family defines one from the scores alone, else its raw score.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import UsageError
from ..types import Capture, Explanation
from .deletion import _quantity, feature_units

#: (row offset, column offset, weight) of the 8 neighbours (Rong et al. 2022, their imputer's weights).
NEIGHBOURS = ((-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6),
              (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12), (1, 1, 1 / 12))
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def noisy_linear_impute(x: torch.Tensor, removed: np.ndarray, *, noise: float = 0.01,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``x`` [C, H, W] with the pixels where ``removed`` [H, W] is true replaced by the solution of
    v_p = Σ_q w_pq v_q / Σ_q w_pq over p's neighbours q in the image (known ones fixed), plus N(0, noise²)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve
    c, h, w = x.shape
    removed = np.asarray(removed, dtype=bool)
    k = int(removed.sum())
    out = x.detach().clone()
    if k == 0:
        return out
    if k == h * w:
        raise UsageError("Noisy linear imputation needs at least one pixel left to impute from.")
    idx = np.full((h, w), -1, dtype=np.int64)
    idx[removed] = np.arange(k)
    pr, pc = np.nonzero(removed)                                            # removed pixels, row-major
    known = x.detach().double().cpu().numpy().reshape(c, h * w)             # [C, H·W]
    total = np.zeros(k)
    rows, cols, vals = [np.arange(k)], [np.arange(k)], [np.ones(k)]
    rhs = np.zeros((k, c))
    for dr, dc, wt in NEIGHBOURS:
        qr, qc = pr + dr, pc + dc
        inside = (qr >= 0) & (qr < h) & (qc >= 0) & (qc < w)
        total[inside] += wt
    for dr, dc, wt in NEIGHBOURS:
        qr, qc = pr + dr, pc + dc
        inside = (qr >= 0) & (qr < h) & (qc >= 0) & (qc < w)
        p = np.nonzero(inside)[0]
        q = idx[qr[p], qc[p]]                                                # -1: a known neighbour
        share = wt / total[p]
        unknown = q >= 0
        rows.append(p[unknown])
        cols.append(q[unknown])
        vals.append(-share[unknown])
        kp = p[~unknown]
        rhs[kp] += share[~unknown, None] * known[:, qr[kp] * w + qc[kp]].T
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(k, k)).tocsc()
    v = np.asarray(spsolve(a, rhs)).reshape(k, c)                            # [k, C]
    v = torch.from_numpy(v).to(out.dtype)
    if noise > 0:
        v = v + noise * torch.randn(v.shape, generator=generator, dtype=torch.float64).to(out.dtype)
    flat = out.reshape(c, h * w)
    flat[:, torch.from_numpy(pr * w + pc)] = v.T.to(out.device)
    return out


def _pixel_order(exp: Explanation, capture: Capture) -> np.ndarray:
    """Pixel indices (row-major) ranked by the map's value, highest first, ties in row-major order."""
    units, importance = feature_units(exp, capture)
    return np.argsort(-importance[units].ravel(), kind="stable")


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    fr = [float(f) for f in fractions]
    if not fr or any(not 0 < f < 1 for f in fr):
        raise UsageError("Fractions must lie strictly between 0 and 1, e.g. 0.1,0.5,0.9.")
    return fr


def road(adapter, capture: Capture, exp: Explanation, *, fractions: Sequence[float] = FRACTIONS,
         noise: float = 0.01, seed: int = 0, target: Optional[int] = None, batch_size: int = 8) -> dict:
    """MoRF and LeRF curves of ``exp`` under noisy linear imputation (module docstring), JSON-ready:
    {"fractions", "morf", "lerf", "morf_mean", "lerf_mean", "quantity", "noise"}."""
    fr = _check_fractions(fractions)
    if target is None:
        target = (exp.target or adapter.resolve_target(capture, None)).index
    x = capture.inputs["pixel_values"].detach().to(adapter.device)           # [1, C, H, W]
    h, w = x.shape[-2:]
    order = _pixel_order(exp, capture)
    g = torch.Generator(device="cpu").manual_seed(seed)
    images = []
    for first in (True, False):                                             # MoRF, then LeRF
        for f in fr:
            n = int(round(f * h * w))
            chosen = order[:n] if first else order[::-1][:n]
            removed = np.zeros(h * w, dtype=bool)
            removed[chosen] = True
            images.append(noisy_linear_impute(x[0], removed.reshape(h, w), noise=noise, generator=g))
    values, quantity = [], "score"
    for s in range(0, len(images), batch_size):
        with torch.inference_mode():
            q, quantity = _quantity(adapter, adapter.forward_scores(torch.stack(images[s:s + batch_size]),
                                                                    capture.inputs).float(), target)
        values.append(q.cpu().numpy())
    v = np.concatenate(values).astype(np.float64)
    morf, lerf = v[:len(fr)], v[len(fr):]
    return {"fractions": fr, "morf": morf.tolist(), "lerf": lerf.tolist(), "morf_mean": float(morf.mean()),
            "lerf_mean": float(lerf.mean()), "quantity": quantity, "noise": noise}


def confidence_kept(adapter, capture: Capture, exp: Explanation, *, fractions: Sequence[float] = (0.1, 0.25, 0.5),
                    target: Optional[int] = None) -> dict:
    """The quantity's change when only the map's top ``fractions`` of pixels are kept (the rest at the dataset
    mean, zeros after normalisation), JSON-ready: {"fractions", "kept", "change", "full", "quantity"}."""
    fr = _check_fractions(fractions)
    if target is None:
        target = (exp.target or adapter.resolve_target(capture, None)).index
    x = capture.inputs["pixel_values"].detach().to(adapter.device)           # [1, C, H, W]
    h, w = x.shape[-2:]
    order = torch.from_numpy(_pixel_order(exp, capture))
    keep = torch.zeros(len(fr), h * w, dtype=torch.bool)
    for i, f in enumerate(fr):
        keep[i, order[:int(round(f * h * w))]] = True
    xb = x * keep.view(len(fr), 1, h, w).to(x)                               # [F, C, H, W]
    with torch.inference_mode():
        scores = adapter.forward_scores(xb, capture.inputs).float()
    # the full image is the capture's own: its scores are the capture's (no forward)
    q, quantity = _quantity(adapter, torch.cat([capture.scores[None].float(), scores]), target)
    q = q.cpu().numpy().astype(np.float64)
    return {"fractions": fr, "kept": q[1:].tolist(), "change": (q[1:] - q[0]).tolist(), "full": float(q[0]),
            "quantity": quantity}
