"""``fast_eager`` (adapters/fast_attention.py) against transformers' own eager attention.

The references are transformers' functions and models: ViT's ``eager_attention_forward`` called directly,
and each tiny model of the zoo switched back to ``attn_implementation="eager"``.
"""
import numpy as np
import pytest
import torch
import transformers
from transformers.models.vit.modeling_vit import eager_attention_forward as vit_eager

import attnviz
from attnviz.adapters.captioning import CaptionAdapter
from attnviz.adapters.classifier import ClassifierAdapter
from attnviz.adapters.clip import ClipAdapter
from attnviz.adapters.fast_attention import NAME, fast_eager, scores_only
from attnviz.adapters.swin import SwinAdapter
from attnviz.engine import capture_batch

from .conftest import CAPTION_KINDS, CLASSIFIER_KINDS, CLIP_KINDS

KINDS = [("classifier", k) for k in CLASSIFIER_KINDS] + [("clip", k) for k in CLIP_KINDS] + \
        [("captioning", k) for k in CAPTION_KINDS] + [("swin", k) for k in ("swin", "swinv2")]
ADAPTERS = {"classifier": ClassifierAdapter, "clip": ClipAdapter, "captioning": CaptionAdapter, "swin": SwinAdapter}
# Read from transformers 5's modelling code: every attention module of these models calls the attention
# interface with an eager function of the same arithmetic. BLIP, GIT's text side, GPT-2 and Swin V2 do not.
FAST = set(CLASSIFIER_KINDS) | {"clip", "siglip", "swin"}
PROMPTS = ["a red circle", "a blue square", "a cat"]        # different lengths: the text tower pads and masks


class _Module(torch.nn.Module):
    """What an attention module gives the function: its ``training`` flag."""


