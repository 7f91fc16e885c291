"""``ATTNVIZ_PRECISION=bfloat16``: the model's passes run under torch.autocast, what a capture keeps is
float32, and the maps stay those of float32 (``attnviz/precision.py``).

References here are computed another way: the model run in the test under ``torch.autocast`` with
transformers' own eager attention (not the adapter's ``fast_eager``), and the float32 capture whose maps
the other tests compare with the papers' formulas."""
import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import attnviz
from attnviz import precision
from attnviz.adapters.captioning import CaptionAdapter
from attnviz.adapters.classifier import ClassifierAdapter
from attnviz.adapters.clip import ClipAdapter
from attnviz.adapters.cnn import CnnAdapter
from attnviz.adapters.swin import SwinAdapter
from attnviz.engine.capture import capture_batch, grads_for_batch
from attnviz.errors import UsageError
from attnviz.tokens.chunked import QK

from .conftest import CLASSIFIER_KINDS, CLIP_KINDS, CNN_KINDS

ROOT = Path(__file__).resolve().parents[1]
BF16 = torch.bfloat16


def _tensors(obj, seen=None):
    """Every tensor a capture holds: its fields, tuples, dicts and dataclasses (gates, QK rows) within."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for x in obj:
            yield from _tensors(x, seen)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x, seen)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            if f.name not in ("inputs", "_grad_fn", "_grad_lock"):
                yield from _tensors(getattr(obj, f.name), seen)


def _eager_reference(adapter, attention: bool = True):
    """The adapter's model built again from its config and weights, with transformers' own eager attention
    (not attnviz's fast_eager; ``attention`` False: a CNN, none) and none of attnviz's weight copies: autocast
    casts its weights itself."""
    m = adapter.model
    ref = type(m)(copy.deepcopy(m.config))
    ref.load_state_dict(m.state_dict())
    if attention:
        ref.set_attn_implementation("eager")
    return ref.eval().requires_grad_(False)


def _r(a, b) -> float:
    a, b = (np.asarray(x, dtype=np.float64).ravel() for x in (a, b))
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("kind", CLASSIFIER_KINDS)
def test_a_bfloat16_capture_is_the_models_autocast_forward_kept_in_float32(kind, photo):
    ad = ClassifierAdapter.tiny(kind)
    ad.precision = BF16
    cap = attnviz.capture(ad, photo)
    dtypes = {t.dtype for t in _tensors(cap) if t.is_floating_point()}
    assert dtypes == {torch.float32}
    ref = _eager_reference(ad)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        out = ref(pixel_values=cap.inputs["pixel_values"], output_attentions=True)
    assert out.attentions[0].dtype == BF16                         # the reference really ran in bfloat16
    assert len(cap.attentions) == len(out.attentions)
    for got, want in zip(cap.attentions, out.attentions):
        assert torch.equal(got, want[0].float())                   # the same bfloat16 numbers, widened
    if not ad.headless:
        assert torch.equal(cap.scores, out.logits[0].float())
    # a gradient through the bfloat16 graph comes back float32 and equals autograd on the reference
    t = 1 if cap.scores.numel() > 1 else 0
    x = cap.inputs["pixel_values"].clone().requires_grad_()
    with torch.autocast("cpu", dtype=BF16):
        o = ref(pixel_values=x, output_attentions=True)
    if not ad.headless:
        want = torch.autograd.grad(o.logits[0, t], o.attentions)
        for g, w in zip(cap.attention_grads(t), want):
            assert g.dtype == torch.float32
            torch.testing.assert_close(g, w[0].float(), rtol=0.02, atol=1e-3)


@pytest.mark.parametrize("cls,kind,size", [(CnnAdapter, k, None) for k in CNN_KINDS]
                         + [(SwinAdapter, "swin", None), (SwinAdapter, "swin", (64, 64))])
def test_bfloat16_cnn_and_swin_scores_are_the_autocast_forwards_and_everything_kept_is_float32(cls, kind, size,
                                                                                             photo):
    """Also Swin with more first-stage tokens than ``precision.MAX_TOKENS`` (1,024 here, 3,136 for a real
    Swin-T at 224²): its window attention holds no T×T, so it runs bfloat16 at any size."""
    ad = cls.tiny(kind)
    ad.precision = BF16
    if size is not None:
        photo = photo.resize(size)
        assert ad.layout(ad.prepare(photo, size=size)).n_tokens > precision.MAX_TOKENS
    cap = attnviz.capture(ad, photo, size=size) if size else attnviz.capture(ad, photo)
    assert {t.dtype for t in _tensors(cap) if t.is_floating_point()} == {torch.float32}
    ref = _eager_reference(ad, attention=cls is SwinAdapter)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        logits = ref(pixel_values=cap.inputs["pixel_values"]).logits
    assert logits.dtype == BF16
    torch.testing.assert_close(cap.scores, logits[0].float(), rtol=0, atol=0)
    method = "grad_cam" if cap.stages else "relevance"
    got = attnviz.explain(ad, cap, method).map
    ad32 = copy.copy(ad)
    ad32.precision = torch.float32
    want = attnviz.explain(ad32, attnviz.capture(ad32, photo, size=size) if size else attnviz.capture(ad32, photo),
                           method).map
    assert _r(got, want) > 0.95        # a tiny random model (a regnet-y gives 0.978); the trained demo ViT's bound is 0.999


@pytest.fixture(scope="module")
def demo_vit():
    return attnviz.load_model(str(ROOT / "models" / "demo-vit-shapes"))


@pytest.fixture(scope="module")
def scene():
    return Image.open(ROOT / "assets" / "scene_red-triangle_yellow-cross.png").convert("RGB")


def test_a_trained_vits_maps_in_bfloat16_are_its_float32_maps(demo_vit, scene):
    """The trained demo ViT (real, peaked attention): float32 and bfloat16 captures of one image give the same
    top class and maps that correlate at r > 0.999 (attention of one layer > 0.99), yet not the same bits."""
    c32 = attnviz.capture(demo_vit, scene)
    bf = copy.copy(demo_vit)
    bf.precision = BF16
    c16 = attnviz.capture(bf, scene)
    assert int(c16.scores.argmax()) == int(c32.scores.argmax())
    assert not torch.equal(c16.scores, c32.scores)                 # it did run in bfloat16
    torch.testing.assert_close(c16.scores, c32.scores, rtol=0.02, atol=0.05)
    for method, floor in (("rollout", 0.999), ("relevance", 0.999), ("grad_rollout", 0.999),
                          ("grad_cam", 0.999), ("attention", 0.99)):
        assert _r(attnviz.explain(bf, c16, method).map, attnviz.explain(demo_vit, c32, method).map) > floor, method


@pytest.mark.parametrize("path", ("full", "rows"))
def test_a_high_norm_patch_token_does_not_move_the_bfloat16_maps(demo_vit, scene, path):
    """Real trained ViTs grow a few patch tokens with norms 10-100× the others (Darcet et al. 2024, "Vision
    Transformers Need Registers": their norm sits in a few channels, Sun et al. 2024 "Massive activations");
    the demo ViT does not, so one is made here: four channels of a patch token's residual stream raised by
    50 times the stream's standard deviation after the first block, the same in both precisions (a whole token
    scaled would change nothing after the next LayerNorm). The maps for float32's top class stay those of
    float32 (r > 0.999), the probabilities within 0.03: on the full path, and on the chunked path (what
    bfloat16 takes above 400 tokens: its flash kernel in bfloat16, rows recomputed from the kept q, k, lse)
    against float32's full path."""
    def outlier(module, args, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()                   # [1, T, D]
        bump = 50.0 * float(h.detach().std())
        h[:, 7, :4] += bump
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h
    bf = copy.copy(demo_vit)
    bf.precision = BF16
    bf.attention_path = path
    handle = demo_vit.token_block(0).register_forward_hook(outlier)
    try:
        c32, c16 = attnviz.capture(demo_vit, scene), attnviz.capture(bf, scene)
    finally:
        handle.remove()
    plain = attnviz.capture(demo_vit, scene)
    assert (c32.attentions[1] - plain.attentions[1]).abs().max() > 0.05      # the outlier did change attention
    assert isinstance(c16.attentions[0], QK) == (path == "rows")
    t = int(c32.scores.argmax())
    p32, p16 = torch.softmax(c32.scores, -1), torch.softmax(c16.scores, -1)
    assert float((p32 - p16).abs().max()) < 0.03
    for method in ("rollout", "relevance", "grad_rollout", "attention"):
        assert _r(attnviz.explain(bf, c16, method, t).map, attnviz.explain(demo_vit, c32, method, t).map) > 0.999, method


def test_a_bfloat16_batch_gives_each_image_its_own_bfloat16_capture(demo_vit, scene, photo):
    bf = copy.copy(demo_vit)
    bf.precision = BF16
    images = [scene, photo.resize(scene.size), scene.transpose(Image.FLIP_LEFT_RIGHT)]
    inputs = [bf.prepare(im) for im in images]
    batch = capture_batch(bf, inputs, grads=True)
    targets = [int(c.scores.argmax()) for c in batch]
    grads_for_batch(batch, targets)
    for inp, cap, t in zip(inputs, batch, targets):
        alone = bf.capture(inp)
        for a, b in zip(cap.attentions, alone.attentions):
            assert a.dtype == torch.float32
            torch.testing.assert_close(a, b, rtol=0.02, atol=2e-3)
        got = attnviz.explain(bf, cap, "relevance", t).map
        assert _r(got, attnviz.explain(bf, alone, "relevance", t).map) > 0.999


def test_clip_image_and_text_maps_in_bfloat16(clip_dirs):
    ad = attnviz.load_model(str(ROOT / "models" / "demo-clip-shapes"))
    img = Image.open(ROOT / "assets" / "scene_red-square_magenta-triangle.png").convert("RGB")
    texts = ["a red square", "a blue circle"]
    c32 = attnviz.capture(ad, img, texts=texts)
    bf = copy.copy(ad)
    bf.precision = BF16
    c16 = attnviz.capture(bf, img, texts=texts)
    assert {t.dtype for t in _tensors(c16) if t.is_floating_point()} == {torch.float32}
    assert not torch.equal(c16.scores, c32.scores)
    for method in ("relevance", "clip_similarity", "text_relevance"):
        assert _r(attnviz.explain(bf, c16, method, 0).map, attnviz.explain(ad, c32, method, 0).map) > 0.99, method


def test_text_generating_families_stay_float32(monkeypatch):
    monkeypatch.setenv("ATTNVIZ_PRECISION", "bfloat16")
    assert ClassifierAdapter.tiny("vit").precision == BF16
    assert ClipAdapter.tiny(CLIP_KINDS[0]).precision == BF16
    assert CaptionAdapter.tiny("blip").precision == torch.float32


def _sdpa_reference(adapter):
    """The adapter's model built again with transformers' own SDPA attention function, wrapped to keep the
    q and k each layer's attention received (in the dtype autocast gave them)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    seen = []

    def recording_sdpa(module, query, key, value, attention_mask, **kw):
        seen.append((query.detach(), key.detach()))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kw)
    transformers.AttentionInterface.register("test_recording_sdpa", recording_sdpa)
    ref = _eager_reference(adapter, attention=False)
    ref.set_attn_implementation("test_recording_sdpa")
    return ref, seen


@pytest.mark.parametrize("kind", ("vit", "deit", "beit", "dinov2", "dinov2-registers"))
def test_a_bfloat16_chunked_capture_is_transformers_sdpa_under_autocast(kind, photo):
    """The chunked path (large inputs) in bfloat16: the recorder's flash kernel gives the scores of the model's
    own SDPA forward under autocast bit for bit (BEiT's relative position bias rounded as autocast rounds it),
    the q and k kept are that forward's, widened to float32, and the maps are float32's (full path: the
    papers' arithmetic) within bfloat16's rounding."""
    ad = ClassifierAdapter.tiny(kind)
    ref32 = copy.copy(ad)
    ad.precision = BF16
    ad.attention_path = "rows"
    inputs = ad.prepare(photo)
    cap = ad.capture(inputs, grads=True)
    assert isinstance(cap.attentions[0], QK)
    assert {t.dtype for t in _tensors(cap) if t.is_floating_point()} == {torch.float32}
    ref, seen = _sdpa_reference(ad)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        out = ref(pixel_values=inputs["pixel_values"])
    assert seen[0][0].dtype == BF16 and len(seen) == len(cap.attentions)
    assert torch.equal(cap.scores, out.logits[0].float())
    for rows, (q, k) in zip(cap.attentions, seen):
        assert torch.equal(rows.q, q[0].float()) and torch.equal(rows.k, k[0].float())
        # each row recomputed as exp(q·kᵀ·s + bias − lse) with the kernel's log-sum-exp is a softmax
        torch.testing.assert_close(rows.full().sum(-1), torch.ones(rows.shape[:2]), rtol=0, atol=2e-4)
    c32 = ref32.capture(inputs, grads=True)
    assert not isinstance(c32.attentions[0], QK) and not torch.equal(cap.scores, c32.scores)
    for method in ("rollout", "relevance", "grad_rollout", "attention"):
        assert _r(attnviz.explain(ad, cap, method, 0).map, attnviz.explain(ref32, c32, method, 0).map) > 0.99, method


def test_bfloat16_checkpointed_blocks_recompute_the_same_bfloat16_forward(photo):
    """A checkpointed block's recomputation runs under the same autocast: the head-output gradients with every
    block checkpointed equal those with none, bit for bit."""
    ad = ClassifierAdapter.tiny("dinov2")
    ad.precision = BF16
    ad.attention_path = "rows"
    inputs = ad.prepare(photo)
    got = {}
    for mode in (True, False):
        ad.checkpoint_blocks = mode
        got[mode] = ad.capture(inputs, grads=True).grads(1, "head_outputs")
    assert all(g.dtype == torch.float32 for g in got[True])
    assert all(torch.equal(a, b) for a, b in zip(got[True], got[False]))


def test_legrad_keeps_float32_where_it_would_hold_every_layers_attention(photo):
    """LeGrad's own forward returns every layer's T×T attention: above ``MAX_TOKENS`` it runs float32 even when
    the capture beside it took the chunked path in bfloat16."""
    ad = ClassifierAdapter.tiny("vit", image_size=168, patch_size=8)            # 21 × 21 patches + CLS
    ref = copy.copy(ad)
    ad.precision = BF16
    inputs = ad.prepare(photo)
    n = ad.layout(inputs).n_tokens
    ad.attention_path = ref.attention_path = "rows"
    assert n > precision.MAX_TOKENS and ad.reduced_for(n) and not ad.reduced_for(n, recorded=False)
    a = attnviz.explain(ad, ad.capture(inputs, grads=True), "legrad", 0).map
    b = attnviz.explain(ref, ref.capture(inputs, grads=True), "legrad", 0).map
    np.testing.assert_array_equal(a, b)


def test_a_precision_by_any_other_name_is_refused_in_one_sentence(monkeypatch):
    assert precision.parse("bf16") == BF16 and precision.parse(" Float32 ") == torch.float32
    monkeypatch.setenv("ATTNVIZ_PRECISION", "half")
    with pytest.raises(UsageError, match="Precision must be float32 or bfloat16, got 'half'"):
        ClassifierAdapter.tiny("vit")


def test_the_half_precision_weight_copies_follow_the_weights_and_leave_float32_alone(photo):
    """``precision.shadow``: a linear layer's bfloat16 copy is made once, used only under autocast, and made
    again when the weight changes in place (the randomisation check re-initialises blocks)."""
    ad = ClassifierAdapter.tiny("vit")
    x = ad.prepare(photo)["pixel_values"]
    before = ad.model(pixel_values=x).logits
    ad.precision = BF16
    assert torch.equal(ad.model(pixel_values=x).logits, before)         # no autocast: the float32 weights
    lin = next(m for m in ad.model.modules() if isinstance(m, torch.nn.Linear))
    assert "_attnviz_shadow" in lin.__dict__
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        y = ad.model(pixel_values=x).logits
    ref = _eager_reference(ad)
    ref.set_attn_implementation(ad.model.config._attn_implementation)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        assert torch.equal(y, ref(pixel_values=x).logits)                # the same as autocast's own casts
    (key, w16, _), = lin._attnviz_shadow.values()
    assert torch.equal(w16, lin.weight.to(BF16))
    with torch.no_grad():
        lin.weight.mul_(-1.0)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        y2 = ad.model(pixel_values=x).logits
    (key2, w16b, _), = lin._attnviz_shadow.values()
    assert key2 != key and torch.equal(w16b, lin.weight.to(BF16)) and not torch.equal(y2, y)


def test_the_app_says_when_its_model_runs_in_bfloat16(saved_models, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("ATTNVIZ_MODEL", str(saved_models["vit"]))
    seen = {}
    for value in ("bfloat16", "float32"):
        monkeypatch.setenv("ATTNVIZ_PRECISION", value)
        st.cache_resource.clear()
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
        assert not at.exception, [e.value for e in at.exception]
        seen[value] = " | ".join(c.value for c in at.caption)
    st.cache_resource.clear()
    assert "on **CPU** in **bfloat16**" in seen["bfloat16"]
    assert "on **CPU**" in seen["float32"] and "bfloat16" not in seen["float32"]


def test_dense_captures_of_many_tokens_take_the_rows_in_bfloat16_or_stay_float32(photo):
    """Above ``precision.MAX_TOKENS`` a full capture (every layer's T×T weights) runs float32: there bfloat16
    saved no CPU and kept the attention twice (README "Precision"); so in bfloat16 the "auto" path takes the
    rows there (bfloat16, no T×T kept). Below it, the full path in bfloat16. Against a float32 capture of the
    same weights."""
    from attnviz.precision import MAX_TOKENS
    ad = ClassifierAdapter.tiny("vit", image_size=168, patch_size=8)            # 21 × 21 patches + CLS
    ref = copy.copy(ad)
    ad.precision = BF16
    big = ad.prepare(photo)
    n = ad.layout(big).n_tokens
    assert MAX_TOKENS < n < 1024 and not ref.rows_path(n) and ad.rows_path(n)
    many, many32 = ad.capture(big), ref.capture(big)
    assert isinstance(many.attentions[0], QK) and not torch.equal(many.scores, many32.scores)
    for method in ("rollout", "relevance"):
        assert _r(attnviz.explain(ad, many, method, 0).map, attnviz.explain(ref, many32, method, 0).map) > 0.99
    batch = capture_batch(ad, [big, big])                                      # rows: one image at a time
    assert torch.equal(batch[1].scores, many.scores)
    full = copy.copy(ad)
    full.attention_path = "full"                                               # asked for: float32
    got = full.capture(big)
    assert torch.equal(got.scores, many32.scores) and all(
        torch.equal(a, b) for a, b in zip(got.attentions, many32.attentions))
    assert all(torch.equal(a, b) for a, b in zip(capture_batch(full, [big, big])[0].attentions, many32.attentions))
    small = ad.prepare(photo, size=(64, 64))
    assert ad.layout(small).n_tokens <= MAX_TOKENS and not ad.rows_path(ad.layout(small).n_tokens)
    assert not torch.equal(ad.capture(small).scores, ref.capture(small).scores)
