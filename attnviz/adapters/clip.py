"""CLIP-style image–text models: CLIP and SigLIP.

Targets are the user's prompts; a prompt's score is the image–text logit
(scaled cosine similarity; SigLIP adds its bias). Probabilities: softmax over
the prompts for CLIP (zero-shot classification), an independent sigmoid per
prompt for SigLIP (its training loss). Image-side methods run on the vision
tower unchanged, with the prompt's logit as the score.

Token layout of the vision tower: CLIP has a CLS token and reads it; SigLIP
has no CLS token: its output is an attention-pooling head whose single probe
attends over all patch tokens. For SigLIP the "output" query is that
probe's attention (averaged over its heads), so maps read
``probe_weights @ R``; a patch 'row,col' query works for both.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import transformers
from PIL import Image

from ..errors import UsageError
from ..tokens.attention import positive_grad_attention
from ..tokens.geometry import grid_layout, pair, pixels
from ..types import Target, TokenLayout
from .base import ModelAdapter, config_names, register_adapter
from .hooks import this_thread

ARCHITECTURES = {"CLIPModel": "clip", "SiglipModel": "siglip"}


@register_adapter
class ClipAdapter(ModelAdapter):
    family = "clip"
    task = "zero-shot-image-classification"
    ROWS_CAPTURE = True          # dense self-attention through fast_eager: the chunked path applies

    def __init__(self, model, processor, tokenizer=None, **kw):
        super().__init__(model, processor, **kw)
        self.tokenizer = tokenizer
        self.config = model.config
        self.kind = "siglip" if self.config.model_type == "siglip" else "clip"
        vc = self.config.vision_config
        self.patch_size = pair(vc.patch_size)
        self.native_size = pair(vc.image_size)
        self.prefix = () if self.kind == "siglip" else ("cls",)
        self.max_text_tokens = self.config.text_config.max_position_embeddings

    @property
    def n_layers(self) -> int:
        return self.config.vision_config.num_hidden_layers

    @property
    def pooling(self) -> str:
        """CLIP reads its CLS token (post-LayerNorm, projected); SigLIP's attention-pooling head reads
        every patch through one learned probe query."""
        return "attention" if self.kind == "siglip" else "cls"

    @classmethod
    def matches(cls, config) -> bool:
        return config_names(config, ARCHITECTURES, ("clip", "siglip"))

    @classmethod
    def load(cls, source, config, *, name, local_only=False):
        common = dict(use_safetensors=True, trust_remote_code=False, local_files_only=local_only)
        model_cls = transformers.SiglipModel if config.model_type == "siglip" else transformers.CLIPModel
        model = model_cls.from_pretrained(source, attn_implementation="eager", **common)
        # AutoProcessor on a folder with only these two returns the bare tokenizer: load each.
        processor = transformers.AutoImageProcessor.from_pretrained(source, **common)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **common)
        return cls(model, processor, tokenizer, name=name, source=str(source))

    @classmethod
    def tiny(cls, kind: str = "clip", *, image_size: int = 32, patch_size: int = 8, seed: int = 0):
        """Random 2-layer CLIP or SigLIP with a tiny byte-level BPE tokenizer written here."""
        torch.manual_seed(seed)
        tokenizer = tiny_tokenizer()
        tc = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  vocab_size=len(tokenizer), max_position_embeddings=16,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
        vc = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  image_size=image_size, patch_size=patch_size)
        T = transformers
        if kind == "siglip":
            model = T.SiglipModel(T.SiglipConfig(text_config=tc, vision_config=vc))
        else:
            model = T.CLIPModel(T.CLIPConfig(text_config=tc, vision_config=vc, projection_dim=16))
        model.config.architectures = [type(model).__name__]
        model.set_attn_implementation("eager")
        processor = T.CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size},
                                         image_mean=[0.5] * 3, image_std=[0.5] * 3)
        return cls(model, processor, tokenizer, name=f"tiny-{kind}", source="<memory>")

    # --- inputs -------------------------------------------------------
    def prepare(self, image: Image.Image, *, texts: Optional[Sequence[str]] = None,
                size: Optional[tuple[int, int]] = None) -> dict[str, Any]:
        prompts = [str(t) for t in (texts or [])]
        if not prompts:
            raise UsageError("Give at least one text prompt (--text) for an image–text model.")
        for i, p in enumerate(prompts):
            if not p.strip():
                raise UsageError(f"Prompt {i + 1} is empty; type a few words.")
        notes = []
        full = self.tokenizer(prompts, truncation=False)["input_ids"]
        for i, ids in enumerate(full):
            if len(ids) > self.max_text_tokens:
                notes.append(f"Prompt {i + 1} was cut to {self.max_text_tokens} tokens, the model's limit.")
        # SigLIP was trained on max_length padding and reads the last position: keep that.
        padding = "max_length" if self.kind == "siglip" else True
        text = self.tokenizer(prompts, padding=padding, truncation=True, max_length=self.max_text_tokens,
                              return_tensors="pt")
        if size is not None:
            self.check_size(size)                 # before the processor resizes: refuse what would not fit
        pixel_values, box = pixels(self.processor, image, self.patch_size, size, max_patches=self.max_patches())
        return {"pixel_values": pixel_values, "input_ids": text["input_ids"],
                "attention_mask": text.get("attention_mask", torch.ones_like(text["input_ids"])),
                "prompts": prompts, "notes": notes,
                "box": box}

    def layout(self, inputs) -> TokenLayout:
        return grid_layout(self.prefix, self.patch_size, inputs["pixel_values"])

    def text_readout_index(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[P] position each prompt's embedding is read from (CLIP: first EOS; SigLIP: last)."""
        if self.kind == "siglip":
            return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, dtype=torch.long)
        eos = self.config.text_config.eos_token_id
        if eos == 2:    # legacy CLIP configs: the EOS has the largest id
            return input_ids.argmax(-1)
        return (input_ids == eos).int().argmax(-1)

    def text_positions(self, inputs, p: int) -> torch.Tensor:
        """Sequence positions of prompt ``p``'s real tokens (padding excluded)."""
        return inputs["attention_mask"][p].bool().nonzero()[:, 0]

    def text_tokens(self, inputs, p: int) -> list[str]:
        """Prompt ``p``'s tokens as text, one per position (a byte piece of a longer character shows as '')."""
        ids = inputs["input_ids"][p][self.text_positions(inputs, p)].tolist()
        return [self.tokenizer.decode([i]) for i in ids]

    def text_words(self, inputs, p: int) -> list[tuple[str, list[int]]]:
        """The prompt's words with their token indices: (text, token indices); special tokens left out.

        Word boundaries come from the tokenizer's own marks: CLIP's BPE ends a word's last piece with
        "</w>", SentencePiece (SigLIP) and GPT-2 style BPE start a word with "▁" / "Ġ". So a word the
        vocabulary lacks ("cat" spelled c-a-t) is still one word. A word cut short by truncation, whose
        bytes do not decode, is dropped.
        """
        ids = inputs["input_ids"][p][self.text_positions(inputs, p)].tolist()
        pieces = self.tokenizer.convert_ids_to_tokens(ids)
        special = set(self.tokenizer.all_special_ids)
        groups: list[tuple[str, list[int]]] = []

        def close(idx: list[int]) -> None:
            text = self.tokenizer.decode([ids[k] for k in idx]).strip()
            if idx and text and "\ufffd" not in text:
                groups.append((text, idx))

        current: list[int] = []
        for i, (tok, piece) in enumerate(zip(ids, pieces)):
            if tok in special:
                close(current)
                current = []
                continue
            if str(piece).startswith(("▁", "Ġ")) and current:
                close(current)
                current = []
            current.append(i)
            if str(piece).endswith("</w>"):
                close(current)
                current = []
        close(current)
        return groups

    # --- forward ------------------------------------------------------
    def _run(self, inputs, pixel_values, *, attentions):
        ids, mask = inputs["input_ids"].to(self.device), inputs["attention_mask"].to(self.device)
        if self.kind == "siglip":
            mask = None   # SigLIP was trained attending to its padding; its processor gives no mask either
        kw = {"interpolate_pos_encoding": True} if tuple(pixel_values.shape[-2:]) != self.native_size else {}
        pool: list[torch.Tensor] = []
        hooks = []
        if attentions and self.kind == "siglip":
            # The MAP head's probe attention is the readout. nn.MultiheadAttention returns only a
            # head-averaged copy outside the graph, so the hook recomputes the head from its own weights
            # and keeps the per-head probabilities the output is computed from (differentiable).
            hooks.append(self.model.vision_model.head.attention.register_forward_hook(this_thread(probe_attention_hook(pool))))
        if attentions and torch.is_grad_enabled():
            # Weights are frozen and token ids are integers: let the text embeddings carry
            # gradients so text-side relevance can differentiate the text attentions.
            hooks.append(self.model.text_model.embeddings.register_forward_hook(
                this_thread(lambda m, a, out: out.requires_grad_() if not out.requires_grad else None)))
        try:
            out = self.model(pixel_values=pixel_values.to(self.device), input_ids=ids, attention_mask=mask,
                             output_attentions=attentions, **kw)
        finally:
            for h in hooks:
                h.remove()
        scores = out.logits_per_image                                   # [B, P]
        if not attentions:
            return scores, None, {}
        extras = {"grad_wrt": {"text_attentions": tuple(out.text_model_output.attentions)},   # L × [P, H, S, S]
                  "text_attentions": tuple(out.text_model_output.attentions),
                  "prompts": inputs["prompts"], "notes": inputs["notes"]}
        if pool:
            probs = pool[0]                                               # [B, H, 1, T]
            extras["readout"] = probs.mean(1)[:, 0, :]                    # [B, T], heads averaged
            extras["grad_wrt"]["probe_attention"] = (probs,)
            extras["probe_attention"] = (probs,)
        return scores, out.vision_model_output.attentions, extras

    def _readout_attention(self, capture, target):
        """SigLIP: the probe's attention weighted by its gradient for this prompt, E_h[(∇A ⊙ A)⁺], [T]."""
        a = capture.extras["probe_attention"][0][0]                              # [H, 1, T]
        g = capture.grads(target.index, "probe_attention")[0][0]                 # [H, 1, T]
        return positive_grad_attention(a, g)[0]                                  # [T]

    def _targets(self, inputs, scores):
        return tuple(Target(i, p, "prompt", float(s)) for i, (p, s) in enumerate(zip(inputs["prompts"], scores.tolist())))

    def probabilities(self, capture):
        if self.kind == "siglip":
            return torch.sigmoid(capture.scores)
        return torch.softmax(capture.scores, -1)

    def probabilities_from_scores(self, scores):
        if self.kind == "siglip":
            return torch.sigmoid(scores)        # each prompt on its own
        return torch.softmax(scores, -1) if scores.shape[-1] > 1 else None   # one prompt: always 1

    def token_block(self, layer: int) -> torch.nn.Module:
        return self.model.vision_model.encoder.layers[layer]

    def family_method_defaults(self, method: str) -> dict[str, Any]:
        # Chefer et al.'s CLIP demo accumulates only the last layer: earlier CLIP layers
        # spread relevance over the whole image and the maps turn to noise.
        if method in ("relevance", "text_relevance") and self.kind == "clip":
            return {"start_layer": -1}
        return {}


