"""Each CAM variant against its formula written here on activations and gradients hooked here (ViT tokens with
prefix tokens on a non-square grid, a CNN stage, Swin blocks); Score-CAM and Ablation-CAM against a loop over
the channels written here; several layers, aug_smooth and eigen_smooth the same way."""
import numpy as np
import pytest
import torch

import attnviz
from attnviz.adapters.classifier import ClassifierAdapter
from attnviz.adapters.cnn import CnnAdapter
from attnviz.adapters.swin import SwinAdapter

T = 2          # the class explained (not the top one on purpose: any target)
EPS = 1e-7


def relu(a):
    return np.maximum(a, 0)


def formula(name, A, G):
    """The papers' (and pytorch-grad-cam's) formulas on A, G [C, h, w] (float64)."""
    if name == "grad_cam":
        return relu((G.mean((1, 2))[:, None, None] * A).sum(0))
    if name == "grad_cam_pp":
        aij = G ** 2 / (2 * G ** 2 + A.sum((1, 2))[:, None, None] * G ** 3 + EPS)
        aij = np.where(G != 0, aij, 0)
        return relu(((relu(G) * aij).sum((1, 2))[:, None, None] * A).sum(0))
    if name == "hires_cam":
        return relu((G * A).sum(0))
    if name == "layer_cam":
        return relu((relu(G) * A).sum(0))
    if name == "xgrad_cam":
        w = (G * A).sum((1, 2)) / (A.sum((1, 2)) + EPS)
        return relu((w[:, None, None] * A).sum(0))
    if name == "eigen_cam":
        return relu(first_component(A))
    raise KeyError(name)


def first_component(W):
    """Projection of the positions on the first principal component of the channels, signed like the sum."""
    c, h, w = W.shape
    flat = W.reshape(c, -1).T
    centred = flat - flat.mean(0)
    vt = np.linalg.svd(centred, full_matrices=False)[2]
    p = centred @ vt[0]
    s = flat.sum(1)
    return (p if p @ (s - s.mean()) >= 0 else -p).reshape(h, w)


def hooked(model, module, x, target, to_grid, edit=None):
    """(A [C, h, w], G [C, h, w], logits) from a forward hook on ``module`` and autograd here."""
    kept = []

    def hook(m, a, out):
        t = out[0] if isinstance(out, tuple) else out
        if edit is not None:
            t = edit(t)
            out = (t,) + tuple(out[1:]) if isinstance(out, tuple) else t
        kept.append(t)
        return out
    h = module.register_forward_hook(hook)
    try:
        x = x.clone().requires_grad_(True)
        logits = model(pixel_values=x).logits
    finally:
        h.remove()
    g = torch.autograd.grad(logits[0, target], kept[0], retain_graph=True)[0] if target is not None else None
    A = to_grid(kept[0].detach()).double().numpy()
    return A, (to_grid(g).double().numpy() if g is not None else None), logits.detach()


def token_grid(prefix, rows, cols):
    return lambda t: t[0, prefix:].T.reshape(-1, rows, cols)          # [T, D] -> [D, rows, cols]


@pytest.fixture(scope="module")
def vit(photo):
    """DINOv2 with 4 register tokens (5 prefix tokens) on a non-square 4×6 grid: the layout from the model."""
    adapter = ClassifierAdapter.tiny("dinov2-registers")
    cap = attnviz.capture(adapter, photo, size=(32, 48))
    return adapter, cap


def vit_block(adapter, i):
    return adapter.model.dinov2_with_registers.encoder.layer[i]


@pytest.mark.parametrize("name", ["grad_cam", "grad_cam_pp", "hires_cam", "layer_cam", "xgrad_cam", "eigen_cam"])
def test_gradient_cams_on_vit_tokens(vit, name):
    adapter, cap = vit
    lay = cap.layout
    assert (lay.n_prefix, lay.rows, lay.cols) == (5, 4, 6)
    for layer in (0, 1):
        A, G, _ = hooked(adapter.model, vit_block(adapter, layer), cap.inputs["pixel_values"], T,
                         token_grid(5, 4, 6))
        e = attnviz.explain(adapter, cap, name, target=T, layer=layer)
        want = formula(name, A, G)
        assert want.max() > 0
        np.testing.assert_allclose(e.map, want, rtol=1e-4, atol=1e-5 * want.max())


