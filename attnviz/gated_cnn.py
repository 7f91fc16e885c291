"""The project's own small CNN with channel and spatial attention gates (the offline demo CNN).

transformers has squeeze-and-excitation (RegNet Y, EfficientNet) but no ECA or CBAM module, so the
demo CNN is defined here, as a ``PretrainedConfig`` / ``PreTrainedModel`` pair registered with the
Auto classes on import: ``from_pretrained`` loads it from safetensors with no remote code.

Blocks are residual basic blocks (two 3×3 convolutions with batch norm) whose residual branch
passes through one gate before the sum, where SE-ResNet and CBAM put theirs:

* ``se``: squeeze-and-excitation, Hu et al., CVPR 2018 (https://arxiv.org/abs/1709.01507):
  s = σ(W₂ ReLU(W₁ GAP(x))), x ← x · s per channel.
* ``eca``: efficient channel attention, Wang et al., CVPR 2020 (https://arxiv.org/abs/1910.03151):
  s = σ(conv1d_k(GAP(x))) across neighbouring channels, no reduction. The kernel follows the
  paper's adaptive rule (eq. 12) unless ``eca_kernel`` fixes it: k = ψ(C) = |log₂(C)/γ + b/γ|_odd
  with γ = 2, b = 1 (``eca_gamma``, ``eca_b``), |t|_odd the odd number nearest t (ties upwards, as
  the authors' code: t truncated, plus one when even). It gives 3 for 8–127 channels, 5 for 128–2047.
* ``cbam``: Woo et al., ECCV 2018 (https://arxiv.org/abs/1807.06521): channel gate
  M_c = σ(MLP(AvgPool(x)) + MLP(MaxPool(x))), x' = x · M_c; then spatial gate
  M_s = σ(BN(f^{k×k}([mean_c(x'); max_c(x')]))), x'' = x' · M_s (eq. 3; the batch norm on the
  convolution's output is the authors' released code's, ``cbam_spatial_norm``).

Each gate's sigmoid is its own ``nn.Sigmoid`` module named ``gate`` (CBAM: ``channel_gate`` and
``spatial_gate``), so a forward hook on it reads the gate as the forward applied it.
The head is a global average pool of the last stage and one linear layer (multi-label logits).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

MODEL_TYPE = "attnviz_gated_cnn"
GATES = ("se", "eca", "cbam", "none")


class GatedCnnConfig(PretrainedConfig):
    """Stem (3×3 convolution, ``stem_stride``), then stages of residual blocks; stage ``i`` has ``depths[i]``
    blocks of ``hidden_sizes[i]`` channels, the first with stride ``strides[i]``, each gated by ``gates[i]``."""

    model_type = MODEL_TYPE

    def __init__(self, num_channels: int = 3, stem_channels: int = 24, stem_stride: int = 2,
                 hidden_sizes: Sequence[int] = (32, 48, 64), depths: Sequence[int] = (1, 2, 2),
                 strides: Sequence[int] = (1, 2, 2), gates: Sequence[str] = ("se", "eca", "cbam"),
                 se_reduction: int = 4, eca_kernel: Optional[int] = None, eca_gamma: float = 2.0,
                 eca_b: float = 1.0, cbam_kernel: int = 7, cbam_spatial_norm: bool = True, **kwargs):
        n = len(hidden_sizes)
        if not (len(depths) == len(strides) == len(gates) == n):
            raise ValueError("hidden_sizes, depths, strides and gates need one entry per stage.")
        bad = [g for g in gates if g not in GATES]
        if bad:
            raise ValueError(f"Unknown gates {bad}; one of {', '.join(GATES)}.")
        self.num_channels, self.stem_channels, self.stem_stride = num_channels, stem_channels, stem_stride
        self.hidden_sizes, self.depths = list(hidden_sizes), list(depths)
        self.strides, self.gates = list(strides), list(gates)
        if eca_kernel is not None and (isinstance(eca_kernel, bool) or not isinstance(eca_kernel, int)
                                       or eca_kernel < 1 or eca_kernel % 2 == 0):
            raise ValueError(f"eca_kernel must be an odd whole number (a convolution centred on each channel), "
                             f"got {eca_kernel!r}; leave it unset for Wang et al.'s adaptive size.")
        self.se_reduction, self.eca_kernel, self.cbam_kernel = se_reduction, eca_kernel, cbam_kernel
        self.eca_gamma, self.eca_b = eca_gamma, eca_b
        self.cbam_spatial_norm = cbam_spatial_norm
        super().__init__(**kwargs)


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout))


class SqueezeExcitation(nn.Module):
    """SE (Hu et al. 2018): one weight in [0, 1] per channel from the channel means."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))   # [B, C, 1, 1]
        return x * s


