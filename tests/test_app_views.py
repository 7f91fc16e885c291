"""Issue 16 under AppTest: links that reopen a view, uploads over the cap, jobs that survive a rerun,
defaults, numbering, notes that follow the data, the heads mosaic, presentation mode and exports."""
import io
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from attnviz.render import to_png_bytes
from tests.test_app import _clear, _ok, new_app  # noqa: F401  (new_app: the shared AppTest fixture)

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
HEADS = "attnviz/ui/pages/heads.py"
EXPLORE = "attnviz/ui/pages/explore.py"
CAPTION = "attnviz/ui/pages/caption.py"
DEMO_CAPTIONER = ROOT / "models" / "demo-captioner-shapes"


def _captions(at) -> str:
    return " | ".join([c.value for c in at.caption] + [c for im in at.get("image") for c in im.captions])


def _samples() -> list[str]:
    from attnviz.ui.state import sample_images
    return list(sample_images())


# --- 1. links ----------------------------------------------------------------------------------

def test_a_link_names_its_sample_and_reopens_the_same_view(new_app):
    """The link made on a sample carries the sample's name: it reopens on that image with its target."""
    at = new_app().run()
    scene = next(n for n in _samples() if n.startswith("scene") and n != at.session_state["sample"])
    at.button_group(key="sample").set_value(scene).run()
    at.selectbox(key="target").set_value(2).run()
    _ok(at)
    link = dict(at.query_params)
    assert link["sample"] == scene and link["target"] == "2" and "image" not in link
    again = new_app()
    again.query_params.update(link)
    again.run()
    _ok(again)
    assert not again.warning
    assert again.session_state["sample"] == scene and again.selectbox(key="target").value == 2
    assert f"the sample **{scene}**" in _captions(again)


def test_a_link_made_on_an_upload_waits_for_that_upload(new_app, photo, saved_models):
    """A link cannot carry an uploaded image: it says so, shows no other image in its place, and keeps
    its target until the same file is uploaded again (another file does not take it)."""
    at = new_app().run()
    at.file_uploader[0].set_value(("photo.png", to_png_bytes(photo), "image/png")).run()
    at.selectbox(key="target").set_value(3).run()
    _ok(at)
    assert "a link cannot carry an uploaded image" in _captions(at)
    link = dict(at.query_params)
    assert "sample" not in link and len(link["image"]) == 16 and link["target"] == "3"

    again = new_app()
    again.query_params.update(link)
    again.run()
    _ok(again)
    assert not again.get("image")                                   # no stand-in image
    assert any("made on an uploaded image" in i.value for i in again.info)
    other = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    again.file_uploader[0].set_value(("other.png", to_png_bytes(other), "image/png")).run()
    _ok(again)
    assert "not the image the link was made on" in _captions(again)
    import attnviz
    adapter = attnviz.load_model(str(saved_models["vit"]))
    top = int(attnviz.capture(adapter, other).scores.argmax())
    assert again.selectbox(key="target").value == top               # its own top class, not the link's
    again.file_uploader[0].set_value(("photo.png", to_png_bytes(photo), "image/png")).run()
    _ok(again)
    assert again.selectbox(key="target").value == 3


# --- 3. uploads over the cap -----------------------------------------------------------------------

def test_an_upload_over_the_cap_reaches_the_page_as_one_sentence(new_app, photo):
    """The uploader lets a file over the 10 MB cap through, so the page (not a tooltip) says what is wrong,
    and no image is left on screen as if it were the one analysed."""
    from attnviz.images import MAX_BYTES
    at = new_app().run()
    assert at.file_uploader[0].proto.max_upload_size_mb * 2 ** 20 > MAX_BYTES
    big = to_png_bytes(photo) + b"\0" * (MAX_BYTES + 2 ** 20)          # 11 MB
    at.file_uploader[0].set_value(("holiday.png", big, "image/png")).run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        f"holiday.png is {len(big) / 2 ** 20:.1f} MB, over the 10 MB limit: shrink it or save it as JPEG and "
        "upload it again (no image is shown until then)."]
    assert not at.get("image")


# --- 6. a display change never cancels work ------------------------------------------------------

@pytest.fixture
def slow_model(monkeypatch):
    """Every forward of the app's model takes at least 30 ms (a slow method then runs for a while)."""
    import attnviz.ui.state as state
    real = state.load_model
    count = {"n": 0}

    def loader(spec=None):
        adapter = real(spec)
        run = adapter._run

        def slow(*a, **kw):
            count["n"] += 1
            time.sleep(0.03)
            return run(*a, **kw)
        adapter._run = slow
        return adapter
    monkeypatch.setattr(state, "load_model", loader)
    return count


