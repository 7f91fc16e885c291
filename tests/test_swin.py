"""Swin (issue 12): window attention, the shift, padding, patch merging, and rollout / relevance through them.

Every reference here is built another way than the library builds it: the model's own window attentions come
from hooks written here; a window slot's token is worked out by arithmetic on the rolled, padded grid (the
library rolls an index grid); the dense T×T matrices of each block and the patch merging as a matrix are built
here and multiplied as matrices (the library pulls a row vector through windows), and the placement of the
windows on the grid is checked against the model's own computation of the block.
"""
import copy

import numpy as np
import pytest
import torch

import attnviz
from attnviz.adapters.swin import SwinAdapter
from attnviz.errors import UsageError
from attnviz.methods.attention import swin_head_grid
from attnviz.methods.common import block_heads, query_vector
from attnviz.methods.hierarchy import stage_info
from attnviz.tokens.attention import fuse_heads, positive_grad_attention
from attnviz.tokens.mixing import Merge

from .conftest import save_tiny

KINDS = ("swin", "swinv2")
# default 24² (12, 6, 3: whole windows, last stage unshifted), not a multiple of the window with odd merges
# (28×20: 14×10, 7×5, 4×3), and an odd first grid (36×28: 18×14, 9×7, 5×4)
SIZES = (None, (28, 20), (36, 28))
_loaded = {}


@pytest.fixture(scope="module")
def swin_dirs(tmp_path_factory):
    return {k: save_tiny(SwinAdapter.tiny(k), tmp_path_factory.mktemp(f"tiny-{k}")) for k in KINDS}


@pytest.fixture(params=KINDS)
def swin(request, swin_dirs):
    """(kind, adapter) saved with save_pretrained and reloaded through the real loader."""
    if request.param not in _loaded:
        _loaded[request.param] = attnviz.load_model(str(swin_dirs[request.param]))
    return request.param, _loaded[request.param]


def blocks_of(model):
    base = getattr(model, model.base_model_prefix)
    return [b for stage in base.encoder.layers for b in stage.blocks]


def own_forward(adapter, x):
    """A forward with hooks written here: logits, every block's window attention (in the graph), and each block's
    (grid, window, shift) as the module had them after its forward."""
    atts, geo = [], []
    hs = []
    for b in blocks_of(adapter.model):
        hs.append(b.attention.register_forward_hook(lambda m, a, o: atts.append(o[1])))
        hs.append(b.register_forward_hook(
            lambda m, a, kw, o: geo.append((tuple(int(d) for d in a[1]), m.window_size, m.shift_size)),
            with_kwargs=True))
    try:
        kw = {"interpolate_pos_encoding": True} if tuple(x.shape[-2:]) != adapter.native_size else {}
        logits = adapter.model(pixel_values=x, output_attentions=True, **kw).logits
    finally:
        for h in hs:
            h.remove()
    return logits, atts, geo


