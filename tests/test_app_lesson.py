"""The "How attention works" page under AppTest, its numbers checked against the model's own tensors.

References are taken here from the transformers model itself: its returned attention, the outputs of the
layer's q / k / v projections (forward hooks written here) and the input of its output projection, in
float64; nothing in the reference goes through ``attnviz.anatomy`` or the page's helpers.
"""
import base64
import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch

import attnviz
from attnviz.images import load_image

from .conftest import save_tiny
from .test_anatomy import _beit_with_a_position_bias
from .test_app import _ok, new_app  # noqa: F401  (fixture)

LESSON = "attnviz/ui/pages/lesson.py"


def _chart(at, key: str):
    charts = [c for c in at.get("plotly_chart") if c.key == key]
    assert charts, f"no chart {key!r} among {[c.key for c in at.get('plotly_chart')]}"
    return charts[0]


def _array(chart, trace: int, axis: str) -> np.ndarray:
    """A trace's values from the chart's JSON (a plain list, or plotly's typed array with its shape)."""
    v = json.loads(chart.proto.spec)["data"][trace][axis]
    if isinstance(v, dict):
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
        return a.reshape([int(s) for s in str(v["shape"]).split(",")]) if "shape" in v else a
    return np.asarray(v, dtype=float)


def _open(new_app, *, guided: bool = False, layer: int = 1, head: int = 2, row: int = 1, col: int = 2,
          check: bool = True):
    at = new_app().run()
    for key, value in (("l_guided", guided), ("l_layer", layer), ("l_head", head), ("l_row", row), ("l_col", col)):
        at.session_state[key] = value                   # the page's widgets start from these (one run, not five)
    at.switch_page(LESSON).run()
    assert (at.slider(key="l_layer").value, at.selectbox(key="l_head").value) == (layer, head)
    assert (at.number_input(key="l_row").value, at.number_input(key="l_col").value) == (row, col)
    if check:
        _ok(at)
    return at


def _image_bytes(at) -> bytes:
    from attnviz.ui.state import sample_images
    return sample_images()[at.session_state["sample"]]


def _reference(model_dir, data: bytes, layer: int) -> dict:
    """The model's own attention, q·k/√d from its projections, and its output projection's input (float64)."""
    adapter = attnviz.load_model(str(model_dir))
    inputs = adapter.prepare(load_image(data))
    attn_module = next(m for m in adapter.token_block(layer).modules() if hasattr(m, "q_proj"))
    got = {}
    hooks = [getattr(attn_module, f"{n}_proj").register_forward_hook(
                 lambda mod, args, out, n=n: got.__setitem__(n, out[0].detach())) for n in "qkv"]
    hooks.append(attn_module.o_proj.register_forward_pre_hook(lambda mod, args: got.__setitem__("o", args[0][0])))
    try:
        with torch.no_grad():
            out = adapter.model(pixel_values=inputs["pixel_values"], output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    attn = out.attentions[layer][0].double()                                        # [H, T, T]
    n_heads, t = attn.shape[0], attn.shape[1]
    q, k, v, o = (got[n].double().view(t, n_heads, -1).transpose(0, 1) for n in ("q", "k", "v", "o"))   # [H, T, d]
    return {"attention": attn, "scores": q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), "v": v, "heads_out": o}


