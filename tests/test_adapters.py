"""Loading, token layout and capture for every classifier family."""
import pytest
import torch

import attnviz
from attnviz.errors import ModelUnavailable

from .conftest import PREFIX


def test_layout_prefix_and_grid(family, photo):
    kind, adapter = family
    cap = attnviz.capture(adapter, photo)
    assert cap.layout.n_prefix == PREFIX[kind]
    assert (cap.layout.rows, cap.layout.cols) == (4, 4)      # 32² input, patch 8
    assert cap.attentions[0].shape[-1] == cap.layout.n_tokens


def test_non_square_input(family, photo):
    kind, adapter = family
    cap = attnviz.capture(adapter, photo, size=(32, 48))
    assert (cap.layout.rows, cap.layout.cols) == (4, 6)
    assert cap.layout.input_size == (32, 48)
    assert cap.attentions[0].shape[-1] == PREFIX[kind] + 24


def test_attention_rows_sum_to_one(family, photo):
    _, adapter = family
    cap = attnviz.capture(adapter, photo, size=(24, 40))
    assert len(cap.attentions) == adapter.n_layers == 2
    for a in cap.attentions:
        assert torch.allclose(a.sum(-1), torch.ones_like(a.sum(-1)), atol=1e-5)
        assert (a >= 0).all()


def test_gradient_reaches_every_layer(family, photo):
    """The score's gradient reaches, in every layer, the attention rows the readout reads (the last layer's
    CLS row gets none on BEiT, whose head reads the patch mean: a whole-tensor sum would hide that)."""
    _, adapter = family
    cap = attnviz.capture(adapter, photo)
    grads = cap.attention_grads(adapter.resolve_target(cap, None).index)
    assert len(grads) == cap.n_layers
    for g, a in zip(grads, cap.attentions):
        assert g.shape == a.shape and torch.isfinite(g).all()
        per_row = g.abs().sum(dim=(0, 2))                                  # [T] gradient mass per query row
        assert (cap.readout * per_row).sum() > 0


def test_attention_gradient_matches_finite_difference(saved_models, photo):
    """d score / d A from the capture equals a central difference through a patched attention."""
    adapter = attnviz.load_model(str(saved_models["vit"]))
    cap = attnviz.capture(adapter, photo)
    t = adapter.resolve_target(cap, None).index
    g = cap.attention_grads(t)[0]                                # layer 0, [H, T, T]
    # the difference runs through transformers' own eager function (patched below), not attnviz_eager
    adapter.model.set_attn_implementation("eager")
    h, i, j = 1, 0, 3
    eps = 1e-3
    layer0 = adapter.token_block(0).attention          # ViTAttention: the module eager attention receives
    import transformers.models.vit.modeling_vit as mv

    orig = mv.eager_attention_forward

    def bumped(delta):
        def fwd(module, q, k, v, mask, **kw):
            out, w = orig(module, q, k, v, mask, **kw)
            if module is layer0:
                w = w.clone()
                w[0, h, i, j] += delta
                out = torch.matmul(w, v).transpose(1, 2).contiguous()
            return out, w
        return fwd

    scores = []
    for d in (eps, -eps):
        mv.eager_attention_forward = bumped(d)
        try:
            with torch.no_grad():
                scores.append(adapter.forward_scores(cap.inputs["pixel_values"], cap.inputs)[0, t].item())
        finally:
            mv.eager_attention_forward = orig
    fd = (scores[0] - scores[1]) / (2 * eps)
    assert abs(fd) > 1e-4, "the bump did not reach the model"
    assert abs(fd - g[h, i, j].item()) < 1e-3 + 1e-2 * abs(fd)


def test_headless_backbone_target(family, photo):
    kind, adapter = family
    cap = attnviz.capture(adapter, photo)
    if "headless" in kind:
        assert [t.kind for t in cap.targets] == ["embedding"]
        assert cap.scores.shape == (1,)
    else:
        assert all(t.kind == "class" for t in cap.targets) and len(cap.targets) == 5
        assert cap.targets[2].label == "class_2"


