"""Numeric references for the pixel and patch attributions, computed without attnviz's method code.

Each map is compared with one computed another way: autograd on the model's own logits,
Captum called directly on the same inputs with the same seeds, or a loop written here.
Scores come from the model itself (``model(pixel_values=...).logits``), never from attnviz.
"""
import numpy as np
import pytest
import torch

import attnviz
from attnviz.metrics.deletion import curve

TARGET = 1


def _logits(adapter, x):
    """The classifier's own logits [B, classes] (position embeddings interpolated off the native size)."""
    return adapter.model(pixel_values=x, interpolate_pos_encoding=True).logits


def _black(adapter, x):
    """A black image after the processor's normalisation, written from its mean and std."""
    mean = torch.tensor(adapter.processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(adapter.processor.image_std).view(1, 3, 1, 1)
    return ((0 - mean) / std).expand_as(x).clone()


def _patch_box(r, c, lay):
    """Pixel rows / cols of patch (r, c); the last row / column of patches runs to the input's edge."""
    ph, pw = lay.patch_size
    h, w = lay.input_size
    return (slice(r * ph, h if r == lay.rows - 1 else (r + 1) * ph),
            slice(c * pw, w if c == lay.cols - 1 else (c + 1) * pw))


# --------------------------------------------------------------------------- inputs not a whole number of patches

@pytest.fixture(scope="module")
def ragged(photo):
    """A tiny ViT (patch 8) whose processor gives 36×44 inputs: 4×5 patches and 4 leftover pixel rows / cols."""
    from attnviz.adapters.classifier import ClassifierAdapter
    adapter = ClassifierAdapter.tiny("vit", image_size=36, patch_size=8)
    adapter.processor.size = {"height": 36, "width": 44}
    cap = attnviz.capture(adapter, photo)
    assert cap.layout.input_size == (36, 44) and (cap.layout.rows, cap.layout.cols) == (4, 5)
    return adapter, cap


def test_leftover_pixels_are_unseen_and_join_the_last_patch(ragged):
    from attnviz.methods.captum_common import patch_mask
    adapter, cap = ragged
    x = cap.inputs["pixel_values"]
    y = x.clone()
    y[..., 32:, :], y[..., :, 40:] = 5.0, -5.0                      # only the leftover rows and columns
    with torch.no_grad():
        assert torch.equal(_logits(adapter, x), _logits(adapter, y))   # the patch embedding never reads them
    lay = cap.layout
    hand = np.zeros(lay.input_size, dtype=np.int64)
    for r in range(lay.rows):
        for c in range(lay.cols):
            hand[_patch_box(r, c, lay)] = r * lay.cols + c
    mask = patch_mask(lay, "cpu")
    assert mask.shape == (1, 1, 36, 44)
    np.testing.assert_array_equal(mask[0, 0].numpy(), hand)


def test_feature_ablation_on_a_ragged_input_by_hand(ragged):
    adapter, cap = ragged
    lay = cap.layout
    x = cap.inputs["pixel_values"]
    base = _black(adapter, x)
    hand = np.zeros((lay.rows, lay.cols))
    with torch.no_grad():
        full = float(_logits(adapter, x)[0, TARGET])
        for r in range(lay.rows):
            for c in range(lay.cols):
                xp = x.clone()
                box = _patch_box(r, c, lay)
                xp[..., box[0], box[1]] = base[..., box[0], box[1]]
                hand[r, c] = full - float(_logits(adapter, xp)[0, TARGET])
    e = attnviz.explain(adapter, cap, "feature_ablation", target=TARGET)
    np.testing.assert_allclose(e.map, hand, rtol=1e-4, atol=1e-6)


def test_deletion_of_a_patch_map_on_a_ragged_input_by_hand(ragged):
    adapter, cap = ragged
    lay = cap.layout
    exp = attnviz.explain(adapter, cap, "rollout")
    rng = np.random.default_rng(5)
    exp = type(exp)(**{**exp.__dict__, "map": rng.normal(size=(lay.rows, lay.cols)).astype(np.float32)})
    x = cap.inputs["pixel_values"]
    base = torch.zeros_like(x)                                           # "mean": the dataset mean colour
    order = sorted(range(lay.n_patches), key=lambda i: (-exp.map.ravel()[i], i))
    hand = []
    with torch.no_grad():
        for k in (0, 5, 10, 15, 20):
            img = x.clone()
            for p in order[:k]:
                box = _patch_box(*divmod(p, lay.cols), lay)
                img[..., box[0], box[1]] = base[..., box[0], box[1]]
            hand.append(float(torch.softmax(_logits(adapter, img), -1)[0, TARGET]))
    c = curve(adapter, cap, exp, "deletion", baseline="mean", steps=4, target=TARGET)
    np.testing.assert_allclose(c.values, hand, rtol=1e-4, atol=1e-6)
