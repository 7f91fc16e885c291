"""CNNs (issue 11): tiny random ResNet, ConvNeXt, RegNet-Y, EfficientNet and the project's gated CNN (SE, ECA,
CBAM), saved and reloaded through from_pretrained, each checked against the model's own outputs, Captum called
directly, or a hand computation."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from captum.attr import LayerGradCam

import attnviz
from attnviz.errors import UsageError
from attnviz.methods import list_methods
from attnviz.metrics import cascading_randomisation, deletion_insertion
from attnviz.metrics.deletion import curve

ODD = (70, 75)                                    # not a multiple of any stride
CEIL = {"resnet", "regnet-y", "gated"}            # padded stride-2 convolutions: ⌈H / s⌉ cells; the others ⌊H / s⌋


def own_stage_maps(adapter, x):
    """Each stage's output as the model itself returns it (output_hidden_states), not through attnviz's hooks."""
    out = adapter.model(pixel_values=x, output_hidden_states=True)
    hs = out.hidden_states
    mt = adapter.model.config.model_type
    if mt == "efficientnet":                      # embeddings, then every block; the groups end at 1, 2, … blocks
        cfg, ends, k = adapter.model.config, [], 0
        for r in cfg.num_block_repeats:
            k += math.ceil(cfg.depth_coefficient * r)
            ends.append(k)
        top = adapter.model.efficientnet(pixel_values=x).last_hidden_state
        return [hs[e] for e in ends] + [top]
    return list(hs[1:]) if mt in ("resnet", "regnet", "convnext") else list(hs)


def test_stage_maps_and_grids_come_from_the_model_at_any_size(cnn, photo):
    kind, adapter = cnn
    assert adapter.family == "cnn"
    for size in (None, ODD):
        cap = attnviz.capture(adapter, photo, size=size)
        x = cap.inputs["pixel_values"]
        if size:
            assert tuple(x.shape[-2:]) == ODD and cap.box is None
        with torch.no_grad():
            own = own_stage_maps(adapter, x)
        assert len(cap.stages) == len(own) == len(cap.stage_grids) == cap.n_layers
        h, w = x.shape[-2:]
        for mine, theirs, grid in zip(cap.stages, own, cap.stage_grids):
            torch.testing.assert_close(mine, theirs[0], rtol=1e-5, atol=1e-6)
            s = grid.patch_size[0]
            rnd = math.ceil if kind in CEIL else math.floor
            assert (grid.rows, grid.cols) == tuple(mine.shape[-2:]) == (rnd(h / s), rnd(w / s))
        assert (cap.layout.rows, cap.layout.cols) == (cap.stage_grids[-1].rows, cap.stage_grids[-1].cols)
        assert cap.attentions == () and cap.n_heads == 0
    strides = [g.patch_size[0] for g in cap.stage_grids]
    assert strides[-1] == (8 if kind == "gated" else 32) and strides == sorted(strides)


def test_mean_pooling_is_what_the_head_reads(cnn, photo):
    """A global average pool: d score / d (last stage map) is the same at every cell, and the readout is 1/N."""
    kind, adapter = cnn
    assert adapter.pooling == "mean"
    cap = attnviz.capture(adapter, photo, size=ODD)
    for t in (0, 3):
        g = cap.grads(t, "stages")[-1]                                         # [C, h, w]
        assert g.abs().max() > 0
        torch.testing.assert_close(g, g[:, :1, :1].expand_as(g), rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(cap.readout, torch.full((cap.layout.n_tokens,), 1 / cap.layout.n_tokens))


def test_grad_cam_at_every_stage_is_captums_on_that_stage(cnn, photo):
    kind, adapter = cnn
    cap = attnviz.capture(adapter, photo, size=ODD)
    x = cap.inputs["pixel_values"]
    target = adapter.resolve_target(cap, None).index
    assert attnviz.explain(adapter, cap, "grad_cam").params["layer"] == -1
    for s in range(cap.n_layers):
        e = attnviz.explain(adapter, cap, "grad_cam", target=target, layer=s)
        grid = cap.stage_grids[s]
        assert e.map.shape == (grid.rows, grid.cols) and e.grid == grid and e.meta["stage"] == s
        ref = LayerGradCam(lambda p: adapter.model(pixel_values=p).logits, adapter.token_block(s)).attribute(
            x, target=target, relu_attributions=True)                          # [1, 1, h, w]
        np.testing.assert_allclose(e.map, ref[0, 0].detach().numpy(), rtol=1e-4, atol=1e-6)
    with pytest.raises(UsageError, match="out of range"):
        attnviz.explain(adapter, cap, "grad_cam", layer=cap.n_layers)


def _gated_maps(module, x):
    """A gate block's input and output, by a forward hook on the block (not on its sigmoid)."""
    seen = {}
    h = module.register_forward_hook(lambda m, a, out: seen.update(x=a[0].detach(), y=out.detach()))
    return seen, h


