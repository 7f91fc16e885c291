"""LeGrad against its formula written here (Bousselham et al. 2024, Eq. 3–5) on hooked attentions and a
hand-built head per layer: s^l = head(norm(z^l)), E^l = mean_{h,i} (∂s^l/∂A^l)⁺ at the patch columns, Σ_l,
min–max. The per-layer score is built from the hidden states the model returns, not from the method's hook."""
import numpy as np
import pytest
import torch

import attnviz
from attnviz.adapters.classifier import ClassifierAdapter
from attnviz.adapters.clip import ClipAdapter
from attnviz.errors import UsageError

PROMPTS = ["a red circle", "a blue square", "a cat"]


def by_formula(scores_of_layer, attentions, n_prefix, rows, cols, first=0):
    total = 0
    for layer in range(first, len(attentions)):
        g, = torch.autograd.grad(scores_of_layer(layer), attentions[layer], retain_graph=True)   # [1, H, T, T]
        total = total + torch.relu(g[0]).mean(0).mean(0)[n_prefix:]                              # [N]
    total = (total - total.min()) / (total.max() - total.min())
    return total.reshape(rows, cols).numpy()


def vit_formula(adapter, cap, t, first=0):
    model, lay = adapter.model, cap.layout
    with torch.enable_grad():
        x = cap.inputs["pixel_values"].clone().requires_grad_()         # frozen weights: the graph starts here
        out = model.vit(pixel_values=x, output_attentions=True, output_hidden_states=True)

        def score(layer):                           # hidden_states[l + 1] is block l's output
            return model.classifier(model.vit.layernorm(out.hidden_states[layer + 1])[:, 0])[0, t]
        assert torch.allclose(score(len(out.attentions) - 1), cap.scores[t], atol=1e-5)
        return by_formula(score, out.attentions, lay.n_prefix, lay.rows, lay.cols, first)


def clip_formula(adapter, cap, t, first=0):
    model, lay = adapter.model, cap.layout
    with torch.no_grad():
        text = model.get_text_features(input_ids=cap.inputs["input_ids"], attention_mask=cap.inputs["attention_mask"])
        text = getattr(text, "pooler_output", text)
        text = text / text.norm(dim=-1, keepdim=True)                                   # [P, E]
    with torch.enable_grad():
        x = cap.inputs["pixel_values"].clone().requires_grad_()
        vis = model.vision_model(pixel_values=x, output_attentions=True,
                                 output_hidden_states=True)

        def score(layer):
            e = model.visual_projection(model.vision_model.post_layernorm(vis.hidden_states[layer + 1][:, 0]))
            return model.logit_scale.exp() * (e[0] / e[0].norm()) @ text[t]
        assert torch.allclose(score(len(vis.attentions) - 1), cap.scores[t], atol=1e-4)
        return by_formula(score, vis.attentions, lay.n_prefix, lay.rows, lay.cols, first)


def test_legrad_on_a_vit_is_the_formula(photo):
    adapter = ClassifierAdapter.tiny("vit")
    cap = attnviz.capture(adapter, photo)
    maps = []
    for t in (0, 3):
        e = attnviz.explain(adapter, cap, "legrad", target=t)
        np.testing.assert_allclose(e.map, vit_formula(adapter, cap, t), atol=1e-5)
        maps.append(e.map)
        last = attnviz.explain(adapter, cap, "legrad", target=t, start_layer=-1)
        np.testing.assert_allclose(last.map, vit_formula(adapter, cap, t, first=1), atol=1e-5)
    assert not np.allclose(maps[0], maps[1], atol=1e-3)          # the target matters
    assert e.map.min() == 0.0 and e.map.max() == pytest.approx(1.0)


def test_legrad_on_clip_is_the_formula(photo):
    adapter = ClipAdapter.tiny("clip")
    cap = attnviz.capture(adapter, photo, texts=PROMPTS)
    maps = [attnviz.explain(adapter, cap, "legrad", target=p).map for p in PROMPTS]
    for t, m in enumerate(maps):
        np.testing.assert_allclose(m, clip_formula(adapter, cap, t), atol=1e-5)
    assert not np.allclose(maps[0], maps[2], atol=1e-3)


@pytest.mark.parametrize("kind", ["deit-teacher", "beit", "dinov2-registers", "vit-headless"])
def test_legrad_runs_on_every_vit_pooling(kind, photo):
    adapter = ClassifierAdapter.tiny(kind)
    cap = attnviz.capture(adapter, photo)
    e = attnviz.explain(adapter, cap, "legrad")
    assert e.map.shape == (cap.layout.rows, cap.layout.cols) and np.isfinite(e.map).all()


def test_legrad_is_offered_where_it_applies():
    from attnviz.methods import list_methods
    names = lambda fam: {m.name for m in list_methods(fam)}   # noqa: E731
    assert "legrad" in names("classifier") and "legrad" in names("clip")
    assert "legrad" not in names("cnn") and "legrad" not in names("swin")


def test_legrad_refuses_a_cnn(photo):
    from attnviz.adapters.cnn import CnnAdapter
    adapter = CnnAdapter.tiny()
    cap = attnviz.capture(adapter, photo)
    with pytest.raises(UsageError):
        attnviz.explain(adapter, cap, "legrad")
