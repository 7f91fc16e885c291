"""Real VLMs' hub files (tests/fixtures/vlm-configs/*: config, processor, tokenizer, chat template; no weights) with
a model built from that config scaled down (2 layers a tower, narrow) and random weights, saved and loaded through
attnviz's loader: the full-size image-token geometry of a 640×480 image, computed here from the processor's
documented rules, and the generic geometry check on a few of its cells. LLaVA-1.5, SmolVLM and Qwen2-VL run end to
end from their real files (Qwen2-VL also through the CLI, its maps checked against the rules written here);
PaliGemma, whose tokenizer and processor files were not found, from its config alone."""
import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from attnviz.bench_vlm import build_scaled, sample_image
from tests.test_vlm_geometry import geometry_errors

ROOT = Path(__file__).parent / "fixtures" / "vlm-configs"
LLAVA = ROOT / "llava-hf__llava-1.5-7b-hf"
SMOL = ROOT / "HuggingFaceTB__SmolVLM-256M-Instruct"


def _sections() -> dict[str, str]:
    """README section text by fixture folder (the folder named in the section's heading line)."""
    text = (ROOT / "README.md").read_text()
    heads = [(re.search(r"\(`([^`/]+)/`\)", p.splitlines()[0]), p) for p in re.split(r"^## ", text, flags=re.M)[1:]]
    return {m.group(1): p for m, p in heads if m}


@pytest.mark.parametrize("folder", sorted(p.name for p in ROOT.iterdir() if p.is_dir()))
def test_fixture_files_are_the_recorded_ones(folder):
    rows = dict(re.findall(r"^\| (\S+) \| \d+ \| `([0-9a-f]{64})`", _sections()[folder], flags=re.M))
    assert set(rows) == {p.name for p in (ROOT / folder).iterdir()}
    for name, digest in rows.items():
        assert hashlib.sha256((ROOT / folder / name).read_bytes()).hexdigest() == digest, name


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


def full_size_geometry_errors(adapter, cells):
    """``geometry_errors`` on a 640×480 photo with the vision tower's mixing switched off (attention output
    projections zeroed for the check, restored after)."""
    tower = adapter.spec.vision_tower(adapter.model)
    saved = {n: (m.weight.data.clone(), m.bias.data.clone()) for n, m in tower.named_modules()
             if n.endswith(("out_proj", "attn.proj"))}                 # Qwen2-VL's vision attention: blocks.i.attn.proj
    for n, m in tower.named_modules():
        if n in saved:
            m.weight.data.zero_()
            m.bias.data.zero_()
    from tests import test_vlm_geometry as g
    old = g.SIZE
    g.SIZE = (640, 480)
    try:
        geo = adapter.prepare(g.photo(), question="what?", answer="a")["image_tokens"]
        return geometry_errors(adapter, geo.token_boxes(), cells=cells)
    finally:
        g.SIZE = old
        for n, m in tower.named_modules():
            if n in saved:
                m.weight.data.copy_(saved[n][0])
                m.bias.data.copy_(saved[n][1])


def test_the_full_size_layout_passes_the_geometry_check_on_some_cells(llava):
    assert full_size_geometry_errors(llava, [0, 30, 299, 575]) == []


def test_the_question_words_are_found_in_llavas_prompt_though_the_template_cuts_them_differently(llava):
    """After "<image>\\n" SentencePiece reads "What" without its word-start mark: the question's tokens are found by
    their text, not by ids tokenised apart."""
    img = Image.fromarray((np.random.RandomState(1).rand(480, 640, 3) * 255).astype("uint8"))
    cap = llava.capture(llava.prepare(img, question="What is in the picture?", answer="A cat."))
    pos = llava.question_positions(cap)
    ids = cap.inputs["encoding"]["input_ids"][0]
    assert llava.tokenizer.decode(ids[pos]).strip() == "What is in the picture?"
    assert pos[0] == cap.extras["image_tokens"].positions[-1] + 2           # after the image and its newline


# --- SmolVLM-256M-Instruct (Idefics3): tiles + a global view, pixel shuffle ------------------------------------------


@pytest.fixture(scope="module")
def smolvlm(tmp_path_factory):
    import attnviz
    return attnviz.load_model(str(build_scaled(SMOL, tmp_path_factory.mktemp("smolvlm-scaled"), narrow=True)))