def test_a_rerun_during_a_slow_method_does_not_lose_its_work(new_app, slow_model, monkeypatch):
    """Streamlit stops a running script when the user changes the opacity; the slow method's work must
    go on and its map appear on the next run without another click."""
    from streamlit.delta_generator import DeltaGenerator
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException
    at = new_app().run()
    at.selectbox(key="method").set_value("occlusion").run()
    at.number_input(key="p:occlusion:batch_size").set_value(1).run()
    _ok(at)
    real = DeltaGenerator.progress
    calls = {"n": 0}

    def interrupted(self, *a, **kw):     # the second progress call of the run: the user moved a slider
        calls["n"] += 1
        if calls["n"] == 2:
            raise StopException()
        return real(self, *a, **kw)
    monkeypatch.setattr(DeltaGenerator, "progress", interrupted)
    at.button(key="run:occlusion").click().run()
    assert calls["n"] >= 2 and not at.exception
    monkeypatch.setattr(DeltaGenerator, "progress", real)
    at.slider(key="alpha").set_value(0.3).run()                     # the display change's own run
    _ok(at)
    assert len(at.get("image")) == 1 and "occlusion" in _captions(at)
    assert "run:occlusion" not in [b.key for b in at.button]


def test_a_job_reports_progress_before_its_first_batch_and_survives_its_watcher():
    from attnviz.ui.jobs import Jobs
    jobs = Jobs()
    gate = threading.Event()

    def work(progress):
        gate.wait(5)
        progress(1, 2)
        return "done"
    job = jobs.start("k", work)
    assert jobs.start("k", work) is job                  # one job per key
    time.sleep(1.1)
    fraction, text = job.status("integrated gradients")
    assert fraction == 0.0 and re.search(r"first batch running · [1-9] s", text)   # the seconds move
    gate.set()
    assert job.result() == "done" and job.wait(1)
    assert jobs.get("k") is None                       # finished: its value is in the result cache


# --- 7. wording ---------------------------------------------------------------------------------------

def test_deletion_caption_names_the_baselines_in_words():
    from attnviz.ui.faithfulness import deletion_caption
    s = {"deletion_auc": 0.1, "random_deletion_auc": 0.5, "insertion_auc": 0.8, "random_insertion_auc": 0.4,
         "quantity": "probability", "steps": 20, "deletion_baseline": "mean", "insertion_baseline": "blur"}
    text = deletion_caption(s)
    assert "blur one" not in text and "starts from a blurred copy of the image" in text
    assert "become the mean colour" in text and "Area under the curve (AUC)" in text


def test_notes_on_the_prompts_page_fit_that_page():
    from attnviz.ui import notes
    assert "Text prompts page" not in notes.METHODS["text_relevance"]
    assert "class's score" not in notes.METHODS["relevance"] and "prompt" in notes.METHODS["relevance"]


def test_split_words_are_named():
    from attnviz.ui.pages.caption import split_words_note
    words = [("a", [0]), ("dog", [1, 2, 3]), ("runs", [4])]
    note = split_words_note(words, ["a", "d", "o", "g", "runs"])
    assert "“dog” as d · o · g" in note and "runs" not in note
    assert split_words_note([("a", [0]), (",", [1, 2])], ["a", " ", ","]) == ""      # spacing is not a piece


@pytest.mark.skipif(not (DEMO_CAPTIONER / "model.safetensors").is_file(), reason="demo captioner not built")
def test_a_typed_word_outside_the_vocabulary_is_said_to_be_split(monkeypatch):
    """The demo captioner knows shapes and colours: a typed "dog" is read letter by letter, and the page
    says so next to the pills (it used to give each letter a map silently)."""
    monkeypatch.setenv("ATTNVIZ_MODEL", str(DEMO_CAPTIONER))
    _clear()
    try:
        at = AppTest.from_file(APP, default_timeout=120).run()
        at = at.switch_page(CAPTION).run()
        at.text_input(key="caption").set_value("a red dog").run()
        _ok(at)
        from attnviz import load_model
        adapter = load_model(str(DEMO_CAPTIONER))
        pieces = adapter.tokenizer.tokenize(" dog")
        assert len(pieces) > 1
        assert "Read in pieces" in _captions(at) and "“dog” as" in _captions(at)
    finally:
        _clear()


