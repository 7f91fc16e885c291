"""CLIP / SigLIP dense similarity against projected patch embeddings computed here from the model's own modules."""
import numpy as np
import pytest
import torch

import attnviz
from attnviz.adapters.clip import ClipAdapter
from attnviz.errors import UsageError

PROMPTS = ["a red circle", "a blue square", "a cat"]


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_clip_similarity_is_the_projected_patch_embedding(kind, photo):
    adapter = ClipAdapter.tiny(kind)
    cap = attnviz.capture(adapter, photo, texts=PROMPTS)
    model, lay = adapter.model, cap.layout
    ids = cap.inputs["input_ids"]
    with torch.no_grad():
        out = model(pixel_values=cap.inputs["pixel_values"], input_ids=ids,
                    attention_mask=None if kind == "siglip" else cap.inputs["attention_mask"])
        vis = model.vision_model(pixel_values=cap.inputs["pixel_values"], output_hidden_states=True)
        tokens = model.vision_model.post_layernorm(vis.hidden_states[-1][0])            # [T, D]
        if kind == "clip":
            emb = model.visual_projection(tokens)                                      # [T, E]
            # the recipe is the model's own: on the CLS token it gives the image embedding
            np.testing.assert_allclose((emb[0] / emb[0].norm()).numpy(), out.image_embeds[0].numpy(), atol=1e-5)
            emb = emb[lay.n_prefix:]
        else:
            # the pooling head with one patch as its only key: the image embedding if it read that patch alone
            emb = torch.cat([model.vision_model.head(tokens[p].view(1, 1, -1)) for p in range(lay.n_patches)])
        emb = emb / emb.norm(dim=-1, keepdim=True)
        sims = (emb @ out.text_embeds.T).numpy()                                       # [N, P] (text: unit norm)
    for t in range(len(PROMPTS)):
        e = attnviz.explain(adapter, cap, "clip_similarity", target=t)
        np.testing.assert_allclose(e.map, sims[:, t].reshape(lay.rows, lay.cols), rtol=1e-4, atol=1e-5)
        s = attnviz.explain(adapter, cap, "clip_similarity", target=PROMPTS[t], surgery=True)
        np.testing.assert_allclose(s.map, (sims[:, t] - sims.mean(1)).reshape(lay.rows, lay.cols), atol=1e-5)
    one = attnviz.capture(adapter, photo, texts=PROMPTS[:1])
    with pytest.raises(UsageError, match="two prompts"):
        attnviz.explain(adapter, one, "clip_similarity", surgery=True)


def test_new_methods_are_listed_with_their_papers(capsys):
    import json

    from attnviz.cli import main
    assert main(["models", "--methods", "--json"]) == 0
    listed = {r["name"]: r["description"] for r in json.loads(capsys.readouterr().out)}
    papers = {"grad_cam_pp": "Chattopadhay", "hires_cam": "Draelos", "layer_cam": "Jiang", "xgrad_cam": "Fu",
              "score_cam": "Wang", "ablation_cam": "Desai", "eigen_cam": "Muhammad", "noise_tunnel": "Smilkov",
              "clip_similarity": "Li et al. 2023", "legrad": "Bousselham"}
    for name, author in papers.items():
        assert author in listed[name], name
