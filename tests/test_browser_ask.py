"""The Ask page in a real browser, offline, on a tiny random LLaVA: the question box, the answer's word pills,
the map, a typed answer re-scored, the methods side by side.

Uses tests/test_browser.py's server and helpers (Debian's Chromium through Playwright); SKIPPED loudly without
Chromium unless ATTNVIZ_REQUIRE_BROWSER=1. A screenshot goes to test-artifacts/browser-ask.png.
"""
import re

import pytest

from attnviz.adapters.vlm import VlmAdapter

from .test_browser import (ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, _no_exception,  # noqa: F401
                           _wait_idle, browser_or_skip, server)


@pytest.fixture
def tiny_llava_model(tmp_path, monkeypatch):
    a = VlmAdapter.tiny("llava", seed=6)
    a.model.save_pretrained(tmp_path, safe_serialization=True)
    a.processor.save_pretrained(tmp_path)
    monkeypatch.setenv("ATTNVIZ_BROWSER_MODEL", str(tmp_path))     # read by the server fixture
    return tmp_path


def test_ask_page_in_chromium(tiny_llava_model, server):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1250})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{server}/ask")
            page.get_by_text("Which regions produced each word of the answer?").first.wait_for()
            page.wait_for_selector('[data-testid="stMain"] [data-testid="stImage"] img')
            _wait_idle(page)
            _no_exception(page)
            main = page.locator('[data-testid="stMain"]')
            page.get_by_text(re.compile(r"^Answer \(the model's answer\)")).first.wait_for()
            assert main.locator(".attnviz-legend").count() >= 1
            box = main.get_by_role("textbox", name="Answer to check (optional)")
            box.fill("red cat")
            box.press("Enter")
            page.get_by_text(re.compile(r"^Answer \(your answer, scored by the model\): red cat")).first.wait_for()
            _wait_idle(page)
            _no_exception(page)
            assert main.get_by_text(re.compile("^answer relevance for “red”")).count() >= 1
            main.get_by_text("Methods side by side").click()
            main.get_by_text(re.compile("^image attention: “red”")).first.wait_for()
            _wait_idle(page)
            _no_exception(page)
            page.screenshot(path=str(ARTIFACTS / "browser-ask.png"), full_page=True)
        finally:
            browser.close()
