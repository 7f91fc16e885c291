"""The demo captioner: its tokenizer, its training script (fast mode), and the shipped model on fresh scenes."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from attnviz import scenes as S  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "demo-captioner-shapes"
FRESH_SEED = 4242            # never used in training (dataset seed 0) nor its held-out check (20000)
needs_shipped = pytest.mark.skipif(not (SHIPPED / "model.safetensors").exists(),
                                   reason="models/demo-captioner-shapes is missing: run "
                                          "`python -m attnviz.demo.train_captioner`")


def test_tokenizer_makes_every_scene_word_one_token(tmp_path):
    from transformers import AutoTokenizer

    from attnviz.demo.train_captioner import make_tokenizer
    tok = make_tokenizer()
    tok.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    for scene in S.make_dataset(40, seed=3):
        ids = tok(scene.caption)["input_ids"]
        assert len(ids) == len(scene.caption.replace(",", " ,").split())   # one token per word and comma
        assert tok.decode(ids).strip() == scene.caption
    assert tok.eos_token_id == tok.pad_token_id == tok.bos_token_id
    assert tok.convert_ids_to_tokens(tok("an orange cross")["input_ids"]) == ["Ġan", "Ġorange", "Ġcross"]
    odd = tok("A purple blob!")["input_ids"]                     # any text still encodes (byte-level)
    assert tok.eos_token_id not in odd and tok.decode(odd).strip() == "A purple blob!"


def test_teacher_forcing_inputs_and_labels():
    import torch

    from attnviz.demo.train_captioner import teacher_forcing
    ids = torch.tensor([[5, 6, 7, -1], [8, -1, -1, -1]])
    dec_in, labels = teacher_forcing(ids, start_id=99, end_id=99)
    assert dec_in.tolist() == [[99, 5, 6, 7, 99], [99, 8, 99, 99, 99]]
    assert labels.tolist() == [[5, 6, 7, 99, -100], [8, 99, -100, -100, -100]]


def test_train_fast_end_to_end_reloads(tmp_path):
    import attnviz

    out = tmp_path / "captioner"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "attnviz.demo.train_captioner", "--fast", "--quiet",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "preprocessor_config.json",
            "tokenizer_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    cfg = json.loads((out / "config.json").read_text())
    gen = json.loads((out / "generation_config.json").read_text())
    for c in (cfg, gen):
        assert c["decoder_start_token_id"] == c["eos_token_id"] == c["pad_token_id"] == c["bos_token_id"]
    assert cfg["decoder"]["add_cross_attention"] is True
    adapter = attnviz.load_model(str(out))                       # the real loader and adapter
    assert adapter.family == "captioning" and adapter.kind == "vit-gpt2"
    cap = attnviz.capture(adapter, S.scene_to_pil(S.make_scene(5)))
    assert (cap.layout.rows, cap.layout.cols, cap.layout.n_prefix) == (8, 8, 1)
    exp = attnviz.explain(adapter, cap, "cross_attention", target=0)
    assert exp.map.shape == (8, 8)


@needs_shipped
def test_shipped_captioner_loads_offline_and_is_small():
    import attnviz
    files = [p for p in SHIPPED.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 5_000_000
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in files)
    assert (SHIPPED / "README.md").is_file()
    adapter = attnviz.load_model("demo-captioner-shapes")        # the catalog name
    assert adapter.family == "captioning" and adapter.kind == "vit-gpt2"
    assert adapter.resolved.local
    scene = S.make_scene(7)
    cap = attnviz.capture(adapter, S.scene_to_pil(scene))
    assert adapter.caption_text(cap) == scene.caption


@needs_shipped
def test_shipped_captioner_names_objects_and_points_at_them():
    """Captions right, and each shape word's map peaks on the object it names.

    "Points at" is the pointing game's cell reading: the argmax patch of the 8×8 map overlaps
    the object's mask. Objects are 2–3 patches wide, so the argmax patch often straddles the
    object's edge; the stricter pixel readings are checked with a lower bar (see the model card).
    """
    import torch

    from attnviz.demo.evaluate_captioner import evaluate
    threads = torch.get_num_threads()
    torch.set_num_threads(1)         # tiny model: a second thread only waits for a busy core (8 s vs 60 s)
    try:
        r = evaluate(str(SHIPPED), n=100, seed=FRESH_SEED)
    finally:
        torch.set_num_threads(threads)
    # This seed's 100 scenes are harder than most (0.79; 0.87 on 1,000 scenes of another seed).
    assert r["exact_caption_accuracy"] >= 0.75, r
    assert r["object_accuracy"] >= 0.93, r
    shape = r["pointing"]["shape"]
    cross = shape["cross_attention[layer 1, mean of heads]"]          # the last decoder layer: the default
    relevance = shape["caption_relevance"]
    assert cross["words"] >= 150 and relevance["words"] >= 150, shape
    assert cross["cell_pointing_rate"] >= 0.75 and relevance["cell_pointing_rate"] >= 0.75, shape
    assert cross["cell_on_other_object"] <= 0.15 and relevance["cell_on_other_object"] <= 0.15, shape
    assert cross["bilinear_pointing_rate"] >= 0.45 and relevance["bilinear_pointing_rate"] >= 0.6, shape


@needs_shipped
def test_typed_caption_tokens_read_as_text():
    """A space the byte-level BPE leaves on its own (no merge for what follows) shows as ␣, never as Ġ."""
    import attnviz
    from attnviz.scenes import make_scene, scene_to_pil
    model = attnviz.load_model(str(SHIPPED))
    cap = attnviz.capture(model, scene_to_pil(make_scene(5)), texts=["a red circle and a **x"])
    labels = [t.label for t in cap.targets]
    assert labels[:5] == ["a", "red", "circle", "and", "a"]
    assert "␣" in labels and not any("Ġ" in lab for lab in labels)
    assert model.caption_text(cap) == "a red circle and a **x"
