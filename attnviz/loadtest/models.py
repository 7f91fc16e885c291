"""A ViT-B/16 with random weights in a folder, as ``save_pretrained`` writes it (no download)."""
from __future__ import annotations

from pathlib import Path

RANDOM_VIT_B16 = "random-vit-b16"     # the --model name that builds it


def save_random_vit_b16(folder: Path) -> Path:
    """``transformers.ViTConfig()`` defaults (ViT-B/16 at 224², as google/vit-base-patch16-224) with
    1,000 labels like that checkpoint, random weights, safetensors, plus its image processor."""
    import torch
    import transformers
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "model.safetensors").is_file():
        return folder
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(num_labels=1000)
    transformers.ViTForImageClassification(cfg).save_pretrained(folder, safe_serialization=True)
    transformers.ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder
