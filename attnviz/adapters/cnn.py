"""Convolutional image classifiers: ResNet, ConvNeXt, RegNet (X and Y), EfficientNet, and the project's gated CNN.

A CNN has no attention weights. Its capture holds, instead, each **stage**'s feature map
(``Capture.stages``, [C, h, w]) with its grid (``Capture.stage_grids``: h × w for the actual input
and the stage's stride, as a ``TokenLayout`` without prefix tokens), and its **gates**
(``Capture.gates``): squeeze-and-excitation (RegNet Y, EfficientNet, the gated CNN), ECA and CBAM
(the gated CNN) as they fired for this image, read by forward hooks on each gate's sigmoid.

Geometry from the model: the stride of each stage is the architecture's (its config: stem and
stage strides), the grid is the feature map's own shape for this input (padded convolutions give
⌈H / stride⌉ cells, unpadded ones ⌊H / stride⌋), so any input size works. ``layout`` is the last
stage's grid: the one the classifier's global average pool reads, so the pooling is declared
``"mean"`` over it (every architecture here averages its last feature map before the linear head;
ConvNeXt then applies a LayerNorm to the mean, which does not change which cells are read).

Stages: ResNet, ConvNeXt, RegNet and the gated CNN have ``encoder.stages`` (or ``stages``); an
EfficientNet's blocks are grouped by its config's base blocks (one group per resolution step of
``config.strides``), plus its final 1×1 "top" convolution, whose output is what the pool reads.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import transformers
from PIL import Image

from .. import gated_cnn
from ..errors import ModelUnavailable, UsageError
from ..precision import computing, kept
from ..tokens.geometry import view_box
from ..types import Gate, TokenLayout
from .base import ModelAdapter, class_probabilities, class_targets, config_names, register_adapter
from .hooks import this_thread

ARCHITECTURES = {"ResNetForImageClassification", "ConvNextForImageClassification", "RegNetForImageClassification",
                 "EfficientNetForImageClassification", "GatedCnnForImageClassification"}
MODEL_TYPES = {"resnet", "convnext", "regnet", "efficientnet", gated_cnn.MODEL_TYPE}
#: A chosen input size may have at most this many pixels (1024², the ViTs' cap of 4,096 16-pixel patches).
MAX_PIXELS = 1024 * 1024


@dataclass(frozen=True)
class Stage:
    name: str
    output: torch.nn.Module      # its forward output is the stage's feature map [B, C, h, w]
    weights: torch.nn.Module     # holds the stage's parameters (what randomisation re-initialises)
    stride: int                  # input pixels per cell


@dataclass(frozen=True)
class GateSite:
    name: str                    # the sigmoid module's path
    kind: str                    # "channel" | "spatial"
    module: str                  # "SE" | "ECA" | "CBAM"
    owner: torch.nn.Module       # the gate block; for a channel gate its input is the map the gate scales
    sigmoid: torch.nn.Module     # its output is the gate
    stage: int                   # the stage whose weights hold it


def _gate_table() -> dict[type, tuple[tuple[str, str, str], ...]]:
    """Gate block class -> (kind, label, attribute of the module whose output is the gate) for each gate in it."""
    from transformers.models.efficientnet.modeling_efficientnet import EfficientNetSqueezeExciteLayer
    from transformers.models.regnet.modeling_regnet import RegNetSELayer
    return {
        RegNetSELayer: (("channel", "SE", "attention"),),                 # Sequential ending in a Sigmoid
        EfficientNetSqueezeExciteLayer: (("channel", "SE", "act_expand"),),
        gated_cnn.SqueezeExcitation: (("channel", "SE", "gate"),),
        gated_cnn.EfficientChannelAttention: (("channel", "ECA", "gate"),),
        gated_cnn.CBAM: (("channel", "CBAM", "channel_gate"), ("spatial", "CBAM", "spatial_gate")),
    }


def model_stages(model) -> list[Stage]:
    """The stages of a supported CNN with their strides, read from the architecture and its config."""
    cfg = model.config
    mt = cfg.model_type
    if mt in ("resnet", "regnet"):
        base = getattr(model, mt)
        # ResNet's stem: 7×7 stride-2 convolution + stride-2 max pool; RegNet's: one stride-2 3×3 convolution
        s = 4 if mt == "resnet" else 2
        out = []
        for i, st in enumerate(base.encoder.stages):
            s *= 2 if (i > 0 or cfg.downsample_in_first_stage) else 1
            out.append(Stage(f"stage {i}", st, st, s))
        return out
    if mt == "convnext":
        s, out = cfg.patch_size, []                              # patchify stem, then 2×2 stride-2 downsampling
        for i, st in enumerate(model.convnext.encoder.stages):
            s *= 2 if i > 0 else 1
            out.append(Stage(f"stage {i}", st, st, s))
        return out
    if mt == "efficientnet":
        enc = model.efficientnet.encoder
        s, k, out = 2, 0, []                                     # stem: stride-2 3×3 convolution
        for i, repeats in enumerate(cfg.num_block_repeats):
            n = int(math.ceil(cfg.depth_coefficient * repeats))
            s *= cfg.strides[i]
            group = enc.blocks[k:k + n]
            out.append(Stage(f"blocks {k}–{k + n - 1}", group[-1], torch.nn.ModuleList(group), s))
            k += n
        top = torch.nn.ModuleList([enc.top_conv, enc.top_bn])
        out.append(Stage("top", enc.top_activation, top, s))
        return out
    if mt == gated_cnn.MODEL_TYPE:
        s, out = cfg.stem_stride, []
        for i, st in enumerate(model.stages):
            s *= cfg.strides[i]
            out.append(Stage(f"stage {i}", st, st, s))
        return out
    raise ModelUnavailable(f"attnviz does not know the stages of {mt} models.")


def gate_sites(model, stages: Sequence[Stage]) -> list[GateSite]:
    """Every SE / ECA / CBAM gate of the model in module order (the order of the forward pass here)."""
    table = _gate_table()
    owners = [{id(m) for m in st.weights.modules()} for st in stages]
    out = []
    for name, mod in model.named_modules():
        stage = next((k for k, ids in enumerate(owners) if id(mod) in ids), 0)
        for kind, label, attr in table.get(type(mod), ()):
            out.append(GateSite(f"{name}.{attr}", kind, label, mod, getattr(mod, attr), stage))
    return out


def crop_pct_box(processor, size: tuple[int, int]) -> Optional[tuple[int, int, int, int]]:
    """The region of the original (width, height) image a ConvNeXt-style processor keeps: below 384 it
    resizes the shortest edge to ``int(edge / crop_pct)`` (the long side truncated) and centre-crops
    edge × edge; from 384 it warps the whole image (None)."""
    edge = (getattr(processor, "size", None) or {}).get("shortest_edge")
    pct = getattr(processor, "crop_pct", None)
    if not edge or not pct or edge >= 384:
        return None
    w, h = size
    short = int(edge / pct)
    rw, rh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    left, top = max(0, (rw - edge) // 2), max(0, (rh - edge) // 2)
    sx, sy = w / rw, h / rh
    return (round(left * sx), round(top * sy), round(min(rw, left + edge) * sx), round(min(rh, top + edge) * sy))


def _lively_init(model: torch.nn.Module) -> None:
    """He-normal (fan in) weights, batch-norm scales 1, for a random test model whose blocks must each do
    something: ConvNeXt's and EfficientNet's own inits draw weights (EfficientNet: batch-norm scales too) at
    std 0.02, under which every residual block is nearly an identity or the output ignores the input; fan in,
    as a depthwise convolution's fan out counts every channel. (ConvNeXt's layer scale is set to 1, not 1e-6.)"""
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)


@register_adapter
class CnnAdapter(ModelAdapter):
    family = "cnn"
    task = "image-classification"
    PROVIDES = frozenset({"pixels", "stages"})
    MAY_PROVIDE = frozenset({"channel_gates", "spatial_gates"})
    DENSE_ATTENTION = False          # no token attention: bfloat16 at any input size

    def __init__(self, model, processor, **kw):
        super().__init__(model, processor, **kw)
        self.config = model.config
        if self.config.model_type == "efficientnet" and getattr(self.config, "pooling_type", "mean") != "mean":
            raise ModelUnavailable("attnviz supports EfficientNets whose head averages the last feature map "
                                   f"(pooling_type 'mean'); this one uses '{self.config.pooling_type}'.")
        self.stage_specs = model_stages(model)
        self.gate_specs = gate_sites(model, self.stage_specs)
        self.multi_label = getattr(self.config, "problem_type", None) == "multi_label_classification"
        self._grids: OrderedDict[tuple[int, int], tuple[tuple[int, int], ...]] = OrderedDict()

    @classmethod
    def matches(cls, config) -> bool:
        return config_names(config, ARCHITECTURES, MODEL_TYPES)

    @classmethod
    def load(cls, source, config, *, name, local_only=False):
        common = dict(use_safetensors=True, trust_remote_code=False, local_files_only=local_only)
        # every class here is transformers' own or attnviz's (gated_cnn, registered with the Auto classes)
        model = transformers.AutoModelForImageClassification.from_pretrained(source, **common)
        processor = transformers.AutoImageProcessor.from_pretrained(source, **common)
        return cls(model, processor, name=name, source=str(source))

    @classmethod
    def tiny(cls, kind: str = "resnet", *, image_size: int = 64, num_labels: int = 5, seed: int = 0):
        """A random small CNN: kind in resnet, convnext, regnet-y, regnet-x, efficientnet, gated
        (the project's own, with SE, ECA and CBAM stages)."""
        torch.manual_seed(seed)
        T = transformers
        labels = dict(num_labels=num_labels, id2label={i: f"class_{i}" for i in range(num_labels)},
                      label2id={f"class_{i}": i for i in range(num_labels)})
        four = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])
        if kind == "resnet":
            model = T.ResNetForImageClassification(T.ResNetConfig(embedding_size=8, layer_type="basic", **four, **labels))
        elif kind == "convnext":
            model = T.ConvNextForImageClassification(T.ConvNextConfig(layer_scale_init_value=1.0, **four, **labels))
        elif kind in ("regnet-y", "regnet-x"):
            model = T.RegNetForImageClassification(T.RegNetConfig(embedding_size=8, groups_width=8,
                                                                  layer_type=kind[-1], **four, **labels))
        elif kind == "efficientnet":
            ecfg = T.EfficientNetConfig(width_coefficient=0.25, depth_coefficient=0.25, image_size=image_size,
                                        **labels)
            ecfg.hidden_dim = 320                  # the top convolution's channels: round_filters(1280) at 0.25
            model = T.EfficientNetForImageClassification(ecfg)
        elif kind == "gated":
            model = gated_cnn.GatedCnnForImageClassification(gated_cnn.GatedCnnConfig(
                stem_channels=8, hidden_sizes=[8, 16, 16], depths=[1, 1, 2], strides=[1, 2, 2],
                gates=["se", "eca", "cbam"], se_reduction=1, **labels))
        else:
            raise ValueError(f"Unknown tiny CNN kind '{kind}'.")
        if kind in ("convnext", "efficientnet"):
            _lively_init(model)
        model.config.architectures = [type(model).__name__]
        if kind == "efficientnet":
            processor = T.EfficientNetImageProcessor(size={"height": image_size, "width": image_size},
                                                     include_top=False)
        elif kind == "gated":
            processor = T.ViTImageProcessor(size={"height": image_size, "width": image_size},
                                            image_mean=[0.5] * 3, image_std=[0.5] * 3)
        else:   # the hub checkpoints' processor: shortest edge to size / crop_pct, then a centre crop
            processor = T.ConvNextImageProcessor(size={"shortest_edge": image_size}, crop_pct=0.875)
        return cls(model.eval(), processor, name=f"tiny-{kind}", source="<memory>")

    # --- what the model gives the methods ------------------------------
    @property
    def provides(self) -> frozenset:
        kinds = {f"{g.kind}_gates" for g in self.gate_specs}
        return self.PROVIDES | frozenset(kinds)

    @property
    def n_layers(self) -> int:
        """Stages (what a layer index counts on a CNN)."""
        return len(self.stage_specs)

    @property
    def pooling(self) -> str:
        """Global average pool of the last stage before the linear head (see the module docstring)."""
        return "mean"

    def token_block(self, layer: int) -> torch.nn.Module:
        """The module whose output is stage ``layer``'s feature map [B, C, h, w] (not tokens: a CNN has none)."""
        return self.stage_specs[layer].output

    def block(self, layer: int) -> torch.nn.Module:
        """Stage ``layer``'s weights (EfficientNet: all the blocks of its group)."""
        return self.stage_specs[layer].weights

    @property
    def total_stride(self) -> int:
        return self.stage_specs[-1].stride

    # --- inputs and geometry ------------------------------------------
    def prepare(self, image: Image.Image, *, texts: Optional[Sequence[str]] = None,
                size: Optional[tuple[int, int]] = None) -> dict[str, Any]:
        """Processor output for one RGB image; ``size=(height, width)`` resizes the whole image to exactly that
        (a CNN takes any size; no crop, box None)."""
        if texts:
            raise UsageError("This model is an image classifier and reads no text: prompts (--text) are for "
                             "image–text models and captions for captioners.")
        if size is None:
            pixel_values = self.processor(images=image, return_tensors="pt")["pixel_values"]
            box = crop_pct_box(self.processor, image.size) or view_box(self.processor, image.size)
        else:
            h, w = int(size[0]), int(size[1])
            if h * w > MAX_PIXELS:
                raise UsageError(f"The input size {h}×{w} has {h * w:,} pixels; at most {MAX_PIXELS:,} (e.g. 1024×1024).")
            resample = getattr(self.processor, "resample", None)
            resized = image.resize((w, h), Image.Resampling(int(resample)) if resample is not None else Image.BICUBIC)
            pixel_values = self.processor(images=resized, do_resize=False, do_center_crop=False,
                                          return_tensors="pt")["pixel_values"]
            box = None
        s = self.total_stride
        if min(pixel_values.shape[-2:]) < s:
            hh, ww = pixel_values.shape[-2:]
            raise UsageError(f"The input size {hh}×{ww} is smaller than this model's total stride {s}: "
                             f"give at least {s}×{s}.")
        return {"pixel_values": pixel_values, "box": box}

    def _stage_shapes(self, pixel_values: torch.Tensor) -> tuple[tuple[int, int], ...]:
        key = tuple(int(v) for v in pixel_values.shape[-2:])
        if key not in self._grids:
            with torch.no_grad(), self.lock:          # a shape pass, only for a size no forward has seen
                self.run({"pixel_values": pixel_values}, pixel_values[:1], attentions=True)
        return self._grids[key]

    def stage_grids(self, pixel_values: torch.Tensor) -> tuple[TokenLayout, ...]:
        """Each stage's grid for this input: rows × cols of its feature map, its stride as the cell size."""
        h, w = (int(v) for v in pixel_values.shape[-2:])
        return tuple(TokenLayout(prefix_names=(), rows=r, cols=c, patch_size=(st.stride, st.stride), input_size=(h, w))
                     for (r, c), st in zip(self._stage_shapes(pixel_values), self.stage_specs))

    def layout(self, inputs) -> TokenLayout:
        """The last stage's grid: what the global average pool reads."""
        return self.stage_grids(inputs["pixel_values"])[-1]

    # --- forward ------------------------------------------------------
    def _run(self, inputs, pixel_values, *, attentions):
        """One forward; with ``attentions`` (a capture) the stage maps and gates are recorded by hooks."""
        stages: list[torch.Tensor] = []
        fired: dict[int, dict[str, torch.Tensor]] = {}
        handles = []
        if attentions:
            for st in self.stage_specs:
                handles.append(st.output.register_forward_hook(this_thread(lambda m, a, out: stages.append(out))))
            for i, g in enumerate(self.gate_specs):
                rec = fired.setdefault(i, {})
                handles.append(g.sigmoid.register_forward_hook(
                    this_thread(lambda m, a, out, rec=rec: rec.__setitem__("value", out))))
                if g.kind == "channel":
                    handles.append(g.owner.register_forward_pre_hook(
                        this_thread(lambda m, args, rec=rec: rec.__setitem__("features", args[0]))))
        try:
            logits = self.model(pixel_values=pixel_values.to(self.device)).logits     # [B, classes]
        finally:
            for h in handles:
                h.remove()
        if not attentions:
            return logits, None, {}
        key = tuple(int(v) for v in pixel_values.shape[-2:])
        self._grids[key] = tuple((int(s.shape[-2]), int(s.shape[-1])) for s in stages)
        while len(self._grids) > 32:
            self._grids.popitem(last=False)
        grids = self.stage_grids(pixel_values)
        return logits, None, {"stages": tuple(stages), "stage_grids": grids,
                              "gates": self._gate_records(fired, grids)}

    def channel_excitations(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Every channel gate's excitations for a batch: one [B, C] per gate, in forward order (no graph)."""
        fired: dict[int, torch.Tensor] = {}
        handles = [g.sigmoid.register_forward_hook(this_thread(lambda m, a, out, i=i: fired.__setitem__(i, out)))
                   for i, g in enumerate(self.gate_specs) if g.kind == "channel"]
        try:
            with torch.no_grad(), self.lock, computing(self.device, self.precision):
                self.model(pixel_values=pixel_values.to(self.device))
        finally:
            for h in handles:
                h.remove()
        return [kept(fired[i]).reshape(pixel_values.shape[0], -1).cpu() for i in sorted(fired)]    # each [B, C]

    def _gate_records(self, fired, grids) -> tuple[Gate, ...]:
        out = []
        for i, g in enumerate(self.gate_specs):
            rec = fired.get(i, {})
            if "value" not in rec:
                continue                                                   # a gate this forward did not pass
            stage = g.stage
            value = kept(rec["value"][0])
            feats = rec.get("features")
            if g.kind == "channel":
                value = value.reshape(-1)                                  # [C] (SE: [C, 1, 1]; ECA: [1, C])
                hw = tuple(feats.shape[-2:])
            else:
                value = value.reshape(value.shape[-2:])                    # [h, w]
                hw = tuple(value.shape)
            base = grids[stage]
            grid = TokenLayout((), int(hw[0]), int(hw[1]), base.patch_size, base.input_size)
            out.append(Gate(index=len(out), name=g.name, kind=g.kind, module=g.module, stage=stage, value=value,
                            grid=grid, features=None if feats is None else kept(feats[0])))
        return tuple(out)

    def _targets(self, inputs, scores):
        return class_targets(self.config, scores)

    def probabilities(self, capture):
        return self.probabilities_from_scores(capture.scores[None])[0]

    def probabilities_from_scores(self, scores):
        return class_probabilities(scores, self.multi_label)
