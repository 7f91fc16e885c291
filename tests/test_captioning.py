"""Captioning models (BLIP, ViT-GPT2, GIT): generated / typed captions, per-token maps, relevance by hand."""
import json

import numpy as np
import pytest
import torch

import attnviz
from attnviz.cli import main
from attnviz.errors import ModelUnavailable, UsageError
from attnviz.methods import list_methods
from attnviz.methods.captioning import cross_attention_strip

from .conftest import CAPTION_KINDS as KINDS

LIGHT = {"integrated_gradients": {"n_steps": 8}, "gradient_shap": {"n_samples": 4}, "smoothgrad": {"nt_samples": 4},
         "lime": {"n_samples": 16}, "kernel_shap": {"n_samples": 16}}
MAX_NEW = 6


_loaded = {}


def load(caption_dirs, kind):
    if kind not in _loaded:
        _loaded[kind] = attnviz.load_model(str(caption_dirs[kind]))
        _loaded[kind].max_new_tokens = MAX_NEW
    return _loaded[kind]


@pytest.fixture(params=KINDS)
def captioner(request, caption_dirs):
    return request.param, load(caption_dirs, request.param)


_captured = {}


def generated(adapter, photo):
    """One capture of the generated caption per model, shared by the tests that only read it."""
    if adapter.kind not in _captured:
        _captured[adapter.kind] = attnviz.capture(adapter, photo)
    return _captured[adapter.kind]


def test_loads_as_captioning_family(captioner):
    kind, adapter = captioner
    assert adapter.family == "captioning" and adapter.kind == kind
    assert not adapter.model.training and not any(p.requires_grad for p in adapter.model.parameters())
    impl = {"blip": lambda c: c.text_config._attn_implementation, "git": lambda c: c._attn_implementation,
            "vit-gpt2": lambda c: c.decoder._attn_implementation}[kind](adapter.model.config)
    assert impl == "eager"


def test_generation_gives_a_finite_map_per_token(captioner, photo):
    kind, adapter = captioner
    cap = generated(adapter, photo)
    n = len(cap.targets)
    assert 2 <= n <= MAX_NEW and cap.scores.shape == (n,)
    assert all(t.kind == "token" for t in cap.targets)
    assert cap.extras["caption_ids"] == cap.inputs["caption_ids"][0, 1:].tolist()
    lay = cap.layout
    assert lay.n_prefix == 1 and (lay.rows, lay.cols) == (4, 4)
    assert len(cap.attentions) == 2 and cap.attentions[0].shape == (4, lay.n_tokens, lay.n_tokens)
    assert [c.shape for c in cap.cross_attentions] == [(4, n + 1, lay.n_tokens)] * 2
    maps = {}
    for method, targets in (("cross_attention", cap.targets), ("caption_relevance", cap.targets[:2])):
        for t in targets:
            e = attnviz.explain(adapter, cap, method, target=t.index)
            assert e.map.shape == (4, 4) and np.isfinite(e.map).all() and (e.map >= 0).all()
            assert e.target == t
            maps[method, t.index] = e.map
        assert not np.allclose(maps[method, 0], maps[method, 1])           # different tokens, different maps


