"""Screenshots of Explore, Heads and the Lesson on a photo, at 1440×900 and in presentation mode at 1280×720.

    python docs/screenshots/take.py http://127.0.0.1:8501 after      # a running `streamlit run app.py`

Drives Debian's Chromium (/usr/bin/chromium) through Playwright (never `playwright install`). Presentation
mode is switched on from the link (present=True); a tree that ignores the link gets the sidebar's toggle
clicked. Each PNG is quantised to 256 colours to stay small.
"""
import re
import sys
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent
PHOTO = "astronaut"
PAGES = (("explore", "", "Where does the model look?"), ("heads", "heads", "Attention heads"),
         ("lesson", "lesson", "How attention works"))
TIMEOUT = 300_000


def _idle(page) -> None:
    """The script run finished, every picture on the page decoded, and no skeleton left."""
    page.wait_for_timeout(1500)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=TIMEOUT)
    page.wait_for_function("""() => [...document.querySelectorAll('[data-testid="stMain"] img')]
                                     .every(i => i.complete && i.naturalWidth > 0)
                                 && !document.querySelector('[data-testid="stSkeleton"]')""", timeout=TIMEOUT)
    page.wait_for_timeout(2000)


def _present_on(page) -> None:
    """Presentation mode on: the link did it (root font 20 px), or click the sidebar's toggle."""
    if page.evaluate("getComputedStyle(document.documentElement).fontSize") == "20px":
        return
    toggle = page.get_by_text("Presentation mode", exact=True).first
    if not toggle.is_visible():
        page.locator('[data-testid="stExpandSidebarButton"], [data-testid="collapsedControl"]').first.click()
    toggle.click()
    _idle(page)


def shoot(base: str, prefix: str) -> list[Path]:
    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        for present, (w, h) in ((False, (1440, 900)), (True, (1280, 720))):
            page = browser.new_page(viewport={"width": w, "height": h})
            for name, path, title in PAGES:
                query = f"sample={PHOTO}" + ("&present=True" if present else "")
                page.goto(f"{base}/{path}?{query}", timeout=TIMEOUT)
                page.get_by_text(re.compile("^" + re.escape(title))).first.wait_for(timeout=TIMEOUT)
                _idle(page)
                if present:
                    _present_on(page)
                page.mouse.move(w - 5, h - 5)
                file = HERE / f"{prefix}-{name}-{'present-1280x720' if present else '1440x900'}.png"
                page.screenshot(path=str(file))
                Image.open(file).convert("RGB").quantize(256).save(file, optimize=True)
                out.append(file)
            page.close()
        browser.close()
    return out


if __name__ == "__main__":
    for f in shoot(sys.argv[1].rstrip("/"), sys.argv[2]):
        print(f, f.stat().st_size)
