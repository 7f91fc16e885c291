"""Every method on every family, and each attention method against an independent computation."""
import numpy as np
import pytest
import torch

import attnviz
from attnviz.errors import UsageError
from attnviz.methods import METHODS, list_methods
from attnviz.methods.attention import attention_grid

LIGHT = {"integrated_gradients": {"n_steps": 8}, "gradient_shap": {"n_samples": 4}, "smoothgrad": {"nt_samples": 4},
         "lime": {"n_samples": 16}, "kernel_shap": {"n_samples": 16}}


@pytest.fixture
def cap_ns(family, photo):
    """A capture of a non-square (32×48 → 4×6 patches) input."""
    kind, adapter = family
    return kind, adapter, attnviz.capture(adapter, photo, size=(32, 48))


@pytest.mark.parametrize("method", sorted(m.name for m in list_methods("classifier")))
def test_every_method_every_family(method, cap_ns):
    kind, adapter, cap = cap_ns
    e = attnviz.explain(adapter, cap, method, **LIGHT.get(method, {}))
    want = (cap.layout.rows, cap.layout.cols) if e.over == "patches" else cap.layout.input_size
    assert e.map.shape == want and e.map.dtype == np.float32
    assert np.isfinite(e.map).all()
    assert e.signed or (e.map >= -1e-7).all()
    assert (e.target is not None) == METHODS[method].class_specific
    if method in BY_HAND:
        np.testing.assert_allclose(e.map, BY_HAND[method](adapter, cap, e.target.index), rtol=1e-4, atol=1e-6)


def _input_grad(adapter, cap, t):
    """(x, d score_t / d x) from a plain forward and backward of the model."""
    x = cap.inputs["pixel_values"].detach().clone().requires_grad_(True)          # [1, 3, H, W]
    g, = torch.autograd.grad(adapter.forward_scores(x, cap.inputs)[0, t], x)
    return x.detach()[0], g[0]                                                    # [3, H, W] each


