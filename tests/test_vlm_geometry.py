"""The image-token geometry of every VLM family, checked against the model itself.

With the vision tower's mixing switched off (every attention output projection zeroed, so each image token's
embedding depends only on its own pixels), repainting one region of the image must change exactly the image
tokens whose layout boxes cover it: the ones the layout says overlap the painted rectangle change, the ones it
puts well away from it do not. The embeddings are read where the language model receives them (its
``inputs_embeds``, at the positions of the image-token id in the processor's ids). A transposed grid and a
wrong tile order fail the same check (tested below with deliberately wrong layouts).
"""
import numpy as np
import pytest
import torch
from PIL import Image

from attnviz.adapters.vlm import VlmAdapter

KINDS = ("llava", "paligemma", "qwen2_vl", "idefics3")
SIZE = (56, 40)          # (width, height): not square, so a transposed grid cannot pass by symmetry
MARGIN = 0.3             # painted rectangle: each cell shrunk by this fraction on every side
BLEED = 4.0              # original pixels a resampling kernel may carry a change past the painted rectangle

_adapters = {}


def adapter(kind):
    if kind not in _adapters:
        a = VlmAdapter.tiny(kind, seed=1)
        tower = a.spec.vision_tower(a.model)
        n = 0
        for name, mod in tower.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.endswith(("out_proj", "o_proj", "attn.proj")) \
                    and not name.startswith("head"):     # SigLIP's pooling probe comes after the tokens
                mod.weight.data.zero_()
                if mod.bias is not None:
                    mod.bias.data.zero_()
                n += 1
        assert n == 2, f"{kind}: expected one attention output projection per vision layer, found {n}"
        _adapters[kind] = a
    return _adapters[kind]


def photo(seed=0):
    return Image.fromarray((np.random.RandomState(seed).rand(SIZE[1], SIZE[0], 3) * 255).astype("uint8"))


def image_token_embeddings(a, image):
    """[N, D] what the language model receives at the image-token positions (found from the ids here)."""
    inputs = a.prepare(image, question="what is it?", answer="a")
    got = {}
    lm = a.spec.language_model(a.model)
    handle = lm.register_forward_pre_hook(lambda m, args, kw: got.update(e=kw["inputs_embeds"]), with_kwargs=True)
    try:
        with torch.no_grad():
            a.model(**a.model_inputs(inputs, inputs["pixel_values"]))
    finally:
        handle.remove()
    ids = inputs["encoding"]["input_ids"][0]
    positions = (ids == a.model.config.image_token_id).nonzero()[:, 0]
    return got["e"][0, positions], inputs["image_tokens"]


def paint(image, box):
    arr = np.asarray(image).copy()
    l, t, r, b = (int(np.ceil(box[0])), int(np.ceil(box[1])), int(np.floor(box[2])), int(np.floor(box[3])))
    arr[t:b, l:r] = 255 - arr[t:b, l:r]
    return Image.fromarray(arr), (l, t, r, b)


def geometry_errors(a, boxes, cells=None):
    """For each cell k (its box shrunk by MARGIN, repainted), the tokens that should change and did not, and
    those far from the paint that changed. ``boxes`` [N, 4]: the region each image token covers."""
    img = photo()
    e0, _ = image_token_embeddings(a, img)
    errors = []
    for k in (cells if cells is not None else range(len(boxes))):
        l, t, r, b = boxes[k]
        if np.isnan(l):
            continue
        dx, dy = (r - l) * MARGIN, (b - t) * MARGIN
        painted, (pl, pt, pr, pb) = paint(img, (l + dx, t + dy, r - dx, b - dy))
        e1, _ = image_token_embeddings(a, painted)
        changed = set(((e1 - e0).abs().amax(-1) > 1e-5 * e0.abs().max()).nonzero()[:, 0].tolist())
        overlap = {i for i, (x0, y0, x1, y1) in enumerate(boxes) if x0 < pr and pl < x1 and y0 < pb and pt < y1}
        far = {i for i, (x0, y0, x1, y1) in enumerate(boxes)
               if x0 >= pr + BLEED or x1 <= pl - BLEED or y0 >= pb + BLEED or y1 <= pt - BLEED}
        if overlap - changed or changed & far:
            errors.append(f"cell {k}: unchanged {sorted(overlap - changed)}, changed far away {sorted(changed & far)}")
    return errors


@pytest.mark.parametrize("kind", KINDS)
def test_repainting_a_region_changes_exactly_the_tokens_the_layout_says_cover_it(kind):
    a = adapter(kind)
    geo = image_token_embeddings(a, photo())[1]
    assert geo.n_tokens == len(geo.positions) > 4
    cells = np.unique(np.linspace(0, geo.n_tokens - 1, 12).round().astype(int))    # spread over every view
    assert geometry_errors(a, geo.token_boxes(), cells=cells) == []


def test_a_transposed_grid_fails_the_geometry_check():
    a = adapter("qwen2_vl")                                   # a 5 × 7 merged grid
    geo = image_token_embeddings(a, photo())[1]
    v = geo.views[0]
    assert (v.rows, v.cols) == (5, 7)
    boxes = geo.token_boxes()
    # read the same tokens column-major: token r·cols + c claimed to cover cell (r', c') of the transposed order
    wrong = boxes.reshape(v.rows, v.cols, 4).transpose(1, 0, 2).reshape(-1, 4)[: v.n]
    assert geometry_errors(a, wrong, cells=[1, 8, 20]) != []


def test_a_wrong_tile_order_fails_the_geometry_check():
    a = adapter("idefics3")
    geo = image_token_embeddings(a, photo())[1]
    names = [v.name for v in geo.views]
    assert names == ["tile 1,1", "tile 1,2", "tile 2,1", "tile 2,2", "global"]
    boxes = geo.token_boxes()
    g = geo.views[0].n
    wrong = boxes.copy()
    wrong[g:2 * g], wrong[2 * g:3 * g] = boxes[2 * g:3 * g], boxes[g:2 * g]      # tiles (1,2) and (2,1) swapped
    assert geometry_errors(a, wrong, cells=[g + 1, 2 * g + 2]) != []


@pytest.mark.parametrize("kind", KINDS)
def test_pixel_tokens_name_the_pixels_each_image_token_reads(kind):
    """The pixel methods' per-token sums: with mixing off, token k's embedding has a gradient exactly on the
    pixels the family's ``pixel_tokens`` assigns to k (checked for a few tokens)."""
    a = adapter(kind)
    inputs = a.prepare(photo(), question="what is it?", answer="a")
    geo = inputs["image_tokens"]
    index, channel = a.spec.pixel_tokens(inputs["encoding"], geo)
    x = inputs["pixel_values"].detach().clone().requires_grad_(True)
    got = {}
    lm = a.spec.language_model(a.model)
    h = lm.register_forward_pre_hook(lambda m, args, kw: got.update(e=kw["inputs_embeds"]), with_kwargs=True)
    try:
        a.model(**a.model_inputs(inputs, x))
    finally:
        h.remove()
    for k in (0, geo.n_tokens // 2, geo.n_tokens - 1):
        (g,) = torch.autograd.grad(got["e"][0, geo.positions[k]].sum(), x, retain_graph=True)
        reads = g.abs().sum(channel) > 0
        assert torch.equal(reads, index == k), f"{kind}: token {k}"
