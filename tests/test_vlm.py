"""Vision-language models: teacher forcing, the answer tokens' positions, and every VLM method against an
independent construction (the model's own outputs read by hand; Chefer et al.'s rule written in numpy;
finite differences of the log-probability; occlusion redone by hand)."""
import numpy as np
import pytest
import torch
from PIL import Image

from attnviz.adapters.vlm import VlmAdapter
from attnviz.errors import UsageError
from attnviz.methods import explain, list_methods

_cache = {}


def tiny(kind="llava"):
    if kind not in _cache:
        _cache[kind] = VlmAdapter.tiny(kind, seed=0)
    return _cache[kind]


def photo(seed=0, size=(48, 40)):
    return Image.fromarray((np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype("uint8"))


def by_hand(a, image, question, answer):
    """The processor's prompt ids + the answer's ids, the model's forward with attentions, the image positions."""
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = a.processor.apply_chat_template(msgs, add_generation_prompt=True)
    enc = a.processor(images=[image], text=text, return_tensors="pt")
    ans = a.tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids = torch.cat([enc["input_ids"][0], torch.tensor(ans)])[None]
    # pixels that need a gradient: the attentions join a graph (the adapter froze the weights)
    out = a.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=enc["pixel_values"].requires_grad_(),
                  output_attentions=True)
    img = (ids[0] == a.model.config.image_token_id).nonzero()[:, 0]
    return enc["input_ids"].shape[1], ans, out, img


@pytest.fixture(scope="module")
def llava_case():
    a = tiny("llava")
    img = photo()
    cap = a.capture(a.prepare(img, question="what colour is it?", answer="red cat"))
    return a, img, cap


def test_answer_tokens_are_scored_at_the_position_that_predicts_them(llava_case):
    a, img, cap = llava_case
    p, ans, out, _ = by_hand(a, img, "what colour is it?", "red cat")
    assert [t.label for t in cap.targets] == [a.tokenizer.decode([i]).strip() or "␣" for i in ans]
    logits = out.logits[0].detach()
    for j, i in enumerate(ans):
        assert cap.scores[j].item() == pytest.approx(logits[p - 1 + j, i].item(), abs=1e-5)
        assert a.probabilities(cap)[j].item() == pytest.approx(torch.softmax(logits[p - 1 + j], -1)[i].item(), abs=1e-6)


def test_a_generated_answer_is_the_greedy_chain_of_its_own_teacher_forced_logits():
    a = tiny("llava")
    cap = a.capture(a.prepare(photo(1), question="what is here?", max_new_tokens=5))
    ans = cap.inputs["answer_ids"].tolist()
    assert cap.inputs["source"] == "generated" and 1 <= len(ans) <= 5
    p = cap.inputs["prompt_len"]
    ids = torch.cat([cap.inputs["encoding"]["input_ids"][0], torch.tensor(ans)])[None]
    logits = a.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                     pixel_values=cap.inputs["pixel_values"]).logits[0].detach()
    assert [int(logits[p - 1 + j].argmax()) for j in range(len(ans))] == ans


def test_image_attention_is_the_answer_rows_attention_read_from_the_outputs_by_hand(llava_case):
    a, img, cap = llava_case
    p, ans, out, pos = by_hand(a, img, "what colour is it?", "red cat")
    grid = cap.extras["image_tokens"].views[0]
    for j in range(len(ans)):
        row = p - 1 + j
        for layer in (0, 1):
            want = out.attentions[layer][0, :, row, pos].mean(0).detach().numpy().reshape(grid.rows, grid.cols)
            got = explain(a, cap, "image_attention", j, decoder_layer=str(layer)).map
            np.testing.assert_allclose(got, want, atol=1e-6)
        head1 = out.attentions[1][0, 1, row, pos].detach().numpy().reshape(grid.rows, grid.cols)
        np.testing.assert_allclose(explain(a, cap, "image_attention", j, decoder_layer="1", head="1").map, head1, atol=1e-6)
        mean = np.mean([o[0, :, row, pos].mean(0).detach().numpy() for o in out.attentions], 0)
        np.testing.assert_allclose(explain(a, cap, "image_attention", j, decoder_layer="mean").map.ravel(), mean, atol=1e-6)


