"""Train the offline demo vision-language model: a tiny LLaVA that answers questions about shape scenes.

    python -m attnviz.demo.train_vlm [--out models/demo-vlm-shapes] [--fast] [--seed 0]
                                     [--steps N] [--cpu-minutes M]

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

Two things make a step cheap and learning quick:

* packing: the decoder is causal, so the image prefix's keys and values do not
  depend on the question: each scene's prefix runs once and its cache is repeated
  for K questions (:func:`forward_packed`, equal to LLaVA's own forward);
* a grounding hint (FitNets-style, as FIELD-NOTES describes for the small ViTs):
  trained on the answer alone, the decoder sat at ~50 % for hundreds of steps
  (it counted, but barely looked up the object the question names). So head 0
  of every decoder layer after the first is pushed, at every position that
  predicts an answer word (both words of "top left": with the first word only,
  the model said "right" for every object), to put its attention on the named
  object's image cells (−log of that mass), with a weight fading from 1 to 0
  over the first 60 % of training. ``--hint-keep shape=1,where=0.5`` keeps it on
  for those types the whole run: then "what shape is the <colour> one?" is
  learnt (99.5 % against 48 %; see the model card) but the relevance maps point
  less often (71 % against 83 %); ``--hint-keep shape=1`` alone (shape share 3)
  answers 97.5 % and points 81.1 %: neither is shipped (pointing would drop).
  Nothing of the hint is saved: the model is a stock LLaVA.

Each step draws the question types with the weights ``--mix`` (the two hard
types, "where" and "what shape", twice the colour question's share).
``--tower-lr`` trains the tower too (its features recomputed every step); it
learnt more slowly per CPU-second than the frozen tower, so it is off by default.

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

import numpy as np

from attnviz.demo.common import set_threads, start_run
from attnviz.demo.vlm_questions import (IMAGE_TOKEN, NUMBERS, QUESTION_TYPES, Question, answer, answer_key,  # noqa: F401
                                        prompt, quadrant, questions_for)

DEFAULT_OUT = "models/demo-vlm-shapes"
CLIP_DIR = "models/demo-clip-shapes"
DEFAULT_CPU_MINUTES = 14.0    # CPU-time cap of the run (scenes, features, training, saving; the check after it)
DEFAULT_MIX = "colour=1,shape=3,where=2,count=0.5,exists=0.5"   # question types' shares per step
DEFAULT_HINT_KEEP = "shape=1"  # the grounding hint's floor per type after it fades (the shipped model's recipe)
DEFAULT_HINT_HEADS = 2        # heads hinted per hinted layer, from head 0 (the shipped model's recipe)
DEFAULT_SEED = 1              # the shipped model's training seed (seed 0 of the same recipe: model card)
VISION_LAYERS = 5             # the demo CLIP's blocks kept: its sixth block's input is the tower's output
PATCH = 8
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>", IMAGE_TOKEN)
PROMPT_WORDS = ("user", ":", "assistant", "what", "colour", "is", "the", "shape", "one", "where", "how",
                "many", "shapes", "are", "there", "a", "an", "?", ".", "of", "which", "object", "in", "image")
POSITIONS = ("top", "bottom", "left", "right")
ANSWER_WORDS = POSITIONS + ("two", "three", "yes", "no")
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
EXAMPLE_QUESTIONS = ("what colour is the triangle?", "how many shapes are there?", "is there a circle?",
                     "where is the cross?", "what shape is the red one?")


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
    (CLS dropped), stored as float16 ``[N, 64, width]``. For each scene, each question type's
    questions as token ids (question, "assistant :", answer, end) with the answer's share marked.
    """

    def __init__(self, n: int, seed: int, model, tokenizer, rng: np.random.Generator, log,
                 cpu_deadline: float | None = None, keep_pixels: bool = False):
        import torch

        from attnviz.demo.train_clip import to_pixel_values
        from attnviz.scenes import make_scene, scene_rng

        self.rng, self.tok = rng, tokenizer
        tower = model.model.vision_tower.eval()
        cache: dict[str, list[int]] = {}

        def ids_of(text: str) -> list[int]:
            if text not in cache:
                cache[text] = tokenizer(text, add_special_tokens=False)["input_ids"]
            return cache[text]

        feats: list = []
        pixels: list = []                                                # [b, 3, 64, 64] float16, if kept
        self.items: list[list[list[tuple[list[int], int, int]]]] = []   # scene -> type -> [(ids, answer start, target)]
        self.cells: list[np.ndarray] = []                                # scene -> bool [objects, 64] cells it covers
        chunk, start = 256, time.time()
        for c0 in range(0, n, chunk):
            scenes = [make_scene(scene_rng(seed, k)) for k in range(c0, min(n, c0 + chunk))]
            px = to_pixel_values(np.stack([s.image for s in scenes]))                      # [b, 3, 64, 64]
            with torch.no_grad():
                h = tower(pixel_values=px, output_hidden_states=True).hidden_states[-1][:, 1:]   # [b, 64, width]
            feats.append(h.half())
            if keep_pixels:
                pixels.append(px.half())
            for s in scenes:
                self.cells.append(object_cells(s))
                per_type: list[list[tuple[list[int], int, int]]] = [[] for _ in QUESTION_TYPES]
                for q in questions_for(s):
                    asked = ids_of(q.text) + ids_of("assistant:")
                    per_type[QUESTION_TYPES.index(q.kind)].append(
                        (asked + ids_of(q.answer) + [tokenizer.eos_token_id], len(asked),
                         -1 if q.target is None else q.target))
                self.items.append(per_type)
            done = c0 + len(scenes)
            if c0 == 0 or (c0 // chunk) % 10 == 9:
                log(f"  scenes {done}/{n} ({time.time() - start:.0f}s wall)")
            if cpu_deadline is not None and time.process_time() > cpu_deadline:
                log(f"  stopping scene generation at {done} scenes (its share of the CPU budget is used)")
                break
        self.feats = torch.cat(feats)                                                    # [N, 64, width]
        self.pixels = torch.cat(pixels) if keep_pixels else None                         # [N, 3, 64, 64]
        self.last_picks = np.zeros(0, int)                                               # the scenes of the last batch
        self.last_kinds = np.zeros(0, int)                    # the question types (QUESTION_TYPES index) of its rows
        pre = tokenizer(prompt(""), add_special_tokens=True)["input_ids"]
        self.prefix = pre[:pre.index(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)) + 1]   # <s> user : <image>

    @property
    def n_questions(self) -> int:
        return sum(len(q) for per in self.items for q in per)

    def batch(self, n_images: int, per_image: int, n_image_tokens: int, mix: dict[str, float] | None = None):
        """One packed batch: ``n_images`` scenes, ``per_image`` questions each (types drawn with the weights
        ``mix``, by question type; equally often when None).

        Returns (prefix ids [B, P] with the image slots, features [B, 64, width], question ids
        [B·K, L] right-padded, their attention mask, labels [B·K, L] (-100 outside the answer and end;
        aligned so that position i's logit predicts labels[i]), and the image cells [B·K, 64] of the
        object the question names (all False when it names none)).
        """
        import torch

        pad = self.tok.pad_token_id
        picks = self.last_picks = self.rng.integers(len(self.items), size=n_images)
        rows, labs, cells, kinds_drawn = [], [], [], []
        for s in picks:
            for _ in range(per_image):
                per = self.items[s]
                kinds = [k for k in range(len(QUESTION_TYPES)) if per[k]]
                w = np.array([1.0 if mix is None else mix.get(QUESTION_TYPES[k], 1.0) for k in kinds])
                k = kinds[int(self.rng.choice(len(kinds), p=w / w.sum()))]
                kinds_drawn.append(k)
                ids, a0, target = per[k][int(self.rng.integers(len(per[k])))]
                cells.append(self.cells[s][target] if target >= 0 else np.zeros(n_image_tokens, bool))
                rows.append(ids[:-1])                                     # inputs: up to the last answer word
                labs.append([-100] * (a0 - 1) + ids[a0:])                 # position a0-1 predicts ids[a0]
        self.last_kinds = np.array(kinds_drawn)
        L = max(map(len, rows))
        q = torch.full((len(rows), L), pad)
        mask = torch.zeros((len(rows), L), dtype=torch.long)
        labels = torch.full((len(rows), L), -100)
        for i, (r, lb) in enumerate(zip(rows, labs)):
            q[i, :len(r)], mask[i, :len(r)], labels[i, :len(lb)] = torch.tensor(r), 1, torch.tensor(lb)
        prefix = torch.tensor([self.prefix[:-1] + [self.prefix[-1]] * n_image_tokens] * n_images)
        return (prefix, self.feats[torch.from_numpy(picks)].float(), q, mask, labels,
                torch.from_numpy(np.stack(cells)))


