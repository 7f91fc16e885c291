"""Conformance on real checkpoint files (issue 10).

Every catalog family at FULL size, loaded the way a user loads it: a model with random weights built from the
checkpoint's config, saved with ``save_pretrained`` (safetensors) next to the checkpoint's real processor and
tokenizer files (``tests/fixtures/real-configs``, sources and licences in its README), then
``attnviz.load_model`` on the folder. Checked there: capture, the attention methods, one Captum method at two
steps and the CLI, and what tiny models cannot show: CLIP's real token ids and 77-token limit, BLIP's 384-pixel
processor and BERT tokenizer, ViT-GPT2's GPT-2 tokenizer with and without a tokenizer_config.json, the ViT
processor picked from config.json. Facts come from the files read directly (json, vocabulary lines) and from the
model's own forward and autograd, never from attnviz.

Families with no real files here (distilled DeiT, BEiT, DINO, DINOv2 with and without registers, SigLIP, GIT)
are built from transformers' config classes with the catalog checkpoint's values that matter; each class says
which values came from where.

Cost: each model is built, saved and loaded once per class (a class-scoped fixture) and freed after its class.
Folders missing a file (issue 10, defect 6) are at the end, on tiny models.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import attnviz
from attnviz.adapters.captioning import CaptionAdapter
from attnviz.adapters.classifier import ClassifierAdapter
from attnviz.adapters.clip import ClipAdapter
from attnviz.errors import ModelUnavailable

from .test_readout import last_block_token_grads

FIX = Path(__file__).parent / "fixtures" / "real-configs"
CLIP16, CLIP32 = "openai__clip-vit-base-patch16", "openai__clip-vit-base-patch32"
BLIP, VIT_GPT2, VIT = ("Salesforce__blip-image-captioning-base", "nlpconnect__vit-gpt2-image-captioning",
                       "google__vit-base-patch16-224")
CLIP_VOCAB = CLIP32          # patch16's vocab.json / merges.txt hold the same tokens (fixtures README)
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

# sha256 of every fixture file, from the collector's SOURCES.md (computed there, not here)
SHA256 = {
    f"{CLIP32}/config.json": "b575ef3c36f2a057fa19e221650105052d61cc9c1a972ec15019c6261ec98770",
    f"{CLIP32}/preprocessor_config.json": "910e70b3956ac9879ebc90b22fb3bc8a75b6a0677814500101a4c072bd7857bd",
    f"{CLIP32}/tokenizer_config.json": "34b7336e4bee12e0a9730eaf5189f582ef3c3eea5027f65730e5717256755aad",
    f"{CLIP32}/special_tokens_map.json": "f8c0d6c39aee3f8431078ef6646567b0aba7f2246e9c54b8b99d55c22b707cbf",
    f"{CLIP32}/vocab.json": "5047b556ce86ccaf6aa22b3ffccfc52d391ea4accdab9c2f2407da5b742d4363",
    f"{CLIP32}/merges.txt": "f526393189112391ce6f9795d4695f704121ce452c3aad1f5335cc41337eba85",
    f"{CLIP16}/config.json": "eaf1c9089a8553c913d27ea66407f8bfc2be9989c80c9f331ddb3d63d4c5e8ad",
    f"{CLIP16}/preprocessor_config.json": "910e70b3956ac9879ebc90b22fb3bc8a75b6a0677814500101a4c072bd7857bd",
    f"{CLIP16}/tokenizer_config.json": "3f74b6a4d97fee70b3b96921a687fc5e3f2fb583f5f81e7c178c0c22281beade",
    f"{CLIP16}/special_tokens_map.json": "f8c0d6c39aee3f8431078ef6646567b0aba7f2246e9c54b8b99d55c22b707cbf",
    f"{BLIP}/config.json": "f7846f82f4e2c4a2ccbab9ae8b0e44873540a271a76a1288effd078180c13a82",
    f"{BLIP}/preprocessor_config.json": "065c10ec97edc5081fbd9655b3d9d25e2647ea6d5dab873325e88eed12d80a7d",
    f"{BLIP}/tokenizer_config.json": "5c7f96096284c55e539eff95f4451c19efc34258ddb975a4400d052b77301e5e",
    f"{BLIP}/special_tokens_map.json": "b6d346be366a7d1d48332dbc9fdf3bf8960b5d879522b7799ddba59e76237ee3",
    f"{BLIP}/vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    f"{VIT_GPT2}/config.json": "ba5af426ae524cbea12934dbbc30a1361375cd76364ddefac1f9da114babc308",
    f"{VIT_GPT2}/preprocessor_config.json": "af4eb4d79cf61b47010fc0bc9352ee967579c417423b4917188d809b7e048948",
    f"{VIT_GPT2}/special_tokens_map.json": "5de420a8f233c0402732dfcbe50b16d6e340859a49345c38b35f044a443aa644",
    f"{VIT_GPT2}/vocab.json": "3ba3c3109ff33976c4bd966589c11ee14fcaa1f4c9e5e154c2ed7f99d80709e7",
    f"{VIT_GPT2}/merges.txt": "fe36cab26d4f4421ed725e10a2e9ddb7f799449c603a96e7f29b5a3c82a95862",
    f"{VIT}/preprocessor_config.json": "90d1ae427c27d2b9dcb01f6a62ba96aa67aac2de1697c59cd212055b5035c4a2",
}


def test_fixture_files_are_the_real_files():
    present = {str(p.relative_to(FIX)) for p in FIX.glob("*/*") if p.is_file()}
    assert present == set(SHA256), "fixture files differ from the list in tests/fixtures/real-configs/README.md"
    for name, digest in SHA256.items():
        assert hashlib.sha256((FIX / name).read_bytes()).hexdigest() == digest, name


# --- helpers -----------------------------------------------------------------------------------------

def real(folder: str, *names: str) -> Path:
    """A fixture folder; skipped LOUDLY when one of its real files is absent (a broken checkout)."""
    d = FIX / folder
    missing = [n for n in names if not (d / n).is_file()]
    if missing:
        pytest.skip(f"REAL CHECKPOINT FILE MISSING: {folder}/{', '.join(missing)} "
                    f"(see tests/fixtures/real-configs/README.md); this conformance class did not run")
    return d


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def copy_real(folder: str, names: tuple[str, ...], dest: Path) -> Path:
    src = real(folder, *names)
    for n in names:
        shutil.copyfile(src / n, dest / n)
    return src


def save_model(model: torch.nn.Module, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    assert (folder / "model.safetensors").is_file()


def scene(w: int = 300, h: int = 200) -> Image.Image:
    """A non-square RGB image with structure: colour ramps and a checkerboard."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, ((x // 25 + y // 25) % 2) * 200], -1)
    return Image.fromarray(img.astype(np.uint8))


