"""The Streamlit app under streamlit.testing (AppTest), every page, with tiny random models."""
import base64
import json
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from attnviz import catalog
from attnviz.render import to_png_bytes

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
HEADS = "attnviz/ui/pages/heads.py"
BROKEN_SENTENCE = "The file is not a supported image (PNG, JPEG, WebP, GIF or BMP)."
BROKEN_BYTES = b"this is a text file, not an image\n" * 4


def _clear():
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture
def new_app(saved_models, monkeypatch):
    """A factory of AppTests on the tiny ViT (ATTNVIZ_MODEL), with every process cache cleared around it."""
    monkeypatch.setenv("ATTNVIZ_MODEL", str(saved_models["vit"]))
    monkeypatch.delenv("ATTNVIZ_ALLOW_CUSTOM_MODELS", raising=False)
    _clear()
    yield lambda: AppTest.from_file(APP, default_timeout=120)
    _clear()


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _images(at):
    return at.get("image")


def _display_change(at, kind: str, key: str, value) -> None:
    """Change a display widget: only the map panel reruns (AppTest's tree then holds just the panel:
    the overlay, not the predictions chart or the method picker); then the whole page runs again so
    that the next widget can be found."""
    getattr(at, kind)(key=key).set_value(value).run()
    _ok(at)
    assert len(_images(at)) >= 1, "the panel drew no overlay"
    assert "predictions" not in [c.key for c in at.get("plotly_chart")], "the whole page reran"
    assert "method" not in [s.key for s in at.selectbox], "the whole page reran"
    at.run()
    _ok(at)


def _captions(at):
    """Every caption on the page, image captions included."""
    return " | ".join([c.value for c in at.caption] + [c for im in _images(at) for c in im.captions])


def _trace_values(chart, trace: int, axis: str) -> np.ndarray:
    """A plotly chart's trace values from the element's JSON (plain list or plotly's base64 typed array)."""
    v = json.loads(chart.proto.spec)["data"][trace][axis]
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
    return np.asarray(v, dtype=float)


def test_explore_shows_predictions_overlay_and_exports(new_app):
    at = new_app().run()
    _ok(at)
    assert len(_images(at)) == 1                                  # the overlay of the default sample
    assert [c.key for c in at.get("plotly_chart")] == ["predictions"]   # the hover tab is drawn when opened
    bars = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]["marker"]["color"]
    assert bars.count("#e4572e") == 1                            # the target's bar is marked on the first run
    assert [b.proto.label for b in at.download_button] == ["Overlay PNG", "Raw map .npy", "Settings .json",
                                                          "Report .html"]
    assert "on **CPU**" in _captions(at)
    assert "relevance" in _captions(at)
    at.session_state["view_tab"] = "Hover for values"
    at.run()
    _ok(at)
    assert [c.key for c in at.get("plotly_chart")] == ["predictions", "fig:relevance"] and not _images(at)
    assert at.selectbox(key="target").index == 0                 # default target: the top-1 class


def test_upload_then_broken_file_then_sample_keeps_working(new_app, photo):
    at = new_app().run()
    at.file_uploader[0].set_value(("photo.png", to_png_bytes(photo), "image/png")).run()
    _ok(at)
    assert len(_images(at)) == 1
    at.file_uploader[0].set_value(("broken.png", BROKEN_BYTES, "image/png")).run()
    assert not at.exception
    assert [e.value for e in at.error] == [BROKEN_SENTENCE]
    assert len(_images(at)) == 0
    from attnviz.ui.state import sample_images
    at.button_group(key="sample").set_value(list(sample_images())[1]).run()
    _ok(at)
    assert len(_images(at)) == 1


