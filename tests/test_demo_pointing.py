"""The shipped demo classifier points at the right object (pointing game, Zhang et al. 2016).

Token maps are 8×8 patches over a 64² scene, so a hit is judged at their own
resolution: the hottest patch overlaps the explained object's mask (the
paper's 15-pixel tolerance on 224² images is about one 16-pixel patch).
Pixel maps (integrated gradients, positive part) are judged at their hottest pixel.
"""
from pathlib import Path

import numpy as np
import pytest

import attnviz
from attnviz.scenes import make_dataset, mask_for_class, scene_to_pil
from attnviz.metrics import pointing_game_hit

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo-vit-shapes"
pytestmark = pytest.mark.skipif(not (DEMO / "model.safetensors").exists(), reason="demo model not trained")


def test_pointing_game_on_fresh_two_object_scenes():
    model = attnviz.load_model("demo-vit-shapes")
    scenes = make_dataset(40, 424242, n_objects=2)          # a seed never used in training
    hits = {"relevance": 0, "integrated_gradients": 0, "rollout": 0}
    total = 0
    for scene in scenes:
        cap = attnviz.capture(model, scene_to_pil(scene))
        for c in scene.class_indices:
            mask = mask_for_class(scene, c)
            total += 1
            for method in hits:
                e = attnviz.explain(model, cap, method, target=c, **({"n_steps": 32} if method == "integrated_gradients" else {}))
                m = np.clip(e.map, 0, None) if e.signed else e.map
                hits[method] += pointing_game_hit(m, mask, mode="pixel" if e.over == "pixels" else "cell")
    rates = {k: v / total for k, v in hits.items()}
    print(f"\npointing game over {total} explained objects: " + ", ".join(f"{k} {v:.1%}" for k, v in rates.items())
          + "  (rollout is class-agnostic: about 50% on two objects is expected)")
    assert rates["relevance"] >= 0.85
    assert rates["integrated_gradients"] >= 0.85
