"""The CLI contract: exit codes 0 / 2 / 3 / 4, JSON fields, --out files, the bad-image corpus."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnviz.cli import main

from .bad_images import corpus


@pytest.fixture
def image_file(tmp_path, photo):
    p = tmp_path / "photo.png"
    photo.save(p)
    return p


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_explain_json_fields(capsys, image_file, saved_models):
    code, out, err = run(capsys, "explain", image_file, "--model", saved_models["deit-teacher"],
                         "--method", "relevance", "--target", "class_2", "--json")
    assert code == 0, err
    rec = json.loads(out)
    assert {"model", "method", "target", "score", "map_shape", "over", "timings"} <= set(rec)
    assert rec["method"] == "relevance" and rec["over"] == "patches" and rec["map_shape"] == [4, 4]
    assert rec["target"] == {"index": 2, "label": "class_2", "kind": "class"}
    assert isinstance(rec["score"], float)
    assert {"capture", "method", "total"} <= set(rec["timings"])


def test_explain_npy_and_png(capsys, tmp_path, image_file, saved_models, photo):
    npy, png = tmp_path / "m.npy", tmp_path / "m.png"
    code, _, err = run(capsys, "explain", image_file, "--model", saved_models["vit"], "--method", "attention",
                       "--layer", "-1", "--head", "2", "--out", npy)
    assert code == 0, err
    m = np.load(npy)
    assert m.shape == (4, 4) and m.dtype == np.float32
    code, _, err = run(capsys, "explain", image_file, "--model", saved_models["vit"], "--method", "saliency",
                       "--out", png, "--size", "32x48")
    assert code == 0, err
    assert Image.open(png).size == photo.size          # overlay at the original size
    code, _, err = run(capsys, "explain", image_file, "--model", saved_models["vit"], "--method", "saliency",
                       "--out", npy, "--size", "32x48")
    assert np.load(npy).shape == (32, 48)              # pixel map at the model input size


@pytest.mark.parametrize("argv,match", [
    (["explain"], "required"),
    (["explain", "IMG", "--method", "nope"], "Unknown method"),
    (["explain", "IMG", "--method", "rollout", "--layer", "1"], "no --layer"),
    (["explain", "IMG", "--target", "99"], "out of range"),
    (["explain", "IMG", "--param", "n_steps"], "key=value"),
    (["explain", "IMG", "--out", "x.jpg"], ".npy or .png"),
    (["explain", "IMG", "--size", "big"], "HEIGHTxWIDTH"),
    (["explain", "IMG", "--size", "4000x4000"], "250,000 patches of 8×8; at most 65,536"),
    (["explain", "IMG", "--out", "/no/such/folder/x.png"], "does not exist"),
    (["explain", "IMG", "--text", "a cat"], "reads no text"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_exit_2(capsys, image_file, saved_models, argv, match):
    argv = [str(image_file) if a == "IMG" else a for a in argv]
    if argv[0] == "explain" and len(argv) > 1:
        argv += ["--model", str(saved_models["vit"])]
    try:
        code = main(argv)
    except SystemExit as e:          # argparse's own usage errors
        code = e.code
    assert code == 2
    assert match in capsys.readouterr().err


def test_model_unavailable_exit_4(capsys, image_file, tmp_path):
    code, _, err = run(capsys, "explain", image_file, "--model", "someone/not-cached-anywhere")
    assert code == 4 and "not in the local cache" in err
    code, _, err = run(capsys, "explain", image_file, "--model", tmp_path)
    assert code == 4 and "config.json" in err


@pytest.mark.parametrize("name", sorted(corpus()))
def test_bad_image_corpus_through_cli(capsys, tmp_path, saved_models, name):
    data, expected = corpus()[name]
    path = tmp_path / f"{name}.png"
    path.write_bytes(data)
    code, out, err = run(capsys, "explain", path, "--model", saved_models["vit"], "--method", "rollout", "--json")
    if expected is None:
        assert code == 0, err
        assert np.isfinite(json.loads(out)["score"])
    else:
        assert code == 3
        line = err.strip()
        assert expected in line and line.count("\n") == 0 and "Traceback" not in line


def test_models_lists_catalog(capsys):
    code, out, _ = run(capsys, "models", "--json")
    rows = json.loads(out)
    assert code == 0
    hubs = {r["hub"] for r in rows}
    assert {"google/vit-base-patch16-224", "facebook/deit-base-distilled-patch16-224", "facebook/dinov2-small",
            "microsoft/beit-base-patch16-224", "facebook/dino-vitb16", "facebook/dinov2-with-registers-small"} <= hubs
    assert all(isinstance(r["offline"], bool) for r in rows)
    code, out, _ = run(capsys, "models", "--methods")
    assert code == 0 and "relevance" in out and "integrated_gradients" in out


def test_explain_faithfulness_and_sanity(capsys, image_file, saved_models):
    """--faithfulness adds deletion / insertion AUCs (checked against the library call), --sanity the
    randomisation steps; both in the JSON and as lines of the text output."""
    from attnviz import capture, explain, load_model
    from attnviz.images import load_path
    from attnviz.metrics import deletion_insertion, deletion_summary

    code, out, err = run(capsys, "explain", image_file, "--model", saved_models["vit"], "--method", "relevance",
                         "--target", "1", "--faithfulness", "--sanity", "--json")
    assert code == 0, err
    rec = json.loads(out)
    adapter = load_model(str(saved_models["vit"]))
    cap = capture(adapter, load_path(image_file))
    want = deletion_summary(deletion_insertion(adapter, cap, explain(adapter, cap, "relevance", target=1)))
    assert rec["faithfulness"]["deletion_auc"] == pytest.approx(want["deletion_auc"], abs=1e-6)
    assert rec["faithfulness"]["insertion_auc"] == pytest.approx(want["insertion_auc"], abs=1e-6)
    assert rec["faithfulness"]["quantity"] == "probability" and rec["faithfulness"]["steps"] == 16
    assert [s["randomised"] for s in rec["sanity"]] == ["none", "block 1", "blocks 0–1"]
    assert rec["sanity"][0]["spearman_abs"] == pytest.approx(1.0)
    assert {"faithfulness", "sanity"} <= set(rec["timings"])
    code, out, _ = run(capsys, "explain", image_file, "--model", saved_models["vit"], "--faithfulness", "--sanity")
    assert code == 0 and "deletion AUC" in out and "Spearman |map| none 1.00" in out


def test_batch_folder(capsys, tmp_path, saved_models, photo):
    src = tmp_path / "in"
    src.mkdir()
    photo.save(src / "a.png")
    photo.rotate(90, expand=True).save(src / "b.jpg")
    (src / "c.png").write_bytes(b"not an image")
    code, _, err = run(capsys, "batch", src, "--model", saved_models["vit"], "--method", "rollout",
                       "--out-dir", tmp_path / "out")
    assert code == 3                                      # one image was rejected
    from attnviz.images import ImageRejected, load_image
    with pytest.raises(ImageRejected) as why:             # the reason images.load_image gives for that file
        load_image(b"not an image")
    assert f"rejected {src / 'c.png'}: {why.value}" in err or f"rejected c.png: {why.value}" in err, err
    lines = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [x["file"] for x in lines] == ["a.png", "b.jpg", "c.png"]
    assert "error" in lines[2] and lines[0]["map_shape"] == [4, 4]
    assert (tmp_path / "out" / "b.jpg.png").exists() and np.load(tmp_path / "out" / "a.png.npy").shape == (4, 4)
    assert "faithfulness" not in lines[0]
    code, _, err = run(capsys, "batch", src, "--model", saved_models["vit"], "--method", "relevance",
                       "--out-dir", tmp_path / "out2", "--faithfulness")
    lines = [json.loads(x) for x in (tmp_path / "out2" / "results.jsonl").read_text().splitlines()]
    # By hand: the model's own logits, patches hidden (set to 0, the mean colour) in the order of the written
    # map, softmax of the top class after each patch (16 patches: 16 steps), trapezoid over the fractions.
    import attnviz
    adapter = attnviz.load_model(str(saved_models["vit"]))
    beat = 0
    for name, rec in zip(("a.png", "b.jpg"), lines):
        with Image.open(src / name) as im:
            x = adapter.prepare(im.convert("RGB"))["pixel_values"]
        patch_map = np.load(tmp_path / "out2" / f"{name}.npy").ravel()
        aucs = {}
        for key, order in (("deletion_auc", sorted(range(16), key=lambda i: (-patch_map[i], i))),
                           ("random_deletion_auc", list(np.random.default_rng(0).permutation(16)))):
            img, probs = x.clone(), []
            with torch.no_grad():
                top = int(adapter.model(pixel_values=x).logits[0].argmax())
                for k in range(17):
                    if k:
                        r, c = divmod(int(order[k - 1]), 4)
                        img[..., r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = 0.0
                    probs.append(float(torch.softmax(adapter.model(pixel_values=img).logits, -1)[0, top]))
            aucs[key] = np.trapezoid(probs, np.arange(17) / 16)
            assert rec["faithfulness"][key] == pytest.approx(aucs[key], rel=1e-5), (name, key)
        beat += aucs["deletion_auc"] < aucs["random_deletion_auc"]
    assert "faithfulness over 2 images" in err and f"beat random on deletion in {beat}/2" in err


def test_batch_never_writes_over_the_images(capsys, tmp_path, saved_models, photo):
    """a.png and a.jpg get their own maps; the images' own folder is refused as the output."""
    src = tmp_path / "in"
    src.mkdir()
    photo.save(src / "a.png")
    photo.rotate(90, expand=True).save(src / "a.jpg")
    before = (src / "a.png").read_bytes()
    code, _, err = run(capsys, "batch", src, "--model", saved_models["vit"], "--out-dir", src)
    assert code == 2 and "another folder" in err and (src / "a.png").read_bytes() == before
    code, _, err = run(capsys, "batch", src, "--model", saved_models["vit"], "--out-dir", tmp_path / "out")
    assert code == 0, err
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"a.png.npy", "a.png.png", "a.jpg.npy", "a.jpg.png", "results.jsonl",
                                               "results.parquet", "run.json", ".attnviz.lock"}
    assert not (src / ".attnviz.lock").exists()          # the refused run took no lock in the images' folder
    assert np.load(out / "a.png.npy").shape == (4, 4) and np.load(out / "a.jpg.npy").shape == (4, 4)
    assert (src / "a.png").read_bytes() == before


