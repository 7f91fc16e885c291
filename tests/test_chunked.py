"""The chunked attention path (``tokens/chunked.py``, ``adapters/fast_attention.Recorder``): captures that keep
q, k (v, head-output gradients) per layer and pull rows through blocks of softmax(q·kᵀ·s + bias).

Every map is held to a reference built here from the model's own eager attention (transformers' "eager"
implementation, ``output_attentions``) and autograd, with the papers' matrix formulas written in this file:
rollout (Abnar & Zuidema 2020) as the product of Â = norm(½A + ½I) with pytorch-grad-cam's discard, and
relevance (Chefer et al. 2021 eqs. 5–6) as R ← R + Ā·R with Ā = E_h[(∇A ⊙ A)⁺]. Blocks are forced small
(a few rows) so the block-by-block arithmetic, the radix select of the discard threshold included, runs.
"""
import copy

import numpy as np
import pytest
import torch

import attnviz.tokens.chunked as chunked
from attnviz.adapters.base import accepts_kwarg
from attnviz.adapters.classifier import ClassifierAdapter
from attnviz.adapters.clip import ClipAdapter
from attnviz.methods.attention import attention_grid
from attnviz.methods.registry import explain
from attnviz.tokens.chunked import QK, Dense, kth_offdiagonal, rollout_row
from attnviz.tokens.readout import static_readout

KINDS = ("vit", "deit-teacher", "beit", "dinov2", "dinov2-registers", "clip", "siglip")


def _adapter(kind, **kw):
    if kind in ("clip", "siglip"):
        return ClipAdapter.tiny(kind, **kw)
    ad = ClassifierAdapter.tiny(kind, **kw)
    if kind == "beit":    # the relative position bias table starts at zeros: make the bias matter
        g = torch.Generator().manual_seed(1)
        for m in ad.model.modules():
            if hasattr(m, "relative_position_bias_table"):
                with torch.no_grad():
                    m.relative_position_bias_table.copy_(torch.randn(m.relative_position_bias_table.shape, generator=g))
    return ad


def _inputs(ad, photo, size=None):
    if ad.family == "clip":
        return ad.prepare(photo, texts=["a red circle", "stripes"], size=size)
    return ad.prepare(photo, size=size)


def _eager(ad, inputs):
    """(scores [n_targets] in the graph, L × [1, H, T, T] attentions in the graph) from transformers' own
    eager attention on a copy of the model."""
    model = copy.deepcopy(ad.model)
    model.set_attn_implementation("eager")
    x = inputs["pixel_values"].clone().requires_grad_(True)
    kw = {"interpolate_pos_encoding": True} if accepts_kwarg(model.forward, "interpolate_pos_encoding") else {}
    with torch.enable_grad():
        if ad.family == "clip":
            mask = None if ad.kind == "siglip" else inputs["attention_mask"]
            out = model(pixel_values=x, input_ids=inputs["input_ids"], attention_mask=mask,
                        output_attentions=True, **kw)
            return out.logits_per_image[0], list(out.vision_model_output.attentions)
        out = model(pixel_values=x, output_attentions=True, **kw)
        return out.logits[0], list(out.attentions)


def _discarded(a, ratio):
    t = a.shape[-1]
    off = ~torch.eye(t, dtype=torch.bool)
    k = int(t * (t - 1) * ratio)
    if k:
        a = a.masked_fill(off & (a <= a[off].kthvalue(k).values), 0.0)
    return a


def _rollout(q, mats, ratio=0.0):
    """q · Â_L ··· Â_1 as matrices (Abnar & Zuidema), Â = ½A + ½I rows renormalised."""
    t = mats[0].shape[-1]
    r = torch.eye(t, dtype=torch.float64)
    for a in mats:
        a = 0.5 * _discarded(a, ratio).double() + 0.5 * torch.eye(t, dtype=torch.float64)
        r = (a / a.sum(-1, keepdim=True)) @ r
    return q.double() @ r


def _relevance(q, bars):
    """Chefer et al. eq. 6: R = I; R ← R + Ā·R over the layers; the query's row."""
    t = bars[0].shape[-1]
    r = torch.eye(t, dtype=torch.float64)
    for b in bars:
        r = r + b.double() @ r
    return q.double() @ r


def _grid(layout, v):
    return v[layout.n_prefix:].reshape(layout.rows, layout.cols).float().numpy()


