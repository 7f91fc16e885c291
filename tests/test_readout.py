"""Every family's declared pooling, checked against the model itself.

The readout ("output" query) says which of the last block's tokens the prediction reads. Here the model's
own autograd says it: the gradient of each target's score with respect to the last block's output tokens
is non-zero exactly on the tokens the readout weights, for every family a user can load (tiny random
models of each; the same code path as the catalog checkpoints).
"""
import numpy as np
import pytest
import torch

import attnviz
from attnviz.adapters.captioning import CaptionAdapter
from attnviz.adapters.classifier import ClassifierAdapter
from attnviz.adapters.clip import ClipAdapter
from attnviz.adapters.swin import SwinAdapter
from attnviz.errors import UsageError

from .conftest import CAPTION_KINDS, CLASSIFIER_KINDS, CLIP_KINDS

ALL_KINDS = [("classifier", k) for k in CLASSIFIER_KINDS] + [("clip", k) for k in CLIP_KINDS] + \
            [("captioning", k) for k in CAPTION_KINDS] + [("swin", k) for k in ("swin", "swinv2", "swin-headless")]
# What each family's head does, read from transformers' modelling code (not from attnviz):
EXPECTED_POOLING = {"vit": "cls", "vit-headless": "cls", "deit": "cls", "deit-teacher": "cls+distillation",
                    "beit": "mean", "dinov2": "cls+mean", "dinov2-headless": "cls", "dinov2-registers": "cls+mean",
                    "clip": "cls", "siglip": "attention", "blip": "attention", "vit-gpt2": "attention",
                    "git": "attention", "swin": "mean", "swinv2": "mean", "swin-headless": "mean"}
PROMPTS = ["a red circle", "a blue square", "a cat"]
_tiny = {}


def tiny(group, kind):
    if (group, kind) not in _tiny:
        cls = {"classifier": ClassifierAdapter, "clip": ClipAdapter, "captioning": CaptionAdapter,
               "swin": SwinAdapter}[group]
        _tiny[group, kind] = cls.tiny(kind)
    return _tiny[group, kind]


def last_block_token_grads(adapter, cap, targets):
    """[n_targets, T] norm of d score_t / d (last block's output token i), straight from autograd."""
    store = []

    def keep(module, args, out):
        tokens = out[0] if isinstance(out, tuple) else out                    # [1, T, D]
        store.append(tokens)
    handle = adapter.token_block(adapter.n_layers - 1).register_forward_hook(keep)
    try:
        x = cap.inputs["pixel_values"].clone().requires_grad_(True)
        scores, _, _ = adapter._run(cap.inputs, x, attentions=False)           # [1, n_targets]
    finally:
        handle.remove()
    tokens = store[-1]
    out = []
    for t in targets:
        g, = torch.autograd.grad(scores[0, t], tokens, retain_graph=True)    # [1, T, D]
        out.append(g[0])
    return torch.stack(out)                                                  # [n_targets, T, D]


@pytest.mark.parametrize("group,kind", ALL_KINDS, ids=[k for _, k in ALL_KINDS])
def test_readout_reads_exactly_the_tokens_the_score_depends_on(group, kind, photo):
    adapter = tiny(group, kind)
    assert adapter.pooling == EXPECTED_POOLING[kind]
    cap = attnviz.capture(adapter, photo, texts=PROMPTS if group == "clip" else None)
    assert cap.pooling == adapter.pooling
    targets = [t.index for t in cap.targets[:3]]
    grads = last_block_token_grads(adapter, cap, targets)                    # [n, T, D]
    depends = grads.norm(dim=-1) > 0                                         # [n, T]
    read = cap.readout > 0                                                   # [T]
    for i, t in enumerate(targets):
        names = [cap.layout.token_name(j) for j in range(cap.layout.n_tokens)]
        assert depends[i].tolist() == read.tolist(), (
            f"{kind}: score {t} depends on {[n for n, d in zip(names, depends[i]) if d][:6]}…, "
            f"readout weights {[n for n, r in zip(names, read) if r][:6]}…")
        # the class-specific readout reads nothing the score ignores
        tr = adapter.target_readout(cap, cap.targets[t])
        assert torch.isclose(tr.sum(), torch.tensor(1.0), atol=1e-5)
        assert not (tr > 0)[~depends[i]].any()


