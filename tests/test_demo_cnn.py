"""The demo CNN (models/demo-cnn-shapes): its model card's numbers reproduced on fresh scenes (other seeds than the
card's), as floors; and the trainer end to end (a few steps, reloaded through from_pretrained)."""
from pathlib import Path

import pytest

import attnviz
from attnviz.demo import evaluate_cnn

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "demo-cnn-shapes"


@pytest.fixture(scope="module")
def demo():
    return attnviz.load_model(str(SHIPPED))


def test_shipped_folder_is_small_safe_and_our_own(demo):
    import json
    files = {p.name: p for p in SHIPPED.iterdir() if p.is_file()}
    assert sum(p.stat().st_size for p in files.values()) < 5 * 1024 * 1024
    assert "model.safetensors" in files and not any(n.endswith((".bin", ".py", ".pt")) for n in files)
    cfg = json.loads(files["config.json"].read_text())
    assert cfg["model_type"] == "attnviz_gated_cnn" and "auto_map" not in cfg      # no remote code
    assert demo.family == "cnn" and demo.provides >= {"channel_gates", "spatial_gates"}
    assert [g.module for g in demo.gate_specs] == ["SE", "ECA", "CBAM", "CBAM", "CBAM", "CBAM"]


def test_accuracy_on_fresh_scenes(demo):
    assert evaluate_cnn.exact_match(demo, 300, seed=31337) >= 0.95          # card: 99.7 % on 1,000 (seed 10000)


def test_pointing_on_fresh_scenes(demo):
    p = evaluate_cnn.pointing(demo, 40, seed=424242)
    assert p["grad_cam"]["cell"] >= 0.85 and p["grad_cam_cell_on_other_object"] <= 0.1
    first, last = p["cbam_gate"]                                              # card: 98 % and 85 % (chance 24 %)
    assert first["cell"] >= 0.85 and last["cell"] >= 0.65


def test_excitations_grow_class_specific_with_depth(demo):
    """Hu et al. 2018 §7.2 on this model: the first (SE) block's excitations barely depend on the shape, the last
    blocks' nearly only on it."""
    from attnviz.excitation import class_profile
    prof = class_profile(demo, per_class=16, seed=2024)
    eta = prof.specificity
    assert eta[0] < 3 * prof.chance and eta[-1] > 0.6 and eta[0] < eta[1] < eta[2]


def test_trainer_end_to_end_reloads(tmp_path):
    from attnviz.demo.train_cnn import main
    import torch
    assert main(["--fast", "--quiet", "--steps", "3", "--out", str(tmp_path)]) == 0
    adapter = attnviz.load_model(str(tmp_path))
    assert adapter.model.config.gates == ["se", "eca", "cbam"]
    assert adapter.layout({"pixel_values": torch.zeros(1, 3, 64, 64)}).rows == 8
