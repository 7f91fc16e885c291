"""The demo vision-language model: its questions, tokenizer and processor, training path, and the shipped checkpoint."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from attnviz import scenes as S  # noqa: E402
from attnviz.demo import train_vlm as T  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "demo-vlm-shapes"
FIXED_SEEDS = (1, 2, 3, 4, 5, 6, 7, 8)    # scenes make_scene(seed)
# Question types the shipped model answers reliably (>= 95 % on 1,000 fresh scenes, its card) and that every scene
# is asked: "what shape is the <colour> one?" (98.4 %) is asked only where a colour is unique, so a fixed count of
# questions per scene leaves it out.
RELIABLE = ("colour", "where", "count", "exists")


# --------------------------------------------------------------------------- questions

def test_questions_follow_the_scene_ground_truth():
    obj = S.SceneObject
    # a hand-built scene: boxes in three quadrants, two objects share a colour
    objects = [obj("circle", "red", (2, 3, 20, 21)), obj("cross", "red", (30, 40, 50, 60)),
               obj("square", "blue", (40, 2, 60, 22))]
    scene = S.Scene(image=np.zeros((64, 64, 3), np.uint8), masks=np.zeros((3, 64, 64), bool), objects=objects,
                    labels=np.zeros(5, np.float32), caption="")
    qs = {(q.kind, q.text): (q.answer, q.target) for q in T.questions_for(scene)}
    assert qs[("colour", "what colour is the cross?")] == ("red", 1)
    assert qs[("where", "where is the circle?")] == ("top left", 0)
    assert qs[("where", "where is the cross?")] == ("bottom right", 1)       # centre (40, 50)
    assert qs[("where", "where is the square?")] == ("top right", 2)
    assert qs[("count", "how many shapes are there?")] == ("three", None)
    assert qs[("exists", "is there a triangle?")] == ("no", None)
    assert qs[("exists", "is there a square?")] == ("yes", 2)
    assert qs[("shape", "what shape is the blue one?")] == ("square", 2)
    assert not any(k == "shape" and "red" in t for k, t in qs)               # two red objects: not asked


def test_where_answers_agree_with_the_masks():
    for seed in range(30):
        scene = S.make_scene(seed)
        for q in T.questions_for(scene):
            if q.kind != "where":
                continue
            ys, xs = np.nonzero(scene.masks[q.target])
            cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2     # box centre from the mask
            want = f"{'top' if cy <= 32 else 'bottom'} {'left' if cx <= 32 else 'right'}"
            assert q.answer == want, (seed, q)


# --------------------------------------------------------------------------- tokenizer and processor

def test_processor_round_trips_offline_and_expands_the_image_to_its_grid(tmp_path):
    import torch
    from transformers import AutoProcessor

    from attnviz.demo.train_clip import to_pixel_values

    T.make_processor().save_pretrained(tmp_path)
    proc = AutoProcessor.from_pretrained(tmp_path)
    tok = proc.tokenizer
    for w in T.vocabulary():
        assert len(tok.tokenize(w)) == 1, w
    assert tok.tokenize("What COLOR is the zebra?") == ["what", "colour", "is", "the", "<unk>", "?"]
    scene = S.make_scene(7)
    inputs = proc(images=[S.scene_to_pil(scene)], text=[T.prompt("where is the cross?")], return_tensors="pt")
    words = tok.convert_ids_to_tokens(inputs["input_ids"][0].tolist())
    # LLaVA keeps the vision grid, CLS dropped: (64 / 8)² image tokens, counted from the image size here
    assert words.count(T.IMAGE_TOKEN) == (scene.image.shape[0] // T.PATCH) ** 2
    assert words[:4] == ["<s>", "user", ":", T.IMAGE_TOKEN]
    assert words[-7:] == ["where", "is", "the", "cross", "?", "assistant", ":"]
    assert torch.allclose(inputs["pixel_values"], to_pixel_values(scene.image[None]), atol=1e-5)
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "where is the cross?"}]}]
    assert proc.apply_chat_template(conv, add_generation_prompt=True) == T.prompt("where is the cross?")


def test_packed_training_forward_is_the_models_own_forward():
    """The trainer runs the image prefix once for several questions and fills the image slots from cached
    tower features; every question's logits must be LLaVA's own forward on "prefix + that question"."""
    import torch

    tok = T.build_tokenizer()
    torch.manual_seed(0)
    model = T.make_model(tok, None, hidden=32, layers=2, heads=2, mlp=64).eval()
    proc = T.make_processor(tok)
    scenes = [S.make_scene(s) for s in (1, 2)]
    pool = T.QAPool(2, 0, model, tok, np.random.default_rng(0), log=lambda m: None)
    asked = (("how many shapes are there?", "two"), ("what colour is the circle?", "red"))
    ids = [tok(q + " assistant: " + a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for q, a in asked]
    a0 = [len(x) - 2 for x in ids]                                      # each answer: one word, then the end
    pool.items = [[[(ids[0], a0[0], -1)], [(ids[1], a0[1], -1)], [], [], []] for _ in scenes]   # two types, one each
    pool.rng = np.random.default_rng(3)
    with torch.no_grad():
        pool.feats = model.model.vision_tower(
            pixel_values=proc(images=[S.scene_to_pil(s) for s in scenes], text=[T.prompt("")] * 2,
                              return_tensors="pt")["pixel_values"], output_hidden_states=True).hidden_states[-1][:, 1:]
        prefix, feats, q, mask, _, _ = pool.batch(2, 3, model.config.image_seq_length)
        packed = T.forward_packed(model, prefix, feats, q, mask)                       # [2·3, L, V]
    # which scenes the batch drew: the features it returned are one of the two scenes' own
    drawn = [0 if torch.equal(f, pool.feats[0]) else 1 for f in feats]
    assert {torch.equal(f, pool.feats[d]) for f, d in zip(feats, drawn)} == {True}
    for i in range(q.shape[0]):
        n = int(mask[i].sum())
        text = next(qa[0] for qa, x in zip(asked, ids) if x[:-1] == q[i, :n].tolist())
        inputs = proc(images=[S.scene_to_pil(scenes[drawn[i // 3]])], text=[T.prompt(text)], return_tensors="pt")
        full = torch.cat([inputs["input_ids"], q[i:i + 1, n - 1:n]], 1)                 # + the answer word
        with torch.no_grad():
            own = model(input_ids=full, pixel_values=inputs["pixel_values"]).logits[0]  # [T, V]
        P = prefix.shape[1]
        assert own.shape[0] == P + n
        assert torch.allclose(packed[i, :n], own[P:], atol=1e-5), i


def test_evaluation_maps_follow_their_definitions():
    """image_attention read by hand from outputs.attentions; relevance by Chefer's rule written in numpy."""
    import torch

    from attnviz.demo import evaluate_vlm as E

    tok = T.build_tokenizer()
    torch.manual_seed(1)
    model = T.make_model(tok, None, hidden=32, layers=2, heads=2, mlp=64).eval()
    proc = T.make_processor(tok)
    image, q, a = S.scene_to_pil(S.make_scene(4)), "what colour is the circle?", "red"
    maps = E.answer_maps(model, proc, image, q, a)
    inputs = proc(images=[image], text=[T.prompt(q)], return_tensors="pt")
    ids = torch.cat([inputs["input_ids"], torch.tensor([[tok.convert_tokens_to_ids(a)]])], 1)
    out = model(input_ids=ids, pixel_values=inputs["pixel_values"], output_attentions=True, use_cache=False)
    p = inputs["input_ids"].shape[1] - 1
    grads = torch.autograd.grad(out.logits[0, p, ids[0, -1]], out.attentions)
    A = [x[0].detach().numpy() for x in out.attentions]                                # L × [H, T, T]
    G = [g[0].numpy() for g in grads]
    img = np.flatnonzero(ids[0].numpy() == model.config.image_token_index)
    R = np.eye(ids.shape[1])
    for a_l, g_l in zip(A, G):
        R = R + np.maximum(a_l * g_l, 0).mean(0) @ R
    np.testing.assert_allclose(maps["relevance"].ravel(), R[p, img], rtol=1e-4, atol=1e-7)
    att = np.mean([a_l.mean(0)[p] for a_l in A], 0)
    np.testing.assert_allclose(maps["image_attention"].ravel(), att[img], rtol=1e-5, atol=1e-8)
    mask = np.zeros((64, 64), bool)
    r, c = np.unravel_index(np.argmax(maps["relevance"]), (8, 8))
    mask[r * 8 + 3, c * 8 + 3] = True
    assert E.cell_hit(maps["relevance"], mask) and not E.cell_hit(maps["relevance"], np.roll(mask, 8, axis=1))


