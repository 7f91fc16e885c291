"""Mean attention distance and attention entropy against hand-built attention matrices."""
import math

import numpy as np
import pytest
import torch

from attnviz.headstats import attention_entropy, mean_attention_distance, patch_centres
from attnviz.types import Capture, Target, TokenLayout


def _capture(attn_per_layer, layout):
    return Capture(scores=torch.zeros(1), attentions=tuple(attn_per_layer), layout=layout, inputs={},
                   targets=(Target(0, "x", "class"),))


LAY = TokenLayout(prefix_names=("cls",), rows=3, cols=4, patch_size=(8, 10), input_size=(24, 40))
T, P, N = LAY.n_tokens, LAY.n_prefix, LAY.n_patches


def test_patch_centres_are_in_input_pixels():
    c = patch_centres(LAY)
    assert c.shape == (12, 2)
    assert tuple(c[0]) == (4.0, 5.0)                 # (y, x) of patch (0, 0)
    assert tuple(c[LAY.cols + 2]) == (12.0, 25.0)    # patch (1, 2)


def test_self_attention_has_distance_zero_and_entropy_zero():
    a = torch.eye(T).expand(2, T, T).clone()         # [H, T, T]: every token attends only to itself
    cap = _capture([a, a], LAY)
    np.testing.assert_allclose(mean_attention_distance(cap), np.zeros((2, 2)), atol=1e-12)
    np.testing.assert_allclose(attention_entropy(cap), np.zeros((2, 2)), atol=1e-12)


def test_uniform_attention_has_entropy_log_t():
    a = torch.full((3, T, T), 1.0 / T)
    ent = attention_entropy(_capture([a], LAY))
    assert ent.shape == (1, 3)
    np.testing.assert_allclose(ent, math.log(T), rtol=1e-6)   # 1/T is rounded to float32


def test_attending_one_patch_to_the_right_is_one_patch_width():
    """Each patch query attends to its right-hand neighbour (the last column to its left one)."""
    a = torch.zeros(1, T, T)
    a[0, 0, 0] = 1.0                                 # CLS row: irrelevant to the distance
    for r in range(LAY.rows):
        for c in range(LAY.cols):
            q = P + r * LAY.cols + c
            k = P + r * LAY.cols + (c + 1 if c + 1 < LAY.cols else c - 1)
            a[0, q, k] = 1.0
    dist = mean_attention_distance(_capture([a], LAY))
    np.testing.assert_allclose(dist, [[10.0]])       # patch width is 10 px


def test_attention_to_prefix_tokens_is_left_out_and_renormalised():
    """Half the mass on CLS, half one patch down: distance is one patch height, not half of it."""
    a = torch.zeros(1, T, T)
    a[0, :, 0] = 0.5
    for r in range(LAY.rows):
        for c in range(LAY.cols):
            q = P + r * LAY.cols + c
            k = P + (r + 1 if r + 1 < LAY.rows else r - 1) * LAY.cols + c
            a[0, q, k] += 0.5
    a[0, 0, 0] = 1.0
    np.testing.assert_allclose(mean_attention_distance(_capture([a], LAY)), [[8.0]])


def test_uniform_over_patches_matches_brute_force():
    lay = TokenLayout(prefix_names=("cls", "register0"), rows=2, cols=3, patch_size=(16, 16), input_size=(32, 48))
    t = lay.n_tokens
    a = torch.full((1, t, t), 1.0 / t)
    centres = [((r + 0.5) * 16, (c + 0.5) * 16) for r in range(2) for c in range(3)]
    brute = np.mean([np.mean([math.dist(q, k) for k in centres]) for q in centres])
    np.testing.assert_allclose(mean_attention_distance(_capture([a], lay)), [[brute]], rtol=1e-6)


def test_real_capture_shapes_and_ranges(saved_models, photo):
    import attnviz
    adapter = attnviz.load_model(str(saved_models["dinov2-registers"]))
    cap = attnviz.capture(adapter, photo)
    d, e = mean_attention_distance(cap), attention_entropy(cap)
    assert d.shape == e.shape == (cap.n_layers, cap.n_heads)
    h, w = cap.layout.input_size
    assert np.all(d >= 0) and np.all(d <= math.hypot(h, w))
    assert np.all(e >= 0) and np.all(e <= math.log(cap.layout.n_tokens) + 1e-9)
    # By hand with plain loops, from the model's own attentions (4 registers: 5 prefix tokens, 4×4 patches of 8 px)
    x = cap.inputs["pixel_values"]
    with torch.no_grad():
        atts = adapter.model(pixel_values=x, output_attentions=True).attentions
    prefix, rows, cols, ph, pw = 5, 4, 4, 8, 8
    assert (cap.layout.n_prefix, cap.layout.rows, cap.layout.cols) == (prefix, rows, cols)
    cells = [((i // cols + 0.5) * ph, (i % cols + 0.5) * pw) for i in range(rows * cols)]
    for layer, a in enumerate(atts):
        a = a[0].double().tolist()                                   # [H][T][T] nested lists
        for head, rows_ in enumerate(a):
            dist, ent = [], []
            for q, row in enumerate(rows_):
                ent.append(-sum(v * math.log(v) for v in row if v > 0))
                if q >= prefix:
                    patch = row[prefix:]
                    total = sum(patch)
                    dist.append(sum(v / total * math.dist(cells[q - prefix], cells[k])
                                    for k, v in enumerate(patch)))
            assert d[layer, head] == pytest.approx(sum(dist) / len(dist), rel=1e-9)
            assert e[layer, head] == pytest.approx(sum(ent) / len(ent), rel=1e-9)


@pytest.mark.parametrize("fn", [mean_attention_distance, attention_entropy])
def test_heads_are_independent(fn):
    a = torch.stack([torch.eye(T), torch.full((T, T), 1.0 / T)])     # head 0 local, head 1 uniform
    out = fn(_capture([a], LAY))
    assert out[0, 0] < out[0, 1]