SCENE = scene()


def uniform_pixels(adapter, colour, processor_file: dict, **kw) -> dict:
    """Prepare a uniform 300×200 image: every pixel must be (colour/255 − mean)/std with the FILE's mean and std."""
    inputs = adapter.prepare(Image.new("RGB", (300, 200), colour), **kw)
    want = (torch.tensor(colour) / 255 - torch.tensor(processor_file["image_mean"])) / \
        torch.tensor(processor_file["image_std"])                                    # [3]
    pv = inputs["pixel_values"][0]                                                  # [3, H, W]
    torch.testing.assert_close(pv, want.view(3, 1, 1).expand_as(pv), rtol=0, atol=1e-5)
    return inputs


def caption_logits(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[B, n] logit of caption token c_t at the position t that predicts it (decoder input [start, c_0 … c_{n-1}])."""
    n = ids.shape[1] - 1
    return logits[:, :n].gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def run_cli(capsys, *argv: str) -> dict:
    from attnviz.cli import main
    capsys.readouterr()
    code = main(["explain", *argv, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    SCENE.save(path)
    return str(path)


@dataclass
class Built:
    folder: Path
    adapter: Any
    cap: Any


@pytest.fixture(scope="class")
def built(request, tmp_path_factory):
    """The class's full-size model: written once (random weights, real files), loaded by attnviz, one capture."""
    fam = request.cls
    folder = tmp_path_factory.mktemp("full") / fam.folder_name
    folder.mkdir()
    torch.manual_seed(0)
    fam.write(folder)                        # the full-size model is freed when write returns
    gc.collect()
    adapter = attnviz.load_model(str(folder))
    b = Built(folder, adapter, adapter.capture(adapter.prepare(SCENE, texts=fam.texts, **fam.prepare_kw)))
    yield b
    b.adapter = b.cap = None
    gc.collect()
    shutil.rmtree(folder, ignore_errors=True)


# --- checks every family gets ----------------------------------------------------------------------

class _Checks:
    """Generic checks; a subclass says how to build its checkpoint and what its files say."""

    folder_name: str = ""
    texts: Optional[list[str]] = None           # prompts (image–text) or a typed caption (captioners)
    prepare_kw: dict = {}                       # e.g. a captioner's max_new_tokens
    prefix: tuple[str, ...] = ("cls",)
    grid: tuple[int, int] = (14, 14)
    input_size: tuple[int, int] = (224, 224)
    n_layers, n_heads = 12, 12
    methods: tuple[str, ...] = ("attention", "rollout", "relevance")

    @classmethod
    def write(cls, folder: Path) -> None:
        raise NotImplementedError

    @staticmethod
    def direct_scores(model, inputs: dict, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, n_targets] scores from the model's own forward, written here without attnviz."""
        raise NotImplementedError

    def test_layout_and_attentions_follow_the_config(self, built):
        cap, (rows, cols) = built.cap, self.grid
        n_tokens = len(self.prefix) + rows * cols
        assert cap.layout.prefix_names == self.prefix
        assert (cap.layout.rows, cap.layout.cols, cap.layout.input_size) == (rows, cols, self.input_size)
        assert tuple(cap.inputs["pixel_values"].shape) == (1, 3, *self.input_size)
        assert len(cap.attentions) == self.n_layers
        assert tuple(cap.attentions[0].shape) == (self.n_heads, n_tokens, n_tokens)
        torch.testing.assert_close(cap.attentions[-1].sum(-1), torch.ones(self.n_heads, n_tokens))   # softmax rows

    def test_scores_are_the_models_own(self, built):
        with torch.no_grad():
            ref = self.direct_scores(built.adapter.model, built.cap.inputs, built.cap.inputs["pixel_values"])
        torch.testing.assert_close(built.cap.scores, ref[0], rtol=1e-4, atol=1e-4)

    def test_attention_methods_map_the_patch_grid(self, built):
        for method in self.methods:
            m = attnviz.explain(built.adapter, built.cap, method).map
            assert m.shape == self.grid, method
            assert np.isfinite(m).all() and np.ptp(m) > 0, method                # random weights: never flat


class _ReadsTokens:
    """Classifiers and image–text models: the readout is checked against the model's gradients (captioners read
    the image by cross-attention, checked in test_readout.py)."""

    def test_readout_is_what_the_score_reads(self, built):
        """The tokens the readout weights are exactly those the score's gradient reaches after the last block,
        at the checkpoint's own values (BEiT's mean pooling, DINOv2's CLS + mean, registers read by neither)."""
        cap = built.cap
        t = built.adapter.resolve_target(cap, None).index
        depends = last_block_token_grads(built.adapter, cap, [t])[0].norm(dim=-1) > 0    # [T]
        assert depends.tolist() == (cap.readout > 0).tolist()


class _RealChecks(_Checks):
    """Families whose real processor file is here: Captum and the CLI as well."""

    real_dir: str = ""

    captum = "saliency"     # one backward; CLIP B/32 runs integrated gradients at 2 steps instead

    def test_captum_matches_the_models_own_gradients(self, built):
        """Captum through attnviz against autograd on the model's own forward. Saliency (Simonyan et al. 2014):
        max |∂score/∂pixel| over channels. Integrated gradients (Sundararajan et al. 2017) at 2 steps: Captum's
        default rule is Gauss–Legendre, nodes α = (x+1)/2 and weights w/2 on [0, 1], baseline a black image
        after the normalisation in the real preprocessor_config.json; channels summed."""
        ad, cap = built.adapter, built.cap
        t = ad.resolve_target(cap, None).index
        x = cap.inputs["pixel_values"]                                               # [1, 3, H, W]
        if self.captum == "saliency":
            exp = attnviz.explain(ad, cap, "saliency", target=t)
            xg = x.clone().requires_grad_(True)
            g, = torch.autograd.grad(self.direct_scores(ad.model, cap.inputs, xg)[0, t], xg)
            by_hand = g[0].abs().amax(0).numpy()                                     # [H, W]
        else:
            exp = attnviz.explain(ad, cap, "integrated_gradients", target=t, n_steps=2, internal_batch_size=2)
            pre = read_json(FIX / self.real_dir / "preprocessor_config.json")
            mean, std = (torch.tensor(pre[k]).view(1, 3, 1, 1) for k in ("image_mean", "image_std"))
            base = ((0 - mean) / std).expand_as(x)
            nodes, weights = np.polynomial.legendre.leggauss(2)
            alphas = (nodes + 1) / 2
            path = torch.cat([base + float(a) * (x - base) for a in alphas]).requires_grad_(True)   # [2, 3, H, W]
            g, = torch.autograd.grad(self.direct_scores(ad.model, cap.inputs, path)[:, t].sum(), path)
            avg = sum(float(w) / 2 * g[i:i + 1] for i, w in enumerate(weights))
            by_hand = ((x - base) * avg)[0].sum(0).numpy()                            # [H, W]
        assert exp.map.shape == self.input_size
        np.testing.assert_allclose(exp.map, by_hand, rtol=1e-3, atol=1e-4 * np.abs(by_hand).max())


# =====================================================================================================
# Real files: CLIP B/32 and B/16
# =====================================================================================================

class _Clip(_ReadsTokens, _RealChecks):
    texts = ["a photo of a cat", "a photo of a dog"]
    methods = ("attention", "rollout", "relevance", "grad_rollout")

    @classmethod
    def write(cls, folder):
        src = copy_real(cls.real_dir, ("config.json", "preprocessor_config.json", "tokenizer_config.json",
                                       "special_tokens_map.json"), folder)
        copy_real(CLIP_VOCAB, ("vocab.json", "merges.txt"), folder)
        save_model(transformers.CLIPModel(transformers.AutoConfig.from_pretrained(src)), folder)

    @staticmethod
    def direct_scores(model, inputs, pixel_values):
        return model(pixel_values=pixel_values, input_ids=inputs["input_ids"],
                     attention_mask=inputs["attention_mask"]).logits_per_image          # [B, P]

    def test_grid_is_the_configs_image_over_patch_size(self, built):
        vc = read_json(FIX / self.real_dir / "config.json")["vision_config"]
        assert self.grid == (vc["image_size"] // vc["patch_size"],) * 2
        assert (self.n_layers, self.n_heads) == (vc["num_hidden_layers"], vc["num_attention_heads"])

    def test_token_ids_are_the_vocabulary_files_and_read_at_the_end_token(self, built):
        vocab = read_json(FIX / CLIP_VOCAB / "vocab.json")
        ad, inputs = built.adapter, built.cap.inputs
        assert type(ad.tokenizer).__name__ == "CLIPTokenizer"
        for p, animal in enumerate(("cat", "dog")):
            words = ["a", "photo", "of", "a", animal]
            want = [vocab["<|startoftext|>"]] + [vocab[w + "</w>"] for w in words] + [vocab["<|endoftext|>"]]
            assert inputs["input_ids"][p][inputs["attention_mask"][p].bool()].tolist() == want
            assert [w for w, _ in ad.text_words(inputs, p)] == words
        # the model pools its text at the end token; the adapter's text-relevance reads the same position
        idx = ad.text_readout_index(inputs["input_ids"])
        with torch.no_grad():
            out = ad.model.text_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        torch.testing.assert_close(out.pooler_output, out.last_hidden_state[torch.arange(2), idx])
        assert idx.tolist() == [6, 6]
        assert attnviz.explain(ad, built.cap, "text_relevance", target=1).map.shape == (7,)

    def test_a_long_prompt_is_cut_to_77_tokens_with_a_note(self, built):
        src = FIX / self.real_dir
        limit = read_json(src / "config.json")["text_config"]["max_position_embeddings"]
        assert limit == read_json(src / "tokenizer_config.json")["model_max_length"] == 77
        vocab = read_json(FIX / CLIP_VOCAB / "vocab.json")
        ad = built.adapter
        inputs = ad.prepare(SCENE, texts=["a photo of a cat", " ".join(["cat"] * 100)])
        assert tuple(inputs["input_ids"].shape) == (2, 77)
        assert inputs["input_ids"][1].tolist() == \
            [vocab["<|startoftext|>"]] + [vocab["cat</w>"]] * 75 + [vocab["<|endoftext|>"]]
        assert inputs["notes"] == ["Prompt 2 was cut to 77 tokens, the model's limit."]
        cap = ad.capture(inputs, grads=False)
        with torch.no_grad():
            ref = self.direct_scores(ad.model, inputs, inputs["pixel_values"])[0]
            out = ad.model.text_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        torch.testing.assert_close(cap.scores, ref, rtol=1e-4, atol=1e-4)
        idx = ad.text_readout_index(inputs["input_ids"])
        assert idx.tolist() == [6, 76]
        torch.testing.assert_close(out.pooler_output, out.last_hidden_state[torch.arange(2), idx])

    def test_processor_crops_and_normalises_as_its_file_says(self, built):
        pre = read_json(FIX / self.real_dir / "preprocessor_config.json")
        assert (pre["size"], pre["crop_size"], pre["do_center_crop"]) == (224, 224, True)
        inputs = uniform_pixels(built.adapter, (200, 100, 50), pre, texts=["a cat"])
        assert tuple(inputs["pixel_values"].shape) == (1, 3, 224, 224)
        # shortest edge 200 -> 224 (×1.12): 336×224, a centred 224 crop keeps x 56..280, i.e. 50..250 of the original
        assert inputs["box"] == (50, 0, 250, 200)

    def test_relevance_is_chefers_rule_on_the_last_layer(self, built):
        """CLIP's default relevance (Chefer et al. 2021, their CLIP setting: last layer only) from the model's own
        attentions and gradients: R = I + E_h[(∇A ⊙ A)⁺] of the last layer, CLS row, patches."""
        ad, cap = built.adapter, built.cap
        x = cap.inputs["pixel_values"].clone().requires_grad_(True)
        out = ad.model(pixel_values=x, input_ids=cap.inputs["input_ids"], attention_mask=cap.inputs["attention_mask"],
                       output_attentions=True)
        last = out.vision_model_output.attentions[-1]                                   # [1, H, T, T]
        n_tokens = last.shape[-1]
        for t in (0, 1):
            g, = torch.autograd.grad(out.logits_per_image[0, t], last, retain_graph=True)
            r = torch.eye(n_tokens) + (g[0] * last[0]).clamp(min=0).mean(0)              # [T, T]
            by_hand = r[0, 1:].reshape(self.grid).detach().numpy()
            np.testing.assert_allclose(attnviz.explain(ad, cap, "relevance", target=t).map, by_hand,
                                       rtol=1e-4, atol=1e-7)

    def test_cli_explains_prompts_with_their_tokens(self, built, capsys, scene_png):
        rec = run_cli(capsys, scene_png, "--model", str(built.folder), "--method", "relevance",
                      "--text", "a photo of a cat", "--text", " ".join(["cat"] * 100), "--target", "0")
        assert rec["model"] == self.folder_name and rec["map_shape"] == list(self.grid)
        assert rec["target"] == {"index": 0, "label": "a photo of a cat", "kind": "prompt"}
        assert [w["word"] for w in rec["prompts"][0]["words"]] == ["a", "photo", "of", "a", "cat"]
        assert len(rec["prompts"][1]["tokens"]) == 77
        assert rec["notes"] == ["Prompt 2 was cut to 77 tokens, the model's limit."]


class TestClipB32(_Clip):
    """openai/clip-vit-base-patch32: every file real (config, processor, tokenizer files)."""
    folder_name, real_dir, grid = "clip-vit-base-patch32", CLIP32, (7, 7)
    captum = "integrated_gradients"


class TestClipB16(_Clip):
    """openai/clip-vit-base-patch16: real config, processor and tokenizer config; vocabulary as patch32's."""
    folder_name, real_dir, grid = "clip-vit-base-patch16", CLIP16, (14, 14)


# =====================================================================================================
# Real files: BLIP base captioner
# =====================================================================================================

def vocab_lines(folder: str) -> dict[str, int]:
    """A WordPiece vocab.txt read directly: token -> line number."""
    return {w: i for i, w in enumerate((FIX / folder / "vocab.txt").read_text().split("\n"))}


class TestBlipBase(_RealChecks):
    """Salesforce/blip-image-captioning-base: real config (ViT-B/16 at 384, 12-layer BERT decoder), 384-pixel
    processor, BERT tokenizer files."""
    folder_name, real_dir = "blip-image-captioning-base", BLIP
    prepare_kw = {"max_new_tokens": 3}         # generated (greedy); typed captions in the tokenizer and CLI tests
    grid, input_size = (24, 24), (384, 384)
    methods = ("attention", "rollout", "relevance", "cross_attention", "caption_relevance")

    @classmethod
    def write(cls, folder):
        src = copy_real(BLIP, ("config.json", "preprocessor_config.json", "tokenizer_config.json",
                               "special_tokens_map.json", "vocab.txt"), folder)
        save_model(transformers.BlipForConditionalGeneration(transformers.AutoConfig.from_pretrained(src)), folder)

    @staticmethod
    def direct_scores(model, inputs, pixel_values):
        ids = inputs["caption_ids"].expand(pixel_values.shape[0], -1)
        return caption_logits(model(pixel_values=pixel_values, input_ids=ids).logits, ids)

    def test_processor_is_384_pixels_without_a_crop(self, built):
        pre = read_json(FIX / BLIP / "preprocessor_config.json")
        vc = read_json(FIX / BLIP / "config.json")["vision_config"]
        assert pre["size"] == vc["image_size"] == 384 and self.grid == (384 // vc["patch_size"],) * 2
        inputs = uniform_pixels(built.adapter, (10, 120, 250), pre)
        assert tuple(inputs["pixel_values"].shape) == (1, 3, 384, 384) and inputs["box"] is None

    def test_bert_tokenizer_ids_are_the_vocabulary_lines(self, built):
        vocab, cfg = vocab_lines(BLIP), read_json(FIX / BLIP / "config.json")["text_config"]
        ad, cap = built.adapter, built.cap
        assert type(ad.tokenizer).__name__ == "BertTokenizer"
        want = [vocab[w] for w in ("a", "photo", "of", "a", "cat")]
        assert ad.tokenize_caption("A photo of a Cat") == (want, []) and want == [1037, 6302, 1997, 1037, 4937]
        # the decoder starts at the text config's bos ([DEC], beyond the 30522 BERT lines) and stops at [SEP]
        assert cap.inputs["caption_ids"][0, 0] == ad.start_id == cfg["bos_token_id"] == 30522 < cfg["vocab_size"]
        assert ad.end_ids == {cfg["sep_token_id"]} == {vocab["[SEP]"]}
        # the generated caption: the model's own greedy generate (max_new_tokens=3), after its start token
        # and up to its first [SEP]
        with torch.no_grad():
            seq = ad.model.generate(pixel_values=cap.inputs["pixel_values"], max_new_tokens=3, num_beams=1,
                                    do_sample=False, min_new_tokens=1)[0].tolist()
        body = seq[1:]
        body = body[:body.index(cfg["sep_token_id"])] if cfg["sep_token_id"] in body else body
        assert seq[0] == 30522 and cap.extras["caption_ids"] == body and len(cap.targets) == len(body) > 0

    def test_cross_attention_reads_all_577_image_tokens(self, built):
        cfg = read_json(FIX / BLIP / "config.json")["text_config"]
        cross, n = built.cap.cross_attentions, len(built.cap.targets)
        assert len(cross) == cfg["num_hidden_layers"] == 12
        assert tuple(cross[0].shape) == (cfg["num_attention_heads"], 1 + n, 1 + 24 * 24)

    def test_cli_scores_a_typed_caption(self, built, capsys, scene_png):
        rec = run_cli(capsys, scene_png, "--model", str(built.folder), "--method", "rollout",
                      "--text", "A photo of a Cat")
        assert rec["map_shape"] == [24, 24] and rec["caption"]["source"] == "typed"
        assert [(t["id"], t["token"]) for t in rec["caption"]["tokens"]] == \
            [(1037, "a"), (6302, "photo"), (1997, "of"), (1037, "a"), (4937, "cat")]
        assert rec["caption"]["text"] == "a photo of a cat"


# =====================================================================================================
# Real files: ViT-GPT2 captioner (no tokenizer_config.json among the real files)
# =====================================================================================================

class TestVitGpt2(_RealChecks):
    """nlpconnect/vit-gpt2-image-captioning: real config (ViT-B/16 encoder, 12-layer GPT-2 decoder), processor,
    vocab.json + merges.txt; the hub's tokenizer_config.json is missing here, so the folder has none."""
    folder_name, real_dir = "vit-gpt2-image-captioning", VIT_GPT2
    texts = None                               # the caption is generated, as a user would get it (greedy)
    prepare_kw = {"max_new_tokens": 5}
    methods = ("attention", "rollout", "relevance", "cross_attention", "caption_relevance")
    FILES = ("config.json", "preprocessor_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")

    @classmethod
    def write(cls, folder):
        src = copy_real(VIT_GPT2, cls.FILES, folder)
        save_model(transformers.VisionEncoderDecoderModel(config=transformers.AutoConfig.from_pretrained(src)), folder)

    @staticmethod
    def direct_scores(model, inputs, pixel_values):
        ids = inputs["caption_ids"].expand(pixel_values.shape[0], -1)
        return caption_logits(model(pixel_values=pixel_values, decoder_input_ids=ids).logits, ids)

    def _gpt2_ids(self, adapter) -> list[int]:
        vocab = read_json(FIX / VIT_GPT2 / "vocab.json")
        want = [vocab["a"], vocab["Ġphoto"], vocab["Ġof"], vocab["Ġa"], vocab["Ġcat"]]
        assert adapter.tokenize_caption("a photo of a cat") == (want, [])
        return want

    def test_gpt2_tokenizer_without_a_tokenizer_config(self, built):
        ad, cfg = built.adapter, read_json(FIX / VIT_GPT2 / "config.json")
        assert not (built.folder / "tokenizer_config.json").exists()
        assert type(ad.tokenizer).__name__ == "GPT2Tokenizer"
        assert self._gpt2_ids(ad) == [64, 4590, 286, 257, 3797]
        end = read_json(FIX / VIT_GPT2 / "vocab.json")["<|endoftext|>"]
        assert ad.start_id == cfg["decoder_start_token_id"] == end and ad.end_ids == {cfg["eos_token_id"]} == {end}
        assert len(built.cap.cross_attentions) == cfg["decoder"]["n_layer"]

    def test_gpt2_tokenizer_with_a_tokenizer_config(self, built, tmp_path):
        """The hub folder has a tokenizer_config.json (not found; this one is written here): same tokenizer."""
        folder = tmp_path / self.folder_name
        folder.mkdir()
        for name in self.FILES:
            shutil.copyfile(built.folder / name, folder / name)
        os.symlink(built.folder / "model.safetensors", folder / "model.safetensors")
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024, "add_prefix_space": False,
             "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
        other = attnviz.load_model(str(folder))
        assert type(other.tokenizer).__name__ == "GPT2Tokenizer"
        assert self._gpt2_ids(other) == self._gpt2_ids(built.adapter)
        assert other.tokenizer.decode(self._gpt2_ids(other)) == "a photo of a cat"

    def test_processor_resizes_the_whole_image_to_224(self, built):
        pre = read_json(FIX / VIT_GPT2 / "preprocessor_config.json")
        assert pre["size"] == read_json(FIX / VIT_GPT2 / "config.json")["encoder"]["image_size"] == 224
        inputs = uniform_pixels(built.adapter, (30, 60, 90), pre)
        assert tuple(inputs["pixel_values"].shape) == (1, 3, 224, 224) and inputs["box"] is None

    def test_cli_generates_the_same_greedy_caption(self, built, capsys, scene_png):
        rec = run_cli(capsys, scene_png, "--model", str(built.folder), "--method", "rollout", "--target", "0")
        assert rec["map_shape"] == [14, 14] and rec["caption"]["source"] == "generated"
        first = built.cap.extras["caption_ids"]                                       # greedy, at most 5 tokens
        assert [t["id"] for t in rec["caption"]["tokens"]][:len(first)] == first


# =====================================================================================================
# Real processor file: ViT-B/16 (google/vit-base-patch16-224)
# =====================================================================================================

class TestVitBase(_ReadsTokens, _RealChecks):
    """google/vit-base-patch16-224. Only its preprocessor_config.json is real (it names no image processor
    class). Its config.json was not found: the config is transformers.ViTConfig's defaults, which are ViT-B/16
    at 224 (hidden 768, 12 layers, 12 heads, patch 16), with the checkpoint's 1000 ImageNet labels."""
    folder_name, real_dir = "vit-base-patch16-224", VIT
    methods = ("attention", "rollout", "relevance", "grad_rollout", "attn_grad", "grad_cam")

    @classmethod
    def write(cls, folder):
        copy_real(VIT, ("preprocessor_config.json",), folder)
        config = transformers.ViTConfig(num_labels=1000, architectures=["ViTForImageClassification"])
        save_model(transformers.ViTForImageClassification(config), folder)

    @staticmethod
    def direct_scores(model, inputs, pixel_values):
        return model(pixel_values=pixel_values).logits

    def test_processor_class_comes_from_config_json_and_resizes_the_whole_image(self, built):
        pre = read_json(FIX / VIT / "preprocessor_config.json")
        assert "image_processor_type" not in pre and "feature_extractor_type" not in pre
        assert type(built.adapter.processor).__name__.startswith("ViTImageProcessor")
        inputs = uniform_pixels(built.adapter, (255, 0, 128), pre)
        assert tuple(inputs["pixel_values"].shape) == (1, 3, pre["size"], pre["size"]) and inputs["box"] is None

    def test_rollout_by_hand_from_the_models_attentions(self, built):
        """Abnar & Zuidema 2020: Â = 0.5·mean_h A + 0.5·I, rows renormalised, multiplied from the first layer to
        the last; the CLS row."""
        with torch.no_grad():
            atts = built.adapter.model(pixel_values=built.cap.inputs["pixel_values"], output_attentions=True).attentions
        r = np.eye(atts[0].shape[-1])
        for a in atts:
            a_hat = 0.5 * a[0].mean(0).numpy() + 0.5 * np.eye(a.shape[-1])
            r = (a_hat / a_hat.sum(-1, keepdims=True)) @ r
        np.testing.assert_allclose(attnviz.explain(built.adapter, built.cap, "rollout").map,
                                   r[0, 1:].reshape(self.grid), rtol=1e-4, atol=1e-8)

    def test_a_non_square_input_interpolates_the_position_embeddings(self, built):
        ad = built.adapter
        cap = ad.capture(ad.prepare(SCENE, size=(224, 320)), grads=False)
        assert (cap.layout.rows, cap.layout.cols) == (14, 20)
        with torch.no_grad():
            ref = ad.model(pixel_values=cap.inputs["pixel_values"], interpolate_pos_encoding=True).logits[0]
        torch.testing.assert_close(cap.scores, ref, rtol=1e-4, atol=1e-4)

    def test_cli_writes_the_map_it_reports(self, built, capsys, scene_png, tmp_path):
        out = tmp_path / "rollout.npy"
        rec = run_cli(capsys, scene_png, "--model", str(built.folder), "--method", "rollout", "--out", str(out))
        assert rec["model"] == self.folder_name and rec["map_shape"] == [14, 14]
        assert rec["target"]["label"] == built.adapter.model.config.id2label[rec["target"]["index"]]
        np.testing.assert_allclose(np.load(out), attnviz.explain(built.adapter, built.cap, "rollout").map, rtol=1e-5)


# =====================================================================================================
# No real files here: built from transformers' config classes with the catalog checkpoint's values
# =====================================================================================================
# Where each value comes from, per class: "defaults" are the transformers config class's own defaults, whose
# docstrings name the checkpoint they mirror (ViT-B/16, DeiT-B distilled, SigLIP base 16/224, GIT base);
# "catalog" is models/catalog.toml's note or issue 10 (BEiT mean pooling and relative position bias, DINOv2's
# 256 → 224 crop and 4 registers); "hub" is the checkpoint's published config or preprocessor values, which
# no file in this repository backs (none could be found): sizes, mean/std, resize.

class _Classifier(_ReadsTokens, _Checks):
    model_cls: Any = None

    @classmethod
    def config(cls):
        raise NotImplementedError

    @classmethod
    def processor(cls):
        raise NotImplementedError

    @classmethod
    def write(cls, folder):
        config = cls.config()
        config.architectures = [cls.model_cls.__name__]
        save_model(cls.model_cls(config), folder)
        cls.processor().save_pretrained(folder)

    @staticmethod
    def direct_scores(model, inputs, pixel_values):
        if hasattr(model, "classifier") or hasattr(model, "cls_classifier"):
            return model(pixel_values=pixel_values).logits
        # headless backbones: the norm of CLS in the residual stream after the last block (adapters/classifier.py)
        last = model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-1]      # [B, T, D]
        return last[:, 0].norm(dim=-1, keepdim=True)


class TestDeitBaseDistilled(_Classifier):
    """facebook/deit-base-distilled-patch16-224. Defaults: DeiTConfig is DeiT-B/16 at 224 (hidden 768, 12 layers,
    12 heads, patch 16). Catalog: the teacher head, CLS + distillation token. Hub: 1000 labels; processor resize 256,
    centre crop 224, ImageNet mean/std, bicubic (also DeiTImageProcessor's defaults)."""
    folder_name, prefix, model_cls = "deit-base-distilled-patch16-224", ("cls", "distillation"), \
        transformers.DeiTForImageClassificationWithTeacher

    @classmethod
    def config(cls):
        return transformers.DeiTConfig(num_labels=1000)

    @classmethod
    def processor(cls):
        return transformers.DeiTImageProcessor()

    def test_logits_average_the_cls_and_distillation_heads(self, built):
        m = built.adapter.model
        with torch.no_grad():
            out = m(pixel_values=built.cap.inputs["pixel_values"], output_hidden_states=True)
            h = m.deit.layernorm(out.hidden_states[-1])                                  # [1, T, D]
            by_hand = 0.5 * (m.cls_classifier(h[:, 0]) + m.distillation_classifier(h[:, 1]))
        torch.testing.assert_close(by_hand[0], built.cap.scores, rtol=1e-4, atol=1e-4)


class TestBeitBase(_Classifier):
    """microsoft/beit-base-patch16-224. Defaults: BeitConfig is BEiT-B/16 at 224 (hidden 768, 12 layers, layer
    scale 0.1, no absolute position embeddings). Catalog / issue 10: use_mean_pooling=True (the head reads the mean of
    the patch tokens) and use_relative_position_bias=True (one bias table per layer). Hub: 1000 labels; processor
    resize to 224×224, no crop, mean/std 0.5."""
    folder_name, model_cls = "beit-base-patch16-224", transformers.BeitForImageClassification
    methods = ("attention", "rollout", "relevance", "attn_grad", "grad_cam")

    @classmethod
    def config(cls):
        return transformers.BeitConfig(num_labels=1000, use_mean_pooling=True, use_relative_position_bias=True,
                                       use_shared_relative_position_bias=False, use_absolute_position_embeddings=False)

    @classmethod
    def processor(cls):
        return transformers.BeitImageProcessor(size={"height": 224, "width": 224}, do_center_crop=False,
                                               image_mean=[0.5] * 3, image_std=[0.5] * 3)

    def test_relative_position_bias_in_every_layer_and_mean_pooling(self, built):
        saved = read_json(built.folder / "config.json")
        assert saved["use_mean_pooling"] is True and saved["use_relative_position_bias"] is True
        tables = [n for n, _ in built.adapter.model.named_parameters() if n.endswith("relative_position_bias_table")]
        assert len(tables) == 12
        assert built.cap.readout[0] == 0 and torch.allclose(built.cap.readout[1:], torch.full((196,), 1 / 196))


class TestDinoVitB16(_Classifier):
    """facebook/dino-vitb16. Catalog: a headless ViTModel (its one target is the CLS norm). Defaults: ViTConfig is
    ViT-B/16 at 224. Hub: processor resize to 224 with ImageNet mean/std."""
    folder_name, model_cls = "dino-vitb16", transformers.ViTModel

    @classmethod
    def config(cls):
        return transformers.ViTConfig()

    @classmethod
    def processor(cls):
        return transformers.ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=IMAGENET_MEAN,
                                              image_std=IMAGENET_STD)

    def test_one_target_the_cls_norm(self, built):
        assert [(t.label, t.kind) for t in built.cap.targets] == [("CLS embedding norm", "embedding")]


class _Dinov2(_Classifier):
    """DINOv2 ViT-S/14. Hub: hidden 384, 12 layers, 6 heads, MLP ratio 4, patch 14, positions for 518 px (37×37),
    layer scale 1.0 (Dinov2Config's defaults are the ViT-B sizes). Catalog: a 224 crop of a 256 resize (the hub's
    BitImageProcessor, shortest edge 256, centre crop 224, ImageNet mean/std): a 16×16 grid, position embeddings
    interpolated from 37×37."""
    grid, n_heads = (16, 16), 6
    VALUES = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                  image_size=518, layerscale_value=1.0)

    @classmethod
    def processor(cls):
        return transformers.BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                              image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)

    def test_position_embeddings_for_518_interpolated_to_224(self, built):
        emb = built.adapter.model.embeddings.position_embeddings
        assert emb.shape[1] == 1 + 37 * 37 and built.cap.layout.n_patches == 16 * 16
        scales = [m.lambda1 for n, m in built.adapter.model.named_modules() if n.endswith("layer_scale1")]
        assert len(scales) == 12 and all(torch.all(s == 1.0) for s in scales)