def parse_mix(mix: str) -> dict[str, float]:
    """``"colour=1,shape=2"`` -> ``{"colour": 1.0, "shape": 2.0}``: question-type weights (a type not named: 1)."""
    out = {}
    for kv in filter(None, mix.split(",")):
        k, _, v = kv.partition("=")
        if k.strip() not in QUESTION_TYPES or not v:
            raise ValueError(f"--mix {mix!r}: expected type=weight pairs with types from {QUESTION_TYPES}")
        out[k.strip()] = float(v)
    return out


def hint_row_weights(w_hint: float, kinds, keep: dict[str, float], hint_weight: float = 1.0):
    """float [B·K]: each question's grounding-hint weight, the fading ``w_hint`` or, if higher, its type's
    floor ``hint_weight · keep[type]`` (``--hint-keep``); ``kinds`` [B·K] are QUESTION_TYPES indices."""
    import torch

    floor = torch.tensor([hint_weight * keep.get(t, 0.0) for t in QUESTION_TYPES])   # [types]
    return torch.clamp(floor[kinds], min=w_hint)


def object_cells(scene, min_cover: float = 0.25) -> np.ndarray:
    """bool [objects, rows·cols]: the patch cells at least ``min_cover`` of which each object's mask covers."""
    n, h, w = scene.masks.shape
    cover = scene.masks.reshape(n, h // PATCH, PATCH, w // PATCH, PATCH).mean((2, 4))     # [n, rows, cols]
    return (cover >= min_cover).reshape(n, -1)


def forward_packed(model, prefix, feats, questions, mask, output_attentions: bool = False):
    """Logits [B·K, L, V] of K questions per image, the image prefix run once per image.

    Exactly LLaVA's forward for each "prefix + question" sequence (``LlavaModel.forward``: project
    the tower's tokens, put them in the ``<image>`` slots, run the decoder), because the decoder is
    causal: the prefix's keys and values do not depend on what follows, so they are computed once
    (a ``DynamicCache``) and repeated for the image's K questions. The frozen tower is not re-run:
    ``feats`` are its output tokens.
    """
    import torch
    from transformers import DynamicCache

    m = model.model
    embed = m.get_input_embeddings()
    emb = embed(prefix)                                                             # [B, P, D]
    slots = (prefix == model.config.image_token_index).unsqueeze(-1).expand_as(emb)
    emb = emb.masked_scatter(slots, m.multi_modal_projector(feats).to(emb.dtype))
    cache = DynamicCache(config=model.config.text_config)
    m.language_model(inputs_embeds=emb, cache=cache, use_cache=True)
    k = questions.shape[0] // prefix.shape[0]
    for layer in cache.layers:                                                       # [B, H, P, d] -> [B·K, ...]
        layer.batch_repeat_interleave(k)
    full_mask = torch.cat([torch.ones((questions.shape[0], prefix.shape[1]), dtype=mask.dtype), mask], 1)
    out = m.language_model(inputs_embeds=embed(questions), attention_mask=full_mask, cache=cache, use_cache=True,
                           output_attentions=output_attentions)
    logits = model.lm_head(out.last_hidden_state)                                   # [B·K, L, V]
    return (logits, out.attentions) if output_attentions else logits   # attentions: L × [B·K, H, L, P + L]


# --------------------------------------------------------------------------- training

def train(out: str = DEFAULT_OUT, *, seed: int = DEFAULT_SEED, fast: bool = False, clip_dir: str | None = CLIP_DIR,
          steps: int = 2000, images: int = 24, per_image: int = 12, lr: float = 2e-3, scenes: int = 4_000,
          hidden: int = 96, layers: int = 3, heads: int = 4, mlp: int = 192,
          hint_weight: float = 1.0, hint_fraction: float = 0.6, mix: str = DEFAULT_MIX,
          hint_keep: str = DEFAULT_HINT_KEEP, hint_heads: int = DEFAULT_HINT_HEADS, hint_from_layer: int = 1,
          tower_lr: float = 0.0, cpu_minutes: float | None = DEFAULT_CPU_MINUTES, eval_n: int = 200, eval_seed: int = 20_000,
          quiet: bool = False) -> dict:
    """Train and save the demo VLM into ``out``; returns the metrics dict.

    ``fast``: a few steps on a few scenes (for tests; the model is not useful). ``cpu_minutes``: a cap
    on this process's CPU time (one thread, so CPU time is compute, however busy the machine):
    scene generation stops at a fifth of it, and the learning-rate schedule follows the CPU clock
    when it binds before ``steps``, so a capped run still ends annealed.
    """
    import torch
    import torch.nn.functional as F

    if fast:
        steps, images, per_image, scenes, eval_n = min(steps, 6), min(images, 4), min(per_image, 4), \
            min(scenes, 16), min(eval_n, 4)
        cpu_minutes = None
    set_threads(1)
    # CPU time counts from the process start (imports and loading included): the cap is the whole run's.
    t_start, cpu_start = time.time(), 0.0
    rng, _, log = start_run(seed, 3, quiet)
    cpu_end = None if not cpu_minutes else cpu_start + 60 * cpu_minutes

    tokenizer = build_tokenizer()
    processor = make_processor(tokenizer)
    cdir = clip_dir if clip_dir and (Path(clip_dir) / "model.safetensors").is_file() else None
    if clip_dir and cdir is None:
        log(f"no demo CLIP at {clip_dir}: the vision tower is random and frozen (the model will not be useful)")
    model = make_model(tokenizer, cdir, hidden=hidden, layers=layers, heads=heads, mlp=mlp)
    n_image = model.config.image_seq_length

    log(f"generating {scenes} scenes (dataset seed {seed}) and their tower features...")
    pool = QAPool(scenes, seed, model, tokenizer, rng, log,
                  cpu_deadline=None if cpu_end is None else cpu_start + 12 * cpu_minutes, keep_pixels=tower_lr > 0)
    t_data, cpu_data = time.time() - t_start, time.process_time() - cpu_start
    log(f"  {len(pool.feats)} scenes, {pool.n_questions} questions in {t_data:.0f}s wall, {cpu_data:.0f}s CPU")

    weights = parse_mix(mix)
    keep = parse_mix(hint_keep) if hint_keep else {}
    tower = model.model.vision_tower
    if tower_lr > 0:                     # the tower learns too (its features recomputed every step), more slowly
        tower.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    own = {id(p) for p in tower.parameters()}
    groups = [{"params": [p for p in params if (p.ndim >= 2) == matrix and (id(p) in own) == in_tower],
               "weight_decay": 0.01 if matrix else 0.0, "scale": tower_lr if in_tower else 1.0}
              for matrix in (True, False) for in_tower in (False, True)]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.98))
    warmup = max(1, min(50, steps // 10))
    cpu_train0 = time.process_time()

    def progress(step: int) -> float:
        p = step / steps
        if cpu_end is not None:                    # leave 20 CPU-seconds for saving
            p = max(p, (time.process_time() - cpu_train0) / max(1.0, cpu_end - 20 - cpu_train0))
        return min(p, 1.0)

    model.train()
    tower.eval()                         # CLIP has no dropout: eval and train are the same forward
    ema: dict[str, float] = {}
    step = 0
    for step in range(steps):
        p = progress(step)
        s = (step + 1) / warmup if step < warmup else 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p))
        for g in opt.param_groups:
            g["lr"] = lr * s * g["scale"]
        prefix, feats, q, mask, labels, cells = pool.batch(images, per_image, n_image, weights)
        if tower_lr > 0:
            feats = tower(pixel_values=pool.pixels[torch.from_numpy(pool.last_picks)].float(),
                          output_hidden_states=True).hidden_states[-1][:, 1:]               # [B, 64, width]
        w_hint = hint_weight * max(0.0, 1.0 - p / hint_fraction) if hint_fraction > 0 else 0.0
        kinds = torch.from_numpy(pool.last_kinds)                                       # [B·K] question types
        w_rows = hint_row_weights(w_hint, kinds, keep, hint_weight)                     # [B·K]
        logits, atts = forward_packed(model, prefix, feats, q, mask, output_attentions=True)  # [B·K, L, V]
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        l_hint = torch.zeros(())
        named = cells.any(1)
        if float(w_rows.max()) > 0 and named.any():
            # the grounding hint: head 0 of every decoder layer after the first, at every position that predicts
            # an answer word ("top" and "left" of "top left"; not the end token), puts its attention on the
            # named object's image cells; weight w_hint fading, or the type's floor (--hint-keep) if higher
            words = (labels != -100) & (labels != tokenizer.eos_token_id) & named[:, None]   # [B·K, L]
            rows, at = words.nonzero(as_tuple=True)                                   # [n] question, position
            img = (prefix[0] == model.config.image_token_index).nonzero()[:, 0]        # [64] prefix positions
            l_weighted = torch.zeros(())
            hinted = atts[hint_from_layer:]
            for a in hinted:                                                           # a: [B·K, H, L, P + L]
                mass = (a[rows, :hint_heads, at][..., img] * cells[rows, None]).sum(-1)  # [n, heads hinted]
                nll = -torch.log(mass + 1e-4).mean(-1)                                 # [n]
                l_hint = l_hint + nll.mean().detach() / len(hinted)
                l_weighted = l_weighted + (w_rows[rows] * nll).mean() / len(hinted)
            loss = loss + l_weighted
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            right = ((logits.argmax(-1) == labels) | (labels == -100)).all(1).float()     # [B·K]
            acc = float(right.mean())
            per_type = [(t, float(right[kinds == i].mean())) for i, t in enumerate(QUESTION_TYPES)
                        if bool((kinds == i).any())]
        for k, v in (("loss", loss.item()), ("acc", acc), ("hint", l_hint.item()), *per_type):
            ema[k] = v if k not in ema else 0.95 * ema[k] + 0.05 * v
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step}/{steps} loss {ema['loss']:.3f} answer acc {ema['acc']:.3f} hint {ema['hint']:.3f} "
                f"(weight {w_hint:.2f}) lr {lr * s:.2e} ["
                + " ".join(f"{t} {ema[t]:.2f}" for t in QUESTION_TYPES if t in ema) + "] "
                f"({time.time() - t_start:.0f}s wall, {time.process_time() - cpu_start:.0f}s CPU)")
        if p >= 1.0:
            log(f"CPU cap of {cpu_minutes} min reached at step {step + 1}/{steps}; stopping")
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
    metrics = {"recipe": {"mix": weights, "tower_lr": tower_lr, "lr": lr, "hint_weight": hint_weight,
                          "hint_fraction": hint_fraction, "hint_keep": keep, "hint_heads": hint_heads,
                          "hint_from_layer": hint_from_layer, "layers": layers,
                          "cpu_minutes": cpu_minutes},
               "steps": step + 1, "questions_per_step": images * per_image, "scenes": int(len(pool.feats)),
               "questions": pool.n_questions, "data_wall_seconds": round(t_data, 1),
               "data_cpu_seconds": round(cpu_data, 1),
               "train_cpu_seconds": round(time.process_time() - cpu_train0, 1),
               "train_answer_acc_ema": round(ema.get("acc", 0.0), 4),
               "train_answer_acc_ema_by_type": {t: round(ema[t], 4) for t in QUESTION_TYPES if t in ema},
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
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"training data and init seed (default {DEFAULT_SEED})")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--images", type=int, default=24, help="scenes per step (default 24)")
    ap.add_argument("--per-image", type=int, default=12, help="questions per scene and step (default 12)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--scenes", type=int, default=4_000, help="training scenes (default 4000)")
    ap.add_argument("--layers", type=int, default=3, help="decoder layers (default 3)")
    ap.add_argument("--hidden", type=int, default=96, help="decoder width (default 96)")
    ap.add_argument("--hint-weight", type=float, default=1.0, help="grounding hint's starting weight (0: off)")
    ap.add_argument("--hint-fraction", type=float, default=0.6, help="share of training over which it fades")
    ap.add_argument("--mix", default=DEFAULT_MIX,
                    help=f"question-type weights per step, type=weight,... (default {DEFAULT_MIX})")
    ap.add_argument("--hint-keep", default=DEFAULT_HINT_KEEP,
                    help="the hint's floor per question type after it fades, type=weight,... "
                         f"(default {DEFAULT_HINT_KEEP}; '': it fades to 0 for all)")
    ap.add_argument("--hint-heads", type=int, default=DEFAULT_HINT_HEADS,
                    help=f"heads hinted in each hinted layer, from head 0 (default {DEFAULT_HINT_HEADS})")
    ap.add_argument("--hint-from-layer", type=int, default=1,
                    help="first decoder layer hinted (default 1: every layer after the first)")
    ap.add_argument("--tower-lr", type=float, default=0.0,
                    help="train the vision tower too, at this share of the learning rate (default 0: frozen)")
    ap.add_argument("--clip", default=CLIP_DIR, help=f"demo CLIP folder for the vision tower (default {CLIP_DIR})")
    ap.add_argument("--cpu-minutes", type=float, default=DEFAULT_CPU_MINUTES,
                    help=f"CPU-time cap of the run (default {DEFAULT_CPU_MINUTES}; 0: no cap; none with --fast)")
    ap.add_argument("--eval", type=int, default=200, help="fresh scenes checked at the end (0: skip)")
    ap.add_argument("--fast", action="store_true", help="a few steps on a few scenes (for tests)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    train(args.out, seed=args.seed, fast=args.fast, clip_dir=args.clip, steps=args.steps, images=args.images,
          per_image=args.per_image, lr=args.lr, scenes=args.scenes, hidden=args.hidden, layers=args.layers,
          mlp=2 * args.hidden, hint_weight=args.hint_weight, hint_fraction=args.hint_fraction,
          mix=args.mix, hint_keep=args.hint_keep, hint_heads=args.hint_heads, hint_from_layer=args.hint_from_layer,
          tower_lr=args.tower_lr,
          cpu_minutes=args.cpu_minutes or None, eval_n=args.eval, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
