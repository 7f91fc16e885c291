"""The attention walk-through takes a layer apart with the model's own tensors (issue 14).

References come from the model: the attention its module returned in the same forward, and the per-head
outputs its output projection received (a hook written here). The DINO mask is checked on hand-made rows.
"""
import numpy as np
import pytest
import torch

import attnviz
from attnviz.anatomy import attention_anatomy, attention_module
from attnviz.headstats import dino_masks, mass_mask
from attnviz.errors import UsageError

from .test_readout import tiny

FAMILIES = [("classifier", "vit"), ("classifier", "deit-teacher"), ("classifier", "beit"),
            ("classifier", "dinov2-registers"), ("clip", "clip"), ("clip", "siglip"), ("captioning", "blip")]


def _beit_with_a_position_bias():
    adapter = tiny("classifier", "beit")
    with torch.no_grad():               # transformers initialises BEiT's table to zeros: make the term visible
        for name, p in adapter.model.named_parameters():
            if "relative_position_bias_table" in name and p.abs().max() == 0:
                p.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(3))
    return adapter


@pytest.mark.parametrize("group,kind", FAMILIES, ids=[k for _, k in FAMILIES])
def test_softmax_of_q_dot_k_is_the_models_attention(group, kind, photo):
    adapter = _beit_with_a_position_bias() if kind == "beit" else tiny(group, kind)
    cap = attnviz.capture(adapter, photo, texts=["a red circle"] if group == "clip" else None, grads=False)
    for layer in (0, -1):
        an = attention_anatomy(adapter, cap.inputs, layer)
        t = cap.layout.n_tokens
        assert an.q.shape[:2] == an.k.shape[:2] == (cap.n_heads, t)
        # against the attention the capture holds (an earlier, separate forward)
        assert float((an.model_attention - cap.attentions[layer]).abs().max()) <= 1e-6
        for query in (0, t - 1, cap.layout.n_prefix):
            diff = (an.softmax(query) - cap.attentions[layer][:, query]).abs().max()
            assert float(diff) <= 1e-5
        assert an.max_difference() <= 1e-5
        if kind == "beit":
            assert an.bias is not None and an.bias_row(0).abs().max() > 0.1
            # without the position term the softmax would not match: the term is real
            assert float((torch.softmax(an.dot(5), -1) - cap.attentions[layer][:, 5]).abs().max()) > 1e-3
        else:
            assert an.bias is None or an.bias.abs().max() == 0


@pytest.mark.parametrize("kind", ["vit", "dinov2-registers"])
def test_head_output_is_the_weighted_sum_of_values(kind, photo):
    """Each head's output, as the model's output projection receives it, is Σ_j a_ij v_j."""
    adapter = tiny("classifier", kind)
    cap = attnviz.capture(adapter, photo, grads=False)
    module = attention_module(adapter.token_block(1))
    got = []
    handle = module.o_proj.register_forward_pre_hook(lambda m, args: got.append(args[0][0].detach()))  # [T, H·d]
    try:
        an = attention_anatomy(adapter, cap.inputs, 1)
    finally:
        handle.remove()
    heads = got[-1].view(cap.layout.n_tokens, cap.n_heads, -1)                   # [T, H, d]
    for query in (0, 3, cap.layout.n_tokens - 1):
        torch.testing.assert_close(an.output(query), heads[query], rtol=1e-4, atol=1e-6)


def test_bad_layer_is_one_sentence(photo):
    adapter = tiny("classifier", "vit")
    cap = attnviz.capture(adapter, photo, grads=False)
    with pytest.raises(UsageError, match="out of range"):
        attention_anatomy(adapter, cap.inputs, 7)


def test_mass_mask_keeps_the_smallest_set_above_the_share():
    row = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    # sorted: 0.4, 0.3, 0.15, 0.1, 0.05 -> 0.4 < 0.6, 0.7 >= 0.6: keep {0.4, 0.3}
    assert mass_mask(row, 0.6).tolist() == [False, True, False, True, False]
    assert mass_mask(row, 0.7).tolist() == [False, True, False, True, False]      # exactly 0.7 is enough
    assert mass_mask(row, 0.71).tolist() == [False, True, False, True, True]
    assert mass_mask(row, 1.0).all()
    assert mass_mask(row * 7, 0.6).tolist() == mass_mask(row, 0.6).tolist()      # scale-free
    with pytest.raises(UsageError):
        mass_mask(row, 0.0)


def test_dino_masks_follow_each_heads_cls_row(photo):
    adapter = tiny("classifier", "dinov2-registers")
    cap = attnviz.capture(adapter, photo, grads=False)
    masks = dino_masks(cap, layer=-1, share=0.6, query="cls")                     # [H, rows, cols]
    lay = cap.layout
    assert masks.shape == (cap.n_heads, lay.rows, lay.cols)
    for h in range(cap.n_heads):
        patches = cap.attentions[-1][h, 0, lay.n_prefix:].double()                # CLS row, patches only
        w = (patches / patches.sum()).numpy()
        kept = masks[h].ravel()
        assert w[kept].sum() >= 0.6 - 1e-9                                        # holds the share
        smallest = np.sort(w)[::-1]
        n_needed = int(np.searchsorted(np.cumsum(smallest), 0.6 - 1e-12) + 1)
        assert kept.sum() == n_needed                                             # and no more patches
        assert w[kept].min() >= w[~kept].max() if (~kept).any() else True         # the heaviest ones


@pytest.mark.parametrize("group,kind", [("classifier", "vit"), ("classifier", "dinov2-registers"), ("clip", "clip")])
def test_every_layer_taken_apart_in_one_forward(group, kind, photo):
    """Issue 25 item 8: the lesson's layers come from ONE forward (was one per layer), each equal to the
    model's own attention of a separate capture and to softmax(q·k/√d) of its own projections."""
    from attnviz.anatomy import attention_anatomies
    adapter = tiny(group, kind)
    cap = attnviz.capture(adapter, photo, texts=["a red circle"] if group == "clip" else None, grads=False)
    forwards = []
    handle = adapter.model.register_forward_pre_hook(lambda m, a: forwards.append(1))
    try:
        every = attention_anatomies(adapter, cap.inputs)
    finally:
        handle.remove()
    assert sorted(every) == list(range(cap.n_layers)) and len(forwards) == 1
    for layer, an in every.items():
        assert an.layer == layer
        assert float((an.model_attention - cap.attentions[layer]).abs().max()) <= 1e-6
        q = 0 if cap.layout.n_prefix else cap.layout.n_tokens // 2
        want = torch.softmax(torch.einsum("hd,htd->ht", an.q[:, q], an.k) * an.scale, -1)   # [H, T]
        assert float((want - cap.attentions[layer][:, q]).abs().max()) <= 1e-5
