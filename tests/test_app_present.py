"""Issue 20, items 11, 12 and 14 under AppTest: presentation mode puts the picture first and the lesson's text
beside its figure with keyboard steps; one-click grid exports of the heads and of Compare's two maps; hover
names the patch. The browser checks (fold, sidebar, pixel font sizes, keys, cold start) are in
tests/test_browser_present.py."""
import io
import json

import numpy as np
import pytest
from PIL import Image
from streamlit.delta_generator import DeltaGenerator
from streamlit.testing.v1 import AppTest

from attnviz import render
from tests.test_app import APP, _clear, _ok, new_app  # noqa: F401  (new_app: the shared AppTest fixture)

HEADS = "attnviz/ui/pages/heads.py"
LESSON = "attnviz/ui/pages/lesson.py"
COMPARE = "attnviz/ui/pages/compare.py"


def _walk(node, *, into_expanders: bool = True):
    """Every element under ``node`` in page order (depth first); an expander is one element when
    ``into_expanders`` is False (what a folded box shows is its label)."""
    children = getattr(node, "children", None)
    if getattr(node, "type", None) == "expander":
        yield node
        if not into_expanders:
            return
    elif not children:
        yield node
        return
    for child in children.values():
        yield from _walk(child, into_expanders=into_expanders)


def _downloads(monkeypatch) -> dict:
    """Every download button's data, by label, as the page made it (callables stay callables)."""
    import streamlit as st
    got = {}
    real, real_st = DeltaGenerator.download_button, st.download_button

    def keep(self, label, data, *a, **kw):
        got[label] = data
        return real(self, label, data, *a, **kw)

    def keep_st(label, data, *a, **kw):       # st.download_button is bound to the main area at import
        got[label] = data
        return real_st(label, data, *a, **kw)
    monkeypatch.setattr(DeltaGenerator, "download_button", keep)
    monkeypatch.setattr(st, "download_button", keep_st)
    return got


def _presenting(new_app, page=None):
    at = new_app()
    at.query_params["present"] = "True"
    at.run()
    if page:
        at.switch_page(page).run()
    _ok(at)
    return at


# --- 11. presentation mode ------------------------------------------------------------------------------

def test_presentation_puts_the_picture_first(new_app, monkeypatch):
    """Opened from a link with present=True: above the first map only the title, the folded controls and the
    map's tabs; the lesson path, the page notes and the model line move to the sidebar; the map is sized to
    the screen's height (not stretched to the page's width) and its title names the target."""
    import streamlit as st
    widths = []
    real = st.image

    def keep(image, *a, **kw):
        widths.append(kw.get("width"))
        return real(image, *a, **kw)
    monkeypatch.setattr(st, "image", keep)
    at = _presenting(new_app)
    before = []
    for el in _walk(at.main, into_expanders=False):
        if el.type == "image":
            first = el
            break
        before.append(el)
    else:
        pytest.fail("no map on the page")
    kinds = [el.type for el in before]
    assert set(kinds) <= {"html", "title", "expander", "empty"}, kinds
    assert [el.value for el in before if el.type == "title"] == ["Where does the model look?"]
    assert [el.label for el in before if el.type == "expander"] == ["Target, method and settings"]
    main_text = " ".join(str(getattr(el, "value", "")) for el in _walk(at.main))
    assert "A lesson path" not in main_text and "Model **" not in main_text
    assert "About this page" not in [e.label for e in at.main.expander]
    assert any("Model **" in c.value for c in at.sidebar.caption)
    assert any(e.label == "About this page" for e in at.sidebar.expander)
    assert isinstance(widths[-1], int) and widths[-1] <= 600      # 430 px tall: with the title, it fits 720 px
    assert first.captions[0].startswith("relevance for ")