class TestDinov2Small(_Dinov2):
    """facebook/dinov2-small (a headless Dinov2Model)."""
    folder_name, model_cls = "dinov2-small", transformers.Dinov2Model

    @classmethod
    def config(cls):
        return transformers.Dinov2Config(**cls.VALUES)


class TestDinov2SmallRegisters(_Dinov2):
    """facebook/dinov2-with-registers-small. Catalog: as dinov2-small plus 4 register tokens (1 + 4 prefix tokens)."""
    folder_name, model_cls = "dinov2-with-registers-small", transformers.Dinov2WithRegistersModel
    prefix = ("cls", "register0", "register1", "register2", "register3")

    @classmethod
    def config(cls):
        return transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **cls.VALUES)


def spm_tokenizer(folder: Path):
    """A SigLIP (SentencePiece) tokenizer: google/siglip-base-patch16-224's spiece.model was not found, so a
    unigram model is trained here on the words of the BERT vocabulary (a stand-in with real '▁' word marks)."""
    import sentencepiece as spm
    words = [w for w in (FIX / BLIP / "vocab.txt").read_text().split("\n")[1996:6000] if w.isalpha()]
    lines = [" ".join(words[i:i + 8]) for i in range(0, len(words), 8)] + ["a photo of a cat", "a photo of a dog"]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(folder / "spm"), vocab_size=1000,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    tok = transformers.SiglipTokenizer(vocab_file=str(folder / "spm.model"))
    for f in ("spm.model", "spm.vocab"):
        (folder / f).unlink()
    return tok


