"""The synthetic scene generator, the demo training script and the shipped demo model."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from attnviz import scenes as S  # noqa: E402
from attnviz.metrics import pointing_game_hit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "demo-vit-shapes"


# --------------------------------------------------------------------------- scenes

def _same(a: S.Scene, b: S.Scene) -> bool:
    return (np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
            and a.objects == b.objects and np.array_equal(a.labels, b.labels)
            and a.caption == b.caption)


def test_scene_is_deterministic_for_a_seed():
    assert _same(S.make_scene(123), S.make_scene(123))
    assert not np.array_equal(S.make_scene(123).image, S.make_scene(124).image)


def test_dataset_is_deterministic_and_independent_of_n():
    a = S.make_dataset(4, seed=7)
    b = S.make_dataset(6, seed=7)
    assert all(_same(x, y) for x, y in zip(a, b))
    assert _same(a[2], S.make_scene(S.scene_rng(7, 2)))
    assert _same(S.make_dataset(2, seed=7, start=2)[0], a[2])
    assert not np.array_equal(a[0].image, S.make_dataset(1, seed=8)[0].image)


def test_generator_accepts_a_generator_and_advances_it():
    rng = np.random.default_rng(5)
    first, second = S.make_scene(rng), S.make_scene(rng)
    assert not np.array_equal(first.image, second.image)


@pytest.mark.parametrize("seed", [0, 10_000])
def test_scene_invariants(seed):
    for scene in S.make_dataset(150, seed):
        assert scene.image.shape == (64, 64, 3) and scene.image.dtype == np.uint8
        n = len(scene.objects)
        assert n in (2, 3)
        assert scene.masks.shape == (n, 64, 64) and scene.masks.dtype == np.bool_
        shapes = [o.shape for o in scene.objects]
        assert len(set(shapes)) == n and set(shapes) <= set(S.SHAPES)
        assert all(o.colour in S.COLOURS for o in scene.objects)
        # masks non-empty, pairwise disjoint, boxes tight and disjoint
        assert scene.masks.reshape(n, -1).any(1).all()
        assert scene.masks.sum(0).max() == 1
        for o, m in zip(scene.objects, scene.masks):
            left, top, right, bottom = o.bbox
            ys, xs = np.nonzero(m)
            assert (left, top, right, bottom) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        for i in range(n):
            for j in range(i + 1, n):
                a, b = scene.objects[i].bbox, scene.objects[j].bbox
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
        # objects run left to right, by box centre
        centres = [o.bbox[0] + o.bbox[2] for o in scene.objects]
        assert centres == sorted(centres)
        # labels are exactly the objects' classes
        assert scene.labels.dtype == np.float32 and scene.labels.shape == (len(S.SHAPES),)
        assert set(np.flatnonzero(scene.labels)) == {S.SHAPES.index(s) for s in shapes}
        # the caption names each object, in order
        pos = [scene.caption.index(f"{o.colour} {o.shape}") for o in scene.objects]
        assert pos == sorted(pos)
        for c in range(len(S.SHAPES)):
            m = S.mask_for_class(scene, c)
            if S.SHAPES[c] in shapes:
                assert np.array_equal(m, scene.masks[shapes.index(S.SHAPES[c])])
            else:
                assert not m.any()


def test_fixed_classes_captions_and_pil():
    scene = S.make_scene(1, shapes=["circle", "square"], colours=["red", "orange"], clutter=0)
    assert {o.shape for o in scene.objects} == {"circle", "square"}
    assert "a red circle" in scene.caption and "an orange square" in scene.caption
    assert S.caption_for([S.SceneObject("cross", "blue", (0, 0, 1, 1)),
                          S.SceneObject("circle", "red", (0, 0, 1, 1)),
                          S.SceneObject("square", "cyan", (0, 0, 1, 1))]) \
        == "a blue cross, a red circle and a cyan square"
    img = S.scene_to_pil(scene)
    assert img.size == (64, 64) and img.mode == "RGB"
    with pytest.raises(ValueError):
        S.make_scene(1, shapes=["circle", "circle"])
    with pytest.raises(IndexError):
        S.mask_for_class(scene, len(S.SHAPES))


# --------------------------------------------------------------------------- pointing game

def test_pointing_game_hit_upsamples_a_patch_grid():
    mask = np.zeros((64, 64), bool)
    mask[16:24, 40:48] = True  # exactly patch (2, 5)
    grid = np.zeros((8, 8))
    grid[2, 5] = 1.0
    assert pointing_game_hit(grid, mask)
    grid[2, 5], grid[6, 1] = 0.5, 1.0
    assert not pointing_game_hit(grid, mask)


def test_pointing_game_ties_take_the_first_argmax_and_box_places_the_map():
    mask = np.zeros((10, 10), bool)
    mask[9, 9] = True
    assert not pointing_game_hit(np.ones((10, 10)), mask)  # first argmax is (0, 0)
    mask[0, 0] = True
    assert pointing_game_hit(np.ones((10, 10)), mask)
    # a 2×2 map covering only the box (5, 5, 10, 10): its bottom-right cell is the max
    mask = np.zeros((10, 10), bool)
    mask[8, 8] = True
    m = np.array([[0.0, 0.0], [0.0, 1.0]])
    assert not pointing_game_hit(m, mask)
    mask[7:10, 7:10] = True
    assert pointing_game_hit(m, mask, box=(5, 5, 10, 10))
    assert not pointing_game_hit(np.full((2, 2), np.nan), mask)


# --------------------------------------------------------------------------- training

def test_train_fast_end_to_end_reloads(tmp_path):
    import torch
    from transformers import ViTForImageClassification, ViTImageProcessor

    out = tmp_path / "demo-vit"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "attnviz.demo.train", "--fast", "--quiet",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and not any(n.endswith(".bin") for n in names)
    assert "preprocessor_config.json" in names
    model = ViTForImageClassification.from_pretrained(out, use_safetensors=True, attn_implementation="eager")
    processor = ViTImageProcessor.from_pretrained(out)
    cfg = model.config
    assert (cfg.image_size, cfg.patch_size) == (64, 8)
    assert cfg.problem_type == "multi_label_classification"
    assert [cfg.id2label[i] for i in range(len(S.SHAPES))] == list(S.SHAPES)
    assert processor.size == {"height": 64, "width": 64}
    pv = processor(images=S.scene_to_pil(S.make_scene(3)), return_tensors="pt")["pixel_values"]
    assert tuple(pv.shape) == (1, 3, 64, 64)
    with torch.no_grad():
        out_ = model(pixel_values=pv, output_attentions=True)
    assert tuple(out_.logits.shape) == (1, len(S.SHAPES))
    assert len(out_.attentions) == cfg.num_hidden_layers
    assert tuple(out_.attentions[0].shape[-2:]) == (65, 65)  # 8×8 patches + CLS


def test_processor_matches_training_normalisation(tmp_path):
    import torch

    from attnviz.demo.train import make_image_processor, to_pixel_values

    scene = S.make_scene(11)
    proc = make_image_processor()
    proc.save_pretrained(tmp_path)
    from transformers import ViTImageProcessor

    pv = ViTImageProcessor.from_pretrained(tmp_path)(images=S.scene_to_pil(scene), return_tensors="pt")
    assert torch.allclose(pv["pixel_values"], to_pixel_values(scene.image[None]), atol=1e-5)


# --------------------------------------------------------------------------- shipped model

@pytest.mark.skipif(not (SHIPPED / "model.safetensors").exists(),
                    reason="models/demo-vit-shapes is missing: run `python -m attnviz.demo.train`")
def test_shipped_demo_model_is_accurate_on_fresh_scenes():
    from attnviz.demo.evaluate import exact_match_accuracy

    files = [p for p in SHIPPED.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 5 * 1024 * 1024
    assert not any(p.suffix == ".bin" for p in files)
    assert exact_match_accuracy(str(SHIPPED), n=500, seed=12345) >= 0.95


def test_time_cap_stops_after_the_deadline_only():
    import time

    from attnviz.demo.common import past_time_cap
    lines = []
    assert not past_time_cap(None, None, 3, 10, lines.append)
    assert not past_time_cap(time.time() + 60, 1, 3, 10, lines.append) and lines == []
    assert past_time_cap(time.time() - 1, 2, 3, 10, lines.append)
    assert lines == ["time cap of 2 min reached at step 4/10; stopping early"]
