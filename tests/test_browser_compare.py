"""The Compare page in a real browser, offline: the demo ViT beside the demo CNN on a shapes scene.

Uses tests/test_browser.py's server and helpers (Debian's Chromium through Playwright, never
`playwright install`); SKIPPED loudly without Chromium unless ATTNVIZ_REQUIRE_BROWSER=1. Screenshots go
to test-artifacts/browser-compare-*.png.
"""
import re

from .test_browser import (ARTIFACTS, _demo_built, _go_to, _no_exception, _opened, _pick,  # noqa: F401
                           _recolour, _wait_idle, browser_or_skip, server)


def test_compare_page_offline_two_models_own_views_and_deletion(server):
    assert _demo_built("demo-vit-shapes") and _demo_built("demo-cnn-shapes"), "a demo model is missing"
    with _opened(server) as page:
        page.locator('[data-testid="stSidebar"] [data-testid="stButtonGroup"] button').filter(
            has_text=re.compile("^scene")).first.click()
        _wait_idle(page)
        _go_to(page, "Compare", "Two models, one image")
        page.get_by_text(re.compile(r"^A · demo-vit-shapes")).first.wait_for()
        page.get_by_text(re.compile(r"^B · demo-cnn-shapes")).first.wait_for()
        _wait_idle(page)
        _no_exception(page)
        main = page.locator('[data-testid="stMain"]')
        assert main.locator('[data-testid="stImage"] img').count() == 2
        assert main.locator(".attnviz-legend").count() == 2
        # the address bar is rewritten at the end of the run: wait for it rather than read it at once
        page.wait_for_url(re.compile(r"model_a=demo-vit-shapes.*model_b=demo-cnn-shapes|"
                                     r"model_b=demo-cnn-shapes.*model_a=demo-vit-shapes"), timeout=15_000)
        _recolour(page, 2)                                   # both sides' map panels, in the new colours
        assert main.locator(".attnviz-legend").count() == 2

        _pick(page, "Method", "each model's own")
        page.get_by_text("different units").first.wait_for()
        _wait_idle(page)
        _no_exception(page)
        page.wait_for_url(re.compile(r"method=own"), timeout=15_000)
        page.get_by_role("button", name="Deletion / insertion AUC").first.click()
        page.get_by_text(re.compile(r"^Area under the curve \(AUC\): deletion")).first.wait_for()
        _wait_idle(page)
        _no_exception(page)
        page.screenshot(path=str(ARTIFACTS / "browser-compare-own.png"), full_page=True)
