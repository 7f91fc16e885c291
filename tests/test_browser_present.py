"""Presentation mode and the first visit in a real browser (issue 20, items 11 and 14), on the offline demo model.

At 1280×720 with present=True in the link: the sidebar is folded, the first picture lies above the fold, every
caption, legend and figure text is at least 18 px; the lesson's text sits beside its figure, Next is on the
screen and the ← / → keys step. A cold server (torch's import slowed down on purpose) shows a line at once.
Uses tests/test_browser.py's server and helpers (Debian's Chromium through Playwright, never `playwright
install`); SKIPPED loudly without Chromium unless ATTNVIZ_REQUIRE_BROWSER=1. Screenshots go to test-artifacts/.
"""
import contextlib
import os
import re
import time
from urllib.parse import quote

import pytest

from .test_browser import (ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, _no_exception, _wait_idle,  # noqa: F401
                           browser_or_skip, server)
from .test_browser_lesson import demo_server  # noqa: F401

SCENE = "scene red square magenta triangle"
SMALLEST_PX = 18
# Text a projector must show legibly: figure text, image captions, legends, captions, the lesson's paragraphs.
TEXT_PX = """() => {
    const main = document.querySelector('[data-testid="stMain"]');
    const sel = ['.js-plotly-plot text', '[data-testid="stImageCaption"]', '.attnviz-legend span',
                 '.attnviz-legend div', '[data-testid="stCaptionContainer"] p', '.st-key-l_step_box p'];
    const out = [];
    for (const el of main.querySelectorAll(sel.join(','))) {
        const r = el.getBoundingClientRect();
        if (!el.textContent.trim() || r.width === 0 || r.height === 0) continue;
        out.push([el.textContent.trim().slice(0, 40), parseFloat(getComputedStyle(el).fontSize)]);
    }
    return out;
}"""