# --- 10. defaults and the lesson path --------------------------------------------------------------

def test_explore_opens_in_lesson_order_with_settings_folded(new_app):
    at = new_app().run()
    _ok(at)
    options = at.selectbox(key="method").options
    assert options[0] == "attention  (class-agnostic)" and options[1].startswith("rollout")
    assert [o for o in options if "slow" in o] == options[-len([o for o in options if "slow" in o]):]
    settings = next(e for e in at.expander if e.label == "relevance settings")
    assert settings.proto.expanded is False
    assert "A lesson path: 1 · Heads" in _captions(at)


@pytest.mark.parametrize("page", [EXPLORE, HEADS, CAPTION, "attnviz/ui/pages/prompts.py"])
def test_every_page_says_which_model_and_image(new_app, page):
    at = new_app().run()
    at = at.switch_page(page).run()
    assert not at.exception
    assert re.search(r"Model \*\*vit\*\* \(image classifier\) · the sample \*\*.+\*\*, \d+×\d+ px", _captions(at))


def test_image_text_target_defaults_to_the_best_prompt(new_app, monkeypatch):
    """Explore on an image–text model starts on the prompt the chart ranks first, not on prompt 0."""
    import attnviz.ui.state as state
    from attnviz.adapters.clip import ClipAdapter
    from attnviz.images import load_image
    adapter = ClipAdapter.tiny()
    monkeypatch.setattr(state, "load_model", lambda spec=None: adapter)
    image = load_image(dict(zip(_samples(), state.sample_images().values()))[_samples()[0]])
    candidates = ["a red circle\na blue square\na green cross", "a photo\na drawing\na cat",
                  "one\ntwo\nthree\nfour", "x\ny\nz"]
    for prompts in candidates:      # prompts whose best match is not the first one (the old default)
        texts = prompts.split("\n")
        cap = adapter.capture(adapter.prepare(image, texts=texts))
        best = int(np.argmax(adapter.probabilities(cap).detach().numpy()))
        if best != 0:
            break
    assert best != 0
    at = new_app()
    at.session_state["sample"] = _samples()[0]
    at.run()
    at.text_area(key="prompts").set_value(prompts).run()
    _ok(at)
    assert at.selectbox(key="target").value == best


@pytest.mark.skipif(not (DEMO_CAPTIONER / "model.safetensors").is_file(), reason="demo captioner not built")
def test_captioner_target_defaults_to_the_first_content_word(monkeypatch):
    monkeypatch.setenv("ATTNVIZ_MODEL", str(DEMO_CAPTIONER))
    _clear()
    try:
        at = AppTest.from_file(APP, default_timeout=120).run()
        _ok(at)
        labels = [o.split(": ", 1)[1].split(" · ")[0] for o in at.selectbox(key="target").options]
        chosen = labels[at.selectbox(key="target").value]
        assert labels[0].strip() == "a" and chosen.strip() not in ("a", "an", "the", "and", ",")
        assert all(w.strip() in ("a", "an", "the", "and", ",", ".") for w in labels[:at.selectbox(key="target").value])
    finally:
        _clear()


# --- 12. one numbering, one name per token ----------------------------------------------------------

def test_layers_count_from_zero_and_output_is_not_offered_twice(new_app, saved_models, monkeypatch):
    at = new_app().run()
    at.selectbox(key="method").set_value("attention").run()
    _ok(at)
    layer = at.number_input(key="p:attention:layer")
    assert layer.value == 1 and layer.min == 0 and layer.max == 1          # 2 layers: the last is 1, not -1
    queries = at.selectbox(key="p:attention:query").options
    assert "cls (what the prediction reads)" in queries and not any(q.startswith("output") for q in queries)
    at.switch_page(HEADS).run()
    assert at.radio(key="h_qkind").options[0] == "cls (the token the prediction reads)"
    # Distilled DeiT reads CLS and the distillation token: there "output" is a query of its own.
    monkeypatch.setenv("ATTNVIZ_MODEL", str(saved_models["deit-teacher"]))
    _clear()
    at = new_app().run()
    at.selectbox(key="method").set_value("attention").run()
    assert at.selectbox(key="p:attention:query").options[:3] == [
        "output (what the prediction reads)", "cls", "distillation"]


# --- 13. notes true of the figure -------------------------------------------------------------------

