"""Swin Transformer classifiers and headless Swin backbones (Liu et al. 2021, https://arxiv.org/abs/2103.14030;
V2: Liu et al. 2022).

A Swin model has no CLS token and no global attention: each block attends inside windows of
``window × window`` tokens of its stage's grid, every other block on a grid cyclically shifted by
``window // 2``; between stages a patch merging turns 2×2 tokens into one. So a capture here is not
``[H, T, T]`` per layer: ``capture`` hooks every block's attention module (``output_attentions`` returns
only the last block of each stage) and keeps, per block, the softmax attention of every window and the
geometry the block really used (stage grid for this input, window, shift, padding), read off the model
during the forward. ``methods/hierarchy.py`` documents the capture layout and the conventions (padding,
shift, merging split, readout) with which rollout and relevance go through the hierarchy.

* ``layout``: the first stage's patch grid (no prefix tokens); every map is drawn on it.
* ``pooling``: "mean": the classifier reads the mean of the last stage's tokens (after a LayerNorm),
  so ``readout`` is 1/N over the last stage's tokens (not the layout's).
* ``token_block(i)``: the i-th block counting across stages, its output on its stage's grid.
* A headless ``SwinModel`` / ``Swinv2Model`` has no classes: its one target is the norm of the mean of the
  last stage's tokens before the final LayerNorm (what the pooled embedding is made from; after the
  LayerNorm every token's norm is nearly fixed), the same readout as the classifier's (1/N each).

transformers' ``SwinLayer`` (V1) clamps its window and switches its shift off when a stage's grid is no
larger than the window, and keeps that change for every later input: a 224² image switches the last
stage's shift off for a 448² image after it. ``_run`` puts back each block's own window and shift
before every forward, so a result never depends on what was run before. A V1 grid smaller than the
window makes the window attention and its position-bias table disagree in size (transformers raises);
such an input is refused in one sentence with the smallest size that works. V2 fixes its windows when
built and pads instead.
"""
from __future__ import annotations

from typing import Any

import torch
import transformers

from ..errors import UsageError
from ..tokens.budget import Cost, window_cost
from ..tokens.geometry import rounded_size
from ..tokens.mixing import Hierarchy, shifted_windows
from ..types import TokenLayout
from .base import config_names, register_adapter
from .classifier import ClassifierAdapter
from .hooks import this_thread

ARCHITECTURES = ("SwinForImageClassification", "Swinv2ForImageClassification", "SwinModel", "Swinv2Model")
MODEL_TYPES = {"swin": "SwinForImageClassification", "swinv2": "Swinv2ForImageClassification"}