def _ablation_by_hand(adapter, cap, t):
    """Each patch set to a black pixel, (0 − mean) / std from the processor's numbers: score drop."""
    lay = cap.layout
    ph, pw = lay.patch_size
    black = (0 - torch.tensor(adapter.processor.image_mean)) / torch.tensor(adapter.processor.image_std)
    x = cap.inputs["pixel_values"]
    with torch.no_grad():
        base = float(adapter.forward_scores(x, cap.inputs)[0, t])
        out = np.zeros((lay.rows, lay.cols), np.float32)
        for r in range(lay.rows):
            for c in range(lay.cols):
                x2 = x.clone()
                x2[0, :, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = black.view(3, 1, 1)
                out[r, c] = base - float(adapter.forward_scores(x2, cap.inputs)[0, t])
    return out


# Maps computed here another way, from the model's own forward and autograd (Simonyan et al.'s saliency:
# max over colour channels of |gradient|; input × gradient summed over channels; ablation by hand)
BY_HAND = {
    "saliency": lambda ad, cap, t: _input_grad(ad, cap, t)[1].abs().amax(0).numpy(),
    "input_x_gradient": lambda ad, cap, t: (lambda x, g: (x * g).sum(0).numpy())(*_input_grad(ad, cap, t)),
    "feature_ablation": _ablation_by_hand,
}


def test_registry_lists_params_and_descriptions():
    names = {m.name for m in list_methods()}
    assert {"attention", "rollout", "relevance", "grad_rollout", "attn_grad", "integrated_gradients", "saliency",
            "input_x_gradient", "gradient_shap", "smoothgrad", "occlusion", "feature_ablation", "lime",
            "kernel_shap", "grad_cam"} <= names
    for m in list_methods():
        assert m.description and m.over in ("patches", "pixels", "tokens", "channels")   # channels: a CNN block's gates
        assert (m.over == "tokens") <= bool(m.families)      # token maps belong to one family
        for p in m.params:
            assert p.help and p.parse(p.default) == p.default


def _fresh_attentions_and_grads(adapter, cap, target):
    """An independent forward + backward (not through Capture) for the hand computations."""
    x = cap.inputs["pixel_values"].clone().requires_grad_(True)
    out = adapter.model(pixel_values=x, output_attentions=True)
    grads = torch.autograd.grad(out.logits[0, target], out.attentions)
    return [a[0].detach().numpy() for a in out.attentions], [g[0].numpy() for g in grads]


def _grid(v, cap):
    return v[cap.layout.n_prefix:].reshape(cap.layout.rows, cap.layout.cols)


def test_attention_method_is_the_softmax_row(saved_models, photo):
    adapter = attnviz.load_model(str(saved_models["deit-teacher"]))
    cap = attnviz.capture(adapter, photo)
    atts, _ = _fresh_attentions_and_grads(adapter, cap, 0)
    e = attnviz.explain(adapter, cap, "attention", layer=1, head=3, query="distillation")
    np.testing.assert_allclose(e.map, _grid(atts[1][3, 1], cap), atol=1e-6)
    e = attnviz.explain(adapter, cap, "attention", layer=0, head="max", query="2,1")
    tok = 2 + 2 * cap.layout.cols + 1
    np.testing.assert_allclose(e.map, _grid(atts[0][:, tok].max(0), cap), atol=1e-6)
    grid = attention_grid(cap, "cls")
    assert grid.shape == (2, 4, 4, 4)
    np.testing.assert_allclose(grid[1, 2], _grid(atts[1][2, 0], cap), atol=1e-6)


def test_rollout_matches_the_formula(saved_models, photo):
    """Abnar & Zuidema: R = Π (0.5·Ā + 0.5·I) row-normalised, computed here in numpy."""
    adapter = attnviz.load_model(str(saved_models["dinov2-registers"]))
    cap = attnviz.capture(adapter, photo)
    atts, _ = _fresh_attentions_and_grads(adapter, cap, 0)
    t = atts[0].shape[-1]
    for fusion, np_fuse in (("mean", np.mean), ("max", np.max), ("min", np.min)):
        r = np.eye(t)
        for a in atts:
            m = 0.5 * np_fuse(a, axis=0) + 0.5 * np.eye(t)
            m = m / m.sum(-1, keepdims=True)
            r = m @ r
        e = attnviz.explain(adapter, cap, "rollout", head_fusion=fusion)
        # DINOv2's head reads concat(CLS, mean of the patches; registers excluded): half each
        out_row = 0.5 * r[0] + 0.5 * r[cap.layout.n_prefix:].mean(0)
        np.testing.assert_allclose(e.map, _grid(out_row, cap), rtol=1e-4, atol=1e-6)
        e = attnviz.explain(adapter, cap, "rollout", head_fusion=fusion, query="cls")
        np.testing.assert_allclose(e.map, _grid(r[0], cap), rtol=1e-4, atol=1e-6)
    # start_layer=1 leaves only the last layer's residual-mixed matrix
    m = 0.5 * atts[1].mean(0) + 0.5 * np.eye(t)
    m /= m.sum(-1, keepdims=True)
    e = attnviz.explain(adapter, cap, "rollout", start_layer=1, query="register2")
    np.testing.assert_allclose(e.map, _grid(m[3], cap), rtol=1e-4, atol=1e-6)


def test_rollout_discard_ratio_drops_weak_links(saved_models, photo):
    adapter = attnviz.load_model(str(saved_models["vit"]))
    cap = attnviz.capture(adapter, photo)
    atts, _ = _fresh_attentions_and_grads(adapter, cap, 0)
    t = atts[0].shape[-1]
    off = ~np.eye(t, dtype=bool)
    for ratio in (0.5, 0.9):
        r, dropped = np.eye(t), []
        for a in atts:                                   # head mean; drop the weakest off-diagonal links
            m = a.mean(0)
            k = int(off.sum() * ratio)
            weakest = np.sort(m[off])[k - 1]             # the k-th smallest off-diagonal weight
            drop = off & (m <= weakest)
            dropped.append(int(drop.sum()))
            m = np.where(drop, 0.0, m)
            m = 0.5 * m + 0.5 * np.eye(t)
            m = m / m.sum(-1, keepdims=True)
            r = m @ r
        assert dropped == [k] * len(atts)                # no ties at the threshold in a real model
        e = attnviz.explain(adapter, cap, "rollout", discard_ratio=ratio)
        np.testing.assert_allclose(e.map, _grid(r[0], cap), rtol=1e-4, atol=1e-6)   # ViT reads CLS
    plain = attnviz.explain(adapter, cap, "rollout").map
    assert np.abs(plain - e.map).max() > 1e-2 * np.abs(plain).max()


def test_relevance_by_hand_on_a_two_layer_model(saved_models, photo):
    """Chefer et al. 2021: R = I; R += Ā_1 R; R += Ā_2 R with Ā = mean_h((∇A ⊙ A)^+)."""
    adapter = attnviz.load_model(str(saved_models["vit"]))
    cap = attnviz.capture(adapter, photo)
    target = 3
    atts, grads = _fresh_attentions_and_grads(adapter, cap, target)
    t = atts[0].shape[-1]
    a1 = np.clip(grads[0] * atts[0], 0, None).mean(0)
    a2 = np.clip(grads[1] * atts[1], 0, None).mean(0)
    r1 = np.eye(t) + a1                       # R after layer 1 (R was I)
    r2 = r1 + a2 @ r1
    e = attnviz.explain(adapter, cap, "relevance", target=target)
    np.testing.assert_allclose(e.map, _grid(r2[0], cap), rtol=1e-4, atol=1e-7)
    assert e.target.index == target
    e = attnviz.explain(adapter, cap, "attn_grad", target=target, layer=0)
    np.testing.assert_allclose(e.map, _grid(a1[0], cap), rtol=1e-4, atol=1e-8)
    # grad_rollout: rollout of Ā
    m1 = (0.5 * a1 + 0.5 * np.eye(t)); m1 /= m1.sum(-1, keepdims=True)
    m2 = (0.5 * a2 + 0.5 * np.eye(t)); m2 /= m2.sum(-1, keepdims=True)
    e = attnviz.explain(adapter, cap, "grad_rollout", target=target)
    np.testing.assert_allclose(e.map, _grid((m2 @ m1)[0], cap), rtol=1e-4, atol=1e-7)


def test_relevance_differs_between_classes_rollout_does_not(saved_models, photo):
    adapter = attnviz.load_model(str(saved_models["vit"]))
    cap = attnviz.capture(adapter, photo)
    r0, r1 = (attnviz.explain(adapter, cap, "relevance", target=t).map for t in (0, 1))
    assert not np.allclose(r0, r1)
    o0, o1 = (attnviz.explain(adapter, cap, "rollout", target=t).map for t in (0, 1))
    np.testing.assert_array_equal(o0, o1)


def test_integrated_gradients_completeness(saved_models, photo):
    adapter = attnviz.load_model(str(saved_models["dinov2"]))
    cap = attnviz.capture(adapter, photo)
    e = attnviz.explain(adapter, cap, "integrated_gradients", target=1, n_steps=256, internal_batch_size=64)
    # f(x) − f(baseline) computed here directly, not taken from the method
    x = cap.inputs["pixel_values"]
    mean = torch.tensor(adapter.processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(adapter.processor.image_std).view(1, 3, 1, 1)
    black = ((0 - mean) / std).expand_as(x)
    with torch.no_grad():
        gap = (adapter.model(pixel_values=x).logits - adapter.model(pixel_values=black).logits)[0, 1].item()
    assert abs(gap) > 1e-4
    assert abs(float(e.map.sum()) - gap) <= 0.02 * abs(gap)
    assert e.meta["relative_delta"] < 0.02


def test_feature_ablation_equals_hand_ablation(saved_models, photo):
    adapter = attnviz.load_model(str(saved_models["vit"]))
    cap = attnviz.capture(adapter, photo)
    e = attnviz.explain(adapter, cap, "feature_ablation", target=2, baseline="mean")
    x = cap.inputs["pixel_values"]
    with torch.no_grad():
        full = adapter.model(pixel_values=x).logits[0, 2].item()
        hidden = x.clone()
        hidden[..., 8:16, 16:24] = 0                 # patch (1, 2) set to the baseline
        drop = full - adapter.model(pixel_values=hidden).logits[0, 2].item()
    assert e.map[1, 2] == pytest.approx(drop, rel=1e-4, abs=1e-6)
    occ = attnviz.explain(adapter, cap, "occlusion", target=2, baseline="mean", window=1)
    np.testing.assert_allclose(occ.map, e.map, rtol=1e-4, atol=1e-6)


def test_grad_cam_refuses_the_last_block(saved_models, photo):
    adapter = attnviz.load_model(str(saved_models["vit"]))
    cap = attnviz.capture(adapter, photo)
    with pytest.raises(UsageError, match="last block"):
        attnviz.explain(adapter, cap, "grad_cam", layer=-1)
    assert attnviz.explain(adapter, cap, "grad_cam", layer=0).map.max() > 0


def test_progress_is_reported(saved_models, photo):
    adapter = attnviz.load_model(str(saved_models["vit"]))
    cap = attnviz.capture(adapter, photo)
    seen = []
    attnviz.explain(adapter, cap, "occlusion", progress=lambda d, t: seen.append((d, t)), batch_size=4)
    assert seen and seen[-1][0] == seen[-1][1] and len(seen) >= 4


@pytest.mark.parametrize("method,params,match", [
    ("rollout", {"head_fusion": "median"}, "head_fusion"),
    ("rollout", {"discard_ratio": "1.5"}, "between"),
    ("attention", {"layer": "9"}, "out of range"),
    ("attention", {"head": "17"}, "out of range"),
    ("attention", {"query": "register0"}, "Unknown query"),
    ("attention", {"query": "9,9"}, "outside"),
    ("relevance", {"bogus": "1"}, "no parameter"),
    ("integrated_gradients", {"n_steps": "ten"}, "expects"),
    ("nope", {}, "Unknown method"),
    ("text_relevance", {}, "does not apply"),
])
def test_bad_parameters_are_usage_errors(saved_models, photo, method, params, match):
    adapter = attnviz.load_model(str(saved_models["vit"]))
    cap = attnviz.capture(adapter, photo)
    with pytest.raises(UsageError, match=match):
        attnviz.explain(adapter, cap, method, **params)
