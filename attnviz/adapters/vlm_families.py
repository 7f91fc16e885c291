"""The four vision-language families the VLM adapter reads, one small class each.

Each says how its prompt is written, what its forward needs besides ids and pixels (PaliGemma's
``token_type_ids``: image and prompt attend both ways, the answer causally, and without them the mask is
silently fully causal; Qwen2-VL's ``mm_token_type_ids`` for M-RoPE), its image-token geometry read from the
processor's output and the config (``vlm_layout``), which pixels feed which image token, and a tiny random
model for tests (a 2-layer vision tower and a 2-layer decoder, a byte-level tokenizer written here).

* LLaVA (Liu et al. 2023): CLIP crop (``view_box``), the vision grid, CLS dropped under the "default"
  feature strategy.
* PaliGemma (Beyer et al. 2024): SigLIP grid of the squashed image; image tokens first.
* Qwen2-VL (Wang et al. 2024): the image resized to whole merged patches; the merged grid ``grid_thw / m``.
* Idefics3 / SmolVLM (Laurençon et al. 2024): tiles row by row, each ``(S / patch) / scale`` tokens a side
  after pixel shuffle, then the global view (the whole image at tile size).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import transformers

from ..tokens.geometry import view_box
from .captioning import tiny_byte_bpe_tokenizer
from .vlm_layout import ImageTokens, View, tiled

# A chat template small enough for the tiny models: "user:<image> question\nassistant:".
TINY_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}:{% for c in m['content'] %}{% if c['type'] == 'image' %}"
                 "IMAGE{% else %} {{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def _tiny_tokenizer(specials: list[str], *, bos: str = "<s>", eos: str = "</s>"):
    tok = tiny_byte_bpe_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": specials, "bos_token": bos, "eos_token": eos,
                            "pad_token": "<pad>"})
    return tok


def _text_config(tok, **kw) -> dict:
    return dict(TINY, vocab_size=len(tok), num_key_value_heads=4, max_position_embeddings=512,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kw)


def _grid_index(h: int, w: int, cell: int, cols: int, rows: int) -> torch.Tensor:
    """[h, w] row-major cell index of each pixel for ``cell``-pixel cells (leftover edge pixels join the last)."""
    r = (torch.arange(h) // cell).clamp(max=rows - 1)
    c = (torch.arange(w) // cell).clamp(max=cols - 1)
    return r[:, None] * cols + c[None, :]                                                  # [h, w]


class Family:
    name: ClassVar[str]
    architectures: ClassVar[tuple[str, ...]]
    model_types: ClassVar[tuple[str, ...]]
    image_token: ClassVar[str] = "<image>"

    def __init__(self, config, processor):
        self.config, self.processor = config, processor

    @property
    def vision_config(self):
        return self.config.vision_config

    def prompt(self, question: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return f"{self.image_token}\n{question}\n"

    def encode(self, image, prompt: str) -> dict[str, Any]:
        return dict(self.processor(images=[image], text=prompt, return_tensors="pt"))

    def extra_inputs(self, enc: dict[str, Any], n_answer: int) -> dict[str, Any]:
        """Forward keywords besides input_ids / attention_mask / pixel_values, for prompt + ``n_answer`` tokens."""
        return {}

    def image_token_id(self) -> int:
        c = self.config
        return int(getattr(c, "image_token_id", None) if getattr(c, "image_token_id", None) is not None
                   else c.image_token_index)

    def positions(self, ids: torch.Tensor) -> tuple[int, ...]:
        return tuple((ids == self.image_token_id()).nonzero()[:, 0].tolist())

    def geometry(self, enc: dict[str, Any], image) -> ImageTokens:
        raise NotImplementedError

    def pixel_tokens(self, enc: dict[str, Any], geo: ImageTokens) -> tuple[torch.Tensor, int]:
        """(index, channel_dim): the image token each pixel feeds (-1: none), shaped like ``pixel_values``
        without its channel dimension ``channel_dim``."""
        raise NotImplementedError

    #: (image-token offset in the vision sequence, vision layers whose output the image tokens read), or None
    #: where relevance is not carried into the vision tower (the tower's attention weights cannot be read).
    vision_map = None

    def vision_token_index(self, model, n_tokens: int, batch: int, seq: int) -> torch.Tensor:
        """[batch, seq] the image token each vision-tower token feeds (-1: none, e.g. a dropped CLS), for relevance
        carried into the tower. Here one vision token per image token: image token k is vision token k + offset."""
        offset, _ = self.vision_map
        idx = torch.arange(seq) - offset                                                   # [seq]
        idx[(idx < 0) | (idx >= n_tokens)] = -1
        return idx.expand(batch, seq)

    def vision_tower(self, model) -> torch.nn.Module:
        return model.model.vision_tower

    def language_model(self, model) -> torch.nn.Module:
        """The decoder that reads the spliced sequence (its ``inputs_embeds`` hold the image tokens)."""
        return model.model.language_model

    @classmethod
    def tiny(cls, seed: int = 0):
        raise NotImplementedError


class Llava(Family):
    name = "llava"
    architectures = ("LlavaForConditionalGeneration",)
    model_types = ("llava",)

    @property
    def vision_map(self):
        """Image token k is vision token k + 1 (CLS dropped; "full": k) of ``hidden_states[vision_feature_layer]``,
        the output of that many vision layers."""
        layer = self.config.vision_feature_layer
        if not isinstance(layer, int):
            return None                  # several layers concatenated: no single chain to follow
        n = self.vision_config.num_hidden_layers
        return (0 if self.config.vision_feature_select_strategy == "full" else 1, layer % (n + 1))

    def geometry(self, enc, image):
        h, w = enc["pixel_values"].shape[-2:]
        p = self.vision_config.patch_size
        box = view_box(self.processor.image_processor, image.size) or (0, 0, *image.size)
        # The "default" strategy drops the vision tower's CLS token; "full" keeps it first.
        prefix = 1 if self.config.vision_feature_select_strategy == "full" else 0
        view = View("image", h // p, w // p, tuple(float(x) for x in box), 0)
        return ImageTokens(self.positions(enc["input_ids"][0]), (view,), image.size, view.rows, view.cols, prefix)

    def pixel_tokens(self, enc, geo):
        pv = enc["pixel_values"]                                                            # [1, 3, H, W]
        v = geo.views[0]
        idx = _grid_index(pv.shape[-2], pv.shape[-1], self.vision_config.patch_size, v.cols, v.rows) + geo.prefix
        return idx[None], 1                                                                 # [1, H, W]

    @classmethod
    def tiny(cls, seed=0, image_size=32, patch_size=8):
        T = transformers
        torch.manual_seed(seed)
        tok = _tiny_tokenizer(["<image>"])
        ip = T.CLIPImageProcessor(size={"shortest_edge": image_size},
                                  crop_size={"height": image_size, "width": image_size},
                                  image_mean=[0.5] * 3, image_std=[0.5] * 3)
        proc = T.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=patch_size,
                                vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                chat_template=TINY_TEMPLATE.replace("IMAGE", "<image>"))
        cfg = T.LlavaConfig(vision_config=T.CLIPVisionConfig(**TINY, image_size=image_size, patch_size=patch_size),
                            text_config=T.LlamaConfig(**_text_config(tok)),
                            image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
                            vision_feature_select_strategy="default")
        return T.LlavaForConditionalGeneration(cfg), proc, tok


class PaliGemma(Family):
    name = "paligemma"
    architectures = ("PaliGemmaForConditionalGeneration",)
    model_types = ("paligemma",)

    @property
    def vision_map(self):
        """Image token k is SigLIP token k of the last layer's output (no CLS)."""
        return (0, self.vision_config.num_hidden_layers)

    def prompt(self, question):
        return question            # the processor puts the image tokens and <bos> first and ends with "\n"

    def encode(self, image, prompt):
        return dict(self.processor(images=[image], text=prompt, return_tensors="pt"))

    def extra_inputs(self, enc, n_answer):
        # The image and prompt attend to each other both ways (0), the answer causally (1), as the processor marks
        # a suffix; without token_type_ids the mask is silently fully causal.
        tt = enc["token_type_ids"]
        return {"token_type_ids": torch.cat([tt, tt.new_ones(1, n_answer)], dim=1)}

    def geometry(self, enc, image):
        h, w = enc["pixel_values"].shape[-2:]
        p = self.vision_config.patch_size
        view = View("image", h // p, w // p, (0.0, 0.0, float(image.size[0]), float(image.size[1])), 0)
        return ImageTokens(self.positions(enc["input_ids"][0]), (view,), image.size, view.rows, view.cols)

    def pixel_tokens(self, enc, geo):
        pv = enc["pixel_values"]
        v = geo.views[0]
        return _grid_index(pv.shape[-2], pv.shape[-1], self.vision_config.patch_size, v.cols, v.rows)[None], 1

    @classmethod
    def tiny(cls, seed=0, image_size=32, patch_size=8):
        T = transformers
        torch.manual_seed(seed)
        tok = _tiny_tokenizer(["<image>"], bos="<bos>", eos="<eos>")
        n_img = (image_size // patch_size) ** 2
        ip = T.SiglipImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                                    image_std=[0.5] * 3)
        ip.image_seq_length = n_img
        proc = T.PaliGemmaProcessor(image_processor=ip, tokenizer=tok)          # adds 1,152 location tokens
        text = _text_config(tok, head_dim=8)
        text.update(vocab_size=len(tok))
        cfg = T.PaliGemmaConfig(vision_config=dict(TINY, image_size=image_size, patch_size=patch_size,
                                                   projection_dim=32),
                                text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                                projection_dim=32)
        return T.PaliGemmaForConditionalGeneration(cfg), proc, tok


class ImageOnlyQwen2VLProcessor(transformers.Qwen2VLProcessor):
    """Qwen2VLProcessor assembled from its image processor, tokenizer and chat template: without torchvision
    ``AutoProcessor`` cannot build it (its video processor needs torchvision); images need none."""

    @classmethod
    def get_attributes(cls):
        return ["image_processor", "tokenizer"]

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.video_processor = None
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)


