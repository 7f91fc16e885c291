"""Faithfulness metrics: rank correlation, deletion / insertion curves, the randomisation check."""
import numpy as np
import pytest
import torch

import attnviz
from attnviz.errors import UsageError
from attnviz.metrics import cascading_randomisation, deletion_insertion, deletion_summary, spearman
from attnviz.metrics.deletion import baseline_image, curve, gaussian_blur
from attnviz.metrics.randomisation import copy_adapter, randomise_module
from attnviz.metrics.rank import average_ranks

from .conftest import CAPTION_KINDS, CLIP_KINDS


# --------------------------------------------------------------------------- ranks

def test_average_ranks_share_ties_by_hand():
    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert average_ranks([[3, 3], [3, 3]]).tolist() == [2.5] * 4


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 6, size=(7, 5)).astype(float)       # many ties
        b = a + rng.normal(0, 2, size=a.shape)
        assert spearman(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.ones((3, 3)), a[:3, :3]))
    with pytest.raises(ValueError):
        spearman(np.ones((2, 3)), np.ones((3, 2)))


# --------------------------------------------------------------------------- deletion / insertion

@pytest.fixture(scope="module")
def vit(saved_models):
    return attnviz.load_model(str(saved_models["vit"]))


def _hand_curve(adapter, cap, patch_map, target, kind, baseline, n_steps):
    """Deletion / insertion written out patch by patch with plain loops and a direct model call."""
    lay = cap.layout
    ph, pw = lay.patch_size
    x = cap.inputs["pixel_values"].clone()
    order = sorted(range(lay.n_patches), key=lambda i: (-patch_map.ravel()[i], i))
    n = lay.n_patches
    out = []
    for i in range(n_steps + 1):
        k = int(round(i * n / n_steps))
        img = x.clone() if kind == "deletion" else baseline.clone()
        for p in order[:k]:
            r, c = divmod(p, lay.cols)
            src = baseline if kind == "deletion" else x
            img[..., r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = src[..., r * ph:(r + 1) * ph, c * pw:(c + 1) * pw]
        with torch.no_grad():
            logits = adapter.model(pixel_values=img).logits
        out.append(float(torch.softmax(logits, -1)[0, target]))
    return np.array(out)


def test_deletion_and_insertion_match_a_hand_computation(vit, photo):
    cap = attnviz.capture(vit, photo)
    exp = attnviz.explain(vit, cap, "relevance", target=1)
    rng = np.random.default_rng(3)
    exp = type(exp)(**{**exp.__dict__, "map": rng.normal(size=exp.map.shape).astype(np.float32)})
    x = cap.inputs["pixel_values"]
    for kind, base_kind in (("deletion", "mean"), ("insertion", "blur"), ("deletion", "black")):
        c = curve(vit, cap, exp, kind, baseline=base_kind, steps=5)
        hand = _hand_curve(vit, cap, exp.map, 1, kind, baseline_image(vit, x, base_kind), 5)
        assert c.quantity == "probability"
        np.testing.assert_allclose(c.values, hand, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(c.fractions, np.round(np.arange(6) * 16 / 5) / 16)
        assert c.auc == pytest.approx(np.trapezoid(hand, c.fractions))


def test_curves_start_and_end_where_they_must(vit, photo):
    """Deletion starts at the image's probability and ends at the baseline's; insertion the other way."""
    cap = attnviz.capture(vit, photo)
    exp = attnviz.explain(vit, cap, "integrated_gradients", n_steps=8)          # a pixel map
    p0 = float(vit.probabilities(cap)[exp.target.index])
    res = deletion_insertion(vit, cap, exp, steps=7, random_orders=2)
    d, i = res["deletion"], res["insertion"]
    x = cap.inputs["pixel_values"]
    with torch.no_grad():
        p_mean = float(torch.softmax(vit.model(pixel_values=torch.zeros_like(x)).logits, -1)[0, exp.target.index])
        p_blur = float(torch.softmax(vit.model(pixel_values=baseline_image(vit, x, "blur")).logits, -1)[0, exp.target.index])
    assert d.values[0] == pytest.approx(p0, abs=1e-5) and i.values[-1] == pytest.approx(p0, abs=1e-5)
    assert d.values[-1] == pytest.approx(p_mean, abs=1e-5) and i.values[0] == pytest.approx(p_blur, abs=1e-5)
    assert len(d.values) == 8 and len(res["random_deletion"]) == 2
    # two random orders differ, and are not the map's order
    assert not np.allclose(res["random_deletion"][0].values, res["random_deletion"][1].values)
    s = deletion_summary(res)
    assert s["random_deletion_auc"] == pytest.approx(np.mean([c.auc for c in res["random_deletion"]]))


def test_random_curves_are_shared_by_every_map_of_a_capture(vit, photo, monkeypatch):
    """The random yardstick depends on the image, target and units only: a second map of the same capture
    forwards only its own steps, and the shared random curve equals the hand computation of the seed's order."""
    cap = attnviz.capture(vit, photo)
    exp = attnviz.explain(vit, cap, "relevance", target=1)
    other = type(exp)(**{**exp.__dict__, "map": np.random.default_rng(5).normal(size=exp.map.shape).astype(np.float32)})
    images = []
    real = vit.forward_scores
    monkeypatch.setattr(vit, "forward_scores", lambda x, inputs: images.append(x.shape[0]) or real(x, inputs))
    first = deletion_insertion(vit, cap, exp, steps=4, seed=2)
    n_first = sum(images)
    images.clear()
    second = deletion_insertion(vit, cap, other, steps=4, seed=2)
    # counted by hand (5 points a curve; the input itself is the capture's, no forward): the map's deletion steps
    # 1..3 and its all-mean end, its insertion's blurred start and steps 1..3, the random curves' steps 1..3 each
    # (their ends are the same two baseline images)
    assert n_first == (3 + 1) + (1 + 3) + 3 + 3
    assert sum(images) == (3 + 1) + (1 + 3)        # the second map: only its own curves
    for kind in ("deletion", "insertion"):
        assert second[f"random_{kind}"][0] is first[f"random_{kind}"][0]
        assert not np.allclose(second[kind].values, first[kind].values)
    # the random order by hand: the permutation the seed draws, written as a map whose order is that permutation
    perm = np.random.default_rng(2).permutation(cap.layout.n_patches)
    as_map = np.empty(cap.layout.n_patches, dtype=np.float32)
    as_map[perm] = -np.arange(cap.layout.n_patches, dtype=np.float32)                 # changed first = highest
    hand = _hand_curve(vit, cap, as_map.reshape(exp.map.shape), 1, "deletion",
                       baseline_image(vit, cap.inputs["pixel_values"], "mean"), 4)
    np.testing.assert_allclose(first["random_deletion"][0].values, hand, rtol=1e-4, atol=1e-6)
    # another seed or another target is not taken from the cache
    images.clear()
    deletion_insertion(vit, cap, other, steps=4, seed=3)
    assert sum(images) > 3 + 1 + 3 + 1


def test_gaussian_blur_against_a_direct_convolution():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(1, 3, 12, 10))
    sigma = 1.3
    out = gaussian_blur(torch.tensor(img, dtype=torch.float64), sigma).numpy()
    r = int(np.ceil(3 * sigma))
    k1 = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k2 = np.outer(k1, k1) / k1.sum() ** 2
    pad = np.pad(img, ((0, 0), (0, 0), (r, r), (r, r)), mode="reflect")
    want = np.zeros_like(img)
    for y in range(12):
        for x in range(10):
            want[..., y, x] = (pad[..., y:y + 2 * r + 1, x:x + 2 * r + 1] * k2).sum((-2, -1))
    np.testing.assert_allclose(out, want, atol=1e-10)
    flat = torch.full((1, 3, 9, 9), 0.25)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat)