class TestSiglipBase(_ReadsTokens, _Checks):
    """google/siglip-base-patch16-224. Defaults: SiglipConfig is SigLIP base 16/224 (vision ViT-B/16 at 224 with an
    attention-pooling head and no CLS; text 12 layers, 32000 tokens, 64 positions); SiglipImageProcessor's defaults
    (224×224, mean/std 0.5, bicubic) are the hub processor's. Tokenizer: a stand-in (spm_tokenizer)."""
    folder_name, prefix = "siglip-base-patch16-224", ()
    texts = ["a photo of a cat", "a photo of a dog"]

    @classmethod
    def write(cls, folder):
        config = transformers.SiglipConfig()
        config.architectures = ["SiglipModel"]
        save_model(transformers.SiglipModel(config), folder)
        transformers.SiglipImageProcessor().save_pretrained(folder)
        spm_tokenizer(folder).save_pretrained(folder)

    @staticmethod
    def direct_scores(model, inputs, pixel_values):
        return model(pixel_values=pixel_values, input_ids=inputs["input_ids"]).logits_per_image      # [B, P]

    def test_prompts_padded_to_64_positions_with_the_sentencepiece_ids(self, built):
        import sentencepiece as spm
        ad, inputs = built.adapter, built.cap.inputs
        assert type(ad.tokenizer).__name__ == "SiglipTokenizer"
        assert tuple(inputs["input_ids"].shape) == (2, 64) == (2, ad.model.config.text_config.max_position_embeddings)
        sp = spm.SentencePieceProcessor(model_file=str(built.folder / "spiece.model"))     # read directly
        for p, prompt in enumerate(self.texts):
            want = sp.encode(prompt) + [sp.eos_id()]                                       # "</s>" ends, then pads
            assert inputs["input_ids"][p].tolist() == want + [sp.eos_id()] * (64 - len(want))
        assert [w for w, _ in ad.text_words(inputs, 1)] == ["a", "photo", "of", "a", "dog"]
        assert attnviz.explain(ad, built.cap, "text_relevance", target=0).map.shape == (6,)


