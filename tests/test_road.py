"""ROAD (noisy linear imputation, MoRF / LeRF) and the confidence kept by a map's top pixels, against a hand
computation on a tiny model: the imputation as a dense linear system solved here, the ranking and the
model's own softmax."""
import numpy as np
import pytest
import torch

import attnviz
from attnviz.adapters.classifier import ClassifierAdapter
from attnviz.errors import UsageError
from attnviz.metrics.road import confidence_kept, noisy_linear_impute, road

T = 1


@pytest.fixture(scope="module")
def vit(photo):
    adapter = ClassifierAdapter.tiny("vit")
    cap = attnviz.capture(adapter, photo, size=(16, 24))          # 2 × 3 patches of 8 × 8, 384 pixels
    return adapter, cap, attnviz.explain(adapter, cap, "grad_cam", target=T, layer=0)


def impute_by_hand(x, removed):
    """Each removed pixel = Σ w_q v_q / Σ w_q over its neighbours inside the image (1/6 direct, 1/12 diagonal)."""
    c, h, w = x.shape
    pix = [(i, j) for i in range(h) for j in range(w) if removed[i, j]]
    at = {p: n for n, p in enumerate(pix)}
    A, b = np.eye(len(pix)), np.zeros((len(pix), c))
    for n, (i, j) in enumerate(pix):
        nb = [(i + di, j + dj, 1 / 6 if di == 0 or dj == 0 else 1 / 12)
              for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di or dj) and 0 <= i + di < h and 0 <= j + dj < w]
        total = sum(wt for _, _, wt in nb)
        for qi, qj, wt in nb:
            if (qi, qj) in at:
                A[n, at[qi, qj]] -= wt / total
            else:
                b[n] += wt / total * x[:, qi, qj]
    out = x.copy()
    v = np.linalg.solve(A, b)
    for n, (i, j) in enumerate(pix):
        out[:, i, j] = v[n]
    return out


def test_noisy_linear_imputation_by_hand(vit):
    _, cap, _ = vit
    x = cap.inputs["pixel_values"][0]
    removed = np.random.default_rng(0).random(x.shape[-2:]) < 0.6
    removed[0, :] = True                                           # a border row: fewer neighbours
    got = noisy_linear_impute(x, removed, noise=0.0).numpy()
    np.testing.assert_allclose(got, impute_by_hand(x.double().numpy(), removed), rtol=1e-5, atol=1e-5)
    noisy = noisy_linear_impute(x, removed, noise=0.5, generator=torch.Generator().manual_seed(1)).numpy()
    diff = noisy - got
    assert np.all(diff[:, ~removed] == 0)
    assert abs(diff[:, removed].std() - 0.5) < 0.05


def test_road_morf_and_lerf_by_hand(vit):
    adapter, cap, exp = vit
    x = cap.inputs["pixel_values"][0].double().numpy()
    h, w = x.shape[-2:]
    per_pixel = np.kron(exp.map, np.ones((8, 8)))                  # each pixel its patch's value
    order = np.argsort(-per_pixel.ravel(), kind="stable")
    fractions = (0.25, 0.5, 0.75)
    want = {}
    for name, ranked in (("morf", order), ("lerf", order[::-1])):
        vals = []
        for f in fractions:
            removed = np.zeros(h * w, bool)
            removed[ranked[:round(f * h * w)]] = True
            xi = torch.from_numpy(impute_by_hand(x, removed.reshape(h, w))).float()[None]
            with torch.no_grad():
                vals.append(float(torch.softmax(adapter.model(pixel_values=xi, interpolate_pos_encoding=True).logits, -1)[0, T]))
        want[name] = vals
    got = road(adapter, cap, exp, fractions=fractions, noise=0.0)
    assert got["quantity"] == "probability"
    np.testing.assert_allclose(got["morf"], want["morf"], rtol=1e-4)
    np.testing.assert_allclose(got["lerf"], want["lerf"], rtol=1e-4)
    assert got["morf_mean"] == pytest.approx(np.mean(want["morf"]))
    with pytest.raises(UsageError):
        road(adapter, cap, exp, fractions=(0.5, 1.0))


def test_confidence_kept_by_hand(vit):
    adapter, cap, exp = vit
    x = cap.inputs["pixel_values"]
    h, w = x.shape[-2:]
    order = np.argsort(-np.kron(exp.map, np.ones((8, 8))).ravel(), kind="stable")
    with torch.no_grad():
        full = float(torch.softmax(adapter.model(pixel_values=x, interpolate_pos_encoding=True).logits, -1)[0, T])
        changes = []
        for f in (0.1, 0.5):
            keep = np.zeros(h * w, bool)
            keep[order[:round(f * h * w)]] = True
            xk = x * torch.from_numpy(keep.reshape(1, 1, h, w)).float()
            changes.append(float(torch.softmax(adapter.model(pixel_values=xk, interpolate_pos_encoding=True).logits, -1)[0, T]) - full)
    got = confidence_kept(adapter, cap, exp, fractions=(0.1, 0.5))
    assert got["full"] == pytest.approx(full, rel=1e-5)
    np.testing.assert_allclose(got["change"], changes, rtol=1e-4, atol=1e-7)


def test_deletion_insertion_pools_its_forwards(vit):
    """The four curves (map and random order, deletion and insertion) equal the curves computed one by one, from
    one pool of batched forwards in which the images several curves share (the input, a baseline) appear once."""
    from attnviz.metrics.deletion import curve, deletion_insertion
    adapter, cap, exp = vit
    seen = []
    real = adapter.forward_scores

    def counted(x, inputs):
        seen.append(x.shape[0])
        return real(x, inputs)
    adapter.forward_scores = counted
    try:
        got = deletion_insertion(adapter, cap, exp, steps=6, batch_size=10)
    finally:
        del adapter.forward_scores
    # 6 patches: 4 curves × 7 steps, less the input (all 4 uses: its scores are the capture's) and each
    # baseline's repeat (1 + 1)
    assert sum(seen) == 4 * 7 - 6 and seen[:-1] == [10] * (len(seen) - 1)
    for kind in ("deletion", "insertion"):
        np.testing.assert_allclose(got[kind].values, curve(adapter, cap, exp, kind, steps=6).values, rtol=1e-5)
        np.testing.assert_allclose(got[f"random_{kind}"][0].values,
                                   curve(adapter, cap, exp, kind, steps=6, order="random").values, rtol=1e-5)