def test_relevance_is_chefers_rule_in_numpy_on_the_two_layer_decoder(llava_case):
    a, img, cap = llava_case
    p, ans, out, pos = by_hand(a, img, "what colour is it?", "red cat")
    for j in range(len(ans)):
        row = p - 1 + j
        logit = out.logits[0, row, ans[j]]
        grads = torch.autograd.grad(logit, out.attentions, retain_graph=True)
        atts = [x[0].detach().double().numpy() for x in out.attentions]          # [H, T, T]
        gs = [g[0].double().numpy() for g in grads]
        r = np.eye(atts[0].shape[-1])
        for at, g in zip(atts, gs):                                               # first layer to last
            a_bar = np.clip(g * at, 0, None).mean(0)                              # eq. 5
            r = r + a_bar @ r                                                     # eq. 6
        want = r[row, pos.numpy()]
        e = explain(a, cap, "answer_relevance", j)
        np.testing.assert_allclose(e.map.ravel(), want, rtol=1e-4, atol=1e-8)
        q = explain(a, cap, "question_relevance", j)
        qpos = q.meta["positions"]
        np.testing.assert_allclose(q.map, r[row, qpos], rtol=1e-4, atol=1e-8)
        text = a.tokenizer(" what colour is it?", add_special_tokens=False)["input_ids"]
        assert cap.inputs["encoding"]["input_ids"][0, qpos].tolist() == text


def test_maps_depend_on_the_answer_word_and_on_the_question():
    a = tiny("llava")
    img = photo(2)
    c1 = a.capture(a.prepare(img, question="what colour is it?", answer="red cat"))
    c2 = a.capture(a.prepare(img, question="where is the dog?", answer="red cat"))
    assert c1.targets[0].label == c2.targets[0].label == "red" and len(c1.targets) >= 2
    for m in ("answer_relevance", "image_attention", "answer_saliency"):
        first, second = explain(a, c1, m, 0).map, explain(a, c1, m, len(c1.targets) - 1).map
        assert not np.allclose(first, second, rtol=1e-3), f"{m}: two answer words, one map"
        other = explain(a, c2, m, 0).map
        assert not np.allclose(first, other, rtol=1e-3), f"{m}: two questions, one map"


def test_saliency_is_the_log_probability_gradient_summed_per_image_token(llava_case):
    a, img, cap = llava_case
    x = cap.inputs["pixel_values"].clone().requires_grad_(True)
    p, ans, _, _ = by_hand(a, img, "what colour is it?", "red cat")
    ids = torch.cat([cap.inputs["encoding"]["input_ids"][0], torch.tensor(ans)])[None]
    logp = torch.log_softmax(a.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=x)
                             .logits[0, p - 1], -1)[ans[0]]
    (g,) = torch.autograd.grad(logp, x)
    patch = a.model.config.vision_config.patch_size
    n = g.shape[-1] // patch
    want = g[0].abs().sum(0).reshape(n, patch, n, patch).sum((1, 3)).numpy()     # [rows, cols]
    np.testing.assert_allclose(explain(a, cap, "answer_saliency", 0).map, want, rtol=1e-4)


def test_occlusion_redone_by_hand_for_one_cell(llava_case):
    a, img, cap = llava_case
    e = explain(a, cap, "answer_occlusion", 0)
    x = cap.inputs["pixel_values"]
    patch = a.model.config.vision_config.patch_size
    hidden = x.clone()
    hidden[..., patch:2 * patch, 2 * patch:3 * patch] = 1e-6                     # cell (1, 2), the mean baseline
    with torch.no_grad():
        drop = a.answer_log_probs(cap.inputs, x)[0] - a.answer_log_probs(cap.inputs, hidden)[0]
    assert e.map[1, 2] == pytest.approx(float(drop), rel=1e-4, abs=1e-7)


def test_integrated_gradients_add_up_to_the_log_probability_difference(llava_case):
    a, img, cap = llava_case
    e = explain(a, cap, "answer_integrated_gradients", 0, steps=16)
    c = e.meta["completeness"]
    assert float(e.map.sum()) == pytest.approx(c["sum"], rel=1e-4)
    assert c["sum"] == pytest.approx(c["log_prob_difference"], rel=0.05, abs=1e-4)