def test_every_step_shows_the_models_own_numbers(new_app, saved_models):
    at = _open(new_app)
    ref = _reference(saved_models["vit"], _image_bytes(at), layer=1)
    lay_prefix, rows, cols = 1, 4, 4                                                # tiny ViT: CLS + 4×4 patches
    query = lay_prefix + 1 * cols + 2
    model_row = ref["attention"][2, query].numpy()

    # The softmax check: the plotted rows are the model's own row and softmax(q·k/√d) computed here.
    check = _chart(at, "l_check")
    shown_model, shown_softmax = _array(check, 1, "x"), _array(check, 1, "y")
    np.testing.assert_allclose(shown_model, model_row, atol=1e-7)
    np.testing.assert_allclose(shown_softmax, torch.softmax(ref["scores"][2, query], -1).numpy(), atol=1e-6)
    [ok] = [s.value for s in at.success]
    shown_diff = float(re.search(r"attention row: ([0-9.e+-]+) \(within 1e-05\)", ok).group(1))
    assert shown_diff <= 1e-5
    assert shown_diff == pytest.approx(float(np.abs(shown_model - shown_softmax).max()), rel=0.05, abs=1e-12)

    # The score map over the image is q·k/√d of the patches.
    z = _array(_chart(at, "l_scores"), 0, "z")
    np.testing.assert_allclose(z, ref["scores"][2, query, lay_prefix:].reshape(rows, cols).numpy(), atol=1e-5)

    # The output row is what the model's output projection received for this head and query.
    out = _array(_chart(at, "l_output"), 0, "z")[-1]
    np.testing.assert_allclose(out, ref["heads_out"][2, query].numpy(), atol=1e-5)
    np.testing.assert_allclose(out, (model_row[:, None] * ref["v"][2].numpy()).sum(0), atol=1e-5)

    # Every head of the layer: the token each one attends to most, and by how much, from the model's rows.
    captions = [c.value for c in at.caption if c.value.startswith("head ")]
    assert len(captions) == 4
    def name(i):
        return "CLS" if i == 0 else f"patch ({(i - 1) // cols}, {(i - 1) % cols})"
    for h, text in enumerate(captions):
        row = ref["attention"][h, query]
        assert text.startswith(f"head {h}: most to {name(int(row.argmax()))} ({float(row.max()):.1%})")
    # The sentence under the softmax is about the plotted row.
    top = name(int(np.argmax(model_row)))
    assert any(f"{top[0].upper() + top[1:]} gets the most: {100 * model_row.max():.1f} %" in m.value
               for m in at.markdown)


def test_the_check_fails_when_the_recomputation_is_wrong(new_app, monkeypatch):
    """A recomputation with the wrong scale is shown as a failed check, with its (large) difference."""
    import attnviz.anatomy as anatomy
    real = anatomy.attention_anatomies
    monkeypatch.setattr(anatomy, "attention_anatomies",
                        lambda *a, **kw: {li: dataclasses.replace(an, scale=an.scale * 3)
                                          for li, an in real(*a, **kw).items()})
    at = _open(new_app, check=False)
    assert not at.exception and not at.success
    [err] = [e.value for e in at.error]
    diff = float(re.search(r"attention row: ([0-9.e+-]+), more than 1e-05", err).group(1))
    check = _chart(at, "l_check")
    assert diff > 1e-3
    assert diff == pytest.approx(float(np.abs(_array(check, 1, "x") - _array(check, 1, "y")).max()), rel=0.05)


def _hand_distance(attentions, n_prefix: int, rows: int, cols: int, patch: int) -> np.ndarray:
    """ViT Fig. 7 by plain loops: [L, H] mean over patch queries of Σ_k a_qk·|c_q − c_k| (patch keys renormalised)."""
    centres = [((r + 0.5) * patch, (c + 0.5) * patch) for r in range(rows) for c in range(cols)]
    out = np.zeros((len(attentions), attentions[0].shape[0]))
    for li, a in enumerate(attentions):
        for h in range(a.shape[0]):
            per_query = []
            for qi, (qy, qx) in enumerate(centres):
                w = [float(a[h, n_prefix + qi, n_prefix + ki]) for ki in range(len(centres))]
                per_query.append(sum(wk * math.hypot(qy - ky, qx - kx) for wk, (ky, kx) in zip(w, centres)) / sum(w))
            out[li, h] = sum(per_query) / len(per_query)
    return out


def _model_attentions(model_dir, data: bytes):
    adapter = attnviz.load_model(str(model_dir))
    with torch.no_grad():
        out = adapter.model(pixel_values=adapter.prepare(load_image(data))["pixel_values"], output_attentions=True)
    return [a[0].double() for a in out.attentions]