class Qwen2VL(Family):
    name = "qwen2_vl"
    architectures = ("Qwen2VLForConditionalGeneration",)
    model_types = ("qwen2_vl",)
    image_token = "<|vision_start|><|image_pad|><|vision_end|>"

    def extra_inputs(self, enc, n_answer):
        # M-RoPE needs to know which tokens are the image's; the answer's are text (0).
        mm = enc["mm_token_type_ids"]
        return {"image_grid_thw": enc["image_grid_thw"],
                "mm_token_type_ids": torch.cat([mm, mm.new_zeros(1, n_answer)], dim=1)}

    def geometry(self, enc, image):
        t, gh, gw = (int(x) for x in enc["image_grid_thw"][0])
        m = self.vision_config.spatial_merge_size
        view = View("image", gh // m, gw // m, (0.0, 0.0, float(image.size[0]), float(image.size[1])), 0)
        return ImageTokens(self.positions(enc["input_ids"][0]), (view,), image.size, view.rows, view.cols)

    def pixel_tokens(self, enc, geo):
        # pixel_values [N_patches, C·T·p·p]: the processor orders patches merged token by merged token (m² each).
        m = self.vision_config.spatial_merge_size
        return torch.arange(enc["pixel_values"].shape[0]) // (m * m), 1                     # [N_patches]

    def vision_tower(self, model):
        return model.model.visual

    @classmethod
    def tiny(cls, seed=0, patch_size=4, merge_size=2):
        T = transformers
        torch.manual_seed(seed)
        tok = _tiny_tokenizer(["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"], eos="<|im_end|>")
        ip = T.Qwen2VLImageProcessor(min_pixels=16 * 16, max_pixels=64 * 64, patch_size=patch_size,
                                     merge_size=merge_size, temporal_patch_size=2, image_mean=[0.5] * 3,
                                     image_std=[0.5] * 3)
        proc = ImageOnlyQwen2VLProcessor(image_processor=ip, tokenizer=tok,
                                         chat_template=TINY_TEMPLATE.replace("IMAGE", cls.image_token))
        vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, patch_size=patch_size,
                      spatial_merge_size=merge_size, temporal_patch_size=2, mlp_ratio=2)
        text = _text_config(tok, rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]})
        cfg = T.Qwen2VLConfig(vision_config=vision, text_config=text,
                              image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
                              vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
                              vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))
        return T.Qwen2VLForConditionalGeneration(cfg), proc, tok