def test_bench_quick_prints_ratios(capsys):
    code, out, _ = run(capsys, "bench", "--quick", "--repeats", "1")
    assert code == 0
    assert "× forward" in out and "all attention views" in out and "rollout (capture + method)" in out


@pytest.fixture(scope="module")
def deep_text_clip(tmp_path_factory):
    """A tiny CLIP whose text tower has 3 layers and image tower 2, saved as a folder."""
    import copy

    import transformers

    from attnviz.adapters.clip import ClipAdapter

    from .conftest import save_tiny
    tiny = ClipAdapter.tiny("clip")
    cfg = copy.deepcopy(tiny.model.config)
    cfg.text_config.num_hidden_layers = 3
    model = transformers.CLIPModel(cfg)
    model.set_attn_implementation("eager")
    adapter = ClipAdapter(model, tiny.processor, tiny.tokenizer, name="deep-text", source="<memory>")
    return save_tiny(adapter, tmp_path_factory.mktemp("deep-text-clip"))


def test_text_layers_are_checked_against_the_text_tower(capsys, image_file, deep_text_clip, photo):
    """Text layer 2 exists (3 text layers, 2 image layers) and is read from the model's own attentions;
    layer 3 or -4 is refused in one sentence instead of wrapping round to another layer."""
    import attnviz
    adapter = attnviz.load_model(str(deep_text_clip))
    assert adapter.n_layers == 2 and adapter.model.config.text_config.num_hidden_layers == 3
    cap = attnviz.capture(adapter, photo, texts=["a red circle", "a cat"])
    ids, mask = cap.inputs["input_ids"], cap.inputs["attention_mask"]
    with torch.no_grad():
        direct = adapter.model.text_model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    assert len(direct) == 3
    eos = adapter.tokenizer.eos_token_id
    for p in (0, 1):
        read = int((ids[p] == eos).nonzero()[0, 0])                     # CLIP reads its first end-of-text token
        real = mask[p].bool()
        for layer in (2, -1, -3):
            want = direct[layer][p, :, read].mean(0)[real].numpy()      # [S_prompt], heads averaged
            e = attnviz.explain(adapter, cap, "text_attention", target=p, layer=layer)
            np.testing.assert_allclose(e.map, want, rtol=1e-5, atol=1e-7)
    for argv in (["--method", "text_attention", "--layer", "3"], ["--method", "text_attention", "--layer", "-4"],
                 ["--method", "text_relevance", "--param", "start_layer=3"]):
        code, _, err = run(capsys, "explain", image_file, "--model", deep_text_clip, "--text", "a red circle", *argv)
        assert code == 2, err
        bad = argv[-1].split("=")[-1]
        assert f"Layer {bad} is out of range: this model's text tower has 3 layers (0–2)." in err


def test_a_demo_folder_is_its_catalog_model_and_a_missing_one_names_it(tmp_path, monkeypatch):
    """The shipped demo's folder resolves to the catalog entry itself (one name in results, so a batch
    resumed with the name is the same run); the same path typed outside the repository, where it is no
    folder, names the catalog model instead of blaming the hub."""
    from attnviz.catalog import ROOT, load_catalog, resolve
    from attnviz.errors import ModelUnavailable
    entry = next(e for e in load_catalog().entries if e.path)
    by_folder = resolve(str(ROOT / entry.path))
    assert (by_folder.name, by_folder.entry, by_folder.source) == (entry.name, entry, entry.source)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelUnavailable, match=f"use the catalog name '{entry.name}'"):
        import attnviz
        attnviz.load_model(f"models/{Path(entry.path).name}")