def probe_attention_hook(store: list):
    """Forward hook for an ``nn.MultiheadAttention`` (batch_first) called as ``mha(query, key, value)``:
    recompute its output from its own projections, append the per-head probabilities [B, H, Q, T] to
    ``store`` and return the recomputed output, so those probabilities are what the output depends on.
    Same maths as torch's ``multi_head_attention_forward`` without dropout or masks (eval)."""
    def hook(m: torch.nn.MultiheadAttention, args, out):
        query, key, value = args[:3]
        b, nq, d = query.shape
        h = m.num_heads
        wq, wk, wv = m.in_proj_weight.chunk(3)
        bq, bk, bv = m.in_proj_bias.chunk(3) if m.in_proj_bias is not None else (None,) * 3

        def heads(x, w, bias):
            y = torch.nn.functional.linear(x, w, bias)                               # [B, N, D]
            return y.view(b, -1, h, d // h).transpose(1, 2)                          # [B, H, N, D/H]
        q, k, v = heads(query, wq, bq), heads(key, wk, bk), heads(value, wv, bv)
        probs = torch.softmax(q @ k.transpose(-1, -2) / (d // h) ** 0.5, dim=-1)    # [B, H, Q, T]
        mixed = (probs @ v).transpose(1, 2).reshape(b, nq, d)                        # [B, Q, D]
        store.append(probs)
        return (m.out_proj(mixed), probs.mean(1))
    return hook


def tiny_tokenizer():
    """A byte-level BPE tokenizer small enough to write in a test: 256 byte symbols (+ end-of-word forms)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    merges = ["r e", "re d</w>", "c i", "ci r"]
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