def test_vit_methods_are_refused_in_one_sentence_and_the_vlm_ones_listed(llava_case):
    a, img, cap = llava_case
    names = [m.name for m in list_methods(a)]
    assert {"image_attention", "answer_relevance", "question_relevance", "answer_occlusion"} <= set(names)
    assert "rollout" not in names
    with pytest.raises(UsageError, match="needs attention weights.*answer_relevance"):
        explain(a, cap, "rollout")


def test_default_target_is_the_first_content_word():
    a = tiny("llava")
    cap = a.capture(a.prepare(photo(), question="what?", answer=" , red"))
    assert cap.targets[0].label in (",", "␣")
    assert a.resolve_target(cap, None).label == "red"


def test_paligemma_answer_is_causal_and_the_prompt_bidirectional_as_the_processor_marks_a_suffix():
    """PaliGemma: our forward equals the processor's own suffix encoding (token_type_ids 1 on the answer), and
    differs from a run without token_type_ids (silently fully causal)."""
    a = tiny("paligemma")
    img = photo()
    cap = a.capture(a.prepare(img, question="what colour", answer="red"))
    enc = a.processor(images=[img], text="what colour", suffix="red", return_tensors="pt")
    assert enc["token_type_ids"][0, -1] == 1
    kw = {k: v for k, v in enc.items() if k != "labels"}
    logits = a.model(**kw).logits[0].detach()
    ans = cap.inputs["answer_ids"].tolist()
    p = cap.inputs["prompt_len"]
    # the processor's suffix ends with <eos>: the answer tokens sit at the same positions before it
    assert enc["input_ids"][0, p:p + len(ans)].tolist() == ans
    for j, i in enumerate(ans):
        assert cap.scores[j].item() == pytest.approx(logits[p - 1 + j, i].item(), abs=1e-5)
    causal = {k: v for k, v in kw.items() if k != "token_type_ids"}
    assert not torch.allclose(a.model(**causal).logits[0].detach()[p - 1], logits[p - 1], atol=1e-5)


@pytest.mark.parametrize("kind", ("paligemma", "qwen2_vl", "idefics3"))
def test_every_family_explains_an_answer_with_relevance_read_from_its_own_image_tokens(kind):
    a = tiny(kind)
    cap = a.capture(a.prepare(photo(), question="what colour is it?", answer="red cat"))
    geo = cap.extras["image_tokens"]
    ids = torch.cat([cap.inputs["encoding"]["input_ids"][0], cap.inputs["answer_ids"]])
    assert list(geo.positions) == (ids == a.model.config.image_token_id).nonzero()[:, 0].tolist()
    e = explain(a, cap, "answer_relevance", 0)
    assert e.map.shape == (geo.canvas_rows, geo.canvas_cols)
    vec = np.asarray(e.meta["image_tokens"])
    assert vec.shape == (geo.n_tokens,) and (vec >= 0).all() and vec.sum() > 0
    if kind == "idefics3":
        assert set(e.meta["beside"]) == {"global"}
        assert np.asarray(e.meta["beside"]["global"]).ravel().tolist() == pytest.approx(vec[-4:].tolist())


def forward_with_tower_attentions(a, kw):
    """The model's forward with the decoder's attentions and, read off its output by a hook, the vision tower's."""
    seen = {}
    tower = a.spec.vision_tower(a.model)
    tower.config.output_attentions = True                 # PaliGemma calls its tower without asking for them
    h = tower.register_forward_hook(lambda m, i, o: seen.update(a=o.attentions))
    try:
        out = a.model(**kw, output_attentions=True)
    finally:
        h.remove()
        tower.config.output_attentions = False
    return out, seen


def _bar(at, g):
    """Chefer's Ā = E_h[(∇A ⊙ A)⁺] in numpy for one [H, T, T] attention and its gradient."""
    return np.clip(g.double().numpy() * at.detach().double().numpy(), 0, None).mean(0)


def _decoder_rule_in_numpy(a, cap):
    """The answer's first token's logit, the forward with the tower's attentions, and the decoder's relevance
    R ← R + Ā·R written out: (out, seen, logit, image_rel) with image_rel the predicting row on the image tokens."""
    ids = torch.cat([cap.inputs["encoding"]["input_ids"][0], cap.inputs["answer_ids"]])[None]
    kw = a.model_inputs(cap.inputs, cap.inputs["pixel_values"].clone().requires_grad_())
    out, seen = forward_with_tower_attentions(a, kw)
    row = cap.inputs["prompt_len"] - 1
    logit = out.logits[0, row, ids[0, cap.inputs["prompt_len"]]]
    dec_g = torch.autograd.grad(logit, out.attentions, retain_graph=True)
    r = np.eye(ids.shape[1])
    for at, g in zip(out.attentions, dec_g):
        r = r + _bar(at[0], g[0]) @ r
    return out, seen, logit, r[row, list(cap.extras["image_tokens"].positions)]       # [N] on the image tokens


