"""Vision-language models that answer questions: LLaVA, PaliGemma, Qwen2-VL, Idefics3 / SmolVLM.

The user gives an image, a question, and either an answer to check or none (the model answers greedily).
A capture then runs ONE teacher-forced forward of ``prompt + answer`` with the decoder's attentions (eager),
gradients kept for per-token backward passes.

Conventions:

* Sequence: ``prompt`` is what the processor makes of the chat-templated question (image tokens spliced in),
  ``P`` tokens; the answer ``a_0 … a_{n-1}`` follows. Answer token ``j`` is predicted at position
  ``P - 1 + j`` (it reads everything before it): that is the query row that "produced" it, and target ``j``.
* Score: the LOGIT of ``a_j`` at that position (what Chefer et al. 2021 differentiate); its probability is
  the softmax over the vocabulary there (``adapter.probabilities``). Pixel methods explain its
  log-probability (``answer_log_probs``).
* ``Capture.attentions`` are the DECODER's self-attentions, L × [H, T, T] over the whole sequence;
  ``Capture.extras["image_tokens"]`` (``vlm_layout.ImageTokens``) says where the image tokens sit and which
  region each covers; ``Capture.layout`` is the canvas grid the maps are drawn on, ``Capture.box`` its part of
  the original image. The ViT methods do not apply (the model ``provides`` none of their needs); the VLM's
  own live in ``methods/vlm.py``.

Generation: greedy, 16 new tokens by default, at least one, stopping at the tokenizer's / generation config's
end tokens. Answers (typed or generated) are limited to 32 tokens.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import transformers
from PIL import Image

from ..errors import ModelUnavailable, UsageError
from ..types import Capture, Target, TokenLayout
from .base import ModelAdapter, register_adapter
from .vlm_families import FAMILIES, Family, ImageOnlyQwen2VLProcessor, Qwen2VL, family_of

MAX_ANSWER_TOKENS = 32
DEFAULT_MAX_NEW_TOKENS = 16
#: Bytes of vision-tower attentions a capture keeps by default (for relevance carried into the tower).
VISION_ATTENTION_BUDGET = 1 << 30


@register_adapter
class VlmAdapter(ModelAdapter):
    family = "vlm"
    task = "image-text-to-text"
    PROVIDES = frozenset()         # none of the ViT methods' needs: the VLM methods (families=("vlm",)) apply
    concurrent_forwards = False
    REDUCED_PRECISION = False      # the answer comes from generate(): its maps explain those tokens in float32
    #: Keep the vision tower's attentions at capture (relevance into the tower): None = when they fit
    #: VISION_ATTENTION_BUDGET (SmolVLM's 13 views × 1,024 patches × 12 heads × 12 layers at 640×480 do not: 7.8 GB).
    keep_vision_attentions: Optional[bool] = None

    def __init__(self, model, processor, tokenizer=None, **kw):
        super().__init__(model, processor, **kw)
        fam = family_of(model.config)
        if fam is None:
            raise ModelUnavailable("attnviz does not support this vision-language model.")
        self.spec: Family = fam(model.config, processor)
        self.kind = fam.name
        self.tokenizer = tokenizer or processor.tokenizer
        self.text_config = model.config.text_config
        ends = set()
        for src in (getattr(model, "generation_config", None), model.config, self.text_config):
            e = getattr(src, "eos_token_id", None)
            ends |= set(e if isinstance(e, (list, tuple)) else [] if e is None else [e])
        for name in ("<end_of_utterance>", "<|im_end|>", "<|endoftext|>"):
            i = self.tokenizer.convert_tokens_to_ids(name) if name in self.tokenizer.get_vocab() else None
            if i is not None:
                ends.add(i)
        if self.tokenizer.eos_token_id is not None:
            ends.add(self.tokenizer.eos_token_id)
        self.end_ids = ends
        self.max_new_tokens = DEFAULT_MAX_NEW_TOKENS

    @property
    def n_layers(self) -> int:
        return self.text_config.num_hidden_layers

    # --- loading ------------------------------------------------------
    @classmethod
    def matches(cls, config) -> bool:
        return family_of(config) is not None

    @classmethod
    def load(cls, source, config, *, name, local_only=False):
        common = dict(trust_remote_code=False, local_files_only=local_only)
        # float32: real checkpoints say bfloat16, which from_pretrained would keep (slow on CPU, coarse gradients)
        model = transformers.AutoModelForImageTextToText.from_pretrained(
            source, attn_implementation="eager", use_safetensors=True, dtype=torch.float32, **common)
        fam = family_of(config)
        if fam is Qwen2VL:
            tok = transformers.AutoTokenizer.from_pretrained(source, **common)
            ip = transformers.AutoImageProcessor.from_pretrained(source, **common)
            processor = ImageOnlyQwen2VLProcessor(image_processor=ip, tokenizer=tok,
                                                  chat_template=_chat_template(source, tok))
        else:
            processor = transformers.AutoProcessor.from_pretrained(source, **common)
        return cls(model, processor, name=name, source=str(source))

    @classmethod
    def tiny(cls, kind: str = "llava", seed: int = 0, **kw):
        """A random tiny VLM (2-layer vision tower, 2-layer decoder): kind in llava, paligemma, qwen2_vl, idefics3."""
        if kind not in FAMILIES:
            raise UsageError(f"Unknown tiny VLM '{kind}': use {', '.join(FAMILIES)}.")
        model, processor, tok = FAMILIES[kind].tiny(seed=seed, **kw)
        _set_ids(model, tok)
        model.config.architectures = [type(model).__name__]
        model.set_attn_implementation("eager")
        return cls(model, processor, tok, name=f"tiny-{kind}", source="<memory>")

    # --- inputs -------------------------------------------------------
    def prepare(self, image: Image.Image, *, texts: Optional[Sequence[str]] = None,
                size: Optional[tuple[int, int]] = None, question: Optional[str] = None, answer: Optional[str] = None,
                answer_ids: Optional[Sequence[int]] = None, max_new_tokens: Optional[int] = None) -> dict[str, Any]:
        """The prompt's inputs and image-token geometry. ``texts=[question]`` or ``[question, answer]`` (the generic
        API's form) or ``question=`` / ``answer=``; no answer: the model answers greedily at capture."""
        if size is not None:
            raise UsageError("Vision-language models see the image as their processor prepares it; "
                             "a custom input size (--size) is not supported for them.")
        texts = list(texts or [])
        if len(texts) > 2:
            raise UsageError("Give a question and at most one answer to check.")
        question = question if question is not None else (texts[0] if texts else None)
        answer = answer if answer is not None else (texts[1] if len(texts) > 1 else None)
        if not question or not str(question).strip():
            raise UsageError("Ask a question about the image (--question \"...\").")
        n = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if not 1 <= n <= MAX_ANSWER_TOKENS:
            raise UsageError(f"max_new_tokens must be between 1 and {MAX_ANSWER_TOKENS}.")
        notes: list[str] = []
        ids = None
        if answer is not None and answer_ids is not None:
            raise UsageError("Give either an answer or answer token ids, not both.")
        if answer is not None:
            ids, notes = self.tokenize_answer(str(answer))
        elif answer_ids is not None:
            ids = [int(i) for i in answer_ids]
            if not 1 <= len(ids) <= MAX_ANSWER_TOKENS:
                raise UsageError(f"The answer must have 1 to {MAX_ANSWER_TOKENS} tokens.")
        image = image.convert("RGB")
        prompt = self.spec.prompt(str(question).strip())
        enc = self.spec.encode(image, prompt)
        geo = self.spec.geometry(enc, image)
        rows, cols = geo.canvas_rows, geo.canvas_cols
        pv = enc["pixel_values"]
        return {"encoding": enc, "pixel_values": pv, "prompt_len": int(enc["input_ids"].shape[1]),
                "question": str(question).strip(), "answer_ids": None if ids is None else torch.tensor(ids),
                "source": "generated" if ids is None else ("typed" if answer is not None else "ids"),
                "image_tokens": geo, "box": geo.box, "max_new_tokens": n, "notes": notes,
                "layout": TokenLayout((), rows, cols, (1, 1), (rows, cols))}

    def tokenize_answer(self, text: str) -> tuple[list[int], list[str]]:
        if not text.strip():
            raise UsageError("The answer is empty; type a few words or leave it out to let the model answer.")
        ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if not ids:
            raise UsageError("The answer has no characters this model can read.")
        notes = []
        if len(ids) > MAX_ANSWER_TOKENS:
            ids = ids[:MAX_ANSWER_TOKENS]
            notes.append(f"The answer was cut to {MAX_ANSWER_TOKENS} tokens.")
        return ids, notes

    def layout(self, inputs) -> TokenLayout:
        return inputs["layout"]

    # --- forward ------------------------------------------------------
    def model_inputs(self, inputs: dict[str, Any], pixel_values: torch.Tensor) -> dict[str, Any]:
        """Forward keywords for prompt + answer with these pixels (the family's extra inputs extended)."""
        enc, ans = inputs["encoding"], inputs["answer_ids"]
        ids = torch.cat([enc["input_ids"][0], ans]).view(1, -1)                                 # [1, P + n]
        kw = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask", "pixel_values",
                                                        "token_type_ids", "mm_token_type_ids", "labels")}
        kw.update(self.spec.extra_inputs(enc, len(ans)))
        kw.update(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel_values)
        return {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}

    def _run(self, inputs, pixel_values, *, attentions):
        caught: dict[str, Any] = {}
        hook, tower, was = None, None, None
        if attentions and self.spec.vision_map is not None and self._keep_vision(pixel_values):
            # The vision tower's own attentions (in the graph), for relevance carried down to the patches. PaliGemma
            # calls its tower without output_attentions: the tower's config asks for them during this forward.
            tower = self.spec.vision_tower(self.model)
            was = tower.config.output_attentions
            tower.config.output_attentions = True
            hook = tower.register_forward_hook(lambda m, i, o: caught.update(a=getattr(o, "attentions", None)))
        try:
            out = self.model(**self.model_inputs(inputs, pixel_values), output_attentions=attentions, use_cache=False)
        finally:
            if hook is not None:
                hook.remove()
                tower.config.output_attentions = was
        ans = inputs["answer_ids"].to(self.device)
        pos = inputs["prompt_len"] - 1 + torch.arange(len(ans), device=self.device)            # predicting rows
        logits = out.logits[0, pos]                                                            # [n, V]
        scores = logits.gather(1, ans[:, None])[:, 0]                                          # [n]
        log_probs = torch.log_softmax(logits.float(), -1).gather(1, ans[:, None])[:, 0]        # [n]
        extras: dict[str, Any] = {"log_probs": log_probs, "image_tokens": inputs["image_tokens"],
                                  "notes": list(inputs.get("notes", []))}
        if caught.get("a"):
            vis = tuple(caught["a"])                                          # L_v × [1, H, S, S]
            extras["vision_attentions"] = vis
            extras["grad_wrt"] = {"vision_attentions": vis}
        return scores[None], (out.attentions if attentions else None), extras

    def vision_attention_bytes(self, pixel_values: torch.Tensor) -> int:
        """About how many bytes the vision layers that feed the image tokens take for their attentions [views, H, S, S]
        (S: the patches of one view; float32)."""
        vc = self.spec.vision_config
        p = getattr(vc, "patch_size", 14)
        if pixel_values.dim() == 2:                     # Qwen2-VL's flattened patches: one sequence
            views, s = 1, pixel_values.shape[0]
        else:
            views, s = pixel_values.shape[:-3].numel(), (pixel_values.shape[-2] // p) * (pixel_values.shape[-1] // p)
        heads = getattr(vc, "num_attention_heads", None) or getattr(vc, "num_heads", 1)
        return self.spec.vision_map[1] * views * heads * s * s * 4

    def _keep_vision(self, pixel_values) -> bool:
        if self.keep_vision_attentions is not None:
            return bool(self.keep_vision_attentions)
        return self.vision_attention_bytes(pixel_values) <= VISION_ATTENTION_BUDGET

    def answer_log_probs(self, inputs: dict[str, Any], pixel_values: torch.Tensor) -> torch.Tensor:
        """[n] log-probability of each answer token at its predicting position, differentiable in the pixels."""
        with self.lock:
            _, _, extras = self.run(inputs, pixel_values, attentions=False)
        return extras["log_probs"]

    def generate(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, list[str]]:
        enc = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in inputs["encoding"].items()}
        with torch.no_grad(), self.lock:
            seq = self.model.generate(**enc, max_new_tokens=inputs["max_new_tokens"], do_sample=False,
                                      min_new_tokens=1)[0, inputs["prompt_len"]:].tolist()
        answer, ended = [], False
        for i in seq:
            if i in self.end_ids:
                ended = True
                break
            answer.append(i)
        if not answer:
            raise UsageError("The model answered nothing; type an answer to check instead.")
        notes = [] if ended else [f"The answer stopped at {inputs['max_new_tokens']} tokens before the model ended it."]
        return torch.tensor(answer), notes

    def complete_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Without a typed answer, the model's own greedy answer is the one explained."""
        if inputs.get("answer_ids") is not None:
            return inputs
        inputs = dict(inputs)
        inputs["answer_ids"], more = self.generate(inputs)
        inputs["notes"] = list(inputs.get("notes", [])) + more
        return inputs

    def _check_attentions(self, attentions, layout, extras) -> None:
        if len(attentions) != self.n_layers:
            raise RuntimeError(f"Expected {self.n_layers} decoder attention tensors, got {len(attentions)}: "
                               "the model is not running eager attention.")

    def readout(self, layout):
        return None

    def token_block(self, layer: int) -> torch.nn.Module:
        return self.spec.language_model(self.model).layers[layer]

    # --- targets and display --------------------------------------------
    def token_text(self, token_id: int) -> str:
        s = self.tokenizer.decode([int(token_id)])
        return s.strip() or ("␣" if s else self.tokenizer.convert_ids_to_tokens(int(token_id)))

    def _targets(self, inputs, scores):
        ids = inputs["answer_ids"].tolist()
        return tuple(Target(j, self.token_text(t), "token", float(s)) for j, (t, s) in enumerate(zip(ids, scores.tolist())))

    def resolve_target(self, capture: Capture, target: Any = None) -> Target:
        """None: the answer's first content word (a token with a letter or digit), else its first token."""
        if target is None:
            for t in capture.targets:
                if any(ch.isalnum() for ch in t.label):
                    return t
            return capture.targets[0]
        return super().resolve_target(capture, target)

    def probabilities(self, capture: Capture) -> torch.Tensor:
        return capture.extras["log_probs"].exp()

    def probabilities_from_scores(self, scores):
        return None

    def predicting_position(self, capture: Capture, j: int) -> int:
        """Sequence row that predicts answer token ``j``."""
        return capture.inputs["prompt_len"] - 1 + j

    def prompt_tokens(self, capture: Capture) -> list[tuple[int, str]]:
        """(position, text) of the prompt's text tokens (image tokens left out), in order."""
        ids = capture.inputs["encoding"]["input_ids"][0].tolist()
        image = set(capture.extras["image_tokens"].positions)
        return [(p, self.tokenizer.convert_ids_to_tokens(i)) for p, i in enumerate(ids) if p not in image]

    def question_positions(self, capture: Capture) -> list[int]:
        """Positions of the question's own tokens in the prompt: where its token ids appear (with or without a
        leading space); all text positions when the template tokenised it differently."""
        ids = capture.inputs["encoding"]["input_ids"][0].tolist()
        q = capture.inputs["question"]
        for text in (" " + q, q):
            qi = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            for s in range(len(ids) - len(qi), -1, -1):
                if qi and ids[s:s + len(qi)] == qi:
                    return list(range(s, s + len(qi)))
        # In context a tokenizer may cut the question's first word differently (SentencePiece after a newline):
        # the shortest run of text tokens that decodes to the question.
        text = [p for p, _ in self.prompt_tokens(capture)]
        want = " ".join(q.split())
        for i, start in enumerate(text):
            if not self.tokenizer.decode(ids[start:start + 1]).strip():
                continue                                      # a run starts on a word, not on a space or newline
            for end in text[i:]:
                got = " ".join(self.tokenizer.decode(ids[start:end + 1]).split())
                if got == want:
                    return list(range(start, end + 1))
                if len(got) > len(want) + 8 or not want.startswith(got[:len(want)]):
                    break
        return text

    def answer_text(self, capture: Capture) -> str:
        return self.tokenizer.decode(capture.inputs["answer_ids"].tolist(), skip_special_tokens=True).strip()

    def answer_record(self, capture: Capture) -> dict[str, Any]:
        """JSON: the question's tokens, the answer's tokens with their probabilities, the image geometry."""
        probs = self.probabilities(capture).tolist()
        ids = capture.inputs["answer_ids"].tolist()
        all_ids = capture.inputs["encoding"]["input_ids"][0].tolist()
        return {
            "question": capture.inputs["question"],
            "question_tokens": [self.token_text(all_ids[p]) for p in self.question_positions(capture)],
            "answer": self.answer_text(capture), "source": capture.inputs["source"],
            "answer_tokens": [{"index": t.index, "token": t.label, "id": int(i), "probability": probs[t.index],
                               "logit": t.score, "position": self.predicting_position(capture, t.index)}
                              for t, i in zip(capture.targets, ids)],
            "image": capture.extras["image_tokens"].describe(), "family": self.kind,
            "score": "logit of the answer token at the position that predicts it",
        }


def _chat_template(source, tok) -> Optional[str]:
    """The tokenizer's chat template, else a local folder's ``chat_template.json`` (older hub layout)."""
    if getattr(tok, "chat_template", None):
        return tok.chat_template
    path = Path(str(source)) / "chat_template.json"
    return json.loads(path.read_text()).get("chat_template") if path.is_file() else None


def _set_ids(model, tok) -> None:
    for c in (model.config, model.generation_config, getattr(model.config, "text_config", None)):
        if c is not None:
            c.bos_token_id, c.eos_token_id, c.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