def _close(a, b, tol=1e-5):
    a, b = (np.asarray(x.detach().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64) for x in (a, b))
    assert np.abs(a - b).max() <= tol * max(1.0, np.abs(b).max())


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_maps_equal_eager_attention_and_autograd(kind, photo, monkeypatch):
    ad = _adapter(kind)
    inputs = _inputs(ad, photo)
    monkeypatch.setattr(chunked, "BLOCK_BYTES", 5 * 4 * 4 * ad.layout(inputs).n_tokens)   # 5 rows of 4 heads
    monkeypatch.setattr(chunked, "FUSED_BLOCK_BYTES", 3 * 4 * 4 * ad.layout(inputs).n_tokens)   # fused: 3 rows
    monkeypatch.setattr(chunked, "MIN_BLOCK_ROWS", 1)                        # the small blocks as set
    ad.attention_path = "rows"
    cap = ad.capture(inputs, grads=True)
    assert all(isinstance(a, QK) and a.block == 5 for a in cap.attentions)
    assert chunked.Fused(cap.attentions[0], "mean").block == 3
    layout = cap.layout
    scores, atts = _eager(ad, inputs)
    _close(cap.scores, scores.detach())
    t = 1
    grads = [g[0] for g in torch.autograd.grad(scores[t], atts)]
    atts = [a[0].detach() for a in atts]
    bars = [(g * a).clamp(min=0).mean(0) for a, g in zip(atts, grads)]
    q = torch.zeros(layout.n_tokens)
    q[layout.patch_token(1, 2)] = 1.0
    queries = [("1,2", q)]
    if ad.pooling != "attention":
        queries.append(("output", static_readout(ad.pooling, layout)))
    for i, (name, qv) in enumerate(queries):
        for fusion, ratio in (("mean", 0.0), ("max", 0.4), ("min", 0.9))[i:]:
            fused = [getattr(a, {"mean": "mean", "max": "amax", "min": "amin"}[fusion])(0) for a in atts]
            got = explain(ad, cap, "rollout", head_fusion=fusion, discard_ratio=ratio, query=name).map
            _close(got, _grid(layout, _rollout(qv, fused, ratio)))
        _close(explain(ad, cap, "attention", layer=-1, head="2", query=name).map, _grid(layout, qv @ atts[-1][2]))
        _close(explain(ad, cap, "attention", layer=0, head="max", query=name).map,
               _grid(layout, qv @ atts[0].amax(0)))
        _close(explain(ad, cap, "relevance", target=t, start_layer=0, query=name).map,
               _grid(layout, _relevance(qv, bars)))
        ratio = 0.3 if i else 0.0
        _close(explain(ad, cap, "grad_rollout", target=t, discard_ratio=ratio, start_layer=0, query=name).map,
               _grid(layout, _rollout(qv, bars, ratio)))
        _close(explain(ad, cap, "attn_grad", target=t, layer=-1, query=name).map, _grid(layout, qv @ bars[-1]))
    grid = attention_grid(cap, "1,2")                                                   # [L, H, rows, cols]
    _close(grid, np.stack([[_grid(layout, q @ h) for h in a] for a in atts]))


def test_relevance_at_518_equals_formula_from_eager_attentions(photo, monkeypatch):
    """DINOv2's native 518² (1,370 tokens) on a tiny 2-layer model, in blocks of 100 rows."""
    ad = _adapter("dinov2", image_size=518, patch_size=14)
    inputs = _inputs(ad, photo)
    n = ad.layout(inputs).n_tokens
    assert n == 1370
    monkeypatch.setattr(chunked, "BLOCK_BYTES", 100 * 4 * 4 * n)
    monkeypatch.setattr(chunked, "FUSED_BLOCK_BYTES", 100 * 4 * 4 * n)
    monkeypatch.setattr(chunked, "MIN_BLOCK_ROWS", 1)                        # the small blocks as set
    ad.attention_path = "auto"                       # 1,370 tokens: "auto" takes the chunked path
    cap = ad.capture(inputs, grads=True)
    assert isinstance(cap.attentions[0], QK) and cap.attentions[0].block == 100
    scores, atts = _eager(ad, inputs)
    target = int(scores.argmax())
    grads = torch.autograd.grad(scores[target], atts)
    bars = [(g[0] * a[0].detach()).clamp(min=0).mean(0) for a, g in zip(atts, grads)]
    ref = _relevance(static_readout(ad.pooling, cap.layout), bars)
    _close(explain(ad, cap, "relevance", target=target, start_layer=0).map, _grid(cap.layout, ref))