def test_the_smolvlm_files_agree_with_each_other():
    cfg = transformers.AutoConfig.from_pretrained(SMOL, local_files_only=True)
    proc = transformers.AutoProcessor.from_pretrained(SMOL, local_files_only=True)
    tok = proc.tokenizer
    assert len(tok) == cfg.text_config.vocab_size == 49280
    assert tok.convert_tokens_to_ids("<image>") == cfg.image_token_id == 49190
    # 64 image tokens a view: (512 / 16)² patches, pixel shuffle by 4 in each direction
    assert proc.image_seq_len == (cfg.vision_config.image_size // cfg.vision_config.patch_size // cfg.scale_factor) ** 2


def test_smolvlm_sees_a_640x480_image_as_12_tiles_and_a_global_view(smolvlm):
    ip = smolvlm.processor.image_processor
    tile, longest = ip.max_image_size["longest_edge"], ip.size["longest_edge"]            # 512, 2048
    # The processor scales the longest edge to 2048 (aspect kept: 2048 × 1536), then cuts 512-pixel tiles.
    rows, cols = math.ceil(480 * longest / 640 / tile), math.ceil(longest / tile)
    assert (rows, cols) == (3, 4)
    grid = 512 // 16 // 4
    inputs = smolvlm.prepare(sample_image(), question="What is in the picture?", answer="A cat.")
    geo = inputs["image_tokens"]
    assert inputs["pixel_values"].shape[:2] == (1, rows * cols + 1)
    assert geo.n_tokens == (rows * cols + 1) * grid * grid == 832
    assert (geo.canvas_rows, geo.canvas_cols) == (rows * grid, cols * grid) == (24, 32)
    assert [v.name for v in geo.views][:5] == ["tile 1,1", "tile 1,2", "tile 1,3", "tile 1,4", "tile 2,1"]
    assert geo.views[5].box == (160.0, 160.0, 320.0, 320.0)                           # tile 2,2 in original pixels
    # The processor's own text names every view just before its first image token.
    ids = inputs["encoding"]["input_ids"][0]
    tok = smolvlm.tokenizer
    for v in geo.views:
        before = tok.convert_ids_to_tokens(int(ids[geo.positions[v.start] - 1]))
        i, j = (v.name.split()[1].split(",") if v.name != "global" else ("", ""))
        assert before == (f"<row_{i}_col_{j}>" if v.name != "global" else "<global-img>"), v.name


def test_an_explanation_runs_on_the_full_size_smolvlm_geometry(smolvlm):
    from attnviz.methods import explain
    cap = smolvlm.capture(smolvlm.prepare(sample_image(), question="What is in the picture?", answer="A cat."))
    r = explain(smolvlm, cap, "answer_relevance", None)
    assert r.map.shape == (24, 32) and np.asarray(r.meta["beside"]["global"]).shape == (8, 8)
    assert np.isfinite(r.map).all() and r.map.sum() > 0


def test_the_full_size_smolvlm_layout_passes_the_geometry_check_on_some_cells(smolvlm):
    # a corner of tile 1,1; the middle of tile 2,3; the last tile's last cell; a global-view cell
    assert full_size_geometry_errors(smolvlm, [0, 6 * 64 + 27, 11 * 64 + 63, 12 * 64 + 9]) == []


def test_relevance_is_carried_into_smolvlms_tower_at_full_size_and_its_memory_is_foretold(smolvlm):
    from attnviz.errors import UsageError
    from attnviz.methods import explain
    inputs = smolvlm.prepare(sample_image(), question="What is in the picture?", answer="A cat.")
    cap = smolvlm.capture(inputs)
    vis = cap.extras["vision_attentions"]                                   # 13 views × 4 heads × 1,024² a layer
    assert vis[0].shape == (13, 4, 1024, 1024)
    assert smolvlm.vision_attention_bytes(inputs["pixel_values"]) == sum(t.numel() * t.element_size() for t in vis)
    r = explain(smolvlm, cap, "answer_relevance", None, into_vision=True)
    assert r.map.shape == (24, 32) and np.isfinite(r.map).all()
    smolvlm.keep_vision_attentions = False           # what a real-width SmolVLM gets by default (7.8 GB at 12 layers)
    try:
        with pytest.raises(UsageError, match="not kept for this image"):
            explain(smolvlm, smolvlm.capture(inputs), "answer_relevance", None, into_vision=True)
    finally:
        smolvlm.keep_vision_attentions = None


# --- Qwen2-VL-2B-Instruct: real config, image processor and tokenizer; dynamic resolution, 2 × 2 merge -------------

QWEN = ROOT / "Qwen__Qwen2-VL-2B-Instruct"
PALI = ROOT / "google__paligemma-3b-pt-224"


def test_qwen2_vl_2b_sees_a_640x480_image_as_a_17x23_merged_grid():
    """The real image processor's grid_thw; the image tokens the processor would splice in (one per merged 2 × 2
    block: grid_thw.prod() / 4 copies of <|image_pad|>, as its chat template places them) read by the family's
    geometry. Expected by hand: the sides rounded to multiples of 14 · 2 = 28 pixels (480 → 476, 640 → 644)."""
    from attnviz.adapters.vlm_families import Qwen2VL, family_of
    cfg = transformers.AutoConfig.from_pretrained(QWEN, local_files_only=True)
    ip = transformers.AutoImageProcessor.from_pretrained(QWEN, local_files_only=True)
    assert family_of(cfg) is Qwen2VL
    enc = dict(ip(images=[sample_image()], return_tensors="pt"))
    t, gh, gw = enc["image_grid_thw"][0].tolist()
    assert (t, gh, gw) == (1, round(480 / 28) * 2, round(640 / 28) * 2) == (1, 34, 46)
    assert enc["pixel_values"].shape == (34 * 46, 3 * 2 * 14 * 14)
    tok_ids = {v["content"]: int(k) for k, v in json.loads(
        (QWEN / "tokenizer_config.json").read_text())["added_tokens_decoder"].items()}
    assert tok_ids["<|image_pad|>"] == cfg.image_token_id
    pad = [cfg.image_token_id] * (gh * gw // 4)
    ids = [tok_ids["<|vision_start|>"]] + pad + [tok_ids["<|vision_end|>"]]
    enc["input_ids"] = torch.tensor([ids])
    geo = Qwen2VL(cfg, None).geometry(enc, sample_image())
    assert (geo.n_tokens, geo.canvas_rows, geo.canvas_cols, geo.box) == (391, 17, 23, (0, 0, 640, 480))
    assert geo.positions == tuple(range(1, 392))


def test_paligemma_3b_224_has_256_image_tokens_on_a_16x16_grid():
    from attnviz.adapters.vlm_families import PaliGemma, family_of
    cfg = transformers.AutoConfig.from_pretrained(PALI, local_files_only=True)
    assert family_of(cfg) is PaliGemma
    vc = cfg.vision_config
    assert (vc.image_size // vc.patch_size) ** 2 == cfg.text_config.num_image_tokens == 256
    assert cfg.image_token_id == 257152 < cfg.text_config.vocab_size
    enc = {"pixel_values": torch.zeros(1, 3, vc.image_size, vc.image_size),
           "input_ids": torch.tensor([[cfg.image_token_id] * 256 + [cfg.bos_token_id]])}
    geo = PaliGemma(cfg, None).geometry(enc, sample_image())
    assert (geo.n_tokens, geo.canvas_rows, geo.canvas_cols, geo.box) == (256, 16, 16, (0, 0, 640, 480))


# --- Qwen2-VL-2B-Instruct loaded through attnviz: the real processor assembled without torchvision ------------------


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return build_scaled(QWEN, tmp_path_factory.mktemp("qwen2-vl-scaled"), narrow=True)


@pytest.fixture(scope="module")
def qwen(qwen_dir):
    import attnviz
    return attnviz.load_model(str(qwen_dir))


def test_the_qwen2_vl_files_agree_with_each_other():
    """vocab.json + merges.txt (the Qwen2 family's byte-level BPE) with Qwen2-VL's tokenizer_config: 151,643 BPE
    tokens and 14 special tokens, the vision ids the config names, all inside the config's embedding rows."""
    cfg = transformers.AutoConfig.from_pretrained(QWEN, local_files_only=True)
    tok = transformers.AutoTokenizer.from_pretrained(QWEN, local_files_only=True)
    vocab = json.loads((QWEN / "vocab.json").read_text())
    merges = (QWEN / "merges.txt").read_text().splitlines()
    assert tok.vocab_size == len(vocab) == max(vocab.values()) + 1 == 151643
    assert len(merges) == 151387 and not merges[0].startswith("#")
    assert len(tok) == 151643 + 14 <= cfg.text_config.vocab_size == 151936
    for name, want in (("<|image_pad|>", cfg.image_token_id), ("<|vision_start|>", cfg.vision_start_token_id),
                       ("<|vision_end|>", cfg.vision_end_token_id)):
        assert tok.convert_tokens_to_ids(name) == want, name
    # byte-level BPE: every word of a sentence comes back exactly, spaces carried by "Ġ"
    ids = tok("What colour is the triangle?", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["What", "Ġcolour", "Ġis", "Ġthe", "Ġtriangle", "?"]


def test_qwen2_vl_loads_through_attnviz_with_its_processor_assembled_from_the_real_files(qwen):
    from attnviz.adapters.vlm_families import ImageOnlyQwen2VLProcessor
    assert qwen.kind == "qwen2_vl" and isinstance(qwen.processor, ImageOnlyQwen2VLProcessor)
    ip = qwen.processor.image_processor
    # min_pixels / max_pixels of the file, kept by transformers 5 as size.shortest_edge / longest_edge
    assert (ip.patch_size, ip.merge_size, ip.size.shortest_edge, ip.size.longest_edge) == (14, 2, 3136, 12845056)
    assert len(qwen.tokenizer) == 151657


def test_qwen2_vl_2b_prepares_a_640x480_image_as_391_merged_tokens_through_its_real_processor(qwen):
    """The processor's own ids: one <|image_pad|> per merged 2 × 2 block of the 34 × 46 patch grid (sides rounded
    to multiples of 28 pixels), between <|vision_start|> and <|vision_end|>, then the question."""
    inputs = qwen.prepare(sample_image(), question="What is in the picture?", answer="A cat.")
    enc, geo = inputs["encoding"], inputs["image_tokens"]
    assert enc["image_grid_thw"].tolist() == [[1, 34, 46]]
    ids = enc["input_ids"][0]
    pads = (ids == qwen.model.config.image_token_id).nonzero()[:, 0].tolist()
    assert len(pads) == 34 * 46 // 4 == geo.n_tokens == 391 and tuple(pads) == geo.positions
    assert (geo.canvas_rows, geo.canvas_cols, geo.box) == (17, 23, (0, 0, 640, 480))
    assert pads == list(range(pads[0], pads[0] + 391))
    tok = qwen.tokenizer
    assert tok.convert_ids_to_tokens([int(ids[pads[0] - 1]), int(ids[pads[-1] + 1])]) == ["<|vision_start|>",
                                                                                          "<|vision_end|>"]
    assert tok.decode(ids[pads[-1] + 2:]).startswith("What is in the picture?<|im_end|>")
    assert enc["mm_token_type_ids"][0].tolist() == [int(i in set(pads)) for i in range(len(ids))]


def test_the_full_size_qwen2_vl_layout_passes_the_geometry_check_on_some_cells(qwen):
    # the first merged token, one in the middle, the last one of the first row, the last one
    assert full_size_geometry_errors(qwen, [0, 8 * 23 + 11, 22, 390]) == []


def test_qwen2_vl_needs_the_mm_token_type_ids_that_attnviz_passes(qwen):
    """Qwen2-VL's forward refuses image inputs without ``mm_token_type_ids`` (M-RoPE needs to know the image's
    tokens); marked as text (all 0), the image tokens get text positions and the logits change. attnviz passes
    the processor's marks, the answer marked text."""
    inputs = qwen.prepare(sample_image(), question="What is in the picture?", answer="A cat.")
    kw = qwen.model_inputs(inputs, inputs["pixel_values"])
    n_answer = len(inputs["answer_ids"])
    mm = inputs["encoding"]["mm_token_type_ids"]
    assert kw["mm_token_type_ids"].tolist() == [mm[0].tolist() + [0] * n_answer]
    with torch.no_grad():
        logits = qwen.model(**kw).logits
        as_text = qwen.model(**{**kw, "mm_token_type_ids": torch.zeros_like(kw["mm_token_type_ids"])}).logits
        with pytest.raises(ValueError, match="mm_token_type_ids"):
            qwen.model(**{k: v for k, v in kw.items() if k != "mm_token_type_ids"})
    p = inputs["prompt_len"]
    assert (logits[0, p - 1:] - as_text[0, p - 1:]).abs().max() > 1e-3
    cap = qwen.capture(inputs, grads=False)
    ans = inputs["answer_ids"]
    torch.testing.assert_close(cap.scores, logits[0, p - 1 + torch.arange(n_answer), ans], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["image_attention", "relevance"])
def test_the_cli_explains_the_scaled_qwen2_vl_at_full_size_as_the_rule_written_here_says(method, qwen, qwen_dir,
                                                                                          tmp_path, capsys):
    """`attnviz explain IMG --model DIR --question ... --answer ...` on the folder of real processor files: the map
    (17 × 23) equals the answer row's attention read from the model's outputs here (mean over layers and heads),
    or Chefer's rule R ← R + Ā·R in numpy from the answer token's logit."""
    from attnviz.cli import main
    img_path, out = tmp_path / "photo.png", tmp_path / "map.npy"
    sample_image().save(img_path)
    rc = main(["explain", str(img_path), "--model", str(qwen_dir), "--question", "What is in the picture?",
               "--answer", "A cat.", "--method", method, "--target", "0", "--json", "--out", str(out)])
    assert rc == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["image"]["canvas"] == [17, 23] and rec["answer_tokens"][0]["token"] == "A"
    got = np.load(out)
    inputs = qwen.prepare(Image.open(img_path).convert("RGB"), question="What is in the picture?", answer="A cat.")
    kw = qwen.model_inputs(inputs, inputs["pixel_values"].clone().requires_grad_())     # weights are frozen
    out_ = qwen.model(**kw, output_attentions=True)
    row = inputs["prompt_len"] - 1
    ids = kw["input_ids"][0]
    pads = (ids == qwen.model.config.image_token_id).nonzero()[:, 0].numpy()
    if method == "image_attention":
        want = torch.stack([a[0, :, row] for a in out_.attentions]).mean((0, 1)).detach().numpy()[pads]
    else:
        logit = out_.logits[0, row, ids[row + 1]]
        grads = torch.autograd.grad(logit, out_.attentions)
        r = np.eye(len(ids))
        for a, g in zip(out_.attentions, grads):
            a_bar = np.clip(g[0].double().numpy() * a[0].detach().double().numpy(), 0, None).mean(0)
            r = r + a_bar @ r
        want = r[row, pads]
    np.testing.assert_allclose(got.ravel(), want, rtol=1e-3, atol=1e-7)


# --- PaliGemma-3B (real config; no public tokenizer or processor files): the prefix mask it needs -------------------


def test_paligemmas_image_and_prompt_attend_both_ways_only_with_the_token_type_ids_attnviz_passes():
    """The real config scaled down (2 + 2 layers, narrow): 256 image tokens of a 224 image, <bos>, a 7-token prompt
    and a 3-token answer (token ids drawn at random: no public PaliGemma tokenizer was found). With the token_type_ids
    attnviz's forward keywords carry (the processor's 0 on image + prompt, 1 on the answer), the first image token
    attends to the prompt's last token (a bidirectional prefix) and the answer stays causal; without them the mask is
    silently fully causal and the logits change."""
    from types import SimpleNamespace

    from attnviz.adapters.vlm import VlmAdapter
    from attnviz.adapters.vlm_families import PaliGemma
    from attnviz.bench_vlm import scaled_config
    cfg = scaled_config(transformers.AutoConfig.from_pretrained(PALI, local_files_only=True), narrow=True)
    torch.manual_seed(0)
    model = transformers.PaliGemmaForConditionalGeneration(cfg).eval()
    model.set_attn_implementation("eager")
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(1000, 250000, (6,), generator=g)
    prefix = torch.cat([torch.full((256,), cfg.image_token_id), torch.tensor([cfg.bos_token_id]), prompt,
                        torch.tensor([108])])[None]
    p = prefix.shape[1]
    inputs = {"encoding": {"input_ids": prefix, "token_type_ids": torch.zeros_like(prefix)},
              "answer_ids": torch.randint(1000, 250000, (3,), generator=g)}
    pv = torch.randn(1, 3, 224, 224, generator=g)
    kw = VlmAdapter.model_inputs(SimpleNamespace(spec=PaliGemma(cfg, None), device="cpu"), inputs, pv)
    assert kw["token_type_ids"].tolist() == [[0] * p + [1] * 3]
    with torch.no_grad():
        out = model(**kw, output_attentions=True)
        causal = model(**{k: v for k, v in kw.items() if k != "token_type_ids"}, output_attentions=True)
    assert len(out.attentions) == len(causal.attentions) == 2
    for a in out.attentions:                                                               # [1, H, T, T]
        assert (a[0, :, 0, p - 1] > 0).all()                  # image token 0 sees the prompt's last token
        assert (a[0, :, p, p + 1:] == 0).all()                # the answer's first token sees no later one
    for a in causal.attentions:
        assert (a[0, :, 0, 1:] == 0).all()
    assert (out.logits - causal.logits).abs().max() > 1e-4
