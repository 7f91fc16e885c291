"""The Text prompts page under streamlit.testing (AppTest), with tiny random CLIP / SigLIP models."""
import pytest
from streamlit.testing.v1 import AppTest

from tests.test_app import APP, _captions, _clear, _images, _ok, _trace_values

PROMPTS_PAGE = "attnviz/ui/pages/prompts.py"
EMPTY = "Type at least one prompt, one per line."



@pytest.fixture
def prompts_app(clip_dirs, monkeypatch):
    """A factory: an AppTest on the given tiny model (ATTNVIZ_MODEL), already on the Text prompts page."""
    monkeypatch.delenv("ATTNVIZ_ALLOW_CUSTOM_MODELS", raising=False)

    def make(model_dir=None):
        monkeypatch.setenv("ATTNVIZ_MODEL", str(model_dir or clip_dirs["clip"]))
        _clear()
        at = AppTest.from_file(APP, default_timeout=120).run()
        return at.switch_page(PROMPTS_PAGE).run()
    yield make
    _clear()


def _word_blocks(at):
    return [m.value for m in at.markdown if 'class="attnviz-words"' in m.value]


def test_page_shows_probabilities_a_map_per_prompt_and_shaded_words(prompts_app):
    at = prompts_app()
    _ok(at)
    prompts = [p for p in at.text_area(key="prompts").value.splitlines() if p.strip()]
    assert len(prompts) >= 2
    assert "prompt_probs" in [c.key for c in at.get("plotly_chart")]
    assert len(_images(at)) == len(prompts)                     # one overlay per prompt
    assert len(_word_blocks(at)) == len(prompts)
    assert "one colour scale" in _captions(at)
    assert "softmax" in _captions(at)
    image_captions = [c for im in _images(at) for c in im.captions]
    assert [c.split(" · ")[0] for c in image_captions] == prompts


def test_prompts_run_the_model_once_and_display_changes_never(prompts_app, forwards):
    at = prompts_app()
    _ok(at)
    first = forwards["n"]
    assert first >= 1
    at.slider(key="alpha").set_value(0.8).run()
    at.run()                          # a display change reran only the map panel: a full run finds the sidebar
    at.selectbox(key="cmap").set_value("viridis").run()
    at.run()
    at.session_state["pr_view_tab"] = "Hover for values"
    at.run()
    _ok(at)
    assert sum(k.startswith("pr_fig:") for k in (c.key for c in at.get("plotly_chart"))) == len(_word_blocks(at))
    assert forwards["n"] == first
    at.text_area(key="prompts").set_value("a red circle\n\na blue square\n").run()
    _ok(at)
    assert forwards["n"] == first + 1                            # new prompts: one more model run
    assert len(_word_blocks(at)) == 2


def test_faithfulness_of_a_chosen_prompt(prompts_app):
    """The panel checks the chosen prompt's map: its deletion curve starts at that prompt's probability."""
    from attnviz.ui import state
    at = prompts_app()
    _ok(at)
    labels = at.selectbox(key="pr_faith_prompt").options
    assert len(labels) >= 2
    at.selectbox(key="pr_faith_prompt").set_value(1).run()
    at.button(key="faith:di:relevance").click().run()
    _ok(at)
    assert "faith:di:fig:relevance" in [c.key for c in at.get("plotly_chart")]
    assert "Area under the curve (AUC): deletion" in " ".join(c.value for c in at.caption)
    fig = next(c for c in at.get("plotly_chart") if c.key == "faith:di:fig:relevance")
    first_y = float(_trace_values(fig, 0, "y")[0])                        # deletion, map order, nothing deleted
    entries = [entry for _, entry in state.engine().captures._data.values()]
    assert len(entries) == 1                                              # the page's one capture
    cap = entries[0].capture
    probs = cap.scores.softmax(-1)                                        # CLIP: softmax over the prompts
    assert first_y == pytest.approx(float(probs[1]), abs=1e-5)
    assert abs(float(probs[1]) - float(probs[0])) > 1e-4                  # so prompt 0's curve would differ


def test_a_link_carries_the_prompts_and_the_map_method(clip_dirs, monkeypatch):
    """Prompts and map method go into the address bar, and a link with them opens on them."""
    monkeypatch.setenv("ATTNVIZ_MODEL", str(clip_dirs["clip"]))
    monkeypatch.delenv("ATTNVIZ_ALLOW_CUSTOM_MODELS", raising=False)
    _clear()
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"prompts": "a red circle\na naïve cat", "map_method": "grad_cam"})
    at.run()
    at = at.switch_page(PROMPTS_PAGE).run()
    _ok(at)
    assert at.text_area(key="prompts").value == "a red circle\na naïve cat"
    assert at.selectbox(key="pr_method").value == "grad_cam"
    assert len(_word_blocks(at)) == 2
    assert at.query_params["prompts"] == "a red circle\na naïve cat"          # written back by the page
    at.selectbox(key="pr_method").set_value("relevance").run()
    assert at.query_params["map_method"] == "relevance"
    bad = AppTest.from_file(APP, default_timeout=120)
    _clear()
    bad.query_params.update({"map_method": "telepathy"})
    bad.run()
    bad = bad.switch_page(PROMPTS_PAGE).run()
    assert any("map method 'telepathy'" in w.value for w in bad.warning)
    assert bad.selectbox(key="pr_method").value == "relevance"
    _clear()


