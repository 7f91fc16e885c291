"""``python -m attnviz.bench_vlm CONFIG_DIR``: CPU time and peak memory of one VLM explanation at a real
checkpoint's full-size image geometry, with the model built from that checkpoint's ``config.json`` cut to a few
layers (random weights, float32, the real widths unless ``--narrow``).

The folder holds a real checkpoint's files without weights (``tests/fixtures/vlm-configs/*``: config, processor,
tokenizer, chat template). The model is saved with ``save_pretrained`` next to those files and loaded through
``attnviz.load_model``, so the processor that makes the image tokens is the real one. One explanation = prepare
(processor) + capture (one teacher-forced forward with the decoder's attentions) + the method for the first
content word of a typed answer. Runs with one torch thread; memory is the process's peak resident set, so run
one measurement per process (``--layers`` once per call). ``--extrapolate`` runs three child processes
(2/2, 4/2, 2/4 decoder/vision layers) and fits time and memory linearly in the two layer counts to the
checkpoint's full depth (a negative slope, noise on a busy machine, counts as zero).
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import transformers
from PIL import Image

NARROW = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4)


def vision_depth_key(config) -> str:
    """The vision config's layer-count field (Qwen2-VL calls it ``depth``)."""
    return "depth" if hasattr(config.vision_config, "depth") else "num_hidden_layers"


def depths(config) -> tuple[int, int]:
    """(decoder layers, vision layers) of a config."""
    return config.text_config.num_hidden_layers, getattr(config.vision_config, vision_depth_key(config))


def scaled_config(config, text_layers: int = 2, vision_layers: int = 2, narrow: bool = False):
    """The config with ``text_layers`` decoder and ``vision_layers`` vision layers; ``narrow``: width 64, 4 heads
    in both towers (for tests). Everything else (patch sizes, merge / shuffle factors, token ids, vocabulary) stays."""
    tc, vc = config.text_config, config.vision_config
    tc.num_hidden_layers = text_layers
    if getattr(tc, "layer_types", None):                 # Qwen2-VL lists one attention type per decoder layer
        tc.layer_types = list(tc.layer_types[:text_layers])
    setattr(vc, vision_depth_key(config), vision_layers)
    if narrow:
        for k, v in NARROW.items():
            setattr(tc, k, v)
        tc.num_key_value_heads, tc.head_dim = 4, 16
        rope = getattr(tc, "rope_parameters", None) or {}
        if "mrope_section" in rope:                      # Qwen2-VL's M-RoPE (t, h, w) split of head_dim / 2 = 8
            sec = rope["mrope_section"]
            scaled = [max(1, round(x * 8 / sum(sec))) for x in sec[1:]]
            rope["mrope_section"] = [8 - sum(scaled)] + scaled
        if vision_depth_key(config) == "depth":          # Qwen2-VL: embed_dim / num_heads, merger out = text width
            vc.embed_dim, vc.num_heads, vc.hidden_size = 64, 4, tc.hidden_size
        else:
            for k, v in NARROW.items():
                setattr(vc, k, v)
        if hasattr(config, "projection_dim"):            # PaliGemma's projector
            config.projection_dim = vc.projection_dim = tc.hidden_size
    return config


def build_scaled(config_dir: Path, out: Path, text_layers: int = 2, vision_layers: int = 2,
                 narrow: bool = False, seed: int = 0) -> Path:
    """Random-weight model from ``config_dir/config.json`` (scaled), saved to ``out`` with the folder's other files."""
    cfg = transformers.AutoConfig.from_pretrained(config_dir, local_files_only=True)
    scaled_config(cfg, text_layers, vision_layers, narrow)
    torch.manual_seed(seed)
    cls = getattr(transformers, cfg.architectures[0])
    model = cls(cfg)                       # the constructor builds float32 (from_config would take the config's dtype)
    model.save_pretrained(out)
    for f in Path(config_dir).iterdir():
        if f.is_file() and f.name not in ("config.json", "README.md"):
            shutil.copy(f, out / f.name)
    return out