def test_display_layer_and_head_changes_never_run_the_model(new_app, forwards):
    at = new_app().run()
    _ok(at)
    after_first = forwards["n"]
    assert after_first >= 1
    for kind, key, value in (("slider", "alpha", 0.8), ("selectbox", "cmap", "viridis"),
                             ("selectbox", "norm", "percentile"), ("radio", "resample", "nearest")):
        _display_change(at, kind, key, value)
    at.selectbox(key="method").set_value("attention").run()
    at.number_input(key="p:attention:layer").set_value(0).run()
    at.selectbox(key="p:attention:head").set_value("2").run()
    _ok(at)
    assert "attention" in _captions(at)
    at.switch_page(HEADS).run()
    at.slider(key="h_layer").set_value(0).run()
    at.selectbox(key="h_head").set_value(3).run()
    _ok(at)
    assert "Layer 0, head 3" in _captions(at)
    assert forwards["n"] == after_first


def test_faithfulness_checks_run_on_click_and_stay_cached(new_app, forwards):
    """Deletion / insertion and the randomisation check wait for their buttons, draw, and are then cached."""
    at = new_app().run()
    _ok(at)
    n_charts = len(at.get("plotly_chart"))
    before = forwards["n"]
    at.button(key="faith:di:relevance").click().run()
    _ok(at)
    keys = [c.key for c in at.get("plotly_chart")]
    assert "faith:di:fig:relevance" in keys and len(keys) == n_charts + 1
    assert "Area under the curve (AUC): deletion" in _captions(at) and "for a random order" in _captions(at)
    assert "faith:di:relevance" not in [b.key for b in at.button]      # the result replaced its button
    ran = forwards["n"] - before
    assert ran >= 2 * 21 // 16                                   # deletion and insertion steps, pooled 16 a forward
    at.button(key="faith:rand:relevance").click().run()
    _ok(at)
    assert "faith:rand:fig:relevance" in [c.key for c in at.get("plotly_chart")]
    assert "The map as blocks are randomised" in _captions(at)
    assert [c for im in _images(at) for c in im.captions][-3:] == ["none", "block 1", "blocks 0–1"]
    # the shared model was not changed by the check: the same map, and cached results shown without a run
    after = forwards["n"]
    _display_change(at, "slider", "alpha", 0.7)
    assert forwards["n"] == after
    assert "faith:di:fig:relevance" in [c.key for c in at.get("plotly_chart")]


def test_choices_survive_other_pages_and_a_rejected_upload(new_app):
    """Streamlit forgets an undrawn widget's value; the app keeps method, comparison and target anyway."""
    at = new_app().run()
    at.selectbox(key="method").set_value("grad_cam").run()
    at.button_group(key="compare").set_value(["saliency"]).run()
    at.selectbox(key="target").set_value(2).run()
    _ok(at)
    at.switch_page(HEADS).run()
    _ok(at)
    at.switch_page("attnviz/ui/pages/explore.py").run()
    _ok(at)
    assert at.selectbox(key="method").value == "grad_cam"
    assert at.button_group(key="compare").value == ["saliency"]
    assert at.selectbox(key="target").value == 2
    at.file_uploader[0].set_value(("broken.png", BROKEN_BYTES, "image/png")).run()   # the page stops early
    assert [e.value for e in at.error] == [BROKEN_SENTENCE]
    from attnviz.ui.state import sample_images
    at.button_group(key="sample").set_value(list(sample_images())[1]).run()
    _ok(at)
    assert at.selectbox(key="method").value == "grad_cam"
    assert at.button_group(key="compare").value == ["saliency"]


def test_offline_demo_default_opens_on_a_shapes_scene(monkeypatch):
    """With no ATTNVIZ_MODEL and no hub, the demo classifier is the default and the first sample is a scene."""
    monkeypatch.delenv("ATTNVIZ_MODEL", raising=False)
    monkeypatch.delenv("ATTNVIZ_ALLOW_CUSTOM_MODELS", raising=False)
    _clear()
    try:
        at = AppTest.from_file(APP, default_timeout=120).run()
        _ok(at)
        assert at.selectbox(key="model").value == "demo-vit-shapes"
        assert at.session_state["sample"].startswith(("scene", "shapes:"))
        assert any("offline demo model" in i.value for i in at.info)
        assert len(_images(at)) == 1
    finally:
        _clear()


