"""Train the offline demo vision-language model: a tiny LLaVA that answers questions about shape scenes.

    python -m attnviz.demo.train_vlm [--out models/demo-vlm-shapes] [--fast] [--seed 0]
                                     [--steps N] [--minutes M]

A stock ``transformers.LlavaForConditionalGeneration`` (LLaVA, Liu et al. 2023,
https://arxiv.org/abs/2304.08485): a CLIP vision tower (64×64 input, 8×8
patches, so an 8×8 grid plus CLS), the two-layer GELU projector, and a small
Llama decoder that reads the 64 projected patch tokens (CLS dropped: LLaVA's
``vision_feature_select_strategy="default"``) in its own sequence, then the
question, then writes the answer. The prompt is LLaVA-1.5's::

    <s> USER: <image>×64 what colour is the triangle? ASSISTANT: red </s>

Questions (:func:`questions_for`; one word or two per answer):

* ``what colour is the <shape>?`` → the colour of that object;
* ``what shape is the <colour> one?`` → its shape (asked only when one object has that colour);
* ``where is the <shape>?`` → the quadrant of its box centre: ``top left``, ``bottom right``, …;
* ``how many shapes are there?`` → ``two`` / ``three``;
* ``is there a <shape>?`` → ``yes`` / ``no``.

The vision tower is the first five blocks of the demo CLIP's
(``models/demo-clip-shapes``), read at its last block (LLaVA-1.5 reads the
penultimate block of its CLIP; the demo CLIP's sixth block is dropped, so the
tokens are the same). That CLIP was trained to keep those tokens local (they say
which coloured shape lies at their own patch), so the tower is kept **frozen**:
its patch features are computed once per training scene and only the projector
and the decoder learn (teacher forcing, cross-entropy on the answer words and
the end token). This is what makes training a few CPU-minutes, and keeps the
image tokens local, so maps over them point at objects.

The tokenizer is word level (a ``tokenizers`` WordLevel model, lower-casing,
"color" read as "colour"; unknown words become ``<unk>``), every question and
answer word one token; ``<image>`` is a special token the processor expands to
the 64 image tokens. Saved with ``save_pretrained``: safetensors weights, a
``LlavaProcessor`` (``CLIPImageProcessor`` 64×64, the tokenizer, LLaVA-1.5's
chat template); all load offline with ``AutoProcessor`` and
``AutoModelForImageTextToText``, no remote code.

Threads: one (``ATTNVIZ_TRAIN_THREADS``): the project's cores are shared.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from attnviz.demo.common import past_time_cap, set_threads, start_run

DEFAULT_OUT = "models/demo-vlm-shapes"
CLIP_DIR = "models/demo-clip-shapes"
DEFAULT_MINUTES = 12.0        # wall-clock cap of the whole run (scenes, features, training, saving)
VISION_LAYERS = 5             # the demo CLIP's blocks kept: its sixth block's input is the tower's output
PATCH = 8
IMAGE_TOKEN = "<image>"
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>", IMAGE_TOKEN)
PROMPT_WORDS = ("user", ":", "assistant", "what", "colour", "is", "the", "shape", "one", "where", "how",
                "many", "shapes", "are", "there", "a", "an", "?", ".", "of", "which", "object", "in", "image")
POSITIONS = ("top", "bottom", "left", "right")
NUMBERS = ("one", "two", "three", "four", "five")
ANSWER_WORDS = POSITIONS + ("two", "three", "yes", "no")
QUESTION_TYPES = ("colour", "shape", "where", "count", "exists")
# LLaVA-1.5's conversation format ("USER: <image>\n... ASSISTANT:"), for apply_chat_template.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
EXAMPLE_QUESTIONS = ("what colour is the triangle?", "where is the cross?", "how many shapes are there?",
                     "what shape is the red one?", "is there a circle?")


# --------------------------------------------------------------------------- questions

class Question(NamedTuple):
    kind: str                 # one of QUESTION_TYPES
    text: str                 # "what colour is the triangle?"
    answer: str               # "red", "top left", "two", "yes"
    target: int | None        # index (in scene.objects) of the one object the question names, else None


def prompt(question: str) -> str:
    """LLaVA-1.5's prompt around one question (what the chat template writes for one user turn)."""
    return f"USER: {IMAGE_TOKEN}\n{question} ASSISTANT:"