class Idefics3(Family):
    name = "idefics3"
    architectures = ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration")
    model_types = ("idefics3", "smolvlm")

    def tile_counts(self, image) -> tuple[int, int]:
        """(rows, cols) of tiles the image processor cuts this image into (0, 0: the global view alone)."""
        info = self.processor.image_processor(images=[[image]], return_row_col_info=True, return_tensors="pt")
        return int(info["rows"][0][0]), int(info["cols"][0][0])

    def grid(self) -> int:
        vc = self.vision_config
        return (vc.image_size // vc.patch_size) // self.config.scale_factor

    def geometry(self, enc, image):
        rows, cols = self.tile_counts(image)
        views, cr, cc = tiled(rows, cols, self.grid(), image.size, with_global=True)
        return ImageTokens(self.positions(enc["input_ids"][0]), tuple(views), image.size, cr, cc)

    def pixel_tokens(self, enc, geo):
        pv = enc["pixel_values"]                                                            # [1, n_img, 3, S, S]
        g, s = self.grid(), pv.shape[-1]
        cell = self.vision_config.patch_size * self.config.scale_factor
        per = _grid_index(s, s, cell, g, g)                                                 # [S, S]
        n_img = pv.shape[1]
        return (per[None] + g * g * torch.arange(n_img)[:, None, None])[None], 2           # [1, n_img, S, S]

    @property
    def vision_map(self):
        """Every view's image tokens read the last vision layer's output (offset unused: see vision_token_index)."""
        return (0, self.vision_config.num_hidden_layers)

    def vision_token_index(self, model, n_tokens, batch, seq):
        """Pixel shuffle concatenates scale² patches (a square block) into one image token. Which ones is read off
        the model's own connector, applied to the patch indices; view b's tokens follow views 0 … b−1's."""
        s = self.config.scale_factor
        probe = torch.arange(seq, dtype=torch.float64).view(1, seq, 1)                    # [1, S, 1] patch indices
        groups = model.model.connector.pixel_shuffle(probe, s)[0].round().long()           # [S / s², s²]
        per = torch.full((seq,), -1, dtype=torch.long)
        per[groups.reshape(-1)] = torch.arange(groups.shape[0]).repeat_interleave(s * s)  # [S] token of each patch
        idx = per[None] + groups.shape[0] * torch.arange(batch)[:, None]                   # [batch, S]
        if idx.max() >= n_tokens:
            raise RuntimeError("The vision tower saw more views than the prompt has image tokens for.")
        return idx

    def vision_tower(self, model):
        return model.model.vision_model

    def language_model(self, model):
        return model.model.text_model

    @classmethod
    def tiny(cls, seed=0, image_size=32, patch_size=8, scale_factor=2):
        T = transformers
        torch.manual_seed(seed)
        rowcol = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
        tok = _tiny_tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + rowcol)
        ip = T.Idefics3ImageProcessor(size={"longest_edge": 2 * image_size},
                                      max_image_size={"longest_edge": image_size}, image_mean=[0.5] * 3,
                                      image_std=[0.5] * 3)
        seq = ((image_size // patch_size) // scale_factor) ** 2
        proc = T.Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=seq,
                                   chat_template=TINY_TEMPLATE.replace("IMAGE", "<image>"))
        cfg = T.Idefics3Config(vision_config=dict(TINY, image_size=image_size, patch_size=patch_size),
                               text_config=_text_config(tok), scale_factor=scale_factor,
                               image_token_id=tok.convert_tokens_to_ids("<image>"))
        return T.Idefics3ForConditionalGeneration(cfg), proc, tok


FAMILIES: dict[str, type[Family]] = {f.name: f for f in (Llava, PaliGemma, Qwen2VL, Idefics3)}


def family_of(config) -> type[Family] | None:
    archs = set(getattr(config, "architectures", None) or [])
    for f in FAMILIES.values():
        if archs & set(f.architectures) or (not archs and config.model_type in f.model_types):
            return f
    return None
