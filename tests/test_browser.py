"""End to end in a real browser: `streamlit run app.py` driven by Chromium through Playwright.

Runs whenever Chromium and the playwright package are present; otherwise it is
SKIPPED loudly, and with ATTNVIZ_REQUIRE_BROWSER=1 (CI) it fails instead.
Never calls `playwright install`: it drives the system's Chromium (Debian:
`apt-get install chromium`). Screenshots and the server log go to
test-artifacts/. ATTNVIZ_BROWSER_MODEL picks the model (default: a tiny random
ViT); ATTNVIZ_UPDATE_SCREENSHOT=1 also writes assets/screenshot.png for the README.
"""
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("ATTNVIZ_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BROKEN_SENTENCE = "The file is not a supported image (PNG, JPEG, WebP, GIF or BMP)."
TIMEOUT_MS = 90_000


def _missing_browser() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package 'playwright' is not installed (pip install playwright)"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    return ""


@pytest.fixture
def browser_or_skip(request):
    reason = _missing_browser()
    if reason:
        if os.environ.get("ATTNVIZ_REQUIRE_BROWSER") == "1":
            pytest.fail(f"ATTNVIZ_REQUIRE_BROWSER=1 but {reason}.")
        loud = f"SKIPPED browser end-to-end test: {reason}."
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capman = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capman is not None:   # straight to the terminal, past output capture
            with capman.global_and_fixture_disabled():
                reporter.write_line("")
                reporter.write_line("!" * 12 + f" {loud} " + "!" * 12, yellow=True, bold=True)
        warnings.warn(loud)
        pytest.skip(loud)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(browser_or_skip, saved_models):
    """A headless `streamlit run app.py` on a free localhost port; yields its URL."""
    ARTIFACTS.mkdir(exist_ok=True)
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               ATTNVIZ_MODEL=os.environ.get("ATTNVIZ_BROWSER_MODEL") or str(saved_models["vit"]))
    log = open(ARTIFACTS / "browser-server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not become healthy; see {ARTIFACTS / 'browser-server.log'}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_idle(page, timeout_ms=TIMEOUT_MS):
    """Until the script run the last interaction started has finished."""
    page.wait_for_timeout(300)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=timeout_ms)


def _pick(page, label: str, option: str):
    """Choose ``option`` (the start of its text) in the selectbox labelled ``label``. A click sometimes only
    focuses the box without opening its list (seen on the Caption page after a pill click): click again."""
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first
    wanted = page.get_by_role("option", name=re.compile("^" + re.escape(option))).first
    for _ in range(3):
        box.click()
        try:
            wanted.wait_for(timeout=5_000)
            break
        except Exception:                    # the list did not open: try again
            continue
    wanted.click()


def _no_exception(page):
    assert page.locator('[data-testid="stException"]').count() == 0, "the page shows a Python exception"


def _recolour(page, n_maps: int) -> None:
    """A colormap change: every one of the page's ``n_maps`` overlays is drawn again in the new colours (the
    map panels rerun), none goes missing, and nothing else on the page is lost."""
    imgs = page.locator('[data-testid="stMain"] [data-testid="stImage"] img')
    before = [imgs.nth(i).get_attribute("src") for i in range(imgs.count())]
    assert len(before) == n_maps
    _pick(page, "Colormap", "viridis")
    page.wait_for_function(
        """before => { const s = [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stImage"] img')]
                                .map(i => i.getAttribute('src'));
                       return s.length === before.length && s.every((x, i) => x !== before[i]); }""",
        arg=before)
    _wait_idle(page)
    _no_exception(page)


def _click_thumbnail(page, layer: int, head: int):
    """Click the centre of thumbnail (layer, head) in the heads mosaic, via Plotly's own axis mapping."""
    point = page.evaluate(
        """([layer, head]) => {
            const gd = [...document.querySelectorAll('.js-plotly-plot')]
                .find(g => g.data && g.data.length > 1 && g.data[1].customdata
                           && g.data[1].customdata.length && g.data[1].customdata[0].length === 2
                           && g.data[1].hovertemplate && g.data[1].hovertemplate.includes('head'));
            const tr = gd.data[1];
            const i = tr.customdata.findIndex(c => c[0] === layer && c[1] === head);
            const L = gd._fullLayout, r = gd.getBoundingClientRect();
            return [r.left + L.xaxis._offset + L.xaxis.d2p(tr.x[i]), r.top + L.yaxis._offset + L.yaxis.d2p(tr.y[i])];
        }""", [layer, head])
    page.mouse.move(point[0], point[1])
    page.wait_for_timeout(200)
    page.mouse.click(point[0], point[1])