def stage_grids(first: tuple[int, int], n_stages: int) -> list[tuple[int, int]]:
    """Each stage's rows × cols: a patch merging halves the grid, padding an odd side by one."""
    grids = [first]
    for _ in range(n_stages - 1):
        r, c = grids[-1]
        grids.append(((r + 1) // 2, (c + 1) // 2))
    return grids


@register_adapter
class SwinAdapter(ClassifierAdapter):
    family = "swin"
    #: transformers' Swin V1 blocks rewrite their own window and shift during a forward on a small grid,
    #: and this adapter puts the built ones back before each forward: two at once would race on them.
    concurrent_forwards = False
    headless_target = "mean-token embedding norm"
    # a batch of one input size shares the hierarchy; each block's windows hold image i's n_windows in turn
    batch_shared_extras = ("hierarchy",)
    batch_row_extras = ("windows",)
    #: Window attention keeps no T×T: the capture keeps every window's weights (``_run``), never q, k rows.
    ROWS_CAPTURE = False
    DENSE_ATTENTION = False      # window attention: N·S² per block, no T² (bfloat16 at any size)

    def __init__(self, model, processor, **kw):
        super().__init__(model, processor, **kw)
        # Each block's own window and shift as built: put back before every forward (see the module docstring).
        self._built = [(b.window_size, b.shift_size) for b in self._blocks()]

    @classmethod
    def matches(cls, config) -> bool:
        return config_names(config, ARCHITECTURES, MODEL_TYPES)

    @classmethod
    def load(cls, source, config, *, name, local_only=False):
        arch = next((a for a in getattr(config, "architectures", None) or [] if a in ARCHITECTURES),
                    MODEL_TYPES.get(config.model_type))
        kw = dict(use_safetensors=True, trust_remote_code=False, local_files_only=local_only)
        return cls(getattr(transformers, arch).from_pretrained(source, attn_implementation="eager", **kw),
                   transformers.AutoImageProcessor.from_pretrained(source, **kw), name=name, source=str(source))

    @classmethod
    def tiny(cls, kind: str = "swin", *, image_size: int = 24, patch_size: int = 2, window_size: int = 3,
             num_labels: int = 5, seed: int = 0):
        """A random 3-stage, 6-block model: kind "swin", "swinv2" or "swin-headless" (a ``SwinModel``). At 24²
        the grids are 12, 6, 3 with a window of 3: shifted blocks in the first two stages, none in the last
        (grid = window)."""
        torch.manual_seed(seed)
        cfg_cls, model_cls = {"swin": (transformers.SwinConfig, transformers.SwinForImageClassification),
                              "swinv2": (transformers.Swinv2Config, transformers.Swinv2ForImageClassification),
                              "swin-headless": (transformers.SwinConfig, transformers.SwinModel)}[kind]
        cfg = cfg_cls(image_size=image_size, patch_size=patch_size, embed_dim=16, depths=[2, 2, 2],
                      num_heads=[2, 2, 4], window_size=window_size, mlp_ratio=2.0, num_labels=num_labels,
                      id2label={i: f"class_{i}" for i in range(num_labels)},
                      label2id={f"class_{i}": i for i in range(num_labels)})
        model = model_cls(cfg)
        model.config.architectures = [model_cls.__name__]
        model.set_attn_implementation("eager")
        processor = transformers.ViTImageProcessor(size={"height": image_size, "width": image_size},
                                                   image_mean=[0.5] * 3, image_std=[0.5] * 3)
        return cls(model, processor, name=f"tiny-{kind}", source="<memory>")

    # --- geometry -----------------------------------------------------
    def _blocks(self) -> list[torch.nn.Module]:
        base = getattr(self.model, self.model.base_model_prefix, self.model)     # a headless model is its own base
        return [b for stage in base.encoder.layers for b in stage.blocks]

    @property
    def n_layers(self) -> int:
        return sum(self.config.depths)

    def token_block(self, layer: int) -> torch.nn.Module:
        return self._blocks()[layer]

    def layout(self, inputs) -> TokenLayout:
        """The first stage's grid: the patch embedding pads the input to whole patches, so a partial patch counts."""
        h, w = inputs["pixel_values"].shape[-2:]
        ph, pw = self.patch_size
        return TokenLayout(prefix_names=(), rows=-(-h // ph), cols=-(-w // pw), patch_size=self.patch_size,
                           input_size=(int(h), int(w)))

    @property
    def pooling(self) -> str:
        """Swin's head: LayerNorm, then the mean over the last stage's tokens (``AdaptiveAvgPool1d``)."""
        return "mean"

    def readout(self, layout: TokenLayout) -> torch.Tensor:
        """[N_last] 1/N on each token of the last stage (the one the mean pooling reads)."""
        rows, cols = stage_grids((layout.rows, layout.cols), len(self.config.depths))[-1]
        return torch.full((rows * cols,), 1.0 / (rows * cols))

    def max_patches(self):
        """No fixed cap: window attention has no T² memory; ``check_size`` refuses what would not fit."""
        return None

    def estimate(self, size: tuple[int, int]) -> Cost:
        """Window attention's cost at ``size``: per block its stage's (padded) tokens × window² × heads."""
        h, w = rounded_size(size, self.patch_size)
        ph, pw = self.patch_size
        win, cfg = self.config.window_size, self.config
        blocks = []
        for s, (r, c) in enumerate(stage_grids((-(-h // ph), -(-w // pw)), len(cfg.depths))):
            padded = (-(-r // win) * win) * (-(-c // win) * win)
            blocks += [(padded, cfg.num_heads[s], win * win, cfg.embed_dim * 2 ** s)] * cfg.depths[s]
        return window_cost(blocks, sum(p.numel() * p.element_size() for p in self.model.parameters()))

    def _check_size(self, pixel_values: torch.Tensor) -> None:
        """V1 only: every stage's grid must be at least the window (else transformers' window and its
        position-bias table disagree)."""
        if self.config.model_type != "swin":
            return
        ph, pw = self.patch_size
        h, w = pixel_values.shape[-2:]
        win, n = self.config.window_size, len(self.config.depths)
        grids = stage_grids((-(-h // ph), -(-w // pw)), n)
        if min(min(g) for g in grids) < win:
            side = ph * ((win - 1) * 2 ** (n - 1) + 1)
            raise UsageError(f"This Swin model needs every stage's grid at least its window ({win}×{win} patches): "
                             f"use an input of at least {side}×{side} pixels (this one is {h}×{w}).")

    # --- forward ------------------------------------------------------
    def _run(self, inputs, pixel_values, *, attentions):
        """One forward. With ``attentions``: (scores [B, n], None, {"hierarchy": Hierarchy, "windows": L ×
        [B · n_windows, H, S, S] window attentions as the forward used them, "grad_wrt": the same}); else
        (scores [B, n], None, {})."""
        self._check_size(pixel_values)
        blocks = self._blocks()
        for b, (win, shift) in zip(blocks, self._built):
            b.window_size, b.shift_size = win, shift
        kw = self._forward_kwargs(pixel_values)
        if self.headless:
            kw["output_hidden_states"] = True
        if not attentions:
            return self._scores(self.model(pixel_values=pixel_values.to(self.device), **kw)), None, {}
        windows: list[torch.Tensor] = []
        geometry: list[tuple[tuple[int, int], int, int]] = []

        def keep_attention(module, args, out):
            windows.append(out[1])                                            # [n_windows, H, S, S]

        def keep_geometry(module, args, kwargs, out):
            dims = args[1] if len(args) > 1 else kwargs["input_dimensions"]
            # read after the forward: V1 may have clamped them for this grid
            geometry.append(((int(dims[0]), int(dims[1])), int(module.window_size), int(module.shift_size)))

        handles = [b.attention.register_forward_hook(this_thread(keep_attention)) for b in blocks]
        handles += [b.register_forward_hook(this_thread(keep_geometry), with_kwargs=True) for b in blocks]
        try:
            out = self.model(pixel_values=pixel_values.to(self.device), output_attentions=True, **kw)
        finally:
            for hd in handles:
                hd.remove()
        stage_of = [s for s, d in enumerate(self.config.depths) for _ in range(d)]
        wins = tuple(shifted_windows(g, w, sh, stage) for (g, w, sh), stage in zip(geometry, stage_of))
        grids = tuple(wins[i].grid for i in range(len(wins)) if i == 0 or stage_of[i] != stage_of[i - 1])
        n_images = pixel_values.shape[0]
        for i, (win, a) in enumerate(zip(wins, windows)):
            if a.shape[0] != n_images * win.slots.shape[0] or a.shape[-1] != win.slots.shape[1]:
                raise RuntimeError(f"Block {i}: attention {tuple(a.shape)} does not fit {n_images} × "
                                   f"{win.slots.shape[0]} windows of {win.window}×{win.window} on a {win.grid} grid.")
        # No plain attentions: ModelAdapter.capture keeps the windows (one image's [n_windows, H, S, S]; a batch's
        # [B · n_windows, H, S, S], image by image) in extras and differentiates them (``methods/hierarchy.py``).
        windows = tuple(windows)
        return self._scores(out), None, {"hierarchy": Hierarchy(blocks=wins, grids=grids), "windows": windows,
                                  "grad_wrt": {"windows": windows}}

    def _scores(self, out) -> torch.Tensor:
        """[B, classes] logits, or for a headless model [B, 1]: the norm of the last stage's token mean."""
        if not self.headless:
            return out.logits
        return out.hidden_states[-1].mean(1).norm(dim=-1, keepdim=True)   # [B, N_last, C] -> [B, 1]

    def _check_attentions(self, attentions: tuple, layout: TokenLayout, extras: dict[str, Any]) -> None:
        hier = extras["hierarchy"]
        if hier.grids[0] != (layout.rows, layout.cols):
            raise RuntimeError(f"Token layout mismatch: the first stage is {hier.grids[0]}, the layout says "
                               f"{(layout.rows, layout.cols)}.")