def test_target_resolution(saved_models, photo):
    adapter = attnviz.load_model(str(saved_models["vit"]))
    cap = attnviz.capture(adapter, photo)
    top = adapter.resolve_target(cap, None)
    assert top.index == int(cap.scores.argmax())
    assert adapter.resolve_target(cap, "CLASS_3").index == 3
    assert adapter.resolve_target(cap, "-1").index == 4
    with pytest.raises(attnviz.UsageError):
        adapter.resolve_target(cap, "7")
    with pytest.raises(attnviz.UsageError):
        adapter.resolve_target(cap, "zebra")


def test_no_safetensors_is_refused(tmp_path, saved_models):
    from attnviz.adapters.classifier import ClassifierAdapter
    a = ClassifierAdapter.tiny("vit")
    a.model.save_pretrained(tmp_path)
    a.processor.save_pretrained(tmp_path)
    # transformers 5 always writes safetensors: swap in a pickle checkpoint by hand.
    (tmp_path / "model.safetensors").unlink()
    torch.save(a.model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelUnavailable, match="safetensors"):
        attnviz.load_model(str(tmp_path))


def test_unknown_or_uncached_hub_id():
    with pytest.raises(ModelUnavailable, match="not in the local cache"):
        attnviz.load_model("nobody-here/no-such-model")


def test_bad_specs(tmp_path):
    with pytest.raises(ModelUnavailable, match="no config.json"):
        attnviz.load_model(str(tmp_path))
    with pytest.raises(ModelUnavailable, match="valid hub id"):
        attnviz.load_model("../../etc/passwd")


def test_unsupported_family(tmp_path):
    import transformers
    cfg = transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    transformers.BertModel(cfg).save_pretrained(tmp_path)
    with pytest.raises(ModelUnavailable, match="does not support"):
        attnviz.load_model(str(tmp_path))


def test_loaded_model_is_eager_eval_and_frozen(family):
    _, adapter = family
    assert adapter.model.config._attn_implementation in ("eager", "attnviz_eager")   # adapters/fast_attention.py
    assert not adapter.model.training
    assert not any(p.requires_grad for p in adapter.model.parameters())


def test_default_model_falls_back_to_demo_offline():
    from attnviz.catalog import load_catalog, resolve
    res = resolve(None)
    cat = load_catalog()
    assert res.name == cat.offline_default
    assert "offline" in res.reason and "not cached" in res.reason


def test_view_box_of_a_shortest_edge_resize_then_centre_crop():
    """The box a 256-shortest-edge resize + 224 centre crop keeps, worked out by hand on a 640×480 image."""
    from types import SimpleNamespace

    from attnviz.tokens.geometry import view_box

    proc = SimpleNamespace(do_center_crop=True, size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224})
    # resize: 480 -> 256, so 640 -> 341.33 -> 341; crop offsets (341-224)//2 = 58, (256-224)//2 = 16;
    # back in original pixels the scale is 640/341 across and 480/256 = 1.875 down.
    left, top = round(58 * 640 / 341), round(16 * 1.875)
    right, bottom = round((58 + 224) * 640 / 341), round((16 + 224) * 1.875)
    assert view_box(proc, (640, 480)) == (left, top, right, bottom) == (109, 30, 529, 450)
    assert view_box(SimpleNamespace(do_center_crop=False), (640, 480)) is None


def test_custom_size_rounds_to_whole_patches_and_sees_the_whole_image(family, photo):
    _, adapter = family
    ph, pw = adapter.patch_size
    inputs = adapter.prepare(photo, size=(2 * ph + ph // 2 - 1, 3 * pw + 1))   # both round down to whole patches
    assert tuple(inputs["pixel_values"].shape[-2:]) == (2 * ph, 3 * pw)
    assert inputs["box"] is None
    layout = adapter.layout(inputs)
    assert (layout.rows, layout.cols) == (2, 3)