class EfficientChannelAttention(nn.Module):
    """ECA (Wang et al. 2020): a 1-D convolution over the channel means, k neighbours, no reduction."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel, padding=kernel // 2, bias=False)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        y = self.conv(x.mean((2, 3)).view(b, 1, c))                                        # [B, 1, C]
        return x * self.gate(y).view(b, c, 1, 1)


class CBAM(nn.Module):
    """CBAM (Woo et al. 2018): a channel gate from average- and max-pooled features, then a spatial gate
    σ(k×k convolution of the channel-mean and channel-max maps), with the released code's batch norm on
    the convolution's output when ``norm``."""

    def __init__(self, channels: int, reduction: int, kernel: int, norm: bool = True):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1))
        self.channel_gate = nn.Sigmoid()
        conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)
        self.spatial = nn.Sequential(conv, nn.BatchNorm2d(1)) if norm else nn.Sequential(conv)
        self.spatial_gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mc = self.channel_gate(self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True)))
        x = x * mc                                                                         # [B, C, h, w]
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)     # [B, 2, h, w]
        return x * self.spatial_gate(self.spatial(pooled))                                # [B, 1, h, w] gate


def eca_kernel_size(channels: int, gamma: float = 2.0, b: float = 1.0) -> int:
    """Wang et al.'s adaptive ECA kernel (eq. 12): |log₂(C)/γ + b/γ|_odd."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


def make_gate(kind: str, channels: int, config: GatedCnnConfig) -> nn.Module:
    if kind == "se":
        return SqueezeExcitation(channels, config.se_reduction)
    if kind == "eca":
        k = config.eca_kernel or eca_kernel_size(channels, config.eca_gamma, config.eca_b)
        return EfficientChannelAttention(channels, k)
    if kind == "cbam":
        return CBAM(channels, config.se_reduction, config.cbam_kernel, config.cbam_spatial_norm)
    return nn.Identity()


class GatedBlock(nn.Module):
    """x → ReLU(gate(BN(conv(ReLU(BN(conv_stride(x)))))) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int, gate: str, config: GatedCnnConfig):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3)
        self.gate = make_gate(gate, cout, config)
        self.shortcut = conv_bn(cin, cout, 1, stride) if (cin != cout or stride != 1) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gate(self.conv2(torch.relu(self.conv1(x))))
        return torch.relu(y + self.shortcut(x))


class GatedCnnPreTrainedModel(PreTrainedModel):
    config_class = GatedCnnConfig
    config: GatedCnnConfig
    base_model_prefix = "cnn"
    main_input_name = "pixel_values"

    def _init_weights(self, module):
        from transformers import initialization as init

        if isinstance(module, (nn.Conv2d, nn.Conv1d)):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, std=0.01)
            init.zeros_(module.bias)


class GatedCnnForImageClassification(GatedCnnPreTrainedModel):
    def __init__(self, config: GatedCnnConfig):
        super().__init__(config)
        self.stem = nn.Sequential(conv_bn(config.num_channels, config.stem_channels, 3, config.stem_stride), nn.ReLU())
        stages, cin = [], config.stem_channels
        for cout, depth, stride, gate in zip(config.hidden_sizes, config.depths, config.strides, config.gates):
            blocks = [GatedBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1, gate, config)
                      for j in range(depth)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Linear(cin, config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None,
                output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None, **kwargs):
        x = self.stem(pixel_values)
        hidden = []
        for stage in self.stages:
            x = stage(x)
            hidden.append(x)
        logits = self.classifier(x.mean((2, 3)))                                           # global average pool
        loss = None
        if labels is not None:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits,
                                                    hidden_states=tuple(hidden) if output_hidden_states else None)


AutoConfig.register(MODEL_TYPE, GatedCnnConfig, exist_ok=True)
AutoModelForImageClassification.register(GatedCnnConfig, GatedCnnForImageClassification, exist_ok=True)