def test_heads_distance_sentence_follows_this_images_numbers(new_app, saved_models):
    import attnviz
    from attnviz.headstats import mean_attention_distance
    from attnviz.images import load_image
    from attnviz.ui.state import sample_images
    at = new_app().run()
    at = at.switch_page(HEADS).run()
    _ok(at)
    adapter = attnviz.load_model(str(saved_models["vit"]))
    dist = mean_attention_distance(attnviz.capture(adapter, load_image(sample_images()[at.session_state["sample"]])))
    text = _captions(at)
    assert f"in layer 0 the heads look {dist[0].min():.1f} to {dist[0].max():.1f} pixels away" in text
    assert "Early layers mix near and far heads" not in text
    from attnviz.ui import notes
    assert "need not" in notes.PAGES["heads"]


# --- 8. the heads mosaic ------------------------------------------------------------------------------

def test_mosaic_is_as_large_as_its_thumbnails_and_can_lie_over_the_image():
    """ViT-B's 12 × 12 heads: thumbnails of at least 40 px, a figure exactly as big as the grid plus its
    label margins (no blank bands), labels on the thumbnails' centres, a colour bar as wide as the grid,
    and each thumbnail the overlay of its map on the image."""
    from attnviz import render
    from attnviz.ui.figures import MOSAIC_WIDTH, head_mosaic_figure
    rng = np.random.default_rng(0)
    maps = rng.random((12, 12, 14, 14))
    image = Image.fromarray(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8))
    fig = head_mosaic_figure(maps, shared=True, image=image, alpha=0.6, selected=(3, 4))
    z = np.asarray(fig.data[0].z, dtype=np.uint8)                     # [grid h, grid w, 3]
    gh, gw = z.shape[:2]
    lay = fig.layout
    assert lay.width == lay.margin.l + gw + lay.margin.r and lay.height == lay.margin.t + gh + lay.margin.b
    assert lay.width <= MOSAIC_WIDTH
    cell = int(np.argmax((z == 255).all(axis=(0, 2))))              # the first white gap column
    assert cell >= 40
    xs = list(lay.xaxis.tickvals)
    assert xs == pytest.approx([float(x) for x in fig.data[1].x[:12]])   # a label over each thumbnail's centre
    bar = fig.data[2].marker.colorbar
    assert bar.orientation == "h" and bar.len == 1.0
    # thumbnail (0, 0): the map over the image, on the one shared range of all heads
    w = h = int(round(cell * 14 / 14))
    want = render.overlay(image.resize((w, h), Image.Resampling.BILINEAR), maps[0, 0], alpha=0.6, cmap="inferno",
                          norm="minmax", vmin=float(maps.min()), vmax=float(maps.max()))
    assert np.abs(z[:h, :w].astype(int) - np.asarray(want).astype(int)).max() <= 1
    assert len(fig.layout.shapes) == 2                                 # the two-tone selection ring


# --- 14. small ones ---------------------------------------------------------------------------------

def _contrast(a, b) -> float:
    """WCAG contrast ratio of two sRGB colours (0–255)."""
    def lum(c):
        c = np.asarray(c, float) / 255
        c = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_selected_patch_ring_shows_on_every_scene_colour():
    from PIL import ImageColor

    from attnviz.scenes import COLOURS
    from attnviz.ui.figures import patch_picker_figure
    fig = patch_picker_figure(Image.new("RGB", (64, 64)), 8, 8, selected=(2, 3))
    lines = [ImageColor.getrgb(s.line.color) for s in fig.layout.shapes]
    assert len(lines) == 2
    for name, rgb in COLOURS.items():
        assert max(_contrast(line, rgb) for line in lines) >= 3.0, name


def test_faithfulness_panel_and_view_tab_stay_as_left(new_app):
    at = new_app().run()
    at.session_state["faith_panel"] = True
    at.session_state["view_tab"] = "Hover for values"
    at.run()
    at.selectbox(key="method").set_value("rollout").run()
    _ok(at)
    panel = next(e for e in at.expander if "faithful?" in e.label)
    assert "rollout" in panel.label and panel.proto.expanded is True
    at.switch_page(HEADS).run()
    at.switch_page(EXPLORE).run()
    _ok(at)
    assert at.session_state["view_tab"] == "Hover for values" and "fig:rollout" in [c.key for c in at.get("plotly_chart")]


# --- 9. presentation mode ----------------------------------------------------------------------------