def test_deletion_refuses_text_maps_and_bad_settings(photo, clip_dirs, vit):
    clip = attnviz.load_model(str(clip_dirs["clip"]))
    cap = attnviz.capture(clip, photo, texts=["a red circle", "a cat"])
    text = attnviz.explain(clip, cap, "text_relevance", target=0)
    with pytest.raises(UsageError, match="patches or pixels"):
        deletion_insertion(clip, cap, text)
    cap = attnviz.capture(vit, photo)
    exp = attnviz.explain(vit, cap, "rollout")
    for kw in ({"baseline": "noise"}, {"steps": 0}, {"order": "sideways"}):
        with pytest.raises(UsageError):
            curve(vit, cap, exp, **kw)
    with pytest.raises(UsageError):
        curve(vit, cap, exp, "both")


@pytest.mark.parametrize("kind", CLIP_KINDS + CAPTION_KINDS)
def test_deletion_runs_on_image_text_models_and_captioners(kind, photo, clip_dirs, caption_dirs):
    folder = clip_dirs[kind] if kind in CLIP_KINDS else caption_dirs[kind]
    adapter = attnviz.load_model(str(folder))
    texts = ["a red circle", "a cat"] if kind in CLIP_KINDS else None
    cap = attnviz.capture(adapter, photo, texts=texts)
    exp = attnviz.explain(adapter, cap, "relevance" if kind in CLIP_KINDS else "caption_relevance", target=0)
    res = deletion_insertion(adapter, cap, exp, steps=4)
    d = res["deletion"]
    assert np.isfinite(d.values).all() and len(d.values) == 5
    # CLIP: softmax over the prompts; SigLIP: sigmoid per prompt; captioners: the token's logit
    assert d.quantity == ("probability" if kind in CLIP_KINDS else "score")
    if kind == "clip":
        assert d.values[0] == pytest.approx(float(adapter.probabilities(cap)[0]), abs=1e-5)
        one = attnviz.capture(adapter, photo, texts=["a red circle"])          # one prompt: its softmax is 1
        assert curve(adapter, one, attnviz.explain(adapter, one, "relevance"), steps=2).quantity == "score"
    if kind in CAPTION_KINDS:
        assert d.values[0] == pytest.approx(float(cap.scores[0]), abs=1e-4)