class TestGitBase(_Checks):
    """microsoft/git-base-coco. Defaults: GitConfig is GIT base (6 text layers, 12 heads, 30522 tokens, bos 101,
    eos 102; image encoder ViT-B/16 at 224: 1 + 14×14 = 197 image tokens). Hub: the bert-base-uncased WordPiece
    tokenizer (BLIP's real vocab.txt is the same vocabulary) and a CLIPImageProcessor (shortest edge 224, centre crop
    224, CLIP mean/std)."""
    folder_name = "git-base-coco"
    texts = ["a photo of a cat"]
    methods = ("attention", "rollout", "relevance", "cross_attention", "caption_relevance")

    @classmethod
    def write(cls, folder):
        config = transformers.GitConfig()
        config.architectures = ["GitForCausalLM"]
        save_model(transformers.GitForCausalLM(config), folder)
        transformers.CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                        image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(folder)
        transformers.BertTokenizer(vocab=str(real(BLIP, "vocab.txt") / "vocab.txt")).save_pretrained(folder)

    @staticmethod
    def direct_scores(model, inputs, pixel_values):
        ids = inputs["caption_ids"].expand(pixel_values.shape[0], -1)
        logits = model(input_ids=ids, pixel_values=pixel_values).logits                  # [B, 197 + 1 + n, V]
        return caption_logits(logits[:, 197:], ids)                                      # image tokens come first

    def test_caption_rows_read_the_197_image_tokens_of_the_joint_attention(self, built):
        cap, vocab = built.cap, vocab_lines(BLIP)
        assert cap.inputs["caption_ids"][0].tolist() == [101] + [vocab[w] for w in ("a", "photo", "of", "a", "cat")]
        assert len(cap.cross_attentions) == 6
        assert tuple(cap.cross_attentions[0].shape) == (12, 1 + 5, 197)
        share = cap.cross_attentions[-1].sum(-1)                                         # [H, Q]: rest goes to text
        assert (share > 0).all() and (share < 1).all()