def test_upload_explain_switch_heads_and_reject_a_broken_file(server, photo, tmp_path):
    from playwright.sync_api import sync_playwright

    from attnviz.render import to_png_bytes

    big_photo = photo.resize((360, 240))
    timings = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1250})
            page.set_default_timeout(TIMEOUT_MS)
            t0 = time.perf_counter()
            page.goto(server)
            page.wait_for_selector('[data-testid="stImage"] img')            # the default sample's overlay
            timings["open_to_first_map_s"] = time.perf_counter() - t0          # includes loading the model
            _wait_idle(page)
            _no_exception(page)
            page.screenshot(path=str(ARTIFACTS / "browser-start.png"))

            # Upload through the file input; wait for the new overlay.
            before = page.locator('[data-testid="stImage"] img').first.get_attribute("src")
            t0 = time.perf_counter()
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(
                files=[{"name": "photo.png", "mimeType": "image/png", "buffer": to_png_bytes(big_photo)}])
            page.wait_for_function(
                """before => { const i = document.querySelector('[data-testid="stImage"] img');
                               return i && i.src !== before && i.complete; }""", arg=before)
            timings["upload_to_first_map_s"] = time.perf_counter() - t0
            _wait_idle(page)

            # Pick a method; wait for its map.
            t0 = time.perf_counter()
            _pick(page, "Method", "rollout")
            page.get_by_text(re.compile(r"^rollout · ")).first.wait_for()
            page.wait_for_selector('[data-testid="stImage"] img')
            _wait_idle(page)
            timings["method_switch_s"] = time.perf_counter() - t0
            _no_exception(page)
            assert page.locator('[data-testid="stImage"] img').count() >= 1
            assert page.locator('[data-testid="stAlertContentError"]').count() == 0
            # The link reproduces it; the URL is rewritten after the rerun, so wait for it under load.
            page.wait_for_url(re.compile(r"[?&]method=rollout(&|$)"))
            page.screenshot(path=str(ARTIFACTS / "browser-explore.png"))

            # The hover tab draws the interactive figure (lazily, when opened), then back to the overlay.
            page.get_by_role("tab", name="Hover for values").click()
            page.wait_for_function("document.querySelectorAll('[data-testid=\"stPlotlyChart\"]').length >= 2")
            _wait_idle(page)
            _no_exception(page)
            page.get_by_role("tab", name="Overlay").click()
            page.wait_for_selector('[data-testid="stImage"] img')
            _wait_idle(page)

            # The faithfulness panel: both checks on click, drawn, no error.
            page.get_by_text(re.compile(r"^Is the .* map faithful\?")).first.click()
            # the expander reruns the script when it opens (on_change="rerun"): a click on the button while that
            # run redraws the panel can be lost (one 90-s timeout in a full run, session 13), so wait for it
            _wait_idle(page)
            charts = page.locator('[data-testid="stPlotlyChart"]').count()
            t0 = time.perf_counter()
            page.get_by_role("button", name="Run deletion / insertion").click()
            page.get_by_text(re.compile(r"^Area under the curve \(AUC\): deletion")).first.wait_for()
            timings["deletion_insertion_s"] = time.perf_counter() - t0
            _wait_idle(page)
            page.get_by_role("button", name="Randomise the model's weights").click()
            page.get_by_text("The map as blocks are randomised").first.wait_for()
            _wait_idle(page)
            _no_exception(page)
            assert page.locator('[data-testid="stPlotlyChart"]').count() == charts + 2
            assert page.locator('[data-testid="stAlertContentError"]').count() == 0
            page.screenshot(path=str(ARTIFACTS / "browser-faithfulness.png"), full_page=True)

            # Heads page: switch heads with the picker, then by clicking a thumbnail.
            page.locator('[data-testid="stSidebarNav"] a').filter(has_text="Heads").click()
            page.get_by_text(re.compile(r"^Layer \d+, mean of \d+ heads")).first.wait_for()
            _wait_idle(page)
            _no_exception(page)
            t0 = time.perf_counter()
            _pick(page, "Head", "head 1")
            page.get_by_text(re.compile(r"^Layer \d+, head 1:")).first.wait_for()
            timings["head_switch_picker_s"] = time.perf_counter() - t0
            _wait_idle(page)
            t0 = time.perf_counter()
            _click_thumbnail(page, 0, 2)
            page.get_by_text(re.compile(r"^Layer 0, head 2:")).first.wait_for()
            timings["head_switch_click_s"] = time.perf_counter() - t0
            _wait_idle(page)
            _no_exception(page)
            # The picker moves away, then the same thumbnail is clicked again: it must count.
            _pick(page, "Head", "head 1")
            page.get_by_text(re.compile(r"^Layer 0, head 1:")).first.wait_for()
            _wait_idle(page)
            _click_thumbnail(page, 0, 2)
            page.get_by_text(re.compile(r"^Layer 0, head 2:")).first.wait_for()
            _wait_idle(page)
            _no_exception(page)
            page.screenshot(path=str(ARTIFACTS / "browser-heads.png"))

            # A broken file: one error sentence, no traceback, the sidebar still works.
            page.locator('[data-testid="stSidebarNav"] a').filter(has_text="Explore").click()
            page.wait_for_selector('[data-testid="stImage"] img')
            _wait_idle(page)
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(
                files=[{"name": "broken.png", "mimeType": "image/png", "buffer": b"not an image at all\n" * 8}])
            page.get_by_text(BROKEN_SENTENCE).first.wait_for()
            _wait_idle(page)
            _no_exception(page)
            assert page.locator('[data-testid="stAlertContentError"]').count() == 1
            page.screenshot(path=str(ARTIFACTS / "browser-error.png"))
        finally:
            browser.close()

    (ARTIFACTS / "browser-timings.json").write_text(json.dumps(timings, indent=2))
    print("browser timings:", json.dumps({k: round(v, 2) for k, v in timings.items()}))
    if os.environ.get("ATTNVIZ_UPDATE_SCREENSHOT") == "1":
        _save_readme_screenshot(ARTIFACTS / "browser-start.png", ROOT / "assets" / "screenshot.png")


