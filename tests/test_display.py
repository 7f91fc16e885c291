"""Display options (positive / negative only, outlier clipping, the masked image) against hand computations."""
import numpy as np
import pytest
from PIL import Image

from attnviz.display import clip_outliers, masked_image, sign_part
from attnviz.errors import UsageError


def test_sign_parts_and_outliers():
    m = np.array([[-2.0, -0.5], [0.0, 3.0]])
    assert sign_part(m, "positive").tolist() == [[0, 0], [0, 3]]
    assert sign_part(m, "negative").tolist() == [[2, 0.5], [0, 0]]
    assert sign_part(m, "all").tolist() == m.tolist()
    v = np.arange(101, dtype=np.float32) - 50                  # |v| = 0..50, each twice (but 0)
    got = clip_outliers(v, 90)
    top = np.percentile(np.abs(v), 90)
    assert got.max() == pytest.approx(top) and got.min() == pytest.approx(-top)
    assert np.array_equal(got[np.abs(v) <= top], v[np.abs(v) <= top])
    with pytest.raises(UsageError):
        sign_part(m, "both")
    with pytest.raises(UsageError):
        clip_outliers(m, 0)


def test_masked_image_scales_or_keeps_the_high_part():
    img = Image.fromarray(np.full((4, 6, 3), 200, np.uint8))
    m = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])          # 2 × 3 grid over a 4 × 6 image
    scaled = np.asarray(masked_image(img, m), dtype=np.float64)
    up = np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((6, 4), Image.BILINEAR))
    want = 200 * (up - up.min()) / (up.max() - up.min())
    np.testing.assert_allclose(scaled[..., 0], np.floor(want + 0.5), atol=1)
    kept = np.asarray(masked_image(img, m, keep=0.25))[..., 0]
    assert set(np.unique(kept)) == {0, 200}
    assert kept[up >= np.quantile(up, 0.75)].min() == 200 and (kept == 200).sum() == (up >= np.quantile(up, 0.75)).sum()
