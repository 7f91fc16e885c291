"""Image-captioning models: BLIP, VisionEncoderDecoder (ViT encoder + GPT-2 decoder), GIT.

A capture generates a caption (greedy or beam search; or takes the caption the
user typed) and then runs ONE teacher-forced forward over its tokens with
attentions, gradients kept for per-token backward passes.

Targets are the caption's tokens (the start token and the end token are not
targets). Conventions:

* Position: the decoder input is ``[start, c_0, …, c_{n-1}]``; decoder
  position ``t`` reads ``start, c_0 … c_{t-1}`` and *predicts* ``c_t``. That
  position is the query that "produced" caption token ``t``, so target ``t``,
  row ``t`` of every decoder attention and row ``t`` of ``cross_attentions``
  line up. The last row (``t = n``) predicts the end of the caption.
* Score: a target's score is the LOGIT of token ``c_t`` at position ``t``
  (before the softmax), the quantity Chefer et al. 2021 differentiate and the
  one Captum methods explain; it does not saturate for confident tokens as a
  log-probability does. Its probability (softmax over the vocabulary at that
  position, without generation-time processing such as repetition penalties
  or beam scores) is ``adapter.probabilities(capture)``, also in the CLI's JSON.
* Image side: ``Capture.attentions`` are the image encoder's self-attentions
  and ``Capture.layout`` its token layout (CLS + patches for all three), so
  every image-side method works unchanged. ``Capture.cross_attentions[l]`` is
  ``[H, Q, T_image]``: the decoder's cross-attention (BLIP, ViT-GPT2), or for
  GIT, which has no cross-attention, the caption rows × image columns of its
  joint self-attention (GIT puts the image tokens first), so GIT rows sum to
  the share of attention spent on the image (< 1).
* "output" query for image-side methods: how the decoder reads the encoder's
  tokens, i.e. the cross-attention averaged over layers, heads and caption
  positions (renormalised over image tokens for GIT).

Generation: greedy, 20 new tokens by default (``adapter.num_beams``,
``adapter.max_new_tokens``, or the same names as ``prepare`` keywords), at
least one token (an empty caption explains nothing), the checkpoint's other
generation settings kept. Captions (generated or typed) are limited to the
model's positions and to 64 tokens; a longer typed caption is cut, with a note.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import transformers
from PIL import Image

from ..errors import ModelUnavailable, UsageError
from ..tokens.attention import positive_grad_attention
from ..tokens.geometry import grid_layout, pair, view_box
from ..types import Capture, Target, TokenLayout
from .base import ModelAdapter, register_adapter
from .classifier import prefix_names
from .hooks import this_thread

ARCHITECTURES = {"BlipForConditionalGeneration": "blip", "VisionEncoderDecoderModel": "vit-gpt2",
                 "GitForCausalLM": "git"}
VED_ENCODERS = {"vit", "deit"}          # ViT-family encoders whose prefix tokens we know
VED_DECODERS = {"gpt2"}
MAX_CAPTION_TOKENS = 64                 # per-token maps and the cross-attention store grow with length
MAX_BEAMS = 8
DEFAULT_MAX_NEW_TOKENS = 20


def _kind(config) -> str:
    archs = getattr(config, "architectures", None) or []
    for a in archs:
        if a in ARCHITECTURES:
            kind = ARCHITECTURES[a]
            break
    else:
        if config.model_type != "vision-encoder-decoder":
            what = ", ".join(archs) or config.model_type
            raise ModelUnavailable(f"attnviz does not support this captioning model ({what}).")
        kind = "vit-gpt2"
    if kind == "vit-gpt2":
        enc, dec = config.encoder.model_type, config.decoder.model_type
        if enc not in VED_ENCODERS or dec not in VED_DECODERS:
            raise ModelUnavailable(f"attnviz supports VisionEncoderDecoder models with a ViT or DeiT encoder and a "
                                   f"GPT-2 decoder; this one has a {enc} encoder and a {dec} decoder.")
    return kind


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


@register_adapter
class CaptionAdapter(ModelAdapter):
    family = "captioning"
    task = "image-to-text"
    pooling = "attention"                # the decoder reads every encoder output token through cross-attention
    REDUCED_PRECISION = False            # the caption comes from generate(): its maps explain those tokens in float32

    def __init__(self, model, processor, tokenizer=None, **kw):
        super().__init__(model, processor, **kw)
        self.tokenizer = tokenizer
        self.config = model.config
        self.kind = _kind(self.config)
        gen = getattr(model, "generation_config", None)
        c = self.config
        if self.kind == "blip":
            vc, tc = c.vision_config, c.text_config
            # BlipForConditionalGeneration.generate starts at text bos and stops at sep.
            self.start_id, end = tc.bos_token_id, _ids(tc.sep_token_id)
            positions, self.n_decoder_layers = tc.max_position_embeddings, tc.num_hidden_layers
            self.prefix = ("cls",)
        elif self.kind == "vit-gpt2":
            vc, dc = c.encoder, c.decoder
            self.start_id = next(v for v in (getattr(gen, "decoder_start_token_id", None), c.decoder_start_token_id,
                                             dc.bos_token_id) if v is not None)
            end = _ids(getattr(gen, "eos_token_id", None)) or _ids(c.eos_token_id) or _ids(dc.eos_token_id)
            positions, self.n_decoder_layers = dc.n_positions, dc.n_layer
            self.prefix = prefix_names(vc)
        else:
            vc = c.vision_config
            self.start_id = next(v for v in (getattr(gen, "bos_token_id", None), c.bos_token_id) if v is not None)
            end = _ids(getattr(gen, "eos_token_id", None)) or _ids(c.eos_token_id)
            positions, self.n_decoder_layers = c.max_position_embeddings, c.num_hidden_layers
            self.prefix = ("cls",)
        self.vision_config = vc
        self.end_ids = set(end)
        self.patch_size = pair(vc.patch_size)
        self.native_size = pair(vc.image_size)
        # Decoder input is start + caption: the caption gets one position less than the model has.
        self.max_caption_tokens = max(1, min(MAX_CAPTION_TOKENS, int(positions) - 1))
        #: Generation settings used when ``prepare`` is not given them (greedy, 20 new tokens).
        self.num_beams = 1
        self.max_new_tokens = min(DEFAULT_MAX_NEW_TOKENS, self.max_caption_tokens)

    @property
    def n_layers(self) -> int:
        return self.vision_config.num_hidden_layers

    # --- loading ------------------------------------------------------
    @classmethod
    def matches(cls, config) -> bool:
        archs = getattr(config, "architectures", None) or []
        return bool(set(archs) & set(ARCHITECTURES)) or config.model_type == "vision-encoder-decoder"

    @classmethod
    def load(cls, source, config, *, name, local_only=False):
        kind = _kind(config)
        common = dict(use_safetensors=True, trust_remote_code=False, local_files_only=local_only)
        model_cls = {"blip": transformers.BlipForConditionalGeneration,
                     "vit-gpt2": transformers.VisionEncoderDecoderModel,
                     "git": transformers.GitForCausalLM}[kind]
        model = model_cls.from_pretrained(source, attn_implementation="eager", **common)
        # AutoProcessor on a folder with only these two returns the bare tokenizer: load each.
        processor = transformers.AutoImageProcessor.from_pretrained(source, **common)
        # A vision-encoder-decoder config maps to no tokenizer class: without a tokenizer_config.json that
        # names one (nlpconnect/vit-gpt2's vocab.json + merges.txt alone), the decoder's config (GPT-2) picks it.
        by = {"config": config.decoder} if kind == "vit-gpt2" else {}
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **by, **common)
        return cls(model, processor, tokenizer, name=name, source=str(source))

    @classmethod
    def tiny(cls, kind: str = "vit-gpt2", *, image_size: int = 32, patch_size: int = 8, max_positions: int = 24,
             seed: int = 0):
        """A random 2-layer captioner: kind in blip, vit-gpt2, git, with a tiny tokenizer written here."""
        torch.manual_seed(seed)
        T = transformers
        small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
        vision = dict(small, image_size=image_size, patch_size=patch_size)
        if kind == "blip":
            tok = tiny_wordpiece_tokenizer(bos="[DEC]")
            ids = dict(bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id,
                       pad_token_id=tok.pad_token_id)
            # BLIP's vision init (std 1e-10) makes every image token the same: attention would be uniform.
            text = dict(small, vocab_size=len(tok), encoder_hidden_size=32, max_position_embeddings=max_positions,
                        initializer_range=0.2, **ids)
            model = T.BlipForConditionalGeneration(T.BlipConfig(
                text_config=text, vision_config=dict(vision, initializer_range=0.2), initializer_range=0.2))
            gens = [model.generation_config, model.text_decoder.generation_config]
            processor = T.BlipImageProcessor(size={"height": image_size, "width": image_size},
                                             image_mean=[0.5] * 3, image_std=[0.5] * 3)
        elif kind == "vit-gpt2":
            tok = tiny_byte_bpe_tokenizer()
            e = tok.eos_token_id     # GPT-2 captioners start, end and pad with <|endoftext|>
            ids = dict(bos_token_id=e, eos_token_id=e, pad_token_id=e, decoder_start_token_id=e)
            enc = T.ViTConfig(**vision)
            # Untied output embeddings: a random tied GPT-2 predicts its own input (the end token) first.
            dec = T.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=max_positions,
                               add_cross_attention=True, is_decoder=True, tie_word_embeddings=False,
                               bos_token_id=e, eos_token_id=e, pad_token_id=e)
            config = T.VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
            for k, v in ids.items():
                setattr(config, k, v)
            model = T.VisionEncoderDecoderModel(config=config)
            gens = [model.generation_config]
            processor = T.ViTImageProcessor(size={"height": image_size, "width": image_size},
                                            image_mean=[0.5] * 3, image_std=[0.5] * 3)
        elif kind == "git":
            tok = tiny_wordpiece_tokenizer()
            ids = dict(bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
            model = T.GitForCausalLM(T.GitConfig(vision_config=vision, vocab_size=len(tok),
                                                 max_position_embeddings=max_positions, **small, **ids))
            gens = [model.generation_config]
            processor = T.CLIPImageProcessor(size={"shortest_edge": image_size},
                                             crop_size={"height": image_size, "width": image_size},
                                             image_mean=[0.5] * 3, image_std=[0.5] * 3)
        else:
            raise UsageError(f"Unknown tiny captioner '{kind}': use blip, vit-gpt2 or git.")
        for g in gens:
            for k, v in ids.items():
                setattr(g, k, v)
        model.config.architectures = [type(model).__name__]
        model.set_attn_implementation("eager")
        return cls(model, processor, tok, name=f"tiny-{kind}", source="<memory>")

    # --- inputs -------------------------------------------------------
    def prepare(self, image: Image.Image, *, texts: Optional[Sequence[str]] = None,
                size: Optional[tuple[int, int]] = None, num_beams: Optional[int] = None,
                max_new_tokens: Optional[int] = None, caption_ids: Optional[Sequence[int]] = None) -> dict[str, Any]:
        """Pixels, generation settings and, when given, the caption to score.

        ``texts=[caption]``: a typed caption, scored teacher-forced instead of
        generating. ``caption_ids``: the caption as token ids (no start/end
        token), e.g. to re-score a generated caption exactly.
        """
        if size is not None:
            raise UsageError("Captioning models see the image at their native size; a custom input size (--size) "
                             "is not supported for them.")
        texts = [str(t) for t in texts] if texts else None          # no caption typed: generate one
        generation = {"num_beams": self._check_int("num_beams", self.num_beams if num_beams is None else num_beams,
                                                   1, MAX_BEAMS),
                      "max_new_tokens": self._check_int("max_new_tokens", self.max_new_tokens if max_new_tokens is None
                                                        else max_new_tokens, 1, self.max_caption_tokens)}
        notes: list[str] = []
        ids: Optional[list[int]] = None
        if texts is not None and caption_ids is not None:
            raise UsageError("Give either a typed caption or caption token ids, not both.")
        if texts is not None:
            if len(texts) != 1:
                raise UsageError(f"Type one caption to score, not {len(texts)}.")
            ids, notes = self.tokenize_caption(texts[0])
        elif caption_ids is not None:
            ids = [int(i) for i in caption_ids]
            if not ids:
                raise UsageError("The caption is empty.")
            if len(ids) > self.max_caption_tokens:
                raise UsageError(f"The caption has {len(ids)} tokens; this model takes at most "
                                 f"{self.max_caption_tokens}.")
            vocab = self._vocab_size()
            if any(not 0 <= i < vocab for i in ids):
                raise UsageError(f"Caption token ids must be between 0 and {vocab - 1}.")
        pixel_values = self.processor(images=image, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "box": view_box(self.processor, image.size),
                "caption_ids": None if ids is None else torch.tensor([[self.start_id] + ids]),   # [1, 1 + n]
                "source": "generated" if ids is None else ("typed" if texts is not None else "ids"),
                "generation": generation, "notes": notes}

    @staticmethod
    def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            v = int(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            v = value
        elif isinstance(value, float) and value.is_integer():
            v = int(value)
        else:
            raise UsageError(f"{name} must be a whole number, got '{value}'.")
        if not lo <= v <= hi:
            raise UsageError(f"{name} must be between {lo} and {hi} for this model, got {v}.")
        return v

    def _vocab_size(self) -> int:
        return self._word_embeddings().num_embeddings

    def tokenize_caption(self, text: str) -> tuple[list[int], list[str]]:
        """Token ids of a typed caption (no special tokens) and notes for the user."""
        if not text.strip():
            raise UsageError("The caption is empty; type a few words.")
        # split_special_tokens: a typed "[SEP]" or "<|endoftext|>" is text, not a control token.
        def encode(s: str) -> list[int]:
            return self.tokenizer(s, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        ids = encode(text)
        if not ids:
            raise UsageError("The caption has no characters this model can read.")
        notes = []
        unk = self.tokenizer.unk_token_id
        if unk is not None and unk not in self.end_ids and unk != self.start_id and unk in ids:
            if all(i == unk for i in ids):
                raise UsageError("None of the caption's characters are in this model's vocabulary.")
            bad = [w for w in text.split() if unk in encode(w)]
            shown = ", ".join(f"'{w}'" for w in bad[:5]) or "some characters"
            notes.append(f"Not in this model's vocabulary, read as {self.tokenizer.unk_token}: {shown}.")
        if len(ids) > self.max_caption_tokens:
            ids = ids[: self.max_caption_tokens]
            notes.append(f"The caption was cut to {self.max_caption_tokens} tokens, the limit for this model.")
        return ids, notes

    def layout(self, inputs) -> TokenLayout:
        return grid_layout(self.prefix, self.patch_size, inputs["pixel_values"])

    # --- generation and capture ---------------------------------------
    def generate(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, list[str]]:
        """Caption ids ``[1, 1 + n]`` (start token + caption, end token dropped) and notes."""
        g = inputs["generation"]
        pv = inputs["pixel_values"].to(self.device)
        # min_new_tokens=1: a caption that ends before its first word explains nothing.
        kw = dict(max_new_tokens=g["max_new_tokens"], num_beams=g["num_beams"], do_sample=False,
                  num_return_sequences=1, min_new_tokens=1)
        with torch.no_grad(), self.lock:
            seq = self.model.generate(pixel_values=pv, **kw)[0].tolist()
        caption, ended = [], False
        for i in seq[1:]:
            if i in self.end_ids:
                ended = True
                break
            caption.append(i)
        notes = []
        if not caption:
            raise UsageError("The model produced an empty caption; type a caption to explain instead.")
        if not ended:
            notes.append(f"The caption stopped at {g['max_new_tokens']} tokens (max_new_tokens) "
                         "before the model ended it.")
        return torch.tensor([[seq[0]] + caption]), notes

    def complete_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Without a typed caption, the model's own greedy caption is the one explained."""
        if inputs.get("caption_ids") is not None:
            return inputs
        inputs = dict(inputs)
        inputs["caption_ids"], more = self.generate(inputs)
        inputs["notes"] = list(inputs.get("notes", [])) + more
        return inputs

    def _run(self, inputs, pixel_values, *, attentions):
        pv = pixel_values.to(self.device)
        ids = inputs["caption_ids"].to(self.device).expand(pv.shape[0], -1)        # [B, 1 + n]
        n = ids.shape[1] - 1
        caught: list[torch.Tensor] = []
        hooks = []
        if attentions and torch.is_grad_enabled():
            # Weights are frozen and token ids are integers: let the word embeddings carry gradients
            # so the first decoder layer's self-attention can be differentiated too (a clone, not a
            # leaf: BLIP adds its position embeddings in place).
            hooks.append(self._word_embeddings().register_forward_hook(
                this_thread(lambda m, a, o: None if o.requires_grad else o.detach().requires_grad_().clone())))
        if attentions and self.kind == "git":
            # GIT's forward does not return its image encoder's attentions: take them on the way.
            hooks += [layer.self_attn.register_forward_hook(this_thread(lambda m, a, o: caught.append(o[1])))
                      for layer in self.model.git.image_encoder.vision_model.encoder.layers]
        try:
            logits, enc, dec, cross = self._forward(pv, ids, attentions, caught)
        finally:
            for h in hooks:
                h.remove()
        tokens = ids[:, 1:]                                                          # [B, n]
        scores = logits[:, :n].gather(-1, tokens.unsqueeze(-1)).squeeze(-1)          # [B, n] logits of c_t at t
        if not attentions:
            return scores, None, {}
        log_probs = torch.log_softmax(logits.detach().float(), -1)                  # [B, 1 + n, V]
        end = sorted(self.end_ids)
        readout = torch.stack([c[:, :, :n].mean(dim=(1, 2)) for c in cross]).mean(0).detach()   # [B, T_image]
        readout = readout / readout.sum(-1, keepdim=True).clamp_min(1e-12)
        extras = {
            "grad_wrt": {"decoder_attentions": tuple(dec)} if self.kind == "git"
            else {"decoder_attentions": tuple(dec), "cross_attentions": tuple(cross)},
            "decoder_attentions": tuple(a[0] for a in dec),                           # L_dec × [H, Q, Q]
            "cross_attentions": tuple(cross),     # the capture's cross_attentions field (ModelAdapter.capture)
            "log_probs": log_probs[0, :n].gather(-1, tokens[0].unsqueeze(-1)).squeeze(-1),    # [n]
            "end_probability": float(log_probs[0, n, end].exp().sum()) if end else float("nan"),
            "caption_ids": ids[0, 1:].tolist(), "notes": list(inputs.get("notes", [])),
            "source": inputs.get("source", "generated"), "generation": inputs.get("generation"),
            "readout": readout,
        }
        return scores, enc, extras

    def _forward(self, pv: torch.Tensor, ids: torch.Tensor, attentions: bool, caught: list):
        """Teacher-forced forward: (logits [B, 1+n, V] of the caption positions, encoder attentions,
        decoder self-attentions, cross-attentions [B, H, 1+n, T_image] per decoder layer)."""
        if self.kind == "blip":
            # BlipForConditionalGeneration's own forward returns no decoder attentions: call its halves.
            vo = self.model.vision_model(pixel_values=pv, output_attentions=attentions)
            out = self.model.text_decoder(input_ids=ids, encoder_hidden_states=vo.last_hidden_state,
                                          output_attentions=attentions, use_cache=False)
            return out.logits, vo.attentions, out.attentions, out.cross_attentions
        if self.kind == "vit-gpt2":
            out = self.model(pixel_values=pv, decoder_input_ids=ids, output_attentions=attentions, use_cache=False)
            return out.logits, out.encoder_attentions, out.decoder_attentions, out.cross_attentions
        out = self.model(input_ids=ids, pixel_values=pv, output_attentions=attentions, use_cache=False)
        t_img = out.logits.shape[1] - ids.shape[1]                                  # image tokens come first
        dec = out.attentions                                                        # L × [B, H, t_img+1+n, same]
        cross = tuple(a[:, :, t_img:, :t_img] for a in dec) if attentions else None  # L × [B, H, 1+n, t_img]
        return out.logits[:, t_img:], tuple(caught), dec, cross

    def _readout_attention(self, capture: Capture, target: Target) -> torch.Tensor:
        """How the decoder read the image for caption token ``t``: row ``t`` of every decoder layer's
        cross-attention (GIT: caption-to-image slice of its joint attention) weighted by its gradient for
        that token's logit, E_h[(∇A ⊙ A)⁺] (Chefer et al. 2021, eq. 5), averaged over layers, [T_image]."""
        t = target.index
        if self.kind == "git":
            n_img = capture.layout.n_tokens
            pairs = zip(capture.extras["decoder_attentions"], capture.grads(t, "decoder_attentions"))
            rows = [positive_grad_attention(a, g[0])[n_img + t, :n_img] for a, g in pairs]   # each [T_image]
        else:
            pairs = zip(capture.cross_attentions, capture.grads(t, "cross_attentions"))
            rows = [positive_grad_attention(a, g[0])[t] for a, g in pairs]                  # each [T_image]
        return torch.stack(rows).mean(0)

    def _word_embeddings(self) -> torch.nn.Module:
        if self.kind == "blip":
            return self.model.text_decoder.get_input_embeddings()
        if self.kind == "vit-gpt2":
            return self.model.decoder.get_input_embeddings()
        return self.model.git.embeddings.word_embeddings

    # --- targets and display ------------------------------------------
    def token_text(self, token_id: int) -> str:
        """A token as a reader sees it: decoded text; "␣" for a space on its own (byte-level BPE with no
        merge for what follows, e.g. a typed " **"); the raw token when it decodes to nothing."""
        s = self.tokenizer.decode([token_id])
        if s.strip():
            return s.strip()
        return "␣" if s else self.tokenizer.convert_ids_to_tokens(token_id)

    def _targets(self, inputs, scores):
        ids = inputs["caption_ids"][0, 1:].tolist()
        return tuple(Target(i, self.token_text(t), "token", float(s))
                     for i, (t, s) in enumerate(zip(ids, scores.tolist())))

    def probabilities(self, capture: Capture) -> torch.Tensor:
        """Each caption token's probability at the position that predicts it (softmax over the vocabulary)."""
        return capture.extras["log_probs"].exp()

    def probabilities_from_scores(self, scores):
        return None       # the scores are the caption tokens' logits; a probability needs the whole vocabulary

    def caption_text(self, capture: Capture) -> str:
        # Start and end tokens are not part of the ids; an [UNK] the caption holds is shown as such.
        return self.tokenizer.decode(capture.extras["caption_ids"], skip_special_tokens=False).strip()

    def caption_words(self, capture: Capture) -> list[tuple[str, list[int]]]:
        """Caption tokens grouped into words: (text, token indices)."""
        ids = capture.extras["caption_ids"]
        pieces = self.tokenizer.convert_ids_to_tokens(ids)
        groups: list[list[int]] = []
        for i, p in enumerate(pieces):
            # WordPiece marks a word's continuation with "##"; byte-level BPE marks a word's start with "Ġ".
            cont = p.startswith("##") if self.kind in ("blip", "git") else not p.startswith("Ġ")
            if groups and cont:
                groups[-1].append(i)
            else:
                groups.append([i])
        return [(self.tokenizer.decode([ids[i] for i in g]).strip(), g) for g in groups]

    def caption_record(self, capture: Capture) -> dict[str, Any]:
        """The caption as JSON: its text, every token with its probability, and its words."""
        probs = self.probabilities(capture).tolist()
        logp = capture.extras["log_probs"].tolist()
        return {
            "text": self.caption_text(capture),
            "source": capture.extras["source"],
            "tokens": [{"index": t.index, "token": t.label, "id": int(i), "probability": probs[t.index],
                        "log_probability": logp[t.index], "logit": t.score}
                       for t, i in zip(capture.targets, capture.extras["caption_ids"])],
            "words": [{"word": w, "tokens": idx} for w, idx in self.caption_words(capture)],
            "end_probability": capture.extras["end_probability"],
            "generation": capture.extras["generation"] if capture.extras["source"] == "generated" else None,
            "score": "logit of the token at the position that predicts it",
        }

    def token_block(self, layer: int) -> torch.nn.Module:
        if self.kind == "blip":
            return self.model.vision_model.encoder.layers[layer]
        if self.kind == "git":
            return self.model.git.image_encoder.vision_model.encoder.layers[layer]
        enc = self.model.encoder
        blocks = getattr(enc, "layers", None) or getattr(getattr(enc, "encoder", enc), "layer", None)
        if blocks is None:
            raise RuntimeError("Cannot find the transformer blocks of this encoder.")
        return blocks[layer]


def tiny_wordpiece_tokenizer(bos: Optional[str] = None):
    """A BERT WordPiece tokenizer small enough to write in a test: letters, a few words, no '!' (unknown)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789.,")
    words = ["a", "red", "blue", "cat", "dog", "on", "the", "mat", "sitting", "circle", "square", "of", "picture"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + letters + ["##" + c for c in letters] + words))}
    tok = transformers.BertTokenizer(vocab=vocab)
    if bos:
        tok.add_special_tokens({"bos_token": bos})     # BLIP's decoder starts with its own [DEC] token
    return tok


def tiny_byte_bpe_tokenizer():
    """A GPT-2 byte-level BPE tokenizer small enough to write in a test: 256 byte symbols, a few merges."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    vocab = {s: i for i, s in enumerate(bytes_to_unicode().values())}
    merges = ["Ġ a", "r e", "re d", "Ġ red", "c a", "ca t", "Ġ cat", "Ġ d", "o g", "Ġd og", "Ġ o", "Ġo n"]
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    vocab["<|endoftext|>"] = len(vocab)
    return transformers.GPT2Tokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
