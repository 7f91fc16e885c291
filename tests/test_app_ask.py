"""The Ask page under streamlit.testing (AppTest), on a tiny random LLaVA saved and reloaded."""
import pytest
from streamlit.testing.v1 import AppTest

from attnviz.adapters.vlm import VlmAdapter
from tests.test_app import APP, _clear, _ok

ASK = "attnviz/ui/pages/ask.py"


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    a = VlmAdapter.tiny("llava", seed=4)
    folder = tmp_path_factory.mktemp("tiny-llava-app")
    a.model.save_pretrained(folder, safe_serialization=True)
    a.processor.save_pretrained(folder)
    return folder


def _serve(monkeypatch, folder, max_new_tokens: int):
    """The app on ``folder``'s model, answers cut at ``max_new_tokens``; returns a maker of Ask-page sessions."""
    import attnviz.ui.state as state
    real = state.load_model

    def loader(spec=None):
        adapter = real(spec)
        adapter.max_new_tokens = max_new_tokens
        return adapter
    monkeypatch.setattr(state, "load_model", loader)
    monkeypatch.setenv("ATTNVIZ_MODEL", str(folder))
    monkeypatch.delenv("ATTNVIZ_ALLOW_CUSTOM_MODELS", raising=False)
    _clear()

    def make():
        at = AppTest.from_file(APP, default_timeout=120)
        at.run()
        at.switch_page(ASK).run()
        return at
    return make


@pytest.fixture
def ask_app(llava_dir, monkeypatch):
    yield _serve(monkeypatch, llava_dir, 4)
    _clear()


def test_ask_page_answers_shows_word_pills_the_map_and_the_question_words(ask_app, llava_dir):
    at = ask_app()
    _ok(at)
    assert at.text_input(key="ask_question").value == "What is in the picture?"
    assert any(m.value.startswith("**Answer** (the model's answer):") for m in at.markdown)
    words = at.button_group(key="ask_word")
    n = len(words.options)
    # one pill per token of the model's own greedy answer to this question on this image, up to its end token
    import attnviz
    from attnviz.images import load_image
    from attnviz.ui.state import sample_images
    model = attnviz.load_model(str(llava_dir))
    inputs = model.prepare(load_image(sample_images()[at.session_state["sample"]]),
                           question="What is in the picture?", max_new_tokens=4)
    answer, _ = model.generate(inputs)
    assert n == len(answer)
    caps = [c for im in at.get("image") for c in im.captions]
    assert caps and caps[0].startswith("answer relevance for")
    assert any(m.value.startswith("<div><span title=") for m in at.markdown)       # the question's words
    # typing an answer re-scores it: the pills become its tokens
    at.text_input(key="ask_answer").set_value("red cat").run()
    _ok(at)
    assert any(m.value.startswith("**Answer** (your answer, scored by the model): red cat") for m in at.markdown)
    at.selectbox(key="ask_method").set_value("image_attention").run()
    _ok(at)
    caps = [c for im in at.get("image") for c in im.captions]
    assert caps[0].startswith("image attention for “red”")
    at.toggle(key="ask_side").set_value(True).run()
    _ok(at)
    caps = [c for im in at.get("image") for c in im.captions]
    assert sum(c.endswith("“red”") for c in caps) >= 3
    assert {b.label for b in at.get("download_button")} >= {"Raw map .npy", "Record .json", "Overlay PNG"}


def test_ask_page_on_a_model_that_does_not_answer_says_so(saved_models, monkeypatch):
    monkeypatch.setenv("ATTNVIZ_MODEL", str(saved_models["vit"]))
    _clear()
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page(ASK).run()
    _ok(at)
    assert any("does not answer questions" in i.value for i in at.info)
    _clear()


def test_ask_page_on_a_tiled_model_shows_the_global_view_beside_the_tiles(monkeypatch, tmp_path):
    a = VlmAdapter.tiny("idefics3", seed=4)
    a.model.save_pretrained(tmp_path, safe_serialization=True)
    a.processor.save_pretrained(tmp_path)
    at = _serve(monkeypatch, tmp_path, 3)()
    _ok(at)
    caps = [c for im in at.get("image") for c in im.captions]
    assert caps[0].startswith("answer relevance for")
    assert any(c.startswith("global view") for c in caps)
    _clear()


def test_heads_page_on_a_vlm_says_where_its_heads_are_in_one_sentence(ask_app):
    """The layers × heads mosaic reads one attention over the image's patches; a VLM's decoder heads read the
    whole sequence: one sentence pointing to the Ask page, no failed box (it raised inside the thumbnails)."""
    at = ask_app()
    at.switch_page("attnviz/ui/pages/heads.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    [info] = [i.value for i in at.info]
    assert "vision-language model" in info and "Ask page" in info
    assert not at.get("plotly_chart")