def test_map_method_and_its_settings(prompts_app):
    at = prompts_app()
    names = at.selectbox(key="pr_method").options
    assert "relevance" in names and "occlusion" not in names    # fast class-specific methods only
    assert at.session_state["p:relevance:start_layer"] == 1      # CLIP's default, the last layer (-1), as 0-based
    at.number_input(key="p:relevance:start_layer").set_value(0).run()
    _ok(at)
    at.selectbox(key="pr_method").set_value("attn_grad").run()
    _ok(at)
    assert "attn grad" in _captions(at)


def test_empty_prompts_are_one_sentence(prompts_app):
    at = prompts_app()
    at.text_area(key="prompts").set_value(" \n  \n").run()
    assert not at.exception
    assert [e.value for e in at.error] == [EMPTY]


def test_prompt_text_is_escaped(prompts_app):
    at = prompts_app()
    at.text_area(key="prompts").set_value('<img src=x onerror="alert(1)"> & a red circle\nnaïve ✓').run()
    _ok(at)
    blocks = _word_blocks(at)
    assert len(blocks) == 2
    assert "<img" not in blocks[0] and "onerror=\"" not in blocks[0]
    assert "&lt;" in blocks[0] and "&quot;" in blocks[0] and "&amp;" in blocks[0]


def test_siglip_says_sigmoid(prompts_app, clip_dirs):
    at = prompts_app(clip_dirs["siglip"])
    _ok(at)
    assert "sigmoid" in _captions(at)
    assert len(_images(at)) == len(_word_blocks(at)) >= 2


def test_not_an_image_text_model_offers_the_demo_clip(prompts_app, saved_models, clip_dirs, monkeypatch):
    import attnviz.ui.state as state
    from attnviz import catalog
    real_loader, real_offline = state.load_model, catalog.is_available_offline
    # The demo CLIP stands in as the tiny one here, so the test does not need the shipped model.
    monkeypatch.setattr(state, "load_model",
                        lambda spec=None: real_loader(str(clip_dirs["clip"]) if spec == "demo-clip-shapes" else spec))
    monkeypatch.setattr(catalog, "is_available_offline",
                        lambda e: True if e.name == "demo-clip-shapes" else real_offline(e))
    at = prompts_app(saved_models["vit"])
    _ok(at)
    assert any("not an image–text model" in i.value for i in at.info)
    assert len(_images(at)) == 0
    first = at.session_state["sample"]
    assert not first.startswith(("scene", "shapes:"))             # a photo sample is shown first
    at.button(key="use_demo_clip").click().run()
    _ok(at)
    assert at.selectbox(key="model").value == "demo-clip-shapes"
    assert len(_images(at)) >= 2 and _word_blocks(at)
    assert at.session_state["sample"].startswith(("scene", "shapes:"))   # the demo knows shapes: a scene now


# --- the pure helpers ---------------------------------------------------------------

def test_word_spans_keep_the_prompts_spacing_and_case():
    from attnviz.ui.pages.prompts import word_spans
    spans = word_spans("A  Red circle!", [("a", 0.1), ("red", 0.5), ("circle", 0.9), ("!", 0.0)])
    assert "".join(t for t, _ in spans) == "A  Red circle!"
    assert [(t, v) for t, v in spans if v is not None] == [("A", 0.1), ("Red", 0.5), ("circle", 0.9), ("!", 0.0)]
    # a word the prompt does not contain as typed is still shown
    spans = word_spans("x", [("y", 1.0)])
    assert [t for t, v in spans if v is not None] == ["y"]


def test_words_html_escapes_and_scales_alpha():
    from attnviz.ui.pages.prompts import words_html
    out = words_html("<b>a</b> & c", [("<", 0.0), ("b", 1.0), (">", 0.0), ("a", 0.2), ("&", 0.0), ("c", 0.2)])
    assert "<b>" not in out and "</b>" not in out and "&lt;" in out and "&gt;" in out and "&amp;" in out
    assert "rgba(228,87,46,0.85)" in out and "rgba(228,87,46,0.17)" in out and "relevance 0.2" in out


def test_a_display_change_reruns_only_the_maps(prompts_app):
    """Issue 13 on this page: opacity / colormap rerun the map panel (the zero-shot chart and the method
    picker are not drawn again) and the overlays follow the new colormap."""
    at = prompts_app()
    _ok(at)
    n = len(_images(at))
    before = [im.proto.imgs[0].url for im in _images(at)]
    at.selectbox(key="cmap").set_value("viridis").run()
    _ok(at)
    assert "prompt_probs" not in [c.key for c in at.get("plotly_chart")]      # only the panel reran
    assert len(_images(at)) == n
    assert [im.proto.imgs[0].url for im in _images(at)] != before              # drawn in the new colours
    at.run()                                                                   # a full run draws it all again
    _ok(at)
    assert "prompt_probs" in [c.key for c in at.get("plotly_chart")] and len(_images(at)) == n