def test_batches_draw_question_types_by_the_mix():
    """The share of each question type in the drawn batches follows the weights (types a scene lacks aside)."""
    import torch

    tok = T.build_tokenizer()
    torch.manual_seed(0)
    model = T.make_model(tok, None, hidden=32, layers=2, heads=2, mlp=64).eval()
    pool = T.QAPool(6, 0, model, tok, np.random.default_rng(0), log=lambda m: None)
    mix = T.parse_mix("colour=1,shape=0,where=3,count=0,exists=0")
    first = {tok.convert_tokens_to_ids(w): w for w in ("what", "where", "how", "is")}
    kinds = []
    for _ in range(100):
        _, _, q, _, labels, cells = pool.batch(4, 5, model.config.image_seq_length, mix)
        kinds += [first[int(r[0])] for r in q]
        # every drawn question names one object here: its cells are marked, and only answer words are labelled
        assert bool(cells.any(1).all())
    share = kinds.count("where") / len(kinds)
    assert set(kinds) == {"what", "where"} and abs(share - 0.75) < 0.04, share


def test_mix_names_question_types():
    assert T.parse_mix("where=2, shape=1.5") == {"where": 2.0, "shape": 1.5}
    with pytest.raises(ValueError, match="type=weight"):
        T.parse_mix("colors=2")


