"""Train the offline demo captioner: a small ViT + GPT-2 that describes synthetic shape scenes.

    python -m attnviz.demo.train_captioner [--out models/demo-captioner-shapes] [--fast]
                                           [--encoder models/demo-vit-shapes] [--seed 0]
                                           [--steps 1500] [--minutes M]

A stock ``transformers.VisionEncoderDecoderModel``: a ViT encoder (64×64 input,
8×8 patches, so an 8×8 grid plus one CLS token) and a small GPT-2 decoder whose
blocks cross-attend to the encoder's tokens (``add_cross_attention``). It is
trained with teacher forcing (cross-entropy on every caption token and the end
token) to write the captions of :mod:`attnviz.scenes`, e.g. "a red circle,
a blue square and an orange cross", objects named left to right.

The encoder is the first three blocks of the demo classifier
(``models/demo-vit-shapes``, same geometry), fine-tuned at a lower learning rate
than the decoder. Those blocks' patch tokens were trained (the classifier's
FitNets hint) to say which shape is at each patch. Why not all six: the
classifier's last blocks fill background tokens with global information, and a
decoder reading a full encoder learned to take shape words from those tokens,
so its cross-attention for a shape word peaked on the object in 0.5–22 % of
cases (600-step trials) against 85–88 % with three blocks. Without that folder
(or ``--encoder none``) the encoder starts from random weights: a fallback, not
how the shipped model was made.

Threads: one by default (``ATTNVIZ_TRAIN_THREADS``), see where ``set_threads`` is called.

The tokenizer is written here: GPT-2 byte-level BPE (any text can be typed and
scored) whose merges make every scene word one token ("Ġred", "Ġcircle"),
``<|endoftext|>`` as start, end and padding, as GPT-2 captioners do. Saved with
``save_pretrained``: safetensors weights, ``ViTImageProcessor`` and tokenizer;
they load offline with ``VisionEncoderDecoderModel`` / ``AutoImageProcessor`` /
``AutoTokenizer``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from attnviz.demo.common import past_time_cap, set_threads, start_run

DEFAULT_OUT = "models/demo-captioner-shapes"
DEFAULT_ENCODER = "models/demo-vit-shapes"
END = "<|endoftext|>"
MAX_POSITIONS = 24          # start + caption (at most 11 words for three objects) + room for typed captions


# --------------------------------------------------------------------------- tokenizer

def caption_words() -> list[str]:
    """Every word a scene caption uses ("," is a byte of its own)."""
    from attnviz.scenes import COLOUR_NAMES, SHAPES

    return ["a", "an", "and", *COLOUR_NAMES, *SHAPES]


def make_tokenizer():
    """GPT-2 byte-level BPE: the 256 byte symbols, one merge chain per scene word, ``<|endoftext|>``.

    ``add_prefix_space``: the first word of a caption is the same token as
    anywhere else ("Ġa"), and the adapter groups tokens into words by "Ġ".
    """
    from transformers import GPT2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {s: i for i, s in enumerate(bytes_to_unicode().values())}
    merges: list[tuple[str, str]] = []
    for word in caption_words():
        piece = "Ġ"                                    # GPT-2's symbol for the space before a word
        for ch in word:
            if (piece, ch) not in merges:
                merges.append((piece, ch))
            piece += ch
            vocab.setdefault(piece, len(vocab))
    vocab[END] = len(vocab)
    return GPT2Tokenizer(vocab=vocab, merges=merges, add_prefix_space=True, bos_token=END, eos_token=END,
                         unk_token=END, pad_token=END, model_max_length=MAX_POSITIONS - 1)


# --------------------------------------------------------------------------- data

class CaptionPool:
    """Scenes with their caption ids (both as drawn and mirrored), part refreshed every step.

    Scene ``k`` of a run is ``make_scene(scene_rng(seed, k))``; the pool starts
    with scenes 0..size-1 and each refresh draws the next indices. A mirrored
    scene names its objects in reverse order, so its caption is rebuilt.
    """

    def __init__(self, size: int, seed: int, refresh: int, rng: np.random.Generator, tokenizer, length: int):
        from attnviz.scenes import make_dataset

        self.seed, self.refresh, self.rng, self.tok, self.length = seed, refresh, rng, tokenizer, length
        scenes = make_dataset(size, seed)
        self.images = np.stack([s.image for s in scenes])                             # [N, H, W, 3] uint8
        self.ids = np.full((size, 2, length), -1, np.int64)                           # [N, flip, L], -1 = pad
        for i, s in enumerate(scenes):
            self._store(i, s)
        self.next_index = size

    def _store(self, slot: int, scene) -> None:
        from attnviz.scenes import caption_for

        for flip, objects in enumerate((scene.objects, scene.objects[::-1])):
            ids = self.tok(caption_for(objects))["input_ids"]
            self.ids[slot, flip] = -1
            self.ids[slot, flip, :len(ids)] = ids

    def _refresh(self) -> None:
        from attnviz.scenes import make_scene, scene_rng

        for slot in self.rng.choice(len(self.images), size=self.refresh, replace=False):
            s = make_scene(scene_rng(self.seed, self.next_index))
            self.next_index += 1
            self.images[slot] = s.image
            self._store(slot, s)

    def batch(self, n: int):
        """(pixel_values [B, 3, H, W], caption ids [B, L] with -1 after the caption)."""
        import torch

        from attnviz.demo.train import to_pixel_values

        if self.refresh:
            self._refresh()
        idx = self.rng.integers(len(self.images), size=n)
        flip = self.rng.random(n) < 0.5             # every shape class is mirror-symmetric
        x = self.images[idx]
        x[flip] = x[flip, :, ::-1]
        return to_pixel_values(x), torch.from_numpy(self.ids[idx, flip.astype(int)])


def teacher_forcing(ids, start_id: int, end_id: int):
    """Decoder inputs ``[start, c_0 … c_{n-1}]`` and labels ``[c_0 … c_{n-1}, end]`` (-100 = ignored)."""
    import torch

    B = ids.shape[0]
    lengths = (ids >= 0).sum(1)                                                  # [B]
    dec_in = torch.cat([torch.full((B, 1), start_id), ids.clamp_min(0)], 1)      # [B, 1 + L]
    dec_in[torch.arange(1 + ids.shape[1])[None] > lengths[:, None]] = end_id
    labels = torch.cat([ids, torch.full((B, 1), -1)], 1)                         # [B, L + 1]
    labels[torch.arange(B), lengths] = end_id
    labels[labels < 0] = -100
    return dec_in, labels


# --------------------------------------------------------------------------- model

def make_model(tokenizer, encoder_dir: str | None, *, encoder_layers: int = 3, hidden: int = 128, heads: int = 4,
               mlp: int = 256, dec_layers: int = 2, dec_heads: int = 4):
    """A VisionEncoderDecoderModel: ViT (from ``encoder_dir`` when given) + a fresh GPT-2 with cross-attention."""
    from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTModel

    from attnviz.scenes import IMAGE_SIZE

    source = None
    if encoder_dir:
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()     # its load report lists the classifier head we drop on purpose
        try:
            source = ViTModel.from_pretrained(encoder_dir, use_safetensors=True)   # renames, drops "vit."
        finally:
            hf_logging.set_verbosity(level)
        c = source.config
        if (c.image_size, c.patch_size) != (IMAGE_SIZE, 8):
            raise ValueError(f"{encoder_dir} is a {c.image_size}² / patch {c.patch_size} ViT; "
                             f"the captioner needs {IMAGE_SIZE}² / patch 8")
        if encoder_layers > c.num_hidden_layers:
            raise ValueError(f"{encoder_dir} has {c.num_hidden_layers} blocks; cannot keep {encoder_layers}")
        hidden, heads, mlp = c.hidden_size, c.num_attention_heads, c.intermediate_size
    # A plain encoder config (no classes): the classifier's labels mean nothing here.
    enc_cfg = ViTConfig(image_size=IMAGE_SIZE, patch_size=8, num_channels=3, hidden_size=hidden,
                        num_hidden_layers=encoder_layers, num_attention_heads=heads, intermediate_size=mlp,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    encoder = ViTModel(enc_cfg)     # with the (unused) pooler, as VisionEncoderDecoderModel rebuilds it on load
    if source is not None:
        missing, unexpected = encoder.load_state_dict(source.state_dict(), strict=False)
        dropped = [k for k in unexpected if not (k.startswith("layers.") and int(k.split(".")[1]) >= encoder_layers)]
        if missing or dropped:
            raise ValueError(f"the encoder checkpoint does not match: missing {missing}, unexpected {dropped}")
    from transformers import VisionEncoderDecoderModel

    e = tokenizer.eos_token_id
    dec_cfg = GPT2Config(vocab_size=len(tokenizer), n_embd=encoder.config.hidden_size, n_layer=dec_layers,
                         n_head=dec_heads, n_inner=encoder.config.hidden_size, n_positions=MAX_POSITIONS,
                         add_cross_attention=True, is_decoder=True, resid_pdrop=0.0, embd_pdrop=0.0,
                         attn_pdrop=0.0, bos_token_id=e, eos_token_id=e, pad_token_id=e)
    decoder = GPT2LMHeadModel(dec_cfg)
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    ids = dict(decoder_start_token_id=e, bos_token_id=e, eos_token_id=e, pad_token_id=e)
    for target in (model.config, model.generation_config):
        for k, v in ids.items():
            setattr(target, k, v)
    model.generation_config.max_new_tokens = 16
    model.generation_config.num_beams = 1
    model.generation_config.do_sample = False
    model.config.architectures = ["VisionEncoderDecoderModel"]
    model.set_attn_implementation("eager")
    return model


# --------------------------------------------------------------------------- evaluation

def generate_captions(model, tokenizer, images: np.ndarray, batch: int = 250, max_new_tokens: int = 16) -> list[str]:
    """Greedy captions of uint8 [N, H, W, 3] images."""
    import torch

    from attnviz.demo.train import to_pixel_values

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            seq = model.generate(pixel_values=to_pixel_values(images[i:i + batch]), max_new_tokens=max_new_tokens,
                                 num_beams=1, do_sample=False)
            out += [t.strip() for t in tokenizer.batch_decode(seq, skip_special_tokens=True)]
    return out


def caption_scores(predicted: list[str], scenes) -> dict:
    """Exact-caption accuracy, and the share of objects whose "colour shape" the caption names."""
    exact = sum(p == s.caption for p, s in zip(predicted, scenes))
    named = total = 0
    for p, s in zip(predicted, scenes):
        words = p.replace(",", " ").split()
        pairs = set(zip(words, words[1:]))
        for o in s.objects:
            named += (o.colour, o.shape) in pairs
            total += 1
    return {"exact_caption_accuracy": exact / len(scenes), "object_accuracy": named / max(total, 1)}


# --------------------------------------------------------------------------- training

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def train(out: str = DEFAULT_OUT, *, seed: int = 0, fast: bool = False, encoder: str | None = DEFAULT_ENCODER,
          steps: int = 1500, batch: int = 64, lr: float = 1e-3, encoder_lr: float = 2e-4,
          encoder_layers: int = 3, dec_layers: int = 2, pool_size: int = 8000, refresh: int = 16,
          minutes: float | None = None, eval_n: int = 500, eval_seed: int = 20_000, quiet: bool = False) -> dict:
    """Train and save the demo captioner into ``out``; returns the metrics dict.

    ``fast``: a few steps on a tiny pool, for tests (the model is not useful).
    ``encoder``: a demo-classifier folder to start the ViT from (None or missing: from scratch).
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from attnviz.scenes import make_dataset
    from attnviz.demo.train import make_image_processor

    if fast:
        steps, batch, pool_size, refresh, eval_n = min(steps, 12), min(batch, 16), 64, 0, min(eval_n, 16)
    # One thread: this model's matrices are small (64 scenes × 65 tokens × 128), so a second thread
    # gains little, and on 2 shared cores a step was 9× slower (3.4 s, not 0.37 s) with two threads.
    set_threads(1)
    t_start = time.time()
    rng, tqdm_kw, log = start_run(seed, 2, quiet)

    tokenizer = make_tokenizer()
    enc_dir = encoder if encoder and (Path(encoder) / "model.safetensors").is_file() else None
    if encoder and enc_dir is None:
        log(f"no demo classifier at {encoder}: the encoder starts from scratch (much less accurate)")
    model = make_model(tokenizer, enc_dir, encoder_layers=encoder_layers, dec_layers=dec_layers)
    start_id = end_id = tokenizer.eos_token_id

    log(f"generating {pool_size} training scenes (dataset seed {seed})...")
    pool = CaptionPool(pool_size, seed, refresh, rng, tokenizer, length=MAX_POSITIONS - 1)
    log(f"  done in {time.time() - t_start:.1f}s")

    enc_params = list(model.encoder.parameters())
    if enc_dir and encoder_lr == 0:          # frozen: the classifier's local patch features as they are
        for p in enc_params:
            p.requires_grad_(False)
        enc_params = []
    dec_params = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    groups = []
    for params, base in ((enc_params, encoder_lr if enc_dir else lr), (dec_params, lr)):
        groups += [{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.01, "base": base},
                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "base": base}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98))
    warmup = max(1, min(100, steps // 10))

    def scale_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, steps - warmup)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p))

    deadline = None if minutes is None else t_start + 60 * minutes
    model.train()
    ema_loss = ema_acc = None
    bar = tqdm(range(steps), desc="captioner", **tqdm_kw)
    step = 0
    for step in bar:
        s = scale_at(step)
        for g in opt.param_groups:
            g["lr"] = g["base"] * s
        x, ids = pool.batch(batch)
        dec_in, labels = teacher_forcing(ids, start_id, end_id)
        logits = model(pixel_values=x, decoder_input_ids=dec_in, use_cache=False).logits    # [B, 1 + L, V]
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            keep = labels != -100
            # a whole caption right under teacher forcing (every token, and the end)
            acc = float(((logits.argmax(-1) == labels) | ~keep).all(1).float().mean())
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        ema_acc = acc if ema_acc is None else 0.98 * ema_acc + 0.02 * acc
        bar.set_postfix(loss=f"{ema_loss:.3f}", acc=f"{ema_acc:.3f}", refresh=False)
        if past_time_cap(deadline, minutes, step, steps, log):
            break
    bar.close()
    train_seconds = time.time() - t_start

    log(f"evaluating on {eval_n} held-out scenes (dataset seed {eval_seed})...")
    eval_scenes = make_dataset(eval_n, eval_seed)
    predicted = generate_captions(model, tokenizer, np.stack([s.image for s in eval_scenes]))
    scores = caption_scores(predicted, eval_scenes)

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.attnviz_demo = {"generator": "attnviz.scenes", "train_seed": seed,
                                 "encoder_init": "demo-vit-shapes" if enc_dir else "scratch"}
    model.save_pretrained(out_dir, safe_serialization=True)
    make_image_processor().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    size_bytes = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file())
    metrics = {
        **scores,
        "eval_n": eval_n,
        "eval_seed": eval_seed,
        "train_seed": seed,
        "encoder_init": enc_dir or "scratch",
        "encoder_init_sha256": _sha256(Path(enc_dir) / "model.safetensors") if enc_dir else None,
        "steps": step + 1,
        "batch": batch,
        "train_seconds": round(train_seconds, 1),
        "scenes_seen_distinct": pool.next_index,
        "params": sum(p.numel() for p in model.parameters()),
        "folder_bytes": size_bytes,
        "examples": [{"true": s.caption, "generated": p} for s, p in list(zip(eval_scenes, predicted))[:5]],
    }
    log(json.dumps(metrics, indent=2))
    return metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m attnviz.demo.train_captioner", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--encoder", default=DEFAULT_ENCODER,
                    help=f"demo classifier to start the ViT encoder from (default {DEFAULT_ENCODER}; 'none': scratch)")
    ap.add_argument("--seed", type=int, default=0, help="training data and init seed (default 0)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--encoder-layers", type=int, default=3,
                    help="ViT blocks kept from the classifier (default 3: the ones its training hint made local)")
    ap.add_argument("--dec-layers", type=int, default=2, help="GPT-2 decoder blocks")
    ap.add_argument("--lr", type=float, default=1e-3, help="decoder learning rate")
    ap.add_argument("--encoder-lr", type=float, default=2e-4, help="encoder learning rate (pretrained encoder; 0: frozen)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="wall-clock cap for the whole run; training stops early when reached")
    ap.add_argument("--fast", action="store_true",
                    help="a dozen steps on a tiny pool (for tests; the model is not useful)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    encoder = None if args.encoder.lower() == "none" else args.encoder
    train(args.out, seed=args.seed, fast=args.fast, encoder=encoder, steps=args.steps, batch=args.batch,
          encoder_layers=args.encoder_layers, dec_layers=args.dec_layers, lr=args.lr, encoder_lr=args.encoder_lr,
          minutes=args.minutes, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