def sample_image(size=(640, 480), seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype("uint8"))


def measure(folder: Path, method: str = "answer_relevance", size=(640, 480), **params) -> dict:
    """One explanation on a ``size`` image; CPU seconds per stage and the process's peak RSS (MB)."""
    import attnviz
    from attnviz.methods import explain
    torch.set_num_threads(1)
    adapter = attnviz.load_model(str(folder))
    stages, t = {}, time.process_time()

    def lap(name):
        nonlocal t
        now = time.process_time()
        stages[name] = round(now - t, 2)
        t = now

    inputs = adapter.prepare(sample_image(size), question="What is in the picture?", answer="A cat on a mat.")
    lap("prepare")
    cap = adapter.capture(inputs)
    lap("capture")
    explain(adapter, cap, method, None, **params)
    lap(method)
    geo = inputs["image_tokens"]
    return {"family": adapter.kind, "layers": {"decoder": adapter.n_layers,
                                               "vision": depths(adapter.model.config)[1]},
            "dtype": str(next(adapter.model.parameters()).dtype), "sequence": int(cap.attentions[0].shape[-1]),
            "image_tokens": geo.n_tokens, "canvas": [geo.canvas_rows, geo.canvas_cols], "cpu_s": stages,
            "cpu_total_s": round(sum(stages.values()), 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _child(config_dir: Path, text_layers: int, vision_layers: int, narrow: bool, method: str) -> dict:
    cmd = [sys.executable, "-m", "attnviz.bench_vlm", str(config_dir), "--layers", str(text_layers),
           "--vision-layers", str(vision_layers), "--method", method] + (["--narrow"] if narrow else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def extrapolate(config_dir: Path, narrow: bool = False, method: str = "answer_relevance") -> dict:
    """Three runs (2/2, 4/2, 2/4 decoder/vision layers), a linear fit in both layer counts, evaluated at full depth."""
    full = depths(transformers.AutoConfig.from_pretrained(config_dir, local_files_only=True))
    runs = {k: _child(config_dir, *k, narrow, method) for k in ((2, 2), (4, 2), (2, 4))}

    def fit(get):
        base, dt, dv = get(runs[2, 2]), get(runs[4, 2]), get(runs[2, 4])
        per_t, per_v = max(0.0, (dt - base) / 2), max(0.0, (dv - base) / 2)       # a negative slope is noise
        return round(base + per_t * (full[0] - 2) + per_v * (full[1] - 2), 1), round(per_t, 2), round(per_v, 2)

    cpu = fit(lambda r: r["cpu_total_s"])
    mem = fit(lambda r: r["peak_rss_mb"])
    return {"runs": {f"{a}/{b}": r for (a, b), r in runs.items()}, "full_depth": {"decoder": full[0], "vision": full[1]},
            "cpu_s_full_depth": cpu[0], "cpu_s_per_layer": {"decoder": cpu[1], "vision": cpu[2]},
            "peak_rss_mb_full_depth": mem[0], "peak_rss_mb_per_layer": {"decoder": mem[1], "vision": mem[2]}}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m attnviz.bench_vlm", description=__doc__.split("\n\n")[0])
    p.add_argument("config_dir", type=Path)
    p.add_argument("--layers", type=int, default=2, help="decoder layers")
    p.add_argument("--vision-layers", type=int, default=2)
    p.add_argument("--narrow", action="store_true", help="width 64 in both towers (a smoke test)")
    p.add_argument("--method", default="answer_relevance")
    p.add_argument("--extrapolate", action="store_true", help="three runs and a fit to the checkpoint's full depth")
    a = p.parse_args(argv)
    if a.extrapolate:
        print(json.dumps(extrapolate(a.config_dir, a.narrow, a.method), indent=1))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        build_scaled(a.config_dir, Path(tmp), a.layers, a.vision_layers, a.narrow)
        print(json.dumps(measure(Path(tmp), a.method)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