@pytest.mark.parametrize("kind", ("llava", "paligemma"))
def test_relevance_into_the_vision_tower_is_the_rule_continued_through_its_layers_in_numpy(kind):
    a = tiny(kind)
    img = photo()
    question = "what colour is it?"
    cap = a.capture(a.prepare(img, question=question, answer="red cat"))
    out, seen, logit, image_rel = _decoder_rule_in_numpy(a, cap)
    vis_g = torch.autograd.grad(logit, seen["a"], allow_unused=True)        # LLaVA never reads its last layer
    offset = 1 if kind == "llava" else 0                                       # LLaVA drops CLS
    used = len(seen["a"]) - 1 if kind == "llava" else len(seen["a"])          # vision_feature_layer -2
    s = seen["a"][0].shape[-1]
    rv = np.eye(s)
    for at, g in list(zip(seen["a"], vis_g))[:used]:
        rv = rv + _bar(at[0], g[0]) @ rv
    u = np.zeros(s)
    u[offset:offset + len(image_rel)] = image_rel
    want = (u @ rv)[offset:offset + len(image_rel)]
    got = explain(a, cap, "answer_relevance", 0, into_vision=True)
    np.testing.assert_allclose(np.asarray(got.meta["image_tokens"]), want, rtol=1e-4, atol=1e-9)
    plain = explain(a, cap, "answer_relevance", 0)
    assert not np.allclose(got.map, plain.map, rtol=1e-3)


def test_relevance_into_idefics3s_tower_splits_each_token_over_its_shuffled_patches_then_follows_the_rule():
    """Idefics3: every view (tiles, global) is its own image to the tower; pixel shuffle concatenates each
    scale × scale block of patches into one image token. Written here in numpy: the token's decoder relevance split
    equally over its block, Chefer's rule per view through every vision layer, summed back over each block."""
    a = tiny("idefics3")
    cap = a.capture(a.prepare(photo(), question="what colour is it?", answer="red cat"))
    geo = cap.extras["image_tokens"]
    out, seen, logit, image_rel = _decoder_rule_in_numpy(a, cap)
    vis_g = torch.autograd.grad(logit, seen["a"])
    views, _, seq = seen["a"][0].shape[:3]
    side, scale = int(round(seq ** 0.5)), a.model.config.scale_factor          # 4 × 4 patches, 2 × 2 blocks
    rr, cc = np.divmod(np.arange(seq), side)
    block = (rr // scale) * (side // scale) + cc // scale                     # [S] token of each patch in its view
    per_view = (side // scale) ** 2
    assert views * per_view == len(image_rel) and views == len(geo.views)
    want = np.zeros(len(image_rel))
    for v in range(views):
        u = image_rel[v * per_view + block] / scale ** 2
        rv = np.eye(seq)
        for at, g in zip(seen["a"], vis_g):
            rv = rv + _bar(at[v], g[v]) @ rv
        want += np.bincount(v * per_view + block, weights=u @ rv, minlength=len(image_rel))
    got = explain(a, cap, "answer_relevance", 0, into_vision=True)
    np.testing.assert_allclose(np.asarray(got.meta["image_tokens"]), want, rtol=1e-4, atol=1e-9)
    plain = explain(a, cap, "answer_relevance", 0)
    # the random tiny tower's gradients are small: the tower moves relevance a little, but it does move it
    assert not np.allclose(got.meta["image_tokens"], plain.meta["image_tokens"], rtol=1e-7, atol=0)


def test_relevance_into_the_vision_tower_is_refused_where_patches_are_merged():
    a = tiny("qwen2_vl")
    cap = a.capture(a.prepare(photo(), question="what?", answer="red"))
    with pytest.raises(UsageError, match="not available for qwen2_vl"):
        explain(a, cap, "answer_relevance", 0, into_vision=True)
