"""The Compare page under AppTest: the demo ViT against the demo CNN, and two ViTs from a link.

Each side's top class is checked against the model's own forward pass run here through transformers
(its own image processor and logits), not through attnviz's adapters.
"""
import html
from pathlib import Path

import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

import attnviz  # noqa: F401  (registers the demo CNN's config and model with the Auto classes)
from attnviz.images import load_image
from attnviz.ui import notes
from attnviz.ui.state import sample_images

from .test_app import _ok, new_app  # noqa: F401  (fixture)

COMPARE = "attnviz/ui/pages/compare.py"
MODELS = Path(__file__).resolve().parents[1] / "models"


def _top_label(folder: Path, data: bytes) -> str:
    """The model's own top class on the image: its processor, its logits, its id2label."""
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    proc = AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        logits = model(**proc(images=load_image(data), return_tensors="pt")).logits[0]
    return model.config.id2label[int(logits.argmax())]


def _need(name: str) -> Path:
    folder = MODELS / name
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"{folder} is not built (python -m attnviz.demo.train{' cnn' if 'cnn' in name else ''}).")
    return folder


def _open(new_app, **url):
    at = new_app()
    at.query_params.update(url)
    at.run()
    scene = next(n for n in sample_images() if n.startswith("scene"))
    at.session_state["sample"] = scene
    at.switch_page(COMPARE).run()
    return at, sample_images()[scene]


def test_compare_demo_vit_and_demo_cnn(new_app):
    vit, cnn = _need("demo-vit-shapes"), _need("demo-cnn-shapes")
    at, data = _open(new_app)
    _ok(at)
    assert (at.selectbox(key="cmp_a").value, at.selectbox(key="cmp_b").value) == ("demo-vit-shapes",
                                                                                    "demo-cnn-shapes")
    md = " ".join(m.value for m in at.markdown).replace("\\_", "_")     # markdown escapes "_"
    for folder in (vit, cnn):
        assert f"top class **{_top_label(folder, data)}**" in md
    # Grad-CAM (both have it, fast): two overlays, each with its own legend.
    assert at.selectbox(key="cmp_method").value == "grad_cam"
    assert len(at.get("image")) == 2
    assert md.count("attnviz-legend") == 2
    assert at.query_params["model_a"] == "demo-vit-shapes" and at.query_params["model_b"] == "demo-cnn-shapes"
    # Each model's own view: relevance for the ViT, the CBAM spatial gate for the CNN.
    at.selectbox(key="cmp_method").set_value("own").run()
    _ok(at)
    captions = " ".join(c.value for c in at.caption)
    md = " ".join(m.value for m in at.markdown)
    assert html.escape(notes.units("relevance")) in md and html.escape(notes.units("spatial_attention")) in md
    assert "different units" in captions and "channel attention is over channels" in captions.lower()
    # Deletion / insertion on a click, under each map.
    for side in "ab":
        at.button(key=f"cmp_di:{side}:{'relevance' if side == 'a' else 'spatial_attention'}").click().run()
    _ok(at)
    captions = [c.value for c in at.caption]
    assert sum(c.startswith("Area under the curve (AUC): deletion") for c in captions) == 2


def test_compare_two_vits_from_a_link(new_app, saved_models):
    vit = _need("demo-vit-shapes")
    at, data = _open(new_app, model_a="$ATTNVIZ_MODEL", model_b="demo-vit-shapes", method="saliency")
    _ok(at)
    assert not at.warning
    assert (at.selectbox(key="cmp_a").value, at.selectbox(key="cmp_b").value) == ("$ATTNVIZ_MODEL",
                                                                                    "demo-vit-shapes")
    assert at.selectbox(key="cmp_method").value == "saliency"
    md = " ".join(m.value for m in at.markdown).replace("\\_", "_")     # markdown escapes "_"
    for folder in (saved_models["vit"], vit):
        assert f"top class **{_top_label(folder, data)}**" in md
    assert at.query_params["model_a"] == "$ATTNVIZ_MODEL" and at.query_params["method"] == "saliency"


def test_compare_link_with_an_unknown_model_warns_once(new_app):
    _need("demo-vit-shapes")
    at, _ = _open(new_app, model_b="no-such-model")
    assert not at.exception
    assert [w.value for w in at.warning] == [
        "The link's model B 'no-such-model' is not one of this server's models; using the default."]


def test_compare_a_slow_shared_method_runs_on_each_click(new_app):
    _need("demo-vit-shapes"), _need("demo-cnn-shapes")
    at, _ = _open(new_app, method="occlusion")
    _ok(at)
    assert len(at.get("image")) == 0                    # slow: nothing runs before its button
    for side in "ab":
        at.button(key=f"cmp_run:{side}:occlusion").click().run()
    _ok(at)
    assert len(at.get("image")) == 2
    md = " ".join(m.value for m in at.markdown)
    assert md.count("attnviz-legend") == 2
    assert "both in" in " ".join(c.value for c in at.caption)      # one method: same units, still own scales


def test_compare_choices_survive_a_visit_to_another_page(new_app):
    _need("demo-vit-shapes")
    at, _ = _open(new_app)
    at.selectbox(key="cmp_b").set_value("$ATTNVIZ_MODEL").run()
    at.selectbox(key="cmp_method").set_value("saliency").run()
    at.switch_page("attnviz/ui/pages/explore.py").run()
    at.switch_page(COMPARE).run()
    _ok(at)
    assert at.selectbox(key="cmp_b").value == "$ATTNVIZ_MODEL" and at.selectbox(key="cmp_method").value == "saliency"


def test_compare_page_shows_the_attention_versus_convolution_table(new_app):
    """The teaching note's table is the study's own JSON (models/demo-cnn-shapes), one row per run."""
    import json
    rows = json.loads((_need("demo-cnn-shapes") / "attention_vs_convolution.json").read_text())
    at, _ = _open(new_app)
    _ok(at)
    table = at.table[0].value
    assert len(table) == len(rows)
    assert list(table["accuracy on fresh scenes"]) == [f"{100 * r['accuracy']:.1f} %" for r in rows]


def test_a_display_change_redraws_only_the_two_maps(new_app):
    """Issue 13 on this page: a colormap change reruns the two map panels (each side's overlay and legend,
    in the new colours), not the predictions charts."""
    _need("demo-vit-shapes"), _need("demo-cnn-shapes")
    at, _ = _open(new_app)
    _ok(at)
    before = [im.proto.imgs[0].url for im in at.get("image")]
    assert len(before) == 2
    at.selectbox(key="cmap").set_value("viridis").run()
    _ok(at)
    assert not [c for c in at.get("plotly_chart") if c.key.startswith("cmp_pred_")]      # the page did not rerun
    after = [im.proto.imgs[0].url for im in at.get("image")]
    assert len(after) == 2 and after[0] != before[0] and after[1] != before[1]
    assert " ".join(m.value for m in at.markdown).count("attnviz-legend") == 2