def test_chunked_capture_holds_no_token_by_token_tensor(photo):
    """What a chunked capture keeps grows with T, not T² (BEiT's bias, the model's own, aside)."""
    ad = _adapter("dinov2", image_size=224, patch_size=14)
    ad.attention_path = "rows"
    cap = ad.capture(_inputs(ad, photo), grads=False)
    t = cap.layout.n_tokens
    kept = [x for a in cap.attentions for x in (a.q, a.k, a.v, a.bias) if x is not None]
    assert kept and max(x.numel() for x in kept) < t * t // 4
    # the capture cache's byte count (Capture.nbytes) sees the rows' q and k: at least 2·L·H·T·d floats beside
    # the pixels
    h, _, d = cap.attentions[0].q.shape
    pixels = cap.inputs["pixel_values"].numel() * 4
    assert cap.nbytes() >= pixels + 2 * len(cap.attentions) * h * t * d * 4
    ad.attention_path = "full"
    full = ad.capture(_inputs(ad, photo), grads=False)
    assert full.attentions[0].shape == (4, t, t) and full.nbytes() >= len(full.attentions) * 4 * t * t * 4


def test_radix_select_finds_the_kth_offdiagonal_value():
    """Several blocks (radix select on float bits) against kthvalue over the whole matrix, ties and zeros included."""
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(3, 29, 29) * 3, -1)
    a[0, 3:7, 10:20] = 0.0
    a[1, :, 5] = a[1, 0, 5]                        # a column of ties
    off = ~torch.eye(29, dtype=torch.bool)
    for k in (1, 7, 400, 29 * 28):
        ref = a[:, off].kthvalue(k, dim=-1).values
        assert torch.equal(kth_offdiagonal(Dense(a, block=4), k), ref)


def test_rollout_row_batched_equals_per_image_matrix_product():
    """One batch of [B, T, T] through the row step in blocks = each image's matrix rollout."""
    torch.manual_seed(1)
    a = torch.softmax(torch.randn(4, 23, 23), -1)
    v = torch.rand(4, 23)
    for ratio in (0.0, 0.5):
        got = rollout_row(v, Dense(a, block=5), ratio)
        for i in range(4):
            _close(got[i].numpy(), _rollout(v[i], [a[i]], ratio).numpy())


def test_rows_weighed_by_zero_are_skipped_and_the_products_unchanged():
    """A row vector with zero blocks and zeros at a block's ends (the top layer of a rollout from one query):
    v·A, the relevance step and rollout's step (mean of heads, max, a discard) equal the whole matrix's
    products written here, and only the rows between v's first and last non-zero entry are computed."""
    torch.manual_seed(2)
    t, blk = 23, 5
    a = torch.softmax(torch.randn(3, t, t) * 2, -1)                          # [H, T, T]
    asked = []

    class Counting(Dense):
        def rows(self, lo, hi):
            asked.append((lo, hi))
            return super().rows(lo, hi)

    for v in (torch.zeros(t).index_fill_(0, torch.tensor([0]), 1.0),          # one query: the top layer
              torch.zeros(2, t).index_put_((torch.tensor([0, 1]), torch.tensor([7, 13])), torch.tensor([0.3, 2.0])),
              torch.zeros(t)):
        lead = v.shape[:-1]
        m = a.expand(*lead, *a.shape) if lead else a                          # [..., H, T, T]
        mean = m.mean(-3)                                                      # [..., T, T]
        asked.clear()
        got = chunked.pull(v, chunked.Fused(Counting(m, block=blk), "mean"))
        _close(got.numpy(), (v[..., None, :] @ mean)[..., 0, :].numpy())
        nz = v.reshape(-1, t).ne(0).any(0).nonzero()[:, 0].tolist()
        # per block of 5 rows: from its first to its last weighed row (none: the block is not computed)
        expect = []
        for lo in range(0, t, blk):
            inside = [j for j in nz if lo <= j < lo + blk]
            if inside:
                expect.append((inside[0], inside[-1] + 1))
        assert asked == expect
        _close(chunked.relevance_row(v, Dense(mean, block=blk)).numpy(),
               (v + (v[..., None, :] @ mean)[..., 0, :]).numpy())
        for how, ratio in (("mean", 0.0), ("max", 0.0), ("mean", 0.4)):
            fused = m.mean(-3) if how == "mean" else m.amax(-3)
            for i in range(int(torch.Size(lead).numel()) or 1):
                vi, fi = (v[i], fused[i]) if lead else (v, fused)
                gi = rollout_row(v, chunked.Fused(Dense(m, block=blk), how), ratio)
                _close((gi[i] if lead else gi).numpy(), _rollout(vi, [fi], ratio).numpy())


