"""Issue 20 under AppTest: the first picture must be the right one on a real model's situations,
built from random weights (tests/real_situations.py): an outlier patch, a 12-layer model, a headless
backbone. Each test asserts what a user sees."""
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr
from streamlit.testing.v1 import AppTest

from tests import real_situations as real
from tests.test_app import _clear, _ok

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
HEADS = "attnviz/ui/pages/heads.py"
LESSON = "attnviz/ui/pages/lesson.py"
COLOURS = 256                 # the colormap's lookup table: what the eye can tell apart


@pytest.fixture(scope="module")
def outlier_dir(tmp_path_factory):
    return real.build(tmp_path_factory.mktemp("outlier-dinov2"))


@pytest.fixture
def app_on(monkeypatch):
    """An AppTest factory on the model folder given (ATTNVIZ_MODEL), caches cleared around it."""
    monkeypatch.delenv("ATTNVIZ_ALLOW_CUSTOM_MODELS", raising=False)
    _clear()

    def make(folder):
        monkeypatch.setenv("ATTNVIZ_MODEL", str(folder))
        return AppTest.from_file(APP, default_timeout=120)
    yield make
    _clear()


def _legends(at) -> list[tuple[float, float, str]]:
    """(low, high, title) of every colour legend on the page, as the page prints them."""
    out = []
    for md in at.markdown:
        if "attnviz-legend" not in md.value:
            continue
        ticks = re.findall(r"<span>([^<]*)</span>", md.value)
        title = re.findall(r'text-align: center; opacity: 0.8">([^<]*)</div>', md.value)[0]
        out.append((float(ticks[0]), float(ticks[-1]), title))
    return out


def _sample_image(at):
    from attnviz.images import load_image
    from attnviz.ui.state import sample_images
    return load_image(sample_images()[at.session_state["sample"]])


def _seen(m: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The colour (lookup-table entry) each value gets on a linear scale from lo to hi, clipped."""
    t = np.clip((m - lo) / (hi - lo), 0.0, 1.0)
    return np.minimum((t * COLOURS).astype(int), COLOURS - 1)


# --- 1. the colour scale does not collapse to one patch --------------------------------------------

def test_the_model_has_the_real_outlier(outlier_dir):
    """The situation itself: one patch takes about 60 % of the last layer's CLS attention (mean of heads),
    as on a trained DINOv2, and it is rollout's largest patch by far."""
    import attnviz
    from attnviz.images import load_image
    from attnviz.ui.state import sample_images
    adapter = attnviz.load_model(str(outlier_dir))
    cap = attnviz.capture(adapter, load_image(sample_images()["coffee"]))
    p = real.outlier_patch()
    share = float(cap.attentions[-1][:, 0, 1 + p].mean())            # [H, T, T]: CLS row, the outlier's column
    assert 0.45 <= share <= 0.8
    m = attnviz.explain(adapter, cap, "rollout").map.ravel()
    assert m.argmax() == p and m[p] > 20 * np.percentile(np.delete(m, p), 99)


@pytest.mark.parametrize("method", ["rollout", "attention"])
def test_default_scale_keeps_the_other_patches_visible(app_on, outlier_dir, method):
    """Explore's default colours on a model with an outlier patch: the other 255 patches keep their order
    in colour (rank correlation with the raw map >= 0.9) and span most of the colour bar, instead of all
    sitting at its bottom under the one outlier; the legend says what is clipped."""
    import attnviz
    at = app_on(outlier_dir).run()
    at.button_group(key="sample").set_value("coffee").run()
    at.selectbox(key="method").set_value(method).run()
    _ok(at)
    (lo, hi, title), = _legends(at)
    adapter = attnviz.load_model(str(outlier_dir))
    cap = attnviz.capture(adapter, _sample_image(at))
    raw = attnviz.explain(adapter, cap, method).map.ravel()           # computed here, not read from the page
    others = np.delete(raw, real.outlier_patch())
    seen = _seen(others, lo, hi)
    assert spearmanr(seen, others).statistic >= 0.9
    assert (seen.max() - seen.min()) / (COLOURS - 1) >= 0.8            # min-max: under 0.1
    assert _seen(raw, lo, hi)[real.outlier_patch()] == COLOURS - 1     # the outlier still at the top colour
    assert "values above the 99th percentile shown at the top colour" in title
    # min–max stays on offer: then the outlier takes the scale, and nothing is said to be clipped
    at.selectbox(key="norm").set_value("minmax").run()
    _ok(at)
    (lo2, hi2, title2), = _legends(at)
    assert hi2 == pytest.approx(raw.max(), rel=1e-2) and "99th" not in title2