def test_training_saves_a_loadable_llava_and_trains_the_tower_only_when_asked(tmp_path):
    import torch
    from safetensors.torch import load_file

    from attnviz.demo.evaluate_vlm import load

    towers = {}
    for tower_lr in (0.0, 0.5):
        out = tmp_path / f"tower{tower_lr}"
        T.train(str(out), fast=True, clip_dir=None, eval_n=0, quiet=True, tower_lr=tower_lr)
        model, _ = load(str(out))                  # AutoModelForImageTextToText, offline, eager
        assert model.config.image_seq_length == 64
        towers[tower_lr] = {k.split("vision_tower.", 1)[1]: v
                            for k, v in load_file(out / "model.safetensors").items() if "vision_tower." in k}
    torch.manual_seed(T.DEFAULT_SEED)              # the trainer's own seed, then the same construction
    init = T.make_model(T.build_tokenizer(), None).model.vision_tower.state_dict()
    assert set(init) == set(towers[0.0]) == set(towers[0.5])
    assert all(torch.equal(towers[0.0][k], init[k]) for k in init)            # frozen: the tower as built
    assert not all(torch.equal(towers[0.5][k], init[k]) for k in init)        # joint: it moved


# --------------------------------------------------------------------------- shipped model

shipped = pytest.mark.skipif(not (SHIPPED / "model.safetensors").exists(),
                             reason="models/demo-vlm-shapes is missing: run `python -m attnviz.demo.train_vlm`")


@shipped
def test_shipped_model_loads_offline_and_answers_fixed_scenes():
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    from attnviz.demo.evaluate_vlm import draw_questions, load

    files = [p for p in SHIPPED.iterdir() if p.is_file()]
    assert (SHIPPED / "model.safetensors").stat().st_size <= 5 * 1024 * 1024
    assert not any(p.suffix in (".bin", ".pt", ".pth", ".py") for p in files)
    assert (SHIPPED / "README.md").is_file()
    model, proc = load(str(SHIPPED))                 # AutoModelForImageTextToText / AutoProcessor, eager, offline
    assert isinstance(model, LlavaForConditionalGeneration) and isinstance(proc, LlavaProcessor)
    assert model.config.text_config._attn_implementation == "eager"
    items = []
    for seed in FIXED_SEEDS:
        scene = S.make_scene(seed)
        items += [(scene, q) for q in draw_questions(scene, np.random.default_rng(seed)) if q.kind in RELIABLE]
    got = [T.answer(model, proc, [S.scene_to_pil(s)], [q.text])[0] for s, q in items]
    wrong = [(q.text, q.answer, g) for (_, q), g in zip(items, got) if T.answer_key(g) != T.answer_key(q.answer)]
    assert len(items) == len(RELIABLE) * len(FIXED_SEEDS) and len(wrong) <= 2, wrong
    # the answers are words of the scene's ground truth, not one fixed word: both colours / counts occur
    assert len({g for (_, q), g in zip(items, got) if q.kind == "colour"}) >= 3
    # "where" answers both halves of the quadrant: its left / right words are those of the ground truth (the first
    # version said "right" for every object)
    where = [(q.answer.split()[-1], g.split()[-1] if g else "") for (_, q), g in zip(items, got) if q.kind == "where"]
    assert {w for w, _ in where} == {"left", "right"} and {g for _, g in where} == {"left", "right"}, where


def test_hint_keep_floors_only_the_named_types():
    import torch

    kinds = torch.tensor([T.QUESTION_TYPES.index(t) for t in ("colour", "shape", "where", "count")])
    # faded (0): only the kept types have a weight, their floor times the hint's starting weight
    got = T.hint_row_weights(0.0, kinds, T.parse_mix("shape=1,where=0.5"), hint_weight=2.0)
    assert got.tolist() == [0.0, 2.0, 1.0, 0.0]
    # while the fading weight is above a floor, it is used
    got = T.hint_row_weights(1.5, kinds, T.parse_mix("shape=1,where=0.5"), hint_weight=2.0)
    assert got.tolist() == [1.5, 2.0, 1.5, 1.5]
    assert T.hint_row_weights(0.25, kinds, {}).tolist() == [0.25] * 4
