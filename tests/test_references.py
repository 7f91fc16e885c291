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


# --------------------------------------------------------------------------- gradients, by autograd

@pytest.fixture(scope="module")
def vit(photo):
    from attnviz.adapters.classifier import ClassifierAdapter
    adapter = ClassifierAdapter.tiny("vit")
    return adapter, attnviz.capture(adapter, photo)


def _grad(adapter, x, target=TARGET):
    """d logit[target] / d pixels for each image of a batch [B, 3, H, W] (images are independent)."""
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(_logits(adapter, x)[:, target].sum(), x)[0]


def test_saliency_and_input_x_gradient_by_autograd(vit):
    adapter, cap = vit
    x = cap.inputs["pixel_values"]
    g = _grad(adapter, x)[0]                                             # [3, H, W]
    np.testing.assert_allclose(attnviz.explain(adapter, cap, "saliency", target=TARGET).map,
                               g.abs().amax(0).numpy(), rtol=1e-5, atol=1e-9)   # max |∂/∂pixel| over channels
    np.testing.assert_allclose(attnviz.explain(adapter, cap, "input_x_gradient", target=TARGET).map,
                               (x[0] * g).sum(0).numpy(), rtol=1e-4, atol=1e-8)


def test_smoothgrad_by_autograd_on_the_same_noise(vit):
    """SmoothGrad = mean over noisy copies of |∇|, then max over channels. The noise is drawn here as Captum's
    NoiseTunnel draws it: torch.normal from the seeded global generator, 8 copies per batch."""
    adapter, cap = vit
    x = cap.inputs["pixel_values"]
    seed, n, sd = 3, 16, 0.15
    torch.manual_seed(seed)
    noisy = [x.repeat(8, 1, 1, 1) + torch.normal(0, torch.full((8, *x.shape[1:]), sd)) for _ in range(n // 8)]
    mean_abs = torch.cat([_grad(adapter, b).abs() for b in noisy]).mean(0)          # [3, H, W]
    e = attnviz.explain(adapter, cap, "smoothgrad", target=TARGET, nt_samples=n, stdevs=sd, seed=seed)
    np.testing.assert_allclose(e.map, mean_abs.amax(0).numpy(), rtol=1e-4, atol=1e-9)
    # no noise: plain saliency
    e0 = attnviz.explain(adapter, cap, "smoothgrad", target=TARGET, nt_samples=4, stdevs=0.0, seed=seed)
    np.testing.assert_allclose(e0.map, _grad(adapter, x)[0].abs().amax(0).numpy(), rtol=1e-5, atol=1e-9)


def test_gradient_shap_is_expected_gradients_on_the_same_draws(vit):
    """Gradient SHAP (Lundberg & Lee 2017): mean over samples of (x̃ − b)·∇f(b + α(x̃ − b)), x̃ = x + noise.
    Baselines: black, the mean colour (zeros) and uniform noise in [-1, 1) from a generator seeded with the
    seed. The draws are made here in Captum's order: baseline choice (numpy), noise (torch), α (numpy)."""
    adapter, cap = vit
    x = cap.inputs["pixel_values"]
    seed, n, sd = 5, 6, 0.1
    g = torch.Generator().manual_seed(seed)
    bases = torch.cat([_black(adapter, x), torch.zeros_like(x), torch.rand(x.shape, generator=g) * 2 - 1])
    torch.manual_seed(seed)
    np.random.seed(seed)
    pick = np.random.choice(3, n)
    noisy = x.repeat(n, 1, 1, 1) + torch.normal(0, torch.full((n, *x.shape[1:]), sd))
    alpha = torch.tensor(np.random.uniform(0.0, 1.0, n), dtype=x.dtype).view(n, 1, 1, 1)
    b = bases[torch.as_tensor(pick)]
    want = ((noisy - b) * _grad(adapter, b + alpha * (noisy - b))).mean(0).sum(0)   # [H, W], channels summed
    e = attnviz.explain(adapter, cap, "gradient_shap", target=TARGET, n_samples=n, stdevs=sd, seed=seed)
    np.testing.assert_allclose(e.map, want.numpy(), rtol=1e-4, atol=1e-8)
    # the same seed gives the same map (the numpy draws used to go unseeded)
    np.testing.assert_array_equal(e.map, attnviz.explain(adapter, cap, "gradient_shap", target=TARGET,
                                                         n_samples=n, stdevs=sd, seed=seed).map)


def _grad_cam_by_hand(adapter, x, block, prefix, rows, cols, target=TARGET):
    """Selvaraju et al. 2017 on a block's output patch tokens: w_c = mean over patches of ∂y/∂A_c;
    map = ReLU(Σ_c w_c A_c) per patch."""
    kept = []
    hook = block.register_forward_hook(lambda m, a, out: kept.append(out[0] if isinstance(out, tuple) else out))
    try:
        x = x.clone().requires_grad_(True)
        score = _logits(adapter, x)[0, target]
    finally:
        hook.remove()
    tokens = kept[0]                                                     # [1, T, D]
    grad = torch.autograd.grad(score, tokens)[0][0, prefix:]             # [N, D]
    acts = tokens[0, prefix:].detach()                                   # [N, D]
    return torch.relu(acts @ grad.mean(0)).reshape(rows, cols).numpy()


@pytest.mark.parametrize("kind,blocks,reads", [("vit", "vit.layers", 0), ("beit", "beit.layers", 1),
                                               ("dinov2", "dinov2.encoder.layer", 1)])
def test_grad_cam_by_autograd(photo, kind, blocks, reads):
    """Every allowed block by hand; the default is the last block the output reads patch tokens from
    (ViT reads CLS only, so block 0; BEiT's patch mean and DINOv2's CLS + patch mean read the last)."""
    from attnviz.adapters.classifier import ClassifierAdapter
    adapter = ClassifierAdapter.tiny(kind)
    cap = attnviz.capture(adapter, photo)
    lay = cap.layout
    layers = adapter.model.get_submodule(blocks)
    hand = {i: _grad_cam_by_hand(adapter, cap.inputs["pixel_values"], layers[i], lay.n_prefix, lay.rows, lay.cols)
            for i in range(reads + 1)}
    for i in range(reads + 1):
        e = attnviz.explain(adapter, cap, "grad_cam", target=TARGET, layer=i)
        np.testing.assert_allclose(e.map, hand[i], rtol=1e-4, atol=1e-9)
    assert hand[reads].max() > 0
    np.testing.assert_allclose(attnviz.explain(adapter, cap, "grad_cam", target=TARGET).map, hand[reads],
                               rtol=1e-4, atol=1e-9)


# --------------------------------------------------------------------------- perturbations

def test_occlusion_windows_by_hand(vit):
    """A w×w-patch window slides one patch at a time; a patch's value is the mean score drop of the
    windows that cover it (Zeiler & Fergus 2014, as Captum averages overlapping windows)."""
    adapter, cap = vit
    lay = cap.layout
    x = cap.inputs["pixel_values"]
    base = _black(adapter, x)
    with torch.no_grad():
        full = float(_logits(adapter, x)[0, TARGET])
    for w in (2, 3):
        drops, covers = np.zeros((lay.rows, lay.cols)), np.zeros((lay.rows, lay.cols))
        for r0 in range(lay.rows - w + 1):
            for c0 in range(lay.cols - w + 1):
                xo = x.clone()
                ys, xs = slice(r0 * 8, (r0 + w) * 8), slice(c0 * 8, (c0 + w) * 8)
                xo[..., ys, xs] = base[..., ys, xs]
                with torch.no_grad():
                    drop = full - float(_logits(adapter, xo)[0, TARGET])
                drops[r0:r0 + w, c0:c0 + w] += drop
                covers[r0:r0 + w, c0:c0 + w] += 1
        e = attnviz.explain(adapter, cap, "occlusion", target=TARGET, window=w, batch_size=3)
        np.testing.assert_allclose(e.map, drops / covers, rtol=1e-4, atol=1e-6)


def _hand_mask(lay):
    """[1, 1, H, W] patch ids, written pixel by pixel (leftover pixels with the last patch row / column)."""
    ids = torch.zeros(lay.input_size, dtype=torch.long)
    for r in range(lay.rows):
        for c in range(lay.cols):
            ids[_patch_box(r, c, lay)] = r * lay.cols + c
    return ids.view(1, 1, *lay.input_size)


def _per_patch_value(attr, lay):
    """Each patch's value read at its top-left pixel of channel 0 (Captum gives every pixel its feature's)."""
    ph, pw = lay.patch_size
    return attr[0, 0, ::ph, ::pw][: lay.rows, : lay.cols].numpy()


@pytest.mark.parametrize("method", ["lime", "kernel_shap"])
def test_lime_and_kernel_shap_against_captum_called_directly(ragged, method):
    """On the 36×44 input (not a whole number of patches): Captum's Lime (ridge surrogate, alpha 1, as the
    lime package) or KernelShap on the model's logits, the mask built here, the same seed and batches."""
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import KernelShap, Lime
    adapter, cap = ragged
    lay = cap.layout
    x = cap.inputs["pixel_values"]
    seed, n = 4, 64

    def f(batch):
        with torch.no_grad():
            return _logits(adapter, batch)
    torch.manual_seed(seed)
    np.random.seed(seed)
    algo = Lime(f, interpretable_model=SkLearnRidge(alpha=1.0)) if method == "lime" else KernelShap(f)
    attr = algo.attribute(x, baselines=_black(adapter, x), target=TARGET, feature_mask=_hand_mask(lay),
                          n_samples=n, perturbations_per_eval=16)
    e = attnviz.explain(adapter, cap, method, target=TARGET, n_samples=n, seed=seed)
    np.testing.assert_allclose(e.map, _per_patch_value(attr, lay), rtol=1e-4, atol=1e-6)
    assert np.abs(e.map).max() > 0