def _legend_ranges(at) -> list[tuple[float, float]]:
    """(low, high) of every map legend on the page, read from its HTML (the numbers a user sees)."""
    import re
    out = []
    for m in at.markdown:
        if "attnviz-legend" in m.value:
            ticks = re.findall(r"<span>([^<]+)</span>", m.value)
            out.append((float(ticks[0]), float(ticks[-1])))
    return out


def test_compared_maps_keep_their_own_scale_and_legend(new_app, saved_models):
    """Issue 16: a signed method in a comparison made the one shared scale symmetric and washed out every
    map. Each map now keeps its own scale, stated in its legend: the map's own range, computed here by
    the library on the same image, not the page's shared range."""
    import attnviz
    from attnviz.images import load_image
    from attnviz.ui.state import sample_images
    at = new_app().run()
    at.button_group(key="compare").set_value(["rollout", "input_x_gradient"]).run()
    _ok(at)
    label = next(t.label for t in attnviz.capture(attnviz.load_model(str(saved_models["vit"])),
                                                    load_image(sample_images()[at.session_state["sample"]])).targets
                 if t.index == at.selectbox(key="target").value)
    assert [im.captions[0] for im in _images(at)] == [f"relevance for {label}", "rollout",
                                                      f"input x gradient for {label}"]   # titles name the target
    ranges = _legend_ranges(at)
    assert len(ranges) == 3
    adapter = attnviz.load_model(str(saved_models["vit"]))
    cap = attnviz.capture(adapter, load_image(sample_images()[at.session_state["sample"]]))
    target = at.selectbox(key="target").value
    for (lo, hi), method in zip(ranges, ["relevance", "rollout", "input_x_gradient"]):
        m = attnviz.explain(adapter, cap, method, target=target).map
        # the default scales (issue 20): lowest value to the 99th percentile; signed: ±99th percentile of |m|
        p = np.percentile(np.abs(m), 99)
        want = (-p, p) if method == "input_x_gradient" else (m.min(), np.percentile(m, 99))
        assert lo == pytest.approx(want[0], rel=5e-3, abs=1e-9) and hi == pytest.approx(want[1], rel=5e-3), method  # .3g
    assert "own colour scale" in _captions(at) and "class-agnostic" in _captions(at)


def test_compare_shows_every_choice_and_stops_at_three(new_app):
    """The comparison is a row of pills that wraps (every choice visible, issue 16); a fourth is undone
    with a sentence."""
    at = new_app().run()
    group = at.button_group(key="compare")
    assert group.proto.style == group.proto.PILLS and group.proto.click_mode == group.proto.MULTI_SELECT
    assert [o.content for o in group.proto.options][:4] == ["attention", "rollout", "grad rollout", "attn grad"]
    at.button_group(key="compare").set_value(["attention", "rollout", "grad_rollout"]).run()
    at.button_group(key="compare").set_value(["attention", "rollout", "grad_rollout", "attn_grad"]).run()
    _ok(at)
    assert len(at.button_group(key="compare").value) == 3
    assert any("At most 3 maps beside the main one" in c for c in _captions(at).split(" | "))


def test_slow_method_waits_for_run_then_stays_cached(new_app, forwards):
    at = new_app().run()
    at.selectbox(key="method").set_value("occlusion").run()
    _ok(at)
    assert len(_images(at)) == 0 and at.button(key="run:occlusion")
    before = forwards["n"]
    at.number_input(key="p:occlusion:batch_size").set_value(4).run()
    at.button(key="run:occlusion").click().run()
    _ok(at)
    assert len(_images(at)) == 1 and forwards["n"] > before
    after = forwards["n"]
    at.slider(key="alpha").set_value(0.3).run()                  # cached: shown again without Run, no model run
    _ok(at)
    assert len(_images(at)) == 1 and forwards["n"] == after