def test_presentation_mode_folds_controls_and_enlarges_text(new_app):
    at = new_app().run()
    at.toggle(key="present").set_value(True).run()
    at.button_group(key="compare").set_value(["rollout", "attention"]).run()
    _ok(at)
    assert any("font-size: 20px" in h.proto.body for h in at.get("html"))
    box = next(e for e in at.expander if e.label == "Target, method and settings")
    assert box.proto.expanded is False and box.selectbox(key="method")
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert chart["layout"]["font"]["size"] >= 20
    assert len(at.get("image")) == 3 and len([m for m in at.markdown if "attnviz-legend" in m.value]) == 3


# --- 11. exports ---------------------------------------------------------------------------------------

def test_exports_cover_every_compared_map_on_the_screens_scales(new_app, saved_models, monkeypatch):
    """PNG: every map side by side at the image's size, each on its on-screen scale with a legend under it;
    raw maps: one array per method; JSON: the real model, every method and a link back to the view."""
    import attnviz
    from attnviz import render
    from attnviz.images import load_image
    from attnviz.ui.state import sample_images
    from streamlit.delta_generator import DeltaGenerator
    got = {}
    real = DeltaGenerator.download_button

    def capture(self, label, data, *a, **kw):
        got[label] = data
        return real(self, label, data, *a, **kw)
    monkeypatch.setattr(DeltaGenerator, "download_button", capture)
    at = new_app()
    at.session_state["alpha"] = 0.8                     # not the default: every export must follow the screen's opacity
    at.run()
    at.button_group(key="compare").set_value(["rollout", "input_x_gradient"]).run()
    _ok(at)
    assert all(callable(v) for v in got.values())       # each file is made when its button is clicked (issue 13)
    record = json.loads(got["Settings .json"]())
    assert record["settings"]["model"] == str(saved_models["vit"])
    assert "$ATTNVIZ_MODEL" not in json.dumps(record)
    assert [record["method"], *[c["method"] for c in record["compared"]]] == ["relevance", "rollout",
                                                                              "input_x_gradient"]
    assert "compare=rollout%2Cinput_x_gradient" in record["link"] and "sample=" in record["link"]

    image = load_image(sample_images()[at.session_state["sample"]])
    adapter = attnviz.load_model(str(saved_models["vit"]))
    cap = attnviz.capture(adapter, image)
    target = at.selectbox(key="target").value
    maps = {m: attnviz.explain(adapter, cap, m, target=target).map for m in ("relevance", "rollout", "input_x_gradient")}
    raw = np.load(io.BytesIO(got["Raw maps .npz"]()))
    assert sorted(raw.files) == sorted(maps)
    for m in maps:
        np.testing.assert_allclose(raw[m], maps[m], rtol=1e-4, atol=1e-6)

    png = Image.open(io.BytesIO(got["Overlay PNG"]())).convert("RGB")
    # slide-sized (issue 20): a picture smaller than 1024 px is enlarged to 1024 on its long side
    k = max(1.0, 1024 / max(image.size))
    big = image.resize((round(image.width * k), round(image.height * k)), Image.Resampling.LANCZOS) if k > 1 else image
    assert png.width == 3 * big.width + 2 * 8 and png.height > big.height      # legends under the maps
    m = raw["rollout"].astype(np.float64)             # the map shown (checked against the recomputed one above)
    want = render.overlay(big, m, alpha=0.8, cmap="inferno", norm="minmax", vmin=float(m.min()),
                          vmax=float(np.percentile(m, 99)),               # the default scale's top (issue 20)
                          box=None if cap.box is None else tuple(v * big.width / image.width for v in cap.box))
    tile = np.asarray(png)[:big.height, big.width + 8:2 * big.width + 8]
    assert np.abs(tile.astype(int) - np.asarray(want).astype(int)).max() <= 1

    # the single-image HTML report: the first map's overlay embedded, on the scale shown
    import base64
    import re
    html = got["Report .html"]()
    pngs = [Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")
            for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)]
    m = raw["relevance"].astype(np.float64)
    want = render.overlay(image, m, alpha=0.8, cmap="inferno", norm="minmax", vmin=float(m.min()),
                          vmax=float(np.percentile(m, 99)),
                          box=cap.box)
    assert any(p.size == want.size and np.abs(np.asarray(p).astype(int) - np.asarray(want).astype(int)).max() <= 1
               for p in pngs)
    assert record["model"] in html