def _qkv(dtype=torch.float32, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    # [B, T, H, d] -> [B, H, T, d], the non-contiguous view the models pass; d = 8: scaling is not a power of 2
    return [torch.randn(2, 5, 3, 8, generator=g).to(dtype).transpose(1, 2).requires_grad_(grad) for _ in range(3)]


def _mask(dtype=torch.float32):
    m = torch.zeros(2, 1, 5, 5, dtype=dtype)                   # additive, [B, 1, T, T] as transformers builds it
    m[0, :, :, 3:] = torch.finfo(dtype).min                     # image 0: the last two keys are padding
    m[1] = torch.triu(torch.full((5, 5), torch.finfo(dtype).min, dtype=dtype), 1)   # image 1: causal
    return m


@pytest.mark.parametrize("mask", [False, True], ids=["no-mask", "additive-mask"])
def test_function_equals_transformers_eager_without_and_with_grad(mask):
    module = _Module().eval()
    m = _mask() if mask else None
    q, k, v = _qkv()
    with torch.no_grad():                                       # the in-place path
        out, w = fast_eager(module, q, k, v, m, scaling=8 ** -0.5)
        ref_out, ref_w = vit_eager(module, q, k, v, m, scaling=8 ** -0.5)
    assert out.shape == (2, 5, 3, 8) and out.is_contiguous() and w.shape == (2, 3, 5, 5)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-6)
    torch.testing.assert_close(w, ref_w, rtol=0, atol=1e-7)
    if mask:
        assert w[0, :, :, 3:].abs().max() == 0 and w[1].triu(1).abs().max() == 0
    # with autograd: the same values and the same gradients to q, k, v and to the returned weights
    r_out, r_w = torch.randn(2, 5, 3, 8), torch.randn(2, 3, 5, 5)
    grads = []
    for fn in (fast_eager, vit_eager):
        q, k, v = _qkv(grad=True)
        out, w = fn(module, q, k, v, m, scaling=8 ** -0.5)
        w.retain_grad()
        ((out * r_out).sum() + (w * r_w).sum()).backward()
        grads.append([out.detach(), w.detach(), q.grad, k.grad, v.grad, w.grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_dropout_only_in_training_as_transformers_draws_it():
    q, k, v = _qkv()
    module = _Module().train()
    torch.manual_seed(3)
    out, w = fast_eager(module, q, k, v, _mask(), scaling=None, dropout=0.4)
    torch.manual_seed(3)
    ref_out, ref_w = vit_eager(module, q, k, v, _mask(), scaling=None, dropout=0.4)
    assert (w == 0).any() and (w > 1).any()                 # dropped and rescaled: dropout happened
    torch.testing.assert_close(w, ref_w, rtol=0, atol=1e-6)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-6)
    module.eval()
    _, w_eval = fast_eager(module, q, k, v, None, dropout=0.4)
    torch.testing.assert_close(w_eval.sum(-1), torch.ones(2, 3, 5))   # no dropout in eval mode


def test_half_precision_keeps_transformers_steps():
    """bfloat16: transformers rounds the product, scales it, and softmaxes in float32; the same bits here."""
    module = _Module().eval()
    q, k, v = _qkv(torch.bfloat16)
    with torch.no_grad():
        out, w = fast_eager(module, q, k, v, _mask(torch.bfloat16), scaling=8 ** -0.5)
        ref_out, ref_w = vit_eager(module, q, k, v, _mask(torch.bfloat16), scaling=8 ** -0.5)
    assert w.dtype == torch.bfloat16 and torch.equal(w, ref_w) and torch.equal(out, ref_out)


@pytest.fixture
def calls(monkeypatch):
    """Count calls of the registered function (the models look it up by name on every forward)."""
    seen = []

    def counted(module, query, key, value, attention_mask, *a, **kw):
        seen.append(attention_mask is not None)
        return fast_eager(module, query, key, value, attention_mask, *a, **kw)
    monkeypatch.setitem(transformers.AttentionInterface._global_mapping, NAME, counted)
    return seen


def _compare(fast, ref):
    """Scores, every layer's attention (and cross-attention / window attention), every gradient cached."""
    torch.testing.assert_close(fast.scores, ref.scores, rtol=1e-5, atol=1e-5)
    for key, a, b in [("attentions", fast.attentions, ref.attentions),
                      ("cross", fast.cross_attentions or (), ref.cross_attentions or ()),
                      ("windows", fast.extras.get("windows", ()), ref.extras.get("windows", ()))]:
        assert len(a) == len(b), key
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("group,kind", KINDS, ids=[k for _, k in KINDS])
def test_every_family_captures_what_transformers_eager_captures(group, kind, photo, calls):
    adapter = ADAPTERS[group].tiny(kind)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in adapter.model.named_parameters():
            if "relative_position_bias_table" in name:      # BEiT starts it at zero: make its additive bias count
                p.normal_(0.0, 1.0)
    texts = PROMPTS if group == "clip" else None
    fast = attnviz.capture(adapter, photo, texts=texts)
    fast_no_grad = attnviz.capture(adapter, photo, texts=texts, grads=False)    # the in-place path
    # the switch happened exactly where it is the model's own arithmetic
    assert (adapter.model.config._attn_implementation == NAME) == (kind in FAST)
    assert (len(calls) > 0) == (kind in FAST)
    if kind == "clip":
        assert any(calls)                                   # the text tower's causal + padding mask came through
    t = adapter.resolve_target(fast, None).index
    key = "windows" if "windows" in fast.extras else "attentions"
    fast.grads(t, key)
    fast_grads = fast._grads[t]                             # every tensor the family differentiates
    adapter.model.set_attn_implementation("eager")
    calls.clear()
    ref = attnviz.capture(adapter, photo, texts=texts)
    assert not calls
    _compare(fast, ref)
    _compare(fast_no_grad, ref)
    ref.grads(t, key)
    assert fast_grads.keys() == ref._grads[t].keys()
    for key, gs in fast_grads.items():
        for g, h in zip(gs, ref._grads[t][key]):
            scale = max(float(h.abs().max()), 1e-12)
            torch.testing.assert_close(g / scale, h / scale, rtol=1e-5, atol=1e-5)
    # a class-specific map through those gradients agrees too
    np.testing.assert_allclose(attnviz.explain(adapter, fast, "relevance", t).map,
                               attnviz.explain(adapter, ref, "relevance", t).map, rtol=1e-5, atol=1e-6)


def test_batch_engine_captures_with_it(photo, calls):
    """capture_batch runs one forward through fast_eager (one call per layer) and gives each image the
    capture transformers' eager gives it alone."""
    adapter = ClassifierAdapter.tiny("dinov2-registers")
    images = [photo, photo.rotate(90, expand=True), photo.transpose(0)]
    caps = capture_batch(adapter, [adapter.prepare(im) for im in images], grads=False)
    assert len(calls) == adapter.n_layers
    adapter.model.set_attn_implementation("eager")
    for im, cap in zip(images, caps):
        _compare(cap, attnviz.capture(adapter, im, grads=False))


# --------------------------------------------------------------------------- scores only: the fused kernel

@pytest.mark.parametrize("mask", [False, True], ids=["no-mask", "additive-mask"])
def test_scores_only_gives_transformers_eager_output_without_weights(mask):
    module = _Module().eval()
    m = _mask() if mask else None
    q, k, v = _qkv()
    with torch.no_grad(), scores_only():
        out, w = fast_eager(module, q, k, v, m, scaling=8 ** -0.5)
    ref_out, _ = vit_eager(module, q, k, v, m, scaling=8 ** -0.5)
    assert w is None and out.shape == (2, 5, 3, 8) and out.is_contiguous()
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-6)
    out, w = fast_eager(module, q, k, v, m, scaling=8 ** -0.5)           # outside the block: weights again
    assert w is not None


