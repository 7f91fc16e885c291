"""A real VLM's hub files (tests/fixtures/vlm-configs/llava-hf__llava-1.5-7b-hf: config, processor, tokenizer,
chat template; no weights) with a model built from that config scaled down (2 layers a tower, narrow) and
random weights, saved and loaded through attnviz's loader: the full-size image-token geometry of a 640×480
image, and the generic geometry check on a few of its cells."""
import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import transformers
from PIL import Image

from tests.test_vlm_geometry import geometry_errors

ROOT = Path(__file__).parent / "fixtures" / "vlm-configs"
LLAVA = ROOT / "llava-hf__llava-1.5-7b-hf"


def test_fixture_files_are_the_recorded_ones():
    table = (ROOT / "README.md").read_text()
    section = table[table.index("## llava-hf/llava-1.5-7b-hf"):]
    rows = dict(re.findall(r"^\| (\S+) \| \d+ \| `([0-9a-f]{64})`", section, flags=re.M))
    assert set(rows) == {p.name for p in LLAVA.iterdir()}
    for name, digest in rows.items():
        assert hashlib.sha256((LLAVA / name).read_bytes()).hexdigest() == digest, name


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    import attnviz
    cfg = transformers.AutoConfig.from_pretrained(LLAVA, local_files_only=True)
    for c in (cfg.text_config, cfg.vision_config):
        c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads = 2, 64, 128, 4
    cfg.text_config.num_key_value_heads = 4
    folder = tmp_path_factory.mktemp("llava-1.5-scaled")
    transformers.LlavaForConditionalGeneration(cfg).save_pretrained(folder)
    for f in LLAVA.iterdir():
        if f.name != "config.json":
            shutil.copy(f, folder / f.name)
    return attnviz.load_model(str(folder))


def test_llava_1_5_sees_a_640x480_image_as_the_24x24_grid_of_its_centre_crop(llava):
    img = Image.fromarray((np.random.RandomState(0).rand(480, 640, 3) * 255).astype("uint8"))
    inputs = llava.prepare(img, question="What is in the picture?", answer="A cat.")
    geo = inputs["image_tokens"]
    # shortest edge 480 -> 336 (scale 0.7): 448 × 336, centre crop 336 = original x 80 … 560; 336 / 14 = 24
    assert (geo.n_tokens, geo.canvas_rows, geo.canvas_cols) == (576, 24, 24)
    assert geo.box == (80, 0, 560, 480)
    prompt = llava.processor.tokenizer.decode(inputs["encoding"]["input_ids"][0][geo.positions[-1] + 1:])
    assert prompt.strip().startswith("What is in the picture?") and prompt.rstrip().endswith("ASSISTANT:")
    from attnviz.methods import explain
    cap = llava.capture(inputs)
    assert explain(llava, cap, "answer_relevance", None).map.shape == (24, 24)


def test_the_full_size_layout_passes_the_geometry_check_on_some_cells(llava):
    tower = llava.spec.vision_tower(llava.model)
    for name, mod in tower.named_modules():
        if name.endswith("out_proj"):
            mod.weight.data.zero_()
            mod.bias.data.zero_()
    from tests import test_vlm_geometry as g
    old = g.SIZE
    g.SIZE = (640, 480)
    try:
        geo = llava.prepare(g.photo(), question="what?", answer="a")["image_tokens"]
        assert geometry_errors(llava, geo.token_boxes(), cells=[0, 30, 299, 575]) == []
    finally:
        g.SIZE = old


def test_the_question_words_are_found_in_llavas_prompt_though_the_template_cuts_them_differently(llava):
    """After "<image>\\n" SentencePiece reads "What" without its word-start mark: the question's tokens are found by
    their text, not by ids tokenised apart."""
    img = Image.fromarray((np.random.RandomState(1).rand(480, 640, 3) * 255).astype("uint8"))
    cap = llava.capture(llava.prepare(img, question="What is in the picture?", answer="A cat."))
    pos = llava.question_positions(cap)
    ids = cap.inputs["encoding"]["input_ids"][0]
    assert llava.tokenizer.decode(ids[pos]).strip() == "What is in the picture?"
    assert pos[0] == cap.extras["image_tokens"].positions[-1] + 2           # after the image and its newline