@pytest.mark.parametrize("kind", ["regnet-y", "efficientnet", "gated"])
def test_excitations_are_what_each_gate_multiplies_by(kind, cnn_dirs, photo):
    """SE / ECA: the gate block's output is its input times s per channel, so s_c = <y_c, x_c> / <x_c, x_c>
    from a hook on the block itself; CBAM: both gates by hand from the block's input and weights."""
    from attnviz import gated_cnn
    from transformers.models.efficientnet.modeling_efficientnet import EfficientNetSqueezeExciteLayer
    from transformers.models.regnet.modeling_regnet import RegNetSELayer
    adapter = attnviz.load_model(str(cnn_dirs[kind]))
    blocks = [(n, m) for n, m in adapter.model.named_modules()
              if isinstance(m, (RegNetSELayer, EfficientNetSqueezeExciteLayer, gated_cnn.SqueezeExcitation,
                                gated_cnn.EfficientChannelAttention, gated_cnn.CBAM))]
    with torch.no_grad():                     # a spatial batch norm that is no identity, so the hand computation sees it
        for _, m in blocks:
            if isinstance(m, gated_cnn.CBAM):
                bn = m.spatial[1]
                bn.running_mean.fill_(0.3), bn.running_var.fill_(2.0), bn.weight.fill_(1.5), bn.bias.fill_(-0.2)
    hooks = [_gated_maps(m, None) for _, m in blocks]
    try:
        cap = attnviz.capture(adapter, photo, size=ODD)
    finally:
        for _, h in hooks:
            h.remove()
    channel = [g for g in cap.gates if g.kind == "channel"]
    spatial = [g for g in cap.gates if g.kind == "spatial"]
    assert len(channel) == len(blocks) > 0
    for (name, mod), (seen, _), g in zip(blocks, hooks, channel):
        assert g.name.startswith(name + ".")
        x, y = seen["x"][0], seen["y"][0]                                    # [C, h, w]
        torch.testing.assert_close(g.features, x)
        assert g.value.shape == (x.shape[0],) and (g.value >= 0).all() and (g.value <= 1).all()
        assert (g.grid.rows, g.grid.cols) == tuple(x.shape[-2:])
        assert g.grid.patch_size == cap.stage_grids[g.stage].patch_size
        if isinstance(mod, gated_cnn.CBAM):
            mlp = lambda v: mod.mlp[2](torch.relu(mod.mlp[0](v)))             # noqa: E731
            mc = torch.sigmoid(mlp(x.mean((1, 2), keepdim=True)[None]) + mlp(x.amax((1, 2), keepdim=True)[None]))
            torch.testing.assert_close(g.value, mc.reshape(-1), rtol=1e-5, atol=1e-6)
            xc = x * mc[0]                                                   # [C, h, w]
            pooled = torch.stack([xc.mean(0), xc.amax(0)])[None]             # [1, 2, h, w]
            conv, bn = mod.spatial[0], mod.spatial[1]                       # eq. 3, then the released code's BN
            k = conv.weight.shape[-1]
            z = torch.nn.functional.conv2d(pooled, conv.weight, padding=k // 2)[0, 0]           # [h, w]
            ms = torch.sigmoid((z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias)
            sp = next(s for s in spatial if s.name.startswith(name + "."))
            torch.testing.assert_close(sp.value, ms, rtol=1e-5, atol=1e-6)
            e = attnviz.explain(adapter, cap, "spatial_attention", block=spatial.index(sp))
            np.testing.assert_allclose(e.map, ms.numpy(), rtol=1e-5, atol=1e-6)
            assert e.grid == sp.grid and e.over == "patches"
        else:
            live = (x * x).sum((1, 2)) > 0                                   # a dead (all-zero) channel says nothing
            assert live.float().mean() > 0.5
            s = (y * x).sum((1, 2))[live] / (x * x).sum((1, 2))[live]        # [C_live]
            torch.testing.assert_close(g.value[live], s, rtol=1e-4, atol=1e-5)
    e = attnviz.explain(adapter, cap, "channel_attention", block=0, top_k=3)
    np.testing.assert_array_equal(e.map, channel[0].value.numpy())
    assert e.over == "channels" and e.target is None and len(e.meta["blocks"]) == len(channel)
    first = e.meta["blocks"][0]
    v = channel[0].value.numpy()
    assert [c["channel"] for c in first["emphasised"]] == list(np.argsort(-v, kind="stable")[:3])
    assert first["suppressed"][0]["gate"] == pytest.approx(float(v.min()))
    assert first["mean"] == pytest.approx(float(v.mean()), rel=1e-6)


@pytest.mark.parametrize("kind,method,missing", [
    ("resnet", "channel_attention", "channel attention gates"),
    ("convnext", "channel_attention", "channel attention gates"),
    ("regnet-y", "spatial_attention", "spatial attention gates"),
    ("efficientnet", "spatial_attention", "spatial attention gates"),
    ("gated", "rollout", "attention weights"),
    ("resnet", "relevance", "attention weights"),
    ("convnext", "attention", "attention weights"),
])
def test_what_a_model_lacks_is_one_sentence(kind, method, missing, cnn_dirs, photo):
    adapter = attnviz.load_model(str(cnn_dirs[kind]))
    cap = attnviz.capture(adapter, photo)
    with pytest.raises(UsageError) as err:
        attnviz.explain(adapter, cap, method)
    msg = str(err.value)
    assert msg.startswith(f"Method '{method}' needs {missing}") and f"which {adapter.name} does not have" in msg
    assert msg.count(". ") == 0 and msg.endswith(").") and "\n" not in msg
    assert method not in {m.name for m in list_methods(adapter)}


def test_listing_follows_what_models_provide():
    cnn = {m.name for m in list_methods("cnn")}
    vit = {m.name for m in list_methods("classifier")}
    assert {"channel_attention", "spatial_attention", "grad_cam", "occlusion", "integrated_gradients"} <= cnn
    assert not {"attention", "rollout", "relevance", "grad_rollout", "attn_grad"} & cnn
    assert not {"channel_attention", "spatial_attention"} & vit and "rollout" in vit


def test_feature_ablation_on_a_grid_that_overhangs_the_input(cnn_dirs, photo):
    """Gated CNN at 70×75, stride 8: ⌈70/8⌉ × ⌈75/8⌉ = 9 × 10 cells, the last row and column only partly on the
    image. Each cell's value is the score drop when its pixels become the baseline, computed here by hand."""
    adapter = attnviz.load_model(str(cnn_dirs["gated"]))
    cap = attnviz.capture(adapter, photo, size=ODD)
    assert (cap.layout.rows, cap.layout.cols, cap.layout.patch_size) == (9, 10, (8, 8))
    t = adapter.resolve_target(cap, None).index
    e = attnviz.explain(adapter, cap, "feature_ablation", target=t, baseline="mean")
    x = cap.inputs["pixel_values"]
    with torch.no_grad():
        base = adapter.model(pixel_values=x).logits[0, t]
        want = np.zeros((9, 10), np.float32)
        for r in range(9):
            for c in range(10):
                xb = x.clone()
                xb[..., r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = 0
                want[r, c] = base - adapter.model(pixel_values=xb).logits[0, t]
    np.testing.assert_allclose(e.map, want, rtol=1e-4, atol=1e-5)


def test_deletion_of_an_early_stage_map_uses_that_stages_cells(cnn_dirs, photo):
    from attnviz.metrics.deletion import feature_units
    adapter = attnviz.load_model(str(cnn_dirs["resnet"]))
    cap = attnviz.capture(adapter, photo, size=ODD)
    e = attnviz.explain(adapter, cap, "grad_cam", layer=1)
    units, importance = feature_units(e, cap)
    grid = cap.stage_grids[1]
    s = grid.patch_size[0]
    ys, xs = np.mgrid[0:ODD[0], 0:ODD[1]]
    np.testing.assert_array_equal(units, (ys // s) * grid.cols + xs // s)
    assert len(importance) == grid.rows * grid.cols == (math.ceil(70 / s) * math.ceil(75 / s))
    res = deletion_insertion(adapter, cap, e, steps=4)
    assert len(res["deletion"].values) == 5


def test_randomisation_reinitialises_conv_stages(cnn, photo):
    """Each stage, from the last: its weights move by at least half their norm at the same scale, batch norms
    become fresh (running statistics 0 / 1), its output changes, stays finite and is no identity; the shared
    model is untouched."""
    from attnviz.metrics.randomisation import copy_adapter, randomise_module
    kind, adapter = cnn
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    clone = copy_adapter(adapter)
    cap = attnviz.capture(adapter, photo)
    x = cap.inputs["pixel_values"]
    g = torch.Generator().manual_seed(0)
    for s in reversed(range(clone.n_layers)):
        block = clone.block(s)
        old = [p.detach().clone() for p in block.parameters() if p.ndim >= 2]
        randomise_module(block, g)
        new = [p for p in block.parameters() if p.ndim >= 2]
        for o, n in zip(old, new):
            assert (n - o).norm() >= 0.5 * o.norm() and 0.5 < n.std() / o.std() < 2
        for m in block.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                assert m.running_mean.abs().max() == 0 and (m.running_var == 1).all() and (m.weight == 1).all()
        with torch.no_grad():
            cap2 = clone.capture(clone.prepare(photo), grads=False)
        a, b = cap.stages[s], cap2.stages[s]
        assert torch.isfinite(b).all() and 0.01 < b.std() / a.std() < 100
        assert (a - b).norm() > 0.1 * a.norm()
    for k, v in adapter.model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    e = attnviz.explain(adapter, cap, "grad_cam")
    steps = cascading_randomisation(adapter, cap, e, max_blocks=2)
    assert len(steps) == 3 and steps[0].spearman_abs == pytest.approx(1.0) and steps[2].blocks == (
        clone.n_layers - 2, clone.n_layers - 1)


def test_class_specific_maps_depend_on_the_target(photo, cnn_dirs):
    adapter = attnviz.load_model(str(cnn_dirs["regnet-y"]))
    cap = attnviz.capture(adapter, photo, size=(96, 96))
    for method, params in (("grad_cam", {"layer": 2}), ("integrated_gradients", {"n_steps": 8}),
                           ("occlusion", {}), ("saliency", {})):
        m0, m1 = (attnviz.explain(adapter, cap, method, target=t, **params).map for t in (0, 1))
        assert not np.allclose(m0, m1), method


def test_convnext_style_crop_box_by_hand():
    """ConvNeXt's processor below 384: shortest edge to int(224 / 0.875) = 256 (640×480 -> 341×256, the long side
    truncated), then a 224 centre crop at (58, 16); back in original pixels (as the ViT processor test)."""
    from attnviz.adapters.cnn import crop_pct_box
    proc = SimpleNamespace(size={"shortest_edge": 224}, crop_pct=0.875)
    assert crop_pct_box(proc, (640, 480)) == (109, 30, 529, 450)
    assert crop_pct_box(proc, (480, 640)) == (30, 109, 450, 529)
    assert crop_pct_box(SimpleNamespace(size={"shortest_edge": 384}, crop_pct=0.875), (640, 480)) is None


def test_bad_sizes_are_one_sentence(cnn_dirs, photo):
    adapter = attnviz.load_model(str(cnn_dirs["convnext"]))
    with pytest.raises(UsageError, match="smaller than this model's total stride 32"):
        adapter.prepare(photo, size=(16, 40))
    with pytest.raises(UsageError, match="at most"):
        adapter.prepare(photo, size=(2000, 2000))


def test_cli_explains_a_tiny_cnn(capsys, tmp_path, cnn_dirs, photo):
    """--method grad_cam | channel_attention | spatial_attention on the tiny gated CNN; JSON lists every block."""
    import json

    from attnviz.cli import main
    img = tmp_path / "photo.png"
    photo.save(img)

    def run(*argv):
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err
    model = cnn_dirs["gated"]
    code, out, err = run("explain", img, "--model", model, "--method", "grad_cam", "--layer", "1", "--json")
    rec = json.loads(out)
    assert code == 0 and rec["meta"]["stage"] == 1 and rec["map_shape"] == [16, 16] and rec["pooling"] == "mean"
    code, out, err = run("explain", img, "--model", model, "--method", "channel_attention", "--json")
    rec = json.loads(out)
    assert code == 0 and rec["over"] == "channels" and rec["map_shape"] == [16]
    assert [b["module"] for b in rec["meta"]["blocks"]] == ["SE", "ECA", "CBAM", "CBAM"]
    assert {"mean", "std", "emphasised", "suppressed", "stage", "cells"} <= set(rec["meta"]["blocks"][0])
    code, out, err = run("explain", img, "--model", model, "--method", "spatial_attention", "--out", tmp_path / "s.png")
    assert code == 0 and (tmp_path / "s.png").stat().st_size > 0
    code, out, err = run("explain", img, "--model", model, "--method", "channel_attention", "--out", tmp_path / "c.png")
    assert code == 2 and "channels has no image overlay" in err
    code, out, err = run("explain", img, "--model", cnn_dirs["resnet"], "--method", "spatial_attention")
    assert code == 2 and "needs spatial attention gates" in err


def test_class_profile_by_depth_from_single_captures(cnn_dirs):
    """Hu et al. 7.2: per-class mean excitations from a batched pass equal the means of one capture per scene,
    and η² is the between-class share of the variance, written out here."""
    from attnviz.scenes import SHAPES, make_scene, scene_rng, scene_to_pil
    from attnviz.excitation import class_profile, compare, correlation_ratio, profile_figure
    adapter = attnviz.load_model(str(cnn_dirs["gated"]))
    prof = class_profile(adapter, per_class=3, seed=5)
    per_image = []                                                           # [N] lists of per-block vectors
    labels = []
    for k, shape in enumerate(SHAPES):
        for i in range(3):
            cap = attnviz.capture(adapter, scene_to_pil(make_scene(scene_rng(5, k * 3 + i), shapes=[shape])),
                                  grads=False)
            per_image.append([g.value.numpy() for g in cap.gates if g.kind == "channel"])
            labels.append(k)
    labels = np.array(labels)
    assert prof.modules == ("SE", "ECA", "CBAM", "CBAM") and prof.stages == (0, 1, 2, 2)
    for b in range(4):
        v = np.stack([p[b] for p in per_image])                              # [N, C]
        np.testing.assert_allclose(prof.means[b], np.stack([v[labels == k].mean(0) for k in range(5)]), atol=1e-5)
        grand = v.mean(0)
        ssb = sum(3 * ((v[labels == k].mean(0) - grand) ** 2).sum() for k in range(5))
        assert prof.specificity[b] == pytest.approx(ssb / ((v - grand) ** 2).sum(), rel=1e-4)
    assert prof.chance == pytest.approx(4 / 14)
    assert correlation_ratio(np.array([[0.], [0.], [1.], [1.]]), np.array([0, 0, 1, 1])) == 1.0
    assert correlation_ratio(np.array([[0.], [1.], [0.], [1.]]), np.array([0, 0, 1, 1])) == 0.0
    rows = compare(cap, prof)
    assert len(rows) == 4 and rows[0]["r"][SHAPES[0]] == pytest.approx(np.corrcoef(per_image[-1][0], prof.means[0][0])[0, 1])
    assert len(profile_figure(prof, cap).data) == 4 * (5 + 1)


def test_compare_offers_shared_and_own_methods(cnn_dirs, saved_models, photo):
    from attnviz.compare import own_methods, shared_methods, side_by_side
    vit = attnviz.load_model(str(saved_models["vit"]))
    cnn = attnviz.load_model(str(cnn_dirs["gated"]))
    shared = set(shared_methods(vit, cnn))
    assert {"grad_cam", "integrated_gradients", "occlusion", "saliency"} <= shared
    assert not {"relevance", "rollout", "spatial_attention", "channel_attention"} & shared
    assert own_methods(vit) == ["relevance"] and own_methods(cnn) == ["spatial_attention", "channel_attention"]
    assert own_methods(attnviz.load_model(str(cnn_dirs["resnet"]))) == ["grad_cam"]
    sides = side_by_side([vit, cnn], photo, "grad_cam", target="class_3", faithfulness=True)
    assert [s.target.label for s in sides] == ["class_3", "class_3"]
    for s in sides:
        ref = attnviz.explain(s.adapter, s.capture, "grad_cam", target=3)
        np.testing.assert_allclose(s.explanation.map, ref.map, rtol=1e-5, atol=1e-7)
        # the AUC is numpy's trapezoid over the deletion curve (same 20 steps), which starts at the
        # model's own probability of class_3 on the untouched image (softmax of the capture's logits)
        c = curve(s.adapter, s.capture, s.explanation, "deletion", target=3)
        p = torch.softmax(torch.as_tensor(np.asarray(s.capture.scores), dtype=torch.float64), -1)[3]
        assert c.values[0] == pytest.approx(float(p), rel=1e-4)
        assert s.faithfulness["deletion_auc"] == pytest.approx(np.trapezoid(c.values, c.fractions), rel=1e-9)