def test_teacher_forced_log_probs_equal_greedy_generation(captioner, photo):
    kind, adapter = captioner
    cap = generated(adapter, photo)
    pv = cap.inputs["pixel_values"]
    with torch.no_grad():
        g = adapter.model.generate(pixel_values=pv, max_new_tokens=MAX_NEW, num_beams=1, do_sample=False,
                                   output_scores=True, return_dict_in_generate=True)
    ids = cap.extras["caption_ids"]
    assert g.sequences[0, 1:len(ids) + 1].tolist() == ids
    steps = torch.stack([torch.log_softmax(s[0], -1)[i] for s, i in zip(g.scores, ids)])
    torch.testing.assert_close(cap.extras["log_probs"], steps, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(adapter.probabilities(cap), steps.exp(), rtol=1e-4, atol=1e-6)
    # Scoring the generated caption again, teacher-forced from its ids, reproduces every token's probability.
    again = adapter.capture(adapter.prepare(photo, caption_ids=ids))
    assert again.extras["source"] == "ids"
    torch.testing.assert_close(again.extras["log_probs"], cap.extras["log_probs"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again.scores, cap.scores)
    # The function Captum explains is the same caption's logits.
    torch.testing.assert_close(adapter.forward_scores(pv.repeat(2, 1, 1, 1), cap.inputs)[1], cap.scores,
                               rtol=1e-4, atol=1e-5)


def test_cross_attention_rows_and_git_slice(captioner, photo):
    kind, adapter = captioner
    cap = generated(adapter, photo)
    t_img = cap.layout.n_tokens
    ids = cap.inputs["caption_ids"]
    pv = cap.inputs["pixel_values"]
    with torch.no_grad():
        if kind == "blip":
            enc = adapter.model.vision_model(pixel_values=pv).last_hidden_state
            direct = adapter.model.text_decoder(input_ids=ids, encoder_hidden_states=enc,
                                                output_attentions=True).cross_attentions
        elif kind == "vit-gpt2":
            direct = adapter.model(pixel_values=pv, decoder_input_ids=ids, output_attentions=True).cross_attentions
        else:
            joint = adapter.model(pixel_values=pv, input_ids=ids, output_attentions=True).attentions
            assert joint[0].shape[-1] == t_img + ids.shape[1]                 # image tokens first, then the text
            direct = [a[:, :, t_img:, :t_img] for a in joint]
            for a in joint:
                assert a[0, :, :t_img, t_img:].abs().max() == 0               # the image never sees the text
                torch.testing.assert_close(a[0].sum(-1), torch.ones(a.shape[1:3]))
    for c, d in zip(cap.cross_attentions, direct):
        torch.testing.assert_close(c, d[0], rtol=1e-5, atol=1e-6)
        rows = c.sum(-1)                                                      # [H, Q]
        if kind == "git":
            assert c.shape[-1] == t_img and (rows < 1).all() and (rows > 0).all()
        else:
            torch.testing.assert_close(rows, torch.ones_like(rows))
    e = attnviz.explain(adapter, cap, "cross_attention", target=1, layer=0, head="1")
    assert e.meta["image_share"] == pytest.approx(float(cap.cross_attentions[0][1, 1].sum()), abs=1e-6)
    np.testing.assert_allclose(e.map, cap.cross_attentions[0][1, 1, 1:].reshape(4, 4).numpy(), rtol=1e-6)
    strip = cross_attention_strip(cap, layer=-1, head="max")
    assert strip.shape == (len(cap.targets), 4, 4)
    np.testing.assert_allclose(strip[1], attnviz.explain(adapter, cap, "cross_attention", target=1, head="max").map)


# --------------------------------------------------------------------------- Chefer et al. 2021, by hand
# "Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers",
# ICCV 2021 (https://arxiv.org/abs/2103.15679), section 3, written here in float64 numpy from the paper's
# equations, fed by attentions and gradients of forwards these tests run on the models themselves.

def _np(t):
    return t.detach().double().numpy()


# attnviz accumulates R in float64 (R − I in eqs. 8–9 cancels on a diagonal of 1 + ~1e-4 on these tiny random
# models; in float32 that left relative differences up to 7e-4 from this float64 reference).
TOL = dict(rtol=1e-4, atol=1e-7)


def _eq5(a, g):
    """Ā = E_h[(∇A ⊙ A)^+]: a, g [1, H, Q, K] tensors -> [Q, K]."""
    return np.maximum(_np(g[0]) * _np(a[0]), 0.0).mean(axis=0)


def _eqs8_9(r):
    """R̄ = Ŝ with each row divided by its sum (Ŝ = R − I; a zero row stays zero), plus I."""
    n = r.shape[0]
    s = r - np.eye(n)
    out = np.zeros_like(s)
    for m in range(n):
        total = sum(s[m])
        if total > 0:
            out[m] = s[m] / total
    return out + np.eye(n)


def _encoder_decoder_relevance(enc, dec, cross):
    """R^ti of an encoder–decoder: enc, dec, cross are lists of (A, ∇A) per layer."""
    n_i, n_t = enc[0][0].shape[-1], dec[0][0].shape[-1]
    r_ii = np.eye(n_i)                                                    # eq. 3
    for a, g in enc:
        r_ii = r_ii + _eq5(a, g) @ r_ii                                   # eq. 6 (image self-attention)
    r_tt, r_ti = np.eye(n_t), np.zeros((n_t, n_i))                        # eqs. 3, 4
    for (a, g), (c, cg) in zip(dec, cross):
        a_tt = _eq5(a, g)
        r_tt, r_ti = r_tt + a_tt @ r_tt, r_ti + a_tt @ r_ti               # eqs. 6, 7 (text self-attention)
        r_ti = r_ti + _eqs8_9(r_tt).T @ _eq5(c, cg) @ _eqs8_9(r_ii)       # eq. 10 (cross-attention)
    return r_ti


def _caption_map(adapter, r_row):
    lay = adapter.layout({"pixel_values": torch.zeros(1, 3, *adapter.native_size)})
    return r_row[lay.n_prefix:].reshape(lay.rows, lay.cols)


def _pairs(atts, grads):
    return list(zip(atts, grads))


def test_relevance_by_hand_vit_gpt2(caption_dirs, photo):
    """ViT-GPT2: the encoder–decoder rules from attentions and gradients of the model's own forward."""
    adapter = load(caption_dirs, "vit-gpt2")
    cap = attnviz.capture(adapter, photo)
    ids = cap.inputs["caption_ids"]
    x = cap.inputs["pixel_values"].clone().requires_grad_(True)
    # embeddings that carry gradients, so the first decoder layer's self-attention has one too
    emb = adapter.model.decoder.get_input_embeddings()(ids).detach().requires_grad_(True)
    out = adapter.model(pixel_values=x, decoder_inputs_embeds=emb, output_attentions=True, use_cache=False)
    enc, dec, cross = out.encoder_attentions, out.decoder_attentions, out.cross_attentions
    for t in (0, 1):
        score = out.logits[0, t, ids[0, t + 1]]                           # position t predicts token t
        assert float(score.detach()) == pytest.approx(float(cap.scores[t]), abs=1e-5)
        grads = torch.autograd.grad(score, enc + dec + cross, retain_graph=True)
        r_ti = _encoder_decoder_relevance(_pairs(enc, grads[:2]), _pairs(dec, grads[2:4]), _pairs(cross, grads[4:]))
        e = attnviz.explain(adapter, cap, "caption_relevance", target=t)
        np.testing.assert_allclose(e.map, _caption_map(adapter, r_ti[t]), **TOL)
    # Only positions up to t reach token t's logit: the caption cut after token t gives the same map.
    short = adapter.capture(adapter.prepare(photo, caption_ids=cap.extras["caption_ids"][: t + 1]))
    np.testing.assert_allclose(attnviz.explain(adapter, short, "caption_relevance", target=t).map, e.map,
                               rtol=1e-4, atol=1e-7)


def test_relevance_by_hand_blip(caption_dirs, photo):
    """BLIP: its vision model and its text decoder (cross-attention in every layer) called here in turn."""
    adapter = load(caption_dirs, "blip")
    cap = attnviz.capture(adapter, photo, texts=["a red cat"])
    ids = cap.inputs["caption_ids"]
    x = cap.inputs["pixel_values"].clone().requires_grad_(True)
    vision = adapter.model.vision_model(pixel_values=x, output_attentions=True)
    # a clone, not a leaf: BLIP adds its position embeddings in place
    emb = adapter.model.text_decoder.get_input_embeddings()(ids).detach().requires_grad_(True).clone()
    out = adapter.model.text_decoder(inputs_embeds=emb, encoder_hidden_states=vision.last_hidden_state,
                                     output_attentions=True, use_cache=False)
    enc, dec, cross = vision.attentions, out.attentions, out.cross_attentions
    assert len(enc) == len(dec) == len(cross) == 2
    maps = []
    for t in range(3):
        score = out.logits[0, t, ids[0, t + 1]]
        assert float(score.detach()) == pytest.approx(float(cap.scores[t]), abs=1e-5)
        grads = torch.autograd.grad(score, enc + dec + cross, retain_graph=True)
        r_ti = _encoder_decoder_relevance(_pairs(enc, grads[:2]), _pairs(dec, grads[2:4]), _pairs(cross, grads[4:]))
        maps.append(_caption_map(adapter, r_ti[t]))
        e = attnviz.explain(adapter, cap, "caption_relevance", target=t)
        np.testing.assert_allclose(e.map, maps[-1], **TOL)
    assert not np.allclose(maps[0], maps[2], rtol=1e-3)                   # each word its own map


def test_relevance_by_hand_git(caption_dirs, photo):
    """GIT: eq. 6 over its joint [image, text] self-attention, after the image encoder's own eq. 6,
    composed as one stack: R = R_joint · diag(R^ii, I)."""
    adapter = load(caption_dirs, "git")
    cap = attnviz.capture(adapter, photo)
    ids = cap.inputs["caption_ids"]
    x = cap.inputs["pixel_values"].clone().requires_grad_(True)
    vision = []
    hooks = [layer.self_attn.register_forward_hook(lambda m, a, o: vision.append(o[1]))
             for layer in adapter.model.git.image_encoder.vision_model.encoder.layers]
    emb = adapter.model.git.embeddings.word_embeddings(ids).detach().requires_grad_(True).clone()   # GIT adds in place
    out = adapter.model(pixel_values=x, inputs_embeds=emb, output_attentions=True, use_cache=False)
    for h in hooks:
        h.remove()
    n_img = vision[0].shape[-1]
    n = out.attentions[0].shape[-1]
    for t in (1, 2):
        score = out.logits[0, n_img + t, ids[0, t + 1]]
        assert float(score.detach()) == pytest.approx(float(cap.scores[t]), abs=1e-5)
        grads = torch.autograd.grad(score, tuple(vision) + out.attentions, retain_graph=True)
        r_ii = np.eye(n_img)
        for a, g in zip(vision, grads[:2]):
            r_ii = r_ii + _eq5(a, g) @ r_ii                               # eq. 6, image encoder
        r = np.eye(n)
        for a, g in zip(out.attentions, grads[2:]):
            r = r + _eq5(a, g) @ r                                        # eq. 6, joint sequence
        stack = np.eye(n)
        stack[:n_img, :n_img] = r_ii                                      # diag(R^ii, I)
        full = r @ stack
        e = attnviz.explain(adapter, cap, "caption_relevance", target=t)
        np.testing.assert_allclose(e.map, _caption_map(adapter, full[n_img + t, :n_img]), **TOL)


@pytest.mark.parametrize("method", sorted(m.name for m in list_methods("captioning")))
def test_every_method_explains_a_token(caption_dirs, photo, method):
    for kind in KINDS:
        adapter = load(caption_dirs, kind)
        cap = generated(adapter, photo)
        e = attnviz.explain(adapter, cap, method, target=1, **LIGHT.get(method, {}))
        assert e.map.shape == ((4, 4) if e.over == "patches" else cap.layout.input_size)
        assert np.isfinite(e.map).all(), (kind, method)
    assert "cross_attention" in [m.name for m in list_methods("captioning")]
    assert "cross_attention" not in [m.name for m in list_methods("classifier")]


def test_typed_caption_is_scored_teacher_forced(captioner, photo):
    kind, adapter = captioner
    cap = attnviz.capture(adapter, photo, texts=["a red cat"])
    assert [t.label for t in cap.targets] == ["a", "red", "cat"]
    assert cap.extras["source"] == "typed" and cap.extras["notes"] == []
    assert adapter.caption_text(cap) == "a red cat"
    ids = cap.inputs["caption_ids"]
    assert ids[0, 0] == adapter.start_id and ids.shape[1] == 4
    with torch.no_grad():
        logits = adapter.forward_scores(cap.inputs["pixel_values"], cap.inputs)
    torch.testing.assert_close(logits[0], cap.scores)
    e = attnviz.explain(adapter, cap, "caption_relevance", target="red")
    assert e.target.index == 1 and np.isfinite(e.map).all()


def test_bad_captions_and_limits(caption_dirs, photo):
    bert = load(caption_dirs, "blip")
    gpt2 = load(caption_dirs, "vit-gpt2")
    for adapter in (bert, gpt2):
        with pytest.raises(UsageError, match="empty"):
            adapter.prepare(photo, texts=["   "])
        with pytest.raises(UsageError, match="one caption"):
            adapter.prepare(photo, texts=["a cat", "a dog"])
        for bad in ({"max_new_tokens": 0}, {"max_new_tokens": 24}, {"max_new_tokens": "many"}, {"num_beams": 0},
                    {"num_beams": 99}):
            with pytest.raises(UsageError, match="between|whole number"):
                adapter.prepare(photo, **bad)
        with pytest.raises(UsageError, match="native size"):
            adapter.prepare(photo, size=(64, 64))
        # Longer than the model's 24 positions: cut to 23 caption tokens and said so.
        cap = adapter.capture(adapter.prepare(photo, texts=["a red cat on the mat " * 6]))
        assert len(cap.targets) == adapter.max_caption_tokens == 23
        assert any("cut to 23 tokens" in n for n in cap.extras["notes"])
    # WordPiece: characters outside the vocabulary become [UNK], noted; a caption of nothing else is refused.
    cap = bert.capture(bert.prepare(photo, texts=["a red cat!"]))
    assert [t.label for t in cap.targets] == ["a", "red", "cat", "[UNK]"]
    assert any("[UNK]" in n and "'cat!'" in n for n in cap.extras["notes"])
    assert bert.caption_text(cap) == "a red cat [UNK]"
    with pytest.raises(UsageError, match="vocabulary"):
        bert.prepare(photo, texts=["✓ !!"])
    with pytest.raises(UsageError, match="no characters"):
        bert.prepare(photo, texts=["\x00\x01"])
    # A typed control token is text, not a control token.
    ids = bert.prepare(photo, texts=["a [SEP] cat"])["caption_ids"][0].tolist()
    assert bert.tokenizer.sep_token_id not in ids
    # Byte-level BPE reads every character; no note.
    cap = gpt2.capture(gpt2.prepare(photo, texts=["é ✓<|endoftext|>"]))
    assert cap.extras["notes"] == [] and gpt2.tokenizer.eos_token_id not in cap.extras["caption_ids"]
    assert gpt2.caption_text(cap) == "é ✓<|endoftext|>"
    # Generation limits: at most max_new_tokens, noted when the model had not ended the caption.
    cap = gpt2.capture(gpt2.prepare(photo, max_new_tokens=2))
    assert len(cap.targets) <= 2
    assert any("max_new_tokens" in n for n in cap.extras["notes"]) or len(cap.targets) < 2
    with pytest.raises(UsageError, match="not both"):
        gpt2.prepare(photo, texts=["a"], caption_ids=[1])
    with pytest.raises(UsageError, match="between 0 and"):
        gpt2.prepare(photo, caption_ids=[10 ** 6])


def test_beam_search(caption_dirs, photo):
    adapter = load(caption_dirs, "vit-gpt2")
    inputs = adapter.prepare(photo, num_beams=3, max_new_tokens=4)
    cap = adapter.capture(inputs)
    assert cap.extras["generation"] == {"num_beams": 3, "max_new_tokens": 4}
    # the caption is the model's own beam search, after its start token and up to its end token
    with torch.no_grad():
        seq = adapter.model.generate(pixel_values=inputs["pixel_values"], num_beams=3, max_new_tokens=4,
                                     do_sample=False, min_new_tokens=1)[0].tolist()
    eos = adapter.model.generation_config.eos_token_id
    eos = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    body = seq[1:]
    body = body[:min(i for i, x in enumerate(body) if x in eos)] if eos & set(body) else body
    assert cap.extras["caption_ids"] == body and len(cap.targets) == len(body) > 0
    assert np.isfinite(attnviz.explain(adapter, cap, "cross_attention", target=0).map).all()


def test_caption_record_and_words(caption_dirs, photo):
    adapter = load(caption_dirs, "git")
    cap = attnviz.capture(adapter, photo, texts=["a red cat sitting on the mats"])
    rec = adapter.caption_record(cap)
    assert [w["word"] for w in rec["words"]] == ["a", "red", "cat", "sitting", "on", "the", "mats"]
    assert rec["words"][-1]["tokens"] == [6, 7]                          # "mat" + "##s"
    assert [t["token"] for t in rec["tokens"]][-2:] == ["mat", "##s"]
    assert all(0 < t["probability"] <= 1 for t in rec["tokens"]) and 0 < rec["end_probability"] < 1


def test_unsupported_vision_encoder_decoder(tmp_path):
    import transformers as T
    enc = T.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, image_size=16,
                      patch_size=8)
    dec = T.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                       is_decoder=True, add_cross_attention=True)
    model = T.VisionEncoderDecoderModel(config=T.VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec))
    model.save_pretrained(tmp_path)
    with pytest.raises(ModelUnavailable, match="GPT-2"):
        attnviz.load_model(str(tmp_path))


