"""Real-model situations built from random weights (issue 20): what trained ViTs do that toy models don't.

* An **outlier patch**: trained ViTs (DINOv2, ViT-B) have a few high-norm patch tokens that take most of
  the CLS token's attention, so rollout's largest patch is 5-100x its 99th percentile. Here one patch's
  position embedding carries a large component along one hidden dimension j, and every layer's key
  projection reads that dimension along a direction its query bias also points to: every query then
  attends to that patch (about 60 % of CLS attention with the default strength).
* A **12-layer** model (the depth of ViT-B / DINOv2-S) and a **headless backbone** (no classes).

Every model is saved with ``save_pretrained`` (safetensors) and loaded back through the project's loader.
"""
from __future__ import annotations

import torch
import transformers as T

OUTLIER_ROW, OUTLIER_COL = 5, 9       # the outlier patch on the 16 x 16 grid
GRID = 16


def outlier_patch() -> int:
    """The outlier's index among the patches (row-major)."""
    return OUTLIER_ROW * GRID + OUTLIER_COL


def build(folder, *, layers: int = 2, headless: bool = False, outlier: float = 3.6, seed: int = 0,
          num_labels: int = 5):
    """A random DINOv2 (64 px input, 4 px patches: a 16 x 16 grid like a 224 px ViT-B/14's) written to
    ``folder``; ``outlier`` is the strength of the outlier patch (0: none)."""
    torch.manual_seed(seed)
    cfg = T.Dinov2Config(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
                         image_size=64, patch_size=4, num_labels=num_labels,
                         id2label={i: f"class_{i}" for i in range(num_labels)},
                         label2id={f"class_{i}": i for i in range(num_labels)})
    cls = T.Dinov2Model if headless else T.Dinov2ForImageClassification
    model = cls(cfg)
    model.config.architectures = [cls.__name__]
    model.eval()
    backbone = model if headless else model.dinov2
    if outlier:
        j = 3                                     # the hidden dimension that marks the outlier patch
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            backbone.embeddings.position_embeddings[0, 1 + outlier_patch(), j] += 10.0     # [1, 1 + T, D]
            for layer in backbone.encoder.layer:
                w = torch.randn(cfg.hidden_size, generator=g)
                w /= w.norm()
                layer.attention.q_proj.bias += outlier * w          # every query points along w ...
                layer.attention.k_proj.weight[:, j] += outlier * w  # ... and so does the outlier's key
    model.save_pretrained(folder, safe_serialization=True)
    T.ViTImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.5] * 3,
                        image_std=[0.5] * 3).save_pretrained(folder)
    return folder
