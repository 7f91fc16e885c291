"""The gated CNN's ECA gate: Wang et al.'s adaptive kernel size by default, an even kernel refused in the
config in one sentence, and the shipped demo checkpoint (fixed at 3) loading as before."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from attnviz.gated_cnn import EfficientChannelAttention, GatedCnnConfig, GatedCnnForImageClassification

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo-cnn-shapes"


def psi(channels, gamma=2, b=1):
    """ECA-Net (CVPR 2020) eq. 12: k = |log2(C)/γ + b/γ|_odd, the odd number nearest (ties upwards)."""
    t = math.log2(channels) / gamma + b / gamma
    lower = 2 * math.floor((t - 1) / 2) + 1                 # the odd number at or below t
    return lower if t - lower < 1 else lower + 2


def _eca_kernels(model):
    return [m.conv.kernel_size[0] for m in model.modules() if isinstance(m, EfficientChannelAttention)]


@pytest.mark.parametrize("width", [8, 16, 48, 64, 100, 128, 256, 512, 1000, 2048])
def test_adaptive_eca_kernel_follows_wang_et_al(width):
    cfg = GatedCnnConfig(stem_channels=8, hidden_sizes=[width], depths=[1], strides=[1], gates=["eca"])
    (k,) = _eca_kernels(GatedCnnForImageClassification(cfg))
    assert k == psi(width) and k % 2 == 1
    # γ and b are the config's: γ = 1, b = 0 gives |log2 C|_odd
    cfg = GatedCnnConfig(stem_channels=8, hidden_sizes=[width], depths=[1], strides=[1], gates=["eca"],
                         eca_gamma=1, eca_b=0)
    assert _eca_kernels(GatedCnnForImageClassification(cfg)) == [psi(width, 1, 0)]


@pytest.mark.parametrize("bad", [2, 4, 0, -3, 2.5])
def test_an_even_or_odd_shaped_eca_kernel_is_refused_in_the_config(bad):
    """Before: k // 2 padding of an even kernel gave C + 1 outputs and a shape error in the forward."""
    with pytest.raises(ValueError, match=r"eca_kernel must be an odd whole number .* got") as e:
        GatedCnnConfig(gates=["se", "eca", "cbam"], eca_kernel=bad)
    assert str(e.value).count(". ") == 0 and str(e.value).endswith(".")
    cfg = GatedCnnConfig(stem_channels=8, hidden_sizes=[16], depths=[1], strides=[1], gates=["eca"], eca_kernel=5)
    model = GatedCnnForImageClassification(cfg).eval()
    assert _eca_kernels(model) == [5] and model(torch.zeros(1, 3, 16, 16)).logits.shape[-1] == cfg.num_labels


def test_the_demo_checkpoint_loads_as_before_with_the_adaptive_rule():
    """The demo CNN fixed eca_kernel at 3; its ECA stage has 48 channels, for which the rule gives 3 too:
    the same weights under the adaptive default give the same logits as the checkpoint as saved."""
    saved = json.loads((DEMO / "config.json").read_text())
    assert saved["eca_kernel"] == 3
    widths = [w for w, g in zip(saved["hidden_sizes"], saved["gates"]) if g == "eca"]
    assert widths and all(psi(w) == 3 for w in widths)
    as_saved = GatedCnnForImageClassification.from_pretrained(str(DEMO), use_safetensors=True).eval()
    adaptive_cfg = GatedCnnConfig(**{k: v for k, v in saved.items() if k not in ("eca_kernel", "model_type")})
    adaptive = GatedCnnForImageClassification(adaptive_cfg).eval()
    adaptive.load_state_dict(load_file(str(DEMO / "model.safetensors")), strict=True)
    assert _eca_kernels(as_saved) == _eca_kernels(adaptive) == [3] * len(_eca_kernels(as_saved))
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32))
    with torch.no_grad():
        torch.testing.assert_close(adaptive(x).logits, as_saved(x).logits, rtol=0, atol=0)
