"""attnviz.render against hand-computed truths (no model, no network)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from attnviz import render
from attnviz.render import (
    OUTSIDE_DIM,
    colorize,
    grid_figure,
    heatmap_figure,
    normalize,
    overlay,
    shared_range,
    to_png_bytes,
    upsample,
)


def _cmap_rgb(name: str, t: float) -> np.ndarray:
    """Reference colour straight from matplotlib, rounded to uint8."""
    return np.round(np.array(matplotlib.colormaps[name](t)[:3]) * 255).astype(np.uint8)


def _noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


# ---------------------------------------------------------------- normalize


def test_minmax_matches_hand_result():
    m = np.array([[2.0, 4.0], [6.0, 10.0]])
    out = normalize(m, "minmax")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.25], [0.5, 1.0]], atol=1e-7)


def test_percentile_clips_outliers():
    m = np.arange(101, dtype=np.float64)
    m[-1] = 1e6  # one outlier patch
    # np.percentile (linear) of these 101 values: p1 = 1.0, p99 = 99.0
    out = normalize(m, "percentile", clip=(1.0, 99.0))
    expected = (np.clip(m, 1.0, 99.0) - 1.0) / 98.0
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out[50] == pytest.approx(0.5, abs=1e-6)
    # plain minmax is crushed by the outlier
    assert normalize(m, "minmax")[50] < 1e-3


def test_signed_maps_zero_to_half():
    m = np.array([[-2.0, 0.0], [1.0, 2.0]])
    np.testing.assert_allclose(normalize(m, "signed"), [[0.0, 0.5], [0.75, 1.0]], atol=1e-7)
    # asymmetric: scale is max|m| = 4, so 0 stays at 0.5 and -1 -> 0.375
    m2 = np.array([[-1.0, 0.0, 4.0]])
    np.testing.assert_allclose(normalize(m2, "signed"), [[0.375, 0.5, 1.0]], atol=1e-7)


def test_shared_range_gives_consistent_values():
    a = np.array([[0.0, 1.0]])
    b = np.array([[0.0, 2.0]])
    vmin, vmax = shared_range([a, b], "minmax")
    assert (vmin, vmax) == (0.0, 2.0)
    na = normalize(a, "minmax", vmin=vmin, vmax=vmax)
    nb = normalize(b, "minmax", vmin=vmin, vmax=vmax)
    np.testing.assert_allclose(na, [[0.0, 0.5]])
    np.testing.assert_allclose(nb, [[0.0, 1.0]])
    # the same raw value gets the same normalised value in both maps
    assert na[0, 1] == normalize(np.array([[0.0, 1.0, 2.0]]), "minmax")[0, 1]

    s_lo, s_hi = shared_range([np.array([[-1.0, 1.0]]), np.array([[-4.0, 2.0]])], "signed")
    assert (s_lo, s_hi) == (-4.0, 4.0)
    np.testing.assert_allclose(
        normalize(np.array([[-1.0, 1.0]]), "signed", vmin=s_lo, vmax=s_hi), [[0.375, 0.625]]
    )

    p_lo, p_hi = shared_range([np.arange(50.0), np.arange(50.0, 101.0)], "percentile", clip=(10, 90))
    assert (p_lo, p_hi) == pytest.approx((10.0, 90.0))


def test_vmin_vmax_clip_values_outside():
    out = normalize(np.array([[-5.0, 5.0, 15.0]]), "minmax", vmin=0.0, vmax=10.0)
    np.testing.assert_allclose(out, [[0.0, 0.5, 1.0]])


@pytest.mark.parametrize("mode", render.NORMALIZATIONS)
@pytest.mark.parametrize("value", [0.0, 3.0, -2.0])
def test_degenerate_maps_do_not_produce_nan(mode, value):
    m = np.full((3, 4), value)
    out = normalize(m, mode)
    assert np.all(np.isfinite(out))
    if mode in ("signed", "signed-robust"):
        expected = 0.5 + 0.5 * np.sign(value)
    else:
        expected = 0.0
    np.testing.assert_allclose(out, expected)
    # an all-equal shared range must not divide by zero either
    assert np.all(np.isfinite(normalize(m, mode, vmin=value, vmax=value)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_raises(bad):
    m = np.ones((2, 2))
    m[0, 1] = bad
    with pytest.raises(ValueError, match="non-finite"):
        normalize(m)
    with pytest.raises(ValueError, match="non-finite"):
        overlay(_noise_image(8, 8), m)


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="minmax"):
        normalize(np.ones((2, 2)), "zscore")


# ---------------------------------------------------------------- upsample


def test_nearest_reproduces_blocks_exactly():
    grid = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)  # 2 rows x 3 cols
    out = upsample(grid, (6, 4), "nearest")  # (width, height)
    assert out.shape == (4, 6)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.kron(grid, np.ones((2, 2), dtype=np.float32)))


def test_nearest_non_multiple_keeps_values():
    grid = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    out = upsample(grid, (7, 5), "nearest")
    assert out.shape == (5, 7)
    assert set(np.unique(out)) == set(grid.ravel())


def test_bilinear_keeps_mean_and_is_smooth():
    rng = np.random.default_rng(1)
    grid = rng.random((4, 4)).astype(np.float32)
    out = upsample(grid, (64, 64), "bilinear")
    assert out.shape == (64, 64)
    assert out.dtype == np.float32
    assert out.mean() == pytest.approx(grid.mean(), abs=0.05 * float(np.ptp(grid)))
    assert grid.min() - 1e-6 <= out.min() and out.max() <= grid.max() + 1e-6
    # factor 16: neighbouring output pixels differ by at most 1/16 of the
    # largest step between neighbouring patches (plus float slack)
    max_step = max(np.abs(np.diff(grid, axis=0)).max(), np.abs(np.diff(grid, axis=1)).max())
    assert np.abs(np.diff(out, axis=0)).max() <= max_step / 16 + 1e-5
    assert np.abs(np.diff(out, axis=1)).max() <= max_step / 16 + 1e-5
    # far smoother than nearest, which jumps by whole patch steps
    assert np.abs(np.diff(out, axis=1)).max() < np.abs(np.diff(upsample(grid, (64, 64), "nearest"), axis=1)).max()


def test_upsample_rejects_bad_input():
    with pytest.raises(ValueError):
        upsample(np.ones(4), (4, 4))
    with pytest.raises(ValueError):
        upsample(np.ones((2, 2)), (0, 4))
    with pytest.raises(ValueError, match="nearest"):
        upsample(np.ones((2, 2)), (4, 4), "bicubic")


# ---------------------------------------------------------------- colorize


@pytest.mark.parametrize("name", ["inferno", "viridis", "RdBu_r"])
def test_colorize_uses_colormap_endpoints(name):
    out = colorize(np.array([[0.0, 1.0]]), name)
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3)
    np.testing.assert_array_equal(out[0, 0], _cmap_rgb(name, 0.0))
    np.testing.assert_array_equal(out[0, 1], _cmap_rgb(name, 1.0))


def test_colorize_unknown_cmap_lists_valid_ones():
    with pytest.raises(ValueError, match="viridis"):
        colorize(np.zeros((2, 2)), "not-a-cmap")


# ---------------------------------------------------------------- overlay


def test_overlay_keeps_original_size_for_non_square_image():
    img = _noise_image(50, 30)
    out = overlay(img, np.random.default_rng(2).random((3, 5)))
    assert out.size == (50, 30)
    assert out.mode == "RGB"


def test_overlay_alpha_extremes():
    img = _noise_image(40, 20)
    grid = np.array([[0.0, 1.0]])  # left half lowest, right half highest
    box = (10, 4, 30, 16)  # 20 x 12
    orig = np.asarray(img)

    out0 = np.asarray(overlay(img, grid, alpha=0.0, box=box, resample="nearest"))
    np.testing.assert_array_equal(out0[4:16, 10:30], orig[4:16, 10:30])

    out1 = np.asarray(overlay(img, grid, alpha=1.0, box=box, resample="nearest", cmap="viridis"))
    assert np.all(out1[4:16, 10:20] == _cmap_rgb("viridis", 0.0))
    assert np.all(out1[4:16, 20:30] == _cmap_rgb("viridis", 1.0))

    # whole image, no box: alpha 0 is the image itself
    np.testing.assert_array_equal(np.asarray(overlay(img, grid, alpha=0.0)), orig)


def test_overlay_intermediate_alpha_is_the_weighted_mean():
    """alpha in (0, 1): (1 - alpha)·image + alpha·colour inside the box, written out here in float64 (the
    overlay computes in float32, so a pixel may round the other way: at most 1 off)."""
    img = _noise_image(40, 20)
    grid = np.array([[0.0, 1.0]])
    box = (10, 4, 30, 16)
    orig = np.asarray(img).astype(np.float64)
    out = np.asarray(overlay(img, grid, alpha=0.3, box=box, resample="nearest", cmap="viridis")).astype(int)
    for cols, v in ((slice(10, 20), 0.0), (slice(20, 30), 1.0)):
        want = np.round(0.7 * orig[4:16, cols] + 0.3 * np.asarray(_cmap_rgb("viridis", v), np.float64))
        assert np.abs(out[4:16, cols] - want).max() <= 1
    assert np.abs(out[4:16, 10:20] - np.round(orig[4:16, 10:20])).max() > 5     # the colour shows


def test_overlay_box_dims_outside_and_colours_inside():
    img = Image.new("RGB", (40, 30), (200, 200, 200))
    box = (10, 5, 30, 25)
    out = np.asarray(overlay(img, np.array([[0.0, 1.0], [1.0, 0.0]]), alpha=1.0, box=box, resample="nearest"))
    dim = round(200 * OUTSIDE_DIM)
    outside = np.ones((30, 40), bool)
    outside[5:25, 10:30] = False
    assert np.all(out[outside] == dim)
    inside = out[5:25, 10:30].reshape(-1, 3)
    allowed = {tuple(_cmap_rgb("inferno", 0.0)), tuple(_cmap_rgb("inferno", 1.0))}
    assert {tuple(p) for p in inside} == allowed


def test_overlay_box_reaching_past_the_edge():
    img = _noise_image(20, 10)
    # box wider than the image on the right: the map is laid over the whole
    # box and only its visible part is drawn
    out = np.asarray(overlay(img, np.array([[0.0, 1.0]]), alpha=1.0, box=(0, 0, 40, 10), resample="nearest"))
    assert out.shape == (10, 20, 3)
    assert np.all(out == _cmap_rgb("inferno", 0.0))


def test_overlay_rejects_bad_arguments():
    img = _noise_image(10, 10)
    with pytest.raises(ValueError):
        overlay(img, np.ones((2, 2)), alpha=1.5)
    with pytest.raises(ValueError):
        overlay(img, np.ones((2, 2)), box=(5, 5, 5, 8))
    with pytest.raises(ValueError):
        overlay(img, np.ones((2, 2)), box=(20, 20, 30, 30))


def test_to_png_bytes_round_trips():
    img = _noise_image(7, 5)
    data = to_png_bytes(img)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(img))


# ---------------------------------------------------------------- plotly


def _heatmaps(fig):
    return [t for t in fig.data if t.type == "heatmap"]


def test_heatmap_figure_carries_raw_values():
    img = _noise_image(60, 40)
    m = np.array([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])  # 2 rows x 3 cols
    fig = heatmap_figure(img, m, resample="nearest", alpha=0.7, title="t", hover_label="attention",
                         norm="minmax")
    (hm,) = _heatmaps(fig)
    z = np.asarray(hm.z)
    # row 1, col 2 is the patch centred at x = 50, y = 30 in image pixels
    r = int(np.argmin(np.abs(np.asarray(hm.y) - 30)))
    c = int(np.argmin(np.abs(np.asarray(hm.x) - 50)))
    assert np.asarray(hm.x)[c] == pytest.approx(50) and np.asarray(hm.y)[r] == pytest.approx(30)
    assert z[r, c] == pytest.approx(60.0)
    assert (hm.zmin, hm.zmax) == (10.0, 60.0)
    assert hm.opacity == pytest.approx(0.7)
    assert "attention" in hm.hovertemplate
    assert list(fig.layout.yaxis.range) == [40, 0]  # image coordinates: y down
    assert fig.layout.yaxis.scaleanchor == "x"
    assert len(fig.layout.images) == 1


def test_heatmap_figure_bilinear_and_box():
    img = _noise_image(60, 40)
    m = np.array([[10.0, 20.0], [30.0, 40.0]])
    box = (20, 10, 50, 30)
    fig = heatmap_figure(img, m, box=box, norm="signed")
    (hm,) = _heatmaps(fig)
    z = np.asarray(hm.z)
    assert z.shape == (20, 30)  # upsampled to the box, raw (not 0-1) values
    assert z.min() >= 10.0 - 1e-4 and z.max() <= 40.0 + 1e-4 and z.max() > 30.0
    xs, ys = np.asarray(hm.x), np.asarray(hm.y)
    assert 20 < xs.min() and xs.max() < 50 and 10 < ys.min() and ys.max() < 30
    assert (hm.zmin, hm.zmax) == (-40.0, 40.0)


def test_grid_figure_one_trace_per_map_shared_scale():
    rng = np.random.default_rng(3)
    maps = [rng.random((4, 4)) * k for k in (1.0, 2.0, 3.0, 4.0, 5.0)]
    titles = [f"L0 H{i}" for i in range(5)]
    fig = grid_figure(maps, titles, cols=3, norm="minmax")
    hms = _heatmaps(fig)
    assert len(hms) == len(maps)
    lo, hi = min(m.min() for m in maps), max(m.max() for m in maps)
    for hm in hms:
        assert hm.zmin == pytest.approx(lo) and hm.zmax == pytest.approx(hi)
    assert sum(bool(hm.showscale) for hm in hms) == 1
    np.testing.assert_allclose(np.asarray(hms[2].z), maps[2], rtol=1e-6)  # raw values

    own = _heatmaps(grid_figure(maps, titles, cols=3, shared=False))
    assert len({round(hm.zmax, 9) for hm in own}) == len(maps)

    with pytest.raises(ValueError):
        grid_figure(maps, titles[:2], cols=2)


def test_render_never_imports_streamlit():
    source = Path(render.__file__).read_text()
    assert "streamlit" not in source.replace("never imports streamlit", "")


def test_colorize_matches_matplotlib_everywhere():
    a = np.random.default_rng(4).random((16, 16))
    a[0, :4] = [0.0, 1.0, 1 / 256, 255 / 256]  # lookup-table boundaries
    for name in ("inferno", "RdBu_r", "gray"):
        ref = np.round(matplotlib.colormaps[name](a)[..., :3] * 255).astype(np.uint8)
        np.testing.assert_array_equal(colorize(a, name), ref)


def test_user_text_in_plotly_labels_is_escaped():
    """Plotly draws <b>, <br>, <a href> in labels: a prompt like '<a href=…>x</a>' must show as typed."""
    from attnviz.ui.figures import predictions_figure
    typed = '<a href="https://example.com">click</a> & <b>bold</b>'
    fig = render.heatmap_figure(Image.new("RGB", (16, 16)), np.zeros((2, 2)), title=typed)
    assert fig.layout.title.text == '&lt;a href="https://example.com"&gt;click&lt;/a&gt; &amp; &lt;b&gt;bold&lt;/b&gt;'
    bars = predictions_figure([{"index": 0, "label": typed, "probability": 0.5, "score": 1.0}], keep_order=True)
    tick, hover = bars.layout.yaxis.ticktext[0], bars.data[0].customdata[0]
    assert "<" not in tick and "&lt;a href" in tick and tick.endswith("…")          # cut at 40 characters
    assert hover == '&lt;a href="https://example.com"&gt;click&lt;/a&gt; &amp; &lt;b&gt;bold&lt;/b&gt;'


def test_predictions_figure_keeps_equal_labels_apart():
    from attnviz.ui.figures import predictions_figure
    rows = [{"index": i, "label": "a cat", "probability": p, "score": 0.0} for i, p in enumerate((0.7, 0.3))]
    fig = predictions_figure(rows, selected=1, keep_order=True)
    assert len(fig.data[0].y) == 2 and len(set(fig.data[0].y)) == 2                 # two bars, not one
    assert list(fig.data[0].x) == [0.3, 0.7] and list(fig.layout.yaxis.ticktext) == ["a cat", "a cat"]
    assert list(fig.data[0].marker.color) == ["#e4572e", "#4c78a8"]                # index 1 is marked
    grid = render.grid_figure([np.zeros((2, 2))], ["<i>x</i>"], cols=1)
    assert "<i>" not in grid.layout.annotations[0].text and "<i>" not in grid.data[-1].name


def test_compact_heatmap_figure_puts_the_colour_bar_under_the_image():
    img = Image.new("RGB", (32, 24))
    wide = render.heatmap_figure(img, np.arange(6.0).reshape(2, 3))
    narrow = render.heatmap_figure(img, np.arange(6.0).reshape(2, 3), compact=True)
    assert wide.data[0].colorbar.orientation in (None, "v") and narrow.data[0].colorbar.orientation == "h"
    assert narrow.layout.xaxis.showticklabels is False and narrow.layout.yaxis.showticklabels is False
    np.testing.assert_array_equal(np.asarray(narrow.data[0].z), np.asarray(wide.data[0].z))   # same values


def test_legend_bar_runs_from_the_colormaps_first_colour_to_its_last():
    """The legend under a map: its bar's ends are the colours normalize() gives the range's ends
    (read from matplotlib's colormap directly), with its ticks and title drawn below the bar."""
    import matplotlib

    from attnviz.render import legend, with_legend
    key = legend(300, -2.0, 2.0, cmap="RdBu_r", title="attribution", signed=True)
    a = np.asarray(key)
    row = a[max(2, key.height // 10) + 2]                      # a row inside the bar
    cm = matplotlib.colormaps["RdBu_r"]
    assert np.abs(row[0].astype(int) - np.round(np.array(cm(0.0)[:3]) * 255)).max() <= 1
    assert np.abs(row[-1].astype(int) - np.round(np.array(cm(1.0)[:3]) * 255)).max() <= 1
    assert np.abs(row[150].astype(int) - np.round(np.array(cm(0.5)[:3]) * 255)).max() <= 8
    below = a[key.height // 2:]
    assert (below.sum(-1) < 300).any()                          # dark text under the bar
    image = Image.new("RGB", (600, 400), (10, 200, 30))
    both = with_legend(image, key)
    assert both.size == (600, 400 + round(key.height * 2)) and np.asarray(both)[:400].tolist() == np.asarray(image).tolist()
    with pytest.raises(ValueError):
        legend(4, 0.0, 1.0)


def test_side_by_side_keeps_each_image_whole():
    from attnviz.render import side_by_side
    a, b = Image.new("RGB", (30, 20), (255, 0, 0)), Image.new("RGB", (10, 40), (0, 0, 255))
    out = np.asarray(side_by_side([a, b], gap=5))
    assert out.shape == (40, 45, 3)
    assert (out[:20, :30] == [255, 0, 0]).all() and (out[:, 35:] == [0, 0, 255]).all() and (out[:, 30:35] == 255).all()


# ---------------------------------------------------------------- robust defaults (issue 20)


def test_robust_is_the_default_and_clips_at_the_99th_percentile():
    """One outlier patch among 255 ordinary ones (a trained ViT's high-norm token): the default scale runs
    from the lowest value to the 99th percentile (numpy's linear percentile, written out here), so the
    ordinary patches spread over the colour range; min-max squeezes them into its bottom few percent."""
    rng = np.random.default_rng(0)
    m = rng.uniform(0.01, 0.03, size=256)
    m[77] = 0.6
    s = np.sort(m)
    k = 0.99 * 255                                       # linear interpolation between order statistics
    p99 = s[int(k)] + (k - int(k)) * (s[int(k) + 1] - s[int(k)])
    out = normalize(m.reshape(16, 16)).ravel()
    np.testing.assert_allclose(out, np.clip((m - m.min()) / (p99 - m.min()), 0, 1), atol=1e-6)
    assert render.value_range(m.reshape(16, 16)) == pytest.approx((m.min(), p99))
    assert out[77] == 1.0 and np.ptp(np.delete(out, 77)) > 0.9
    assert np.ptp(np.delete(normalize(m, "minmax"), 77)) < 0.05


def test_robust_keeps_a_one_hot_map_visible():
    """A head that attends to one patch: its 99th percentile is the minimum, so the scale falls back to
    the maximum (else the whole map would be the bottom colour)."""
    m = np.zeros((16, 16))
    m[3, 4] = 1.0
    assert normalize(m)[3, 4] == 1.0 and normalize(m).sum() == 1.0
    assert normalize(-m + 0, "signed-robust")[3, 4] == 0.0


def test_signed_robust_clips_at_the_99th_percentile_of_the_magnitude():
    """Integrated gradients on a real model: a few pixels carry huge attributions. signed-robust puts
    ±(99th percentile of |m|) at the ends and keeps 0 at the middle colour."""
    rng = np.random.default_rng(1)
    m = rng.normal(0, 1, size=(50, 50))
    m[0, 0], m[1, 1] = 400.0, -300.0
    s = np.percentile(np.abs(m), 99)
    out = normalize(m, "signed-robust")
    np.testing.assert_allclose(out, 0.5 + 0.5 * np.clip(m / s, -1, 1), atol=1e-6)
    assert render.value_range(m, "signed-robust") == pytest.approx((-s, s))
    assert render.default_norm(True) == "signed-robust" and render.default_norm(False) == "robust"
    # pooled over several maps, as a shared scale
    lo, hi = shared_range([m, 2 * m], "signed-robust")
    assert hi == pytest.approx(np.percentile(np.abs(np.concatenate([m.ravel(), 2 * m.ravel()])), 99))
    assert lo == -hi
