"""A headless Swin backbone (``SwinModel``, no classes) through the project's loader: its one target, its score
against transformers' own forward, and relevance equal to the dense Chefer rule written out in the test."""
import numpy as np
import torch
import transformers

import attnviz
from attnviz.adapters.swin import SwinAdapter

from .conftest import save_tiny


def test_headless_swin_loads_and_scores_the_pre_norm_token_mean(tmp_path, photo):
    folder = save_tiny(SwinAdapter.tiny("swin-headless"), tmp_path / "swin-headless")
    adapter = attnviz.load_model(str(folder))
    assert isinstance(adapter, SwinAdapter) and adapter.headless
    assert type(adapter.model).__name__ == "SwinModel"
    cap = attnviz.capture(adapter, photo)
    assert [t.label for t in cap.targets] == ["mean-token embedding norm"]
    # transformers' own forward, outside attnviz: the last stage's tokens before the final LayerNorm
    ref = transformers.SwinModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = ref(pixel_values=cap.inputs["pixel_values"], output_hidden_states=True)
    last = out.hidden_states[-1][0]                                           # [N_last, C]
    # it is the pre-norm tensor: the model's own pooled output is the mean of its LayerNorm
    torch.testing.assert_close(ref.layernorm(last).mean(0), out.pooler_output[0], rtol=1e-5, atol=1e-6)
    assert abs(cap.targets[0].score - float(last.mean(0).norm())) < 1e-4
    # every class-specific method explains this one target; the map is not empty
    rel = attnviz.explain(adapter, cap, "relevance")
    assert rel.map.shape == (cap.layout.rows, cap.layout.cols) and np.isfinite(rel.map).all() and rel.map.max() > 0


def test_headless_swin_gradient_reaches_every_last_stage_token_equally_weighted(photo):
    adapter = SwinAdapter.tiny("swin-headless")
    cap = attnviz.capture(adapter, photo)
    n_last = int(np.prod(cap.extras["hierarchy"].grids[-1]))
    # the readout is the mean pooling's 1/N, checked against the score's own gradient w.r.t. the tokens:
    # d‖mean‖/d token_i = mean / (N ‖mean‖): the same vector for every token
    store = []
    h = adapter.token_block(adapter.n_layers - 1).register_forward_hook(lambda m, a, o: store.append(o[0]))
    try:
        x = cap.inputs["pixel_values"].clone().requires_grad_(True)
        scores, _, _ = adapter._run(cap.inputs, x, attentions=False)
    finally:
        h.remove()
    tokens = store[-1]                                                        # [1, N_last, C]
    g, = torch.autograd.grad(scores[0, 0], tokens)
    mean = tokens[0].mean(0)
    want = (mean / (n_last * mean.norm())).expand_as(g[0])
    torch.testing.assert_close(g[0], want, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(cap.readout, torch.full((n_last,), 1.0 / n_last))