def test_distilled_deit_logits_average_the_two_heads_the_readout_weights(photo):
    """The model's logits, rebuilt here from its last hidden state, are ½ CLS head + ½ distillation head:
    the two tokens the readout weights, each with ½."""
    adapter = tiny("classifier", "deit-teacher")
    m = adapter.model
    cap = attnviz.capture(adapter, photo)
    with torch.no_grad():
        out = m(pixel_values=cap.inputs["pixel_values"], output_hidden_states=True)
        h = m.deit.layernorm(out.hidden_states[-1])                           # [1, T, D]
        by_hand = 0.5 * (m.cls_classifier(h[:, 0]) + m.distillation_classifier(h[:, 1]))
    torch.testing.assert_close(by_hand, out.logits)
    assert cap.readout[:2].tolist() == [0.5, 0.5] and cap.readout[2:].abs().sum() == 0
    # and every "output" map is that half-and-half mixture of the two token rows
    for method in ("attention", "rollout", "relevance"):
        mix = [attnviz.explain(adapter, cap, method, query=q).map for q in ("cls", "distillation")]
        np.testing.assert_allclose(attnviz.explain(adapter, cap, method).map, 0.5 * (mix[0] + mix[1]),
                                   rtol=1e-5, atol=1e-8)


def test_mean_pooling_reads_each_patch_with_one_nth(photo):
    """BEiT's head reads the mean of the N patch tokens: the readout is 1/N on each patch and 0 on CLS, and the
    model's own gradient of a score with respect to the last block's tokens is the same vector for every
    patch (each read with the same weight) and zero for CLS."""
    adapter = tiny("classifier", "beit")
    cap = attnviz.capture(adapter, photo)
    p, n = cap.layout.n_prefix, cap.layout.n_patches
    assert (p, n) == (1, 16)
    torch.testing.assert_close(cap.readout.float(), torch.tensor([0.0] + [1 / 16] * 16))
    g = last_block_token_grads(adapter, cap, [t.index for t in cap.targets[:2]])       # [2, T, D]
    assert g[:, 0].abs().max() == 0 and g[:, 1:].abs().max() > 0
    torch.testing.assert_close(g[:, 1:], g[:, 1:2].expand_as(g[:, 1:]), rtol=1e-5, atol=1e-9)


def test_beit_mean_pooling_is_explained_where_it_used_to_be_zero(photo):
    """Issue 10 defect 1: with CLS as the readout, BEiT's last-layer d score/dA on the read row was all zero,
    attn_grad was an all-zero map and Grad-CAM refused the block the head reads."""
    adapter = tiny("classifier", "beit")
    cap = attnviz.capture(adapter, photo)
    t = adapter.resolve_target(cap, None)
    g_last = cap.attention_grads(t.index)[-1]                                 # [H, T, T]
    x = cap.inputs["pixel_values"].clone().requires_grad_(True)             # frozen weights: the input makes the graph
    out = adapter.model(pixel_values=x, output_attentions=True)              # the model's own autograd
    own = torch.autograd.grad(out.logits[0, t.index], out.attentions[-1])[0][0]           # [H, T, T]
    torch.testing.assert_close(g_last.to(own.dtype), own, rtol=1e-4, atol=1e-7)
    assert g_last[:, 0].abs().max() == 0                                      # CLS row: the head never reads it
    assert g_last[:, cap.layout.n_prefix:].abs().max() > 0                    # patch rows: it does
    assert np.abs(attnviz.explain(adapter, cap, "attn_grad", target=t.index).map).max() > 0
    cam = attnviz.explain(adapter, cap, "grad_cam", target=t.index)
    assert cam.params["layer"] == -1 and cam.map.max() > 0
    # a CLS-pooled ViT still refuses its last block, saying why
    vit = tiny("classifier", "vit")
    vcap = attnviz.capture(vit, photo)
    assert attnviz.explain(vit, vcap, "grad_cam").params["layer"] == -2
    with pytest.raises(UsageError, match="reads only the CLS token"):
        attnviz.explain(vit, vcap, "grad_cam", layer=-1)