@pytest.fixture
def fused(monkeypatch):
    """Count the calls of PyTorch's fused attention (what ``scores_only`` dispatches to)."""
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counted(*a, **kw):
        seen.append(1)
        return real(*a, **kw)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    return seen


SCORE_KINDS = [(g, k) for g, k in KINDS if g != "captioning"] + [("cnn", "resnet")]


@pytest.mark.parametrize("group,kind", SCORE_KINDS, ids=[k for _, k in SCORE_KINDS])
def test_forward_scores_equal_the_models_own_eager_forward(group, kind, photo, fused):
    """``forward_scores`` without autograd (fused attention where ``fast_eager`` applies) on a batch of
    perturbed images, and with autograd (eager) the gradient of a score to the pixels (what Captum reads),
    against the model switched back to transformers' eager attention."""
    from attnviz.adapters.cnn import CnnAdapter
    adapter = {**ADAPTERS, "cnn": CnnAdapter}[group].tiny(kind)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in adapter.model.named_parameters():
            if "relative_position_bias_table" in name:      # BEiT starts it at zero: make its additive bias count
                p.normal_(0.0, 1.0)
    inputs = adapter.complete_inputs(adapter.prepare(photo, texts=PROMPTS if group == "clip" else None))
    x = inputs["pixel_values"]
    xb = torch.cat([x, x + 0.3 * torch.randn_like(x), torch.zeros_like(x)])          # [3, C, H, W]
    with torch.inference_mode():
        fast = adapter.forward_scores(xb, inputs)
    assert (len(fused) > 0) == (kind in FAST)
    fused.clear()
    xg = x.clone().requires_grad_()
    adapter.forward_scores(xg, inputs)[0, 0].backward()                # with autograd: the eager arithmetic
    assert not fused
    if group != "cnn":
        adapter.model.set_attn_implementation("eager")
    fused.clear()
    with torch.no_grad():
        ref, _, _ = adapter._run(inputs, xb, attentions=False)
    xr = x.clone().requires_grad_()
    adapter._run(inputs, xr, attentions=False)[0][0, 0].backward()
    assert not fused
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    scale = max(float(xr.grad.abs().max()), 1e-12)
    torch.testing.assert_close(xg.grad / scale, xr.grad / scale, rtol=1e-5, atol=1e-5)
