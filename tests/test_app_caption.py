"""The Caption page under streamlit.testing (AppTest), on a tiny random ViT-GPT2 captioner saved and reloaded."""

import pytest
from streamlit.testing.v1 import AppTest

from attnviz import catalog
from tests.test_app import APP, _clear, _ok, _trace_values

CAPTION = "attnviz/ui/pages/caption.py"



@pytest.fixture
def runs(monkeypatch):
    """Count generations and model forwards of the adapter the app loads (through the real loader)."""
    import attnviz.ui.state as state
    count = {"generate": 0, "forward": 0}
    real = state.load_model

    def loader(spec=None):
        adapter = real(spec)
        adapter.max_new_tokens = 6
        gen, run = adapter.generate, adapter._run

        def counted_gen(*a, **kw):
            count["generate"] += 1
            return gen(*a, **kw)

        def counted_run(*a, **kw):
            count["forward"] += 1
            return run(*a, **kw)
        adapter.generate, adapter._run = counted_gen, counted_run
        model_generate = adapter.model.generate

        def recorded(*a, **kw):                  # the model's own generated sequence, kept for the tests
            out = model_generate(*a, **kw)
            count["sequence"], count["eos"] = out[0].tolist(), adapter.model.generation_config.eos_token_id
            return out
        adapter.model.generate = recorded
        return adapter
    monkeypatch.setattr(state, "load_model", loader)
    return count


@pytest.fixture
def caption_app(caption_dirs, monkeypatch, runs):
    """AppTest on the Caption page with the tiny captioner as ATTNVIZ_MODEL."""
    monkeypatch.setenv("ATTNVIZ_MODEL", str(caption_dirs["vit-gpt2"]))
    monkeypatch.delenv("ATTNVIZ_ALLOW_CUSTOM_MODELS", raising=False)
    _clear()

    def make():
        at = AppTest.from_file(APP, default_timeout=120)
        at.run()
        at.switch_page(CAPTION).run()
        return at
    yield make
    _clear()


def _image_captions(at):
    return [c for im in at.get("image") for c in im.captions]


def _n_words(at):
    return len(at.button_group(key="c_word").options)


def test_caption_words_map_and_strip(caption_app, runs):
    at = caption_app()
    _ok(at)
    assert any(m.value.startswith("**Caption** (written by the model):") for m in at.markdown)
    n = _n_words(at)
    # one button per token the model generated (transformers' generate, recorded by the fixture): after
    # its start token, up to its end-of-text token or the 6-token cap
    seq, eos = runs["sequence"], runs["eos"]
    body = seq[1:seq.index(eos, 1)] if eos in seq[1:] else seq[1:]
    assert n == len(body) > 0
    caps = _image_captions(at)
    assert len(caps) == 1 + n                                   # the chosen word's map + one per word
    assert caps[0].startswith("cross attention for")
    assert sum("◀" in c for c in caps) == 1                     # the chosen word is marked in the strip
    assert "c_probs" in [c.key for c in at.get("plotly_chart")]  # token probabilities
    assert any(c.value.startswith("Strip: cross-attention, decoder layer 1, mean of heads") for c in at.caption)
    assert at.expander                                           # teaching notes are collapsible


def test_faithfulness_of_a_words_map(caption_app):
    """Deletion / insertion for the chosen word: its curve starts at that token's logit (captioners)."""
    from attnviz.ui import state
    at = caption_app()
    _ok(at)
    word = at.button_group(key="c_word").value
    assert any("faithful?" in e.label for e in at.expander)
    at.button(key="faith:di:cross_attention").click().run()
    _ok(at)
    assert "faith:di:fig:cross_attention" in [c.key for c in at.get("plotly_chart")]
    text = " ".join(c.value for c in at.caption)
    assert "Area under the curve (AUC): deletion" in text and "the target's score" in text
    assert "raw score (its logit" in text        # a token's logit, not a probability, and the page says why
    entries = [entry for _, entry in state.engine().captures._data.values()]
    assert len(entries) == 1
    fig = next(c for c in at.get("plotly_chart") if c.key == "faith:di:fig:cross_attention")
    assert float(_trace_values(fig, 0, "y")[0]) == pytest.approx(float(entries[0].capture.scores[word]), abs=1e-4)


def test_clicking_the_chosen_word_again_keeps_it(caption_app):
    """st.pills unselects a pill clicked twice; the page keeps that word instead of jumping to another."""
    at = caption_app()
    n = _n_words(at)
    assert n >= 3
    at.button_group(key="c_word").set_value(n - 1).run()
    label = at.button_group(key="c_word").options[n - 1]
    at.button_group(key="c_word").set_value(None).run()                 # the second click on the same pill
    _ok(at)
    assert at.button_group(key="c_word").value == n - 1
    assert _image_captions(at)[0] == f"cross attention for “{label}”"


def test_word_layer_and_head_switches_never_run_the_model(caption_app, runs):
    at = caption_app()
    _ok(at)
    before = dict(runs)
    assert before["generate"] == 1 and before["forward"] == 1    # one generation, one teacher-forced pass
    n = _n_words(at)
    at.button_group(key="c_word").set_value(n - 1).run()
    _ok(at)
    label = at.button_group(key="c_word").options[n - 1]
    assert _image_captions(at)[0] == f"cross attention for “{label}”"
    assert _image_captions(at)[n].endswith("◀")
    at.selectbox(key="c_layer").set_value(0).run()
    at.selectbox(key="c_head").set_value(2).run()
    _ok(at)
    assert any(c.value.startswith("Strip: cross-attention, decoder layer 0, head 2") for c in at.caption)
    at.selectbox(key="c_head").set_value("max").run()
    at.session_state["c_view_tab"] = "Hover for values"
    at.run()
    _ok(at)
    assert "c_fig" in [c.key for c in at.get("plotly_chart")]
    assert runs == before


