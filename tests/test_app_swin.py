"""A tiny Swin (saved with save_pretrained, loaded through ATTNVIZ_MODEL) on the Explore and Heads pages.

Checked against the model itself: Explore's top class against the model's own logits (transformers
forward with its own image processor), the head picker against each block's head count, and the Heads
page's stages against the config (grid = image_size / patch_size halved per stage, depths, heads).
"""
import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

from attnviz.adapters.swin import SwinAdapter
from attnviz.images import load_image
from attnviz.ui.state import sample_images

from .conftest import save_tiny
from .test_app import _ok, new_app  # noqa: F401  (fixture)

HEADS = "attnviz/ui/pages/heads.py"


@pytest.fixture(scope="module")
def swin_dir(tmp_path_factory):
    return save_tiny(SwinAdapter.tiny("swin"), tmp_path_factory.mktemp("app-swin"))


@pytest.fixture
def swin_app(new_app, swin_dir, monkeypatch):
    monkeypatch.setenv("ATTNVIZ_MODEL", str(swin_dir))
    return new_app


def test_explore_on_a_tiny_swin(swin_app, swin_dir):
    at = swin_app().run()
    _ok(at)
    assert len(at.get("image")) == 1                              # the default map (relevance) is drawn
    model = AutoModelForImageClassification.from_pretrained(swin_dir).eval()
    proc = AutoImageProcessor.from_pretrained(swin_dir)
    data = sample_images()[at.session_state["sample"]]
    with torch.no_grad():
        logits = model(**proc(images=load_image(data), return_tensors="pt")).logits[0]
    assert at.selectbox(key="target").value == int(logits.argmax())
    # Per-head attention: the picker offers the heads every block has (stage 0's, the fewest), no more.
    at.selectbox(key="method").set_value("attention").run()
    _ok(at)
    heads = at.selectbox(key="p:attention:head").options
    assert [h for h in heads if h.isdigit()] == [str(h) for h in range(min(model.config.num_heads))]
    at.selectbox(key="p:attention:head").set_value("1").run()
    _ok(at)
    assert len(at.get("image")) == 1


def test_heads_page_shows_blocks_by_heads_per_stage(swin_app, swin_dir):
    at = swin_app().run()
    at.switch_page(HEADS).run()
    _ok(at)
    cfg = AutoModelForImageClassification.from_pretrained(swin_dir).config
    side = cfg.image_size // cfg.patch_size
    labels = at.radio(key="h_stage").options
    assert len(labels) == len(cfg.depths)
    for s, label in enumerate(labels):
        g = side >> s
        assert label == (f"stage {s} · {g}×{g} tokens · window {cfg.window_size} · "
                         f"{cfg.depths[s]} blocks × {cfg.num_heads[s]} heads")
    assert any("not shown for this model" in c.value for c in at.caption)
    assert any(f"{sum(cfg.depths)} blocks, heads by stage {'/'.join(map(str, cfg.num_heads))}" in c.value
               for c in at.sidebar.caption)
    # A patch as the query, the last stage: its mosaic and the enlarged head, no error.
    at.radio(key="h_qkind").set_value("a patch").run()
    at.number_input(key="h_row").set_value(side - 1).run()
    at.radio(key="h_stage").set_value(len(labels) - 1).run()
    _ok(at)
    assert len(at.get("image")) == 1
    assert at.query_params["stage"] == str(len(labels) - 1)
    assert at.query_params["query"].startswith(f"{side - 1},")


def test_a_heads_link_opens_its_stage_and_query_on_a_swin(swin_app, swin_dir):
    at = swin_app()
    at.query_params.update({"stage": "1", "query": "2,3"})
    at.run()
    at.switch_page(HEADS).run()
    _ok(at)
    assert not at.warning
    assert at.radio(key="h_stage").value == 1
    assert (at.number_input(key="h_row").value, at.number_input(key="h_col").value) == (2, 3)
    assert at.query_params["stage"] == "1" and at.query_params["query"] == "2,3"


def test_a_heads_link_with_layer_and_head_opens_that_block_on_a_swin(swin_app, swin_dir):
    """Issue 25 item 6: a link's layer (a block, counted across stages) and head open that block's stage with
    that head enlarged, no warning; a head the block does not have warns once."""
    cfg = AutoModelForImageClassification.from_pretrained(swin_dir).config
    last = sum(cfg.depths) - 1                                  # the last block: the last stage, most heads
    head = cfg.num_heads[-1] - 1                                # a head only the last stage has
    at = swin_app()
    at.query_params.update({"layer": str(last), "head": str(head), "query": "output"})
    at.run()
    at.switch_page(HEADS).run()
    _ok(at)
    assert not at.warning, [w.value for w in at.warning]
    assert at.radio(key="h_stage").value == len(cfg.depths) - 1
    captions = [im.proto.imgs[0].caption for im in at.get("image")]
    assert any(c.startswith(f"Block {last} (stage {len(cfg.depths) - 1}), head {head}:") for c in captions), captions
    at = swin_app()
    at.query_params.update({"layer": "0", "head": str(cfg.num_heads[0])})     # one past block 0's heads
    at.run()
    at.switch_page(HEADS).run()
    _ok(at)
    assert [w.value for w in at.warning] == [f"The link's head '{cfg.num_heads[0]}' is not one of block 0's heads "
                                             f"(0–{cfg.num_heads[0] - 1}); using head 0."]


def test_the_lesson_page_says_why_it_does_not_take_a_swin_apart(swin_app, swin_dir):
    """Its one-layer walk-through needs one attention over every patch: a sentence, no traceback; the
    DINO masks it draws refuse a Swin capture in one sentence too."""
    import attnviz
    from attnviz.errors import UsageError
    from attnviz.headstats import dino_masks
    at = swin_app().run()
    at.switch_page("attnviz/ui/pages/lesson.py").run()
    _ok(at)
    assert any("shifted windows" in i.value for i in at.info)
    adapter = attnviz.load_model(str(swin_dir))
    cap = attnviz.capture(adapter, load_image(sample_images()[at.session_state["sample"]]), grads=False)
    with pytest.raises(UsageError, match="pick a ViT-family model"):
        dino_masks(cap)
