"""CLIP and SigLIP: prompts as targets, image-side maps, text-side relevance."""
import json

import numpy as np
import pytest
import torch

import attnviz
from attnviz.cli import main
from attnviz.errors import UsageError
from attnviz.methods import list_methods

PROMPTS = ["a red circle", "a blue square", "naïve ✓"]
LIGHT = {"integrated_gradients": {"n_steps": 8}, "gradient_shap": {"n_samples": 4}, "smoothgrad": {"nt_samples": 4},
         "lime": {"n_samples": 16}, "kernel_shap": {"n_samples": 16}}


@pytest.fixture(params=["clip", "siglip"])
def clip(request, clip_dirs):
    return request.param, attnviz.load_model(str(clip_dirs[request.param]))


def test_loads_as_clip_family(clip):
    kind, adapter = clip
    assert adapter.family == "clip" and adapter.kind == kind
    assert adapter.model.config.vision_config._attn_implementation in ("eager", "attnviz_eager")   # fast_attention


def test_scores_match_a_direct_model_call(clip, photo):
    kind, adapter = clip
    cap = attnviz.capture(adapter, photo, texts=PROMPTS)
    assert [t.label for t in cap.targets] == PROMPTS and all(t.kind == "prompt" for t in cap.targets)
    pv = adapter.processor(images=photo, return_tensors="pt")["pixel_values"]
    padding = "max_length" if kind == "siglip" else True
    tok = adapter.tokenizer(PROMPTS, padding=padding, truncation=True, max_length=16, return_tensors="pt")
    kw = {} if kind == "siglip" else {"attention_mask": tok["attention_mask"]}
    with torch.no_grad():
        direct = adapter.model(pixel_values=pv, input_ids=tok["input_ids"], **kw).logits_per_image[0]
    torch.testing.assert_close(cap.scores, direct, rtol=1e-5, atol=1e-5)
    probs = adapter.probabilities(cap)
    if kind == "clip":
        assert probs.sum().item() == pytest.approx(1.0, abs=1e-6)
    else:
        torch.testing.assert_close(probs, torch.sigmoid(direct), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", sorted(m.name for m in list_methods("clip")))
def test_every_method_gives_a_finite_map(clip, photo, method):
    kind, adapter = clip
    cap = attnviz.capture(adapter, photo, texts=PROMPTS)
    e = attnviz.explain(adapter, cap, method, target=1, **LIGHT.get(method, {}))
    if e.over == "patches":
        assert e.map.shape == (cap.layout.rows, cap.layout.cols)
    elif e.over == "pixels":
        assert e.map.shape == cap.layout.input_size
    else:
        n_tokens = int(cap.inputs["attention_mask"][1].sum())
        assert e.map.shape == (n_tokens,) == (len(e.meta["tokens"]),)
    assert np.isfinite(e.map).all()


def test_text_relevance_one_value_per_prompt_token_and_words(clip, photo):
    kind, adapter = clip
    cap = attnviz.capture(adapter, photo, texts=PROMPTS)
    for p, prompt in enumerate(PROMPTS):
        e = attnviz.explain(adapter, cap, "text_relevance", target=p)
        ids = cap.inputs["input_ids"][p][cap.inputs["attention_mask"][p].bool()]
        assert e.map.shape == (len(ids),)
        assert "".join(w for w, _ in e.meta["words"]).replace(" ", "") == prompt.replace(" ", "")
        assert (e.map >= 0).all()


def test_image_relevance_by_hand(clip_dirs, photo):
    """Chefer et al. on the vision tower with the prompt's logit as the score, computed here directly."""
    adapter = attnviz.load_model(str(clip_dirs["clip"]))
    cap = attnviz.capture(adapter, photo, texts=PROMPTS)
    x = cap.inputs["pixel_values"].clone().requires_grad_(True)
    out = adapter.model(pixel_values=x, input_ids=cap.inputs["input_ids"],
                        attention_mask=cap.inputs["attention_mask"], output_attentions=True)
    atts = out.vision_model_output.attentions
    grads = torch.autograd.grad(out.logits_per_image[0, 2], atts)
    t = atts[0].shape[-1]
    r = torch.eye(t)
    for a, g in zip(atts, grads):
        r = r + (g[0] * a[0]).clamp(min=0).mean(0) @ r
    e = attnviz.explain(adapter, cap, "relevance", target=2, start_layer=0)
    np.testing.assert_allclose(e.map, r[0, 1:].reshape(4, 4).detach().numpy(), rtol=1e-4, atol=1e-7)
    # CLIP's default accumulates only the last layer (Chefer et al.'s CLIP setting)
    default = attnviz.explain(adapter, cap, "relevance", target=2)
    assert default.params["start_layer"] == -1
    last = torch.eye(t) + (grads[1][0] * atts[1][0]).clamp(min=0).mean(0)
    np.testing.assert_allclose(default.map, last[0, 1:].reshape(4, 4).detach().numpy(), rtol=1e-4, atol=1e-7)


def test_prompt_edge_cases(clip_dirs, photo):
    adapter = attnviz.load_model(str(clip_dirs["clip"]))
    with pytest.raises(UsageError, match="empty"):
        attnviz.capture(adapter, photo, texts=["a cat", "   "])
    with pytest.raises(UsageError, match="at least one"):
        attnviz.capture(adapter, photo, texts=[])
    long = "a very long prompt " * 20
    cap = attnviz.capture(adapter, photo, texts=["short", long])
    assert cap.inputs["input_ids"].shape[1] == 16
    assert any("cut to 16 tokens" in n for n in cap.extras["notes"])
    assert np.isfinite(attnviz.explain(adapter, cap, "text_relevance", target=1).map).all()


def test_cli_prompts_json(capsys, tmp_path, clip_dirs, photo):
    img = tmp_path / "p.png"
    photo.save(img)
    code = main(["explain", str(img), "--model", str(clip_dirs["clip"]), "--method", "relevance",
                 "--text", "a red circle", "--text", "a blue square", "--target", "a blue square", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    rec = json.loads(out.out)
    assert rec["target"]["index"] == 1 and rec["target"]["kind"] == "prompt"
    assert [p["text"] for p in rec["prompts"]] == ["a red circle", "a blue square"]
    assert sum(p["probability"] for p in rec["prompts"]) == pytest.approx(1.0, abs=1e-5)
    assert all(len(p["tokens"]) >= 3 and "relevance" in p["tokens"][0] for p in rec["prompts"])
    code = main(["explain", str(img), "--model", str(clip_dirs["clip"])])
    assert code == 2 and "--text" in capsys.readouterr().err


def test_a_checkpoint_can_declare_its_own_method_defaults(tmp_path, photo):
    """config.json's "attnviz.method_defaults" overrides the family's default; a user's value overrides both."""
    from attnviz.adapters.clip import ClipAdapter
    from attnviz.errors import UsageError

    from .conftest import save_tiny

    tiny = ClipAdapter.tiny("clip")
    assert tiny.method_defaults("relevance") == {"start_layer": -1}          # CLIP's family default
    tiny.model.config.attnviz = {"method_defaults": {"relevance": {"start_layer": 0}}}
    adapter = attnviz.load_model(str(save_tiny(tiny, tmp_path / "declared")))
    assert adapter.method_defaults("relevance") == {"start_layer": 0}
    assert adapter.method_defaults("text_relevance") == {"start_layer": -1}  # not declared: the family's
    cap = attnviz.capture(adapter, photo, texts=PROMPTS[:2])
    assert attnviz.explain(adapter, cap, "relevance", target=0).params["start_layer"] == 0
    assert attnviz.explain(adapter, cap, "relevance", target=0, start_layer=1).params["start_layer"] == 1
    # all layers from 0 is a different map from the last layer alone (the declared value is really used)
    last = attnviz.explain(adapter, cap, "relevance", target=0, start_layer=-1).map
    assert not np.allclose(attnviz.explain(adapter, cap, "relevance", target=0).map, last)
    # a declared value of the wrong type is refused in one sentence, unless the user sets the parameter
    adapter.model.config.attnviz = {"method_defaults": {"relevance": {"start_layer": "top"}}}
    with pytest.raises(UsageError, match="start_layer"):
        attnviz.explain(adapter, cap, "relevance", target=0)
    assert attnviz.explain(adapter, cap, "relevance", target=0, start_layer=0).params["start_layer"] == 0
