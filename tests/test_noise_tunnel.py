"""The noise tunnels against Captum's NoiseTunnel called directly on the model's own logits."""
import numpy as np
import pytest
import torch

import attnviz
from attnviz.adapters.classifier import ClassifierAdapter

T = 1


@pytest.fixture(scope="module")
def vit(photo):
    adapter = ClassifierAdapter.tiny("vit")
    return adapter, attnviz.capture(adapter, photo, size=(32, 32))


@pytest.mark.parametrize("base,nt_type", [("integrated_gradients", "smoothgrad"), ("integrated_gradients", "vargrad"),
                                          ("input_x_gradient", "smoothgrad_sq"), ("saliency", "vargrad"),
                                          ("saliency", "smoothgrad")])
def test_noise_tunnel_is_captums(vit, base, nt_type):
    from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency
    adapter, cap = vit
    x = cap.inputs["pixel_values"].clone().requires_grad_(True)

    def logits(p):
        return adapter.model(pixel_values=p).logits
    mean = torch.tensor(adapter.processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(adapter.processor.image_std).view(1, 3, 1, 1)
    black = ((0 - mean) / std).expand_as(x)
    inner, kw = {"integrated_gradients": (IntegratedGradients, {"baselines": black, "n_steps": 6,
                                                                "internal_batch_size": 4}),
                 "input_x_gradient": (InputXGradient, {}), "saliency": (Saliency, {"abs": True})}[base]
    torch.manual_seed(3)
    np.random.seed(3)
    want = NoiseTunnel(inner(logits)).attribute(x, nt_type=nt_type, nt_samples=5, nt_samples_batch_size=4,
                                                stdevs=0.2, target=T, **kw)[0].detach()
    want = (want.amax(0) if base == "saliency" else want.sum(0)).numpy()
    e = attnviz.explain(adapter, cap, "noise_tunnel", target=T, base=base, nt_type=nt_type, nt_samples=5,
                        stdevs=0.2, n_steps=6, batch_size=4, seed=3)
    assert e.map.shape == x.shape[-2:] and np.abs(want).max() > 0
    np.testing.assert_allclose(e.map, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    if nt_type != "smoothgrad":
        assert (e.map >= 0).all()
