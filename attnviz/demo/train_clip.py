"""Train the offline demo image–text model: a tiny CLIP that matches shape scenes to words.

    python -m attnviz.demo.train_clip [--out models/demo-clip-shapes] [--fast] [--seed 0]
                                      [--steps N] [--minutes M]

A plain ``transformers.CLIPModel`` (vision tower: 64×64 input, 8×8 patches, so an
8×8 grid plus CLS; a small text tower) with a byte-level BPE ``CLIPTokenizer``
written here from the scene vocabulary (colours, shapes, "a", "and", ...), so
every scene word is one token and any other text still tokenizes (into byte
pieces). Data: :mod:`attnviz.scenes` and their captions.

Losses, per batch of scenes:

* object phrases: every one of the 35 phrases "a <colour> <shape>" is scored
  against every image, both with an independent sigmoid (SigLIP's loss, Zhai
  et al. 2023, https://arxiv.org/abs/2303.15343, with a bias used only in
  training) and with a softmax over the 35 whose target is shared by the
  scene's objects (as zero-shot use ranks prompts). The other phrases are the
  negatives, among them the hard ones (same shape in another colour, same
  colour on another shape), so the image embedding has to bind each colour to
  its shape, which it can only do by looking at the objects.
* captions: CLIP's symmetric softmax loss (Radford et al. 2021,
  https://arxiv.org/abs/2103.00020) between the images and their captions,
  plus, for each image, hard-negative captions with one object's colour or
  shape changed.
* patch hints from the generator's masks, through linear probes that are
  thrown away: the middle layer's patch tokens predict which object (colour
  and shape) covers each patch, with a weight fading to zero over the first
  half (as the demo classifier's teacher hint: see FIELD-NOTES, a small ViT
  on CPU otherwise sits on a plateau), and the patch tokens the last block
  reads keep saying what is at their own place (a constant, smaller weight).
  Neither touches the CLS token or any attention weight directly.

The vision tower starts from the demo classifier's encoder
(``models/demo-vit-shapes``, same patch geometry) when it is there.
Only the model, its image processor (``CLIPImageProcessor``, 64×64, no crop)
and its tokenizer are saved (``save_pretrained``, safetensors).
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
from attnviz.scenes import all_phrases, hard_negative_caption, phrase  # noqa: F401  (the CLIP demo's prompts)

DEFAULT_OUT = "models/demo-clip-shapes"
DEFAULT_MINUTES = 8.5                    # CLI default cap: with the evaluation the run stays under 10 minutes
VIT_DIR = "models/demo-vit-shapes"      # the demo classifier (python -m attnviz.demo.train): same patch geometry
IMAGE_MEAN = [0.5, 0.5, 0.5]
IMAGE_STD = [0.5, 0.5, 0.5]
PATCH = 8
MAX_TEXT_TOKENS = 24
# Words that become single tokens; everything else falls back to byte pieces.
EXTRA_WORDS = ("a", "an", "and", "the", "of", "with", "photo", "picture", "drawing", "shape", "shapes", "object")
EXAMPLE_PROMPTS = ("a red circle", "a blue square", "a green triangle", "a yellow cross")


# --------------------------------------------------------------------------- text

def vocabulary() -> list[str]:
    from attnviz.scenes import COLOUR_NAMES, SHAPES

    return list(EXTRA_WORDS) + list(COLOUR_NAMES) + list(SHAPES)


def build_tokenizer(words=None):
    """A byte-level BPE ``CLIPTokenizer`` whose merges make each of ``words`` one token.

    The base vocabulary is CLIP's: the 256 byte symbols, each also in an
    end-of-word form ("x</w>"), so any text tokenizes. Merges are added one at
    a time, always joining the first two pieces a word still splits into, and
    appended at the lowest priority, so no earlier word is split differently;
    repeated until every word is a single token.
    """
    import transformers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    words = vocabulary() if words is None else list(words)
    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []

    def make():
        v = dict(vocab)
        for special in ("<|startoftext|>", "<|endoftext|>"):
            v[special] = len(v)
        return transformers.CLIPTokenizer(vocab=v, merges=list(merges))

    tok = make()
    for _ in range(64):
        added = False
        for w in words:
            pieces = tok.tokenize(w)
            if len(pieces) > 1:
                pair = (pieces[0], pieces[1])
                merges.append(pair)
                vocab.setdefault(pair[0] + pair[1], len(vocab))
                added = True
        if not added:
            break
        tok = make()
    bad = [w for w in words if len(tok.tokenize(w)) != 1]
    if bad:  # pragma: no cover - the loop always converges for plain words
        raise RuntimeError(f"could not make single tokens of {bad}")
    tok.model_max_length = MAX_TEXT_TOKENS
    return tok


# --------------------------------------------------------------------------- images

def to_pixel_values(images_uint8: np.ndarray):
    """uint8 [B, H, W, 3] -> float [B, 3, H, W], the same as the saved CLIPImageProcessor at 64×64."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def patch_labels(scene, min_cover: float = 0.25) -> np.ndarray:
    """int64 [rows, cols]: 0 = background, else 1 + phrase index of the object covering most of the patch."""
    cover = patch_targets(scene)                                                        # [rows, cols, 36]
    best = cover[..., 1:].argmax(-1)
    return np.where(cover[..., 1:].max(-1) >= min_cover, best + 1, 0).astype(np.int64)


