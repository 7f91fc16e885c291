"""The Explore page's first map in a burst (issue 23): while the relevance backward waits in the model's
line, the page shows the forward's own attention rollout first, labelled, and replaces it with the
relevance map; a lone student (the backward runs at once) gets the relevance map directly."""
import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import attnviz
from tests.test_app import APP, _ok


@pytest.fixture
def drawn(saved_models, monkeypatch):
    """(AppTest factory, the maps the page drew in order as (method, map)) on the tiny ViT."""
    from attnviz.ui import panels
    monkeypatch.setenv("ATTNVIZ_MODEL", str(saved_models["vit"]))
    st.cache_resource.clear()
    st.cache_data.clear()
    seen = []
    real = panels.show_map

    def spy(img, m, scale, display, box, *, method, caption, **kw):
        seen.append((method, np.array(m), caption))
        return real(img, m, scale, display, box, method=method, caption=caption, **kw)
    monkeypatch.setattr(panels, "show_map", spy)
    yield (lambda: AppTest.from_file(APP, default_timeout=120)), seen
    st.cache_resource.clear()
    st.cache_data.clear()


def _page_capture():
    """The capture the page's engine holds (one image was shown)."""
    from attnviz.ui import state
    entries = [v for _, v in state.engine().captures._data.values()]
    assert len(entries) == 1
    return entries[0].capture


def test_a_waiting_backward_shows_the_forwards_rollout_first_then_relevance(drawn, saved_models, monkeypatch):
    """Every forward batch finds new images waiting and no graph may be held (ATTNVIZ_GRAPH_HOLD=0): the page
    draws the forward's rollout first (labelled as shown first), then the relevance map (a new forward and
    backward through the line), which replaces it. Both equal the maps of a one-shot capture of the same
    input on a model loaded on its own."""
    from attnviz.serve import local
    from attnviz.ui import state
    monkeypatch.setattr(state, "GRAPH_HOLD", 0)
    real_after = local.ModelServer._after
    monkeypatch.setattr(local.ModelServer, "_after", lambda self, values, idle: real_after(self, values, False))
    new_app, seen = drawn
    at = new_app().run()
    _ok(at)
    assert [m for m, _, _ in seen] == ["rollout", "relevance"]
    assert "shown first" in seen[0][2]
    captions = [c for im in at.get("image") for c in im.captions]
    assert len(captions) == 1 and captions[0].startswith("relevance")          # the first map was replaced
    cap = _page_capture()
    alone = attnviz.load_model(str(saved_models["vit"]))
    one_shot = alone.capture(cap.inputs, grads=True)
    top = alone.resolve_target(one_shot, None).index
    np.testing.assert_allclose(seen[0][1], attnviz.explain(alone, one_shot, "rollout").map, atol=1e-5)
    np.testing.assert_allclose(seen[1][1], attnviz.explain(alone, one_shot, "relevance", top).map, atol=1e-5)


def test_a_lone_student_gets_the_relevance_map_directly(drawn):
    new_app, seen = drawn
    at = new_app().run()
    _ok(at)
    assert [m for m, _, _ in seen] == ["relevance"]