def test_relevance_and_a_captum_method_on_the_words_score(caption_app, runs):
    at = caption_app()
    at.selectbox(key="c_method").set_value("caption_relevance").run()
    _ok(at)
    n = _n_words(at)
    caps = _image_captions(at)
    assert caps[0].startswith("caption relevance for") and len(caps) == 1 + n
    assert any(c.value.startswith("Strip: caption relevance") for c in at.caption)
    at.selectbox(key="c_method").set_value("saliency").run()
    _ok(at)
    assert _image_captions(at)[0].startswith("saliency for")
    assert any("gradient methods run once per word" in c.value for c in at.caption)   # strip falls back
    at.selectbox(key="c_method").set_value("integrated_gradients").run()
    _ok(at)
    assert at.button(key="c_run:integrated_gradients")          # slow: waits for Run
    at.number_input(key="p:integrated_gradients:n_steps").set_value(4).run()
    at.button(key="c_run:integrated_gradients").click().run()
    _ok(at)
    assert _image_captions(at)[0].startswith("integrated gradients for")
    assert runs["generate"] == 1                                 # the caption was generated once


def test_typed_caption_is_scored_word_by_word(caption_app, runs):
    at = caption_app()
    at.text_input(key="caption").set_value("a red cat").run()
    _ok(at)
    assert any(m.value.startswith("**Caption** (typed by you, scored by the model): a red cat") for m in at.markdown)
    assert at.button_group(key="c_word").options == ["a", "red", "cat"]
    assert at.button_group(key="c_word").value == 1               # the first content word
    assert runs["generate"] == 1 and runs["forward"] == 2         # typed: scored, not generated
    at.text_input(key="caption").set_value("  ").run()           # empty again: back to the generated caption
    _ok(at)
    assert any(m.value.startswith("**Caption** (written by the model):") for m in at.markdown)
    assert runs["generate"] == 1                                  # that capture was cached


def test_url_restores_word_method_layer_and_head(caption_dirs, monkeypatch, runs):
    monkeypatch.setenv("ATTNVIZ_MODEL", str(caption_dirs["vit-gpt2"]))
    _clear()
    try:
        at = AppTest.from_file(APP, default_timeout=120)
        at.query_params.update({"word": "1", "dec_layer": "0", "dec_head": "3", "caption_method": "cross_attention",
                                "method": "rollout", "layer": "5"})
        at.switch_page(CAPTION).run()
        _ok(at)
        assert not at.warning
        assert at.button_group(key="c_word").value == 1
        assert at.selectbox(key="c_layer").value == 0 and at.selectbox(key="c_head").value == 3
        at = AppTest.from_file(APP, default_timeout=120)
        at.query_params.update({"word": "99", "dec_layer": "7", "dec_head": "x", "caption_method": "nope"})
        at.switch_page(CAPTION).run()
        assert not at.exception and not at.error
        assert len(at.warning) == 4 and all(w.value.endswith(".") for w in at.warning)
    finally:
        _clear()


def test_a_model_that_is_not_a_captioner_is_one_sentence(saved_models, monkeypatch):
    monkeypatch.setenv("ATTNVIZ_MODEL", str(saved_models["vit"]))
    _clear()
    try:
        at = AppTest.from_file(APP, default_timeout=120)
        at.switch_page(CAPTION).run()
        _ok(at)
        assert len(at.info) == 1 and "is not a captioning model" in at.info[0].value
        assert not at.get("image")
        entry = catalog.load_catalog().get("demo-captioner-shapes")
        if entry is None or not catalog.is_available_offline(entry):
            pytest.skip("the demo captioner is not built here")
        at.button(key="c_use_demo").click().run()
        _ok(at)
        assert at.selectbox(key="model").value == "demo-captioner-shapes"
        assert any(m.value.startswith("**Caption** (written by the model):") for m in at.markdown)
    finally:
        _clear()


def test_a_display_change_reruns_only_the_word_map_and_the_strip(caption_app, runs):
    """Issue 13 on this page: a colormap change redraws the chosen word's map and every word's strip map in
    the new colours (both map panels) without the page: no token-probability chart, no model run."""
    at = caption_app()
    _ok(at)
    n = _n_words(at)
    forwards = dict(runs)
    before = [im.proto.imgs[0].url for im in at.get("image")]
    assert len(before) == 1 + n
    at.selectbox(key="cmap").set_value("viridis").run()
    _ok(at)
    assert "c_probs" not in [c.key for c in at.get("plotly_chart")]           # the page did not rerun
    after = [im.proto.imgs[0].url for im in at.get("image")]
    assert len(after) == 1 + n                                               # the word's map and the strip
    assert all(a != b for a, b in zip(after, before))                        # all drawn in the new colours
    assert dict(runs) == forwards
    at.run()
    _ok(at)
    assert "c_probs" in [c.key for c in at.get("plotly_chart")] and len(at.get("image")) == 1 + n