def test_demo_classifier_maps_beat_random_orders():
    """On the demo classifier, deleting relevance's patches first drops the class faster than random orders."""
    from attnviz.scenes import make_dataset, scene_to_pil
    model = attnviz.load_model("demo-vit-shapes")
    wins_del = wins_ins = 0
    scenes = make_dataset(8, 4242, n_objects=2)
    for sc in scenes:
        cap = attnviz.capture(model, scene_to_pil(sc))
        s = deletion_summary(deletion_insertion(model, cap, attnviz.explain(model, cap, "relevance"),
                                                random_orders=3))
        wins_del += s["deletion_auc"] < s["random_deletion_auc"]
        wins_ins += s["insertion_auc"] > s["random_insertion_auc"]
    print(f"relevance beats random: deletion {wins_del}/8, insertion {wins_ins}/8")
    assert wins_del >= 7 and wins_ins >= 6


# --------------------------------------------------------------------------- randomisation

def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_copy_and_randomise_leave_the_shared_model_alone(vit):
    before = _state(vit.model)
    clone = copy_adapter(vit)
    assert clone.model is not vit.model and clone.lock is not vit.lock and clone.processor is vit.processor
    block = clone.token_block(1)
    w0 = {n: p.detach().clone() for n, p in block.named_parameters() if p.ndim >= 2}
    randomise_module(block, torch.Generator().manual_seed(0))
    after = _state(vit.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    changed = {k for k, v in _state(clone.model).items() if not torch.equal(v, before[k])}
    assert changed and all(".1." in k for k in changed)                        # only block 1
    norms = [m for m in block.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)
    # each matrix is drawn at its own former spread (tiny ViT: 0.02 from the config's init)
    for name, p in block.named_parameters():
        if p.ndim >= 2:
            assert float(p.std()) == pytest.approx(float(w0[name].std()), rel=0.15), name


def _family_adapters():
    """Every family's tiny adapter (built in memory) with inputs its forward takes."""
    from attnviz.adapters.captioning import CaptionAdapter
    from attnviz.adapters.classifier import ClassifierAdapter
    from attnviz.adapters.clip import ClipAdapter

    from .conftest import CLASSIFIER_KINDS
    for kind in CLASSIFIER_KINDS:
        yield kind, ClassifierAdapter.tiny(kind), {}
    for kind in CLIP_KINDS:
        yield kind, ClipAdapter.tiny(kind), {"texts": ["a red circle", "a cat"]}
    for kind in CAPTION_KINDS:
        yield kind, CaptionAdapter.tiny(kind), {"texts": ["a red cat"]}


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _randomised_blocks_check(adapter, photo, monkeypatch, **prepare_kw):
    """Run the cascade through every block; return per-block measurements of what it did.

    For each block of the fully randomised copy: the smallest relative change ||W' - W|| / ||W||
    and the norm ratios ||W'|| / ||W|| over its (non-zero) weight matrices, and, fed the input
    the original block saw, the change of its residual update (out - x) relative to the
    original update, and the new update's size relative to the original's (0: an identity).
    """
    import attnviz.metrics.randomisation as R
    inputs = adapter.prepare(photo, **prepare_kw)
    seen = {}

    def keep(i):
        def hook(module, args, kwargs, out):            # returns None: the forward's output is left alone
            seen.setdefault(i, (args, kwargs, _first(out).detach().clone()))
        return hook
    hooks = [adapter.token_block(i).register_forward_hook(keep(i), with_kwargs=True) for i in range(adapter.n_layers)]
    with torch.no_grad():
        adapter.forward_scores(inputs["pixel_values"], inputs)
    for h in hooks:
        h.remove()
    clones = []
    real_copy = R.copy_adapter
    monkeypatch.setattr(R, "copy_adapter", lambda a: clones.append(real_copy(a)) or clones[-1])
    cap = attnviz.capture(adapter, photo, **({"texts": prepare_kw["texts"]} if "texts" in prepare_kw else {}))
    exp = attnviz.explain(adapter, cap, "attention", query="0,0")
    steps = cascading_randomisation(adapter, cap, exp, seed=0)
    clone = clones[-1]
    rows = []
    for i in range(adapter.n_layers):
        old = dict(adapter.token_block(i).named_parameters())
        new = dict(clone.token_block(i).named_parameters())
        mats = [n for n, p in old.items() if p.ndim >= 2 and float(p.norm()) > 0]
        rel = min(float((new[n] - old[n]).norm() / old[n].norm()) for n in mats)
        ratio = [float(new[n].norm() / old[n].norm()) for n in mats]
        args, kw, out = seen[i]
        x = args[0] if args else kw["hidden_states"]
        with torch.no_grad():
            out2 = _first(clone.token_block(i)(*args, **kw))
        upd, upd2 = out - x, out2 - x
        rows.append({"rel_weight_change": rel, "norm_ratio": (min(ratio), max(ratio)),
                     "update_change": float((upd2 - upd).norm() / upd.norm()),
                     "update_size": float(upd2.norm() / upd.norm())})
    return rows, steps


def test_randomisation_replaces_every_block_of_every_family(photo, monkeypatch):
    """Each randomised block's matrices move by >= half their norm at their own scale, and the block's
    output on the same input changes without the block becoming an identity."""
    for kind, adapter, kw in _family_adapters():
        rows, steps = _randomised_blocks_check(adapter, photo, monkeypatch, **kw)
        print(kind, [{k: np.round(v, 2) for k, v in r.items()} for r in rows])
        assert len(rows) == adapter.n_layers == len(steps) - 1
        for i, r in enumerate(rows):
            assert r["rel_weight_change"] >= 0.5, (kind, i, r)
            assert 0.5 <= r["norm_ratio"][0] and r["norm_ratio"][1] <= 2.0, (kind, i, r)
            assert r["update_change"] >= 0.5 and r["update_size"] >= 0.1, (kind, i, r)


def test_blip_with_its_default_vision_init_range_is_randomised(photo, tmp_path, monkeypatch):
    """A BLIP folder whose config leaves the vision initializer_range at BlipVisionConfig's default (1e-10).

    Its weights are the tiny BLIP's (std 0.2, a stand-in for a trained checkpoint); re-initialising at the
    config's 1e-10 made every block an identity and the last layer's attention exactly uniform.
    """
    import json

    import transformers

    from attnviz.adapters.captioning import CaptionAdapter

    from .conftest import save_tiny
    save_tiny(CaptionAdapter.tiny("blip"), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["vision_config"]["initializer_range"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    blip = attnviz.load_model(str(tmp_path))
    assert blip.model.config.vision_config.initializer_range == transformers.BlipVisionConfig().initializer_range == 1e-10
    rows, steps = _randomised_blocks_check(blip, photo, monkeypatch, texts=["a red cat"])
    print("BLIP (default vision init range):", rows)
    for r in rows:
        assert 0.5 <= r["norm_ratio"][0] and r["update_size"] >= 0.1 and r["update_change"] >= 0.5, r
    last = steps[-1].map                                   # attention of patch (0, 0), last layer, all blocks random
    assert np.ptp(last) > 1e-3 * np.abs(last).mean()      # not uniform attention


def _relevance_by_hand(model, x, target):
    """Chefer et al. 2021 on a ViT classifier, from its own forward: R = I; R += E_h[(∇A ⊙ A)^+] R; CLS row."""
    x = x.clone().requires_grad_(True)
    out = model(pixel_values=x, output_attentions=True)
    grads = torch.autograd.grad(out.logits[0, target], out.attentions)
    t = out.attentions[0].shape[-1]
    r = np.eye(t)
    for a, g in zip(out.attentions, grads):
        r = r + np.clip(g[0].numpy() * a[0].detach().numpy(), 0, None).mean(0) @ r
    return r[0, 1:].reshape(4, 4)


def test_randomisation_steps_and_the_identity_check(vit, photo, monkeypatch):
    """Each step's map is relevance computed by hand on the model with those blocks replaced, and its
    Spearman values are scipy's."""
    import copy

    from scipy.stats import spearmanr

    import attnviz.metrics.randomisation as R
    cap = attnviz.capture(vit, photo)
    exp = attnviz.explain(vit, cap, "relevance", target=2)
    clones = []
    real_copy = R.copy_adapter
    monkeypatch.setattr(R, "copy_adapter", lambda a: clones.append(real_copy(a)) or clones[-1])
    steps = cascading_randomisation(vit, cap, exp, seed=1)
    assert [s.blocks for s in steps] == [(), (1,), (0, 1)]
    assert [s.label for s in steps] == ["none", "block 1", "blocks 0–1"]
    both = clones[-1].model                                      # the copy at the end: both blocks random
    last_only = copy.deepcopy(vit.model)                         # block 1 as the copy had it, block 0 original
    last_only.vit.layers[1].load_state_dict(both.vit.layers[1].state_dict())
    x = cap.inputs["pixel_values"]
    for step, model in zip(steps, (vit.model, last_only, both)):
        np.testing.assert_allclose(step.map, _relevance_by_hand(model, x, 2), rtol=1e-4, atol=1e-7)
        assert step.spearman_abs == pytest.approx(spearmanr(np.abs(exp.map).ravel(), np.abs(step.map).ravel())[0])
        assert step.spearman == pytest.approx(spearmanr(exp.map.ravel(), step.map.ravel())[0])
    assert steps[0].spearman_abs == pytest.approx(1.0) and np.allclose(steps[0].map, exp.map)
    assert not np.allclose(steps[-1].map, exp.map)
    again = cascading_randomisation(vit, cap, exp, seed=1)                     # seeded: repeatable
    assert [s.spearman for s in again] == [s.spearman for s in steps]
    other = cascading_randomisation(vit, cap, exp, seed=2)                     # another seed, other weights
    assert not np.allclose(other[-1].map, steps[-1].map)
    assert len(cascading_randomisation(vit, cap, exp, max_blocks=1)) == 2


def test_demo_classifier_relevance_passes_the_randomisation_check():
    """Adebayo et al.'s expectation for a faithful method: randomising every block decorrelates the map."""
    from attnviz.scenes import make_dataset, scene_to_pil
    model = attnviz.load_model("demo-vit-shapes")
    finals = []
    for sc in make_dataset(4, 77, n_objects=2):
        cap = attnviz.capture(model, scene_to_pil(sc))
        steps = cascading_randomisation(model, cap, attnviz.explain(model, cap, "relevance"))
        assert len(steps) == model.n_layers + 1 and steps[0].spearman_abs == pytest.approx(1.0)
        finals.append(steps[-1].spearman_abs)
    print("Spearman |map| after randomising all blocks:", np.round(finals, 3))
    assert np.mean(finals) < 0.5


def test_randomisation_runs_take_turns_for_their_model_copies(vit, photo, monkeypatch):
    """Four threads at once hold at most one copy of the model at a time (ATTNVIZ_MODEL_COPIES=1)."""
    import threading
    import time

    import attnviz.metrics.randomisation as R
    cap = attnviz.capture(vit, photo)
    exp = attnviz.explain(vit, cap, "rollout")
    live, peak, lock = [0], [0], threading.Lock()
    real_cascade = R._cascade

    def counting(*a, **kw):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        try:
            time.sleep(0.05)
            return real_cascade(*a, **kw)
        finally:
            with lock:
                live[0] -= 1
    monkeypatch.setattr(R, "_cascade", counting)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cascading_randomisation(vit, cap, exp)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and peak[0] == 1
    assert all([s.spearman for s in r] == [s.spearman for s in results[0]] for r in results)


def test_demo_faithfulness_table_runs_through_the_engine():
    """Each entry of the table is the mean over its scenes of numbers computed here piece by piece: the
    top class from the model's logits, each curve's AUC by numpy's trapezoid over ``curve`` (itself checked
    against a hand loop above), the Spearman after randomising every block by scipy, the pointing hit read
    off the object's mask by hand."""
    from scipy.stats import spearmanr

    from attnviz.demo.faithfulness import evaluate, markdown
    from attnviz.scenes import make_dataset, mask_for_class, scene_to_pil
    n, seed, methods = 3, 60_606, ("relevance", "saliency")
    r = evaluate(n=n, seed=seed, methods=methods)
    model = attnviz.load_model("demo-vit-shapes")
    keys = ("deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc",
            "randomised_spearman_abs", "pointing_cell")
    per = {m: {k: [] for k in keys} for m in methods}
    for k, scene in enumerate(make_dataset(n, seed, n_objects=2)):
        cap = attnviz.capture(model, scene_to_pil(scene))
        with torch.no_grad():
            top = int(model.model(pixel_values=cap.inputs["pixel_values"]).logits[0].argmax())
        mask = mask_for_class(scene, top)
        assert mask.shape == cap.layout.input_size                 # scenes are drawn at the model's input size
        ph, pw = cap.layout.patch_size
        for m in methods:
            exp = attnviz.explain(model, cap, m, target=top)
            for kind in ("deletion", "insertion"):
                for order, key in (("map", f"{kind}_auc"), ("random", f"random_{kind}_auc")):
                    c = curve(model, cap, exp, kind, order=order, seed=k, target=top)
                    per[m][key].append(np.trapezoid(c.values, c.fractions))
            final = cascading_randomisation(model, cap, exp)[-1].map
            per[m]["randomised_spearman_abs"].append(spearmanr(np.abs(exp.map).ravel(), np.abs(final).ravel())[0])
            y, x = np.unravel_index(int(np.argmax(exp.map)), exp.map.shape)
            row, col = (y, x) if exp.over == "patches" else (y // ph, x // pw)   # a pixel map: its hottest pixel's patch
            per[m]["pointing_cell"].append(float(mask[row * ph:(row + 1) * ph, col * pw:(col + 1) * pw].any()))
    for m in methods:
        for key in keys:
            assert r["methods"][m][key] == pytest.approx(np.mean(per[m][key]), rel=1e-6, abs=1e-9), (m, key)
        beats = np.mean(np.array(per[m]["deletion_auc"]) < np.array(per[m]["random_deletion_auc"]))
        assert r["methods"][m]["beats_random_deletion"] == pytest.approx(beats)
    print({m: {k: np.round(v, 3) for k, v in per[m].items()} for m in methods})
    rel = r["methods"]["relevance"]
    assert rel["deletion_auc"] < rel["random_deletion_auc"] and rel["beats_random_deletion"] == 1.0
    assert markdown(r).count("\n") == 3                      # header, rule, two rows