@pytest.mark.parametrize("kind", ["vit", "dinov2-registers"])
def test_head_statistics_and_dino_masks_on_the_chunked_path(kind, photo, monkeypatch):
    """The Heads page's statistics and the lesson's DINO masks read a chunked capture block by block: the
    same numbers as from the model's own eager attentions, written out here (they raised on q, k rows)."""
    from attnviz.headstats import attention_entropy, dino_masks, mass_mask, mean_attention_distance, patch_centres
    ad = _adapter(kind)
    inputs = _inputs(ad, photo)
    monkeypatch.setattr(chunked, "BLOCK_BYTES", 3 * 4 * 4 * ad.layout(inputs).n_tokens)
    monkeypatch.setattr(chunked, "FUSED_BLOCK_BYTES", 3 * 4 * 4 * ad.layout(inputs).n_tokens)   # 3 rows of 4 heads
    monkeypatch.setattr(chunked, "MIN_BLOCK_ROWS", 1)                        # the small blocks as set
    ad.attention_path = "rows"
    cap = ad.capture(inputs, grads=False)
    assert all(isinstance(a, QK) for a in cap.attentions)
    lay = cap.layout
    _, atts = _eager(ad, inputs)
    atts = [a[0].detach().double() for a in atts]                                 # L × [H, T, T]
    p = lay.n_prefix
    xy = torch.from_numpy(patch_centres(lay))
    dist = torch.cdist(xy, xy)                                                    # [N, N]
    want_d, want_e = [], []
    for a in atts:
        pp = a[:, p:, p:] / a[:, p:, p:].sum(-1, keepdim=True)
        want_d.append((pp * dist).sum(-1).mean(-1))
        want_e.append(-(a * torch.log(a)).sum(-1).mean(-1))
    _close(mean_attention_distance(cap), torch.stack(want_d))
    _close(attention_entropy(cap), torch.stack(want_e))
    cls_row = atts[-1][:, 0, p:]                                                  # [H, N] CLS → patches
    want_m = torch.stack([mass_mask(r, 0.6) for r in cls_row]).reshape(-1, lay.rows, lay.cols).numpy()
    assert (dino_masks(cap, -1, 0.6, query="cls") == want_m).all()


@pytest.mark.parametrize("kind", ["beit", "clip"])
def test_checkpointed_blocks_recompute_once_per_backward_with_the_same_maps(kind, photo, monkeypatch):
    """With gradients the chunked capture checkpoints each block: a backward enters each block's attention a
    second time (the recomputation, which may stop early after it), once per target, and the maps equal those of a capture that kept every
    activation (``checkpoint_blocks`` off) and of the model's own eager attentions."""
    ad = _adapter(kind)
    inputs = _inputs(ad, photo)
    monkeypatch.setattr(chunked, "BLOCK_BYTES", 7 * 4 * 4 * ad.layout(inputs).n_tokens)
    monkeypatch.setattr(chunked, "FUSED_BLOCK_BYTES", 7 * 4 * 4 * ad.layout(inputs).n_tokens)
    monkeypatch.setattr(chunked, "MIN_BLOCK_ROWS", 1)                        # the small blocks as set
    ad.attention_path = "rows"
    attns = [m for li in range(ad.n_layers) for name, m in ad.token_block(li).named_children()
             if name in ("attention", "self_attn")]
    assert len(attns) == ad.n_layers
    runs = []
    handles = [m.register_forward_pre_hook(lambda *a: runs.append(1)) for m in attns]
    maps = {}
    try:
        for on in (True, False):
            ad.checkpoint_blocks = on
            runs.clear()
            cap = ad.capture(inputs, grads=True)
            assert len(runs) == ad.n_layers                                       # the forward: once per block
            for t in (0, 1):
                maps[on, t] = explain(ad, cap, "relevance", target=t, start_layer=0).map
                assert len(runs) == ad.n_layers * (2 + t if on else 1)            # + one recomputation per backward
            maps[on, "grad_rollout"] = explain(ad, cap, "grad_rollout", target=1, start_layer=0).map
    finally:
        for h in handles:
            h.remove()
    for key in ((0,), (1,), ("grad_rollout",)):
        _close(maps[(True,) + key], maps[(False,) + key], tol=1e-6)
    scores, atts = _eager(ad, inputs)
    grads = [g[0] for g in torch.autograd.grad(scores[1], atts)]
    bars = [(g * a[0].detach()).clamp(min=0).mean(0) for a, g in zip(atts, grads)]
    readout = static_readout(ad.pooling, cap.layout)
    _close(maps[True, 1], _grid(cap.layout, _relevance(readout, bars)))