def test_presentation_lesson_text_beside_its_figure_with_keys(new_app):
    """The lesson in presentation mode: the step's text and its buttons in the left column, the step's figure in
    the right one; the buttons come before the paragraph and answer the ← and → keys."""
    at = _presenting(new_app, LESSON)
    columns = [b for b in _walk_blocks(at.main) if b.type == "column"]
    left = next(c for c in columns if any(getattr(x, "key", None) == "l_next" for x in _walk(c)))
    row = next(b for b in _walk_blocks(at.main) if any(c is left for c in (b.children or {}).values()))
    right = [c for c in row.children.values() if c is not left][0]
    assert any(el.type == "plotly_chart" for el in _walk(right)), "no figure beside the step's text"
    order = [getattr(el, "key", None) or el.type for el in _walk(left)]
    text_at = next(i for i, el in enumerate(_walk(left)) if el.type == "markdown" and len(el.value) > 150)
    assert order.index("l_next") < text_at and order.index("l_prev") < text_at
    assert at.button(key="l_next").proto.shortcut.lower() == "right" and at.button(key="l_prev").proto.shortcut.lower() == "left"
    at.button(key="l_next").click().run()
    _ok(at)
    assert at.session_state["l_step"] == 1


def _walk_blocks(node):
    """Every block (containers, columns, rows) under ``node``, in page order."""
    children = getattr(node, "children", None)
    if not children:
        return
    yield node
    for child in children.values():
        yield from _walk_blocks(child)


def test_presentation_figures_have_projector_text(new_app):
    """Figure text in presentation mode is at least 18 px: the heads' labels, the hover figure, the lesson's."""
    at = _presenting(new_app, HEADS)
    fonts = [json.loads(c.proto.spec)["layout"].get("font", {}).get("size", 12) for c in at.get("plotly_chart")]
    assert fonts and min(fonts) >= 18, fonts
    at.switch_page(LESSON).run()
    _ok(at)
    for n in range(3):
        specs = [json.loads(c.proto.spec)["layout"] for c in at.get("plotly_chart")]
        assert specs and all(s.get("font", {}).get("size", 12) >= 18 for s in specs), (n, specs)
        at.button(key="l_next").click().run()


# --- 12. exports -----------------------------------------------------------------------------------------------

def test_heads_export_is_every_thumbnail_in_one_labelled_picture(new_app, saved_models, monkeypatch):
    """One click: every layer × head over the image, slide-sized; each thumbnail is the model's own attention
    row of that head (from its returned attentions), on its own scale as on the page."""
    import attnviz
    from attnviz.images import load_image
    from attnviz.ui import mapview
    from attnviz.ui.state import sample_images
    got = _downloads(monkeypatch)
    at = new_app().run()
    at.switch_page(HEADS).run()
    _ok(at)
    png = Image.open(io.BytesIO(got["All thumbnails PNG"]())).convert("RGB")
    assert max(png.size) >= 1024
    image = load_image(sample_images()[at.session_state["sample"]])
    adapter = attnviz.load_model(str(saved_models["vit"]))
    cap = attnviz.capture(adapter, image, grads=False)
    lay = cap.layout
    L, H = len(cap.attentions), cap.attentions[0].shape[0]            # [H, T, T] per layer
    grid = mapview.grid_layout(L, H, lay.rows / lay.cols)
    assert png.width == grid.cell(0, H - 1)[2] + mapview.GRID_GAP and png.height > grid.cell(L - 1, 0)[3]
    view = image if cap.box is None else image.crop(tuple(int(round(v)) for v in cap.box))
    under = view.convert("RGB").resize((grid.w, grid.h), Image.Resampling.BILINEAR)
    alpha = max(at.session_state["alpha"], 0.5)
    for li, h in ((0, 0), (L - 1, H - 1)):
        row = cap.attentions[li][h, 0, lay.n_prefix:].detach().float().numpy()       # [H, T, T]: CLS row
        own = row.reshape(lay.rows, lay.cols)                                             # [rows, cols]
        lo, hi = render.value_range(own, "robust")
        want = np.asarray(render.overlay(under, own, alpha=alpha, cmap="inferno", norm="robust", vmin=lo, vmax=hi))
        x0, y0, x1, y1 = grid.cell(li, h)
        assert np.abs(np.asarray(png)[y0:y1, x0:x1].astype(int) - want.astype(int)).max() <= 1
    # the labels: dark text left of the first column and above the first row
    x0, y0, _, y1 = grid.cell(0, 0)
    assert np.asarray(png)[y0:y1, :x0].min() < 100 and np.asarray(png)[:y0, x0:].min() < 100