def slot_tokens(grid, window, shift):
    """[n_windows, window²] token of each slot (-1: padding), by arithmetic: slot (r, c) of window (wr, wc) of the
    grid rolled by -shift holds the padded grid's position ((wr·w + r + shift) mod Hp, (wc·w + c + shift) mod Wp)."""
    rows, cols = grid
    hp, wp = -(-rows // window) * window, -(-cols // window) * window
    out = np.full(((hp // window) * (wp // window), window * window), -1)
    for w in range(out.shape[0]):
        wr, wc = divmod(w, wp // window)
        for k in range(window * window):
            r, c = divmod(k, window)
            pr, pc = (wr * window + r + shift) % hp, (wc * window + c + shift) % wp
            if pr < rows and pc < cols:
                out[w, k] = pr * cols + pc
    return out


def dense(att, grid, window, shift):
    """[..., nW, S, S] window attention -> [..., N, N] over the block's grid (padding columns dropped)."""
    slots = slot_tokens(grid, window, shift)
    n = grid[0] * grid[1]
    out = torch.zeros(*att.shape[:-3], n, n, dtype=torch.float64)
    for w in range(slots.shape[0]):
        real = np.flatnonzero(slots[w] >= 0)
        tok = torch.as_tensor(slots[w][real])
        out[..., tok[:, None], tok[None, :]] = att[..., w, :, :][..., real[:, None], real[None, :]].double()
    return out


def same_window(grid, window, shift):
    """[N, N] bool: two different tokens share a window (the links a block has)."""
    slots = slot_tokens(grid, window, shift)
    n = grid[0] * grid[1]
    m = torch.zeros(n, n, dtype=torch.bool)
    for w in range(slots.shape[0]):
        tok = torch.as_tensor(slots[w][slots[w] >= 0])
        m[tok[:, None], tok[None, :]] = True
    return m & ~torch.eye(n, dtype=torch.bool)


def merge_matrix(fine):
    """[N_coarse, N_fine]: a merged token's value to each child that exists, in equal shares."""
    rows, cols = fine
    cr, cc = (rows + 1) // 2, (cols + 1) // 2
    m = torch.zeros(cr * cc, rows * cols, dtype=torch.float64)
    for r in range(rows):
        for c in range(cols):
            m[(r // 2) * cc + c // 2, r * cols + c] = 1.0
    return m / m.sum(1, keepdim=True)


def per_head_dense(adapter, x):
    """Logits, the hooked attentions, and per block (dense [H, N, N], grid, window, shift, stage)."""
    logits, atts, geo = own_forward(adapter, x)
    stage_of = [s for s, d in enumerate(adapter.model.config.depths) for _ in range(d)]
    return logits, atts, [(dense(a.detach().transpose(0, 1), g, w, s), g, w, s, st)
                          for a, (g, w, s), st in zip(atts, geo, stage_of)]


def matrix_map(blocks, mats, readout):
    """readout · Π over blocks (last to first) of the block matrices, with the merge matrices between stages."""
    p = torch.eye(len(readout), dtype=torch.float64)
    for i in range(len(blocks) - 1, -1, -1):
        p = p @ mats[i]
        if i > 0 and blocks[i - 1][4] != blocks[i][4]:
            p = p @ merge_matrix(blocks[i - 1][1])
    return readout.double() @ p


def rollout_matrix(a, links, discard):
    """0.5·A + 0.5·I over one block's dense fused attention, the weakest ``discard`` of its links dropped."""
    a = a.clone()
    if discard:
        vals = a[links]
        k = int(vals.numel() * discard)
        a[links & (a <= vals.kthvalue(k).values)] = 0
    a = 0.5 * a + 0.5 * torch.eye(len(a), dtype=a.dtype)
    return a / a.sum(-1, keepdim=True)


@pytest.mark.parametrize("size", SIZES)
def test_capture_holds_every_blocks_window_attention_as_hooked(swin, photo, size):
    """Per block: the capture's window attention equals what a hook on the module returns, rows sum to 1, and the
    geometry is the module's (V1 switches the last stage's shift off when its grid equals the window)."""
    kind, adapter = swin
    cap = attnviz.capture(adapter, photo, size=size)
    _, atts, geo = own_forward(adapter, cap.inputs["pixel_values"])
    got = cap.extras["windows"]
    assert len(got) == len(atts) == adapter.n_layers == cap.n_layers == 6 and cap.attentions == ()
    for a, b in zip(got, atts):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), rtol=0, atol=1e-5)
    h = cap.extras["hierarchy"]
    assert [(b.grid, b.window, b.shift) for b in h.blocks] == geo
    assert h.grids[0] == (cap.layout.rows, cap.layout.cols) and cap.layout.n_prefix == 0
    n_last = h.grids[-1][0] * h.grids[-1][1]
    torch.testing.assert_close(cap.readout, torch.full((n_last,), 1 / n_last))
    assert [s["shifts"] for s in stage_info(cap)][:2] == [[0, 1], [0, 1]]
    assert [block_heads(cap, i) for i in range(6)] == [b.shape[1] for b in atts] == [2, 2, 2, 2, 4, 4]


def test_window_placement_is_the_models_own_mixing(photo):
    """The dense matrix built here from the hooked windows (shift undone, padding dropped) mixes the block's values
    exactly as the model does: o_proj(Σ_j A_ij v_j + (1 − Σ_j A_ij)·v_pad) + x_i is the block's residual stream
    after attention, read from the model (V1; a padding slot holds a zero vector, so its value is v_proj's bias)."""
    adapter = SwinAdapter.tiny("swin")
    for size in SIZES:
        inputs = adapter.prepare(photo, size=size)
        seen = {}
        hooks = []
        for i, b in enumerate(blocks_of(adapter.model)):
            hooks.append(b.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(("x", i), a[0])))
            hooks.append(b.layernorm_after.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(("mid", i), a[0])))
        try:
            with torch.no_grad():
                _, _, blocks = per_head_dense(adapter, inputs["pixel_values"])
        finally:
            for h in hooks:
                h.remove()
        for i, (a, grid, window, shift, _) in enumerate(blocks):
            blk = blocks_of(adapter.model)[i]
            x = seen["x", i][0].double()                                              # [N, C]
            heads = a.shape[0]
            v = blk.attention.v_proj.double()(blk.layernorm_before.double()(x))        # [N, C]
            v = v.view(len(x), heads, -1).transpose(0, 1)                             # [H, N, d]
            pad = blk.attention.v_proj.bias.double().view(heads, 1, -1)               # [H, 1, d]
            ctx = a @ v + (1 - a.sum(-1, keepdim=True)) * pad                          # [H, N, d]
            out = blk.attention.o_proj.double()(ctx.transpose(0, 1).reshape(len(x), -1))
            torch.testing.assert_close(out + x, seen["mid", i][0].double(), rtol=1e-4, atol=1e-5)
            blk.float()
        assert any(s for *_, s, _ in blocks)                                          # shifted blocks were checked


@pytest.mark.parametrize("size", SIZES)
def test_query_map_is_the_window_row_zero_outside_the_window(swin, photo, size):
    """swin_head_grid and the attention method place each query's row of the hooked window attention on its stage's
    grid: equal to the dense matrix built here, for every query token of every stage, hence zero outside its
    (shifted) window."""
    kind, adapter = swin
    cap = attnviz.capture(adapter, photo, size=size)
    _, _, blocks = per_head_dense(adapter, cap.inputs["pixel_values"])
    h = cap.extras["hierarchy"]
    for stage in range(h.n_stages):
        rows, cols = h.grids[stage]
        ids = h.stage_blocks(stage)
        for r in range(rows):
            for c in range(cols):
                q = f"{r << stage},{c << stage}"                       # a first-grid patch inside token (r, c)
                grid = swin_head_grid(cap, stage, q)                   # [blocks, H, rows, cols]
                want = torch.stack([blocks[i][0][:, r * cols + c] for i in ids]).view(grid.shape)
                np.testing.assert_allclose(grid, want.numpy(), rtol=1e-5, atol=1e-7)
        # "output" on this stage: the mean pooling's readout handed down through the merges (merge matrices here)
        q_out = cap.readout.double()
        for s in range(h.n_stages - 2, stage - 1, -1):
            q_out = q_out @ merge_matrix(h.grids[s])
        want = torch.stack([q_out @ blocks[i][0] for i in ids]).view(len(ids), -1, rows, cols)
        np.testing.assert_allclose(swin_head_grid(cap, stage, "output"), want.numpy(), rtol=1e-5, atol=1e-7)
        # the registry's attention method: the same rows, drawn on the first grid (each token over its patches)
        li = ids[-1]
        e = attnviz.explain(adapter, cap, "attention", layer=li, head=1, query="1,2")
        tok = (1 >> stage) * cols + (2 >> stage)
        on_stage = blocks[li][0][1, tok].view(rows, cols).numpy()
        up = np.kron(on_stage, np.ones((2 ** stage, 2 ** stage)))[:cap.layout.rows, :cap.layout.cols]
        np.testing.assert_allclose(e.map, up, rtol=1e-5, atol=1e-7)


def test_merge_split_conserves_mass_and_is_the_merge_matrix():
    for fine in ((6, 6), (7, 5), (5, 4), (1, 3)):
        m = Merge(fine)
        v = torch.rand(m.coarse[0] * m.coarse[1], dtype=torch.float64)
        torch.testing.assert_close(m.pull(v), v @ merge_matrix(fine))
        torch.testing.assert_close(m.pull(v).sum(), v.sum())
    # an odd edge: the merged token over (6, 4) has children (6, 4) only... and (6, 5)? no: 7 rows, 5 columns
    m = Merge((7, 5))
    share = m.share.view(7, 5)
    assert share[0, 0] == 0.25 and share[6, 0] == 0.5 and share[0, 4] == 0.5 and share[6, 4] == 1.0


@pytest.mark.parametrize("size", SIZES)
def test_rollout_and_relevance_equal_dense_matrix_products(swin, photo, size):
    """Vector form (the library) against full per-block token-mixing matrices and merge matrices multiplied here,
    to 1e-5: rollout (mean / max fusion, a discard ratio, a start layer, a patch query), relevance, grad_rollout."""
    kind, adapter = swin
    cap = attnviz.capture(adapter, photo, size=size)
    x = cap.inputs["pixel_values"].clone().requires_grad_(True)
    logits, atts, blocks = per_head_dense(adapter, x)
    readout = cap.readout
    last = blocks[-1][1]
    patch = torch.zeros(last[0] * last[1])
    patch[(3 >> 2) * last[1] + (2 >> 2)] = 1.0                                # the last-stage token over patch (3, 2)
    eye = [torch.eye(len(b[0][0]), dtype=torch.float64) for b in blocks]
    for fusion, discard, start, query, q in (("mean", 0.0, 0, "output", readout), ("max", 0.0, 0, "output", readout),
                                             ("mean", 0.5, 0, "output", readout), ("mean", 0.0, 3, "3,2", patch)):
        mats = [rollout_matrix(fuse_heads(b[0], fusion), same_window(*b[1:4]), discard) if i >= start else eye[i]
                for i, b in enumerate(blocks)]
        want = matrix_map(blocks, mats, q).view(cap.layout.rows, cap.layout.cols)
        got = attnviz.explain(adapter, cap, "rollout", head_fusion=fusion, discard_ratio=discard, start_layer=start,
                              query=query).map
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-7)
        assert abs(got.sum() - 1) < 1e-5                                      # rows renormalised, merges keep mass
    for target in (0, 3):
        grads = torch.autograd.grad(logits[0, target], atts, retain_graph=True)
        a_bar = [dense(positive_grad_attention(a.detach().transpose(0, 1), g.transpose(0, 1))[None],
                       *b[1:4])[0] for a, g, b in zip(atts, grads, blocks)]   # [N, N] per block
        want = matrix_map(blocks, [e + ab for e, ab in zip(eye, a_bar)], readout).view(cap.layout.rows, -1)
        got = attnviz.explain(adapter, cap, "relevance", target=target)
        np.testing.assert_allclose(got.map, want.numpy(), rtol=1e-5, atol=1e-7)
        want = matrix_map(blocks, [rollout_matrix(ab, None, 0) for ab in a_bar], readout).view(cap.layout.rows, -1)
        np.testing.assert_allclose(attnviz.explain(adapter, cap, "grad_rollout", target=target).map, want.numpy(),
                                   rtol=1e-5, atol=1e-7)


def test_class_specific_maps_differ_between_targets_rollout_does_not(swin, photo):
    kind, adapter = swin
    cap = attnviz.capture(adapter, photo, size=(28, 20))
    for method in ("relevance", "grad_rollout", "attn_grad"):
        m0, m1 = (attnviz.explain(adapter, cap, method, target=t).map for t in (0, 1))
        assert not np.allclose(m0, m1), method
    r0, r1 = (attnviz.explain(adapter, cap, "rollout", target=t).map for t in (0, 1))
    np.testing.assert_array_equal(r0, r1)


def test_grad_cam_at_every_block_by_hand(swin, photo):
    """Selvaraju et al. on each block's output tokens, on its stage's grid: α_c = mean of ∂score/∂A_c, ReLU(Σ α_c
    A_c), by autograd here; the library's map is that grid drawn on the first grid."""
    kind, adapter = swin
    cap = attnviz.capture(adapter, photo, size=(28, 20))
    t = adapter.resolve_target(cap, None).index
    kept = []
    hooks = [b.register_forward_hook(lambda m, a, o: kept.append(o[0])) for b in blocks_of(adapter.model)]
    try:
        x = cap.inputs["pixel_values"].clone().requires_grad_(True)                # frozen weights: the graph
        logits = adapter.model(pixel_values=x, interpolate_pos_encoding=True).logits
    finally:
        for h in hooks:
            h.remove()
    grads = torch.autograd.grad(logits[0, t], kept)
    for layer, (a, g) in enumerate(zip(kept, grads)):
        cam = torch.relu(a[0] @ g[0].mean(0)).detach()                           # [N_s]
        block = cap.extras["hierarchy"].blocks[layer]
        up = np.kron(cam.view(block.grid).numpy(), np.ones((2 ** block.stage,) * 2))[:cap.layout.rows, :cap.layout.cols]
        e = attnviz.explain(adapter, cap, "grad_cam", target=t, layer=layer)
        np.testing.assert_allclose(e.map, up, rtol=1e-4, atol=1e-6)
    assert len(kept) == 6


def test_every_method_runs_and_faithfulness_checks_follow_the_model(swin, photo):
    """Every registered method gives a finite map over the first grid; deletion's first and last points are the
    model's own probability on the image and on the all-baseline image; the randomisation check recomputes the map
    on the untouched copy exactly, then it changes."""
    from attnviz.methods import METHODS, list_methods
    from attnviz.metrics import cascading_randomisation, deletion_insertion
    light = {"integrated_gradients": {"n_steps": 4}, "gradient_shap": {"n_samples": 2}, "smoothgrad": {"nt_samples": 2},
             "lime": {"n_samples": 16}, "kernel_shap": {"n_samples": 16}}
    kind, adapter = swin
    cap = attnviz.capture(adapter, photo, size=(28, 20))
    for spec in list_methods(adapter.family):
        if spec.over not in ("patches", "pixels"):
            continue
        e = attnviz.explain(adapter, cap, spec.name, **light.get(spec.name, {}))
        want = (cap.layout.rows, cap.layout.cols) if e.over == "patches" else cap.layout.input_size
        assert e.map.shape == want and np.isfinite(e.map).all(), spec.name
        assert (e.target is not None) == METHODS[spec.name].class_specific
    rel = attnviz.explain(adapter, cap, "relevance")
    res = deletion_insertion(adapter, cap, rel, steps=4)
    x = cap.inputs["pixel_values"]
    with torch.no_grad():
        p = torch.softmax(adapter.model(pixel_values=x, interpolate_pos_encoding=True).logits, -1)[0, rel.target.index]
        p0 = torch.softmax(adapter.model(pixel_values=torch.zeros_like(x), interpolate_pos_encoding=True).logits,
                           -1)[0, rel.target.index]
    assert res["deletion"].values[0] == pytest.approx(float(p), abs=1e-5)
    assert res["deletion"].values[-1] == pytest.approx(float(p0), abs=1e-5)       # "mean" baseline: zeros
    steps = cascading_randomisation(adapter, cap, rel, max_blocks=2)
    assert steps[0].spearman_abs == pytest.approx(1.0)
    assert not np.allclose(steps[-1].map, rel.map)


def _rollout_matrix(mats, discard):
    """Abnar & Zuidema (2020) rollout written out here in float64 numpy, as T×T matrices: per layer, zero
    the lowest ``discard`` share of the off-diagonal weights (every weight at or below the k-th smallest),
    Â = rows normalised of ½A + ½I, and R = Â_L ··· Â_1."""
    t = mats[0].shape[-1]
    eye, off = np.eye(t), ~np.eye(t, dtype=bool)
    r = np.eye(t)
    for a in mats:
        a = a.detach().double().numpy().copy()
        k = int(off.sum() * discard)
        if k:
            a[off & (a <= np.sort(a[off])[k - 1])] = 0.0
        a = 0.5 * a + 0.5 * eye
        r = (a / a.sum(1, keepdims=True)) @ r
    return torch.from_numpy(r).float()


def test_vector_form_equals_the_matrix_form_on_every_classifier(family, photo):
    """The plain ViT families take the same vector path: equal to the rollout matrix written out in the
    test / R = Π(I + Ā) as T×T matrices."""
    kind, adapter = family
    cap = attnviz.capture(adapter, photo, size=(32, 48))
    t = adapter.resolve_target(cap, None)
    lay = cap.layout
    for fusion, discard, start, query in (("mean", 0.0, 0, "output"), ("max", 0.3, 0, "output"),
                                          ("min", 0.0, 1, "1,2")):
        mats = [fuse_heads(a, fusion) for a in cap.attentions[start:]]
        want = lay.to_grid(query_vector(cap, query) @ _rollout_matrix(mats, discard))
        got = attnviz.explain(adapter, cap, "rollout", head_fusion=fusion, discard_ratio=discard, start_layer=start,
                              query=query).map
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    a_bar = [positive_grad_attention(a, g) for a, g in zip(cap.attentions, cap.attention_grads(t.index))]
    r = torch.eye(lay.n_tokens)
    for ab in a_bar:
        r = r + ab @ r
    q = adapter.target_readout(cap, t)
    np.testing.assert_allclose(attnviz.explain(adapter, cap, "relevance", target=t.index).map, lay.to_grid(q @ r),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(attnviz.explain(adapter, cap, "grad_rollout", target=t.index, discard_ratio=0.2).map,
                               lay.to_grid(q @ _rollout_matrix(a_bar, 0.2)), rtol=1e-5, atol=1e-7)


def test_an_earlier_input_does_not_change_a_later_ones_scores(photo):
    """transformers' V1 SwinLayer switches a block's shift off for a grid no larger than its window and keeps it off:
    a 24² input (last grid 3 = window) used to change a 48² input's logits after it. Fresh copy = reference."""
    adapter = SwinAdapter.tiny("swin")
    fresh = copy.deepcopy(adapter.model)
    big = adapter.prepare(photo, size=(48, 48))
    attnviz.capture(adapter, photo)                                               # 24²: last stage 3×3
    after = adapter.forward_scores(big["pixel_values"], big)
    with torch.no_grad():
        ref = fresh(pixel_values=big["pixel_values"], interpolate_pos_encoding=True).logits
    torch.testing.assert_close(after, ref, rtol=1e-5, atol=1e-6)
    assert [b.shift_size for b in blocks_of(fresh)] == [0, 1, 0, 1, 0, 1]        # 48²: 24, 12, 6: all shifted


def test_too_small_an_input_is_refused_in_one_sentence(photo):
    """V1: a stage grid smaller than the window is refused, naming the smallest size (2·((3 − 1)·4 + 1) = 18)."""
    adapter = SwinAdapter.tiny("swin")
    with pytest.raises(UsageError, match=r"at least 18×18 pixels \(this one is 16×16\)"):
        attnviz.capture(adapter, photo, size=(16, 16))
    cap = attnviz.capture(adapter, photo, size=(18, 18))                          # 9, 5, 3: fits
    assert cap.extras["hierarchy"].grids == ((9, 9), (5, 5), (3, 3))
    v2 = SwinAdapter.tiny("swinv2")                                               # V2 pads instead
    assert attnviz.capture(v2, photo, size=(16, 16)).extras["hierarchy"].grids[-1] == (2, 2)


def test_cli_explains_a_tiny_swin_offline(swin_dirs, tmp_path, photo, capsys):
    import json

    from attnviz.cli import main
    img = tmp_path / "p.png"
    photo.save(img)
    for method in ("relevance", "rollout"):
        code = main(["explain", str(img), "--model", str(swin_dirs["swin"]), "--method", method, "--json"])
        rec = json.loads(capsys.readouterr().out)
        assert code == 0 and rec["map_shape"] == [12, 12] and rec["pooling"] == "mean"