def test_distance_on_this_image_and_over_the_samples_and_dino_masks(new_app, saved_models):
    from attnviz.ui.state import sample_images
    at = _open(new_app, layer=1)
    dist = _array(_chart(at, "l_distance"), 0, "y").reshape(2, 4)                  # [L, H] as plotted
    np.testing.assert_allclose(dist, _hand_distance(_model_attentions(saved_models["vit"], _image_bytes(at)),
                                                     1, 4, 4, 8), rtol=1e-5)
    at.radio(key="l_over").set_value("the sample images").run()
    _ok(at)
    from attnviz.ui.state import is_scene_sample
    samples = {n: b for n, b in sample_images().items() if not is_scene_sample(n)}   # a photo model: the photos
    avg = np.mean([_hand_distance(_model_attentions(saved_models["vit"], b), 1, 4, 4, 8) for b in samples.values()], 0)
    plotted = _array(_chart(at, "l_distance"), 0, "y").reshape(2, 4)
    np.testing.assert_allclose(plotted, avg, rtol=1e-5)
    assert not np.allclose(plotted, dist)                                          # another quantity than one image
    assert any(m.value.startswith(f"Averaged over the {len(samples)} sample photos: in layer 0") for m in at.markdown)

    # DINO: per head, the number of patches holding the share of CLS's attention to the patches.
    attn = _model_attentions(saved_models["vit"], _image_bytes(at))[1]
    for share in (0.6, 0.85):
        at.slider(key="l_share").set_value(share).run()
        _ok(at)
        shown = [im.captions for im in at.get("image")]
        shown = [c for caps in shown for c in caps if "patches" in c]
        for h in range(4):
            w = np.sort(attn[h, 0, 1:].numpy())[::-1]
            w = w / w.sum()
            needed = int(np.argmax(np.cumsum(w) >= share - 1e-7)) + 1                # smallest count reaching the share
            assert shown[h] == f"head {h}: {needed} of 16 patches"


def test_position_term_is_drawn_on_its_own_for_beit(new_app, tmp_path, monkeypatch):
    """With BEiT's relative position bias, the summed score map is the model's logits (log-attention up to
    one constant per row); the content term alone is not."""
    folder = save_tiny(_beit_with_a_position_bias(), tmp_path / "beit")
    monkeypatch.setenv("ATTNVIZ_MODEL", str(folder))
    at = _open(new_app, layer=0, head=1)
    assert {"l_dot", "l_bias", "l_scores"} <= {c.key for c in at.get("plotly_chart")}
    log_a = np.log(_model_attentions(folder, _image_bytes(at))[0][1, 1 + 1 * 4 + 2, 1:].numpy()).reshape(4, 4)
    total = _array(_chart(at, "l_scores"), 0, "z")
    content = _array(_chart(at, "l_dot"), 0, "z")
    assert np.ptp(log_a - total) < 1e-4                        # softmax(total) reproduces the model's row
    assert np.ptp(log_a - content) > 1e-2                      # without the position term it would not
    np.testing.assert_allclose(total, content + _array(_chart(at, "l_bias"), 0, "z"), atol=1e-5)


def test_guided_walk_through_moves_step_by_step_and_links_the_pages(new_app):
    from attnviz.ui.lesson_steps import STEPS
    at = new_app().run()
    at.switch_page(LESSON).run()
    _ok(at)
    for i, step in enumerate(STEPS):
        _ok(at)
        assert at.subheader[0].value == f"Step {i + 1} of {len(STEPS)}: {step.title}"
        # a step about the clicked patch shows the patch picker beside it; the others do not
        assert any(c.key.startswith("l_patch#") for c in at.get("plotly_chart")) == step.needs_query
        assert at.button(key="l_prev").disabled == (i == 0)
        assert at.button(key="l_next").disabled == (i == len(STEPS) - 1)
        if i < len(STEPS) - 1:
            at.button(key="l_next").click().run()
    # the last step links the pages that show the concepts (each resolved to a page of the app)
    links = {link.proto.label.split(":")[0]: link.proto.page_script_hash for link in at.get("page_link")}
    assert set(links) == {"Heads", "Explore", "Caption"} and all(links.values())
    at.button(key="l_prev").click().run()
    assert at.subheader[0].value.startswith(f"Step {len(STEPS) - 1} of")