def _demo_built(name: str) -> bool:
    from attnviz import catalog
    entry = catalog.load_catalog().get(name)
    return entry is not None and catalog.is_available_offline(entry)


@contextlib.contextmanager
def _opened(server):
    """A page on the app, its first map drawn; the browser closes afterwards."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1250})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(server)
            page.wait_for_selector('[data-testid="stImage"] img')
            _wait_idle(page)
            yield page
        finally:
            browser.close()


def _go_to(page, nav_label: str, sentence: str) -> None:
    """Open a page from the sidebar and wait for ``sentence`` on it."""
    page.locator('[data-testid="stSidebarNav"] a').filter(has_text=nav_label).click()
    page.get_by_text(sentence).first.wait_for()
    _wait_idle(page)
    _no_exception(page)


def test_caption_page_offers_the_demo_captioner_then_maps_each_word(server):
    """The Caption page on a classifier says so in one sentence; with the demo captioner, words and maps."""
    with _opened(server) as page:
        _go_to(page, "Caption", "is not a captioning model")
        assert _demo_built("demo-captioner-shapes"), "models/demo-captioner-shapes is missing"
        page.get_by_role("button", name=re.compile("^Use the demo captioner")).click()
        page.get_by_text(re.compile(r"^Caption \(written by the model\)")).first.wait_for()
        page.wait_for_selector('[data-testid="stImage"] img')
        _wait_idle(page)
        _no_exception(page)
        # The demo button showed a shapes scene; another scene gives another caption. Its words are
        # pills: click the last one.
        caption = page.get_by_text(re.compile(r"^Caption \(written by the model\)")).first
        before = caption.inner_text()
        page.locator('[data-testid="stSidebar"] [data-testid="stButtonGroup"] button').filter(
            has_text=re.compile("^scene")).nth(1).click()
        page.wait_for_function(       # the new image's caption (the old one stays up while the model runs)
            """before => [...document.querySelectorAll('p')].some(
                   p => p.innerText.startsWith('Caption (written by the model)') && p.innerText !== before)""",
            arg=before)
        _wait_idle(page)
        _no_exception(page)
        # The group's help icon is a button without text: count the word pills only.
        pills = page.locator('[data-testid="stButtonGroup"]').filter(has_text="Click a word").locator(
            "button").filter(has_text=re.compile(r"\S"))
        n = pills.count()
        assert n >= 2
        last = pills.nth(n - 1).inner_text().strip()
        pills.nth(n - 1).click()
        page.get_by_text(f"cross attention for “{last}”").first.wait_for()
        _wait_idle(page)
        _no_exception(page)
        assert page.locator('[data-testid="stImage"] img').count() == 1 + n      # the word's map + the strip
        assert page.locator('[data-testid="stAlertContentError"]').count() == 0
        _recolour(page, 1 + n)                                # both map panels: the word's map and the strip
        assert page.get_by_text(f"cross attention for “{last}”").count() >= 1
        page.screenshot(path=str(ARTIFACTS / "browser-caption.png"))


def test_prompts_page_offers_the_demo_clip_then_maps_each_prompt(server):
    """The Text prompts page on a classifier says so in one sentence; with the demo CLIP, a map per prompt."""
    with _opened(server) as page:
        _go_to(page, "Text prompts", "is not an image–text model")
        assert _demo_built("demo-clip-shapes"), "models/demo-clip-shapes is missing"
        page.get_by_role("button", name=re.compile("^Use the demo CLIP model")).click()
        page.locator(".attnviz-words").first.wait_for()
        _wait_idle(page)
        _no_exception(page)
        prompts = [p for p in page.get_by_role("textbox", name="Prompts, one per line").input_value().splitlines() if p.strip()]
        assert len(prompts) >= 2
        assert page.locator(".attnviz-words").count() == len(prompts)
        assert page.locator('[data-testid="stImage"] img').count() == len(prompts)   # one map per prompt
        assert page.locator('[data-testid="stAlertContentError"]').count() == 0
        # New prompts: the maps follow.
        box = page.get_by_role("textbox", name="Prompts, one per line")
        box.fill("a red circle\na blue square")
        box.press("Control+Enter")
        page.wait_for_function("document.querySelectorAll('.attnviz-words').length === 2")
        _wait_idle(page)
        _no_exception(page)
        assert page.locator('[data-testid="stImage"] img').count() == 2
        _recolour(page, 2)
        assert page.locator(".attnviz-words").count() == 2
        page.screenshot(path=str(ARTIFACTS / "browser-prompts.png"))


def _legend_ranges(page) -> list[tuple[float, float]]:
    """(low, high) of every map legend on the page: the tick texts under each colour bar."""
    ticks = page.locator(".attnviz-legend").evaluate_all(
        "els => els.map(e => [...e.children[1].children].map(s => s.textContent))")
    return [(float(t[0]), float(t[-1])) for t in ticks]


def test_links_comparisons_uploads_over_the_cap_and_caption_words(server, photo):
    """Issue 16 in a real browser: a link names its sample and reopens it; a comparison with a signed
    method keeps every map on its own scale with a legend; a file over the 10 MB cap is one sentence in
    the page with no image left on screen; a long caption's words wrap and every one can be clicked."""
    from attnviz.render import to_png_bytes
    with _opened(server) as page:
        # A link carries the sample: pick another scene, open the address in a new tab.
        scene = page.locator('[data-testid="stSidebar"] [data-testid="stButtonGroup"] button').filter(
            has_text=re.compile("^scene")).nth(2)
        name = scene.inner_text().strip()
        scene.click()
        page.wait_for_url(re.compile(r"[?&]sample=scene"))
        _wait_idle(page)
        other = page.context.browser.new_page(viewport={"width": 1400, "height": 1250})
        other.set_default_timeout(TIMEOUT_MS)
        other.goto(page.url)
        other.wait_for_selector('[data-testid="stImage"] img')
        _wait_idle(other)
        _no_exception(other)
        chosen = other.locator('[data-testid="stSidebar"] [data-testid="stButtonGroup"] button[data-selected]')
        assert chosen.count() == 1 and chosen.first.inner_text().strip() == name
        assert other.get_by_text(f"the sample {name}").count() >= 1
        other.close()

        # A comparison with a signed method: three maps, three legends, each on its own range.
        group = page.locator('[data-testid="stButtonGroup"]').filter(has_text="Compare side by side")
        for label in ("rollout", "input x gradient"):
            group.locator("button").filter(has_text=re.compile("^" + label)).first.click()
            _wait_idle(page)
        page.wait_for_function("document.querySelectorAll('.attnviz-legend').length === 3")
        _wait_idle(page)
        _no_exception(page)
        assert page.locator('[data-testid="stMain"] [data-testid="stImage"] img').count() == 3
        (rel_lo, rel_hi), (roll_lo, roll_hi), (ixg_lo, ixg_hi) = _legend_ranges(page)
        assert ixg_lo == pytest.approx(-ixg_hi) and ixg_hi > 0            # the signed map: symmetric about 0
        assert 0 <= rel_lo < rel_hi and 0 <= roll_lo < roll_hi            # the others keep their own ranges
        assert (rel_lo, rel_hi) != (roll_lo, roll_hi)
        page.screenshot(path=str(ARTIFACTS / "browser-compare.png"))

        # A file over the cap: the sentence in the page (not a tooltip), no image left on screen.
        big = to_png_bytes(photo) + b"\0" * int(12.6 * 2 ** 20)
        page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(
            files=[{"name": "holiday.png", "mimeType": "image/png", "buffer": big}])
        page.locator('[data-testid="stMain"] [data-testid="stAlertContentError"]').filter(
            has_text="holiday.png is 12.6 MB, over the 10 MB limit").first.wait_for()
        _wait_idle(page)
        _no_exception(page)
        assert page.locator('[data-testid="stMain"] [data-testid="stImage"] img').count() == 0
        page.screenshot(path=str(ARTIFACTS / "browser-over-cap.png"))

        # A caption's words wrap at 1024 px: every pill inside its group's box, and the last one works.
        page.set_viewport_size({"width": 1024, "height": 900})
        page.locator('[data-testid="stSidebar"] [data-testid="stButtonGroup"] button').filter(
            has_text=re.compile("^scene")).first.click()
        page.wait_for_selector('[data-testid="stMain"] [data-testid="stImage"] img')
        _wait_idle(page)
        _go_to(page, "Caption", "is not a captioning model")
        assert _demo_built("demo-captioner-shapes"), "models/demo-captioner-shapes is missing"
        page.get_by_role("button", name=re.compile("^Use the demo captioner")).click()
        page.get_by_text(re.compile(r"^Caption \(written by the model\)")).first.wait_for()
        _wait_idle(page)
        box = page.get_by_role("textbox", name="Caption to score (optional)")
        box.fill("a cyan square , a yellow circle and a blue triangle and a dog")
        box.press("Enter")
        page.get_by_text(re.compile(r"^Caption \(typed by you")).first.wait_for()
        _wait_idle(page)
        _no_exception(page)
        group = page.locator('[data-testid="stButtonGroup"]').filter(has_text="Click a word")
        pills = group.locator("button").filter(has_text=re.compile(r"\S"))
        n = pills.count()
        assert n >= 11
        right = group.bounding_box()["x"] + group.bounding_box()["width"]
        boxes = [pills.nth(i).bounding_box() for i in range(n)]
        assert all(b["x"] + b["width"] <= right + 1 for b in boxes), "a word pill is cut off or scrolled away"
        assert len({round(b["y"]) for b in boxes}) >= 2                   # they wrap onto more rows
        assert page.get_by_text("Read in pieces").count() >= 1            # "dog" is spelt out, and said so
        last = pills.nth(n - 1)
        word = last.inner_text().strip()
        last.click()
        page.get_by_text(f"for “{word}”").first.wait_for()
        _wait_idle(page)
        _no_exception(page)
        page.screenshot(path=str(ARTIFACTS / "browser-caption-words.png"))


def _save_readme_screenshot(src: Path, dst: Path, limit: int = 400_000) -> None:
    """The README's screenshot: palette PNG (much smaller than a full-colour one), under ``limit`` bytes."""
    from PIL import Image
    img = Image.open(src).convert("RGB")
    for colours in (256, 128, 64):
        img.quantize(colours, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)
        if dst.stat().st_size < limit:
            return
    shutil.copyfile(src, dst)
