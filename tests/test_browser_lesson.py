"""The "How attention works" page in a real browser, offline, on the demo model: click a patch, walk the steps.

Uses tests/test_browser.py's server and helpers (Debian's Chromium through Playwright, never
`playwright install`); SKIPPED loudly without Chromium unless ATTNVIZ_REQUIRE_BROWSER=1. Screenshots go
to test-artifacts/browser-lesson-*.png.
"""
import re
from pathlib import Path

import pytest

from .test_browser import (ARTIFACTS, _go_to, _no_exception, _opened, _wait_idle, browser_or_skip,  # noqa: F401
                           server)

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo-vit-shapes"


@pytest.fixture
def demo_server(monkeypatch, request):
    """The app served with the offline demo model (the one a classroom without network gets)."""
    if not (DEMO / "model.safetensors").is_file():
        pytest.fail(f"{DEMO} is missing: run `python -m attnviz.demo.train`.")
    monkeypatch.setenv("ATTNVIZ_BROWSER_MODEL", str(DEMO))
    return request.getfixturevalue("server")


def _click_patch(page, row: int, col: int, cols: int = 8):
    """Click patch (row, col) on the lesson's patch picker (one marker per patch, row by row), via Plotly's
    own axis mapping."""
    point = page.evaluate(
        """([i]) => {
            const gd = [...document.querySelectorAll('.js-plotly-plot')]
                .find(g => g.data && g.data.length && (g.data[0].hovertemplate || '').includes('click to query'));
            const tr = gd._fullData[0];                    // x / y decoded from plotly's typed arrays
            const L = gd._fullLayout, r = gd.getBoundingClientRect();
            return [r.left + L.xaxis._offset + L.xaxis.d2p(tr.x[i]), r.top + L.yaxis._offset + L.yaxis.d2p(tr.y[i])];
        }""", [row * cols + col])
    page.mouse.move(point[0], point[1])
    page.wait_for_timeout(200)
    page.mouse.click(point[0], point[1])


def _step(page, n: int):
    page.get_by_text(re.compile(rf"^Step {n} of \d+:")).first.wait_for()
    _wait_idle(page)
    _no_exception(page)


def test_lesson_page_offline_click_a_patch_and_walk_the_steps(demo_server):
    with _opened(demo_server) as page:
        # A shapes scene: what the demo model knows.
        page.locator('[data-testid="stSidebar"] [data-testid="stButtonGroup"] button').filter(
            has_text=re.compile("^scene")).first.click()
        _wait_idle(page)
        _go_to(page, "How attention works", "Step 1 of 10")
        page.get_by_text("cuts it into 8×8 = 64 patches of 8×8 pixels").first.wait_for()

        _click_patch(page, 2, 5)
        page.get_by_text(re.compile(r"query patch \(2, 5\)$")).first.wait_for()
        page.get_by_text("The query is patch (2, 5), token 22 of the sequence").first.wait_for()
        _wait_idle(page)
        _no_exception(page)
        page.screenshot(path=str(ARTIFACTS / "browser-lesson-step1.png"))

        for n in range(2, 6):
            page.get_by_role("button", name="Next step →").click()
            _step(page, n)
        check = page.get_by_text(re.compile(r"^Largest difference from the model's own attention row")).first
        check.wait_for()
        diff = float(re.search(r"row: ([0-9.e+-]+) \(within 1e-05\)", check.inner_text()).group(1))
        assert diff <= 1e-5
        assert page.locator('[data-testid="stAlertContentError"]').count() == 0
        page.screenshot(path=str(ARTIFACTS / "browser-lesson-softmax.png"))

        # Another patch clicked on a later step: the step's numbers follow it.
        _click_patch(page, 6, 1)
        page.get_by_text(re.compile(r"query patch \(6, 1\)$")).first.wait_for()
        _wait_idle(page)
        _no_exception(page)
        assert page.get_by_text(re.compile(r"^Step 5 of 10")).count() == 1

        for n in range(6, 11):
            page.get_by_role("button", name="Next step →").click()
            _step(page, n)
        page.get_by_role("link").filter(has_text="Caption: cross-attention").first.wait_for()
        _wait_idle(page)
        page.screenshot(path=str(ARTIFACTS / "browser-lesson-step10.png"))

        # Everything on one page.
        page.get_by_text("Guided walk-through, one step at a time").click()
        page.get_by_text(re.compile(r"^9 · Heads that find objects")).first.wait_for()
        _wait_idle(page)
        _no_exception(page)
        assert page.locator('[data-testid="stAlertContentError"]').count() == 0
        page.set_viewport_size({"width": 1400, "height": 7000})     # the app scrolls inside its own pane
        _wait_idle(page)
        page.screenshot(path=str(ARTIFACTS / "browser-lesson-all.png"))
