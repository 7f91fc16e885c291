"""The four VLM families saved with save_pretrained, loaded back through attnviz's own loader (Auto classes;
Qwen2-VL's processor assembled without torchvision), and explained through the CLI's --question path."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from attnviz.adapters.vlm import VlmAdapter
from attnviz.cli import main

KINDS = ("llava", "paligemma", "qwen2_vl", "idefics3")


@pytest.fixture(scope="module")
def vlm_dirs(tmp_path_factory):
    out = {}
    for kind in KINDS:
        a = VlmAdapter.tiny(kind, seed=3)
        folder = tmp_path_factory.mktemp(f"tiny-{kind}")
        a.model.save_pretrained(folder, safe_serialization=True)
        a.processor.save_pretrained(folder)
        out[kind] = (folder, a)
    return out


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray((np.random.RandomState(5).rand(40, 48, 3) * 255).astype("uint8")).save(path)
    return path


@pytest.mark.parametrize("kind", KINDS)
def test_a_saved_vlm_reloads_through_the_loader_with_the_same_scores(kind, vlm_dirs, image_file):
    import attnviz
    folder, made = vlm_dirs[kind]
    loaded = attnviz.load_model(str(folder))
    assert loaded.family == "vlm" and loaded.kind == kind
    img = Image.open(image_file).convert("RGB")
    caps = [a.capture(a.prepare(img, question="what colour?", answer="red cat"), grads=False) for a in (made, loaded)]
    assert caps[0].extras["image_tokens"] == caps[1].extras["image_tokens"]
    torch.testing.assert_close(caps[0].scores, caps[1].scores, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_cli_explains_an_answer_word_with_json_and_the_map_on_the_token_grid(kind, vlm_dirs, image_file, tmp_path,
                                                                            capsys):
    folder, made = vlm_dirs[kind]
    out = tmp_path / "map.npy"
    rc = main(["explain", str(image_file), "--model", str(folder), "--question", "what colour is it?",
               "--answer", "red cat", "--method", "relevance", "--target", "1", "--json", "--out", str(out)])
    assert rc == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["method"] == "answer_relevance" and rec["target"]["index"] == 1
    assert [t["token"] for t in rec["answer_tokens"]][:1] == ["red"]
    assert 0 < rec["answer_tokens"][1]["probability"] < 1
    geo = rec["image"]
    m = np.load(out)
    assert list(m.shape) == geo["canvas"] == rec["map_shape"]
    # the map is the method's own, on the same capture made here
    from attnviz.methods import explain
    cap = made.capture(made.prepare(Image.open(image_file).convert("RGB"), question="what colour is it?",
                                    answer="red cat"))
    np.testing.assert_allclose(m, explain(made, cap, "answer_relevance", 1).map, rtol=1e-4, atol=1e-7)
    if kind == "idefics3":
        assert [v["name"] for v in geo["views"]][-1] == "global" and geo["views"][-1]["on_canvas"] is None
        glob = np.load(tmp_path / "map.global.npy")
        np.testing.assert_allclose(glob, np.asarray(rec["meta"]["beside"]["global"]), rtol=1e-6)


def test_cli_lets_the_model_answer_and_explains_its_first_content_word(vlm_dirs, image_file, capsys):
    folder, _ = vlm_dirs["llava"]
    rc = main(["explain", str(image_file), "--model", str(folder), "--question", "what is it?",
               "--method", "image_attention", "--layer", "0", "--json"])
    assert rc == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["source"] == "generated" and rec["answer_tokens"]
    first = next(t for t in rec["answer_tokens"] if any(c.isalnum() for c in t["token"]))
    assert rec["target"]["index"] == first["index"] and rec["params"]["decoder_layer"] == "0"


def test_cli_question_on_a_non_vlm_and_a_vlm_without_question_say_what_to_do(vlm_dirs, image_file, saved_models,
                                                                            capsys):
    assert main(["explain", str(image_file), "--model", str(saved_models["vit"]), "--question", "what?"]) == 2
    assert "vision-language model" in capsys.readouterr().err
    assert main(["explain", str(image_file), "--model", str(vlm_dirs["llava"][0])]) == 2
    assert "--question" in capsys.readouterr().err