def test_cli_target_token_json(capsys, tmp_path, caption_dirs, photo):
    img = tmp_path / "p.png"
    photo.save(img)
    code = main(["explain", str(img), "--model", str(caption_dirs["blip"]), "--method", "cross_attention",
                 "--target", "1", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    rec = json.loads(out.out)
    toks = rec["caption"]["tokens"]
    assert rec["target"]["index"] == 1 and rec["target"]["kind"] == "token"
    assert rec["target"]["label"] == toks[1]["token"] and rec["score"] == pytest.approx(toks[1]["logit"])
    assert len(toks) >= 2 and all(0 < t["probability"] <= 1 for t in toks)
    assert [t["index"] for t in toks] == list(range(len(toks))) and rec["map_shape"] == [4, 4]
    code = main(["explain", str(img), "--model", str(caption_dirs["git"]), "--method", "caption_relevance",
                 "--text", "a red cat", "--target", "cat", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    rec = json.loads(out.out)
    assert rec["caption"]["text"] == "a red cat" and rec["caption"]["source"] == "typed"
    assert rec["target"] == {"index": 2, "label": "cat", "kind": "token"}
    code = main(["explain", str(img), "--model", str(caption_dirs["git"]), "--text", "  "])
    assert code == 2 and "empty" in capsys.readouterr().err
    code = main(["explain", str(img), "--model", str(caption_dirs["git"]), "--text", "a cat", "--target", "7"])
    assert code == 2 and "out of range" in capsys.readouterr().err