def test_auto_checkpointing_recomputes_only_the_lowest_blocks_the_budget_leaves(photo, monkeypatch):
    """"auto" checkpointing (``budget.checkpointed_layers``): with an activation budget for one block kept
    whole, a backward recomputes every block but the top one, and the maps equal a capture that kept every
    activation."""
    import attnviz.tokens.budget as budget
    ad = _adapter("beit")
    inputs = _inputs(ad, photo)
    ad.attention_path = "rows"
    n, cfg = ad.layout(inputs).n_tokens, ad.model.config
    assert ad.n_layers >= 2
    per = budget.block_activation_bytes(cfg.hidden_size, cfg.intermediate_size, n)
    monkeypatch.setattr(budget, "ACTIVATION_BUDGET", per + per // 2)
    ad.checkpoint_blocks = "auto"
    assert ad.checkpointed_layers(n) == ad.n_layers - 1
    runs = []
    handles = [m.register_forward_pre_hook(lambda *a, li=li: runs.append(li))
               for li in range(ad.n_layers) for name, m in ad.token_block(li).named_children() if name == "attention"]
    maps = {}
    try:
        for mode in ("auto", False):
            ad.checkpoint_blocks = mode
            cap = ad.capture(inputs, grads=True)
            runs.clear()
            maps[mode] = explain(ad, cap, "relevance", target=1, start_layer=0).map
            if mode == "auto":                                   # the backward re-entered the lowest L - 1 blocks
                assert sorted(set(runs)) == list(range(ad.n_layers - 1))
            else:
                assert runs == []
    finally:
        for h in handles:
            h.remove()
    _close(maps["auto"], maps[False], tol=1e-6)


@pytest.mark.parametrize("checkpoint", [True, "auto", False])
def test_a_chunked_capture_with_gradients_is_freed_when_dropped(photo, checkpoint):
    """Regression (session 10): a checkpointed block's recomputation closure kept the capture's recorder, whose
    head outputs are in the graph that keeps the closure: a cycle through autograd's C++ nodes that Python's
    collector cannot see, so every chunked capture with gradients leaked its graph (~230 MB each on DINOv2-S at
    518²). Dropping a capture (its gradients taken, a map made) now leaves no tensor behind: the live tensors are
    counted with the collector, and a weak reference to a head output in the graph dies."""
    import gc
    import warnings
    import weakref

    ad = _adapter("dinov2")
    ad.attention_path, ad.checkpoint_blocks = "rows", checkpoint
    inputs = _inputs(ad, photo)

    def live():
        gc.collect()
        with warnings.catch_warnings():      # isinstance on every object touches torch's deprecated aliases
            warnings.simplefilter("ignore")
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    explain(ad, ad.capture(inputs, grads=True), "relevance")          # anything built once, built now
    before = live()
    cap = ad.capture(inputs, grads=True)
    explain(ad, cap, "relevance")
    wrt = next(c.cell_contents for c in cap._grad_fn.__closure__                 # what the backward differentiates
               if isinstance(c.cell_contents, dict) and "head_outputs" in c.cell_contents)
    out = weakref.ref(wrt["head_outputs"][0])                                      # [1, H, T, d], in the graph
    del wrt
    assert out() is not None and out().grad_fn is not None
    del cap
    assert live() == before and out() is None
