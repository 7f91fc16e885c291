"""Every class-specific method explains the target it is given, not the prediction (transformers-interpret's bug:
asked for class 0 or a class name, it explained the predicted class): given index 0, a label and another index,
the explanation names that target, reports that target's score (the model's own logit, computed here), draws
the same map for the label as for its index, and a different map from the predicted class's."""
import json

import numpy as np
import pytest
import torch

import attnviz
from attnviz.adapters.classifier import ClassifierAdapter
from attnviz.adapters.clip import ClipAdapter
from attnviz.adapters.cnn import CnnAdapter
from attnviz.methods import list_methods

LIGHT = {"integrated_gradients": {"n_steps": 4}, "gradient_shap": {"n_samples": 2}, "smoothgrad": {"nt_samples": 2},
         "lime": {"n_samples": 16}, "kernel_shap": {"n_samples": 16},
         "noise_tunnel": {"nt_samples": 2, "n_steps": 4}}
PROMPTS = ["a red circle", "a blue square", "a cat", "a dog"]


def _seen(m):
    m = np.asarray(m, dtype=np.float64)
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def _own_scores(adapter, cap):
    """The model's own output for the captured input, without attnviz's score function."""
    with torch.no_grad():
        if adapter.family == "clip":
            return adapter.model(**{k: v for k, v in cap.inputs.items() if k in ("pixel_values", "input_ids",
                                                                                "attention_mask")}).logits_per_image[0]
        return adapter.model(pixel_values=cap.inputs["pixel_values"]).logits[0]


@pytest.mark.parametrize("make", [lambda: ClassifierAdapter.tiny("vit"), lambda: ClipAdapter.tiny("clip"),
                                  lambda: CnnAdapter.tiny("resnet")], ids=["vit", "clip", "cnn"])
def test_every_class_specific_method_explains_the_asked_target(make, photo):
    adapter = make()
    cap = attnviz.capture(adapter, photo, texts=PROMPTS if adapter.family == "clip" else None)
    own = _own_scores(adapter, cap)
    top = int(own.argmax())
    if cap.targets[0].kind == "class":                # (an image-text model defaults to its first prompt)
        assert adapter.resolve_target(cap, None).index == top
    others = [i for i in range(len(cap.targets)) if i not in (0, top)]
    named = cap.targets[others[0]]                     # asked by its label
    asks = [(0, 0), (named.label, named.index), (others[-1], others[-1])]
    checked = []
    for spec in list_methods(adapter):
        if not spec.class_specific:
            continue
        params = LIGHT.get(spec.name, {})
        top_map = _seen(attnviz.explain(adapter, cap, spec.name, target=top, **params).map)
        by_index = {}
        for ask, want in asks:
            e = attnviz.explain(adapter, cap, spec.name, target=ask, **params)
            assert e.target.index == want, (spec.name, ask)
            assert e.target.score == pytest.approx(float(own[want]), rel=1e-4, abs=1e-5), (spec.name, ask)
            if want != top and e.map.shape == top_map.shape:      # (a prompt-token map: another prompt's tokens)
                assert not np.allclose(_seen(e.map), top_map, atol=1e-3), \
                    f"{spec.name} asked for {ask!r} drew the predicted class's map"
            by_index[want] = e.map
        by_label = attnviz.explain(adapter, cap, spec.name, target=named.index, **params).map
        np.testing.assert_allclose(by_index[named.index], by_label, rtol=1e-5, atol=1e-7)
        checked.append(spec.name)
    assert {"grad_cam", "grad_cam_pp", "score_cam", "ablation_cam", "noise_tunnel", "saliency"} <= set(checked)


def test_cli_reports_the_asked_targets_score(tmp_path, photo, capsys, saved_models):
    """``--target 0`` and ``--target <label>`` through the CLI: the JSON names that target and its logit."""
    from attnviz.cli import main
    path = tmp_path / "p.png"
    photo.save(path)
    adapter = attnviz.load_model(str(saved_models["vit"]))
    cap = attnviz.capture(adapter, photo)
    own = _own_scores(adapter, cap)
    for ask, want in (("0", 0), ("class_3", 3)):
        for method in ("grad_cam", "noise_tunnel"):
            code = main(["explain", str(path), "--model", str(saved_models["vit"]), "--method", method,
                         "--target", ask, "--json"] + (["--param", "nt_samples=2", "--param", "n_steps=4"]
                                                        if method == "noise_tunnel" else []))
            rec = json.loads(capsys.readouterr().out)
            assert code == 0 and rec["target"]["index"] == want
            assert rec["score"] == pytest.approx(float(own[want]), rel=1e-4)
