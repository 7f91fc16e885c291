"""The demo image–text model: its tokenizer, its training script, and the shipped checkpoint."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import attnviz  # noqa: E402
from attnviz import scenes as S  # noqa: E402
from attnviz.demo import train_clip as T  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "demo-clip-shapes"
# Floors for the shipped model on 100 fresh two-object scenes (its model card reports 500). Pointing: the
# hottest patch of the relevance map lies on the named object ("cell" mode of pointing_game_hit) and the
# hottest pixel of the map as the overlay draws it ("bilinear") does too, at the model's declared default
# (start_layer 0: all six blocks); at CLIP's usual last-layer-only setting the patch reading still holds.
POINTING_FLOOR = 0.95
POINTING_BILINEAR_FLOOR = 0.85
POINTING_LAST_LAYER_FLOOR = 0.75
CAPTION_FLOOR = 0.90           # the right caption among 10 (the others: one colour or shape changed; chance 0.10)
OBJECT_FLOOR = 0.90            # the top two of 35 object phrases are exactly the scene's two objects


# --------------------------------------------------------------------------- tokenizer and data

def test_tokenizer_makes_scene_words_single_tokens_and_takes_any_text(tmp_path):
    from transformers import AutoTokenizer

    tok = T.build_tokenizer()
    for w in T.vocabulary():
        assert len(tok.tokenize(w)) == 1, w
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)          # offline: HF_HUB_OFFLINE=1 above
    text = "An orange Diamond, naïve ✓ zebra"
    ids = again(text)["input_ids"]
    assert ids[0] == again.bos_token_id and ids[-1] == again.eos_token_id
    # CLIP's tokenizer lowercases, and decodes punctuation as a word of its own
    assert again.decode(ids, skip_special_tokens=True).replace(" ", "") == text.lower().replace(" ", "")
    assert again.eos_token_id != 2          # CLIP's legacy rule (argmax of ids) is not used for this vocabulary
    assert ids == tok(text)["input_ids"]


def test_phrases_and_hard_negative_captions():
    phrases = T.all_phrases()
    assert len(phrases) == len(S.COLOUR_NAMES) * len(S.SHAPES) == len(set(phrases))
    assert "an orange circle" in phrases and "a red square" in phrases
    rng = np.random.default_rng(0)
    for scene in S.make_dataset(40, 3):
        neg = T.hard_negative_caption(scene.objects, rng)
        assert neg != scene.caption
        pairs = [p.strip() for p in neg.replace(" and ", ", ").split(",")]
        truth = [f"{o.colour} {o.shape}" for o in scene.objects]
        changed = [p for p, t in zip(pairs, truth) if not p.endswith(t)]
        assert len(pairs) == len(truth) and len(changed) == 1
        shapes = [p.split()[-1] for p in pairs]
        assert len(set(shapes)) == len(shapes)


def test_patch_labels_follow_the_masks():
    scene = S.make_scene(5, n_objects=2)
    cells = T.patch_labels(scene)
    assert cells.shape == (8, 8)
    for o, m in zip(scene.objects, scene.masks):
        label = 1 + T.all_phrases().index(T.phrase(o.colour, o.shape))
        cover = m.reshape(8, 8, 8, 8).mean((1, 3))
        assert (cells[cover >= 0.5] == label).all()
    assert (cells[scene.masks.reshape(-1, 8, 8, 8, 8).any((2, 4)).any(0) == 0] == 0).all()


def test_processor_matches_training_normalisation(tmp_path):
    import torch
    from transformers import AutoImageProcessor

    T.make_image_processor().save_pretrained(tmp_path)
    scene = S.make_scene(11)
    pv = AutoImageProcessor.from_pretrained(tmp_path)(images=S.scene_to_pil(scene), return_tensors="pt")
    assert torch.allclose(pv["pixel_values"], T.to_pixel_values(scene.image[None]), atol=1e-5)


# --------------------------------------------------------------------------- training

def test_train_fast_end_to_end_reloads(tmp_path):
    out = tmp_path / "demo-clip"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "attnviz.demo.train_clip", "--fast", "--quiet", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    model = attnviz.load_model(str(out))
    assert model.family == "clip" and model.kind == "clip"
    cfg = model.model.config
    assert (cfg.vision_config.image_size, cfg.vision_config.patch_size) == (64, 8)
    assert cfg.attnviz_demo["example_prompts"]
    cap = attnviz.capture(model, S.scene_to_pil(S.make_scene(3)), texts=["a red circle", "a zebra"])
    assert cap.layout.rows == cap.layout.cols == 8 and cap.layout.prefix_names == ("cls",)
    e = attnviz.explain(model, cap, "relevance", target=1)
    assert e.map.shape == (8, 8) and np.isfinite(e.map).all()
    words = attnviz.explain(model, cap, "text_relevance", target=0).meta["words"]
    assert [w.strip() for w, _ in words] == ["a", "red", "circle"]
    # a word the vocabulary lacks is spelled in byte pieces, and is still one word
    words = attnviz.explain(model, cap, "text_relevance", target=1).meta["words"]
    assert [w for w, _ in words] == ["a", "zebra"]
    assert len(model.text_words(cap.inputs, 1)[1][1]) > 1                  # "zebra" is several tokens


# --------------------------------------------------------------------------- shipped model

shipped = pytest.mark.skipif(not (SHIPPED / "model.safetensors").exists(),
                             reason="models/demo-clip-shapes is missing: run `python -m attnviz.demo.train_clip`")


@shipped
def test_shipped_model_loads_offline_by_name_and_folder():
    files = [p for p in SHIPPED.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 5 * 1024 * 1024
    assert not any(p.suffix in (".bin", ".pt", ".pth") for p in files)
    assert (SHIPPED / "README.md").is_file()
    by_name = attnviz.load_model("demo-clip-shapes")
    by_dir = attnviz.load_model(str(SHIPPED))
    for m in (by_name, by_dir):
        assert m.family == "clip" and m.kind == "clip"
        assert m.model.config.vision_config._attn_implementation in ("eager", "attnviz_eager")


@shipped
def test_shipped_model_points_at_the_named_object_and_reads_captions():
    from attnviz.demo.evaluate_clip import EVAL_SEED, evaluate

    r = evaluate(str(SHIPPED), n=100, seed=EVAL_SEED)
    assert r["default_start_layer"] == 0, r
    assert r["pointing"]["start_layer_0"]["cell"] >= POINTING_FLOOR, r
    assert r["pointing"]["start_layer_0"]["bilinear"] >= POINTING_BILINEAR_FLOOR, r
    assert r["pointing"]["start_layer_-1"]["cell"] >= POINTING_LAST_LAYER_FLOOR, r
    assert r["zero_shot_caption_accuracy"] >= CAPTION_FLOOR, r
    assert r["zero_shot_object_accuracy"] >= OBJECT_FLOOR, r