def test_siglip_probe_is_the_models_own_attention_pooling(photo):
    """The readout is the probe attention nn.MultiheadAttention itself computes (asked for per head here), and the
    recomputation the capture uses leaves the model's scores unchanged."""
    adapter = tiny("clip", "siglip")
    cap = attnviz.capture(adapter, photo, texts=PROMPTS)
    vm = adapter.model.vision_model
    with torch.no_grad():
        lhs = vm(pixel_values=cap.inputs["pixel_values"]).last_hidden_state          # [1, T, D], post-LayerNorm
        probe = vm.head.probe.expand(1, -1, -1)
        _, per_head = vm.head.attention(probe, lhs, lhs, need_weights=True, average_attn_weights=False)  # [1, H, 1, T]
        plain = adapter.forward_scores(cap.inputs["pixel_values"], cap.inputs)       # no hook on this path
    torch.testing.assert_close(cap.extras["probe_attention"][0], per_head, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(cap.readout, per_head[0].mean(0)[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(cap.scores, plain[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(UsageError, match="Unknown query"):
        attnviz.explain(adapter, cap, "rollout", query="cls")


def test_siglip_class_specific_readout_is_the_gradient_weighted_probe(photo):
    """Chefer et al. weight every attention by its gradient: the probe's, for each prompt, computed here by
    rebuilding SigLIP's pooling head and logit from the model's own modules and differentiating by hand."""
    adapter = tiny("clip", "siglip")
    model = adapter.model
    cap = attnviz.capture(adapter, photo, texts=PROMPTS)
    vm, head = model.vision_model, model.vision_model.head
    with torch.no_grad():
        lhs = vm(pixel_values=cap.inputs["pixel_values"]).last_hidden_state[0]        # [T, D]
        text = model.get_text_features(input_ids=cap.inputs["input_ids"])             # [P, E]
        text = text.pooler_output if hasattr(text, "pooler_output") else text
    d, h = lhs.shape[-1], head.attention.num_heads
    wq, wk, wv = head.attention.in_proj_weight.chunk(3)
    bq, bk, bv = head.attention.in_proj_bias.chunk(3)
    q = (head.probe[0] @ wq.T + bq).view(1, h, d // h).transpose(0, 1)               # [H, 1, d/H]
    k = (lhs @ wk.T + bk).view(-1, h, d // h).transpose(0, 1)                         # [H, T, d/H]
    v = (lhs @ wv.T + bv).view(-1, h, d // h).transpose(0, 1)                         # [H, T, d/H]
    probs = torch.softmax(q @ k.transpose(1, 2) / (d // h) ** 0.5, -1).detach().requires_grad_(True)  # [H, 1, T]
    pooled = head.attention.out_proj((probs @ v).transpose(0, 1).reshape(1, d))       # [1, D]
    pooled = pooled + head.mlp(head.layernorm(pooled))
    img = pooled / pooled.norm(dim=-1, keepdim=True)
    txt = text / text.norm(dim=-1, keepdim=True)
    logits = img @ txt.T * model.logit_scale.exp() + model.logit_bias                 # [1, P]
    torch.testing.assert_close(logits[0].detach(), cap.scores, rtol=1e-4, atol=1e-4)
    readouts = []
    for p in range(len(PROMPTS)):
        g, = torch.autograd.grad(logits[0, p], probs, retain_graph=True)
        w = (g * probs).clamp(min=0).mean(0)[0].detach()                             # [T]
        mine = adapter.target_readout(cap, cap.targets[p])
        torch.testing.assert_close(mine, w / w.sum(), rtol=1e-4, atol=1e-7)
        readouts.append(mine)
    assert not torch.allclose(readouts[0], readouts[1])                               # prompts read differently


def test_captioner_relevance_is_the_encoder_decoder_rule(caption_dirs, photo):
    """Issue 10 defect 2: image relevance of a caption word is Chefer's encoder–decoder rule, not a fixed readout."""
    for kind in CAPTION_KINDS:
        adapter = attnviz.load_model(str(caption_dirs[kind]))
        cap = attnviz.capture(adapter, photo)
        for t in cap.targets[:2]:
            rel = attnviz.explain(adapter, cap, "relevance", target=t.index)
            ref = attnviz.explain(adapter, cap, "caption_relevance", target=t.index)
            np.testing.assert_array_equal(rel.map, ref.map)
            assert "encoder–decoder" in rel.meta["rule"]
        # a patch query is still the encoder's own relevance row
        patch = attnviz.explain(adapter, cap, "relevance", query="0,0")
        assert patch.map.shape == rel.map.shape and "rule" not in patch.meta