def test_url_parameters_restore_settings(new_app):
    at = new_app()
    at.query_params.update({"method": "rollout", "discard_ratio": "0.5", "head_fusion": "max", "target": "2",
                            "cmap": "viridis", "alpha": "0.7", "compare": "attention"})
    at.run()
    _ok(at)
    assert not at.warning
    assert at.selectbox(key="method").value == "rollout"
    assert at.number_input(key="p:rollout:discard_ratio").value == 0.5
    assert at.selectbox(key="p:rollout:head_fusion").value == "max"
    assert at.selectbox(key="target").value == 2
    assert at.selectbox(key="cmap").value == "viridis" and at.slider(key="alpha").value == 0.7
    assert at.button_group(key="compare").value == ["attention"]


def test_bad_url_values_warn_once_each_and_use_defaults(new_app):
    at = new_app()
    at.query_params.update({"method": "nope", "alpha": "7", "n_steps": "abc", "target": "999",
                            "integrated_gradients.n_steps": "abc", "start_layer": "99"})
    at.run()
    assert not at.exception and not at.error
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 5, warnings                          # bare n_steps: not a parameter of relevance
    assert any("start layer '99' does not fit this model" in w for w in warnings), warnings
    assert at.number_input(key="p:relevance:start_layer").value == 0
    assert all(w.endswith(".") and ". " not in w and "\n" not in w for w in warnings), warnings
    assert at.selectbox(key="method").value == "relevance" and at.slider(key="alpha").value == 0.5


def test_heads_page_grid_enlarged_patch_query_and_stats(new_app):
    at = new_app().run()
    at.switch_page(HEADS).run()
    _ok(at)
    assert len(_images(at)) == 1
    assert [c.key.split("#")[0] for c in at.get("plotly_chart")] == ["h_mosaic", "h_stats"]   # thumbnails, stats
    at.session_state["h_hover"] = True
    at.run()
    assert "h_big" in [c.key for c in at.get("plotly_chart")]    # the enlarged head's hover figure
    at.radio(key="h_qkind").set_value("a patch").run()
    at.number_input(key="h_row").set_value(1).run()
    at.number_input(key="h_col").set_value(2).run()
    _ok(at)
    assert "attention from patch (1,2)" in _captions(at)
    at.selectbox(key="h_head").set_value("max").run()
    _ok(at)
    assert "max of 4 heads" in _captions(at)


@pytest.mark.parametrize("kind,token", [("dinov2-registers", "register2"), ("deit-teacher", "distillation")])
def test_prefix_tokens_can_be_queries(new_app, saved_models, monkeypatch, kind, token):
    monkeypatch.setenv("ATTNVIZ_MODEL", str(saved_models[kind]))
    at = new_app().run()
    at.switch_page(HEADS).run()
    assert token in at.radio(key="h_qkind").options
    at.radio(key="h_qkind").set_value(token).run()
    _ok(at)
    assert f"attention from {token}" in _captions(at)


@pytest.mark.parametrize("family", ["clip", "captioning"])
def test_image_text_and_captioning_models(new_app, monkeypatch, family):
    import attnviz.ui.state as state
    if family == "clip":
        from attnviz.adapters.clip import ClipAdapter
        adapter = ClipAdapter.tiny()
    else:
        from attnviz.adapters.captioning import CaptionAdapter
        adapter = CaptionAdapter.tiny()
    monkeypatch.setattr(state, "load_model", lambda spec=None: adapter)
    at = new_app().run()
    _ok(at)
    assert len(_images(at)) == 1
    if family == "clip":
        at.text_area(key="prompts").set_value("a red circle\n\na blue square\n").run()
        _ok(at)
        assert len(at.selectbox(key="target").options) == 2          # one target per non-empty prompt
        at.text_area(key="prompts").set_value("  \n").run()
        assert [e.value for e in at.error] == ["Type at least one prompt, one per line."]
    else:
        assert any(m.value.startswith("**Caption:**") for m in at.markdown)
        assert at.selectbox(key="method").value == "caption_relevance"
        at.selectbox(key="method").set_value("cross_attention").run()
        _ok(at)
        assert len(_images(at)) == 1