@contextlib.contextmanager
def _page(width: int = 1280, height: int = 720):
    """A fresh Chromium page (nothing opened yet); the browser closes afterwards."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def _open(page, url: str, path: str, title: str) -> None:
    page.goto(f"{url}/{path}?sample={quote(SCENE)}&present=True")
    page.get_by_text(re.compile("^" + re.escape(title))).first.wait_for()
    _wait_idle(page)
    page.wait_for_timeout(1500)        # plotly draws after the script run ends
    _no_exception(page)


def _small_text(page) -> list:
    return [(t, px) for t, px in page.evaluate(TEXT_PX) if px < SMALLEST_PX - 0.1]


def test_presentation_mode_at_1280x720(demo_server):
    with _page() as page:
        _open(page, demo_server, "", "Where does the model look?")
        right = page.evaluate("""() => { const s = document.querySelector('[data-testid="stSidebar"]');
                                         const r = s.getBoundingClientRect(); return r.width ? r.right : 0; }""")
        assert right <= 5, f"the sidebar is open (its right edge at {right} px)"
        pic = page.locator('[data-testid="stMain"] [data-testid="stImage"] img').first.bounding_box()
        assert pic["y"] >= 0 and pic["y"] + pic["height"] <= 720, pic          # the whole map above the fold
        assert page.get_by_text(re.compile(r"^\w[\w ]* for \w")).first.is_visible()   # "relevance for square"
        assert not _small_text(page), _small_text(page)
        page.screenshot(path=str(ARTIFACTS / "browser-present-explore.png"))

        _open(page, demo_server, "heads", "Attention heads")
        grid = page.locator('[data-testid="stMain"] .js-plotly-plot').first.bounding_box()
        assert grid["y"] + grid["height"] <= 720, grid                          # every thumbnail on the screen
        assert not _small_text(page), _small_text(page)
        page.screenshot(path=str(ARTIFACTS / "browser-present-heads.png"))

        _open(page, demo_server, "lesson", "How attention works")
        box = page.locator(".st-key-l_step_box").first.bounding_box()
        fig = page.locator('[data-testid="stMain"] .js-plotly-plot').first.bounding_box()
        assert fig["x"] >= box["x"] + box["width"] and fig["y"] < box["y"] + box["height"], (box, fig)
        nxt = page.get_by_role("button", name=re.compile("^Next step")).first.bounding_box()
        assert nxt["y"] + nxt["height"] <= 720, nxt
        assert not _small_text(page), _small_text(page)
        page.screenshot(path=str(ARTIFACTS / "browser-present-lesson.png"))
        page.get_by_text(re.compile(r"^Step 1 of 10")).first.wait_for()
        page.mouse.click(5, 700)                                                # focus the page, not a widget
        page.keyboard.press("ArrowRight")
        page.get_by_text(re.compile(r"^Step 2 of 10")).first.wait_for()
        _wait_idle(page)
        page.keyboard.press("ArrowLeft")
        page.get_by_text(re.compile(r"^Step 1 of 10")).first.wait_for()
        _wait_idle(page)
        _no_exception(page)


SLOW_TORCH = '''import os, sys, time
class _SlowTorch:
    """Test only: the first `import torch` waits ATTNVIZ_TEST_TORCH_DELAY seconds (a cold, slow server)."""
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            time.sleep(float(os.environ.get("ATTNVIZ_TEST_TORCH_DELAY", "0")))
        return None
sys.meta_path.insert(0, _SlowTorch())
'''
TORCH_DELAY_S = 25          # the line must show within 15 s of the first visit, long before torch is in
TITLE = re.compile(r"^Where does the model look\?$")          # Explore's title (case matters: the line says it too)


@pytest.fixture
def cold_server(monkeypatch, tmp_path, request):
    """The demo app on a server whose first `import torch` takes TORCH_DELAY_S more seconds."""
    (tmp_path / "sitecustomize.py").write_text(SLOW_TORCH)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("ATTNVIZ_TEST_TORCH_DELAY", str(TORCH_DELAY_S))
    return request.getfixturevalue("demo_server")


def test_a_cold_first_visit_shows_a_line_at_once(cold_server):
    """The first visit to a fresh server: a line says the app is starting while the libraries load, instead of
    a blank page until torch is imported and the model loaded."""
    with _page() as page:
        t0 = time.monotonic()
        page.goto(cold_server)
        page.get_by_text(re.compile("^Starting up")).first.wait_for(timeout=(TORCH_DELAY_S - 10) * 1000)
        waited = time.monotonic() - t0
        assert page.get_by_text(TITLE).count() == 0                               # torch is still loading
        page.screenshot(path=str(ARTIFACTS / "browser-cold-start.png"))
        page.get_by_text(TITLE).first.wait_for(timeout=(TORCH_DELAY_S + 120) * 1000)
        _wait_idle(page)
        _no_exception(page)
        assert page.get_by_text(re.compile("^Starting up")).count() == 0          # gone once the page is drawn
        assert waited < TORCH_DELAY_S - 10


LABEL_PX = """(sel) => [...document.querySelectorAll(sel)]
    .filter(el => el.textContent.trim() && el.getBoundingClientRect().width > 0)
    .map(el => [el.textContent.trim(), parseFloat(getComputedStyle(el).fontSize)])"""
SMALLEST_LABEL_PX = 14       # outside presentation mode (presentation mode: 18 and up)


def test_thumbnail_and_bar_labels_are_readable_at_1440x900(demo_server):
    """Outside presentation mode too: the Heads thumbnails' layer / head labels and the prediction bars' labels
    are at least 14 px (Streamlit's chart theme shrank them to ~8 and ~9 px)."""
    with _page(1440, 900) as page:
        page.goto(f"{demo_server}/?sample={quote(SCENE)}")
        page.get_by_text("Top 5 predictions").first.wait_for()
        _wait_idle(page)
        page.locator(".js-plotly-plot .bartext").first.wait_for()
        bars = page.evaluate(LABEL_PX, '.js-plotly-plot .bartext, .js-plotly-plot .ytick text')
        assert bars and min(px for _, px in bars) >= SMALLEST_LABEL_PX, bars
        page.goto(f"{demo_server}/heads?sample={quote(SCENE)}")
        page.get_by_text(re.compile("^Attention heads")).first.wait_for()
        _wait_idle(page)
        page.get_by_text("L0", exact=True).first.wait_for()          # the thumbnails' figure is drawn
        ticks = page.evaluate(LABEL_PX, '[data-testid="stMain"] .js-plotly-plot .xtick text, '
                                        '[data-testid="stMain"] .js-plotly-plot .ytick text')
        labels = [(t, px) for t, px in ticks if re.fullmatch(r"[Lh]\d+", t)]
        assert labels and min(px for _, px in labels) >= SMALLEST_LABEL_PX, labels
        _no_exception(page)