def patch_targets(scene) -> np.ndarray:
    """float32 [rows, cols, 1 + 35]: the share of each patch covered by each object (by its phrase index,
    shifted by one), the rest background (index 0). Soft targets: a patch at an object's edge is only
    partly that object."""
    from attnviz.scenes import COLOUR_NAMES, SHAPES

    n, h, w = scene.masks.shape
    cover = scene.masks.reshape(n, h // PATCH, PATCH, w // PATCH, PATCH).mean((2, 4))  # [n, rows, cols]
    out = np.zeros((h // PATCH, w // PATCH, 1 + len(COLOUR_NAMES) * len(SHAPES)), np.float32)
    for o, c in zip(scene.objects, cover):
        out[..., 1 + COLOUR_NAMES.index(o.colour) * len(SHAPES) + SHAPES.index(o.shape)] += c
    out[..., 0] = 1.0 - out[..., 1:].sum(-1)
    return out


def scene_targets(scene) -> np.ndarray:
    """float32 [35] multi-hot over :func:`all_phrases`."""
    from attnviz.scenes import COLOUR_NAMES, SHAPES

    y = np.zeros(len(COLOUR_NAMES) * len(SHAPES), np.float32)
    for o in scene.objects:
        y[COLOUR_NAMES.index(o.colour) * len(SHAPES) + SHAPES.index(o.shape)] = 1.0
    return y


class ScenePool:
    """Generated scenes, partly replaced by fresh ones every step (scene k = make_scene(scene_rng(seed, k)))."""

    def __init__(self, size: int, seed: int, refresh: int, rng: np.random.Generator):
        from attnviz.scenes import IMAGE_SIZE, COLOUR_NAMES, SHAPES

        self.seed, self.refresh, self.rng = seed, refresh, rng
        g = IMAGE_SIZE // PATCH
        self.images = np.zeros((size, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        self.targets = np.zeros((size, len(COLOUR_NAMES) * len(SHAPES)), np.float32)
        self.patches = np.zeros((size, g * g, 1 + len(COLOUR_NAMES) * len(SHAPES)), np.float16)
        self.objects: list = [None] * size
        for i in range(size):
            self._put(i, i)
        self.next_index = size

    def _put(self, slot: int, index: int) -> None:
        from attnviz.scenes import make_scene, scene_rng

        s = make_scene(scene_rng(self.seed, index))
        self.images[slot], self.targets[slot] = s.image, scene_targets(s)
        self.patches[slot] = patch_targets(s).reshape(self.patches.shape[1:])
        self.objects[slot] = s.objects

    def batch(self, n: int):
        import torch

        for slot in (self.rng.choice(len(self.images), size=self.refresh, replace=False) if self.refresh else ()):
            self._put(int(slot), self.next_index)
            self.next_index += 1
        idx = self.rng.integers(len(self.images), size=n)
        return (to_pixel_values(self.images[idx]), torch.from_numpy(self.targets[idx]),
                torch.from_numpy(self.patches[idx].astype(np.float32)), [self.objects[i] for i in idx])


# --------------------------------------------------------------------------- model

def make_config(tokenizer, *, width: int = 128, layers: int = 6, heads: int = 4, mlp: int = 256,
                text_width: int = 64, text_layers: int = 2, text_heads: int = 4, projection: int = 64):
    from transformers import CLIPConfig

    from attnviz.scenes import IMAGE_SIZE

    text = dict(vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=2 * text_width,
                num_hidden_layers=text_layers, num_attention_heads=text_heads,
                max_position_embeddings=MAX_TEXT_TOKENS, hidden_act="gelu", projection_dim=projection,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(image_size=IMAGE_SIZE, patch_size=PATCH, num_channels=3, hidden_size=width,
                  intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads,
                  hidden_act="gelu", projection_dim=projection)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection)
    cfg.architectures = ["CLIPModel"]
    return cfg


def make_image_processor():
    from transformers import CLIPImageProcessor

    from attnviz.scenes import IMAGE_SIZE

    # the whole image, squashed to 64×64 (scenes are square; no centre crop)
    return CLIPImageProcessor(do_resize=True, size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                              do_center_crop=False, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                              do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                              image_mean=IMAGE_MEAN, image_std=IMAGE_STD)


def _encode_texts(tokenizer, texts):
    t = tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_TEXT_TOKENS, return_tensors="pt")
    return t["input_ids"], t["attention_mask"]


def text_embeddings(model, ids, mask):
    """[N, D] unit-norm text embeddings."""
    out = model.text_model(input_ids=ids, attention_mask=mask)
    e = model.text_projection(out.pooler_output)
    return e / e.norm(dim=-1, keepdim=True)


def init_vision_from_vit(model, vit_dir: str, pixel_values) -> dict:
    """Copy a ViT classifier's encoder (same width, depth, heads and patch geometry) into ``model``'s vision tower.

    Names map one to one (q/k/v/o projections, fc1/fc2, the two layer norms per block, the final layer
    norm as CLIP's post-layernorm); the ViT's patch-embedding bias moves into the position embeddings
    (CLIP's patch embedding has none). CLIP adds a layer norm on the embeddings that a ViT lacks: it is
    set to the embeddings' typical per-token spread over ``pixel_values`` so the residual stream keeps
    its scale. The classifier head is dropped; the projection stays random.
    """
    import torch
    from transformers import ViTForImageClassification

    vit = ViTForImageClassification.from_pretrained(vit_dir, use_safetensors=True).vit
    vc = model.config.vision_config
    got = (vit.config.hidden_size, vit.config.num_hidden_layers, vit.config.num_attention_heads,
           vit.config.intermediate_size, vit.config.patch_size, vit.config.image_size)
    want = (vc.hidden_size, vc.num_hidden_layers, vc.num_attention_heads, vc.intermediate_size, vc.patch_size,
            vc.image_size)
    if got != want or vit.config.hidden_act != vc.hidden_act:
        raise ValueError(f"{vit_dir}: ViT (width, layers, heads, mlp, patch, size) {got} / {vit.config.hidden_act} "
                         f"does not match the CLIP vision tower {want} / {vc.hidden_act}")
    v = model.vision_model
    with torch.no_grad():
        e = vit.embeddings
        v.embeddings.patch_embedding.weight.copy_(e.patch_embeddings.projection.weight)
        pos = e.position_embeddings[0].clone()                                      # [1 + rows·cols, width]
        pos[1:] += e.patch_embeddings.projection.bias
        v.embeddings.position_embedding.weight.copy_(pos)
        v.embeddings.class_embedding.copy_(e.cls_token[0, 0])
        for src, dst in zip(vit.layers, v.encoder.layers):
            for a, b in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"), ("o_proj", "out_proj")):
                getattr(dst.self_attn, b).load_state_dict(getattr(src.attention, a).state_dict())
            dst.layer_norm1.load_state_dict(src.layernorm_before.state_dict())
            dst.layer_norm2.load_state_dict(src.layernorm_after.state_dict())
            dst.mlp.fc1.load_state_dict(src.mlp.fc1.state_dict())
            dst.mlp.fc2.load_state_dict(src.mlp.fc2.state_dict())
        v.post_layernorm.load_state_dict(vit.layernorm.state_dict())
        emb = v.embeddings(pixel_values)                                             # [B, T, width]
        spread = float(emb.std(-1).median())
        v.pre_layrnorm.weight.fill_(spread)
        v.pre_layrnorm.bias.zero_()
    return {"vision_init": str(vit_dir), "pre_layernorm_scale": round(spread, 4)}


# --------------------------------------------------------------------------- training

def train(out: str = DEFAULT_OUT, seed: int = 0, fast: bool = False, *, steps: int | None = None,
          batch: int = 64, lr: float = 1e-3, hint_fraction: float = 0.5, hint_weight: float = 1.0,
          hint_layer: int | None = None, local_weight: float = 0.5, caption_weight: float = 0.5,
          negatives: int = 2,
          pool_size: int | None = None, refresh: int | None = None,
          width: int = 128, layers: int = 6, heads: int = 4, mlp: int = 256,
          init_vision: str | None = "auto", minutes: float | None = None, eval_n: int | None = None,
          eval_seed: int = 20_000, quiet: bool = False) -> dict:
    """Train and save the demo CLIP into ``out``; returns the metrics dict (time, size, zero-shot, pointing).

    ``fast``: a few steps on a tiny pool (for tests; the model is not useful).
    ``minutes``: a wall-clock cap from the start (data generation included): the learning-rate
    schedule and the hint's fading then follow the clock when it binds before ``steps``, so a slow
    machine still ends with an annealed model (after fewer steps).
    ``init_vision``: a demo ViT classifier folder whose encoder starts the vision tower; "auto" (default):
    :data:`VIT_DIR` when it is there (and never in ``fast`` mode); None: from scratch.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn
    from tqdm import tqdm
    from transformers import CLIPModel

    set_threads(2)
    t_start = time.time()
    if fast:
        steps = steps or 12
        batch = min(batch, 16)
        pool_size, refresh = pool_size or 64, 0 if refresh is None else refresh
        eval_n = 8 if eval_n is None else eval_n
        width, layers, mlp = min(width, 64), min(layers, 4), min(mlp, 128)
    steps = steps or 2400
    pool_size = pool_size or 8000
    refresh = 16 if refresh is None else refresh
    eval_n = 100 if eval_n is None else eval_n
    rng, tqdm_kw, log = start_run(seed, 1, quiet)

    tokenizer = build_tokenizer()
    phrases = all_phrases()
    phrase_ids, phrase_mask = _encode_texts(tokenizer, phrases)
    log(f"generating {pool_size} training scenes (dataset seed {seed})...")
    pool = ScenePool(pool_size, seed, refresh, rng)
    log(f"  done in {time.time() - t_start:.1f}s")

    config = make_config(tokenizer, width=width, layers=layers, heads=heads, mlp=mlp)
    model = CLIPModel(config)
    model.set_attn_implementation("eager")
    init_info: dict = {"vision_init": None}
    if init_vision == "auto":
        init_vision = VIT_DIR if (not fast and (Path(VIT_DIR) / "config.json").is_file()) else None
    if init_vision:
        init_info = init_vision_from_vit(model, init_vision, pool.batch(batch)[0])
        log(f"vision tower initialised from {init_vision}")
    else:
        log("vision tower initialised at random")
    hint_layer = layers // 2 if hint_layer is None else hint_layer
    probe = nn.Linear(width, 1 + len(phrases))       # discarded after training
    local_probe = nn.Linear(width, 1 + len(phrases))  # discarded after training
    bias = nn.Parameter(torch.tensor(-3.0))           # the sigmoid loss's bias, training only
    params = list(model.parameters()) + list(probe.parameters()) + list(local_probe.parameters()) + [bias]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
    warmup = max(1, min(200, steps // 10))

    loop_start = time.time()
    budget = None if minutes is None else max(1.0, t_start + 60 * minutes - loop_start)

    def progress(step: int) -> float:
        """Share of training done: by steps, or by the clock when a time cap binds first."""
        p = step / steps
        return p if budget is None else max(p, (time.time() - loop_start) / budget)

    def lr_at(step: int, p: float) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        p = min(1.0, max(0.0, (p - warmup / steps) / (1 - warmup / steps)))
        return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p)))

    model.train()
    ema: dict[str, float] = {}
    bar = tqdm(range(steps), desc="CLIP", **tqdm_kw)
    step = 0
    for step in bar:
        p = progress(step)
        if p >= 1.0:
            log(f"time cap of {minutes} min reached at step {step}/{steps}; the schedule followed the clock")
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, p)
        x, y, cells, objects = pool.batch(batch)
        captions = [_caption(o) for o in objects]
        hard = [hard_negative_caption(o, rng) for o in objects for _ in range(negatives)]
        w_hint = hint_weight * max(0.0, 1.0 - p / hint_fraction) if hint_fraction > 0 else 0.0

        vis = model.vision_model(pixel_values=x, output_hidden_states=True)
        img = model.visual_projection(vis.pooler_output)
        img = img / img.norm(dim=-1, keepdim=True)                                     # [B, D]
        ids, mask = _encode_texts(tokenizer, phrases + captions + hard)
        txt = text_embeddings(model, ids, mask)                                        # [35 + B + B·neg, D]
        t_phr, t_cap, t_hard = txt[:len(phrases)], txt[len(phrases):len(phrases) + batch], txt[len(phrases) + batch:]
        scale = model.logit_scale.exp().clamp(max=100)

        phrase_logits = scale * img @ t_phr.T                                          # [B, 35]
        # each phrase on its own (sigmoid) and the phrases ranked against each other (softmax, the
        # scene's objects sharing the target), as zero-shot use will rank them
        l_phrase = (F.binary_cross_entropy_with_logits(phrase_logits + bias, y)
                    + F.cross_entropy(phrase_logits, y / y.sum(-1, keepdim=True)))
        # image -> its caption among the batch's captions and every hard negative; caption -> image
        i2t = scale * img @ torch.cat([t_cap, t_hard]).T                               # [B, B + B·neg]
        labels = torch.arange(batch)
        l_cap = 0.5 * (F.cross_entropy(i2t, labels) + F.cross_entropy(scale * t_cap @ img.T, labels))
        loss = l_phrase + caption_weight * l_cap
        if w_hint > 0:
            tokens = vis.hidden_states[hint_layer][:, 1:]                              # [B, 64, width], no CLS
            l_hint = F.cross_entropy(probe(tokens).flatten(0, 1), cells.flatten(0, 1))
            loss = loss + w_hint * l_hint
        if local_weight > 0:
            # the patch tokens the last block reads still say what is at their own place
            tokens = vis.hidden_states[-2][:, 1:]                                      # [B, 64, width]
            l_local = F.cross_entropy(local_probe(tokens).flatten(0, 1), cells.flatten(0, 1))
            loss = loss + local_weight * l_local
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

        with torch.no_grad():
            top = phrase_logits.topk(2, dim=-1).indices
            two = y.sum(-1) == 2
            set_acc = float((y.gather(1, top).sum(-1) == 2)[two].float().mean()) if two.any() else 0.0
            cap_acc = float((i2t.argmax(-1) == labels).float().mean())
        for k, v in (("phrase", l_phrase.item()), ("cap", l_cap.item()), ("top2", set_acc), ("capacc", cap_acc),
                     ("local", l_local.item() if local_weight > 0 else 0.0)):
            ema[k] = v if k not in ema else 0.98 * ema[k] + 0.02 * v
        bar.set_postfix({k: f"{v:.3f}" for k, v in ema.items()} | {"hint": f"{w_hint:.2f}"}, refresh=False)
    else:
        step += 1
    bar.close()
    train_seconds = time.time() - t_start

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.config.attnviz_demo = {"generator": "attnviz.scenes", "train_seed": seed,
                                 "example_prompts": list(EXAMPLE_PROMPTS)}
    # Six blocks, not CLIP's twelve: accumulating relevance from the first block gives the sharper map
    # here (the model card measures both), so the checkpoint declares it over CLIP's last-layer default.
    model.config.attnviz = {"method_defaults": {"relevance": {"start_layer": 0}}}
    model.save_pretrained(out_dir, safe_serialization=True)
    make_image_processor().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    size_bytes = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file())
    metrics = {"train_seed": seed, **init_info, "steps": step, "batch": batch, "train_seconds": round(train_seconds, 1),
               "scenes_seen_distinct": pool.next_index, "params": sum(p.numel() for p in model.parameters()),
               "folder_bytes": size_bytes}
    if eval_n:
        from attnviz.demo.evaluate_clip import evaluate

        log(f"evaluating on {eval_n} fresh two-object scenes (dataset seed {eval_seed}) through attnviz...")
        metrics["eval"] = evaluate(str(out_dir), n=eval_n, seed=eval_seed)
    metrics["total_seconds"] = round(time.time() - t_start, 1)
    log(json.dumps(metrics, indent=2))
    return metrics


def _caption(objects) -> str:
    from attnviz.scenes import caption_for

    return caption_for(objects)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m attnviz.demo.train_clip", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--seed", type=int, default=0, help="training data and init seed (default 0)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default 2400; 12 with --fast)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--minutes", type=float, default=None,
                    help=f"wall-clock cap from the start, data generation included; the schedule follows the "
                         f"clock when it binds (default {DEFAULT_MINUTES}; none with --fast; 0: no cap)")
    ap.add_argument("--width", type=int, default=128, help="vision width (default 128)")
    ap.add_argument("--layers", type=int, default=6, help="vision layers (default 6)")
    ap.add_argument("--init-vision", default="auto",
                    help=f"demo ViT folder to start the vision tower from; 'auto' (default): {VIT_DIR} when "
                         "present; 'none': from scratch")
    ap.add_argument("--hint-fraction", type=float, default=0.5, help="share of steps with the patch hint")
    ap.add_argument("--local-weight", type=float, default=0.5,
                    help="weight of the last block's patch-locality loss (0: off)")
    ap.add_argument("--eval", type=int, default=None, help="fresh scenes evaluated at the end (default 100; 0: skip)")
    ap.add_argument("--fast", action="store_true",
                    help="a few steps of a smaller model on a tiny pool (for tests; the model is not useful)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    minutes = args.minutes if args.minutes is not None else (None if args.fast else DEFAULT_MINUTES)
    train(args.out, args.seed, args.fast, steps=args.steps, batch=args.batch, lr=args.lr, minutes=minutes or None,
          width=args.width, layers=args.layers, mlp=2 * args.width, eval_n=args.eval,
          init_vision=None if args.init_vision.lower() == "none" else args.init_vision,
          hint_fraction=args.hint_fraction, local_weight=args.local_weight, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