# =====================================================================================================
# Folders missing a file: say which file and what to do (issue 10, defect 6)
# =====================================================================================================

SAVED_TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "vocab.txt",
                         "spiece.model", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja"}


def _save_without(adapter, folder, *, drop: set[str]):
    adapter.model.save_pretrained(folder)
    adapter.processor.save_pretrained(folder)
    if getattr(adapter, "tokenizer", None) is not None:
        adapter.tokenizer.save_pretrained(folder)
    for name in drop & set(os.listdir(folder)):
        os.remove(folder / name)
    return folder


def test_folder_without_preprocessor_config_says_which_file_and_what_to_do(tmp_path):
    folder = _save_without(ClassifierAdapter.tiny("vit"), tmp_path, drop={"preprocessor_config.json"})
    with pytest.raises(ModelUnavailable) as err:
        attnviz.load_model(str(folder))
    msg = str(err.value)
    assert "preprocessor_config.json" in msg and "save_pretrained" in msg, msg
    assert "OSError" not in msg and msg.count(". ") == 0, msg          # one sentence, no exception name


@pytest.mark.parametrize("make", [lambda: ClipAdapter.tiny("clip"), lambda: ClipAdapter.tiny("siglip"),
                                  lambda: CaptionAdapter.tiny("blip"), lambda: CaptionAdapter.tiny("vit-gpt2"),
                                  lambda: CaptionAdapter.tiny("git")],
                         ids=["clip", "siglip", "blip", "vit-gpt2", "git"])