def test_unavailable_model_is_one_error_and_the_session_recovers(new_app):
    missing = next((e for e in catalog.load_catalog().entries if e.hub and not catalog.is_available_offline(e)), None)
    if missing is None:
        pytest.skip("every catalog model is cached here")
    at = new_app().run()
    at.selectbox(key="model").set_value(missing.name).run()
    assert not at.exception
    assert len(at.error) == 1 and at.error[0].value.endswith(".")
    at.selectbox(key="model").set_value("$ATTNVIZ_MODEL").run()
    _ok(at)
    assert len(_images(at)) == 1


def test_missing_demo_model_says_how_to_build_it(saved_models, monkeypatch):
    monkeypatch.delenv("ATTNVIZ_MODEL", raising=False)
    monkeypatch.setattr(catalog, "is_cached", lambda hub_id: False)
    monkeypatch.setattr(catalog, "is_available_offline", lambda entry: False)
    _clear()
    try:
        at = AppTest.from_file(APP, default_timeout=60).run()
        assert not at.exception
        assert len(at.error) == 1 and "make demo" in at.error[0].value
    finally:
        _clear()


def test_custom_hub_ids_only_when_allowed_and_validated(new_app, monkeypatch):
    at = new_app().run()
    assert "$custom" not in at.selectbox(key="model").options
    monkeypatch.setenv("ATTNVIZ_ALLOW_CUSTOM_MODELS", "1")
    _clear()
    at = new_app().run()
    at.selectbox(key="model").set_value("$custom").run()
    at.text_input(key="custom_id").set_value("../etc/passwd").run()
    assert not at.exception
    assert len(at.error) == 1 and "not a valid hub id" in at.error[0].value
    at.text_input(key="custom_id").set_value("someone/no-such-model").run()
    assert not at.exception
    assert len(at.error) == 1 and at.error[0].value.endswith(".")


def test_unexpected_failure_is_one_sentence_and_the_page_goes_on(new_app, monkeypatch):
    import attnviz.ui.compute as compute

    def boom(*a, **kw):
        raise RuntimeError("internal detail that users should not see")
    monkeypatch.setattr(compute, "explain_capture", boom)
    at = new_app().run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "relevance failed unexpectedly (RuntimeError); try other settings, or reload the page."]
    assert at.selectbox(key="method") and len(at.get("plotly_chart")) >= 1    # the rest of the page is there


def test_config_toml_settings():
    import tomllib
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    from attnviz.images import MAX_BYTES
    from attnviz.ui.widgets import UPLOAD_TRANSPORT_MB
    # files over the image cap still reach the app, which says what is wrong (issue 16)
    assert cfg["server"]["maxUploadSize"] == UPLOAD_TRANSPORT_MB > MAX_BYTES / 2 ** 20
    assert cfg["server"]["enableXsrfProtection"] is True
    assert cfg["server"]["fileWatcherType"] == "none"
    assert cfg["client"]["showErrorDetails"] is False
    assert cfg["browser"]["gatherUsageStats"] is False
    # a full gc.collect() after every run cost ~0.3 s of server CPU per click with torch loaded (issue 13)
    assert cfg["runner"]["postScriptGC"] is False