def test_compare_exports_both_maps_in_one_picture(monkeypatch):
    """Compare's one-click export: both models' maps side by side at slide size, each the method's map of that
    model (recomputed here through the API) on its own scale, with its legend under it."""
    import attnviz
    from attnviz.images import load_image
    from attnviz.ui.state import sample_images
    from tests.test_app import ROOT
    for name in ("demo-vit-shapes", "demo-cnn-shapes"):
        if not (ROOT / "models" / name / "model.safetensors").is_file():
            pytest.fail(f"models/{name} is missing (make demo)")
    monkeypatch.setenv("ATTNVIZ_MODEL", str(ROOT / "models" / "demo-vit-shapes"))
    got = _downloads(monkeypatch)
    _clear()
    try:
        at = AppTest.from_file(APP, default_timeout=180).run()
        at.switch_page(COMPARE).run()
        _ok(at)
        png = Image.open(io.BytesIO(got["Both maps PNG"]())).convert("RGB")
        image = load_image(sample_images()[at.session_state["sample"]])
        k = max(1.0, 1024 / max(image.size))
        big = image.resize((round(image.width * k), round(image.height * k)), Image.Resampling.LANCZOS)
        assert png.width == 2 * big.width + 8 and png.height > big.height          # two maps, legends under them
        method, label = at.session_state["cmp_method"], at.session_state["cmp_label"]
        for i, name in enumerate(("demo-vit-shapes", "demo-cnn-shapes")):
            adapter = attnviz.load_model(str(ROOT / "models" / name))
            cap = attnviz.capture(adapter, image)
            m = attnviz.explain(adapter, cap, method, target=label).map
            box = cap.map_box(m.shape, image.size, "patches")
            box = None if box is None else tuple(v * big.width / image.width for v in box)
            lo, hi = render.value_range(m, "robust")
            want = render.overlay(big, m, alpha=at.session_state["alpha"], cmap="inferno", norm="robust", vmin=lo,
                                  vmax=hi, box=box)
            x0 = i * (big.width + 8)
            tile = np.asarray(png)[:big.height, x0:x0 + big.width]
            assert np.abs(tile.astype(int) - np.asarray(want).astype(int)).max() <= 1, name
    finally:
        _clear()


def _typed(value) -> np.ndarray:
    """A numpy array as plotly's JSON carries it ({"dtype", "bdata" base64, "shape"}), or a plain list."""
    import base64
    if not isinstance(value, dict):
        return np.asarray(value)
    a = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    shape = value.get("shape")
    return a.reshape([int(x) for x in str(shape).split(",")]) if shape else a


# --- 14. small things -------------------------------------------------------------------------------------------

def test_hover_names_the_patch_not_pixels(new_app):
    """The hover figure says which patch (row, column) a value belongs to, for every cell of the upsampled map."""
    at = new_app().run()
    at.session_state["view_tab"] = "Hover for values"
    at.run()
    _ok(at)
    spec = json.loads(next(c for c in at.get("plotly_chart") if "fig:" in (c.key or "")).proto.spec)
    heat = next(t for t in spec["data"] if t["type"] == "heatmap")
    assert "patch row %{customdata[0]}, col %{customdata[1]}" in heat["hovertemplate"]
    assert "x=" not in heat["hovertemplate"]
    cells = _typed(heat["customdata"])                                       # [zrows, zcols, 2]
    zr, zc = cells.shape[:2]
    rows, cols = 4, 4                                                        # the tiny ViT's patch grid
    for i in (0, zr // 2, zr - 1):
        for j in (0, zc // 3, zc - 1):
            assert tuple(cells[i, j]) == (i * rows // zr, j * cols // zc)