def test_eigen_smooth_and_several_layers_on_vit(vit):
    adapter, cap = vit
    x = cap.inputs["pixel_values"]
    AG = [hooked(adapter.model, vit_block(adapter, i), x, T, token_grid(5, 4, 6))[:2] for i in (0, 1)]
    A, G = AG[1]
    want = relu(first_component(G * A))                                      # HiResCAM's weighted activations
    got = attnviz.explain(adapter, cap, "hires_cam", target=T, layer=1, eigen_smooth=True).map
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * want.max())

    def scaled(m):
        m = m - m.min()
        return m / m.max()
    want = (scaled(formula("layer_cam", *AG[0])) + scaled(formula("layer_cam", *AG[1]))) / 2
    got = attnviz.explain(adapter, cap, "layer_cam", target=T, layers="0,1").map
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_aug_smooth_is_the_mean_over_flips_and_intensities(vit):
    adapter, cap = vit
    x = cap.inputs["pixel_values"]
    maps = []
    for flip in (False, True):
        for f in (0.9, 1.0, 1.1):
            xa = (x.flip(-1) if flip else x) * f
            m = formula("grad_cam", *hooked(adapter.model, vit_block(adapter, 1), xa, T, token_grid(5, 4, 6))[:2])
            maps.append(m[:, ::-1] if flip else m)
    want = np.mean(maps, 0)
    got = attnviz.explain(adapter, cap, "grad_cam", target=T, layer=1, aug_smooth=True).map
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * want.max())


def test_score_cam_by_a_loop_over_channels(vit):
    adapter, cap = vit
    x = cap.inputs["pixel_values"]
    A, _, _ = hooked(adapter.model, vit_block(adapter, 1), x, None, token_grid(5, 4, 6))
    scores = []
    with torch.no_grad():
        for k in range(A.shape[0]):
            up = torch.nn.functional.interpolate(torch.from_numpy(A[k])[None, None].float(), size=x.shape[-2:],
                                                 mode="bilinear", align_corners=False)[0, 0]
            span = up.max() - up.min()
            mask = (up - up.min()) / span if span > 0 else torch.zeros_like(up)
            scores.append(float(adapter.model(pixel_values=x * mask).logits[0, T]))
    alpha = np.exp(np.array(scores) - max(scores))
    alpha /= alpha.sum()
    want = relu((alpha[:, None, None] * A).sum(0))
    got = attnviz.explain(adapter, cap, "score_cam", target=T, layer=1, batch_size=7).map
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * want.max())


def test_ablation_cam_by_a_loop_over_channels(vit):
    adapter, cap = vit
    x = cap.inputs["pixel_values"]
    block = vit_block(adapter, 0)
    A, _, logits = hooked(adapter.model, block, x, None, token_grid(5, 4, 6))
    y = float(logits[0, T])
    drops = []
    for k in range(A.shape[0]):
        def zero_k(t, k=k):
            t = t.clone()
            t[:, 5:, k] = 0                                                   # channel k of the patch tokens
            return t
        with torch.no_grad():
            yk = float(hooked(adapter.model, block, x, None, token_grid(5, 4, 6), edit=zero_k)[2][0, T])
        drops.append((y - yk) / y)
    want = relu((np.array(drops)[:, None, None] * A).sum(0))
    got = attnviz.explain(adapter, cap, "ablation_cam", target=T, layer=0, batch_size=5).map
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5 * max(want.max(), 1e-6))


@pytest.mark.parametrize("name", ["grad_cam_pp", "hires_cam", "xgrad_cam", "eigen_cam", "ablation_cam"])
def test_cams_on_a_cnn_stage(photo, name):
    adapter = CnnAdapter.tiny("resnet")
    cap = attnviz.capture(adapter, photo)
    stage = adapter.model.resnet.encoder.stages[-2]
    x = cap.inputs["pixel_values"]
    A, G, logits = hooked(adapter.model, stage, x, T, lambda t: t[0])
    if name == "ablation_cam":
        y = float(logits[0, T])
        drops = []
        for k in range(A.shape[0]):
            def zero_k(t, k=k):
                t = t.clone()
                t[:, k] = 0
                return t
            with torch.no_grad():
                drops.append((y - float(hooked(adapter.model, stage, x, None, lambda t: t[0], edit=zero_k)[2][0, T])) / y)
        want = relu((np.array(drops)[:, None, None] * A).sum(0))
    else:
        want = formula(name, A, G)
    e = attnviz.explain(adapter, cap, name, target=T, layer=-2)
    assert e.map.shape == A.shape[1:] and (e.grid.rows, e.grid.cols) == A.shape[1:]
    np.testing.assert_allclose(e.map, want, rtol=1e-3, atol=1e-5 * max(want.max(), 1e-6))


def test_cams_on_swin_blocks(photo):
    """A first-stage block on the patch grid; a last-stage block's tokens each drawn over the 4×4 patches under it."""
    adapter = SwinAdapter.tiny()
    cap = attnviz.capture(adapter, photo, size=(24, 24))
    x = cap.inputs["pixel_values"]
    stages = adapter.model.swin.encoder.layers
    for layer, block, grid, k in ((1, stages[0].blocks[1], 12, 1), (5, stages[2].blocks[1], 3, 4)):
        A, G, _ = hooked(adapter.model, block, x, T, token_grid(0, grid, grid))
        for name in ("layer_cam", "xgrad_cam"):
            want = np.kron(formula(name, A, G), np.ones((k, k)))
            got = attnviz.explain(adapter, cap, name, target=T, layer=layer).map
            assert want.max() > 0
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * want.max())