def test_every_method_has_a_teaching_note_and_export_record_is_complete(saved_models, photo):
    import attnviz
    from attnviz.methods import list_methods
    from attnviz.ui import notes
    from attnviz.ui.compute import Engine, export_record
    for m in list_methods():
        assert m.name in notes.METHODS, m.name
    assert "class-agnostic" in notes.METHODS["rollout"] and "baseline" in notes.METHODS["integrated_gradients"]
    adapter = attnviz.load_model(str(saved_models["vit"]))
    eng = Engine()
    entry = eng.capture(adapter, "d", photo)
    exp = eng.explain(adapter, entry, "d", "integrated_gradients", 1, {"n_steps": 4})
    rec = json.loads(json.dumps(export_record(adapter=adapter, capture=entry.capture, exp=exp, settings={"a": 1},
                                              timings={"capture": 0.1}, image_name="x.png", digest="d")))
    assert rec["target"]["index"] == 1 and rec["method"] == "integrated_gradients"
    assert len(rec["top_k"]) == 5 and "convergence_delta" in rec["meta"]
    assert set(rec["versions"]) >= {"torch", "transformers", "captum", "streamlit", "attnviz"}
    assert rec["map"]["shape"] == list(exp.map.shape) and np.isfinite(rec["map"]["max"])


def test_ui_is_the_only_streamlit_importer():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "attnviz").rglob("*.py")
                 if "ui" not in p.relative_to(ROOT / "attnviz").parts[:1]
                 and ("import streamlit" in p.read_text() or "from streamlit" in p.read_text())]
    assert offenders == []


def test_markdown_literal_shows_typed_text_as_typed():
    """A typed caption through a CommonMark renderer: no bold, link, code or HTML, the same characters."""
    import html as html_lib

    from markdown_it import MarkdownIt

    from attnviz.ui.widgets import markdown_literal
    typed = "a **red** [circle](javascript:x) `code` $x^2$ <b>tag</b> # _it_ 1. ~x~"
    out = MarkdownIt().renderInline(markdown_literal(typed))
    assert not any(tag in out for tag in ("<strong>", "<em>", "<a ", "<code>", "<b>"))
    assert html_lib.unescape(out) == typed


def test_sample_images_are_read_once_per_process_and_offer_every_scene(monkeypatch):
    """The samples are cached, not re-read on every rerun of every page; every scene in assets/ is
    offered (issue 16: three of six were), the README's example scene among them."""
    from attnviz.ui import state
    calls = {"n": 0}
    real = Path.read_bytes

    def counted(self):
        calls["n"] += 1
        return real(self)
    monkeypatch.setattr(Path, "read_bytes", counted)
    state.sample_images.clear()
    first = state.sample_images()
    read = calls["n"]
    scenes = sorted(p.stem.replace("_", " ").replace("-", " ") for p in (ROOT / "assets").glob("scene_*.png"))
    assert len(scenes) == 6 and sorted(n for n in first if state.is_scene_sample(n)) == scenes
    assert "scene red triangle yellow cross" in first          # the README's example
    assert read == len(first) and state.sample_images() == first and calls["n"] == read
    state.sample_images.clear()


def test_explore_offers_only_the_methods_the_loaded_cnn_provides(cnn_dirs, monkeypatch):
    """A ResNet has no gates: Explore must not offer channel / spatial attention it would then refuse; the gated
    demo-style CNN offers both (the list comes from what the loaded model provides, not from its family)."""
    # written out here: every pixel-gradient and perturbation method reads only pixels and scores (the noise
    # tunnel wraps them), every CAM reads a stage's feature map, spatial attention needs a spatial gate (the
    # gated CNN's CBAM); channel attention gives a map over channels, not the image, so Explore does not draw it
    cams = {"grad_cam_pp", "hires_cam", "layer_cam", "xgrad_cam", "score_cam", "ablation_cam", "eigen_cam"}
    any_model = {"saliency", "input_x_gradient", "integrated_gradients", "gradient_shap", "smoothgrad",
                 "occlusion", "feature_ablation", "lime", "kernel_shap", "noise_tunnel"} | cams
    for kind, own in (("resnet", {"grad_cam"}), ("gated", {"grad_cam", "spatial_attention"})):
        monkeypatch.setenv("ATTNVIZ_MODEL", str(cnn_dirs[kind]))
        _clear()
        at = AppTest.from_file(APP, default_timeout=120).run()
        _ok(at)
        offered = {o.split("  (")[0].replace(" ", "_") for o in at.selectbox(key="method").options}  # shown labels
        assert offered == any_model | own
    _clear()