def test_folder_without_tokenizer_files_says_so(tmp_path, make):
    """transformers 5 builds an EMPTY tokenizer (only its special tokens) for a CLIP or BERT folder without
    tokenizer files, so every word would silently read as unknown; SigLIP and GPT-2 fail with a ValueError
    about backends. Both must say that the tokenizer files are missing."""
    folder = _save_without(make(), tmp_path, drop=SAVED_TOKENIZER_FILES)
    with pytest.raises(ModelUnavailable) as err:
        attnviz.load_model(str(folder))
    msg = str(err.value)
    assert "no tokenizer files" in msg and "save_pretrained" in msg, msg


def test_vit_gpt2_folder_with_only_vocab_and_merges_loads_its_gpt2_tokenizer(tmp_path, photo):
    """nlpconnect/vit-gpt2-image-captioning as mirrored here has vocab.json + merges.txt but no
    tokenizer_config.json; a vision-encoder-decoder config maps to no tokenizer class, so the decoder's
    GPT-2 config must pick it. Ids checked against the vocabulary the tiny tokenizer was built from."""
    tiny = CaptionAdapter.tiny("vit-gpt2")
    folder = _save_without(tiny, tmp_path, drop={"tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"})
    tiny.tokenizer.backend_tokenizer.model.save(str(folder))        # vocab.json + merges.txt, as on the hub
    assert {"vocab.json", "merges.txt"} <= set(os.listdir(folder))
    adapter = attnviz.load_model(str(folder))
    vocab = tiny.tokenizer.get_vocab()
    assert type(adapter.tokenizer).__name__ == "GPT2Tokenizer"
    assert adapter.tokenize_caption("a red cat")[0] == [vocab["a"], vocab["Ġred"], vocab["Ġcat"]]