def quadrant(bbox, size: int) -> str:
    """'top left' … 'bottom right': the quadrant of the box centre (a centre on a midline counts as top / left)."""
    l, t, r, b = bbox
    return f"{'top' if t + b <= size else 'bottom'} {'left' if l + r <= size else 'right'}"


def questions_for(scene) -> list[Question]:
    """Every question this model is trained on, with its answer, for one scene."""
    from attnviz.scenes import SHAPES

    size = scene.image.shape[0]
    out: list[Question] = []
    colours = [o.colour for o in scene.objects]
    for i, o in enumerate(scene.objects):
        out.append(Question("colour", f"what colour is the {o.shape}?", o.colour, i))
        out.append(Question("where", f"where is the {o.shape}?", quadrant(o.bbox, size), i))
        if colours.count(o.colour) == 1:
            out.append(Question("shape", f"what shape is the {o.colour} one?", o.shape, i))
    out.append(Question("count", "how many shapes are there?", NUMBERS[len(scene.objects) - 1], None))
    present = {o.shape: i for i, o in enumerate(scene.objects)}
    for s in SHAPES:
        a = f"{'an' if s[0] in 'aeiou' else 'a'} {s}"
        out.append(Question("exists", f"is there {a}?", "yes" if s in present else "no", present.get(s)))
    return out


def answer_key(answer: str) -> str:
    """How answers are compared: lower case, words only (punctuation and spacing ignored)."""
    return " ".join("".join(ch if ch.isalnum() else " " for ch in answer.lower()).split())


# --------------------------------------------------------------------------- tokenizer and processor

def vocabulary() -> list[str]:
    from attnviz.scenes import COLOUR_NAMES, SHAPES

    words = list(SPECIALS)
    for w in (*PROMPT_WORDS, *COLOUR_NAMES, *SHAPES, *ANSWER_WORDS, *NUMBERS):
        if w not in words:
            words.append(w)
    return words


def build_tokenizer():
    """A word-level tokenizer: one id per word of :func:`vocabulary`, ``<unk>`` for any other word.

    Lower case; "color" is read as "colour"; words and punctuation split as ``\\w+|[^\\w\\s]+``;
    ``<s>`` is put in front (Llama's convention); ``<image>`` is a special token (LLaVA's).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    t = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    t.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace("color", "colour")])
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                     special_tokens=[("<s>", vocab["<s>"])])
    t.decoder = decoders.WordPiece(prefix="##")        # words joined by spaces
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", extra_special_tokens={"image_token": IMAGE_TOKEN},
                                   model_max_length=128, padding_side="left")


def make_image_processor():
    from attnviz.demo.train_clip import make_image_processor as clip_processor

    return clip_processor()      # the demo CLIP's: the whole image squashed to 64×64, mean = std = 0.5


def make_processor(tokenizer=None):
    from transformers import LlavaProcessor

    return LlavaProcessor(image_processor=make_image_processor(), tokenizer=tokenizer or build_tokenizer(),
                          patch_size=PATCH, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)


# --------------------------------------------------------------------------- model

def make_config(tokenizer, clip_config, *, hidden: int = 96, layers: int = 3, heads: int = 4, mlp: int = 192):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    from attnviz.scenes import IMAGE_SIZE

    vc = clip_config.vision_config
    vision = CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH, num_channels=3, hidden_size=vc.hidden_size,
                              intermediate_size=vc.intermediate_size, num_hidden_layers=VISION_LAYERS,
                              num_attention_heads=vc.num_attention_heads, hidden_act=vc.hidden_act,
                              layer_norm_eps=vc.layer_norm_eps, projection_dim=vc.projection_dim)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=128,
                       rms_norm_eps=1e-5, tie_word_embeddings=False, **ids)
    n_image = (IMAGE_SIZE // PATCH) ** 2
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(
        IMAGE_TOKEN), image_seq_length=n_image, vision_feature_layer=-1, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", **ids)
    cfg.architectures = ["LlavaForConditionalGeneration"]
    return cfg


def make_model(tokenizer, clip_dir: str | None = CLIP_DIR, **sizes):
    """A LLaVA whose vision tower is the demo CLIP's first blocks (random, for tests, when ``clip_dir`` is None)."""
    import torch
    from transformers import CLIPConfig, CLIPModel, LlavaForConditionalGeneration

    if clip_dir:
        clip = CLIPModel.from_pretrained(clip_dir, use_safetensors=True)
        clip_config = clip.config
    else:
        from attnviz.demo.train_clip import build_tokenizer as clip_tok, make_config as clip_cfg

        clip, clip_config = None, clip_cfg(clip_tok(), width=32, layers=VISION_LAYERS + 1, heads=2, mlp=64)
        assert isinstance(clip_config, CLIPConfig)
    model = LlavaForConditionalGeneration(make_config(tokenizer, clip_config, **sizes))
    if clip is not None:
        own = model.model.vision_tower
        state = {k: v for k, v in clip.vision_model.state_dict().items()
                 if not (k.startswith("encoder.layers.") and int(k.split(".")[2]) >= VISION_LAYERS)}
        missing, unexpected = own.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{clip_dir}: vision weights do not match: missing {missing}, unexpected {unexpected}")
    g = model.generation_config
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(g, k, getattr(tokenizer, k))
    g.max_new_tokens, g.do_sample, g.num_beams = 4, False, 1
    model.set_attn_implementation("eager")
    with torch.no_grad():
        model.model.vision_tower.requires_grad_(False)
    return model


