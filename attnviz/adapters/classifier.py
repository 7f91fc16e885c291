"""ViT-family image classifiers and headless ViT backbones.

Covers ViT, DeiT (plain and distilled: CLS + distillation token), BEiT,
DINOv2 and DINOv2 with registers (CLS + register tokens), with or without a
classification head. A headless backbone (``ViTModel``, ``Dinov2Model``, e.g.
facebook/dino-vitb16) has no classes; its single target is the L2 norm of the
CLS token in the residual stream after the last block (before the final
LayerNorm, whose output norm is nearly constant by construction), so
class-specific methods explain "what builds up the CLS representation"
rather than a class.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import transformers
from PIL import Image

from ..errors import UsageError
from ..tokens.geometry import grid_layout, pair, pixels
from ..types import Target, TokenLayout
from .base import ModelAdapter, accepts_kwarg, class_probabilities, class_targets, config_names, register_adapter

# Architectures we accept by name (no remote code: every class is transformers' own).
ARCHITECTURES = {
    "ViTForImageClassification", "ViTModel",
    "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher", "DeiTModel",
    "BeitForImageClassification", "BeitModel",
    "Dinov2ForImageClassification", "Dinov2Model",
    "Dinov2WithRegistersForImageClassification", "Dinov2WithRegistersModel",
}
MODEL_TYPES = {"vit", "deit", "beit", "dinov2", "dinov2_with_registers"}


def prefix_names(config) -> tuple[str, ...]:
    """Prefix tokens as the architecture builds them (not inferred from shapes)."""
    if config.model_type == "deit":
        return ("cls", "distillation")                 # DeiTEmbeddings always adds both
    if config.model_type == "dinov2_with_registers":
        return ("cls",) + tuple(f"register{i}" for i in range(config.num_register_tokens))
    return ("cls",)


@register_adapter
class ClassifierAdapter(ModelAdapter):
    family = "classifier"
    task = "image-classification"
    batches_images = True
    #: a headless backbone's one target: what ``_run`` scores when the model has no classes
    headless_target = "CLS embedding norm"
    ROWS_CAPTURE = True          # dense self-attention through fast_eager: the chunked path applies

    def __init__(self, model, processor, **kw):
        super().__init__(model, processor, **kw)
        self.config = model.config
        self.headless = not hasattr(model, "classifier") and not hasattr(model, "cls_classifier")
        self.patch_size = pair(self.config.patch_size)
        self.native_size = pair(self.config.image_size)
        self.prefix = prefix_names(self.config)
        self.multi_label = getattr(self.config, "problem_type", None) == "multi_label_classification"

    @classmethod
    def matches(cls, config) -> bool:
        return config_names(config, ARCHITECTURES, MODEL_TYPES)

    @classmethod
    def load(cls, source, config, *, name, local_only=False):
        archs = [a for a in (getattr(config, "architectures", None) or []) if a in ARCHITECTURES]
        model_cls = getattr(transformers, archs[0]) if archs else transformers.AutoModelForImageClassification
        common = dict(use_safetensors=True, trust_remote_code=False, local_files_only=local_only)
        model = model_cls.from_pretrained(source, attn_implementation="eager", **common)
        processor = transformers.AutoImageProcessor.from_pretrained(source, **common)
        return cls(model, processor, name=name, source=str(source))

    @classmethod
    def tiny(cls, kind: str = "vit", *, image_size: int = 32, patch_size: int = 8, registers: int = 4,
             num_labels: int = 5, seed: int = 0):
        """A random 2-layer model: kind in vit, vit-headless, deit, deit-teacher, beit, dinov2, dinov2-headless, dinov2-registers."""
        torch.manual_seed(seed)
        common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      image_size=image_size, patch_size=patch_size, num_labels=num_labels,
                      id2label={i: f"class_{i}" for i in range(num_labels)},
                      label2id={f"class_{i}": i for i in range(num_labels)})
        T = transformers
        table = {
            "vit": (T.ViTConfig, T.ViTForImageClassification, {}),
            "vit-headless": (T.ViTConfig, T.ViTModel, {}),
            "deit": (T.DeiTConfig, T.DeiTForImageClassification, {}),
            "deit-teacher": (T.DeiTConfig, T.DeiTForImageClassificationWithTeacher, {}),
            "beit": (T.BeitConfig, T.BeitForImageClassification, {"use_relative_position_bias": True}),
            "dinov2": (T.Dinov2Config, T.Dinov2ForImageClassification, {}),
            "dinov2-headless": (T.Dinov2Config, T.Dinov2Model, {}),
            "dinov2-registers": (T.Dinov2WithRegistersConfig, T.Dinov2WithRegistersForImageClassification,
                                 {"num_register_tokens": registers}),
        }
        cfg_cls, model_cls, extra = table[kind]
        model = model_cls(cfg_cls(**common, **extra))
        model.config.architectures = [model_cls.__name__]
        model.set_attn_implementation("eager")
        processor = T.ViTImageProcessor(size={"height": image_size, "width": image_size},
                                        image_mean=[0.5] * 3, image_std=[0.5] * 3)
        return cls(model, processor, name=f"tiny-{kind}", source="<memory>")

    # --- inputs and geometry ------------------------------------------
    def prepare(self, image: Image.Image, *, texts: Optional[Sequence[str]] = None,
                size: Optional[tuple[int, int]] = None) -> dict[str, Any]:
        """Processor output for one RGB image. ``size=(height, width)`` overrides the resize
        (rounded to whole patches) for families that interpolate position embeddings."""
        if texts:
            raise UsageError("This model is an image classifier and reads no text: prompts (--text) are for "
                             "image–text models and captions for captioners.")
        if size is not None:
            self.check_size(size)                 # before the processor resizes: refuse what would not fit
        pixel_values, box = pixels(self.processor, image, self.patch_size, size, max_patches=self.max_patches())
        return {"pixel_values": pixel_values, "box": box}

    def layout(self, inputs) -> TokenLayout:
        return grid_layout(self.prefix, self.patch_size, inputs["pixel_values"])

    def _forward_kwargs(self, pixel_values: torch.Tensor) -> dict[str, Any]:
        if tuple(pixel_values.shape[-2:]) != self.native_size and accepts_kwarg(self.model.forward, "interpolate_pos_encoding"):
            return {"interpolate_pos_encoding": True}
        return {}

    # --- forward ------------------------------------------------------
    def _run(self, inputs, pixel_values, *, attentions):
        out = self.model(pixel_values=pixel_values.to(self.device), output_attentions=attentions,
                         output_hidden_states=self.headless, **self._forward_kwargs(pixel_values))
        if self.headless:
            cls_residual = out.hidden_states[-1][:, 0]                  # [B, D], before the final LayerNorm
            scores = cls_residual.norm(dim=-1, keepdim=True)            # [B, 1]
        else:
            scores = out.logits                                         # [B, classes]
        return scores, (out.attentions if attentions else None), {}

    def _targets(self, inputs, scores):
        if self.headless:
            return (Target(0, self.headless_target, "embedding", float(scores[0])),)
        return class_targets(self.config, scores)

    def probabilities(self, capture):
        if self.headless:
            return torch.ones(1)
        return self.probabilities_from_scores(capture.scores[None])[0]

    def probabilities_from_scores(self, scores):
        if self.headless:
            return None                     # the target is a norm, not a class
        return class_probabilities(scores, self.multi_label)

    @property
    def pooling(self) -> str:
        """Read off the architecture: distilled DeiT averages a CLS and a distillation head; BEiT with
        ``use_mean_pooling`` (its fine-tuned checkpoints) reads the patch mean; DINOv2's classifier reads
        concat(CLS, patch mean); everything else, and every headless target (the CLS norm), reads CLS."""
        if self.headless:
            return "cls"
        if hasattr(self.model, "distillation_classifier"):
            return "cls+distillation"
        if self.config.model_type == "beit" and getattr(self.config, "use_mean_pooling", False):
            return "mean"
        if self.config.model_type in ("dinov2", "dinov2_with_registers"):
            return "cls+mean"
        return "cls"

    def token_block(self, layer: int) -> torch.nn.Module:
        base = getattr(self.model, self.model.base_model_prefix, self.model)
        # transformers 5 moved ViT/DeiT/BEiT blocks to ``<base>.layers``; DINOv2 keeps ``encoder.layer``.
        holder = getattr(base, "encoder", base)
        blocks = getattr(base, "layers", None) or getattr(holder, "layer", None) or getattr(holder, "layers", None)
        if blocks is None:
            raise RuntimeError("Cannot find the transformer blocks of this model.")
        return blocks[layer]
