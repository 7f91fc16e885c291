"""CNN geometry on an input that is not a multiple of the stride: a padded stride-s convolution makes
⌈H / s⌉ cells of s pixels, so the last cell holds fewer real pixels. The overlay lays each cell on its own
pixels (the grid reaches past the image), occlusion hides the last cells' real pixels too, and the "black"
baseline is a black image after every step of the processor (EfficientNet divides by the std twice)."""
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import attnviz
from attnviz import render
from attnviz.adapters.cnn import CnnAdapter
from attnviz.engine import Item, Job, Worker
from attnviz.methods.captum_common import baseline_tensor

SIZE = (30, 45)            # input H × W; the tiny gated CNN's stages have strides 2, 4, 8


@pytest.fixture(scope="module")
def gated():
    return CnnAdapter.tiny("gated")


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))      # 90 wide, 60 high


def test_grids_and_boxes_by_hand(gated, image):
    """30×45 input: stride 8 gives ⌈30/8⌉ × ⌈45/8⌉ = 4 × 6 cells covering 32 × 48 input pixels; the
    image is 2× the input, so the grid lies on (0, 0, 96, 64) of the 90 × 60 image. Stride 2:
    15 × 23 cells, 30 × 46 pixels: (0, 0, 92, 60). Maps over pixels lie on the model's view (None: all)."""
    cap = attnviz.capture(gated, image, size=SIZE, grads=False)
    assert [(g.rows, g.cols, g.patch_size[0]) for g in cap.stage_grids] == [(15, 23, 2), (8, 12, 4), (4, 6, 8)]
    assert cap.map_box((4, 6), image.size) == (0, 0, 96, 64)
    assert cap.map_box((15, 23), image.size) == (0, 0, 92, 60)
    assert cap.map_box((8, 12), image.size) == (0, 0, 96, 64)          # stride 4: 8·4 × 12·4 pixels
    assert cap.map_box((30, 45), image.size, over="pixels") is None


def test_overlay_puts_the_last_cell_on_its_own_pixels(gated, image):
    """A map hot only in its last cell (row 3, col 5): that cell is input rows 24–31 and columns 40–47,
    i.e. image rows 48–59 and columns 80–89 (the rest is past the image's edge). Nearest-neighbour
    overlay at full opacity: exactly those pixels take the colour map's top colour."""
    cap = attnviz.capture(gated, image, size=SIZE, grads=False)
    m = np.zeros((4, 6), np.float32)
    m[3, 5] = 1.0
    shown = np.asarray(render.overlay(image, m, alpha=1.0, resample="nearest",
                                      box=cap.map_box(m.shape, image.size)))
    top = np.round(np.asarray(render._get_cmap("inferno")(1.0)[:3]) * 255).astype(np.uint8)
    hot = np.all(shown == top, axis=-1)
    expected = np.zeros((60, 90), bool)
    expected[48:60, 80:90] = True
    assert np.array_equal(hot, expected)


def test_batch_rows_keep_the_grid_box(gated, image):
    """The batch row keeps the box its map lies on (what the report and pointing game read)."""
    import io
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    job = Job(model="x", method="grad_cam", size=SIZE)
    (r,) = Worker(job, gated).run([Item("a.png", None, buf.getvalue())])
    assert r.rows[0]["map_shape"] == [4, 6] and r.rows[0]["box"] == [0, 0, 96, 64]


def _score(adapter, cap, x, t):
    with torch.no_grad():
        return float(adapter.forward_scores(x, cap.inputs)[0, t])


def test_occlusion_hides_the_pixels_of_every_cell_the_last_ones_too(gated, image):
    """Window 1, "mean" baseline (zeros): each cell's value is score(x) − score(x with that cell's real
    pixels set to 0), computed here by hand for all 24 cells, the overhanging last row and column
    included. (Captum 0.9's Occlusion already slides its last window part-way past the edge,
    ⌈(H − window) / stride⌉ + 1 positions, so this guards the behaviour rather than fixing it.)"""
    cap = attnviz.capture(gated, image, size=SIZE, grads=False)
    t = cap.targets[0].index
    exp = attnviz.explain(gated, cap, "occlusion", t, window=1, baseline="mean", batch_size=32)
    x = cap.inputs["pixel_values"]
    base = _score(gated, cap, x, t)
    expected = np.zeros((4, 6))
    for r in range(4):
        for c in range(6):
            x2 = x.clone()
            x2[..., r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = 0.0
            expected[r, c] = base - _score(gated, cap, x2, t)
    assert np.abs(expected[3]).max() > 0 and np.abs(expected[:, 5]).max() > 0
    np.testing.assert_allclose(exp.map, expected, rtol=1e-4, atol=1e-6)


def test_efficientnet_black_baseline_divides_by_the_std_twice(image):
    """google/efficientnet-b0's processor: rescale 1/255, normalise with ImageNet's mean and its std, then
    (include_top) divide by the std again. A black pixel: ((0 − mean) / std) / std. A ViT processor: once."""
    mean, std = [0.485, 0.456, 0.406], [0.47853944, 0.4732864, 0.47434163]
    tiny = CnnAdapter.tiny("efficientnet")
    proc = transformers.EfficientNetImageProcessor(size={"height": 64, "width": 64}, image_mean=mean, image_std=std,
                                                   include_top=True, rescale_factor=1 / 255)
    adapter = CnnAdapter(tiny.model, proc, name="effnet", source="<memory>")
    x = adapter.prepare(image)["pixel_values"]
    black = baseline_tensor(adapter, x, "black")
    want = [(0 - m) / s / s for m, s in zip(mean, std)]
    assert black.shape == x.shape
    np.testing.assert_allclose(black[0, :, 5, 7].numpy(), want, rtol=1e-6)
    vit = transformers.ViTImageProcessor(image_mean=mean, image_std=std)
    adapter = CnnAdapter(tiny.model, vit, name="vit-proc", source="<memory>")
    np.testing.assert_allclose(baseline_tensor(adapter, x, "black")[0, :, 0, 0].numpy(),
                               [(0 - m) / s for m, s in zip(mean, std)], rtol=1e-6)