# --------------------------------------------------------------------------- data

class QAPool:
    """Scenes, their frozen vision-tower features, and every question about them, tokenized once.

    Scene ``k`` is ``make_scene(scene_rng(seed, k))``; features are the tower's output patch tokens
    (CLS dropped), stored as float16 ``[N, 64, width]``.
    """

    def __init__(self, n: int, seed: int, model, tokenizer, rng: np.random.Generator, log, deadline=None):
        import torch

        from attnviz.demo.train_clip import to_pixel_values
        from attnviz.scenes import make_scene, scene_rng

        self.rng, self.tok = rng, tokenizer
        tower = model.model.vision_tower.eval()
        feats, self.q_ids, self.a_ids, self.kind, self.scene_of = [], [], [], [], []
        chunk, start = 256, time.time()
        for c0 in range(0, n, chunk):
            scenes = [make_scene(scene_rng(seed, k)) for k in range(c0, min(n, c0 + chunk))]
            with torch.no_grad():
                h = tower(pixel_values=to_pixel_values(np.stack([s.image for s in scenes])),
                          output_hidden_states=True).hidden_states[-1][:, 1:]              # [b, 64, width]
            feats.append(h.half())
            for j, s in enumerate(scenes):
                for q in questions_for(s):
                    self.q_ids.append(tokenizer(q.text, add_special_tokens=False)["input_ids"])
                    self.a_ids.append(tokenizer(q.answer, add_special_tokens=False)["input_ids"])
                    self.kind.append(QUESTION_TYPES.index(q.kind))
                    self.scene_of.append(c0 + j)
            if c0 == 0 or (c0 // chunk) % 10 == 9:
                log(f"  scenes {c0 + len(scenes)}/{n} ({time.time() - start:.0f}s)")
            if deadline is not None and time.time() > deadline:
                log(f"  stopping scene generation at {c0 + len(scenes)} scenes (time share used)")
                break
        self.feats = torch.cat(feats)                                                    # [N, 64, width]
        self.kind = np.array(self.kind)
        self.scene_of = np.array(self.scene_of)
        self.scene_of_kind = [np.flatnonzero(self.kind == k) for k in range(len(QUESTION_TYPES))]
        pre = tokenizer(prompt(""), add_special_tokens=True)["input_ids"]
        i_img = pre.index(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
        self.head = pre[:i_img + 1]                       # <s> user : <image>
        self.tail_ids = tokenizer("assistant:", add_special_tokens=False)["input_ids"]

    def batch(self, n: int, n_image: int, weights=None):
        """(input_ids [B, T] with one <image> slot per image token, attention mask, labels, features [B, 64, width]).

        Question types are drawn with ``weights`` (default: equal), questions uniformly within a type.
        """
        import torch

        w = np.ones(len(QUESTION_TYPES)) if weights is None else np.asarray(weights, float)
        kinds = self.rng.choice(len(QUESTION_TYPES), size=n, p=w / w.sum())
        picks = [int(self.scene_of_kind[k][self.rng.integers(len(self.scene_of_kind[k]))]) for k in kinds]
        eos, pad = self.tok.eos_token_id, self.tok.pad_token_id
        img = self.head[-1]
        seqs, labs = [], []
        for p in picks:
            ids = self.head[:-1] + [img] * n_image + self.q_ids[p] + self.tail_ids
            seqs.append(ids + self.a_ids[p] + [eos])
            labs.append([-100] * len(ids) + self.a_ids[p] + [eos])
        T = max(map(len, seqs))
        ids = torch.full((n, T), pad)
        mask = torch.zeros((n, T), dtype=torch.long)
        labels = torch.full((n, T), -100)
        for i, (s, l) in enumerate(zip(seqs, labs)):                  # right padding (training only)
            ids[i, :len(s)], mask[i, :len(s)], labels[i, :len(l)] = torch.tensor(s), 1, torch.tensor(l)
        return ids, mask, labels, self.feats[self.scene_of[picks]].float()


def forward_from_features(model, ids, mask, feats):
    """Logits [B, T, V] of ``model`` with the image slots filled from precomputed tower features.

    The same arithmetic as ``LlavaModel.forward`` (project the tower's tokens, scatter them into the
    ``<image>`` positions, run the decoder) without re-running the frozen tower.
    """
    m = model.model
    emb = m.get_input_embeddings()(ids)                                              # [B, T, D]
    slots = (ids == model.config.image_token_index).unsqueeze(-1).expand_as(emb)
    proj = m.multi_modal_projector(feats)                                            # [B, 64, D]
    emb = emb.masked_scatter(slots, proj.to(emb.dtype))
    h = m.language_model(inputs_embeds=emb, attention_mask=mask, use_cache=False).last_hidden_state
    return model.lm_head(h)


# --------------------------------------------------------------------------- evaluation helpers

def answer(model, processor, images, questions: list[str], max_new_tokens: int = 4) -> list[str]:
    """Greedy answers (decoded words) for PIL images and their questions, through the processor."""
    import torch

    tok = processor.tokenizer
    inputs = processor(images=list(images), text=[prompt(q) for q in questions], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    new = out[:, inputs["input_ids"].shape[1]:]
    return [tok.decode(row, skip_special_tokens=True).strip() for row in new]


# --------------------------------------------------------------------------- training

def train(out: str = DEFAULT_OUT, *, seed: int = 0, fast: bool = False, clip_dir: str | None = CLIP_DIR,
          steps: int = 3000, batch: int = 128, lr: float = 2e-3, scenes: int = 12_000,
          hidden: int = 96, layers: int = 3, heads: int = 4, mlp: int = 192,
          minutes: float | None = None, eval_n: int = 200, eval_seed: int = 20_000, quiet: bool = False) -> dict:
    """Train and save the demo VLM into ``out``; returns the metrics dict.

    ``fast``: a few steps on a few scenes (for tests; the model is not useful). ``minutes``: a
    wall-clock cap of the whole run: scene generation stops at a third of it, and the learning-rate
    schedule follows the clock when it binds before ``steps``.
    """
    import torch
    import torch.nn.functional as F

    if fast:
        steps, batch, scenes, eval_n = min(steps, 10), min(batch, 16), min(scenes, 24), min(eval_n, 8)
    set_threads(1)
    t_start, cpu_start = time.time(), time.process_time()
    rng, _, log = start_run(seed, 3, quiet)
    deadline = None if minutes is None else t_start + 60 * minutes

    tokenizer = build_tokenizer()
    processor = make_processor(tokenizer)
    cdir = clip_dir if clip_dir and (Path(clip_dir) / "model.safetensors").is_file() else None
    if clip_dir and cdir is None:
        log(f"no demo CLIP at {clip_dir}: the vision tower is random and frozen (the model will not be useful)")
    model = make_model(tokenizer, cdir, hidden=hidden, layers=layers, heads=heads, mlp=mlp)
    n_image = model.config.image_seq_length

    log(f"generating {scenes} scenes (dataset seed {seed}) and their tower features...")
    pool = QAPool(scenes, seed, model, tokenizer, rng, log,
                  deadline=None if minutes is None else t_start + 20 * minutes)
    t_data = time.time() - t_start
    log(f"  {len(pool.feats)} scenes, {len(pool.kind)} questions in {t_data:.0f}s")

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.01},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98))
    warmup = max(1, min(100, steps // 10))
    t_train = time.time()

    def progress(step: int) -> float:
        p = step / steps
        if deadline is not None:
            p = max(p, (time.time() - t_train) / max(1.0, deadline - 30 - t_train))
        return min(p, 1.0)

    model.train()
    model.model.vision_tower.eval()
    ema = {}
    step = 0
    for step in range(steps):
        p = progress(step)
        s = (step + 1) / warmup if step < warmup else 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p))
        for g in opt.param_groups:
            g["lr"] = lr * s
        ids, mask, labels, feats = pool.batch(batch, n_image)
        logits = forward_from_features(model, ids, mask, feats)                        # [B, T, V]
        lg, lb = logits[:, :-1], labels[:, 1:]                                          # predict the next token
        loss = F.cross_entropy(lg.flatten(0, 1), lb.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            acc = float(((lg.argmax(-1) == lb) | (lb == -100)).all(1).float().mean())
        for k, v in (("loss", loss.item()), ("acc", acc)):
            ema[k] = v if k not in ema else 0.98 * ema[k] + 0.02 * v
        if step % 100 == 0 or step == steps - 1:
            log(f"step {step}/{steps} loss {ema['loss']:.3f} answer acc {ema['acc']:.3f} lr {lr * s:.2e} "
                f"({time.time() - t_start:.0f}s wall)")
        if p >= 1.0 or past_time_cap(deadline, minutes, step, steps, log):
            break
    model.eval()

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.attnviz_demo = {"generator": "attnviz.scenes", "train_seed": seed,
                                 "example_questions": list(EXAMPLE_QUESTIONS), "question_types": list(QUESTION_TYPES),
                                 "vision_tower_from": str(cdir) if cdir else None}
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    size_bytes = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file() and f.name != "README.md")
    metrics = {"steps": step + 1, "scenes": int(len(pool.feats)), "questions": int(len(pool.kind)),
               "data_seconds": round(t_data, 1), "train_seconds": round(time.time() - t_train, 1),
               "train_answer_acc_ema": round(ema.get("acc", 0.0), 4),
               "parameters": sum(p.numel() for p in model.parameters()),
               "safetensors_bytes": (out_dir / "model.safetensors").stat().st_size, "folder_bytes": size_bytes,
               "wall_seconds": round(time.time() - t_start, 1),
               "cpu_seconds": round(time.process_time() - cpu_start, 1)}
    if eval_n:
        from attnviz.demo.evaluate_vlm import accuracy

        log(f"checking answers on {eval_n} fresh scenes (dataset seed {eval_seed}) through the saved folder...")
        metrics["check"] = accuracy(str(out_dir), n=eval_n, seed=eval_seed)
    log(json.dumps(metrics, indent=2))
    return metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m attnviz.demo.train_vlm", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--seed", type=int, default=0, help="training data and init seed (default 0)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--scenes", type=int, default=12_000, help="training scenes (default 12000)")
    ap.add_argument("--layers", type=int, default=3, help="decoder layers (default 3)")
    ap.add_argument("--hidden", type=int, default=96, help="decoder width (default 96)")
    ap.add_argument("--clip", default=CLIP_DIR, help=f"demo CLIP folder for the vision tower (default {CLIP_DIR})")
    ap.add_argument("--minutes", type=float, default=None,
                    help=f"wall-clock cap of the whole run (default {DEFAULT_MINUTES}; none with --fast; 0: no cap)")
    ap.add_argument("--eval", type=int, default=200, help="fresh scenes checked at the end (0: skip)")
    ap.add_argument("--fast", action="store_true", help="a few steps on a few scenes (for tests)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    minutes = args.minutes if args.minutes is not None else (None if args.fast else DEFAULT_MINUTES)
    train(args.out, seed=args.seed, fast=args.fast, clip_dir=args.clip, steps=args.steps, batch=args.batch,
          lr=args.lr, scenes=args.scenes, hidden=args.hidden, layers=args.layers, mlp=2 * args.hidden,
          minutes=minutes or None, eval_n=args.eval, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
