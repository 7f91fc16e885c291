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


def siglip_probe_formula(adapter, cap, t, first=0):
    """The authors' SigLIP variant written out: z^l through post-LayerNorm and the pooling head computed by
    hand (probe attention from the head's own in-projection), the image–text logit, and
    E^l = mean_h (∂s^l / ∂P^l_{h,0,:})⁺ over the keys; Σ_l, min–max."""
    model = adapter.model
    head = model.vision_model.head
    with torch.no_grad():
        text = model.get_text_features(input_ids=cap.inputs["input_ids"])
        text = getattr(text, "pooler_output", text)
        text = text / text.norm(dim=-1, keepdim=True)                                   # [P, E]
    mha = head.attention
    n_heads, d = mha.num_heads, mha.embed_dim
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    with torch.enable_grad():
        x = cap.inputs["pixel_values"].clone().requires_grad_()
        vis = model.vision_model(pixel_values=x, output_hidden_states=True)
        total = 0
        for layer in range(first, len(vis.hidden_states) - 1):
            z = model.vision_model.post_layernorm(vis.hidden_states[layer + 1])[0]       # [T, D]
            q = (head.probe[0] @ wq.T + bq).view(1, n_heads, d // n_heads).transpose(0, 1)   # [H, 1, d]
            k = (z @ wk.T + bk).view(-1, n_heads, d // n_heads).transpose(0, 1)          # [H, T, d]
            v = (z @ wv.T + bv).view(-1, n_heads, d // n_heads).transpose(0, 1)          # [H, T, d]
            p = torch.softmax(q @ k.transpose(1, 2) / (d // n_heads) ** 0.5, -1)        # [H, 1, T]
            pooled = mha.out_proj((p @ v).transpose(0, 1).reshape(1, d))                # [1, D]
            pooled = pooled + head.mlp(head.layernorm(pooled))
            e = pooled[0] / pooled[0].norm()
            s = model.logit_scale.exp() * e @ text[t] + model.logit_bias[0]
            if layer == len(vis.hidden_states) - 2:
                assert torch.allclose(s, cap.scores[t], atol=1e-4)                      # the model's own logit
            g, = torch.autograd.grad(s, p, retain_graph=True)
            total = total + torch.relu(g).mean(0)[0]                                    # [T]
    total = (total - total.min()) / (total.max() - total.min())
    return total.reshape(cap.layout.rows, cap.layout.cols).numpy()


def test_legrad_siglip_probe_variant_is_its_formula(photo):
    adapter = ClipAdapter.tiny("siglip")
    cap = attnviz.capture(adapter, photo, texts=PROMPTS)
    assert cap.layout.n_prefix == 0
    maps = []
    for t in range(len(PROMPTS)):
        e = attnviz.explain(adapter, cap, "legrad", target=t, readout="probe")
        np.testing.assert_allclose(e.map, siglip_probe_formula(adapter, cap, t), atol=1e-5)
        maps.append(e.map)
    last = attnviz.explain(adapter, cap, "legrad", target=0, readout="probe", start_layer=-1).map
    np.testing.assert_allclose(last, siglip_probe_formula(adapter, cap, 0, first=adapter.n_layers - 1), atol=1e-5)
    assert not np.allclose(maps[0], maps[2], atol=1e-3)                                 # the prompt matters
    assert not np.allclose(maps[0], attnviz.explain(adapter, cap, "legrad", target=0).map, atol=1e-3)


def test_legrad_probe_readout_needs_a_pooling_head(photo):
    adapter = ClipAdapter.tiny("clip")
    cap = attnviz.capture(adapter, photo, texts=PROMPTS)
    with pytest.raises(UsageError, match="attention-pooling head"):
        attnviz.explain(adapter, cap, "legrad", readout="probe")