def test_a_rerun_redraws_only_what_changed_and_a_new_head_is_drawn_anew(new_app, saved_models, monkeypatch):
    """Issue 13 on this page: figures and pictures are kept per (image, model, layer, head, query), so moving the
    DINO share redraws only the DINO masks; choosing another head draws that head's row of the model's own
    attention (a stale cached figure would still show the old head)."""
    from attnviz import render
    at = _open(new_app, layer=1, head=2, row=1, col=2)
    calls = {"overlay": 0, "heatmap_figure": 0}
    for name in calls:
        real = getattr(render, name)

        def counted(*a, _real=real, _name=name, **kw):
            calls[_name] += 1
            return _real(*a, **kw)
        monkeypatch.setattr(render, name, counted)
    at.slider(key="l_share").set_value(0.85).run()
    _ok(at)
    assert calls == {"overlay": 4, "heatmap_figure": 0}      # the four heads' new masks, nothing else
    attn = _model_attentions(saved_models["vit"], _image_bytes(at))[1]          # layer 1: [H, T, T]
    query = 1 + 1 * 4 + 2
    for head in (1, 3):
        at.selectbox(key="l_head").set_value(head).run()
        _ok(at)
        shown = _array(_chart(at, "l_softmax"), 0, "z")                          # [rows, cols] weights
        np.testing.assert_allclose(shown, attn[head, query, 1:].numpy().reshape(4, 4), rtol=1e-4, atol=1e-6)


def test_every_layer_is_taken_apart_in_the_models_line_in_one_forward(new_app, monkeypatch):
    """The extra forward of the anatomy waits for its turn with the model (so a waiting page can say how many
    requests are ahead), takes every layer apart at once and is shared: a rerun that changes something else,
    or another layer, takes no new forward (issue 25 item 8: it was one forward per layer)."""
    import attnviz.anatomy as anatomy
    real, seen = anatomy.attention_anatomies, []

    def spy(adapter, inputs, layers=None):
        forwards = []
        handle = adapter.model.register_forward_pre_hook(lambda m, a: forwards.append(1))
        try:
            out = real(adapter, inputs, layers)
        finally:
            handle.remove()
        seen.append((len(forwards), adapter.lock.holds()))    # the page's turn is held when the forward starts
        return out
    monkeypatch.setattr(anatomy, "attention_anatomies", spy)
    at = _open(new_app, layer=1)
    assert seen == [(1, True)]
    at.slider(key="l_share").set_value(0.85).run()
    _ok(at)
    at.slider(key="l_layer").set_value(0).run()
    _ok(at)
    assert seen == [(1, True)]                                # cached: no second forward for another layer


def test_layers_taken_apart_are_bounded_on_their_own(monkeypatch):
    """A layer taken apart holds q, k, v and [H, T, T] attention (~5 MB for ViT-B/16): the layers of at most
    lesson.ANATOMY_ENTRIES images are kept, however many small maps the engine's result cache may hold. A hand-made
    stand-in per image, watched by weak reference: the oldest is let go once one too many are made."""
    import gc
    import types
    import weakref

    from attnviz.ui import state
    from attnviz.ui.pages import lesson

    class Stand:            # an Anatomy stand-in a weak reference can follow
        pass
    made = []

    def fake(adapter, inputs):
        made.append(Stand())
        return {0: made[-1]}
    monkeypatch.setattr(lesson, "attention_anatomies", fake)
    state.clear_all()
    adapter = types.SimpleNamespace(source="stand-in")
    try:
        first = weakref.ref(lesson.layer_anatomy("img-0", 0, adapter, {}))
        assert lesson.layer_anatomy("img-0", 0, adapter, {}) is first() and len(made) == 1     # kept
        for i in range(1, lesson.ANATOMY_ENTRIES + 1):
            lesson.layer_anatomy(f"img-{i}", 0, adapter, {})
        assert state.engine().results.max_entries > lesson.ANATOMY_ENTRIES + 1
        made.clear()
        gc.collect()
        assert first() is None
    finally:
        state.clear_all()
